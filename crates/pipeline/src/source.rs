//! Read access to a pushed commit: the pipeline's only view of the user's source.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use deis_types::names::CommitId;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git {what} failed: {message}")]
    Git { what: &'static str, message: String },
    #[error("{path} in the pushed commit is larger than {limit} bytes")]
    FileTooLarge { path: String, limit: usize },
}

/// Read access to a pushed commit. During the pre-receive hook the new objects are still
/// in git's quarantine directory, so every command carries the hook's object-directory env.
#[derive(Debug, Clone)]
pub struct Source {
    git_dir: PathBuf,
    object_env: Vec<(String, String)>,
}

impl Source {
    pub fn new(git_dir: PathBuf, object_env: Vec<(String, String)>) -> Source {
        Source {
            git_dir,
            object_env,
        }
    }

    /// The same repository once the push has landed: git has moved the pushed objects out
    /// of the quarantine, which is gone.
    pub fn landed(&self) -> Source {
        Source::new(self.git_dir.clone(), Vec::new())
    }

    fn command(&self) -> Command {
        let mut cmd = git_command(&self.git_dir);
        cmd.envs(self.object_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Streams the tree of `commit` as a tar archive (no `.git`). The stream ends with an
    /// error, not early, if git fails, so a consumer never takes a truncated tree for a whole one.
    pub fn archive(&self, commit: &CommitId) -> Result<deis_types::pipe::ByteStream, SourceError> {
        self.archive_tree(commit.as_str())
    }

    /// The directory `dir` of `commit` as a tar archive, its entries relative to it (a
    /// buildpack the app carries).
    pub fn archive_dir(
        &self,
        commit: &CommitId,
        dir: &str,
    ) -> Result<deis_types::pipe::ByteStream, SourceError> {
        self.archive_tree(&format!("{commit}:{dir}"))
    }

    fn archive_tree(&self, tree: &str) -> Result<deis_types::pipe::ByteStream, SourceError> {
        use futures_util::StreamExt;
        let mut child = self
            .command()
            .args(["archive", "--format=tar", tree])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SourceError::Git {
                what: "archive",
                message: e.to_string(),
            })?;
        let stdout = child.stdout.take().ok_or(SourceError::Git {
            what: "archive",
            message: "no output pipe".into(),
        })?;
        let exit_check = futures_util::stream::once(async move {
            match child.wait().await {
                Ok(status) if status.success() => Ok(Bytes::new()),
                Ok(status) => Err(std::io::Error::other(format!(
                    "git archive failed ({status})"
                ))),
                Err(e) => Err(e),
            }
        });
        Ok(Box::pin(
            tokio_util::io::ReaderStream::new(stdout).chain(exit_check),
        ))
    }

    /// Whether `commit` has a file (or directory) at `path`.
    pub async fn has_file(&self, commit: &CommitId, path: &str) -> Result<bool, SourceError> {
        let status = self
            .command()
            .args(["cat-file", "-e", &format!("{commit}:{path}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| SourceError::Git {
                what: "cat-file",
                message: e.to_string(),
            })?;
        Ok(status.success())
    }

    /// Contents of `path` in `commit`, `None` when there is no such file.
    pub async fn read_file(
        &self,
        commit: &CommitId,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let git_err = |e: std::io::Error| SourceError::Git {
            what: "cat-file",
            message: e.to_string(),
        };
        let mut child = self
            .command()
            .args(["cat-file", "blob", &format!("{commit}:{path}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(git_err)?;
        let mut data = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let limit_plus_one = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            stdout
                .take(limit_plus_one)
                .read_to_end(&mut data)
                .await
                .map_err(git_err)?;
        }
        if data.len() > limit {
            kill(&mut child).await;
            return Err(SourceError::FileTooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        let status = child.wait().await.map_err(git_err)?;
        Ok(status.success().then_some(data))
    }

    /// The commit a submodule at `path` is pinned to in `commit` (its gitlink), `None`
    /// when `path` is no submodule there.
    pub async fn gitlink(
        &self,
        commit: &CommitId,
        path: &str,
    ) -> Result<Option<CommitId>, SourceError> {
        let output = self
            .command()
            .args(["ls-tree", "-z", commit.as_str(), "--", path])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await
            .map_err(|e| SourceError::Git {
                what: "ls-tree",
                message: e.to_string(),
            })?;
        // `160000 commit <sha>\t<path>\0`
        let listing = String::from_utf8_lossy(&output.stdout);
        let gitlink = listing.split('\0').find_map(|entry| {
            let (meta, entry_path) = entry.split_once('\t')?;
            let mut fields = meta.split(' ');
            let (mode, kind, sha) = (fields.next()?, fields.next()?, fields.next()?);
            (mode == "160000" && kind == "commit" && entry_path == path)
                .then(|| CommitId::parse(sha).ok())
                .flatten()
        });
        Ok(gitlink)
    }
}

/// A git command with a clean environment: nothing from the server's own environment
/// (such as a stray `GIT_DIR`) may change which repository it touches.
pub fn git_command(git_dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", git_dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_DIR", git_dir)
        .kill_on_drop(true);
    cmd
}

async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}
