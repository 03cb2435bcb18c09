//! Benchmark #3: uploading a slug to the S3 server named by `DEIS_IT_S3_ENDPOINT` (moto in
//! the test set-up), against `aws s3 cp` (awscli) to the same server, side by side.
//!
//! Ours is the product's path: `ObjectStore::put` of the slug file on an `S3Store`
//! connected once, as the builder does at start-up (`connect_s` reports that one-off
//! cost; awscli pays its start-up on every copy). Objects are deleted after each run.
//!
//! Prints one line (see README, "Benchmarks"):
//! `bench upload ours_min_s=.. ours_median_s=.. ours_max_s=.. base_min_s=.. base_median_s=..
//! base_max_s=.. ratio=.. slug_bytes=.. ours_mib_s=.. base_mib_s=.. ours_cpu_s=..
//! base_cpu_s=.. ours_server_cpu_s=.. base_server_cpu_s=.. connect_s=.. runs=.. load1=..
//! server=..`
//! where ratio = base median / ours median (above 1: we are faster), *_cpu_s the median CPU
//! seconds of the client and *_server_cpu_s those of the S3 server process during each
//! upload (0 unless DEIS_BENCH_S3_PID names it), or `bench upload skipped reason=..`
//! without an S3 endpoint.
//!
//! Settings: DEIS_IT_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION;
//! DEIS_AWSCLI (the `aws` program, default `aws` on PATH); DEIS_BENCH_RUNS (default 5);
//! DEIS_BENCH_UPLOAD_MIB (slug size, default 200); DEIS_BENCH_DIR (scratch directory);
//! DEIS_BENCH_S3_PID (pid of the S3 server, to report its CPU time); DEIS_BENCH_S3_NAME
//! (the server's name, printed as `server=`, default `moto`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deis_slug::{pack, PackOptions, SlugIgnore};
use deis_storage::{ObjectStore, S3Settings, S3Store};

type Error = Box<dyn std::error::Error>;

const BUCKET: &str = "deis-bench-upload";

fn main() -> Result<(), Error> {
    let Some(endpoint) = std::env::var("DEIS_IT_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        println!("bench upload skipped reason=DEIS_IT_S3_ENDPOINT_unset");
        return Ok(());
    };
    let awscli = std::env::var("DEIS_AWSCLI").unwrap_or_else(|_| "aws".to_owned());
    let (slug_mib, runs) = common::size_and_runs("DEIS_BENCH_UPLOAD_MIB", 200);
    let scratch = match std::env::var_os("DEIS_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let slug = scratch.path().join("slug.tgz");
    let slug_bytes = make_slug(scratch.path(), &slug, slug_mib << 20)?;
    let settings = S3Settings {
        bucket: BUCKET.to_owned(),
        endpoint: Some(endpoint.clone()),
        region: std::env::var("AWS_REGION").unwrap_or_default(),
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        session_token: None,
        path_style: true,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Creates the bucket; timed for the record, but not part of an upload: the builder
    // connects once at start-up and reuses the client (and its connections) for every push.
    let start = Instant::now();
    let store = runtime.block_on(S3Store::connect(settings))?;
    let connect_s = start.elapsed().as_secs_f64();

    let server_pid: Option<u32> = std::env::var("DEIS_BENCH_S3_PID")
        .ok()
        .and_then(|pid| pid.trim().parse().ok());
    let server_cpu = || server_pid.and_then(common::cpu_seconds_of).unwrap_or(0.0);
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut base_cpu) = (Vec::new(), Vec::new());
    let (mut ours_server_cpu, mut base_server_cpu) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let key = format!("bench/ours-{run}.tgz");
        let (before, server_before) = (common::cpu_seconds(), server_cpu());
        ours.push(runtime.block_on(upload_ours(&store, &key, &slug))?);
        ours_cpu.push(common::cpu_seconds().0 - before.0);
        ours_server_cpu.push(server_cpu() - server_before);
        if run == 0 {
            let stored = runtime.block_on(stored_size(&store, &key))?;
            if stored != slug_bytes {
                return Err(format!("stored {stored} bytes of {slug_bytes}").into());
            }
        }
        runtime.block_on(store.delete(&key))?;

        let key = format!("bench/base-{run}.tgz");
        let (before, server_before) = (common::cpu_seconds(), server_cpu());
        base.push(upload_baseline(&awscli, &endpoint, &key, &slug)?);
        base_cpu.push(common::cpu_seconds().1 - before.1);
        base_server_cpu.push(server_cpu() - server_before);
        runtime.block_on(store.delete(&key))?;
    }

    let mib = slug_bytes as f64 / f64::from(1 << 20);
    let (ours, base) = (common::stats(&ours), common::stats(&base));
    println!(
        "bench upload ours_min_s={:.3} ours_median_s={:.3} ours_max_s={:.3} base_min_s={:.3} \
         base_median_s={:.3} base_max_s={:.3} ratio={:.2} slug_bytes={slug_bytes} \
         ours_mib_s={:.1} base_mib_s={:.1} ours_cpu_s={:.2} base_cpu_s={:.2} \
         ours_server_cpu_s={:.2} base_server_cpu_s={:.2} connect_s={connect_s:.3} runs={runs} \
         load1={} server={}",
        ours.min,
        ours.median,
        ours.max,
        base.min,
        base.median,
        base.max,
        base.median / ours.median,
        mib / ours.median,
        mib / base.median,
        common::median(&ours_cpu),
        common::median(&base_cpu),
        common::median(&ours_server_cpu),
        common::median(&base_server_cpu),
        common::load1(),
        std::env::var("DEIS_BENCH_S3_NAME").unwrap_or_else(|_| "moto".to_owned()),
    );
    Ok(())
}

/// A real slug of about `target_bytes`: the bench app tree, packed. The tree compresses
/// to about half, so it is generated twice as large and then removed.
fn make_slug(scratch: &Path, slug: &Path, target_bytes: u64) -> Result<u64, Error> {
    let tree = scratch.join("app");
    common::generate_app_tree(&tree, target_bytes * 2)?;
    let archive = scratch.join("app.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(scratch)
        .arg("-cf")
        .arg(&archive)
        .arg("app")
        .status()?;
    if !status.success() {
        return Err("tar -c failed".into());
    }
    std::fs::remove_dir_all(&tree)?;
    let packed = pack(
        std::io::BufReader::new(std::fs::File::open(&archive)?),
        std::io::BufWriter::new(std::fs::File::create(slug)?),
        &PackOptions {
            strip_prefix: "app",
            ignore: &SlugIgnore::empty(),
        },
    )?;
    std::fs::remove_file(&archive)?;
    Ok(packed.compressed_bytes)
}

async fn upload_ours(store: &S3Store, key: &str, slug: &Path) -> Result<Duration, Error> {
    let start = Instant::now();
    let mut file = tokio::fs::File::open(slug).await?;
    store.put(key, &mut file).await?;
    Ok(start.elapsed())
}

fn upload_baseline(
    awscli: &str,
    endpoint: &str,
    key: &str,
    slug: &Path,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let status = Command::new(awscli)
        .args(["s3", "cp", "--only-show-errors", "--endpoint-url", endpoint])
        .arg(slug)
        .arg(format!("s3://{BUCKET}/{key}"))
        .status()?;
    if !status.success() {
        return Err(format!("aws s3 cp failed: {status}").into());
    }
    Ok(start.elapsed())
}

async fn stored_size(store: &S3Store, key: &str) -> Result<u64, Error> {
    let mut reader = store
        .get(key)
        .await?
        .ok_or("the uploaded slug is missing")?;
    Ok(tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?)
}
