//! Safe extraction of a slug into the app directory, for the slug runner.
//!
//! A slug comes from storage the runner does not control, so every entry is checked before
//! anything is written: names with `..` or a leading `/` are refused, nothing is ever written
//! through a symlink (every parent is checked to be a real directory, files are created with
//! `O_EXCL`), symlinks and hard links must stay inside the app directory, and devices,
//! fifos and other special entries are refused. Sizes, entry counts and the extension
//! headers (GNU long names, pax records, which the `tar` crate reads into memory) are
//! capped, so a hostile header cannot exhaust memory or disk.
//!
//! Both layouts are accepted: entries relative to the app (`./Procfile`, what [`super::pack`]
//! writes) and Heroku's `./app/Procfile`. The first entry decides: a slug whose first entry is
//! the `app/` directory uses the second layout and every later entry must be under `app/`.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

/// Where apps run; absolute symlink targets below it count as inside the app.
pub const DEFAULT_APP_PATH: &str = "/app";
/// Cap on the extension headers (long names, pax records) before one entry.
pub const MAX_EXTENSION_HEADER_BYTES: u64 = 1024 * 1024;
/// Longest entry or link name accepted (Linux's PATH_MAX).
pub const MAX_NAME_BYTES: usize = 4096;
/// What may follow the end-of-archive marker (tar pads to 10 KiB records; more is suspicious).
const MAX_TRAILING_BYTES: u64 = 1024 * 1024;
const COPY_BUFFER_BYTES: usize = 256 * 1024;
/// Slugs over 500 MB are refused by Heroku; unpacked they may be a few times larger.
const DEFAULT_MAX_TOTAL_BYTES: u64 = 16 * 1024 * 1024 * 1024;
const DEFAULT_MAX_ENTRIES: u64 = 2_000_000;
/// A name of at most [`MAX_NAME_BYTES`] has at most this many components: by default depth
/// is bounded by the name cap alone.
const DEFAULT_MAX_DEPTH: usize = MAX_NAME_BYTES / 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// The path the app runs at: absolute symlink targets under it are accepted (buildpacks
    /// write links like `/app/.heroku/python/bin/python`), any other absolute target is not.
    pub app_path: String,
    /// Limit on the sum of regular file sizes.
    pub max_total_bytes: u64,
    /// Limit on the number of entries, and on the files, links and directories created
    /// (a directory an entry's path needs counts too, so deep names cannot multiply it).
    pub max_entries: u64,
    /// Limit on the directory levels of an entry's path.
    pub max_depth: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            app_path: DEFAULT_APP_PATH.to_owned(),
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// How the slug's entries were named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlugLayout {
    /// `./Procfile`, `./app.py`, …
    Root,
    /// Heroku's `./app/Procfile`, …
    AppDir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackSummary {
    pub layout: SlugLayout,
    /// Entries read, the root directory and skipped pax global headers included.
    pub entries: u64,
    /// Sum of regular file sizes written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the slug is corrupt (not a complete gzip'd tar): {0}")]
    Corrupt(io::Error),
    #[error("unsafe entry {path:?} in the slug: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("slug entry {path:?} is a {kind}; a slug may only hold files, directories and links")]
    ForbiddenType { path: String, kind: String },
    #[error("symlink {path:?} -> {target:?} points outside the app directory")]
    SymlinkEscape { path: String, target: String },
    #[error("hard link {path:?} -> {target:?} refused: {reason}")]
    BadHardLink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error(
        "slug entry {path:?} is outside ./app/, but the slug starts with the ./app/ directory"
    )]
    MixedLayout { path: String },
    #[error("the slug unpacks to more than {limit} bytes (at entry {path:?} of {size} bytes)")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("the slug has more than {limit} entries (counting the directories they need)")]
    TooManyEntries { limit: u64 },
    #[error("slug entry {path:?} is nested more than {limit} directories deep")]
    TooDeep { path: String, limit: usize },
    #[error("the slug's extension headers (long names, pax records) exceed {limit} bytes")]
    HeadersTooLarge { limit: u64 },
    #[error("the slug holds no entries")]
    Empty,
    #[error("writing {} failed: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
}

