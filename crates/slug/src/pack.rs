//! Streaming, deterministic slug writer: tar in (e.g. Docker's archive of `/app`), gzip'd
//! tar out, one entry at a time and never more than one copy buffer of file data in memory.
//!
//! The output tar is written by hand (GNU format headers built with `tar::Header`) because
//! the `tar` crate's builder strips the `./` prefix that slug entry names carry.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::gzip::ParallelGzip;
use tar::EntryType;

use crate::tar_writer::{CopyError, TarWriter};

use super::ignore::SlugIgnore;

/// Limit for the top-level `Procfile` and `.release` that [`pack`] reads while packing.
pub const MAX_CAPTURED_FILE_BYTES: u64 = 1024 * 1024;

/// mtime of every slug entry: 1980-01-01T00:00:00Z, the earliest time ZIP can store, so
/// tools that re-archive files from the slug (e.g. `jar`) do not choke on 1970.
pub const SLUG_MTIME: u64 = 315_532_800;

/// Compression level old builders used; kept so slug sizes stay comparable.
const GZIP_LEVEL: u32 = 6;
/// gzip header OS byte "Unix", fixed so the bytes do not depend on the build platform.
const GZIP_OS_UNIX: u8 = 3;
/// setuid/setgid are dropped: nothing in a slug should gain privileges when run.
const DROPPED_MODE_BITS: u32 = 0o6000;
/// Mode of the `./` written for input that has no root entry of its own.
const DEFAULT_ROOT_MODE: u32 = 0o755;

const PROCFILE: &[u8] = b"Procfile";
const RELEASE_FILE: &[u8] = b".release";
const SLUGIGNORE_FILE: &[u8] = b".slugignore";
const GIT_DIR: &[u8] = b".git";

pub struct PackOptions<'a> {
    /// Prefix every input entry carries and that is stripped (Docker's archive of `/app`
    /// yields `app/...`). "" for none. `app`, `app/` and `./app` are equivalent.
    pub strip_prefix: &'a str,
    pub ignore: &'a SlugIgnore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSlug {
    /// Lowercase hex SHA-256 of the compressed bytes written.
    pub sha256: String,
    pub compressed_bytes: u64,
    /// Sum of regular file sizes.
    pub uncompressed_bytes: u64,
    /// Entries written (directories, files, links; the root `./` included).
    pub entries: u64,
    /// Content of the top-level `Procfile`, if any (following a symlink to a later entry).
    pub procfile: Option<String>,
    /// Content of the top-level `.release`, if any.
    pub release: Option<String>,
    /// Input entries left out because `.slugignore` matched them or an ancestor.
    pub ignored_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SlugError {
    #[error("writing the slug failed: {0}")]
    Io(io::Error),
    #[error("reading the input archive failed ({context}): {error}")]
    Tar { context: String, error: io::Error },
    #[error("unsafe path {path:?} in the input archive: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("input archive entry {path:?} is outside the expected directory {prefix:?}")]
    OutsidePrefix { path: String, prefix: String },
    #[error("hard link {path:?} points to {target:?}, which is not in the slug")]
    DanglingHardLink { path: String, target: String },
    #[error("{path} is {size} bytes; the limit is {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path} is not valid UTF-8 text")]
    NotText { path: String },
}

/// Streams a tar (e.g. Docker's archive of `/app`) into a deterministic slug written to
/// `output`, computing its SHA-256 on the way.
///
/// Output: gzip (level 6, header mtime 0, no file name) of a GNU tar whose entries are
/// `./`, `./Procfile`, `./dir/`, … in input order, owner 0:0 with empty names, mtime
/// [`SLUG_MTIME`], permission bits kept minus setuid/setgid. Regular files, directories,
/// symlinks (target kept verbatim, never followed) and hard links (to a file already in
/// the slug, else an error) are kept; devices, fifos and unknown types are skipped with a
/// warning. Left out: `.git` at any depth, the top-level `.slugignore`, and whatever
/// `opts.ignore` matches, except the top-level `Procfile` and `.release`, which the app
/// needs to start. Entry names with `..` or a leading `/`, or outside `strip_prefix`, are
/// errors. The top-level `Procfile` and `.release` (≤ [`MAX_CAPTURED_FILE_BYTES`]) are
/// returned too; a top-level symlink to a later entry is followed for that purpose.
///
/// On error the output holds a partial slug that must be discarded.
pub fn pack<R: Read, W: Write>(
    input: R,
    output: W,
    opts: &PackOptions,
) -> Result<PackedSlug, SlugError> {
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|error| SlugError::Tar {
        context: "start of archive".to_owned(),
        error,
    })?;
    let mut packer = Packer::new(output, opts)?;
    // A broken entry has no name of its own: errors name the one before it.
    let mut last_path = String::new();
    for entry in entries {
        let entry = entry.map_err(|error| SlugError::Tar {
            context: entry_context(&last_path),
            error,
        })?;
        let raw_path = entry.path_bytes().into_owned();
        last_path = String::from_utf8_lossy(&raw_path).into_owned();
        packer.entry(entry, &raw_path, &last_path)?;
    }
    packer.finish()
}

