//! Build files shared with a local engine through bind mounts. When the engine runs on
//! this machine (checked once at start-up, [`crate::Engine::share_files`]), a build's
//! `/app` and CACHE_DIR are host directories in the push's workspace: the input archive's
//! entries for them are written there directly, and `/app` and the cache are read back
//! from there, instead of moving every byte through the engine's archive API twice.
//!
//! The container can plant anything in these directories, so the host side never follows
//! a symlink in them: files are opened with `O_NOFOLLOW`, every ancestor of an entry is
//! checked to be a real directory, and symlinks are archived as symlinks. Reading back
//! happens only after the container has stopped, so nothing changes under the walk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use deis_slug::tar_writer::TarWriter;
use tar::EntryType;

/// Container directories that live on the host, and the name of their host directory.
/// `/build` holds the build's input besides the source (config, buildpacks, the driver)
/// and CACHE_DIR: with both shared, a build needs no archive call to the engine at all.
const SHARED: [(&str, &str); 2] = [("/app", "app"), ("/build", "build")];

/// Deepest directory the walk descends; a build cannot make the builder recurse forever.
const MAX_DEPTH: usize = 256;

/// The host side of one build's shared directories: `<root>/app` and `<root>/cache`.
#[derive(Debug, Clone)]
pub struct SharedDirs {
    root: PathBuf,
}

impl SharedDirs {
    /// Creates the host directories, owned by the build user (`uid`:`uid`) so the
    /// container can write them.
    pub fn create(root: &Path, uid: u32) -> io::Result<SharedDirs> {
        fs::create_dir_all(root)?;
        for (_, name) in SHARED {
            let dir = root.join(name);
            fs::create_dir(&dir)?;
            std::os::unix::fs::lchown(&dir, Some(uid), Some(uid))?;
        }
        Ok(SharedDirs {
            root: root.to_owned(),
        })
    }

    /// `host:container` bind specifications for the engine.
    pub fn binds(&self) -> Vec<String> {
        SHARED
            .iter()
            .map(|(container, name)| format!("{}:{container}", self.root.join(name).display()))
            .collect()
    }

    /// The host directory behind a container path in a shared directory.
    pub fn host_dir(&self, container_path: &str) -> Option<PathBuf> {
        let name = container_path.trim_start_matches('/').trim_end_matches('/');
        self.host_path(name).ok().flatten()
    }

    /// Writes the entries of an input archive (unpacked at `/` in the container) that
    /// belong to a shared directory under it on the host, with their owners and modes, and
    /// copies every other entry to `rest`, for the engine. Returns how many went to `rest`.
    pub fn split_input(&self, input: impl Read, rest: impl Write) -> io::Result<u64> {
        let mut to_engine = 0;
        let mut others = TarWriter::new(rest, 0, 0);
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = name
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let header = entry.header().clone();
            let (uid, mode) = (header.uid()?, header.mode()? & 0o7777);
            match self.host_path(&name)? {
                Some(host) => self.write_entry(&mut entry, &host, uid, mode)?,
                None => {
                    copy_entry(&mut others, &mut entry, &name, uid, mode)?;
                    to_engine += 1;
                }
            }
        }
        others.finish()?.flush()?;
        Ok(to_engine)
    }

    /// Where an archive entry goes on the host, `None` when it is not shared. Only plain
    /// relative names are accepted.
    fn host_path(&self, name: &str) -> io::Result<Option<PathBuf>> {
        if name.starts_with('/') || name.split('/').any(|part| part == ".." || part == ".") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsafe entry name {name:?} in the build input"),
            ));
        }
        for (container, host_name) in SHARED {
            let prefix = container.trim_start_matches('/');
            let rest = match name.strip_prefix(prefix) {
                Some("") => "",
                Some(rest) if rest.starts_with('/') => &rest[1..],
                _ => continue,
            };
            let mut host = self.root.join(host_name);
            if !rest.is_empty() {
                host.push(rest);
            }
            return Ok(Some(host));
        }
        Ok(None)
    }

    fn write_entry<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        host: &Path,
        uid: u64,
        mode: u32,
    ) -> io::Result<()> {
        let owner = u32::try_from(uid).ok();
        let kind = entry.header().entry_type();
        if let Some(parent) = host.parent() {
            self.ensure_real_dirs(parent, owner)?;
        }
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(host) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => return Err(not_a_directory(host)),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir(host)?,
                    Err(error) => return Err(error),
                }
                std::os::unix::fs::lchown(host, owner, owner)?;
                fs::set_permissions(host, fs::Permissions::from_mode(mode))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(host)?;
                io::copy(entry, &mut file)?;
                std::os::unix::fs::fchown(&file, owner, owner)?;
                file.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| io::Error::other("a symlink without a target"))?;
                let target = String::from_utf8_lossy(&target).into_owned();
                std::os::unix::fs::symlink(target, host)?;
                std::os::unix::fs::lchown(host, owner, owner)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| io::Error::other("a hard link without a target"))?;
                let target = String::from_utf8_lossy(&target).into_owned();
                let Some(target) = self.host_path(target.trim_start_matches("./"))? else {
                    return Err(io::Error::other("a hard link out of its shared directory"));
                };
                if let Some(parent) = target.parent() {
                    self.ensure_real_dirs(parent, owner)?;
                }
                fs::hard_link(target, host)?;
            }
            // The builder's own archives hold nothing else.
            _ => {}
        }
        Ok(())
    }

    /// Makes every directory from the shared root down to `dir` a real directory (missing
    /// ones are created for `owner`, as tar does); a symlink on the way is an error, so
    /// writing below `dir` cannot leave the root.
    fn ensure_real_dirs(&self, dir: &Path, owner: Option<u32>) -> io::Result<()> {
        let relative = dir
            .strip_prefix(&self.root)
            .map_err(|_| io::Error::other("an entry outside the shared directories"))?;
        let mut current = self.root.clone();
        for part in relative.components() {
            current.push(part);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(not_a_directory(&current)),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&current)?;
                    std::os::unix::fs::lchown(&current, owner, owner)?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// A tar of a shared directory, entries named after its last component (`/app` gives
    /// `app/…`) as the engine's archive API names them. Call only once the container
    /// stopped.
    pub fn archive(&self, container_path: &str, out: impl Write) -> io::Result<()> {
        let dir = self
            .host_dir(container_path)
            .ok_or_else(|| io::Error::other(format!("{container_path} is not shared")))?;
        let name = container_path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut tar = TarWriter::new(out, 0, 0);
        let meta = fs::symlink_metadata(&dir)?;
        tar.dir(&name, meta.mode() & 0o7777)?;
        let mut walk = Walk {
            tar: &mut tar,
            links: HashMap::new(),
        };
        walk.dir(&dir, &name, 0)?;
        tar.finish()?.flush()
    }
}