/// Unpacks a gzip'd tar slug read from `slug` into `dest` (created when missing).
///
/// On error `dest` may hold part of the slug (never anything outside it): discard it.
pub fn unpack_slug<R: Read>(
    slug: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, UnpackError> {
    unpack_tar(GzDecoder::new(slug), dest, opts)
}

/// Like [`unpack_slug`] for an uncompressed tar stream.
pub fn unpack_tar<R: Read>(
    tar_stream: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, UnpackError> {
    fs::create_dir_all(dest).map_err(|error| UnpackError::Write {
        path: dest.to_owned(),
        error,
    })?;
    let budget = Rc::new(ReadBudget::default());
    let mut archive = tar::Archive::new(BudgetReader {
        inner: tar_stream,
        budget: Rc::clone(&budget),
    });
    let mut extractor = Extractor {
        root: dest.to_owned(),
        opts,
        layout: None,
        dir_modes: Vec::new(),
        entries: 0,
        created: 0,
        bytes: 0,
    };
    {
        let mut entries = archive.entries().map_err(UnpackError::Corrupt)?;
        loop {
            // Only headers are read inside `next()` (entry data is always consumed first).
            budget.limit_to_headers();
            let Some(next) = entries.next() else { break };
            let mut entry = next.map_err(|error| budget.classify(error))?;
            budget.lift();
            extractor.entry(&mut entry)?;
        }
    }
    if extractor.entries == 0 {
        return Err(UnpackError::Empty);
    }
    // Reading to the end checks the gzip trailer (CRC, length) of a compressed slug.
    budget.lift();
    let mut rest = archive.into_inner().take(MAX_TRAILING_BYTES + 1);
    let trailing = io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Corrupt)?;
    if trailing > MAX_TRAILING_BYTES {
        return Err(UnpackError::Corrupt(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_TRAILING_BYTES} bytes follow the end of the archive"),
        )));
    }
    extractor.finish()
}

/// Shared between the reader handed to `tar` and the loop driving it.
#[derive(Default)]
struct ReadBudget {
    consumed: Cell<u64>,
    limit: Cell<Option<u64>>,
    tripped: Cell<bool>,
}

impl ReadBudget {
    fn limit_to_headers(&self) {
        // Two header blocks of slack for the entry's own header and padding.
        self.limit.set(Some(
            self.consumed.get() + MAX_EXTENSION_HEADER_BYTES + 1024,
        ));
    }

    fn lift(&self) {
        self.limit.set(None);
    }

    fn classify(&self, error: io::Error) -> UnpackError {
        if self.tripped.get() {
            UnpackError::HeadersTooLarge {
                limit: MAX_EXTENSION_HEADER_BYTES,
            }
        } else {
            UnpackError::Corrupt(error)
        }
    }
}

struct BudgetReader<R> {
    inner: R,
    budget: Rc<ReadBudget>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let consumed = self.budget.consumed.get();
        let allowed = match self.budget.limit.get() {
            Some(limit) if consumed >= limit => {
                self.budget.tripped.set(true);
                return Err(io::Error::other("extension headers too large"));
            }
            Some(limit) => usize::try_from(limit - consumed).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let len = buf.len().min(allowed);
        let read = self.inner.read(&mut buf[..len])?;
        self.budget.consumed.set(consumed + read as u64);
        Ok(read)
    }
}

