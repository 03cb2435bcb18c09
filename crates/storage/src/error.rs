use std::io;

/// Everything that can go wrong in object storage. Messages name the backend (see
/// [`super::ObjectStore::describe`]) and the key, and never carry credentials. Each message
/// already includes its cause, so the underlying errors are fields, not `source()`s (printing
/// an error chain would otherwise repeat them).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key breaks the rules of [`super::validate_key`] or is reserved by the backend.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// The settings cannot describe a usable store (empty bucket, malformed endpoint, ...).
    #[error("invalid storage settings: {reason}")]
    InvalidSettings { reason: String },

    /// Reading the caller's upload body failed; nothing was published at the key.
    #[error("put {key:?} in {backend} failed: reading the data to upload failed: {cause}")]
    BodyRead {
        backend: String,
        key: String,
        cause: io::Error,
    },

    /// The body is larger than the backend accepts in one object.
    #[error("put {key:?} in {backend} failed: the object is larger than {limit_bytes} bytes")]
    TooLarge {
        backend: String,
        key: String,
        limit_bytes: u64,
    },

    /// A conditional write lost: someone else created or replaced the record first.
    #[error("{operation} {key:?} in {backend}: someone else changed it first")]
    Conflict {
        operation: &'static str,
        backend: String,
        key: String,
    },

    /// A record is larger than [`super::MAX_RECORD_BYTES`]: not one this builder wrote.
    #[error("read {key:?} in {backend}: the record is larger than {limit_bytes} bytes")]
    RecordTooLarge {
        backend: String,
        key: String,
        limit_bytes: usize,
    },

    /// A filesystem operation of the local backend failed.
    #[error("{operation} {target} failed: {cause}")]
    Local {
        operation: &'static str,
        /// What was operated on: `"key" in local directory /x`, or the store itself.
        target: String,
        cause: io::Error,
    },

    /// An S3 request failed: refused connection, timeout, or an error answer of the service.
    #[error("{operation} {target} failed: {detail}")]
    S3 {
        operation: &'static str,
        /// What was operated on: `"key" in s3://bucket at ...`, or the bucket itself.
        target: String,
        /// The service's error code (`NoSuchBucket`, `AccessDenied`, ...) when it sent one.
        code: Option<String>,
        detail: String,
    },
}

impl StorageError {
    /// The S3 error code the service answered with, if any (`NoSuchBucket`, `AccessDenied`, ...).
    pub fn service_code(&self) -> Option<&str> {
        match self {
            StorageError::S3 { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}