/// One [`pack`] run: the output and what it has to remember between entries.
struct Packer<'a, W: Write> {
    out: SlugWriter<W>,
    /// `strip_prefix` as path components.
    prefix: Vec<Vec<u8>>,
    ignore: &'a SlugIgnore,
    root_written: bool,
    entries: u64,
    uncompressed_bytes: u64,
    ignored_entries: u64,
    /// Paths of regular files written so far: the only valid hard-link targets.
    files: HashSet<Vec<u8>>,
    captures: Captures,
}

impl<'a, W: Write> Packer<'a, W> {
    fn new(output: W, opts: &PackOptions<'a>) -> Result<Self, SlugError> {
        Ok(Packer {
            out: SlugWriter::new(output)?,
            prefix: normalized_prefix(opts.strip_prefix),
            ignore: opts.ignore,
            root_written: false,
            entries: 0,
            uncompressed_bytes: 0,
            ignored_entries: 0,
            files: HashSet::new(),
            captures: Captures::default(),
        })
    }

    /// Writes one input entry into the slug, or leaves it out.
    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        raw_path: &[u8],
        input_path: &str,
    ) -> Result<(), SlugError> {
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(()); // archive-wide metadata (mtimes, owners) we do not keep anyway
        }
        let components = self.app_components(raw_path, input_path)?;
        let kind = EntryKind::of(entry_type, raw_path);
        if components.is_empty() {
            return self.app_root(&entry, kind, input_path);
        }
        let path = SlugPath::new(&components);
        if !self.keeps(&components, &path, kind == Some(EntryKind::Directory)) {
            return Ok(());
        }
        let Some(kind) = kind else {
            tracing::warn!(
                path = %path.text,
                entry_type = entry_type.as_byte(),
                "leaving a special file (device, fifo or unknown type) out of the slug"
            );
            return Ok(());
        };
        // Input without its own root entry (e.g. `tar -c file1 dir/`): slugs always have one.
        self.root(DEFAULT_ROOT_MODE)?;
        let mode = entry_mode(&entry, input_path)?;
        match kind {
            EntryKind::Directory => self.directory(&path, mode)?,
            EntryKind::Symlink => self.symlink(&entry, &path, mode)?,
            EntryKind::HardLink => self.hard_link(&entry, path, mode)?,
            EntryKind::File => self.file(&mut entry, path, mode)?,
        }
        self.entries += 1;
        Ok(())
    }

    /// The entry's path components below `strip_prefix`; `[]` for the app root itself.
    fn app_components<'p>(
        &self,
        raw_path: &'p [u8],
        input_path: &str,
    ) -> Result<Vec<&'p [u8]>, SlugError> {
        let components = relative_components(raw_path).map_err(|reason| SlugError::UnsafePath {
            path: input_path.to_owned(),
            reason,
        })?;
        strip_components(&components, &self.prefix).ok_or_else(|| SlugError::OutsidePrefix {
            path: input_path.to_owned(),
            prefix: String::from_utf8_lossy(&self.prefix.join(&b'/')).into_owned(),
        })
    }

    /// The input's own root entry (`app/` for prefix `app`) becomes `./` with its mode.
    fn app_root<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: Option<EntryKind>,
        input_path: &str,
    ) -> Result<(), SlugError> {
        if kind != Some(EntryKind::Directory) {
            return Err(SlugError::UnsafePath {
                path: input_path.to_owned(),
                reason: "the app root must be a directory",
            });
        }
        // A repeated root entry (e.g. `app/` and `app/.`) adds nothing, not even its mode.
        if self.root_written {
            return Ok(());
        }
        let mode = entry_mode(entry, input_path)?;
        self.root(mode)
    }

    /// Writes `./` unless it is already there: every slug has exactly one.
    fn root(&mut self, mode: u32) -> Result<(), SlugError> {
        if !self.root_written {
            self.out
                .header(b"./", None, EntryType::Directory, mode, 0)?;
            self.root_written = true;
            self.entries += 1;
        }
        Ok(())
    }

    /// Whether an entry goes into the slug; counts those `.slugignore` leaves out.
    fn keeps(&mut self, components: &[&[u8]], path: &SlugPath, is_dir: bool) -> bool {
        if components.contains(&GIT_DIR) || path.rel == SLUGIGNORE_FILE {
            return false;
        }
        if !self.ignore.is_ignored(&path.text, is_dir) {
            return true;
        }
        // The top-level Procfile and .release are what the app needs to start.
        if Captured::for_path(&path.rel).is_some() {
            tracing::warn!(path = %path.text, ".slugignore matches a file the app needs to start; keeping it");
            return true;
        }
        self.ignored_entries += 1;
        false
    }

    fn directory(&mut self, path: &SlugPath, mode: u32) -> Result<(), SlugError> {
        let mut name = path.name();
        name.push(b'/');
        self.out.header(&name, None, EntryType::Directory, mode, 0)
    }

    /// Keeps the target verbatim, never following it, except to read a top-level
    /// Procfile/.release when its target streams by later.
    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &SlugPath,
        mode: u32,
    ) -> Result<(), SlugError> {
        let Some(target) = entry.link_name_bytes() else {
            return Err(SlugError::Tar {
                context: format!("symlink {:?}", path.text),
                error: io::Error::new(io::ErrorKind::InvalidData, "symlink without a target"),
            });
        };
        if let Some(captured) = Captured::for_path(&path.rel) {
            self.captures.follow_symlink(captured, path, &target);
        }
        self.out
            .header(&path.name(), Some(&target), EntryType::Symlink, mode, 0)
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: SlugPath,
        mode: u32,
    ) -> Result<(), SlugError> {
        let target = entry.link_name_bytes().unwrap_or_default();
        let Some(target_rel) = self.hard_link_target(&target) else {
            return Err(SlugError::DanglingHardLink {
                path: path.text,
                target: String::from_utf8_lossy(&target).into_owned(),
            });
        };
        if Captured::for_path(&path.rel).is_some() {
            tracing::warn!(path = %path.text, "hard-linked Procfile/.release is kept but not read");
        }
        let target_name = slug_name(&target_rel);
        self.out
            .header(&path.name(), Some(&target_name), EntryType::Link, mode, 0)?;
        self.files.insert(path.rel);
        Ok(())
    }

    /// A hard link's target as a slug path, if it is a regular file already written: the
    /// entry a reader of the slug must already have when it meets the link.
    fn hard_link_target(&self, target: &[u8]) -> Option<Vec<u8>> {
        let components = relative_components(target).ok()?;
        let target_rel = strip_components(&components, &self.prefix)?.join(&b'/');
        self.files.contains(&target_rel).then_some(target_rel)
    }

    /// Streams the data, except for a file to capture, which is read whole (it is small
    /// and must be returned) and written from memory.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: SlugPath,
        mode: u32,
    ) -> Result<(), SlugError> {
        let size = entry.size();
        let captured = self.captures.for_file(&path.rel);
        self.out
            .header(&path.name(), None, EntryType::Regular, mode, size)?;
        match captured {
            Some(captured) => {
                let text = read_captured(entry, size, captured, &path.text)?;
                self.out.data(text.as_bytes())?;
                self.captures.store(captured, text);
            }
            None => self.out.copy_data(entry, size, &path.text)?,
        }
        self.uncompressed_bytes += size;
        self.files.insert(path.rel);
        Ok(())
    }

    /// Ends the slug, which has at least its root, and sums it up.
    fn finish(mut self) -> Result<PackedSlug, SlugError> {
        self.root(DEFAULT_ROOT_MODE)?;
        self.captures.warn_unresolved();
        let (sha256, compressed_bytes) = self.out.finish()?;
        Ok(PackedSlug {
            sha256,
            compressed_bytes,
            uncompressed_bytes: self.uncompressed_bytes,
            entries: self.entries,
            procfile: self.captures.procfile,
            release: self.captures.release,
            ignored_entries: self.ignored_entries,
        })
    }
}