struct Extractor<'a> {
    root: PathBuf,
    opts: &'a UnpackOptions,
    layout: Option<SlugLayout>,
    /// Directory modes, applied at the end so a read-only directory does not block its
    /// own children.
    dir_modes: Vec<(PathBuf, u32)>,
    entries: u64,
    /// Files, links and directories made so far.
    created: u64,
    bytes: u64,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.opts.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.opts.max_entries,
            });
        }
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            // pax global headers carry defaults we do not use; skip their data (capped).
            return skip_data(entry, &shown);
        }
        let unsafe_path = |reason| UnpackError::UnsafePath {
            path: shown.clone(),
            reason,
        };
        let components = split_name(&raw_name).map_err(unsafe_path)?;
        let components = self.strip_layout(components, entry_type.is_dir(), &shown)?;
        if components.len() > self.opts.max_depth {
            return Err(UnpackError::TooDeep {
                path: shown,
                limit: self.opts.max_depth,
            });
        }

        match entry_type {
            EntryType::Regular | EntryType::Continuous => self.file(entry, &components, &shown),
            EntryType::Directory => {
                no_data(entry, &shown)?;
                self.directory(entry, &components, &shown)
            }
            EntryType::Symlink => {
                no_data(entry, &shown)?;
                self.symlink(entry, &components, &shown)
            }
            EntryType::Link => {
                no_data(entry, &shown)?;
                self.hard_link(entry, &components, &shown)
            }
            other => Err(UnpackError::ForbiddenType {
                path: shown,
                kind: type_description(other),
            }),
        }
    }

    /// Decides the layout on the first entry and removes the `app/` prefix in that layout.
    fn strip_layout<'n>(
        &mut self,
        components: Vec<&'n [u8]>,
        is_dir: bool,
        shown: &str,
    ) -> Result<Vec<&'n [u8]>, UnpackError> {
        let layout = *self.layout.get_or_insert(
            if is_dir && components.len() == 1 && components[0] == b"app" {
                SlugLayout::AppDir
            } else {
                SlugLayout::Root
            },
        );
        match layout {
            SlugLayout::Root => Ok(components),
            SlugLayout::AppDir => match components.split_first() {
                Some((first, rest)) if *first == b"app" => Ok(rest.to_vec()),
                _ => Err(UnpackError::MixedLayout {
                    path: shown.to_owned(),
                }),
            },
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        components: &[&[u8]],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        let limit = self.opts.max_total_bytes;
        if size > limit.saturating_sub(self.bytes) {
            return Err(UnpackError::TooLarge {
                path: shown.to_owned(),
                size,
                limit,
            });
        }
        let mode = entry_mode(entry)?;
        let leaf = self.prepare_leaf(components, shown)?;
        let write_error = |error| UnpackError::Write {
            path: leaf.clone(),
            error,
        };
        // create_new is O_CREAT|O_EXCL: it fails rather than follow a symlink at `leaf`.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&leaf)
            .map_err(write_error)?;
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut written = 0u64;
        loop {
            let read = match entry.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(UnpackError::Corrupt(error)),
            };
            file.write_all(&buffer[..read]).map_err(write_error)?;
            written += read as u64;
        }
        if written != size {
            return Err(UnpackError::Corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{shown} ends after {written} of {size} bytes"),
            )));
        }
        // setuid/setgid/sticky are dropped: nothing in a slug gains privileges.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
            .map_err(write_error)?;
        self.bytes += size;
        Ok(())
    }

    fn directory<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        components: &[&[u8]],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let mode = entry_mode(entry)?;
        let path = self.ensure_dirs(components, shown)?;
        if !components.is_empty() {
            self.dir_modes.push((path, mode));
        }
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        components: &[&[u8]],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .unwrap_or_default();
        let shown_target = String::from_utf8_lossy(&target).into_owned();
        let parent_depth = components.len().saturating_sub(1);
        if components.is_empty()
            || target.len() > MAX_NAME_BYTES
            || !symlink_stays_inside(parent_depth, &target, &self.opts.app_path)
        {
            return Err(UnpackError::SymlinkEscape {
                path: shown.to_owned(),
                target: shown_target,
            });
        }
        let leaf = self.prepare_leaf(components, shown)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &leaf)
            .map_err(|error| UnpackError::Write { path: leaf, error })
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        components: &[&[u8]],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let raw_target = entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .unwrap_or_default();
        let shown_target = String::from_utf8_lossy(&raw_target).into_owned();
        let refuse = |reason| UnpackError::BadHardLink {
            path: shown.to_owned(),
            target: shown_target.clone(),
            reason,
        };
        // Hard link targets are member names, so they follow the same rules and layout.
        let target = split_name(&raw_target).map_err(refuse)?;
        let target = match self.layout {
            Some(SlugLayout::AppDir) => match target.split_first() {
                Some((first, rest)) if *first == b"app" => rest.to_vec(),
                _ => return Err(refuse("the target is outside ./app/")),
            },
            _ => target,
        };
        if components.is_empty() || target.is_empty() {
            return Err(refuse("a link cannot replace the app directory"));
        }
        if target == components {
            return Err(refuse("the link points to itself"));
        }
        let target_path = self.existing_file(&target).ok_or_else(|| {
            refuse("the target is not a regular file unpacked earlier from the slug")
        })?;
        let leaf = self.prepare_leaf(components, shown)?;
        fs::hard_link(&target_path, &leaf).map_err(|error| UnpackError::Write { path: leaf, error })
    }

    /// Counts one more file, link or directory against the entry limit.
    fn count_created(&mut self) -> Result<(), UnpackError> {
        self.created += 1;
        if self.created > self.opts.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.opts.max_entries,
            });
        }
        Ok(())
    }

    /// Makes the parents of a non-directory entry and clears its place: an existing file or
    /// symlink there is removed (never followed), an existing directory is an error. The
    /// leaf counts as created.
    fn prepare_leaf(&mut self, components: &[&[u8]], shown: &str) -> Result<PathBuf, UnpackError> {
        let Some((name, parents)) = components.split_last() else {
            return Err(UnpackError::UnsafePath {
                path: shown.to_owned(),
                reason: "only a directory may stand for the app directory itself",
            });
        };
        let leaf = self
            .ensure_dirs(parents, shown)?
            .join(OsStr::from_bytes(name));
        self.count_created()?;
        match fs::symlink_metadata(&leaf) {
            Ok(meta) if meta.is_dir() => Err(UnpackError::UnsafePath {
                path: shown.to_owned(),
                reason: "a directory of that name already exists",
            }),
            Ok(_) => match fs::remove_file(&leaf) {
                Ok(()) => Ok(leaf),
                Err(error) => Err(UnpackError::Write { path: leaf, error }),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(leaf),
            Err(error) => Err(UnpackError::Write { path: leaf, error }),
        }
    }

    /// Creates the directories of `components` below the root, refusing to go through
    /// anything that is not a real directory (a symlink from the slug could lead anywhere).
    fn ensure_dirs(&mut self, components: &[&[u8]], shown: &str) -> Result<PathBuf, UnpackError> {
        let mut path = self.root.clone();
        for component in components {
            path.push(OsStr::from_bytes(component));
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) => {
                    return Err(UnpackError::UnsafePath {
                        path: shown.to_owned(),
                        reason: if meta.file_type().is_symlink() {
                            "it leads through a symlink"
                        } else {
                            "it leads through something that is not a directory"
                        },
                    });
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.count_created()?;
                    fs::create_dir(&path).map_err(|error| UnpackError::Write {
                        path: path.clone(),
                        error,
                    })?;
                }
                Err(error) => return Err(UnpackError::Write { path, error }),
            }
        }
        Ok(path)
    }

    /// The path of an existing regular file reached through real directories only.
    fn existing_file(&self, components: &[&[u8]]) -> Option<PathBuf> {
        let mut path = self.root.clone();
        let (name, parents) = components.split_last()?;
        for component in parents {
            path.push(OsStr::from_bytes(component));
            if !fs::symlink_metadata(&path).ok()?.is_dir() {
                return None;
            }
        }
        path.push(OsStr::from_bytes(name));
        fs::symlink_metadata(&path).ok()?.is_file().then_some(path)
    }

    fn finish(self) -> Result<UnpackSummary, UnpackError> {
        // Deepest first, so a parent's mode never blocks fixing a child.
        for (path, mode) in self.dir_modes.iter().rev() {
            // The owner keeps full access: the app may write below its own directory.
            fs::set_permissions(path, fs::Permissions::from_mode((mode & 0o777) | 0o700)).map_err(
                |error| UnpackError::Write {
                    path: path.clone(),
                    error,
                },
            )?;
        }
        Ok(UnpackSummary {
            layout: self.layout.unwrap_or(SlugLayout::Root),
            entries: self.entries,
            bytes: self.bytes,
        })
    }
}

