//! Repositories that survive restarts and replicas: after a push moved `master`, what it
//! added is saved to the shared store as a git bundle; a builder whose copy of the app is
//! missing or older fetches the bundles it lacks before `git receive-pack` advertises
//! refs, so the client sends only new objects.
//!
//! ```text
//! builder/repos/<app>/index.json      {"bundles": [{"key", "tip", "bytes"}, ...]} in order
//! builder/repos/<app>/<random>.bundle  `git bundle` of master since the previous tip
//! ```
//!
//! Both run under the app's lock (and lease), so one builder at a time writes an app's
//! index; the index is still replaced only at the version read.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use deis_pipeline::source::git_command;
use deis_storage::{ObjectStore, StorageError, Version};
use deis_types::names::AppName;

/// Past this many bundles the next save writes the whole history again (and drops the
/// others), so a fresh builder never fetches more than this many.
const MAX_BUNDLES: usize = 32;

/// Where the bundle being written or read sits, inside the repository (one at a time: the
/// app is locked; a leftover is overwritten next time).
const BUNDLE_FILE: &str = "deis-builder.bundle";

/// The app's repository in the shared store.
#[derive(Debug, Clone)]
pub struct SavedRepos {
    store: Arc<dyn ObjectStore>,
    /// A restore of more bytes than this is skipped: the push then sends the whole history.
    max_restore_bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    bundles: Vec<Bundle>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Bundle {
    key: String,
    /// The commit `master` pointed to once this bundle is applied.
    tip: String,
    bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("git {action} failed: {message}")]
    Git {
        action: &'static str,
        message: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the saved index of {0} is not valid JSON")]
    Index(AppName),
    #[error("the saved bundle {0:?} is missing")]
    Missing(String),
}

/// What a restore did, for the client's terminal.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// Nothing saved, or this copy is current.
    UpToDate,
    Fetched {
        bundles: usize,
        bytes: u64,
    },
    /// More than the limit to fetch: the client sends the whole history instead.
    TooLarge {
        bytes: u64,
        limit: u64,
    },
}

fn index_key(app: &AppName) -> String {
    format!("builder/repos/{app}/index.json")
}

impl SavedRepos {
    pub fn new(store: Arc<dyn ObjectStore>, max_restore_bytes: u64) -> SavedRepos {
        SavedRepos {
            store,
            max_restore_bytes,
        }
    }

    async fn index(&self, app: &AppName) -> Result<(Index, Option<Version>), SavedError> {
        match self.store.read_record(&index_key(app)).await? {
            None => Ok((Index::default(), None)),
            Some((data, version)) => {
                let index =
                    serde_json::from_slice(&data).map_err(|_| SavedError::Index(app.clone()))?;
                Ok((index, Some(version)))
            }
        }
    }

    /// Brings the repository at `git_dir` up to the saved `master`, fetching (streamed to
    /// a file, then `git fetch`) only the bundles it lacks.
    pub async fn restore(&self, app: &AppName, git_dir: &Path) -> Result<Restored, SavedError> {
        let (index, _) = self.index(app).await?;
        // After the last bundle whose tip this copy has.
        let mut start = 0;
        for (position, bundle) in index.bundles.iter().enumerate().rev() {
            if has_commit(git_dir, &bundle.tip).await {
                start = position + 1;
                break;
            }
        }
        let missing = &index.bundles[start..];
        if missing.is_empty() {
            return Ok(Restored::UpToDate);
        }
        let bytes = missing.iter().map(|bundle| bundle.bytes).sum();
        if bytes > self.max_restore_bytes {
            return Ok(Restored::TooLarge {
                bytes,
                limit: self.max_restore_bytes,
            });
        }
        let file = git_dir.join(BUNDLE_FILE);
        for bundle in missing {
            let Some(mut reader) = self.store.get(&bundle.key).await? else {
                return Err(SavedError::Missing(bundle.key.clone()));
            };
            let mut out = tokio::fs::File::create(&file).await?;
            tokio::io::copy(&mut reader, &mut out).await?;
            drop(out);
            git(
                git_dir,
                "fetch",
                &[
                    "fetch",
                    "--quiet",
                    "--update-head-ok",
                    &file.display().to_string(),
                    "+refs/heads/master:refs/heads/master",
                ],
            )
            .await?;
        }
        let _ = tokio::fs::remove_file(&file).await;
        Ok(Restored::Fetched {
            bundles: missing.len(),
            bytes,
        })
    }

    /// Saves what the last push added to `master` (nothing when it did not move).
    pub async fn save(&self, app: &AppName, git_dir: &Path) -> Result<(), SavedError> {
        let Some(tip) = master(git_dir).await else {
            return Ok(());
        };
        let (mut index, version) = self.index(app).await?;
        let previous = index.bundles.last().map(|bundle| bundle.tip.clone());
        if previous.as_deref() == Some(tip.as_str()) {
            return Ok(());
        }
        let file = git_dir.join(BUNDLE_FILE);
        let file_arg = file.display().to_string();
        let mut args = vec![
            "bundle",
            "create",
            "--quiet",
            &file_arg,
            "refs/heads/master",
        ];
        // Only what this push added, when it continues the saved history; otherwise (a
        // forced push, a copy never restored, or too many bundles) the whole history.
        let since;
        let incremental = match &previous {
            Some(previous)
                if index.bundles.len() < MAX_BUNDLES && continues(git_dir, previous).await =>
            {
                since = format!("^{previous}");
                args.push(&since);
                true
            }
            _ => false,
        };
        git(git_dir, "bundle create", &args).await?;
        let bytes = tokio::fs::metadata(&file).await?.len();
        let key = format!("builder/repos/{app}/{:016x}.bundle", rand::random::<u64>());
        let mut reader = tokio::fs::File::open(&file).await?;
        let stored = self.store.put(&key, &mut reader).await;
        let _ = tokio::fs::remove_file(&file).await;
        stored?;
        // A whole history starts the index again.
        let replaced = if incremental {
            Vec::new()
        } else {
            std::mem::take(&mut index.bundles)
        };
        index.bundles.push(Bundle {
            key: key.clone(),
            tip,
            bytes,
        });
        let data = serde_json::to_vec(&index).unwrap_or_default();
        let written = match &version {
            Some(version) => {
                self.store
                    .replace_record(&index_key(app), &data, version)
                    .await
            }
            None => self.store.create_record(&index_key(app), &data).await,
        };
        if let Err(error) = written {
            // Nobody points to the new bundle.
            let _ = self.store.delete(&key).await;
            return Err(error.into());
        }
        for old in replaced {
            let _ = self.store.delete(&old.key).await;
        }
        tracing::info!(%app, bytes, incremental, "saved the push's git objects to storage");
        Ok(())
    }
}

