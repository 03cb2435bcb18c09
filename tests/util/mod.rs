//! Harness for the integration tests: a real `deis-builder serve` process, real `git` and
//! OpenSSH clients, a real Docker engine and a real S3 server (started by `scripts/test.sh`).
//!
//! Every test that needs these services is `#[ignore]`d, so a plain `cargo test` reports it
//! as ignored (never as passed). `scripts/test.sh` starts the services, sets `DEIS_IT=1` and
//! runs them with `--include-ignored`; each starts with [`require_services!`], which fails
//! the test when it is run without them.
#![allow(dead_code)]

pub mod proxy;
pub mod registry;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

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

pub enum Storage {
    Local,
    S3 { bucket: String },
}

pub enum ControllerMode {
    Standalone,
    Deis { url: String, key: String },
}

pub struct BuilderOptions {
    pub storage: Storage,
    pub controller: ControllerMode,
    pub extra_args: Vec<String>,
    /// Extra environment of the builder process (e.g. `DOCKER_HOST`).
    pub envs: Vec<(String, String)>,
}

impl Default for BuilderOptions {
    fn default() -> Self {
        BuilderOptions {
            storage: Storage::Local,
            controller: ControllerMode::Standalone,
            extra_args: Vec::new(),
            envs: Vec::new(),
        }
    }
}

/// A running `deis-builder serve`, stopped with SIGTERM when dropped.
pub struct Builder {
    child: Option<Child>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub data_dir: TempDir,
    pub ssh_port: u16,
    pub http_port: u16,
    log_path: PathBuf,
}

impl Builder {
    pub fn start(options: BuilderOptions) -> Builder {
        Builder::start_in(options, tempfile::tempdir().unwrap())
    }

    /// Like [`Builder::start`], with a data dir the test prepared (e.g. a small mount).
    pub fn start_in(options: BuilderOptions, data_dir: TempDir) -> Builder {
        let ssh_port = free_port();
        let http_port = free_port();
        let log_path = data_dir.path().join("builder.log");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.path().display().to_string(),
            "--ssh-addr".into(),
            format!("127.0.0.1:{ssh_port}"),
            "--http-addr".into(),
            format!("127.0.0.1:{http_port}"),
        ];
        // Defaults a test may override with flags: the test stack, and sealed builds
        // unless a test asks for a network (our engine has no bridge).
        let mut envs = vec![
            ("DEIS_BUILDER_STACK_IMAGE".to_owned(), stack_image()),
            ("DEIS_BUILDER_BUILD_NETWORK".to_owned(), "none".to_owned()),
        ];
        match &options.storage {
            Storage::Local => {}
            Storage::S3 { bucket } => {
                args.extend([
                    "--storage".into(),
                    format!("s3://{bucket}"),
                    "--s3-endpoint".into(),
                    s3_endpoint(),
                ]);
            }
        }
        if let ControllerMode::Deis { url, key } = &options.controller {
            args.extend(["--controller-url".into(), url.clone()]);
            envs.push(("DEIS_BUILDER_KEY".to_owned(), key.clone()));
        }
        args.extend(options.extra_args.iter().cloned());
        envs.extend(options.envs.iter().cloned());
        let mut builder = Builder {
            child: None,
            args,
            envs,
            data_dir,
            ssh_port,
            http_port,
            log_path,
        };
        builder.spawn();
        builder
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_deis-builder"))
            .args(&self.args)
            // Before the test's own environment, so a test may set another level.
            .env("RUST_LOG", "info,deis_builder=debug")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("DEIS_CONTROLLER_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start deis-builder");
        self.child = Some(child);
        self.wait_ready();
    }

    /// The builder's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the builder (no clean-up runs) and starts it again on the same data dir.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.spawn();
    }

    /// A standalone builder with local storage and one authorised ed25519 key.
    pub fn with_developer() -> (Builder, Key) {
        Self::with_developer_and(BuilderOptions::default())
    }

    pub fn with_developer_and(options: BuilderOptions) -> (Builder, Key) {
        let builder = Builder::start(options);
        let key = Key::generate("ed25519", "dev");
        builder.authorize(&key);
        (builder, key)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "deis-builder exited during start-up ({status}):\n{}",
                        self.log()
                    );
                }
            }
            if http_get(self.http_port, "/healthz").map(|(status, _)| status) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("deis-builder did not become healthy:\n{}", self.log());
    }

    pub fn remote(&self, app: &str) -> String {
        format!("ssh://git@127.0.0.1:{}/{app}.git", self.ssh_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Adds `key` to the standalone controller's authorized_keys.
    pub fn authorize(&self, key: &Key) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.path().join("authorized_keys"))
            .unwrap();
        writeln!(file, "{}", key.public_line).unwrap();
    }

    pub fn storage_path(&self, key: &str) -> PathBuf {
        self.data_dir.path().join("storage").join(key)
    }

    /// Release records of the standalone controller for `app`.
    pub fn releases(&self, app: &str) -> Vec<String> {
        let dir = self.data_dir.path().join("apps").join(app).join("releases");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).unwrap();
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- deis-builder log ----\n{}", self.log());
        }
    }
}

