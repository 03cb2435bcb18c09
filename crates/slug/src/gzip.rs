//! Parallel gzip, pigz style: the input is cut into fixed blocks that worker threads
//! deflate at once with libdeflate (about twice as fast as zlib at the same level, and as
//! small). The blocks' deflate streams are chained into one ordinary gzip member, so any
//! gzip reader (including single-member ones) reads a slug, and the bytes are identical
//! for the same input whatever the number of threads.
//!
//! libdeflate only writes complete streams, whose last block is marked final. To chain
//! them, each non-last block's stream is walked (block headers and Huffman symbols, no
//! output) to find its final block; the final bit is cleared and an empty stored block
//! (what zlib's sync flush writes) realigns the stream to a byte boundary.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;

use libdeflater::{CompressionLvl, Compressor};

/// Input per block. Blocks start with an empty window, so they must be large for that to
/// cost nothing measurable (about 0.1% at 1 MiB, less than what libdeflate gains on zlib).
const BLOCK_BYTES: usize = 1 << 20;
/// Empty stored block, byte-aligned part: LEN 0 and its complement.
const SYNC_MARKER_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

struct Job {
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
    crc: crc32fast::Hasher,
    size: u64,
}

impl<W: Write> ParallelGzip<W> {
    /// Writes the gzip header (no name, mtime 0, so output depends only on the input).
    /// `level` is a zlib-style level (1-9); libdeflate's levels of the same number compress
    /// at least as well.
    pub fn new(inner: W, level: u32, os: u8) -> io::Result<Self> {
        let threads = thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        Self::with_threads(inner, level, os, threads)
    }

