//! A developer's git working copy made from a fixture app, and pushes of it to the builder
//! with the real `git` client over SSH.

use std::io::{BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::builder::Builder;
use super::keys::Key;
use super::{stack_image, unique};

/// A developer's working copy made from a fixture app.
pub struct App {
    pub dir: TempDir,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/apps")
        .join(name)
}

impl App {
    /// The dockerfile-web fixture, built FROM the stack image under test, with unique
    /// content so the engine's layer cache cannot skip the steps a test watches.
    pub fn dockerfile_on_stack() -> App {
        let app = App::from_fixture("dockerfile-web");
        let path = app.dir.path().join("Dockerfile");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "FROM deis-builder/stack:bookworm",
            &format!("FROM {}", stack_image()),
        );
        std::fs::write(&path, text).unwrap();
        std::fs::write(app.dir.path().join("build-id"), unique("build")).unwrap();
        app.git(&["add", "-A"]);
        app.git(&["commit", "-q", "-m", "use the stack image under test"]);
        app
    }

    pub fn from_fixture(name: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", fixture(name).display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let app = App { dir };
        app.git(&["init", "-q", "-b", "master"]);
        app.git(&["add", "-A"]);
        app.git(&["commit", "-q", "-m", "initial"]);
        app
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = self.git_command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn git_command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(self.dir.path())
            .env("GIT_AUTHOR_NAME", "Dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.com")
            .env("GIT_COMMITTER_NAME", "Dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.dir.path());
        cmd
    }

    pub fn commit_file(&self, path: &str, content: &str) -> String {
        std::fs::write(self.dir.path().join(path), content).unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", &format!("change {path}")]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    fn push_command(&self, remote: &str, key: &Key, port: u16, refspec: &str) -> Command {
        let mut cmd = self.git_command();
        cmd.args(["push", remote, refspec])
            .env("GIT_SSH_COMMAND", key.ssh_command(port))
            .stdin(Stdio::null());
        cmd
    }

    /// `git push` to completion.
    pub fn push(&self, builder: &Builder, app: &str, key: &Key) -> Pushed {
        self.push_ref(builder, app, key, "master")
    }

    pub fn push_ref(&self, builder: &Builder, app: &str, key: &Key, refspec: &str) -> Pushed {
        let out = self
            .push_command(&builder.remote(app), key, builder.ssh_port, refspec)
            .output()
            .unwrap();
        Pushed {
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `git push` in the background, its output readable line by line as it arrives.
    pub fn push_live(&self, builder: &Builder, app: &str, key: &Key) -> LivePush {
        let mut child = self
            .push_command(&builder.remote(app), key, builder.ssh_port, "master")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || forward_lines(stderr, tx));
        std::thread::spawn(move || forward_lines(stdout, tx2));
        LivePush {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// `git push` of the `procfile-wait` fixture, returned once its build is held open
    /// (release it with [`release_waiting_build`]).
    pub fn push_held(&self, builder: &Builder, app: &str, key: &Key) -> LivePush {
        let mut push = self.push_live(builder, app, key);
        push.wait_for("waiting for /tmp/continue");
        push
    }

    /// Refs of the builder's repository, as the client sees them.
    pub fn ls_remote(&self, builder: &Builder, app: &str, key: &Key) -> std::process::Output {
        self.git_command()
            .args(["ls-remote", &builder.remote(app)])
            .env("GIT_SSH_COMMAND", key.ssh_command(builder.ssh_port))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn forward_lines(from: impl Read, to: mpsc::Sender<String>) {
    // git separates progress updates with \r: treat both as line ends.
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut byte = [0u8; 1];
        loop {
            match reader.read(&mut byte) {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        let _ = to.send(String::from_utf8_lossy(&buf).into_owned());
                    }
                    return;
                }
                Ok(_) if byte[0] == b'\n' || byte[0] == b'\r' => break,
                Ok(_) => buf.push(byte[0]),
            }
        }
        if to.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
            return;
        }
    }
}

pub struct Pushed {
    pub status: ExitStatus,
    pub output: String,
}

impl Pushed {
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.status.success(), "push failed:\n{}", self.output);
        self
    }

    #[track_caller]
    pub fn assert_rejected(&self) -> &Self {
        assert!(
            !self.status.success(),
            "push should have failed:\n{}",
            self.output
        );
        self
    }

    #[track_caller]
    pub fn assert_says(&self, text: &str) -> &Self {
        assert!(
            self.output.contains(text),
            "expected {text:?} in:\n{}",
            self.output
        );
        self
    }
}

pub struct LivePush {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl LivePush {
    /// Waits (at most a minute) for a line containing `text`.
    #[track_caller]
    pub fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "never saw {text:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits for git to exit; returns its status and the whole output.
    pub fn finish(mut self) -> Pushed {
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        Pushed {
            status,
            output: self.seen.join("\n"),
        }
    }

    /// Kills git and its ssh child, like a developer closing the terminal.
    pub fn kill(mut self) {
        // The whole process group: git and the ssh it started. Through libc, because
        // procps' kill(1) reads a negative pid after a signal name ambiguously.
        let pgid = libc::pid_t::try_from(self.child.id()).unwrap();
        assert!(pgid > 1);
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