/// Where an input entry goes in the slug.
struct SlugPath {
    /// Relative to the app root, without `./`: `config/Procfile.prod`.
    rel: Vec<u8>,
    /// `rel` as text, for `.slugignore` and messages.
    text: String,
}

impl SlugPath {
    fn new(components: &[&[u8]]) -> SlugPath {
        let rel = components.join(&b'/');
        let text = String::from_utf8_lossy(&rel).into_owned();
        SlugPath { rel, text }
    }

    /// The entry name in the slug's tar.
    fn name(&self) -> Vec<u8> {
        slug_name(&self.rel)
    }
}

/// `./` + a path relative to the app root: how every slug entry is named.
fn slug_name(rel: &[u8]) -> Vec<u8> {
    // Room for a directory's trailing `/` too.
    let mut name = Vec::with_capacity(rel.len() + 3);
    name.extend_from_slice(b"./");
    name.extend_from_slice(rel);
    name
}

/// The top-level Procfile and `.release`, read as they stream by.
#[derive(Default)]
struct Captures {
    /// Top-level Procfile/.release symlinks waiting for their target to stream by.
    pending_links: Vec<(Vec<u8>, Captured)>,
    procfile: Option<String>,
    release: Option<String>,
}

impl Captures {
    /// Remembers where a top-level Procfile/.release symlink points, to read that file
    /// when it comes; a target outside the app is never read.
    fn follow_symlink(&mut self, captured: Captured, link: &SlugPath, target: &[u8]) {
        match resolve_top_level_link(target) {
            Some(resolved) => self.pending_links.push((resolved, captured)),
            None => tracing::warn!(
                path = %link.text,
                target = %String::from_utf8_lossy(target),
                "symlink leaves the app directory; its content is not read"
            ),
        }
    }

