//! Readers and helpers shared by the storage tests.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Yields `total` bytes of a deterministic pattern, in odd-sized chunks, or fails with an I/O
/// error once `fail_at` bytes have been produced.
pub struct FailingReader {
    position: u64,
    total: u64,
    fail_at: Option<u64>,
}

/// Odd on purpose, so reads never line up with part boundaries.
const MAX_CHUNK: u64 = 65_521;

impl FailingReader {
    pub fn new(total: u64, fail_at: Option<u64>) -> Self {
        FailingReader {
            position: 0,
            total,
            fail_at,
        }
    }

    fn byte_at(position: u64) -> u8 {
        (position.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
    }

    pub fn expected_sha256(total: u64) -> String {
        let mut hasher = Sha256::new();
        let mut chunk = Vec::with_capacity(MAX_CHUNK as usize);
        let mut position = 0;
        while position < total {
            let end = (position + MAX_CHUNK).min(total);
            chunk.clear();
            chunk.extend((position..end).map(Self::byte_at));
            hasher.update(&chunk);
            position = end;
        }
        hex::encode(hasher.finalize())
    }
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let limit = self.fail_at.unwrap_or(u64::MAX).min(self.total);
        if self.position >= limit {
            if self.fail_at.is_some_and(|fail_at| self.position >= fail_at) {
                return Poll::Ready(Err(io::Error::other("simulated body failure")));
            }
            return Poll::Ready(Ok(()));
        }
        let count = (limit - self.position)
            .min(MAX_CHUNK)
            .min(buf.remaining() as u64);
        let start = self.position;
        let chunk: Vec<u8> = (start..start + count).map(Self::byte_at).collect();
        buf.put_slice(&chunk);
        self.position += count;
        Poll::Ready(Ok(()))
    }
}

pub async fn read_all(mut reader: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut data = Vec::new();
    reader.read_to_end(&mut data).await.unwrap();
    data
}

pub async fn sha256_of(mut reader: impl AsyncRead + Unpin) -> String {
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut chunk).await.unwrap();
        if read == 0 {
            break;
        }
        hasher.update(&chunk[..read]);
    }
    hex::encode(hasher.finalize())
}

/// The contract of conditional records, the same for every backend: create only when
/// absent, replace only the version read, and a lost race is a typed conflict.
pub async fn records_are_conditional(store: &dyn crate::ObjectStore) {
    use crate::StorageError;
    let key = "builder/test/record.json";
    assert!(store.read_record(key).await.unwrap().is_none());
    let first = store.create_record(key, b"one").await.unwrap();
    assert!(matches!(
        store.create_record(key, b"two").await,
        Err(StorageError::Conflict { .. })
    ));
    let (data, version) = store.read_record(key).await.unwrap().unwrap();
    assert_eq!((data.as_slice(), &version), (&b"one"[..], &first));

    let second = store.replace_record(key, b"two", &first).await.unwrap();
    assert_ne!(second, first);
    // The first version is gone: a writer still holding it loses.
    let stale = store.replace_record(key, b"three", &first).await;
    assert!(
        matches!(stale, Err(StorageError::Conflict { .. })),
        "{stale:?}"
    );
    let (data, version) = store.read_record(key).await.unwrap().unwrap();
    assert_eq!((data.as_slice(), &version), (&b"two"[..], &second));

    store.delete(key).await.unwrap();
    let gone = store.replace_record(key, b"four", &second).await;
    assert!(
        matches!(gone, Err(StorageError::Conflict { .. })),
        "{gone:?}"
    );
    assert!(store.read_record(key).await.unwrap().is_none());

    let big = vec![b'x'; crate::MAX_RECORD_BYTES + 1];
    let mut body = big.as_slice();
    store.put(key, &mut body).await.unwrap();
    assert!(matches!(
        store.read_record(key).await,
        Err(StorageError::RecordTooLarge { .. })
    ));
    store.delete(key).await.unwrap();
}
