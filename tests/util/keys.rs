//! Client SSH keys, made with the real `ssh-keygen`, and the plain `ssh` client.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;

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