    fn with_threads(mut inner: W, level: u32, os: u8, threads: usize) -> io::Result<Self> {
        let level = level.clamp(1, 9);
        let libdeflate_level = CompressionLvl::new(level as i32)
            .map_err(|_| io::Error::other(format!("invalid compression level {level}")))?;
        let xfl = match level {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, os])?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let workers = (0..threads.max(1))
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || {
                    let mut compressor = BlockCompressor::new(libdeflate_level, level);
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let _ = job.reply.send(compressor.compress(&job.data, job.last));
                    }
                })
            })
            .collect();
        Ok(ParallelGzip {
            inner: Some(inner),
            jobs: Some(jobs),
            workers,
            pending: VecDeque::new(),
            max_pending: threads.max(1) * 2,
            block: Vec::with_capacity(BLOCK_BYTES),
            crc: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let capacity = if last { 0 } else { BLOCK_BYTES };
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(capacity));
        self.crc.update(&data);
        self.size += data.len() as u64;
        let (reply, result) = mpsc::channel();
        let job = Job { data, last, reply };
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

/// Samples of a block that decide whether it is worth deflating: spread over the block, so
/// a block is stored only when all of it looks like noise.
const SAMPLES: usize = 8;
const SAMPLE_BYTES: usize = 8 * 1024;
/// A sample that the fastest level cannot shrink below this share (in 1/1000) is noise.
const INCOMPRESSIBLE_PER_MILLE: usize = 985;
/// Stored deflate blocks hold at most this many bytes (LEN is 16 bits).
const STORED_MAX: usize = u16::MAX as usize;

/// One worker's compressors: the block's own level, and the fastest one for sampling.
struct BlockCompressor {
    full: Compressor,
    sampler: Compressor,
    level: u32,
    sample_out: Vec<u8>,
}

impl BlockCompressor {
    fn new(libdeflate_level: CompressionLvl, level: u32) -> Self {
        // Level 1, the fastest that compresses (libdeflate's level 0 only stores).
        let mut sampler = Compressor::new(CompressionLvl::new(1).unwrap_or_default());
        let sample_out = vec![0; sampler.deflate_compress_bound(SAMPLE_BYTES)];
        BlockCompressor {
            full: Compressor::new(libdeflate_level),
            sampler,
            level,
            sample_out,
        }
    }

    /// One block, deflated, or stored when it is noise (already compressed data: images,
    /// archives, fonts). Deflating noise at level 6 costs as much as text and saves nothing;
    /// the samples cost about 5% of that. The choice depends only on the bytes.
    fn compress(&mut self, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
        if data.len() >= SAMPLES * SAMPLE_BYTES && self.looks_incompressible(data) {
            return Ok(stored_blocks(data, last));
        }
        deflate_block(&mut self.full, self.level, data, last)
    }

    fn looks_incompressible(&mut self, data: &[u8]) -> bool {
        let stride = data.len() / SAMPLES;
        (0..SAMPLES).all(|i| {
            let sample = &data[i * stride..i * stride + SAMPLE_BYTES];
            match self.sampler.deflate_compress(sample, &mut self.sample_out) {
                Ok(written) => written * 1000 >= sample.len() * INCOMPRESSIBLE_PER_MILLE,
                Err(_) => false,
            }
        })
    }
}

/// `data` as stored deflate blocks: byte-aligned from start to end, so the next block's
/// stream can follow directly; only the last block of the last stream is final.
fn stored_blocks(data: &[u8], last: bool) -> Vec<u8> {
    let chunks = data.len().div_ceil(STORED_MAX).max(1);
    let mut out = Vec::with_capacity(data.len() + chunks * 5);
    let mut rest = data;
    for index in 0..chunks {
        let (chunk, after) = rest.split_at(rest.len().min(STORED_MAX));
        rest = after;
        let final_bit = u8::from(last && index + 1 == chunks);
        let len = chunk.len() as u16;
        out.push(final_bit); // BFINAL, BTYPE 00 (stored), then padding to the byte
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Raw deflate of one block, on its own (empty window). The last block ends the stream;
/// any other ends byte-aligned and not final, so the next block's stream can follow it.
fn deflate_block(
    compressor: &mut Compressor,
    level: u32,
    data: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    let mut out = vec![0; compressor.deflate_compress_bound(data.len()) + 8];
    let written = compressor
        .deflate_compress(data, &mut out)
        .map_err(|e| io::Error::other(format!("deflate: {e:?}")))?;
    out.truncate(written);
    if !last {
        if let Err(error) = continue_stream(&mut out) {
            // Never expected; still no reason to fail a push. The choice depends only on
            // the block's bytes, so the output stays deterministic.
            tracing::warn!(%error, "falling back to zlib for one gzip block");
            return zlib_block(data, level);
        }
    }
    Ok(out)
}

/// The same block through zlib: raw deflate ending with a sync flush (byte-aligned, not
/// final), as zlib-based pigz writes it.
fn zlib_block(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    let mut deflate = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(256 * 1024);
        }
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        input = &input[(deflate.total_in() - before) as usize..];
        // The flush is complete once all input is in and output space was left over.
        let done = matches!(status, Status::Ok | Status::BufError)
            && input.is_empty()
            && out.len() < out.capacity();
        if done || status == Status::StreamEnd {
            return Ok(out);
        }
    }
}

/// Turns a complete raw deflate stream into one that goes on: clears the final bit of its
/// last block and appends an empty stored block (3 header bits, padding, LEN/NLEN).
fn continue_stream(stream: &mut Vec<u8>) -> io::Result<()> {
    let final_block = deflate_walk::final_block(stream)
        .map_err(|reason| io::Error::other(format!("cannot chain a deflate block: {reason}")))?;
    if final_block.end_bit.div_ceil(8) != stream.len() {
        return Err(io::Error::other(
            "cannot chain a deflate block: the stream does not end with its final block",
        ));
    }
    stream[final_block.header_bit / 8] &= !(1u8 << (final_block.header_bit % 8));
    // The stored block's header bits are zero: keep the bits before end_bit, zero the rest.
    let aligned = (final_block.end_bit + 3).div_ceil(8);
    stream.resize(aligned, 0);
    let partial_bits = final_block.end_bit % 8;
    let last_kept = final_block.end_bit / 8;
    if partial_bits != 0 {
        stream[last_kept] &= (1u8 << partial_bits) - 1;
        stream[last_kept + 1..].fill(0);
    } else {
        stream[last_kept..].fill(0);
    }
    stream.extend_from_slice(&SYNC_MARKER_TAIL);
    Ok(())
}

/// Reads a raw deflate stream far enough to know its block structure (RFC 1951), without
/// producing output: header bits, Huffman tables, and the symbols up to each end-of-block.
mod deflate_walk {
    /// Bit positions (from the start of the stream, LSB-first) of the final block.
    #[derive(Debug, PartialEq, Eq)]
    pub struct FinalBlock {
        /// Where the final block's BFINAL bit is.
        pub header_bit: usize,
        /// Just after its end-of-block code (or stored data).
        pub end_bit: usize,
    }

    pub type Error = &'static str;

    pub fn final_block(stream: &[u8]) -> Result<FinalBlock, Error> {
        let mut bits = Bits::new(stream);
        loop {
            let header_bit = bits.position();
            let is_final = bits.take(1)? == 1;
            match bits.take(2)? {
                0 => stored_block(&mut bits)?,
                1 => {
                    let (litlen, dist) = fixed_tables();
                    symbols(&mut bits, &litlen, &dist)?;
                }
                2 => {
                    let (litlen, dist) = dynamic_tables(&mut bits)?;
                    symbols(&mut bits, &litlen, &dist)?;
                }
                _ => return Err("reserved block type"),
            }
            let end_bit = bits.position();
            if end_bit > stream.len() * 8 {
                return Err("stream ends early");
            }
            if is_final {
                return Ok(FinalBlock {
                    header_bit,
                    end_bit,
                });
            }
        }
    }

    /// LSB-first bit reader over a 64-bit buffer. Reads past the end see zero bits (a
    /// little way only); callers check the final position against the length.
    struct Bits<'a> {
        data: &'a [u8],
        /// Next byte to load into `buffer`.
        next_byte: usize,
        /// Loaded, unconsumed bits, the next one lowest. Bits above `available` are the
        /// stream's following bits or zero, never anything else.
        buffer: u64,
        available: u32,
    }

    impl<'a> Bits<'a> {
        fn new(data: &'a [u8]) -> Self {
            Bits {
                data,
                next_byte: 0,
                buffer: 0,
                available: 0,
            }
        }

        /// Bits consumed so far.
        fn position(&self) -> usize {
            self.next_byte * 8 - self.available as usize
        }

        /// Makes at least 56 bits available.
        #[inline(always)]
        fn refill(&mut self) -> Result<(), Error> {
            if self.available >= 56 {
                return Ok(());
            }
            if let Some(eight) = self.data.get(self.next_byte..self.next_byte + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(eight);
                self.buffer |= u64::from_le_bytes(word) << self.available;
                let loaded = (63 - self.available) / 8;
                self.next_byte += loaded as usize;
                self.available += loaded * 8;
                return Ok(());
            }
            (self.next_byte, self.buffer, self.available) =
                refill_near_end(self.data, self.next_byte, self.buffer, self.available)?;
            Ok(())
        }

        /// Drops `count` (≤ available) bits.
        #[inline(always)]
        fn consume(&mut self, count: u32) {
            self.buffer >>= count;
            self.available -= count;
        }

        #[inline(always)]
        fn take(&mut self, count: u32) -> Result<u32, Error> {
            self.refill()?;
            let value = (self.buffer & ((1u64 << count) - 1)) as u32;
            self.consume(count);
            Ok(value)
        }

        /// Skips to the next byte boundary.
        fn align(&mut self) {
            self.consume(self.available % 8);
        }

        /// Skips `count` whole bytes (at a byte boundary).
        fn skip_bytes(&mut self, count: usize) -> Result<(), Error> {
            let target = self.position() / 8 + count;
            if target > self.data.len() {
                return Err("stream ends early");
            }
            self.next_byte = target;
            self.buffer = 0;
            self.available = 0;
            Ok(())
        }
    }

    /// The last bytes one at a time, then zeros, up to a little past the end. Takes and
    /// returns the reader's state by value so the hot loop keeps it in registers.
    #[inline(never)]
    fn refill_near_end(
        data: &[u8],
        mut next_byte: usize,
        mut buffer: u64,
        mut available: u32,
    ) -> Result<(usize, u64, u32), Error> {
        if next_byte > data.len() + 16 {
            return Err("stream ends early");
        }
        while available <= 56 {
            let byte = data.get(next_byte).copied().unwrap_or(0);
            buffer |= u64::from(byte) << available;
            next_byte += 1;
            available += 8;
        }
        Ok((next_byte, buffer, available))
    }

    fn stored_block(bits: &mut Bits) -> Result<(), Error> {
        bits.align();
        let len = bits.take(16)?;
        let nlen = bits.take(16)?;
        if len != !nlen & 0xffff {
            return Err("stored block length check failed");
        }
        bits.skip_bytes(len as usize)
    }

    const FAST_BITS: u32 = 10;
    const FAST_MASK: u64 = (1 << FAST_BITS) - 1;
    const MAX_CODE_BITS: usize = 15;

    /// Fast-table entry layout: code length, extra bits after the code, what it is, and
    /// the symbol. 0 means "code longer than FAST_BITS".
    const CODE_LENGTH_MASK: u32 = 0x1f;
    const EXTRA_SHIFT: u32 = 5;
    const IS_LENGTH: u32 = 1 << 10;
    const IS_END: u32 = 1 << 11;
    const IS_INVALID: u32 = 1 << 12;
    const SYMBOL_SHIFT: u32 = 16;

    #[derive(Clone, Copy)]
    enum Alphabet {
        LiteralLength,
        Distance,
        CodeLength,
    }

    /// (extra bits, flags) that follow a symbol of an alphabet.
    fn symbol_kind(alphabet: Alphabet, symbol: usize) -> (u32, u32) {
        match alphabet {
            Alphabet::LiteralLength => match symbol {
                0..=255 => (0, 0),
                256 => (0, IS_END),
                _ => match LENGTH_EXTRA_BITS.get(symbol - 257) {
                    Some(&extra) => (u32::from(extra), IS_LENGTH),
                    None => (0, IS_INVALID),
                },
            },
            Alphabet::Distance => match DISTANCE_EXTRA_BITS.get(symbol) {
                Some(&extra) => (u32::from(extra), 0),
                None => (0, IS_INVALID),
            },
            Alphabet::CodeLength => (0, 0),
        }
    }

    /// Canonical Huffman decoder: a table for codes of up to FAST_BITS bits, and a
    /// bit-by-bit walk of the code lengths for longer (rare) ones.
    struct Huffman {
        alphabet: Alphabet,
        /// Entries (see the layout above), indexed by the next FAST_BITS bits.
        fast: [u32; 1 << FAST_BITS],
        counts: [u16; MAX_CODE_BITS + 1],
        /// Symbols ordered by code length, then value (the canonical order).
        sorted: [u16; 288],
    }

    impl Huffman {
        fn new(alphabet: Alphabet, lengths: &[u8]) -> Result<Huffman, Error> {
            let mut table = Huffman {
                alphabet,
                fast: [0; 1 << FAST_BITS],
                counts: [0; MAX_CODE_BITS + 1],
                sorted: [0; 288],
            };
            if lengths.len() > table.sorted.len() {
                return Err("too many code lengths");
            }
            for &length in lengths {
                if usize::from(length) > MAX_CODE_BITS {
                    return Err("code length over 15");
                }
                table.counts[usize::from(length)] += 1;
            }
            table.counts[0] = 0;
            let mut left: i32 = 1;
            for length in 1..=MAX_CODE_BITS {
                left = (left << 1) - i32::from(table.counts[length]);
                if left < 0 {
                    return Err("over-subscribed code");
                }
            }
            let mut offsets = [0u16; MAX_CODE_BITS + 2];
            let mut next_code = [0u32; MAX_CODE_BITS + 2];
            for length in 1..=MAX_CODE_BITS {
                offsets[length + 1] = offsets[length] + table.counts[length];
                next_code[length + 1] = (next_code[length] + u32::from(table.counts[length])) << 1;
            }
            for (symbol, &length) in lengths.iter().enumerate() {
                if length == 0 {
                    continue;
                }
                let length = usize::from(length);
                table.sorted[usize::from(offsets[length])] = symbol as u16;
                offsets[length] += 1;
                let code = next_code[length];
                next_code[length] += 1;
                if length as u32 <= FAST_BITS {
                    let (extra, flags) = symbol_kind(alphabet, symbol);
                    let entry = ((symbol as u32) << SYMBOL_SHIFT)
                        | flags
                        | (extra << EXTRA_SHIFT)
                        | length as u32;
                    // Codes are sent most significant bit first, the table is indexed by
                    // bits as read (least significant first): reverse.
                    let mut index = (code.reverse_bits() >> (32 - length)) as usize;
                    while index < table.fast.len() {
                        table.fast[index] = entry;
                        index += 1 << length;
                    }
                }
            }
            Ok(table)
        }

        /// The next entry, its code consumed (not its extra bits).
        #[inline(always)]
        fn next_entry(&self, bits: &mut Bits) -> Result<u32, Error> {
            bits.refill()?;
            let entry = self.fast[(bits.buffer & FAST_MASK) as usize];
            if entry != 0 {
                bits.consume(entry & CODE_LENGTH_MASK);
                return Ok(entry);
            }
            let (symbol, length) = self.decode_slow(bits.buffer)?;
            bits.consume(length);
            let (extra, flags) = symbol_kind(self.alphabet, usize::from(symbol));
            Ok((u32::from(symbol) << SYMBOL_SHIFT) | flags | (extra << EXTRA_SHIFT))
        }

        #[inline]
        fn decode(&self, bits: &mut Bits) -> Result<u16, Error> {
            Ok((self.next_entry(bits)? >> SYMBOL_SHIFT) as u16)
        }

        /// (symbol, code length) of a code longer than the fast table, read from the
        /// low bits of `buffer` (after a refill: 56 bits, more than the longest code).
        #[inline(never)]
        fn decode_slow(&self, mut buffer: u64) -> Result<(u16, u32), Error> {
            let (mut code, mut first, mut index) = (0u32, 0u32, 0u32);
            for length in 1..=MAX_CODE_BITS {
                code |= (buffer & 1) as u32;
                buffer >>= 1;
                let count = u32::from(self.counts[length]);
                if code < first + count {
                    return Ok((self.sorted[(index + code - first) as usize], length as u32));
                }
                index += count;
                first = (first + count) << 1;
                code <<= 1;
            }
            Err("invalid Huffman code")
        }
    }

    fn fixed_tables() -> (Huffman, Huffman) {
        let mut lengths = [8u8; 288];
        lengths[144..256].fill(9);
        lengths[256..280].fill(7);
        // Both code sets are complete, so building cannot fail; an error would only mean
        // the walk reports a broken stream, never a panic.
        let litlen = Huffman::new(Alphabet::LiteralLength, &lengths)
            .unwrap_or_else(|_| empty_table(Alphabet::LiteralLength));
        let dist = Huffman::new(Alphabet::Distance, &[5u8; 30])
            .unwrap_or_else(|_| empty_table(Alphabet::Distance));
        (litlen, dist)
    }

    fn empty_table(alphabet: Alphabet) -> Huffman {
        Huffman {
            alphabet,
            fast: [0; 1 << FAST_BITS],
            counts: [0; MAX_CODE_BITS + 1],
            sorted: [0; 288],
        }
    }

    const CODE_LENGTH_ORDER: [usize; 19] = [
        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
    ];

    fn dynamic_tables(bits: &mut Bits) -> Result<(Huffman, Huffman), Error> {
        let litlen_count = bits.take(5)? as usize + 257;
        let dist_count = bits.take(5)? as usize + 1;
        let code_length_count = bits.take(4)? as usize + 4;
        if litlen_count > 286 || dist_count > 30 {
            return Err("too many codes");
        }
        let mut code_length_lengths = [0u8; 19];
        for &symbol in &CODE_LENGTH_ORDER[..code_length_count] {
            code_length_lengths[symbol] = bits.take(3)? as u8;
        }
        let code_lengths = Huffman::new(Alphabet::CodeLength, &code_length_lengths)?;
        let total = litlen_count + dist_count;
        let mut lengths = [0u8; 286 + 30];
        let mut filled = 0;
        while filled < total {
            let symbol = code_lengths.decode(bits)?;
            let (value, repeat) = match symbol {
                0..=15 => (symbol as u8, 1),
                16 => {
                    let previous = *filled
                        .checked_sub(1)
                        .and_then(|i| lengths.get(i))
                        .ok_or("repeat with no previous length")?;
                    (previous, 3 + bits.take(2)? as usize)
                }
                17 => (0, 3 + bits.take(3)? as usize),
                18 => (0, 11 + bits.take(7)? as usize),
                _ => return Err("invalid code length symbol"),
            };
            if filled + repeat > total {
                return Err("code lengths overflow");
            }
            lengths[filled..filled + repeat].fill(value);
            filled += repeat;
        }
        if lengths[256] == 0 {
            return Err("no end-of-block code");
        }
        let litlen = Huffman::new(Alphabet::LiteralLength, &lengths[..litlen_count])?;
        let dist = Huffman::new(Alphabet::Distance, &lengths[litlen_count..total])?;
        Ok((litlen, dist))
    }

    /// Extra bits after length symbols 257..=285.
    const LENGTH_EXTRA_BITS: [u8; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    /// Extra bits after distance symbols 0..=29.
    const DISTANCE_EXTRA_BITS: [u8; 30] = [
        0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13,
    ];

    fn symbols(bits: &mut Bits, litlen: &Huffman, dist: &Huffman) -> Result<(), Error> {
        // A local copy the optimiser can keep in registers.
        let mut local = Bits { ..*bits };
        let result = symbols_until_end(&mut local, litlen, dist);
        *bits = local;
        result
    }

    #[inline(always)]
    fn symbols_until_end(bits: &mut Bits, litlen: &Huffman, dist: &Huffman) -> Result<(), Error> {
        loop {
            let entry = litlen.next_entry(bits)?;
            if entry & (IS_LENGTH | IS_END | IS_INVALID) == 0 {
                continue; // a literal
            }
            if entry & IS_END != 0 {
                return Ok(());
            }
            if entry & IS_INVALID != 0 {
                return Err("invalid length symbol");
            }
            // At most 15 + 5 bits since next_entry's refill: still available.
            bits.consume((entry >> EXTRA_SHIFT) & CODE_LENGTH_MASK);
            let entry = dist.next_entry(bits)?;
            if entry & IS_INVALID != 0 {
                return Err("invalid distance symbol");
            }
            bits.take((entry >> EXTRA_SHIFT) & CODE_LENGTH_MASK)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8]) -> Vec<u8> {
        gzip_with(data, 6, 2)
    }

    fn gzip_with(data: &[u8], level: u32, threads: usize) -> Vec<u8> {
        let mut gz = ParallelGzip::with_threads(Vec::new(), level, 3, threads).unwrap();
        // Odd write sizes cross block boundaries at awkward places.
        for chunk in data.chunks(7919) {
            gz.write_all(chunk).unwrap();
        }
        gz.finish().unwrap()
    }

    fn gunzip(compressed: &[u8]) -> Vec<u8> {
        // A single-member decoder: the output must be one gzip member.
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(compressed)
            .read_to_end(&mut decoded)
            .unwrap();
        decoded
    }

    /// A xorshift sequence from `seed`: cheap, repeatable pseudo-random numbers.
    fn xorshift(mut state: u64) -> impl Iterator<Item = u64> {
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
    }

    /// Bytes with a steep frequency curve: Huffman codes longer than the fast table.
    fn skewed_sample(len: usize) -> Vec<u8> {
        xorshift(0x9e37_79b9_7f4a_7c15)
            .take(len)
            .map(|state| (state.trailing_zeros() * 7 + (state >> 60) as u32 % 3) as u8)
            .collect()
    }

    fn sample(len: usize) -> Vec<u8> {
        xorshift(0x2545_f491_4f6c_dd1d)
            .take(len)
            .enumerate()
            .map(|(i, state)| {
                // Half text-like, half noise: both compressible and not.
                if (i / 4096) % 2 == 0 {
                    b"slug data "[i % 10]
                } else {
                    state as u8
                }
            })
            .collect()
    }

    /// Noise, as compressed files are.
    fn noise(len: usize) -> Vec<u8> {
        xorshift(0x853c_49e6_748f_ea9b)
            .take(len)
            .map(|state| (state >> 24) as u8)
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
            assert_eq!(gunzip(&gzip(&data)), data, "length {len}");
        }
    }

    #[test]
    fn every_kind_of_deflate_block_chains_into_one_member() {
        // Noise (stored blocks), tiny blocks (fixed codes), text and skewed bytes (dynamic
        // codes, some longer than the fast table), at several levels.
        let mut data = sample(2 * BLOCK_BYTES + 17);
        data.extend(skewed_sample(BLOCK_BYTES + 4321));
        data.extend(std::iter::repeat_n(0u8, BLOCK_BYTES));
        data.extend(b"tiny");
        for level in [1, 6, 9] {
            assert_eq!(gunzip(&gzip_with(&data, level, 2)), data, "level {level}");
        }
        for len in [1, 100, 5000] {
            let tiny = skewed_sample(len);
            let mut stream = Compressor::new(CompressionLvl::new(6).unwrap());
            let mut out = vec![0; stream.deflate_compress_bound(len)];
            let written = stream.deflate_compress(&tiny, &mut out).unwrap();
            out.truncate(written);
            continue_stream(&mut out).unwrap();
            assert_eq!(out[out.len() - 4..], SYNC_MARKER_TAIL);
        }
    }

    #[test]
    fn zlib_fallback_blocks_chain_too() {
        let data = sample(BLOCK_BYTES + 777);
        let (first, rest) = data.split_at(BLOCK_BYTES);
        let mut stream = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        stream.extend(zlib_block(first, 6).unwrap());
        let mut compressor = Compressor::new(CompressionLvl::new(6).unwrap());
        stream.extend(deflate_block(&mut compressor, 6, rest, true).unwrap());
        stream.extend(crc32fast::hash(&data).to_le_bytes());
        stream.extend((data.len() as u32).to_le_bytes());
        assert_eq!(gunzip(&stream), data);
    }

    #[test]
    fn noise_is_stored_and_text_beside_it_still_deflated() {
        let mut data = noise(2 * BLOCK_BYTES);
        // A block of noise with one text stretch in the middle is not all noise.
        let mut mixed = noise(BLOCK_BYTES);
        let middle = BLOCK_BYTES / 2;
        for (i, byte) in mixed[middle..middle + 64 * 1024].iter_mut().enumerate() {
            *byte = b"slug data "[i % 10];
        }
        data.extend(&mixed);
        data.extend(noise(12345));
        let compressed = gzip(&data);
        assert_eq!(gunzip(&compressed), data);
        // Stored costs 5 bytes per 64 KiB; the mixed block's text shrinks by far more.
        assert!(
            compressed.len() < data.len() - 50_000,
            "{}",
            compressed.len()
        );
        let mut compressor = BlockCompressor::new(CompressionLvl::new(6).unwrap(), 6);
        assert!(compressor.looks_incompressible(&data[..BLOCK_BYTES]));
        assert!(!compressor.looks_incompressible(&mixed));
    }

    #[test]
    fn stored_blocks_chain_and_end_the_stream() {
        for len in [0, 1, STORED_MAX, STORED_MAX + 1, BLOCK_BYTES] {
            let data = noise(len);
            let mut stream = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
            stream.extend(stored_blocks(&data, false));
            stream.extend(stored_blocks(b"tail", true));
            stream.extend(crc32fast::hash(&[&data[..], b"tail"].concat()).to_le_bytes());
            stream.extend(((len + 4) as u32).to_le_bytes());
            assert_eq!(
                gunzip(&stream),
                [&data[..], b"tail"].concat(),
                "length {len}"
            );
        }
    }

    #[test]
    fn output_does_not_depend_on_the_number_of_threads() {
        let mut data = sample(3 * BLOCK_BYTES + 999);
        data.extend(skewed_sample(BLOCK_BYTES / 2));
        let one = gzip_with(&data, 6, 1);
        assert_eq!(one, gzip_with(&data, 6, 3));
        assert_eq!(one, gzip_with(&data, 6, 8));
    }

    #[test]
    fn a_broken_stream_is_an_error_not_a_panic() {
        let data = sample(100_000);
        let mut compressor = Compressor::new(CompressionLvl::new(6).unwrap());
        let mut out = vec![0; compressor.deflate_compress_bound(data.len())];
        let written = compressor.deflate_compress(&data, &mut out).unwrap();
        for cut in [0, 1, written / 2, written - 1] {
            let mut truncated = out[..cut].to_vec();
            assert!(continue_stream(&mut truncated).is_err(), "cut at {cut}");
        }
        let mut state = 1u64;
        for _ in 0..200 {
            let garbage: Vec<u8> = (0..64)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            let _ = deflate_walk::final_block(&garbage);
        }
    }

    #[test]
    fn output_is_deterministic_and_as_small_as_serial_gzip() {
        let data = sample(5 * BLOCK_BYTES);
        let parallel = gzip(&data);
        assert_eq!(parallel, gzip(&data));
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
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
