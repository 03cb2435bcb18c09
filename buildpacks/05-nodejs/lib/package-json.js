// package.json questions the Node.js buildpack asks, answered with the stack's node.
//
//   node package-json.js check FILE          exit 1 with a message naming the line and
//                                            column when FILE is not a JSON object
//   node package-json.js get FILE KEY.PATH   the string at KEY.PATH (nothing when missing)
//   node package-json.js has FILE KEY.PATH   exit 0 when KEY.PATH is a non-empty object or
//                                            a non-empty string
//   node package-json.js satisfies RANGE VERSION
//                                            exit 0 when VERSION is in the semver RANGE,
//                                            1 when not, 2 when it cannot tell
'use strict';
const fs = require('fs');

function load(file) {
  const text = fs.readFileSync(file, 'utf8').replace(/^\uFEFF/, '');
  try {
    return JSON.parse(text);
  } catch (e) {
    const m = /at position (\d+)/.exec(e.message);
    let where = '';
    if (m) {
      const before = text.slice(0, Number(m[1]));
      const line = before.split('\n').length;
      const column = before.length - before.lastIndexOf('\n');
      where = ` (line ${line}, column ${column})`;
    } else if (/Unexpected end of JSON input/.test(e.message)) {
      where = ` (line ${text.split('\n').length}, at the end)`;
    }
    const err = new Error(`${e.name}: ${e.message}${where}`);
    err.parse = true;
    throw err;
  }
}

function lookup(value, path) {
  for (const key of path.split('.')) {
    if (value === null || typeof value !== 'object' || !(key in value)) return undefined;
    value = value[key];
  }
  return value;
}

function main(argv) {
  const [command, a, b] = argv;
  try {
    if (command === 'check') {
      const value = load(a);
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        console.log('package.json: the top level must be a JSON object ({ … })');
        return 1;
      }
      return 0;
    }
    if (command === 'get') {
      const value = lookup(load(a), b);
      if (typeof value === 'string') process.stdout.write(value);
      return 0;
    }
    if (command === 'has') {
      const value = lookup(load(a), b);
      if (typeof value === 'string') return value.trim() ? 0 : 1;
      if (value && typeof value === 'object') return Object.keys(value).length ? 0 : 1;
      return 1;
    }
    if (command === 'satisfies') {
      let semver;
      try {
        semver = require('semver');
      } catch (e) {
        try {
          semver = require('/usr/share/nodejs/semver');
        } catch (e2) {
          return 2;
        }
      }
      if (!semver.validRange(a)) return 2;
      return semver.satisfies(b, a) ? 0 : 1;
    }
  } catch (e) {
    console.log(e.parse ? `package.json: ${e.message}` : String(e.message || e));
    return 1;
  }
  console.log('usage: package-json.js check|get|has|satisfies …');
  return 64;
}

process.exitCode = main(process.argv.slice(2));
