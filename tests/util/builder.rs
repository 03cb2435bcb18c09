//! The builder under test: a real `deis-builder serve` process on loopback ports, its
//! options, and minimal HTTP clients for its HTTP port.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::keys::Key;
use super::s3::S3;
use super::{free_port, s3_endpoint, stack_image};

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
    /// The bucket of a builder on S3: a standalone controller's state lives there.
    pub bucket: Option<String>,
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
        // The static CNB driver scripts/test.sh builds; without it CNB pushes are refused.
        if let Ok(driver) = std::env::var("DEIS_IT_CNB_DRIVER") {
            envs.push(("DEIS_BUILDER_CNB_DRIVER".to_owned(), driver));
        }
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
        let bucket = args
            .iter()
            .filter_map(|arg| arg.strip_prefix("s3://"))
            .next_back()
            .map(str::to_owned);
        let mut builder = Builder {
            child: None,
            args,
            envs,
            data_dir,
            bucket,
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

    /// Adds `key` to the standalone controller's authorized_keys (in the bucket, on S3).
    pub fn authorize(&self, key: &Key) {
        use std::io::Write;
        if let Some(bucket) = &self.bucket {
            let s3 = S3::connect();
            let mut keys = s3.get(bucket, STANDALONE_KEYS).unwrap_or_default();
            writeln!(keys, "{}", key.public_line).unwrap();
            s3.put(bucket, STANDALONE_KEYS, keys);
            return;
        }
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

    /// Release records of the standalone controller for `app` (`v1.json`, ...).
    pub fn releases(&self, app: &str) -> Vec<String> {
        if let Some(bucket) = &self.bucket {
            let prefix = format!("builder/standalone/apps/{app}/releases/");
            let mut names: Vec<String> = S3::connect()
                .keys(bucket)
                .iter()
                .filter_map(|key| key.strip_prefix(&prefix))
                .filter(|name| name.starts_with('v'))
                .map(str::to_owned)
                .collect();
            names.sort();
            return names;
        }
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

/// Where a standalone controller on S3 keeps its users.
const STANDALONE_KEYS: &str = "builder/standalone/authorized_keys";

/// Writes the standalone controller's config for `app` (in the bucket, on S3).
pub fn set_app_config(builder: &Builder, app: &str, values: &[(&str, &str)]) {
    let map: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let text = serde_json::Value::Object(map).to_string();
    if let Some(bucket) = &builder.bucket {
        let key = format!("builder/standalone/apps/{app}/config.json");
        S3::connect().put(bucket, &key, text.into_bytes());
        return;
    }
    let dir = builder.data_dir.path().join("apps").join(app);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), text).unwrap();
}