async fn master(git_dir: &Path) -> Option<String> {
    let output = git_command(git_dir)
        .args(["rev-parse", "--verify", "--quiet", "refs/heads/master"])
        .output()
        .await
        .ok()?;
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !sha.is_empty()).then_some(sha)
}

/// Whether `master` descends from `previous` (which this copy has).
async fn continues(git_dir: &Path, previous: &str) -> bool {
    git(
        git_dir,
        "merge-base",
        &["merge-base", "--is-ancestor", previous, "refs/heads/master"],
    )
    .await
    .is_ok()
}

async fn has_commit(git_dir: &Path, sha: &str) -> bool {
    git_command(git_dir)
        .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .output()
        .await
        .is_ok_and(|output| output.status.success())
}

async fn git(git_dir: &Path, action: &'static str, args: &[&str]) -> Result<(), SavedError> {
    let output = git_command(git_dir).args(args).output().await?;
    if output.status.success() {
        return Ok(());
    }
    Err(SavedError::Git {
        action,
        message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn bare(root: &Path, name: &str) -> std::path::PathBuf {
        let dir = root.join(name);
        run(root, &["init", "-q", "--bare", "-b", "master", name]);
        dir
    }

    /// Commits a file in `work` and sets the bare repo's master to it (as a push does).
    fn commit_into(work: &Path, repo: &Path, content: &str) -> String {
        std::fs::write(work.join("file"), content).unwrap();
        run(work, &["add", "file"]);
        run(work, &["commit", "-q", "-m", content]);
        let sha = run(work, &["rev-parse", "HEAD"]);
        let target = repo.display().to_string();
        run(
            work,
            &["push", "-q", "-f", &target, "HEAD:refs/heads/master"],
        );
        sha
    }

    async fn tip(repo: &Path) -> Option<String> {
        master(repo).await
    }

    #[tokio::test]
    async fn pushes_are_saved_incrementally_and_restored_into_any_copy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = deis_storage::LocalStore::open(root.join("store"))
            .await
            .unwrap();
        let saved = SavedRepos::new(Arc::new(store), u64::MAX);
        let app = AppName::parse("web").unwrap();
        let work = root.join("work");
        std::fs::create_dir(&work).unwrap();
        run(&work, &["init", "-q", "-b", "master"]);
        let origin = bare(root, "origin.git");

        let first = commit_into(&work, &origin, "one");
        saved.save(&app, &origin).await.unwrap();
        let second = commit_into(&work, &origin, "two");
        saved.save(&app, &origin).await.unwrap();
        // Nothing moved: nothing saved.
        saved.save(&app, &origin).await.unwrap();
        assert_eq!(saved.index(&app).await.unwrap().0.bundles.len(), 2);

        let fresh = bare(root, "fresh.git");
        let restored = saved.restore(&app, &fresh).await.unwrap();
        assert!(
            matches!(restored, Restored::Fetched { bundles: 2, .. }),
            "{restored:?}"
        );
        assert_eq!(tip(&fresh).await.as_deref(), Some(second.as_str()));
        assert_eq!(
            saved.restore(&app, &fresh).await.unwrap(),
            Restored::UpToDate
        );

        // A copy at the first push fetches only the second bundle.
        let older = bare(root, "older.git");
        let target = older.display().to_string();
        run(
            &work,
            &["push", "-q", &target, &format!("{first}:refs/heads/master")],
        );
        let restored = saved.restore(&app, &older).await.unwrap();
        assert!(
            matches!(restored, Restored::Fetched { bundles: 1, .. }),
            "{restored:?}"
        );
        assert_eq!(tip(&older).await.as_deref(), Some(second.as_str()));

        // A forced push back to the first commit saves the whole history again.
        run(
            &work,
            &[
                "push",
                "-q",
                "-f",
                &origin.display().to_string(),
                &format!("{first}:refs/heads/master"),
            ],
        );
        saved.save(&app, &origin).await.unwrap();
        assert_eq!(saved.index(&app).await.unwrap().0.bundles.len(), 1);
        let third = bare(root, "third.git");
        saved.restore(&app, &third).await.unwrap();
        assert_eq!(tip(&third).await.as_deref(), Some(first.as_str()));

        // Over the limit: nothing is fetched, the client will send everything.
        let limited = SavedRepos::new(saved.store.clone(), 1);
        let empty = bare(root, "empty.git");
        let restored = limited.restore(&app, &empty).await.unwrap();
        assert!(
            matches!(restored, Restored::TooLarge { limit: 1, .. }),
            "{restored:?}"
        );
        assert_eq!(tip(&empty).await, None);
    }
}
