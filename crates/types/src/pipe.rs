//! A bounded byte pipe from blocking code (tar, gzip) to async consumers (the engine API,
//! object storage). The reader fails unless the writer explicitly finished, so a producer
//! that errors or panics can never pass for a complete, shorter stream.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc;

/// Bytes gathered before a chunk is handed over.
const CHUNK: usize = 256 * 1024;

enum Msg {
    Data(Bytes),
    End,
    Error(io::Error),
}

/// A boxed byte stream, the currency between git, the engine, the packer and storage.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Create a pipe holding at most `chunks` chunks of 256 KiB in flight.
pub fn pipe(chunks: usize) -> (PipeWriter, ByteStream) {
    let (tx, rx) = mpsc::channel(chunks.max(1));
    let reader = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Msg::Data(data)) => Some((Ok(data), Some(rx))),
            Some(Msg::End) => None,
            Some(Msg::Error(error)) => Some((Err(error), None)),
            None => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the producer stopped before the end",
                )),
                None,
            )),
        }
    });
    (
        PipeWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        },
        Box::pin(reader),
    )
}

/// The blocking end. Must only be used off the async runtime (e.g. in `spawn_blocking`).
pub struct PipeWriter {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
}

impl PipeWriter {
    fn send(&self, msg: Msg) -> io::Result<()> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the consumer went away"))
    }

    /// Marks the stream complete.
    pub fn finish(mut self) -> io::Result<()> {
        io::Write::flush(&mut self)?;
        self.send(Msg::End)
    }

    /// Makes the reader fail with `error`.
    pub fn fail(self, error: io::Error) {
        let _ = self.send(Msg::Error(error));
    }
}

impl io::Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.send(Msg::Data(chunk))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;

    async fn collect(reader: impl Stream<Item = io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        futures_util::pin_mut!(reader);
        while let Some(chunk) = reader.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn finished_streams_arrive_whole() {
        let (mut writer, reader) = pipe(2);
        let producer = tokio::task::spawn_blocking(move || {
            for _ in 0..1000 {
                writer.write_all(&[7u8; 1000]).unwrap();
            }
            writer.finish().unwrap();
        });
        let data = collect(reader).await.unwrap();
        producer.await.unwrap();
        assert_eq!(data.len(), 1_000_000);
    }

    #[tokio::test]
    async fn unfinished_or_failed_streams_are_errors() {
        let (mut writer, reader) = pipe(2);
        tokio::task::spawn_blocking(move || {
            writer.write_all(b"partial").unwrap();
            drop(writer);
        });
        assert!(collect(reader).await.is_err());

        let (writer, reader) = pipe(2);
        tokio::task::spawn_blocking(move || writer.fail(io::Error::other("boom")));
        assert!(collect(reader).await.is_err());
    }
}
