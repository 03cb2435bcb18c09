//! Load test, bounded in count and time, loopback only: 50 concurrent SSH clients (20 pushing
//! to distinct apps with fewer build slots than pushes, 30 fetching refs in a loop) while 100
//! unauthenticated TCP connections sit idle. Every push must land (the queued ones too), the
//! idle connections must be dropped by the login timeout, and the builder's peak memory is
//! printed and checked against a generous bound that only catches leaks.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use util::*;

const PUSHES: usize = 20;
const FETCHERS: usize = 30;
const IDLE: usize = 100;
const BUILD_SLOTS: &str = "4";
/// Far above what the builder needs; a leak per connection or per push would cross it.
const PEAK_RSS_LIMIT_KB: u64 = 512 * 1024;

/// Peak resident set size of a process, in kB (VmHWM).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// True when the server closes `stream` (end-of-file or reset) before `deadline`.
fn dropped_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn fifty_clients_and_a_hundred_idle_connections() {
    require_services!();
    let started = Instant::now();
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: [
            "--max-builds",
            BUILD_SLOTS,
            "--login-timeout",
            "10s",
            "--max-connections",
            "256",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let pid = builder.pid().unwrap();
    let port = builder.ssh_port;

    // What the fetchers read: an app that already has a release.
    let seed_app = App::from_fixture("static-site");
    let seed = unique("seed");
    seed_app.push(&builder, &seed, &key).assert_ok();

    // Idle, unauthenticated: half never say anything, half send a banner and stall.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            if i % 2 == 1 {
                stream.write_all(b"SSH-2.0-idle-load-test\r\n").unwrap();
            }
            stream
        })
        .collect();

    let apps: Vec<(App, String)> = (0..PUSHES)
        .map(|i| {
            let app = App::from_fixture("static-site");
            app.commit_file("INDEX", &format!("{i}\n"));
            (app, unique(&format!("load{i}")))
        })
        .collect();
    let pushing_done = AtomicBool::new(false);
    let fetches = AtomicUsize::new(0);
    let results: Vec<Pushed> = std::thread::scope(|scope| {
        let fetchers: Vec<_> = (0..FETCHERS)
            .map(|_| {
                scope.spawn(|| {
                    while !pushing_done.load(Ordering::Relaxed) {
                        let out = seed_app.ls_remote(&builder, &seed, &key);
                        assert!(
                            out.status.success()
                                && String::from_utf8_lossy(&out.stdout)
                                    .contains("refs/heads/master"),
                            "fetch under load failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        fetches.fetch_add(1, Ordering::Relaxed);
                        // A client, not a busy loop: leave the two cores to the builds.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            })
            .collect();
        let pushes: Vec<_> = apps
            .iter()
            .map(|(app, name)| scope.spawn(|| app.push(&builder, name, &key)))
            .collect();
        let results = pushes.into_iter().map(|p| p.join().unwrap()).collect();
        pushing_done.store(true, Ordering::Relaxed);
        for fetcher in fetchers {
            fetcher.join().unwrap();
        }
        results
    });

    let mut queued = 0;
    for (pushed, (_, name)) in results.iter().zip(&apps) {
        pushed
            .assert_ok()
            .assert_says(&format!("Done, {name}:v1 deployed"));
        if pushed.output.contains("Waiting for a build slot") {
            queued += 1;
        }
    }
    assert!(
        queued > 0,
        "{PUSHES} pushes on {BUILD_SLOTS} build slots and none waited"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut still_open = 0;
    for stream in &mut idle {
        if !dropped_by(stream, deadline) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "idle unauthenticated connections outlived the login timeout"
    );

    let peak_kb = peak_rss_kb(pid);
    println!(
        "load: {PUSHES} pushes ({queued} queued for one of {BUILD_SLOTS} build slots), {} fetches by {FETCHERS} clients, {IDLE} idle connections dropped; builder peak RSS {} MiB ({peak_kb} kB); {:.1} s",
        fetches.load(Ordering::Relaxed),
        peak_kb / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak_kb < PEAK_RSS_LIMIT_KB,
        "builder peak RSS {peak_kb} kB is over {PEAK_RSS_LIMIT_KB} kB"
    );
    for (_, name) in &apps {
        assert!(containers_of(name).is_empty(), "{name} left a container");
    }
}
