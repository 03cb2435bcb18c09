// Compacts the index of npm's cache (cacache, CACHE_DIR/npm/_cacache/index-v5) in place.
//
// npm appends an index line for every package on every install, even when nothing new was
// fetched (only the time differs), so the cache would grow a little and look changed after
// every build, and the builder would upload it again each time. For each key this keeps one
// line: the newest one, or the oldest line that says the same thing (same content hash,
// size and metadata). Lines are kept verbatim (each carries the hash of its own text), and
// cacache reads the last line of a key, so lookups give the same answers as before.
'use strict';
const fs = require('fs');
const path = require('path');

function same(a, b) {
  return (
    a.integrity === b.integrity &&
    a.size === b.size &&
    JSON.stringify(a.metadata) === JSON.stringify(b.metadata)
  );
}

function compactBucket(file) {
  const text = fs.readFileSync(file, 'utf8');
  const byKey = new Map();
  for (const raw of text.split('\n')) {
    const tab = raw.indexOf('\t');
    if (tab < 0) continue;
    let entry;
    try {
      entry = JSON.parse(raw.slice(tab + 1));
    } catch (e) {
      continue; // cacache skips corrupt lines too
    }
    if (!entry || typeof entry.key !== 'string') continue;
    if (!byKey.has(entry.key)) byKey.set(entry.key, []);
    byKey.get(entry.key).push({ raw, entry });
  }
  const kept = [];
  for (const lines of byKey.values()) {
    const last = lines[lines.length - 1];
    kept.push((lines.find((line) => same(line.entry, last.entry)) || last).raw);
  }
  const compacted = kept.map((line) => `\n${line}`).join('');
  if (compacted !== text) fs.writeFileSync(file, compacted);
}

function walk(dir) {
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (e) {
    return;
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full);
    else if (entry.isFile()) compactBucket(full);
  }
}

walk(process.argv[2]);