/// An entry name as path components without `.` and empty ones; `..` and absolute names
/// are refused.
fn split_name(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.len() > MAX_NAME_BYTES {
        return Err("name longer than 4096 bytes");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    let mut components = Vec::new();
    for component in raw.split(|byte| *byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("'..' in the path"),
            component => components.push(component),
        }
    }
    Ok(components)
}

/// Whether a symlink whose parent directory is `parent_depth` levels below the app root
/// resolves inside the app. `..` is accepted only before the first name: after a name it
/// would be resolved from wherever that name (possibly another symlink) leads.
fn symlink_stays_inside(parent_depth: usize, target: &[u8], app_path: &str) -> bool {
    let (relative, mut depth) = if target.first() == Some(&b'/') {
        let app = app_path.trim_end_matches('/').as_bytes();
        match target.strip_prefix(app) {
            Some(rest) if rest.is_empty() || rest[0] == b'/' => (rest, 0),
            _ => return false,
        }
    } else {
        (target, parent_depth)
    };
    if target.is_empty() {
        return false;
    }
    let mut seen_name = false;
    for component in relative.split(|byte| *byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." if seen_name || depth == 0 => return false,
            b".." => depth -= 1,
            _ => seen_name = true,
        }
    }
    true
}

fn entry_mode<R: Read>(entry: &tar::Entry<'_, R>) -> Result<u32, UnpackError> {
    entry.header().mode().map_err(UnpackError::Corrupt)
}