    /// What the regular file at `rel_path` is to be read as: itself, or a symlink's target.
    fn for_file(&mut self, rel_path: &[u8]) -> Option<Captured> {
        Captured::for_path(rel_path).or_else(|| self.take_pending(rel_path))
    }

    fn take_pending(&mut self, rel_path: &[u8]) -> Option<Captured> {
        let index = self.pending_links.iter().position(|(t, _)| t == rel_path)?;
        Some(self.pending_links.swap_remove(index).1)
    }

    fn store(&mut self, captured: Captured, text: String) {
        match captured {
            Captured::Procfile => self.procfile = Some(text),
            Captured::Release => self.release = Some(text),
        }
    }

    fn warn_unresolved(&self) {
        for (target, captured) in &self.pending_links {
            tracing::warn!(
                file = captured.label(),
                target = %String::from_utf8_lossy(target),
                "symlink target is not in the slug or comes before it; its content is not read"
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Captured {
    Procfile,
    Release,
}

impl Captured {
    fn for_path(rel_path: &[u8]) -> Option<Captured> {
        match rel_path {
            PROCFILE => Some(Captured::Procfile),
            RELEASE_FILE => Some(Captured::Release),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Captured::Procfile => "Procfile",
            Captured::Release => ".release",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    File,
    Directory,
    Symlink,
    HardLink,
}

impl EntryKind {
    /// `None` for what a slug cannot hold: devices, fifos and unknown types.
    fn of(entry_type: EntryType, raw_path: &[u8]) -> Option<EntryKind> {
        if entry_type.is_dir() {
            Some(EntryKind::Directory)
        } else if entry_type.is_file() && raw_path.ends_with(b"/") {
            // Pre-POSIX archives mark directories only by the trailing slash.
            Some(EntryKind::Directory)
        } else if entry_type.is_file() || entry_type.is_contiguous() || entry_type.is_gnu_sparse() {
            // The tar crate expands sparse files into their full contents.
            Some(EntryKind::File)
        } else if entry_type.is_symlink() {
            Some(EntryKind::Symlink)
        } else if entry_type.is_hard_link() {
            Some(EntryKind::HardLink)
        } else {
            None
        }
    }
}

fn entry_context(last_path: &str) -> String {
    if last_path.is_empty() {
        "first entry".to_owned()
    } else {
        format!("entry after {last_path:?}")
    }
}

fn entry_mode<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<u32, SlugError> {
    let mode = entry.header().mode().map_err(|error| SlugError::Tar {
        context: format!("mode of {path:?}"),
        error,
    })?;
    Ok(mode & 0o7777 & !DROPPED_MODE_BITS)
}

fn normalized_prefix(prefix: &str) -> Vec<Vec<u8>> {
    prefix
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// Splits an entry name into components, dropping empty and `.` ones; refuses absolute
/// names and `..` anywhere, so nothing in a slug can point outside it.
fn relative_components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.is_empty() {
        return Err("empty entry name");
    }
    if raw.starts_with(b"/") {
        return Err("absolute paths are not allowed");
    }
    let mut components = Vec::new();
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("'..' components are not allowed"),
            c => components.push(c),
        }
    }
    Ok(components)
}

fn strip_components<'p>(components: &[&'p [u8]], prefix: &[Vec<u8>]) -> Option<Vec<&'p [u8]>> {
    if components.len() < prefix.len() {
        return None;
    }
    let (head, rest) = components.split_at(prefix.len());
    head.iter()
        .zip(prefix)
        .all(|(c, p)| *c == p.as_slice())
        .then(|| rest.to_vec())
}

/// Resolves a top-level symlink's target to a path relative to the app root, lexically;
/// `None` when it is absolute or climbs out of the root.
fn resolve_top_level_link(target: &[u8]) -> Option<Vec<u8>> {
    if target.starts_with(b"/") {
        return None;
    }
    let mut resolved: Vec<&[u8]> = Vec::new();
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                resolved.pop()?;
            }
            c => resolved.push(c),
        }
    }
    (!resolved.is_empty()).then(|| resolved.join(&b'/'))
}

