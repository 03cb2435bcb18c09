//! Shared by the benchmark targets: a deterministic app tree and small statistics helpers.
#![allow(dead_code)] // each bench target uses a different subset

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

/// xorshift64: deterministic, fast, good enough to make incompressible bytes.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Skewed towards small values, like word frequencies in source code.
    pub fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        (a * b) / n
    }
}

/// Source-code-like text: lines of words from a pseudo-random vocabulary with skewed
/// frequencies, indentation, punctuation, numbers and repeated lines; gzip -6 shrinks it
/// about 4×, like real app code.
fn text(rng: &mut XorShift, vocabulary: &[Vec<u8>], size: usize, out: &mut Vec<u8>) {
    const PUNCTUATION: [&[u8]; 8] = [b"(", b")", b" = ", b", ", b".", b": ", b"{", b"}"];
    let start = out.len();
    let end = start + size;
    let mut line_starts: Vec<usize> = Vec::new();
    while out.len() < end {
        let line_start = out.len();
        if line_starts.len() > 8 && rng.below(4) == 0 {
            // Code repeats itself: copy one of the recent lines.
            let pick = line_starts.len() - 1 - rng.below(8) as usize;
            let from = line_starts[pick];
            let to = line_starts.get(pick + 1).copied().unwrap_or(line_start);
            out.extend_from_within(from..to);
        } else {
            let indent = (rng.below(5) * 4) as usize;
            out.extend(std::iter::repeat_n(b' ', indent));
            let words = 2 + rng.below(8);
            for _ in 0..words {
                match rng.below(12) {
                    0 | 1 => out.extend_from_slice(PUNCTUATION[rng.below(8) as usize]),
                    2 => {
                        let _ = write!(out, "{}", rng.below(1000));
                    }
                    _ => {
                        let word = rng.skewed(vocabulary.len() as u64);
                        out.extend_from_slice(&vocabulary[rng.skewed(word + 1) as usize]);
                    }
                }
                out.push(b' ');
            }
            out.push(b'\n');
        }
        line_starts.push(line_start);
    }
    line_starts.clear();
    out.truncate(end);
}

/// Already-compressed content (images, archives, minified+gzipped assets): incompressible.
fn noise(rng: &mut XorShift, size: usize, out: &mut Vec<u8>) {
    let end = out.len() + size;
    while out.len() < end {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(end);
}

/// Native-library-like bytes: tables of small integers, zero padding and repeated code
/// fragments; compresses about 2×.
fn binary(rng: &mut XorShift, size: usize, out: &mut Vec<u8>) {
    let end = out.len() + size;
    let fragments: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..16 + rng.below(48)).map(|_| rng.next() as u8).collect())
        .collect();
    while out.len() < end {
        match rng.below(4) {
            0 => out.extend(std::iter::repeat_n(0u8, rng.below(64) as usize)),
            1 => {
                for _ in 0..rng.below(32) {
                    out.extend_from_slice(&(rng.below(4096) as u32).to_le_bytes());
                }
            }
            2 => {
                let len = rng.below(24) as usize;
                noise(rng, len, out)
            }
            _ => out.extend_from_slice(&fragments[rng.skewed(64) as usize]),
        }
    }
    out.truncate(end);
}

/// Writes a deterministic app tree of about `total_bytes` under `root`: many small source
/// files (a vendored dependency tree), larger source files, incompressible assets and
/// native-library-like binaries. Same bytes for the same size, every time.
pub fn generate_app_tree(root: &Path, total_bytes: u64) -> io::Result<u64> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let vocabulary: Vec<Vec<u8>> = (0..1500)
        .map(|_| {
            let len = 2 + rng.below(9) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    // Shares of the total: 25% small sources, 25% large sources, 30% assets, 20% binaries.
    let budget = |share: u64| total_bytes * share / 100;
    let mut written = 0u64;
    let mut buffer = Vec::new();
    let emit = |path: &Path, data: &[u8]| -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, data)
    };

    let mut section = 0u64;
    let mut n = 0;
    while section < budget(25) {
        let size = 200 + rng.below(8_000) as usize;
        buffer.clear();
        text(&mut rng, &vocabulary, size, &mut buffer);
        let path = root.join(format!(
            "vendor/bundle/gem{}/lib/mod{}/file{n}.rb",
            n / 200,
            (n / 20) % 10
        ));
        emit(&path, &buffer)?;
        section += size as u64;
        n += 1;
    }
    written += section;

    section = 0;
    n = 0;
    while section < budget(25) {
        let size = 20_000 + rng.below(400_000) as usize;
        buffer.clear();
        text(&mut rng, &vocabulary, size, &mut buffer);
        emit(
            &root.join(format!("src/pkg{}/module{n}.py", n % 12)),
            &buffer,
        )?;
        section += size as u64;
        n += 1;
    }
    written += section;

    section = 0;
    n = 0;
    while section < budget(30) {
        let size = 50_000 + rng.below(3_000_000) as usize;
        buffer.clear();
        noise(&mut rng, size, &mut buffer);
        emit(&root.join(format!("public/assets/asset{n}.png")), &buffer)?;
        section += size as u64;
        n += 1;
    }
    written += section;

    section = 0;
    n = 0;
    while written + section < total_bytes {
        let size = (500_000 + rng.below(4_000_000)).min(total_bytes - written - section) as usize;
        buffer.clear();
        binary(&mut rng, size, &mut buffer);
        emit(&root.join(format!("vendor/lib/libthing{n}.so")), &buffer)?;
        section += size as u64;
        n += 1;
    }
    written += section;
    std::fs::write(root.join("Procfile"), b"web: bin/server\n")?;
    Ok(written)
}

pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

pub fn stats(samples: &[Duration]) -> Stats {
    let mut seconds: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    let mid = seconds.len() / 2;
    let median = if seconds.len() % 2 == 0 {
        (seconds[mid - 1] + seconds[mid]) / 2.0
    } else {
        seconds[mid]
    };
    Stats {
        min: seconds[0],
        median,
        max: seconds[seconds.len() - 1],
    }
}

/// Settings from the environment with a default (e.g. `DEIS_BENCH_RUNS`).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's size and run count. `cargo bench` passes `--bench`; without it (`cargo test
/// --all-targets` runs bench targets too) one small run checks that the bench still works.
pub fn size_and_runs(size_var: &str, default_mib: u64) -> (u64, usize) {
    if std::env::args().any(|arg| arg == "--bench") {
        let runs = env_or("DEIS_BENCH_RUNS", 5).max(1);
        (env_or(size_var, default_mib), runs)
    } else {
        (4, 1)
    }
}

/// 1-minute load average, to judge how noisy a run was.
pub fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// CPU seconds (user + system) used so far by this process and by its waited-for children.
pub fn cpu_seconds() -> (f64, f64) {
    let usage = |who| {
        // SAFETY: getrusage only writes the struct we hand it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return 0.0;
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    };
    (usage(libc::RUSAGE_SELF), usage(libc::RUSAGE_CHILDREN))
}

/// CPU seconds (user + system) used so far by another process, e.g. the S3 server.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

/// Median of plain numbers.
pub fn median(values: &[f64]) -> f64 {
    let samples: Vec<Duration> = values
        .iter()
        .map(|v| Duration::from_secs_f64(v.max(0.0)))
        .collect();
    stats(&samples).median
}
