//! The per-app build cache: `home/<app>/cache/cache.tgz` holds CACHE_DIR between builds,
//! `home/<app>/cache/cache.sha256` the SHA-256 of its uncompressed tar stream.
//!
//! The cache is packed deterministically (sorted as the engine walks it, fixed owner and
//! mtime, gzip header without time), so the hash only changes when the content does: an
//! unchanged cache is not uploaded again. A cache that does not match its hash, or cannot be
//! read, is discarded with a warning: it only ever makes a build faster, never fails one.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use deis_executor::Job;
use deis_slug::tar_writer::TarWriter;
use deis_storage::{ObjectStore, StorageError};
use deis_types::names::AppName;
use deis_types::pipe::ByteStream;

pub use deis_executor::CACHE_DIR;
/// mtime of every cache entry: content, not build time, decides whether the cache changed.
const CACHE_MTIME: u64 = 315_532_800;
const GZIP_OS_UNIX: u8 = 3;
/// Longest hash object we read (64 hex digits and a newline, with room to spare).
const MAX_HASH_OBJECT_BYTES: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("cannot pack the cache: {0}")]
    Io(#[from] io::Error),
}

/// Object keys of an app's cache.
#[derive(Debug, Clone)]
pub struct CacheKeys {
    pub archive: String,
    pub hash: String,
}

impl CacheKeys {
    pub fn new(app: &AppName) -> CacheKeys {
        CacheKeys {
            archive: format!("home/{app}/cache/cache.tgz"),
            hash: format!("home/{app}/cache/cache.sha256"),
        }
    }
}

/// A verified cache archive on the host, ready to be unpacked into CACHE_DIR.
#[derive(Debug, Clone)]
pub struct RestoredCache {
    pub path: PathBuf,
    pub sha256: String,
    pub compressed_bytes: u64,
}

#[derive(Debug)]
pub enum Restore {
    /// No cache yet (first build, or purged).
    Empty,
    Restored(RestoredCache),
    /// The stored cache was unreadable and has been deleted; the reason says why.
    Discarded(String),
}

/// Result of packing CACHE_DIR after a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedCache {
    /// SHA-256 of the uncompressed tar stream.
    pub sha256: String,
    pub compressed_bytes: u64,
    pub entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// The buildpacks left CACHE_DIR empty: nothing is stored (an old cache is deleted).
    Empty,
    Unchanged,
    Stored {
        compressed_bytes: u64,
    },
}

/// Deletes an app's cache (both objects). Idempotent; says whether there was one.
pub async fn purge(store: &dyn ObjectStore, app: &AppName) -> Result<bool, StorageError> {
    let keys = CacheKeys::new(app);
    let existed = store.exists(&keys.archive).await? || store.exists(&keys.hash).await?;
    // Hash first: a half-purged cache then fails verification instead of being trusted.
    store.delete(&keys.hash).await?;
    store.delete(&keys.archive).await?;
    Ok(existed)
}

/// Downloads and verifies the app's cache into `dir`.
pub async fn restore(store: &dyn ObjectStore, app: &AppName, dir: &Path) -> Restore {
    let keys = CacheKeys::new(app);
    match fetch_verified(store, &keys, dir).await {
        Ok(Some(restored)) => Restore::Restored(restored),
        Ok(None) => Restore::Empty,
        Err(reason) => {
            tracing::warn!(%reason, app = %app, "discarding unreadable build cache");
            if let Err(error) = purge(store, app).await {
                tracing::error!(%error, "cannot delete the unreadable build cache");
            }
            Restore::Discarded(reason)
        }
    }
}

