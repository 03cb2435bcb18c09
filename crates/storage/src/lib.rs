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

    /// Cheap reachability check for health endpoints (S3: HeadBucket; local: the root is a
    /// writable dir).
    async fn check(&self) -> Result<(), StorageError>;

    /// Human description without secrets, e.g. `s3://bucket at http://127.0.0.1:9000` or
    /// `local directory /var/lib/x`.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod test_support;