fn no_data<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<(), UnpackError> {
    match entry.size() {
        0 => Ok(()),
        size => Err(UnpackError::Corrupt(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{shown} declares {size} bytes of data, but only regular files carry data"),
        ))),
    }
}

fn skip_data<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<(), UnpackError> {
    if entry.size() > MAX_EXTENSION_HEADER_BYTES {
        return Err(UnpackError::HeadersTooLarge {
            limit: MAX_EXTENSION_HEADER_BYTES,
        });
    }
    io::copy(entry, &mut io::sink())
        .map(|_| ())
        .map_err(|error| {
            UnpackError::Corrupt(io::Error::new(error.kind(), format!("{shown}: {error}")))
        })
}

fn type_description(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::Char => "character device".to_owned(),
        EntryType::Block => "block device".to_owned(),
        EntryType::Fifo => "fifo".to_owned(),
        EntryType::GNUSparse => "sparse file".to_owned(),
        other => format!("entry of type {:?}", char::from(other.as_byte())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_must_stay_inside() {
        let inside = |depth, target: &str| symlink_stays_inside(depth, target.as_bytes(), "/app");
        assert!(inside(0, "bin/run"));
        assert!(inside(2, "../../x"));
        assert!(inside(0, "/app"));
        assert!(inside(0, "/app/.heroku/python/bin/python"));
        assert!(inside(1, "./../lib/./x"));
        assert!(!inside(0, ""));
        assert!(!inside(0, ".."));
        assert!(!inside(1, "../../x"));
        assert!(!inside(0, "/etc/passwd"));
        assert!(!inside(0, "/application"));
        assert!(!inside(0, "/app/../etc"));
        // `..` after a name could resolve through another symlink.
        assert!(!inside(3, "a/../b"));
    }

    #[test]
    fn names_are_split_and_checked() {
        assert_eq!(
            split_name(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(split_name(b"./").unwrap(), Vec::<&[u8]>::new());
        assert!(split_name(b"").is_err());
        assert!(split_name(b"/etc").is_err());
        assert!(split_name(b"a/../b").is_err());
        assert!(split_name(&vec![b'a'; MAX_NAME_BYTES + 1]).is_err());
    }
}