fn read_captured<R: Read>(
    entry: &mut R,
    size: u64,
    captured: Captured,
    rel_text: &str,
) -> Result<String, SlugError> {
    let label = if captured.label() == rel_text {
        rel_text.to_owned()
    } else {
        format!("{} (symlinked to {rel_text})", captured.label())
    };
    if size > MAX_CAPTURED_FILE_BYTES {
        return Err(SlugError::TooLarge {
            path: label,
            size,
            limit: MAX_CAPTURED_FILE_BYTES,
        });
    }
    // Bounded by the check above.
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|error| SlugError::Tar {
            context: format!("data of {rel_text:?}"),
            error,
        })?;
    if bytes.len() as u64 != size {
        return Err(truncated(rel_text));
    }
    String::from_utf8(bytes).map_err(|_| SlugError::NotText { path: label })
}

fn truncated(rel_text: &str) -> SlugError {
    SlugError::Tar {
        context: format!("data of {rel_text:?}"),
        error: io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends in the middle of this file",
        ),
    }
}

/// Tar-over-gzip-over-sha256 output.
struct SlugWriter<W: Write> {
    tar: TarWriter<ParallelGzip<HashingWriter<W>>>,
}

impl<W: Write> SlugWriter<W> {
    fn new(output: W) -> Result<Self, SlugError> {
        let hashing = HashingWriter {
            inner: output,
            hasher: Sha256::new(),
            written: 0,
        };
        // No file name and mtime 0 in the gzip header: same input, same bytes.
        let gz = ParallelGzip::new(hashing, GZIP_LEVEL, GZIP_OS_UNIX).map_err(SlugError::Io)?;
        Ok(SlugWriter {
            tar: TarWriter::new(gz, 0, SLUG_MTIME),
        })
    }

    /// A header with the slug's fixed owner and time.
    fn header(
        &mut self,
        name: &[u8],
        link: Option<&[u8]>,
        entry_type: EntryType,
        mode: u32,
        size: u64,
    ) -> Result<(), SlugError> {
        self.tar
            .header(name, link, entry_type, mode, size)
            .map_err(SlugError::Io)
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), SlugError> {
        self.tar.data(bytes).map_err(SlugError::Io)
    }

    /// Streams exactly `size` bytes; a short input is an error, never a corrupt slug.
    fn copy_data<R: Read>(
        &mut self,
        input: &mut R,
        size: u64,
        rel_text: &str,
    ) -> Result<(), SlugError> {
        self.tar
            .copy_data(input, size)
            .map_err(|error| match error {
                CopyError::Input(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    truncated(rel_text)
                }
                CopyError::Input(error) => SlugError::Tar {
                    context: format!("data of {rel_text:?}"),
                    error,
                },
                CopyError::Output(error) => SlugError::Io(error),
            })
    }

    /// Writes the end-of-archive marker and the gzip trailer; returns (sha256 hex, bytes).
    fn finish(self) -> Result<(String, u64), SlugError> {
        let gz = self.tar.finish().map_err(SlugError::Io)?;
        let mut hashing = gz.finish().map_err(SlugError::Io)?;
        hashing.inner.flush().map_err(SlugError::Io)?;
        Ok((hex::encode(hashing.hasher.finalize()), hashing.written))
    }
}

/// Hashes and counts what reaches the real output.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
