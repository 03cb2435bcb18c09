//! Object store in a local directory: the embedded default, same key layout as the bucket.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    validate_key, Body, ObjectReader, ObjectStore, StorageError, Version, MAX_RECORD_BYTES,
};

/// Directory under the root holding uploads in progress. It lives on the same filesystem as the
/// objects so publishing is an atomic rename. Keys under it are refused.
pub const TEMP_DIR_NAME: &str = ".tmp";
/// Temp files untouched for this long are leftovers of a crash and are removed on `open`.
/// An upload in progress keeps its file's mtime fresh, so only dead ones are that old.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60 * 60);
/// Chunk size for reading the caller's body.
const BODY_CHUNK_BYTES: usize = 256 * 1024;
/// Writes to the temp file are gathered into chunks this big, so that each trip to tokio's
/// blocking pool moves a useful amount of data.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Read buffer for `get`, for the same reason.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// A concurrent `delete` may prune the (empty) parent directory between our `create_dir_all`
/// and `rename`; retry a few times rather than fail the upload.
const RENAME_ATTEMPTS: usize = 3;

/// Objects as files under `root`: key `a/b/c` is the file `root/a/b/c`.
///
/// Conditional writes of records are atomic within this process (one lock for all of
/// them), which is all a local directory serves: one builder (see the README).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    temp_dir: PathBuf,
    records: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl LocalStore {
    /// Opens (creating when needed) the object directory at `root`, and removes stale temp files
    /// left by a crash.
    pub async fn open(root: PathBuf) -> Result<Self, StorageError> {
        let open_error = |root: &Path, cause: io::Error| StorageError::Local {
            operation: "open",
            target: format!("local directory {}", root.display()),
            cause,
        };
        // Absolute so that `describe` and error messages stay meaningful whatever the cwd.
        let root = std::path::absolute(&root).map_err(|cause| open_error(&root, cause))?;
        let temp_dir = root.join(TEMP_DIR_NAME);
        tokio::fs::create_dir_all(&temp_dir)
            .await
            .map_err(|cause| open_error(&root, cause))?;
        let store = LocalStore {
            root,
            temp_dir,
            records: Default::default(),
        };
        store.remove_stale_temp_files().await;
        Ok(store)
    }

    /// The directory holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a key to its file. Validation rules out `..`, absolute keys and empty segments, so
    /// the result is always strictly inside the root.
    fn path_for(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        if key.split('/').next() == Some(TEMP_DIR_NAME) {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "keys under '.tmp/' are reserved by the local object store",
            });
        }
        Ok(self.root.join(key))
    }

    fn key_error(&self, operation: &'static str, key: &str, cause: io::Error) -> StorageError {
        StorageError::Local {
            operation,
            target: format!("{key:?} in {}", self.describe()),
            cause,
        }
    }

    async fn remove_stale_temp_files(&self) {
        let mut entries = match tokio::fs::read_dir(&self.temp_dir).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(dir = %self.temp_dir.display(), %error, "cannot list temp files");
                return;
            }
        };
        let now = SystemTime::now();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let is_stale = match entry.metadata().await.and_then(|meta| meta.modified()) {
                Ok(modified) => now
                    .duration_since(modified)
                    .is_ok_and(|age| age > STALE_TEMP_AGE),
                Err(_) => false,
            };
            if is_stale {
                let path = entry.path();
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => tracing::info!(path = %path.display(), "removed stale temp file"),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove stale temp file")
                    }
                }
            }
        }
    }

    /// Copies the body into `file`, returning the number of bytes. Body read errors and write
    /// errors are told apart so the message says whose fault it was.
    async fn write_body(
        &self,
        key: &str,
        body: Body<'_>,
        file: tokio::fs::File,
    ) -> Result<u64, StorageError> {
        let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        let mut chunk = vec![0u8; BODY_CHUNK_BYTES];
        let mut written: u64 = 0;
        loop {
            let read = body
                .read(&mut chunk)
                .await
                .map_err(|cause| StorageError::BodyRead {
                    backend: self.describe(),
                    key: key.to_owned(),
                    cause,
                })?;
            if read == 0 {
                break;
            }
            writer
                .write_all(&chunk[..read])
                .await
                .map_err(|cause| self.key_error("put", key, cause))?;
            written += read as u64;
        }
        writer
            .flush()
            .await
            .map_err(|cause| self.key_error("put", key, cause))?;
        // Durable before it becomes visible: a crash must not publish a truncated object.
        writer
            .into_inner()
            .sync_all()
            .await
            .map_err(|cause| self.key_error("put", key, cause))?;
        Ok(written)
    }

    /// Moves the finished temp file to its final path, creating parent directories.
    async fn publish(&self, temp_path: &Path, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(&self.root);
        let mut attempt = 1;
        loop {
            tokio::fs::create_dir_all(parent).await?;
            match tokio::fs::rename(temp_path, path).await {
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound && attempt < RENAME_ATTEMPTS =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Removes now-empty directories between `path` and the root, so deleted objects do not
    /// leave a trail of empty directories. Stops at the first non-empty one.
    async fn prune_empty_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) {
                break;
            }
            if tokio::fs::remove_dir(current).await.is_err() {
                break;
            }
            dir = current.parent();
        }
    }
}