/// What a shared directory holds, cheaply: every path with its kind, mode, size,
/// modification time and link target. Equal manifests before and after a build mean the
/// build changed nothing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest(Vec<ManifestEntry>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct ManifestEntry {
    path: PathBuf,
    mode: u32,
    size: u64,
    modified: (i64, i64),
    link: Option<PathBuf>,
}

impl SharedDirs {
    /// The manifest of a shared directory; `None` when it cannot be read whole.
    pub fn manifest(&self, container_path: &str) -> Option<Manifest> {
        let dir = self.host_dir(container_path)?;
        let mut entries = Vec::new();
        collect_manifest(&dir, Path::new(""), 0, &mut entries).ok()?;
        Some(Manifest(entries))
    }
}

fn collect_manifest(
    dir: &Path,
    relative: &Path,
    depth: usize,
    entries: &mut Vec<ManifestEntry>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other("nested too deep"));
    }
    let mut children = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        let path = child.path();
        let meta = fs::symlink_metadata(&path)?;
        let name = relative.join(child.file_name());
        let link = meta
            .file_type()
            .is_symlink()
            .then(|| fs::read_link(&path))
            .transpose()?;
        entries.push(ManifestEntry {
            path: name.clone(),
            mode: meta.mode(),
            size: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            link,
        });
        if meta.is_dir() {
            collect_manifest(&path, &name, depth + 1, entries)?;
        }
    }
    Ok(())
}

/// The walk of a shared directory: remembers files with several links so later names
/// become hard links, as the engine's archive would have them.
struct Walk<'a, W: Write> {
    tar: &'a mut TarWriter<W>,
    links: HashMap<(u64, u64), String>,
}

impl<W: Write> Walk<'_, W> {
    fn dir(&mut self, dir: &Path, name: &str, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{name} is nested more than {MAX_DEPTH} directories deep"
            )));
        }
        let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                tracing::warn!(dir = %name, "skipping a file whose name is not UTF-8");
                continue;
            };
            let child = format!("{name}/{file_name}");
            let path = entry.path();
            // Never followed: a symlink is archived as what it is.
            let meta = fs::symlink_metadata(&path)?;
            let mode = meta.mode() & 0o7777;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&path)?;
                self.tar
                    .symlink(&child, target.as_os_str().as_encoded_bytes())?;
            } else if kind.is_dir() {
                self.tar.dir(&child, mode)?;
                self.dir(&path, &child, depth + 1)?;
            } else if kind.is_file() {
                self.file(&path, &child, &meta)?;
            }
            // Devices, fifos and sockets are left out, as the slug packer would.
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, name: &str, meta: &fs::Metadata) -> io::Result<()> {
        if meta.nlink() > 1 {
            let id = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&id) {
                return self
                    .tar
                    .hard_link(name, first.as_bytes(), meta.mode() & 0o7777);
            }
            self.links.insert(id, name.to_owned());
        }
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        // The file opened is the one examined: a regular file of the size archived.
        let opened = file.metadata()?;
        if !opened.is_file() || opened.ino() != meta.ino() {
            return Err(io::Error::other(format!(
                "{name} changed while it was read"
            )));
        }
        self.tar
            .file_from(name, meta.mode() & 0o7777, opened.len(), &mut file)
    }
}