/// Minimal HTTP/1.1 GET against 127.0.0.1; returns status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, "", "")
}

/// Minimal HTTP/1.1 request against 127.0.0.1. `headers` are complete `Name: value\r\n` lines.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A client SSH key pair made with ssh-keygen.
pub struct Key {
    _dir: TempDir,
    pub path: PathBuf,
    pub public_line: String,
    pub fingerprint: String,
}

impl Key {
    /// `kind`: `ed25519`, `rsa` or `ecdsa`. The comment (the standalone user name) is `user`.
    pub fn generate(kind: &str, user: &str) -> Key {
        Key::generate_with_passphrase(kind, user, "")
    }

    /// Like [`Key::generate`], the private key encrypted with `passphrase`.
    pub fn generate_with_passphrase(kind: &str, user: &str, passphrase: &str) -> Key {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("id_{kind}"));
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", passphrase, "-C", user, "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "ssh-keygen failed");
        let public_line = std::fs::read_to_string(path.with_extension("pub"))
            .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))
            .unwrap()
            .trim()
            .to_owned();
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "md5", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let fingerprint = text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.strip_prefix("MD5:"))
            .expect("md5 fingerprint")
            .to_owned();
        Key {
            _dir: dir,
            path,
            public_line,
            fingerprint,
        }
    }

    /// The ssh command git should use, as a user would configure it.
    pub fn ssh_command(&self, port: u16) -> String {
        format!(
            "ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR -o BatchMode=yes",
            self.path.display()
        )
    }

    /// Runs plain `ssh git@127.0.0.1` against the builder: `options` go before the host,
    /// `command` after it.
    pub fn ssh(&self, port: u16, options: &[&str], command: &[&str]) -> std::process::Output {
        Command::new("ssh")
            .args(["-p", &port.to_string(), "-i"])
            .arg(&self.path)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
            ])
            .args(options)
            .arg("git@127.0.0.1")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// A developer's working copy made from a fixture app.
pub struct App {
    pub dir: TempDir,
}