/// A local record's version: a digest of its bytes.
fn version_of(data: &[u8]) -> Version {
    use sha2::Digest;
    Version(hex::encode(sha2::Sha256::digest(data)))
}

impl LocalStore {
    async fn write_record(&self, key: &str, mut data: &[u8]) -> Result<Version, StorageError> {
        let version = version_of(data);
        self.put(key, &mut data).await?;
        Ok(version)
    }

    fn conflict(&self, operation: &'static str, key: &str) -> StorageError {
        StorageError::Conflict {
            operation,
            backend: self.describe(),
            key: key.to_owned(),
        }
    }
}

/// The object is simply not there: missing file, or a path component that is a file.
fn is_absent(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Removes the temp file unless the upload was published, including when the `put` future is
/// dropped halfway.
struct TempFileGuard {
    path: Option<PathBuf>,
}

impl TempFileGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Synchronous on purpose: Drop cannot await, and unlinking one file is quick.
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot remove temp file");
                }
            }
        }
    }
}

/// Flushes a directory entry change (the rename) to disk.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Body<'_>) -> Result<u64, StorageError> {
        let path = self.path_for(key)?;
        // Recreated on each put in case an operator cleaned the directory out.
        tokio::fs::create_dir_all(&self.temp_dir)
            .await
            .map_err(|cause| self.key_error("put", key, cause))?;
        let temp_path = self
            .temp_dir
            .join(format!("{:032x}.part", rand::random::<u128>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .await
            .map_err(|cause| self.key_error("put", key, cause))?;
        let mut guard = TempFileGuard {
            path: Some(temp_path.clone()),
        };
        let written = self.write_body(key, body, file).await?;
        self.publish(&temp_path, &path)
            .await
            .map_err(|cause| self.key_error("put", key, cause))?;
        guard.disarm();
        if let Some(parent) = path.parent() {
            // The object is already visible; failing the put now would only mislead the caller.
            if let Err(error) = sync_dir(parent).await {
                tracing::warn!(dir = %parent.display(), %error, "cannot sync directory after rename");
            }
        }
        tracing::debug!(key, bytes = written, "stored object in local directory");
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        let path = self.path_for(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if is_absent(&error) => return Ok(None),
            Err(cause) => return Err(self.key_error("get", key, cause)),
        };
        let metadata = file
            .metadata()
            .await
            .map_err(|cause| self.key_error("get", key, cause))?;
        // A directory is a key prefix, not an object.
        if !metadata.is_file() {
            return Ok(None);
        }
        Ok(Some(Box::new(tokio::io::BufReader::with_capacity(
            READ_BUFFER_BYTES,
            file,
        ))))
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let path = self.path_for(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) => Ok(metadata.is_file()),
            Err(error) if is_absent(&error) => Ok(false),
            Err(cause) => Err(self.key_error("exists", key, cause)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_for(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                self.prune_empty_parents(&path).await;
                Ok(())
            }
            Err(error) if is_absent(&error) => Ok(()),
            Err(cause) => {
                // A directory at the key is a prefix, so there is no object to delete.
                match tokio::fs::metadata(&path).await {
                    Ok(metadata) if metadata.is_dir() => Ok(()),
                    _ => Err(self.key_error("delete", key, cause)),
                }
            }
        }
    }

    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StorageError> {
        let Some(reader) = self.get(key).await? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        reader
            .take(MAX_RECORD_BYTES as u64 + 1)
            .read_to_end(&mut data)
            .await
            .map_err(|cause| self.key_error("read", key, cause))?;
        if data.len() > MAX_RECORD_BYTES {
            return Err(StorageError::RecordTooLarge {
                backend: self.describe(),
                key: key.to_owned(),
                limit_bytes: MAX_RECORD_BYTES,
            });
        }
        let version = version_of(&data);
        Ok(Some((data, version)))
    }

    async fn create_record(&self, key: &str, data: &[u8]) -> Result<Version, StorageError> {
        let _one_at_a_time = self.records.lock().await;
        if self.exists(key).await? {
            return Err(self.conflict("create", key));
        }
        self.write_record(key, data).await
    }

    async fn replace_record(
        &self,
        key: &str,
        data: &[u8],
        expected: &Version,
    ) -> Result<Version, StorageError> {
        let _one_at_a_time = self.records.lock().await;
        match self.read_record(key).await? {
            Some((_, current)) if current == *expected => self.write_record(key, data).await,
            _ => Err(self.conflict("replace", key)),
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        let check_error = |cause: io::Error| StorageError::Local {
            operation: "check",
            target: self.describe(),
            cause,
        };
        let metadata = tokio::fs::metadata(&self.root).await.map_err(check_error)?;
        if !metadata.is_dir() {
            return Err(check_error(io::Error::new(
                io::ErrorKind::NotADirectory,
                "the root is not a directory",
            )));
        }
        // Writable means we can create a temp file, which is exactly what `put` needs.
        tokio::fs::create_dir_all(&self.temp_dir)
            .await
            .map_err(check_error)?;
        let probe_path = self
            .temp_dir
            .join(format!("{:032x}.check", rand::random::<u128>()));
        let _guard = TempFileGuard {
            path: Some(probe_path.clone()),
        };
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe_path)
            .await
            .map_err(check_error)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{read_all, FailingReader};

    async fn temp_store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("objects")).await.unwrap();
        (dir, store)
    }

    async fn temp_files(store: &LocalStore) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut entries = tokio::fs::read_dir(&store.temp_dir).await.unwrap();
        while let Some(entry) = entries.next_entry().await.unwrap() {
            found.push(entry.path());
        }
        found
    }

    #[tokio::test]
    async fn put_get_exists_delete_roundtrip() {
        let (_dir, store) = temp_store().await;
        let key = "home/app:git-1234abcd/push/slug.tgz";
        assert!(!store.exists(key).await.unwrap());
        assert!(store.get(key).await.unwrap().is_none());

        let written = store.put(key, &mut &b"slug bytes"[..]).await.unwrap();
        assert_eq!(written, 10);
        assert!(store.exists(key).await.unwrap());
        let reader = store.get(key).await.unwrap().unwrap();
        assert_eq!(read_all(reader).await, b"slug bytes");
        assert!(store
            .root()
            .join("home/app:git-1234abcd/push/slug.tgz")
            .is_file());

        // Overwrite replaces the whole object.
        store.put(key, &mut &b"v2"[..]).await.unwrap();
        assert_eq!(
            read_all(store.get(key).await.unwrap().unwrap()).await,
            b"v2"
        );

        store.delete(key).await.unwrap();
        assert!(!store.exists(key).await.unwrap());
        assert!(store.get(key).await.unwrap().is_none());
        // Idempotent.
        store.delete(key).await.unwrap();
        // Empty parents are pruned, the root stays.
        assert!(!store.root().join("home").exists());
        assert!(store.root().is_dir());
        assert!(temp_files(&store).await.is_empty());
    }

    #[tokio::test]
    async fn empty_body_is_an_empty_object() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.put("empty", &mut &b""[..]).await.unwrap(), 0);
        assert!(store.exists("empty").await.unwrap());
        assert!(read_all(store.get("empty").await.unwrap().unwrap())
            .await
            .is_empty());
    }

    #[tokio::test]
    async fn large_streamed_put_roundtrips() {
        let (_dir, store) = temp_store().await;
        let size = 3 * 1024 * 1024 + 17;
        let mut body = FailingReader::new(size, None);
        let expected = FailingReader::expected_sha256(size);
        assert_eq!(store.put("big/blob", &mut body).await.unwrap(), size);
        let reader = store.get("big/blob").await.unwrap().unwrap();
        assert_eq!(crate::test_support::sha256_of(reader).await, expected);
    }

    #[tokio::test]
    async fn failing_body_leaves_nothing_behind() {
        let (_dir, store) = temp_store().await;
        let key = "home/app:git-1234abcd/tar";
        let mut body = FailingReader::new(10 * 1024 * 1024, Some(1024 * 1024 + 5));
        let error = store.put(key, &mut body).await.unwrap_err();
        assert!(
            matches!(error, StorageError::BodyRead { .. }),
            "unexpected error {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(key), "{message}");
        assert!(message.contains("local directory"), "{message}");
        assert!(!store.exists(key).await.unwrap());
        assert!(!store.root().join(key).exists());
        assert!(temp_files(&store).await.is_empty());

        // An existing object survives a failed overwrite untouched.
        store.put(key, &mut &b"good"[..]).await.unwrap();
        let mut body = FailingReader::new(100, Some(50));
        store.put(key, &mut body).await.unwrap_err();
        assert_eq!(
            read_all(store.get(key).await.unwrap().unwrap()).await,
            b"good"
        );
        assert!(temp_files(&store).await.is_empty());
    }

    #[tokio::test]
    async fn dropped_put_removes_its_temp_file() {
        let (_dir, store) = temp_store().await;
        // A body that never ends: the put is cancelled by the timeout.
        let (mut endless, _writer) = tokio::io::duplex(64);
        let put = store.put("never", &mut endless);
        tokio::time::timeout(Duration::from_millis(100), put)
            .await
            .unwrap_err();
        assert!(temp_files(&store).await.is_empty());
        assert!(!store.exists("never").await.unwrap());
    }

    #[tokio::test]
    async fn traversal_and_reserved_keys_are_rejected() {
        let (dir, store) = temp_store().await;
        for key in [
            "../escape",
            "a/../../escape",
            "/etc/passwd",
            "",
            "a//b",
            ".tmp/x",
            ".tmp",
        ] {
            assert!(
                matches!(
                    store.put(key, &mut &b"x"[..]).await,
                    Err(StorageError::InvalidKey { .. })
                ),
                "put {key:?}"
            );
            assert!(store.get(key).await.is_err(), "get {key:?}");
            assert!(store.exists(key).await.is_err(), "exists {key:?}");
            assert!(store.delete(key).await.is_err(), "delete {key:?}");
        }
        assert!(!dir.path().join("escape").exists());
        // `.tmp` elsewhere than at the top is an ordinary name.
        store.put("a/.tmp/x", &mut &b"x"[..]).await.unwrap();
    }

    #[tokio::test]
    async fn directories_are_prefixes_not_objects() {
        let (_dir, store) = temp_store().await;
        store
            .put("home/app/cache/cache.tgz", &mut &b"c"[..])
            .await
            .unwrap();
        assert!(store.get("home/app").await.unwrap().is_none());
        assert!(!store.exists("home/app").await.unwrap());
        store.delete("home/app").await.unwrap();
        assert!(store.exists("home/app/cache/cache.tgz").await.unwrap());
        // A key below an object is simply absent.
        assert!(store
            .get("home/app/cache/cache.tgz/x")
            .await
            .unwrap()
            .is_none());
        assert!(!store.exists("home/app/cache/cache.tgz/x").await.unwrap());
        store.delete("home/app/cache/cache.tgz/x").await.unwrap();
    }

    #[tokio::test]
    async fn check_and_describe() {
        let (dir, store) = temp_store().await;
        store.check().await.unwrap();
        assert!(temp_files(&store).await.is_empty());
        assert_eq!(
            store.describe(),
            format!("local directory {}", dir.path().join("objects").display())
        );
        std::fs::remove_dir_all(store.root()).unwrap();
        std::fs::write(store.root(), b"not a dir").unwrap();
        let message = store.check().await.unwrap_err().to_string();
        assert!(message.contains("local directory"), "{message}");
    }

    #[tokio::test]
    async fn open_removes_stale_temp_files_only() {
        let (_dir, store) = temp_store().await;
        let stale = store.temp_dir.join("stale.part");
        let fresh = store.temp_dir.join("fresh.part");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        let old = SystemTime::now() - 2 * STALE_TEMP_AGE;
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let reopened = LocalStore::open(store.root().to_owned()).await.unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
        drop(reopened);
    }

    #[tokio::test]
    async fn records_are_conditional() {
        let (_dir, store) = temp_store().await;
        crate::test_support::records_are_conditional(&store).await;
    }
}
