//! A real registry (Debian's `docker-registry`) on a loopback port, optionally with
//! htpasswd (bcrypt) authentication, for one test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

pub struct Registry {
    child: Child,
    _dir: TempDir,
    pub port: u16,
    pub auth: Option<(String, String)>,
    log: PathBuf,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            _dir: dir,
            port,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(registry.get("/v2/"), Some((200 | 401, _))) {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "registry did not start: {}",
            std::fs::read_to_string(&registry.log).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// GET with the registry's credentials.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let header = self.auth.as_ref().map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        super::http_request(self.port, "GET", path, header.as_deref().unwrap_or(""), "")
    }

    /// Tags of `repository`; empty when it does not exist.
    pub fn tags(&self, repository: &str) -> Vec<String> {
        match self.get(&format!("/v2/{repository}/tags/list")) {
            Some((200, body)) => {
                let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                value["tags"]
                    .as_array()
                    .map(|tags| {
                        tags.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Runs the docker CLI logged in to this registry (with a private client config).
    pub fn docker(&self, config_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        if let Some((user, password)) = &self.auth {
            let login = Command::new("docker")
                .env("DOCKER_CONFIG", config_dir)
                .args(["login", &self.host(), "-u", user, "--password-stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().unwrap().write_all(password.as_bytes())?;
                    child.wait()
                })
                .unwrap();
            assert!(login.success(), "docker login failed");
        }
        Command::new("docker")
            .env("DOCKER_CONFIG", config_dir)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
