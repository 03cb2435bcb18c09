//! Object storage: the one place that talks to S3 or to the local object directory.
//!
//! Everyone else holds an `Arc<dyn ObjectStore>` and streams bytes through it. Both backends
//! publish an object only once it is complete, so a failed or interrupted `put` never leaves a
//! partial object behind at its key (invariant 3 of the architecture).

mod error;
mod key;
mod local;
mod s3;

pub use error::StorageError;
pub use key::{validate_key, MAX_KEY_BYTES};
pub use local::{LocalStore, TEMP_DIR_NAME as LOCAL_TEMP_DIR};
pub use s3::{S3Settings, S3Store, MAX_PARTS, PART_SIZE};

/// The data to upload: any async reader, read once to its end.
pub type Body<'a> = &'a mut (dyn tokio::io::AsyncRead + Send + Unpin);

/// A stream of an object's bytes, as returned by [`ObjectStore::get`].
pub type ObjectReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// The version of a small record as the store names it (S3: the ETag; local: a digest of
/// the bytes). Two writes of the same bytes may get the same version, so records that must
/// be told apart carry something unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(String);

impl Version {
    /// A version as read back from somewhere it was kept as text.
    pub fn new(version: String) -> Version {
        Version(version)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The most bytes [`ObjectStore::read_record`] reads: records coordinate, they carry no data.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Streams `body` to `key`. The object becomes visible only when complete (local: temp file +
    /// rename; S3: PutObject for small bodies, multipart for large with parts >= 8 MiB, aborted on
    /// any error), so a failed put never leaves a partial object at `key`. Returns bytes written.
    async fn put(&self, key: &str, body: Body<'_>) -> Result<u64, StorageError>;

    /// Streams an object; `Ok(None)` when absent.
    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StorageError>;

    async fn exists(&self, key: &str) -> Result<bool, StorageError>;

    /// Idempotent: deleting an absent key is Ok.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Reads a small coordination record whole, with its version; `Ok(None)` when absent.
    /// Larger than [`MAX_RECORD_BYTES`] is an error.
    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StorageError>;

    /// Creates the record at `key` only if nothing is there (S3: `If-None-Match: *`);
    /// [`StorageError::Conflict`] otherwise.
    async fn create_record(&self, key: &str, data: &[u8]) -> Result<Version, StorageError>;

    /// Replaces the record at `key` only while its version is still `expected` (S3:
    /// `If-Match`); [`StorageError::Conflict`] when it changed or is gone.
    async fn replace_record(
        &self,
        key: &str,
        data: &[u8],
        expected: &Version,
    ) -> Result<Version, StorageError>;

    /// Cheap reachability check for health endpoints (S3: HeadBucket; local: the root is a
    /// writable dir).
    async fn check(&self) -> Result<(), StorageError>;

    /// Human description without secrets, e.g. `s3://bucket at http://127.0.0.1:9000` or
    /// `local directory /var/lib/x`.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod test_support;