async fn fetch_verified(
    store: &dyn ObjectStore,
    keys: &CacheKeys,
    dir: &Path,
) -> Result<Option<RestoredCache>, String> {
    let Some(archive) = store
        .get(&keys.archive)
        .await
        .map_err(|e| format!("cannot read it: {e}"))?
    else {
        return Ok(None);
    };
    let expected = match store
        .get(&keys.hash)
        .await
        .map_err(|e| format!("cannot read its hash: {e}"))?
    {
        Some(reader) => {
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(
                &mut tokio::io::AsyncReadExt::take(reader, MAX_HASH_OBJECT_BYTES),
                &mut bytes,
            )
            .await
            .map_err(|e| format!("cannot read its hash: {e}"))?;
            String::from_utf8_lossy(&bytes).trim().to_owned()
        }
        None => return Err("its hash is missing".to_owned()),
    };
    let path = dir.join("cache.tgz");
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| format!("cannot store it on the builder: {e}"))?;
    let mut archive = archive;
    let compressed_bytes = tokio::io::copy(&mut archive, &mut file)
        .await
        .map_err(|e| format!("cannot download it: {e}"))?;
    file.flush()
        .await
        .map_err(|e| format!("cannot store it on the builder: {e}"))?;
    drop(file);
    let check = path.clone();
    let actual = tokio::task::spawn_blocking(move || verify(&check))
        .await
        .map_err(|e| format!("verification crashed: {e}"))?
        .map_err(|e| format!("it is not a readable archive ({e})"))?;
    if actual != expected {
        return Err("its content does not match its hash".to_owned());
    }
    Ok(Some(RestoredCache {
        path,
        sha256: actual,
        compressed_bytes,
    }))
}

/// Reads the whole archive once: gzip and tar must parse, every path must be relative and
/// stay inside CACHE_DIR. Returns the SHA-256 of the tar stream.
pub fn verify(path: &Path) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    let decoder = flate2::read::GzDecoder::new(io::BufReader::new(file));
    let mut hashing = HashingReader {
        inner: decoder,
        hasher: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            if !is_safe_relative(&path) {
                return Err(io::Error::other(format!(
                    "unsafe path {} in the cache",
                    path.display()
                )));
            }
            io::copy(&mut entry, &mut io::sink())?;
        }
    }
    // The tar reader stops at the end-of-archive blocks; hash the rest of the stream too.
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hex::encode(hashing.hasher.finalize()))
}

fn is_safe_relative(path: &Path) -> bool {
    path.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    })
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Re-packs the engine's archive of CACHE_DIR (entries `cache/...`) into a deterministic
/// gzip'd tar of paths relative to CACHE_DIR. Regular files, directories, symlinks and hard
/// links are kept with their permission bits; everything else is skipped.
pub fn pack<R: Read, W: Write>(input: R, output: W) -> io::Result<PackedCache> {
    // Level 1: the cache is repacked after every build and is mostly already-compressed
    // packages; speed matters more than a few percent of size here.
    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(
            CountingWriter {
                inner: output,
                bytes: 0,
            },
            flate2::Compression::fast(),
        );
    let mut tar = TarWriter::new(
        HashingWriter {
            inner: gzip,
            hasher: Sha256::new(),
        },
        0,
        CACHE_MTIME,
    );
    let mut archive = tar::Archive::new(input);
    let mut entries = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(relative) = strip_cache_prefix(&raw) else {
            continue;
        };
        if !is_safe_relative(Path::new(relative)) {
            return Err(io::Error::other(format!(
                "unsafe path {raw:?} in the cache"
            )));
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode()? & 0o777;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                tar.file_from(relative, mode, size, &mut entry)?;
            }
            tar::EntryType::Directory => tar.dir(relative, mode)?,
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                tar.symlink(relative, &target)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.map(|t| t.to_string_lossy().into_owned());
                let Some(target) = target.as_deref().and_then(strip_cache_prefix) else {
                    continue;
                };
                tar.hard_link(relative, target.as_bytes(), mode)?;
            }
            _ => {
                tracing::debug!(path = %raw, "skipping special file in the cache");
                continue;
            }
        }
        entries += 1;
    }
    let hashing = tar.finish()?;
    let sha256 = hex::encode(hashing.hasher.finalize());
    let counting = hashing.inner.finish()?;
    let compressed_bytes = counting.bytes;
    let mut output = counting.inner;
    output.flush()?;
    Ok(PackedCache {
        sha256,
        compressed_bytes,
        entries,
    })
}

/// `cache/pip/x` → `pip/x`; the `cache` directory itself → None.
fn strip_cache_prefix(path: &str) -> Option<&str> {
    let path = path.trim_start_matches("./");
    let rest = path.strip_prefix("cache")?;
    let rest = rest.strip_prefix('/')?.trim_end_matches('/');
    (!rest.is_empty()).then_some(rest)
}