pub fn fixture(name: &str) -> PathBuf {
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
    #[allow(unreachable_code)]
    {
        let _ = reader.fill_buf();
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

/// IDs of containers labelled with `app` (any state).
pub fn containers_of(app: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
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

/// Lists the entry names of a gzip'd tar (the slug), via GNU tar like an operator would.
pub fn slug_entries(slug: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tzf").arg(slug).output().unwrap();
    assert!(
        out.status.success(),
        "tar -tzf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// An S3 client for checking what the builder stored, independent of the builder's code.
pub struct S3 {
    pub runtime: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3 {
    pub fn connect() -> S3 {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let credentials = aws_sdk_s3::config::Credentials::new(
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
            None,
            None,
            "tests",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(s3_endpoint())
            .force_path_style(true)
            .credentials_provider(credentials)
            .http_client(http)
            .build();
        S3 {
            runtime,
            client: aws_sdk_s3::Client::from_conf(config),
        }
    }

    /// Keys of multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            listed
                .uploads()
                .iter()
                .filter_map(|u| u.key().map(str::to_owned))
                .collect()
        })
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let listed = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let mut keys: Vec<String> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            keys.sort();
            keys
        })
    }

    /// Downloads `key` to a file in `dir`.
    pub fn download(&self, bucket: &str, key: &str, dir: &Path) -> PathBuf {
        let path = dir.join(key.replace(['/', ':'], "_"));
        self.runtime.block_on(async {
            let object = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let data = object.body.collect().await.unwrap().into_bytes();
            std::fs::write(&path, &data).unwrap();
        });
        path
    }
}

// ------------------------------------------------------------------ slug runner

/// Label on every container the slug runner tests create (for clean-up by hand, too).
pub const RUNNER_TEST_LABEL: &str = "io.deis.builder.test=slugrunner";

/// The runner image `scripts/test.sh` builds (`ensure_runner_image`).
pub fn runner_image() -> String {
    std::env::var("DEIS_IT_RUNNER_IMAGE")
        .unwrap_or_else(|_| "deis-builder/slugrunner:latest".into())
}

/// A free TCP port on 127.0.0.1.
pub fn unused_port() -> u16 {
    free_port()
}

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

/// A plain HTTP server on 127.0.0.1 answering every path ending in `.tgz` except
/// `/missing.tgz` with `body`, everything else with 404. Runs until the test ends.
pub struct OneFileServer {
    pub port: u16,
}

impl OneFileServer {
    pub fn start(body: Vec<u8>) -> OneFileServer {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request_line.split(' ').nth(1).unwrap_or_default();
                let found = path.ends_with(".tgz") && path != "/missing.tgz";
                let _ = if found {
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .and_then(|()| stream.write_all(&body))
                } else {
                    write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                };
            }
        });
        OneFileServer { port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A static HTTP server on 127.0.0.1 (python3 -m http.server) over a temp directory: it
/// serves buildpack tarballs and git repositories over git's "dumb" HTTP protocol.
pub struct StaticServer {
    child: Child,
    pub port: u16,
    pub root: TempDir,
}

impl StaticServer {
    pub fn start() -> StaticServer {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "static HTTP server did not start");
        StaticServer { child, port, root }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Publishes `fixtures/buildpacks/<fixture>` as a git repository `<name>.git` (branch
    /// `main`, one commit); returns the working copy to add commits, branches and tags.
    pub fn publish_buildpack_repo(&self, name: &str, fixture: &str) -> BuildpackRepo {
        let work = tempfile::tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", buildpack_fixture(fixture).display()))
            .arg(work.path())
            .status()
            .unwrap();
        assert!(status.success());
        let repo = BuildpackRepo {
            work,
            bare: self.root.path().join(format!("{name}.git")),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit("initial");
        repo.git(&[
            "clone",
            "-q",
            "--bare",
            ".",
            &repo.bare.display().to_string(),
        ]);
        repo.git(&["remote", "add", "origin", &repo.bare.display().to_string()]);
        repo.refresh();
        repo
    }

    /// Publishes `fixtures/buildpacks/<fixture>` as `<name>.tgz` with one top-level directory
    /// (as GitHub archives have).
    pub fn publish_buildpack_tarball(&self, name: &str, fixture: &str) {
        let status = Command::new("tar")
            .arg("-czf")
            .arg(self.root.path().join(format!("{name}.tgz")))
            .arg("-C")
            .arg(buildpack_fixture(fixture).parent().unwrap())
            .arg(format!("--transform=s,^{fixture},{name}-1.0,"))
            .arg(fixture)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn buildpack_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/buildpacks")
        .join(name)
}

/// The working copy of a buildpack repository served by [`StaticServer`].
pub struct BuildpackRepo {
    pub work: TempDir,
    bare: PathBuf,
}

impl BuildpackRepo {
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.work.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "Buildpack")
            .env("GIT_AUTHOR_EMAIL", "bp@example.com")
            .env("GIT_COMMITTER_NAME", "Buildpack")
            .env("GIT_COMMITTER_EMAIL", "bp@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn write(&self, path: &str, content: &str) {
        std::fs::write(self.work.path().join(path), content).unwrap();
    }

    /// Pushes all branches and tags to the served bare repository.
    pub fn publish(&self) {
        self.git(&["push", "-q", "--all", "origin"]);
        self.git(&["push", "-q", "--tags", "origin"]);
        self.refresh();
    }

    /// Dumb HTTP needs the info/refs and objects/info/packs files.
    fn refresh(&self) {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.bare)
            .arg("update-server-info")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

/// Writes the standalone controller's config for `app`.
pub fn set_app_config(builder: &Builder, app: &str, values: &[(&str, &str)]) {
    let dir = builder.data_dir.path().join("apps").join(app);
    std::fs::create_dir_all(&dir).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    std::fs::write(
        dir.join("config.json"),
        serde_json::Value::Object(map).to_string(),
    )
    .unwrap();
}
