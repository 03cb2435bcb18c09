//! The Docker CLI against the engine the builder uses: app containers and their clean-up.

use std::process::Command;

/// Runs `docker args…`, asserts success and returns stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// IDs of containers labelled with `app` (any state).
pub fn containers_of(app: &str) -> Vec<String> {
    builder_containers(app, "-aq")
}

/// The app's build containers that are running now.
pub fn running_containers_of(app: &str) -> Vec<String> {
    builder_containers(app, "-q")
}

fn builder_containers(app: &str, listing: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            listing,
            "--filter",
            &format!("label=io.deis.builder.app={app}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Lets a build held by the `procfile-wait` fixture continue.
pub fn release_waiting_build(app: &str) {
    for id in containers_of(app) {
        let status = Command::new("docker")
            .args(["exec", &id, "touch", "/tmp/continue"])
            .status()
            .unwrap();
        assert!(status.success(), "docker exec failed");
    }
}

/// Every local tag of an image repository (`host:port/name`), removed when dropped, even
/// when the test fails: what a test's pushes, pulls and imports left in the engine.
#[allow(dead_code)] // not every test binary makes images
pub struct LocalImages(pub String);

impl Drop for LocalImages {
    fn drop(&mut self) {
        let Ok(listed) = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}", &self.0])
            .output()
        else {
            return;
        };
        for tag in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = Command::new("docker").args(["rmi", tag]).output();
        }
    }
}
