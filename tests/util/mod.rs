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

// Dead code: each `tests/*.rs` is a crate of its own that compiles `mod util;` again, and
// rustc's dead-code lint sees one crate at a time, so an item that only `faults.rs` needs is
// "never used" in the other twelve. No attribute says "used by another test binary", and
// `pub` is no help inside a test binary's private `mod util` (`pub mod util;` in each test
// would silence the lint as completely as a blanket allow, just without saying so). Having
// each test declare only the util modules it uses would not be enough either: within one
// module, binaries still use different items (`Builder::crash_and_restart`, `S3::download`).
// Hence `allow(dead_code)` on the module lines below, for that reason only, and
// `allow(unused_imports)` on the re-exports for the same reason. The helpers in this file stay
// checked: every test binary starts a builder, which uses them (`eventually` is the
// exception and says so). To find items no test uses, drop the allows and build the tests:
// an item reported by every test binary is used by none and should be deleted.
#[allow(dead_code)]
mod builder;
#[allow(dead_code)]
mod buildpacks;
#[allow(dead_code)]
mod docker;
#[allow(dead_code)]
mod git;
#[allow(dead_code)]
mod keys;
#[allow(dead_code)]
pub mod proxy;
#[allow(dead_code)]
pub mod registry;
#[allow(dead_code)]
mod runner;
#[allow(dead_code)]
mod s3;
#[allow(dead_code)]
mod servers;
#[allow(dead_code)]
mod slugs;

#[allow(unused_imports)]
pub use self::{
    builder::{
        http_get, http_request, set_app_config, Builder, BuilderOptions, ControllerMode, Storage,
    },
    buildpacks::buildpack_fixture,
    docker::{containers_of, docker, release_waiting_build, running_containers_of, LocalImages},
    git::{App, Pushed},
    keys::Key,
    runner::{run_runner, run_runner_kept, runner_image, RunnerContainer, RunningSlug},
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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to `limit` for `condition`.
#[allow(dead_code)] // not every test binary waits for something
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
