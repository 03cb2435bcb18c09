//! The slug runner image under test, run with the Docker CLI.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::builder::{http_get, Builder};
use super::git::App;
use super::{eventually, free_port};

/// Label on every container the slug runner tests create (for clean-up by hand, too).
const RUNNER_TEST_LABEL: &str = "io.deis.builder.test=slugrunner";

/// The runner image `scripts/test.sh` builds (`ensure_runner_image`).
pub fn runner_image() -> String {
    std::env::var("DEIS_IT_RUNNER_IMAGE")
        .unwrap_or_else(|_| "deis-builder/slugrunner:latest".into())
}

/// Exit status and output of a finished runner container.
#[derive(Debug)]
pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    #[track_caller]
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{self:?}");
    }

    #[track_caller]
    pub fn assert_failed(&self) {
        assert!(
            self.code.is_some_and(|code| code != 0),
            "should have failed: {self:?}"
        );
    }
}

fn docker_run(extra: &[&str], args: &[String], stdin: Option<&[u8]>) -> RunOutput {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["run", "--label", RUNNER_TEST_LABEL])
        .args(extra)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The runner may refuse early and close its end: a broken pipe is fine.
        let _ = pipe.write_all(data);
    }
    let out = child.wait_with_output().unwrap();
    RunOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `docker run --rm <args>` to completion, `stdin` piped in (pass `-i` in `args` then).
pub fn run_runner(args: &[String], stdin: Option<&[u8]>) -> RunOutput {
    docker_run(&["--rm"], args, stdin)
}

/// A finished container's output and its file system changes (`docker diff` lines).
pub struct KeptRun {
    pub output: RunOutput,
    pub changes: Vec<String>,
}

/// Like [`run_runner`], but reads `docker diff` before removing the container.
pub fn run_runner_kept(args: &[String], stdin: Option<&[u8]>) -> KeptRun {
    let dir = tempfile::tempdir().unwrap();
    let cidfile = dir.path().join("cid");
    let cid_arg = cidfile.display().to_string();
    let output = docker_run(&["--cidfile", &cid_arg], args, stdin);
    let id = std::fs::read_to_string(&cidfile).unwrap();
    let diff = Command::new("docker").args(["diff", &id]).output().unwrap();
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    assert!(diff.status.success(), "docker diff failed");
    KeptRun {
        output,
        changes: String::from_utf8_lossy(&diff.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    }
}

/// A detached runner container, removed (forcefully) when dropped.
pub struct RunnerContainer {
    pub id: String,
}

impl RunnerContainer {
    pub fn start(args: &[String]) -> RunnerContainer {
        let out = Command::new("docker")
            .args(["run", "-d", "--label", RUNNER_TEST_LABEL])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        RunnerContainer {
            id: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        }
    }

    /// stdout and stderr so far.
    pub fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.id])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for RunnerContainer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- container {} ----\n{}", self.id, self.logs());
        }
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}

/// A slug the builder stored (local storage), running as `start web` in the runner image
/// on the host network; returns once `GET /` answers 200 with `expected` in the body.
pub struct RunningSlug {
    pub container: RunnerContainer,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RunningSlug {
    pub fn start(builder: &Builder, app: &App, name: &str, expected: &str) -> RunningSlug {
        let sha8 = &app.head()[..8];
        let stored = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
        assert!(stored.is_file(), "no slug at {}", stored.display());
        // The runner runs as uid 1000: give it a readable copy.
        let dir = tempfile::tempdir().unwrap();
        let slug = dir.path().join("slug.tgz");
        std::fs::copy(&stored, &slug).unwrap();
        set_mode(&slug, 0o644);
        let port = free_port();
        let container = RunnerContainer::start(&[
            "-v".into(),
            format!("{}:/slugs/slug.tgz:ro", slug.display()),
            "-e".into(),
            "SLUG_URL=/slugs/slug.tgz".into(),
            "-e".into(),
            format!("PORT={port}"),
            "--network".into(),
            "host".into(),
            runner_image(),
            "start".into(),
            "web".into(),
        ]);
        let mut last = None;
        let answered = eventually(Duration::from_secs(60), || {
            last = http_get(port, "/");
            last.as_ref()
                .is_some_and(|(status, body)| *status == 200 && body.contains(expected))
        });
        assert!(
            answered,
            "{name} never answered {expected:?} on port {port} (last answer {last:?}):\n{}",
            container.logs()
        );
        RunningSlug {
            container,
            port,
            _dir: dir,
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}
