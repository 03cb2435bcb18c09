//! Harness for the integration tests: a real `deis-builder serve` process, real `git` and
//! OpenSSH clients, a real Docker engine and a real S3 server (started by `scripts/test.sh`).
//!
//! Every test that needs these services is `#[ignore]`d, so a plain `cargo test` reports it
//! as ignored (never as passed). `scripts/test.sh` starts the services, sets `DEIS_IT=1` and
//! runs them with `--include-ignored`; each starts with [`require_services!`], which fails
//! the test when it is run without them.
//!
//! The harness is split by concern; test files `use util::*` and see one flat set of names
//! (re-exported below), except the fault proxy and the registry, used by path.
#![allow(dead_code)]

mod builder;
mod buildpacks;
mod docker;
mod git;
mod keys;
pub mod proxy;
pub mod registry;
mod runner;
mod s3;
mod servers;
mod slugs;

#[allow(unused_imports)]
pub use self::{
    builder::{
        http_get, http_request, set_app_config, Builder, BuilderOptions, ControllerMode, Storage,
    },
    buildpacks::{buildpack_fixture, BuildpackRepo},
    docker::{containers_of, docker, release_waiting_build},
    git::{fixture, App, LivePush, Pushed},
    keys::Key,
    runner::{
        run_runner, run_runner_kept, runner_image, unused_port, KeptRun, RunOutput,
        RunnerContainer, RUNNER_TEST_LABEL,
    },
    s3::S3,
    servers::{OneFileServer, StaticServer},
    slugs::{sha256_file, slug_entries},
};

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Fails the test when the integration environment is not there: an ignored test run on
/// purpose (`--include-ignored`, `--ignored`) must not pass without having run.
#[macro_export]
macro_rules! require_services {
    () => {
        if std::env::var("DEIS_IT").as_deref() != Ok("1") {
            panic!(
                "this integration test needs Docker, S3 and a registry, and DEIS_IT=1 is not \
                 set: run it with scripts/test.sh, which starts them and sets DEIS_IT=1"
            );
        }
    };
}

pub fn stack_image() -> String {
    std::env::var("DEIS_IT_STACK_IMAGE").unwrap_or_else(|_| "deis-builder/stack:bookworm".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("DEIS_IT_S3_ENDPOINT").expect("DEIS_IT_S3_ENDPOINT (scripts/test.sh sets it)")
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to `limit` for `condition`.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
