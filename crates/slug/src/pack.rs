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
    let prefix = normalized_prefix(opts.strip_prefix);
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|error| SlugError::Tar {
        context: "start of archive".to_owned(),
        error,
    })?;

    let mut out = SlugWriter::new(output)?;
    let mut state = PackState::default();
    let mut last_path = String::new();

    for entry in entries {
        let mut entry = entry.map_err(|error| SlugError::Tar {
            context: entry_context(&last_path),
            error,
        })?;
        let raw_path = entry.path_bytes().into_owned();
        last_path = String::from_utf8_lossy(&raw_path).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            continue; // archive-wide metadata (mtimes, owners) we do not keep anyway
        }

        let components =
            relative_components(&raw_path).map_err(|reason| SlugError::UnsafePath {
                path: last_path.clone(),
                reason,
            })?;
        let Some(rel) = strip_components(&components, &prefix) else {
            return Err(SlugError::OutsidePrefix {
                path: last_path.clone(),
                prefix: String::from_utf8_lossy(&prefix.join(&b'/')).into_owned(),
            });
        };
        let kind = EntryKind::of(entry_type, &raw_path);

        if rel.is_empty() {
            if kind != EntryKind::Directory {
                return Err(SlugError::UnsafePath {
                    path: last_path.clone(),
                    reason: "the app root must be a directory",
                });
            }
            if !state.root_written {
                let mode = entry_mode(&entry, &last_path)?;
                out.header(b"./", None, EntryType::Directory, mode, 0)?;
                state.root_written = true;
                state.entries += 1;
            }
            continue;
        }

        let rel_path = rel.join(&b'/');
        let rel_text = String::from_utf8_lossy(&rel_path).into_owned();
        if rel.contains(&GIT_DIR) || rel_path == SLUGIGNORE_FILE {
            continue;
        }
        let is_dir = kind == EntryKind::Directory;
        let protected = rel_path == PROCFILE || rel_path == RELEASE_FILE;
        if opts.ignore.is_ignored(&rel_text, is_dir) {
            if protected {
                tracing::warn!(path = %rel_text, ".slugignore matches a file the app needs to start; keeping it");
            } else {
                state.ignored_entries += 1;
                continue;
            }
        }

        if kind == EntryKind::Unsupported {
            tracing::warn!(
                path = %rel_text,
                entry_type = entry_type.as_byte(),
                "leaving a special file (device, fifo or unknown type) out of the slug"
            );
            continue;
        }

        if !state.root_written {
            // Input without its own root entry (e.g. `tar -c file1 dir/`): slugs always have one.
            out.header(b"./", None, EntryType::Directory, 0o755, 0)?;
            state.root_written = true;
            state.entries += 1;
        }

        let mode = entry_mode(&entry, &last_path)?;
        let mut name = Vec::with_capacity(rel_path.len() + 3);
        name.extend_from_slice(b"./");
        name.extend_from_slice(&rel_path);

        match kind {
            EntryKind::Directory => {
                name.push(b'/');
                out.header(&name, None, EntryType::Directory, mode, 0)?;
            }
            EntryKind::Symlink => {
                let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
                    return Err(SlugError::Tar {
                        context: format!("symlink {rel_text:?}"),
                        error: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "symlink without a target",
                        ),
                    });
                };
                if let Some(captured) = Captured::for_path(&rel_path) {
                    match resolve_top_level_link(&target) {
                        Some(resolved) => state.pending_links.push((resolved, captured)),
                        None => tracing::warn!(
                            path = %rel_text,
                            target = %String::from_utf8_lossy(&target),
                            "symlink leaves the app directory; its content is not read"
                        ),
                    }
                }
                out.header(&name, Some(&target), EntryType::Symlink, mode, 0)?;
            }
            EntryKind::HardLink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_rel = relative_components(&target)
                    .ok()
                    .and_then(|c| strip_components(&c, &prefix).map(|rel| rel.join(&b'/')))
                    .filter(|t| state.files.contains(t));
                let Some(target_rel) = target_rel else {
                    return Err(SlugError::DanglingHardLink {
                        path: rel_text,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                };
                if Captured::for_path(&rel_path).is_some() {
                    tracing::warn!(path = %rel_text, "hard-linked Procfile/.release is kept but not read");
                }
                let mut target_name = b"./".to_vec();
                target_name.extend_from_slice(&target_rel);
                out.header(&name, Some(&target_name), EntryType::Link, mode, 0)?;
                state.files.insert(rel_path);
            }
            EntryKind::File => {
                let size = entry.size();
                let captured =
                    Captured::for_path(&rel_path).or_else(|| state.take_pending(&rel_path));
                out.header(&name, None, EntryType::Regular, mode, size)?;
                match captured {
                    Some(captured) => {
                        let text = read_captured(&mut entry, size, captured, &rel_text)?;
                        out.data(text.as_bytes())?;
                        state.store(captured, text);
                    }
                    None => out.copy_data(&mut entry, size, &rel_text)?,
                }
                state.uncompressed_bytes += size;
                state.files.insert(rel_path);
            }
            EntryKind::Unsupported => {}
        }
        state.entries += 1;
    }

    if !state.root_written {
        out.header(b"./", None, EntryType::Directory, 0o755, 0)?;
        state.entries += 1;
    }
    for (target, captured) in &state.pending_links {
        tracing::warn!(
            file = captured.label(),
            target = %String::from_utf8_lossy(target),
            "symlink target is not in the slug or comes before it; its content is not read"
        );
    }
    let (sha256, compressed_bytes) = out.finish()?;
    Ok(PackedSlug {
        sha256,
        compressed_bytes,
        uncompressed_bytes: state.uncompressed_bytes,
        entries: state.entries,
        procfile: state.procfile,
        release: state.release,
        ignored_entries: state.ignored_entries,
    })
}

#[derive(Default)]
struct PackState {
    root_written: bool,
    entries: u64,
    uncompressed_bytes: u64,
    ignored_entries: u64,
    /// Paths of regular files written so far: the only valid hard-link targets.
    files: HashSet<Vec<u8>>,
    /// Top-level Procfile/.release symlinks waiting for their target to stream by.
    pending_links: Vec<(Vec<u8>, Captured)>,
    procfile: Option<String>,
    release: Option<String>,
}

impl PackState {
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
    Unsupported,
}

impl EntryKind {
    fn of(entry_type: EntryType, raw_path: &[u8]) -> EntryKind {
        if entry_type.is_dir() {
            EntryKind::Directory
        } else if entry_type.is_file() && raw_path.ends_with(b"/") {
            // Pre-POSIX archives mark directories only by the trailing slash.
            EntryKind::Directory
        } else if entry_type.is_file() || entry_type.is_contiguous() || entry_type.is_gnu_sparse() {
            // The tar crate expands sparse files into their full contents.
            EntryKind::File
        } else if entry_type.is_symlink() {
            EntryKind::Symlink
        } else if entry_type.is_hard_link() {
            EntryKind::HardLink
        } else {
            EntryKind::Unsupported
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