/// Packs the container's CACHE_DIR into `dir` and stores it unless its hash equals
/// `previous` (the hash of the cache the build started from).
pub async fn save(
    store: &dyn ObjectStore,
    app: &AppName,
    container: &dyn Job,
    previous: Option<&str>,
    dir: &Path,
) -> Result<Saved, CacheError> {
    let keys = CacheKeys::new(app);
    // Untouched since it was restored: the stored cache is this one already.
    if previous.is_some() && container.unchanged_since_upload(CACHE_DIR) {
        return Ok(Saved::Unchanged);
    }
    let path = dir.join("cache-new.tgz");
    let download: ByteStream = container.download(CACHE_DIR);
    let reader = SyncIoBridge::new(StreamReader::new(download));
    let target = path.clone();
    let packed = tokio::task::spawn_blocking(move || -> io::Result<PackedCache> {
        let file = std::fs::File::create(&target)?;
        let mut writer = io::BufWriter::new(file);
        let packed = pack(reader, &mut writer)?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(packed)
    })
    .await
    .map_err(|e| io::Error::other(format!("cache packer crashed: {e}")))??;
    if packed.entries == 0 {
        if previous.is_some() {
            purge(store, app).await?;
        }
        return Ok(Saved::Empty);
    }
    if previous == Some(packed.sha256.as_str()) {
        return Ok(Saved::Unchanged);
    }
    let mut file = tokio::fs::File::open(&path).await?;
    store.put(&keys.archive, &mut file).await?;
    store
        .put(&keys.hash, &mut format!("{}\n", packed.sha256).as_bytes())
        .await?;
    tracing::info!(sha256 = %packed.sha256, bytes = packed.compressed_bytes, "build cache stored");
    Ok(Saved::Stored {
        compressed_bytes: packed.compressed_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engine's archive of /build/cache looks like.
    fn engine_archive(files: &[(&str, &[u8])], mtime: u64) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_mtime(mtime);
        dir.set_size(0);
        tar.append_data(&mut dir.clone(), "cache/", io::empty())
            .unwrap();
        tar.append_data(&mut dir, "cache/pip/", io::empty())
            .unwrap();
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_uid(1000);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, format!("cache/{name}"), *data)
                .unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn packing_is_deterministic_and_content_addressed() {
        let files: &[(&str, &[u8])] = &[("pip/a.whl", b"wheel"), ("marker", b"1")];
        let mut first = Vec::new();
        let a = pack(&engine_archive(files, 100)[..], &mut first).unwrap();
        let mut second = Vec::new();
        let b = pack(&engine_archive(files, 999)[..], &mut second).unwrap();
        assert_eq!(a, b, "mtimes must not change the hash");
        assert_eq!(first, second);
        assert_eq!(a.entries, 3);

        let mut third = Vec::new();
        let changed: &[(&str, &[u8])] = &[("pip/a.whl", b"wheel2"), ("marker", b"1")];
        let c = pack(&engine_archive(changed, 100)[..], &mut third).unwrap();
        assert_ne!(a.sha256, c.sha256);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.tgz");
        std::fs::write(&path, &first).unwrap();
        assert_eq!(verify(&path).unwrap(), a.sha256);
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&first[..]));
        for entry in archive.entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["pip", "pip/a.whl", "marker"]);
    }

    #[test]
    fn corrupt_archives_fail_verification() {
        let mut packed = Vec::new();
        pack(&engine_archive(&[("x", b"data")], 1)[..], &mut packed).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.tgz");
        std::fs::write(&path, b"this is not gzip").unwrap();
        assert!(verify(&path).is_err());
        let mut truncated = packed.clone();
        truncated.truncate(packed.len() / 2);
        std::fs::write(&path, &truncated).unwrap();
        assert!(verify(&path).is_err());
    }

    #[test]
    fn prefix_stripping() {
        assert_eq!(strip_cache_prefix("cache/"), None);
        assert_eq!(strip_cache_prefix("cache/a/b"), Some("a/b"));
        assert_eq!(strip_cache_prefix("cachex/a"), None);
        assert_eq!(strip_cache_prefix("./cache/a/"), Some("a"));
    }

    #[test]
    fn keys_follow_the_deis_layout() {
        let keys = CacheKeys::new(&AppName::parse("myapp").unwrap());
        assert_eq!(keys.archive, "home/myapp/cache/cache.tgz");
        assert_eq!(keys.hash, "home/myapp/cache/cache.sha256");
    }
}
