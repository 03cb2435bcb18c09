//! Parallel gzip, pigz style: the input is cut into fixed blocks that worker threads
//! deflate at once, each primed with the 32 KiB before it, so the output is one ordinary
//! gzip member, as small as a serial `gzip -6` and byte-identical for the same input
//! whatever the number of threads.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input per block. Large blocks keep the per-block sync marker (5 bytes) negligible.
const BLOCK_BYTES: usize = 1 << 20;
/// Deflate's window: what each block may refer back to.
const DICTIONARY_BYTES: usize = 32 * 1024;

struct Job {
    dictionary: Vec<u8>,
    data: Vec<u8>,
    last: bool,
    reply: mpsc::Sender<io::Result<Vec<u8>>>,
}

/// A `Write` that gzips to `inner` on a small pool of threads. Call [`ParallelGzip::finish`].
pub struct ParallelGzip<W: Write> {
    inner: Option<W>,
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
    /// Results in input order; bounded, so memory stays flat.
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
    max_pending: usize,
    block: Vec<u8>,
    dictionary: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
}

impl<W: Write> ParallelGzip<W> {
    /// Writes the gzip header (no name, mtime 0, so output depends only on the input).
    pub fn new(mut inner: W, level: u32, os: u8) -> io::Result<Self> {
        let xfl = match level {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, os])?;
        let threads = thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let level = Compression::new(level);
        let workers = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let _ = job.reply.send(deflate_block(&job, level));
                })
            })
            .collect();
        Ok(ParallelGzip {
            inner: Some(inner),
            jobs: Some(jobs),
            workers,
            pending: VecDeque::new(),
            max_pending: threads * 2,
            block: Vec::with_capacity(BLOCK_BYTES),
            dictionary: Vec::new(),
            crc: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_BYTES));
        self.crc.update(&data);
        self.size += data.len() as u64;
        let tail = data.len().saturating_sub(DICTIONARY_BYTES);
        let next_dictionary = data[tail..].to_vec();
        let (reply, result) = mpsc::channel();
        let job = Job {
            dictionary: std::mem::replace(&mut self.dictionary, next_dictionary),
            data,
            last,
            reply,
        };
        match &self.jobs {
            Some(jobs) => jobs
                .send(job)
                .map_err(|_| io::Error::other("gzip worker threads stopped"))?,
            None => return Err(io::Error::other("gzip stream already finished")),
        }
        self.pending.push_back(result);
        while self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(result) = self.pending.pop_front() else {
            return Ok(());
        };
        let compressed = result
            .recv()
            .map_err(|_| io::Error::other("a gzip worker thread died"))??;
        match self.inner.as_mut() {
            Some(inner) => inner.write_all(&compressed),
            None => Err(io::Error::other("gzip stream already finished")),
        }
    }

    /// Compresses what is left, writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        let crc = std::mem::take(&mut self.crc).finalize();
        inner.write_all(&crc.to_le_bytes())?;
        // ISIZE is the length modulo 2^32, as the format says.
        inner.write_all(&(self.size as u32).to_le_bytes())?;
        Ok(inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = BLOCK_BYTES - self.block.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.block.extend_from_slice(now);
            data = rest;
            if self.block.len() == BLOCK_BYTES {
                self.submit(false)?;
            }
        }
        Ok(total)
    }

    /// Compressed output is only complete at block boundaries; flushing the inner writer is all
    /// that makes sense mid-stream.
    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Closing the job queue ends the workers.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Raw deflate of one block: primed with the previous block's tail; ends byte-aligned with
/// a sync marker, or with the final block for the last one.
fn deflate_block(job: &Job, level: Compression) -> io::Result<Vec<u8>> {
    let mut deflate = Compress::new(level, false);
    if !job.dictionary.is_empty() {
        deflate
            .set_dictionary(&job.dictionary)
            .map_err(|e| io::Error::other(format!("deflate dictionary: {e}")))?;
    }
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(job.data.len() / 2 + 1024);
    let mut input = &job.data[..];
    loop {
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(256 * 1024);
        }
        let before_in = deflate.total_in();
        let status = deflate
            .compress_vec(input, &mut out, flush)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        let consumed = (deflate.total_in() - before_in) as usize;
        input = &input[consumed..];
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once all input is in and output space was left over.
            Status::Ok | Status::BufError => {
                !job.last && input.is_empty() && out.len() < out.capacity()
            }
        };
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = ParallelGzip::new(Vec::new(), 6, 3).unwrap();
        // Odd write sizes cross block boundaries at awkward places.
        for chunk in data.chunks(7919) {
            gz.write_all(chunk).unwrap();
        }
        gz.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Half text-like, half noise: both compressible and not.
                if (i / 4096) % 2 == 0 {
                    b"slug data "[i % 10]
                } else {
                    state as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_through_a_standard_decoder() {
        for len in [
            0,
            1,
            1000,
            BLOCK_BYTES - 1,
            BLOCK_BYTES,
            BLOCK_BYTES + 1,
            3 * BLOCK_BYTES + 12345,
        ] {
            let data = sample(len);
            let compressed = gzip(&data);
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(decoded, data, "length {len}");
        }
    }

    #[test]
    fn output_is_deterministic_and_as_small_as_serial_gzip() {
        let data = sample(5 * BLOCK_BYTES);
        let parallel = gzip(&data);
        assert_eq!(parallel, gzip(&data));
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        serial.write_all(&data).unwrap();
        let serial = serial.finish().unwrap();
        assert!(
            parallel.len() as f64 <= serial.len() as f64 * 1.01,
            "{} vs {}",
            parallel.len(),
            serial.len()
        );
    }
}
