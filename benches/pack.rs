//! Benchmark #2: packing an app tree into a slug, against `tar -cz` (GNU tar + gzip -6,
//! what the old slugbuilder ran), side by side on the same machine.
//!
//! Ours is the product's path: a tar stream of the tree (what the engine sends; here
//! `tar -c`, running at the same time) through `slug::pack` into a file.
//!
//! Prints one line (see README, "Benchmarks"):
//! `bench pack ours_min_s=.. ours_median_s=.. ours_max_s=.. base_min_s=.. base_median_s=..
//! base_max_s=.. ratio=.. size_bytes=.. base_size_bytes=.. size_ratio=.. input_bytes=..
//! ours_cpu_s=.. base_cpu_s=.. runs=.. load1=..` where ratio = base median / ours median
//! (above 1: we are faster), size_ratio = our size / baseline size, *_cpu_s the median CPU
//! seconds (user + system, `tar` included) and load1 the load average at the end.
//!
//! Settings: DEIS_BENCH_RUNS (default 5), DEIS_BENCH_PACK_MIB (tree size, default 200),
//! DEIS_BENCH_DIR (scratch directory, default the system temp dir).

mod common;

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deis_slug::{pack, PackOptions, SlugIgnore};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let (tree_mib, runs) = common::size_and_runs("DEIS_BENCH_PACK_MIB", 200);
    let scratch = match std::env::var_os("DEIS_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let root = scratch.path();
    let input_bytes = common::generate_app_tree(&root.join("app"), tree_mib << 20)?;
    // Warm the page cache for both contenders.
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["-cf", "/dev/null", "app"]),
    )?;

    let ours_path = root.join("ours.tgz");
    let base_path = root.join("base.tgz");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut base_cpu) = (Vec::new(), Vec::new());
    let mut size_bytes = 0;
    // Interleaved, so both see the same background load.
    for _ in 0..runs {
        let before = common::cpu_seconds();
        let (elapsed, size) = pack_ours(root, &ours_path)?;
        let after = common::cpu_seconds();
        ours.push(elapsed);
        ours_cpu.push(after.0 - before.0 + after.1 - before.1);
        size_bytes = size;
        base.push(pack_baseline(root, &base_path)?);
        base_cpu.push(common::cpu_seconds().1 - after.1);
    }
    let base_size_bytes = std::fs::metadata(&base_path)?.len();
    check_same_content(&ours_path, &base_path)?;

    let (ours, base) = (common::stats(&ours), common::stats(&base));
    println!(
        "bench pack ours_min_s={:.3} ours_median_s={:.3} ours_max_s={:.3} base_min_s={:.3} \
         base_median_s={:.3} base_max_s={:.3} ratio={:.2} size_bytes={size_bytes} \
         base_size_bytes={base_size_bytes} size_ratio={:.4} input_bytes={input_bytes} \
         ours_cpu_s={:.2} base_cpu_s={:.2} runs={runs} load1={}",
        ours.min,
        ours.median,
        ours.max,
        base.min,
        base.median,
        base.max,
        base.median / ours.median,
        size_bytes as f64 / base_size_bytes as f64,
        common::median(&ours_cpu),
        common::median(&base_cpu),
        common::load1(),
    );
    Ok(())
}

fn pack_ours(root: &Path, output: &Path) -> Result<(Duration, u64), Error> {
    let start = Instant::now();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-c", "app"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stream = tar.stdout.take().ok_or("tar has no stdout")?;
    let packed = pack(
        BufReader::with_capacity(256 * 1024, stream),
        BufWriter::with_capacity(256 * 1024, std::fs::File::create(output)?),
        &PackOptions {
            strip_prefix: "app",
            ignore: &SlugIgnore::empty(),
        },
    )?;
    if !tar.wait()?.success() {
        return Err("tar -c failed".into());
    }
    Ok((start.elapsed(), packed.compressed_bytes))
}

fn pack_baseline(root: &Path, output: &Path) -> Result<Duration, Error> {
    let start = Instant::now();
    run_ok(
        Command::new("tar")
            .env_remove("GZIP")
            .arg("-C")
            .arg(root)
            .arg("-czf")
            .arg(output)
            .arg("app"),
    )?;
    Ok(start.elapsed())
}

/// Both archives must hold the same files with the same bytes (names differ: `./` prefix).
fn check_same_content(ours: &Path, base: &Path) -> Result<(), Error> {
    let digest = |archive: &Path, strip: &str| -> Result<String, Error> {
        let script = format!(
            "tar -xzOf '{}' | sha256sum && tar -tzf '{}' | grep -v '/$' | sed 's|^{strip}||' | sort | sha256sum",
            archive.display(),
            archive.display()
        );
        let output = Command::new("sh").args(["-c", &script]).output()?;
        if !output.status.success() {
            return Err(format!("cannot read {}", archive.display()).into());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (ours, base) = (digest(ours, "\\./")?, digest(base, "app/")?);
    if ours != base {
        return Err(format!("the slug and the baseline archive differ:\n{ours}\n{base}").into());
    }
    Ok(())
}

fn run_ok(command: &mut Command) -> Result<(), Error> {
    let status = command.status()?;
    if !status.success() {
        return Err(format!("{command:?} failed: {status}").into());
    }
    Ok(())
}