fn copy_entry<R: Read, W: Write>(
    tar: &mut TarWriter<W>,
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    uid: u64,
    mode: u32,
) -> io::Result<()> {
    tar.set_owner(uid);
    match entry.header().entry_type() {
        EntryType::Directory => tar.dir(name, mode),
        EntryType::Regular | EntryType::Continuous => {
            let size = entry.size();
            tar.file_from(name, mode, size, entry)
        }
        EntryType::Symlink => match entry.link_name_bytes() {
            Some(target) => tar.symlink(name, &target),
            None => Ok(()),
        },
        EntryType::Link => match entry.link_name_bytes() {
            Some(target) => tar.hard_link(name, &target, mode),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn not_a_directory(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is not a directory (a symlink is never followed)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<(String, EntryType)> {
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                (name, e.header().entry_type())
            })
            .collect()
    }

    fn input() -> Vec<u8> {
        let mut tar = TarWriter::new(Vec::new(), 1000, 0);
        tar.dir("app", 0o755).unwrap();
        tar.dir("build", 0o755).unwrap();
        tar.dir("build/cache", 0o755).unwrap();
        tar.file("app/app.py", 0o644, b"print(1)").unwrap();
        tar.dir("app/lib", 0o755).unwrap();
        tar.symlink("app/lib/link", b"../app.py").unwrap();
        tar.file("build/env/SECRET", 0o600, b"s3cr3t").unwrap();
        tar.file("build/cache/pip/x", 0o644, b"cached").unwrap();
        tar.set_owner(0);
        tar.file("etc/ssl/certs/ca-certificates.crt", 0o644, b"pem")
            .unwrap();
        tar.finish().unwrap()
    }

    #[test]
    fn shared_entries_go_to_the_host_and_the_rest_to_the_engine() {
        let root = tempfile::tempdir().unwrap();
        let shared = SharedDirs::create(&root.path().join("files"), 1000).unwrap();
        let mut rest = Vec::new();
        assert_eq!(shared.split_input(&input()[..], &mut rest).unwrap(), 1);
        let app = shared.host_dir("/app").unwrap();
        assert_eq!(fs::read(app.join("app.py")).unwrap(), b"print(1)");
        assert_eq!(fs::metadata(app.join("app.py")).unwrap().uid(), 1000);
        assert!(fs::symlink_metadata(app.join("lib/link"))
            .unwrap()
            .file_type()
            .is_symlink());
        let cache = shared.host_dir("/build/cache").unwrap();
        assert_eq!(fs::read(cache.join("pip/x")).unwrap(), b"cached");
        assert_eq!(
            fs::read(shared.host_dir("/build/env/SECRET").unwrap()).unwrap(),
            b"s3cr3t"
        );
        let rest: Vec<String> = names(&rest).into_iter().map(|(name, _)| name).collect();
        assert_eq!(rest, ["etc/ssl/certs/ca-certificates.crt"]);
    }

    #[test]
    fn archives_never_follow_what_the_build_planted() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "host secret").unwrap();
        let shared = SharedDirs::create(&root.path().join("files"), 1000).unwrap();
        let app = shared.host_dir("/app").unwrap();
        fs::write(app.join("a"), "data").unwrap();
        fs::hard_link(app.join("a"), app.join("b")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), app.join("leak")).unwrap();
        std::os::unix::fs::symlink(&outside, app.join("dir")).unwrap();
        let mut archive = Vec::new();
        shared.archive("/app", &mut archive).unwrap();
        assert_eq!(
            names(&archive),
            [
                ("app".to_owned(), EntryType::Directory),
                ("app/a".to_owned(), EntryType::Regular),
                ("app/b".to_owned(), EntryType::Link),
                ("app/dir".to_owned(), EntryType::Symlink),
                ("app/leak".to_owned(), EntryType::Symlink),
            ]
        );
        let text = String::from_utf8_lossy(&archive);
        assert!(!text.contains("host secret"));
    }

    #[test]
    fn a_manifest_tells_a_changed_cache_from_an_untouched_one() {
        let root = tempfile::tempdir().unwrap();
        let shared = SharedDirs::create(&root.path().join("files"), 1000).unwrap();
        shared.split_input(&input()[..], io::sink()).unwrap();
        let before = shared.manifest("/build/cache").unwrap();
        assert_eq!(shared.manifest("/build/cache").unwrap(), before);
        let cache = shared.host_dir("/build/cache").unwrap();
        fs::write(cache.join("pip/y"), "new").unwrap();
        assert_ne!(shared.manifest("/build/cache").unwrap(), before);
    }

    #[test]
    fn input_cannot_write_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let shared = SharedDirs::create(&root.path().join("files"), 1000).unwrap();
        let mut tar = TarWriter::new(Vec::new(), 1000, 0);
        tar.symlink("app/evil", outside.as_os_str().as_encoded_bytes())
            .unwrap();
        tar.file("app/evil/owned", 0o644, b"x").unwrap();
        let archive = tar.finish().unwrap();
        assert!(shared.split_input(&archive[..], io::sink()).is_err());
        assert!(!outside.join("owned").exists());
    }
}
