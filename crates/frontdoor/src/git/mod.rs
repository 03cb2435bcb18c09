//! Git side of a push: one bare repository per app, a per-app lock, `git receive-pack` /
//! `git upload-pack` spawned for the SSH channel, and read access to pushed trees.
//!
//! The build does not run in git's hook process: the pre-receive hook is a thin relay
//! (`deis-builder hook`, see [`hook`]) that hands the push to this server over a unix socket.

pub mod hook;
mod saved;

pub use saved::SavedRepos;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, AppLock, Refusal, Shutdown};
use deis_pipeline::push::PushRunner;
use deis_pipeline::source::git_command;
use deis_types::command::{GitCommand, GitService};
use deis_types::names::AppName;

/// Environment variables that carry a push from `git receive-pack` to its hook.
pub const ENV_HOOK_SOCKET: &str = "DEIS_BUILDER_HOOK_SOCKET";
pub const ENV_PUSH_ID: &str = "DEIS_BUILDER_PUSH_ID";
pub const ENV_EXE: &str = "DEIS_BUILDER_EXE";

const PRE_RECEIVE_HOOK: &str = "#!/bin/sh\n# Installed by deis-builder: relays the push to the builder.\nexec \"$DEIS_BUILDER_EXE\" hook\n";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot prepare the repository for {app}: {message}")]
    Repo { app: AppName, message: String },
}

/// Where the client's terminal is. Implemented by the SSH channel.
#[async_trait::async_trait]
pub trait ClientSink: Send + Sync {
    /// `false` when the client is gone.
    async fn stdout(&self, data: Bytes) -> bool;
    async fn stderr(&self, data: Bytes) -> bool;
}

/// A push waiting for its pre-receive hook to call back.
#[derive(Debug, Clone)]
pub(crate) struct PendingPush {
    pub app: AppName,
    pub user: String,
    pub git_dir: PathBuf,
    pub cancel: CancellationToken,
    /// Shared with the SSH side: the app stays locked until both the git process and the
    /// build (including its clean-up after a cancellation) are done.
    pub lock: Arc<AppLock>,
    /// When receiving started, for the push's stage timing.
    pub receive_started: std::time::Instant,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PendingPushes {
    by_id: Arc<Mutex<HashMap<String, PendingPush>>>,
}

impl PendingPushes {
    fn insert(&self, id: String, push: PendingPush) {
        self.lock().insert(id, push);
    }

    /// Each id is good for one hook call.
    pub fn take(&self, id: &str) -> Option<PendingPush> {
        self.lock().remove(id)
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingPush>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one push may do (from `--max-push-size` and `--lock-wait`).
#[derive(Debug, Clone)]
pub struct PushLimits {
    /// Bytes the client may send to `git receive-pack`.
    pub max_push_bytes: u64,
    /// How long a push waits for the app's running push; zero refuses at once.
    pub lock_wait: Duration,
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            max_push_bytes: u64::MAX,
            lock_wait: Duration::ZERO,
        }
    }
}

/// Said to a push the builder will not run because it is shutting down.
pub const RESTARTING: &str =
    "the builder is restarting: this push was not deployed; push again in a minute";

#[derive(Debug, Clone)]
pub struct GitServer {
    repos_dir: PathBuf,
    hook_socket: PathBuf,
    exe: PathBuf,
    pending: PendingPushes,
    limits: PushLimits,
    admission: Admission,
    /// Told when a push starts and ends, so it can prepare while the pack arrives.
    runner: Option<Arc<dyn PushRunner>>,
    /// Repositories saved to the shared store (replicas on S3).
    saved: Option<SavedRepos>,
    /// Saves running after their pushes were answered; a graceful stop waits for them.
    saving: TaskTracker,
}

impl GitServer {
    pub fn new(
        repos_dir: PathBuf,
        hook_socket: PathBuf,
        exe: PathBuf,
        admission: Admission,
    ) -> GitServer {
        GitServer {
            repos_dir,
            hook_socket,
            exe,
            pending: PendingPushes::default(),
            limits: PushLimits::default(),
            admission,
            runner: None,
            saved: None,
            saving: TaskTracker::new(),
        }
    }

    /// Waits up to `limit` for the repository saves under way; false when some still run.
    pub async fn wait_for_saves(&self, limit: Duration) -> bool {
        self.saving.close();
        let done = tokio::time::timeout(limit, self.saving.wait())
            .await
            .is_ok();
        self.saving.reopen();
        done
    }

    /// Replicas: repositories are saved to the shared store after each push that moved
    /// `master`, and brought up to date from it before each push.
    pub fn with_saved_repos(mut self, saved: SavedRepos) -> GitServer {
        self.saved = Some(saved);
        self
    }

    pub fn with_limits(mut self, limits: PushLimits) -> GitServer {
        self.limits = limits;
        self
    }

    /// The pipeline, told of each push as it starts and ends ([`PushRunner::expect`]).
    pub fn with_runner(mut self, runner: Arc<dyn PushRunner>) -> GitServer {
        self.runner = Some(runner);
        self
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    fn shutdown(&self) -> &Shutdown {
        self.admission.shutdown()
    }

    pub(crate) fn pending(&self) -> &PendingPushes {
        &self.pending
    }

    pub fn repo_path(&self, app: &AppName) -> PathBuf {
        self.repos_dir.join(format!("{app}.git"))
    }

    /// Serves one exec request to completion and returns the exit status for the client.
    pub async fn serve(
        &self,
        command: &GitCommand,
        user: &str,
        git_protocol: Option<&str>,
        stdin: mpsc::Receiver<Bytes>,
        client: &dyn ClientSink,
        cancel: CancellationToken,
    ) -> u32 {
        let app = &command.app;
        match command.service {
            GitService::UploadPack => {
                self.upload_pack(app, git_protocol, stdin, client, cancel)
                    .await
            }
            GitService::ReceivePack => self.receive_pack(app, user, stdin, client, cancel).await,
        }
    }

    /// A clone or fetch: `git upload-pack`, stopped when the client goes or at the end of
    /// the grace period.
    async fn upload_pack(
        &self,
        app: &AppName,
        git_protocol: Option<&str>,
        stdin: mpsc::Receiver<Bytes>,
        client: &dyn ClientSink,
        cancel: CancellationToken,
    ) -> u32 {
        let git_dir = self.repo_path(app);
        if !git_dir.join("HEAD").is_file() {
            let msg = format!("fatal: {app} has no git repository yet: push to it first\n");
            client.stderr(Bytes::from(msg)).await;
            return 128;
        }
        let mut cmd = git_command(&git_dir);
        cmd.args(["upload-pack", "--strict"]).arg(&git_dir);
        if let Some(protocol) = git_protocol {
            cmd.env("GIT_PROTOCOL", protocol);
        }
        let stop = async {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = self.shutdown().abort.cancelled() => {}
            }
        };
        run_piped(cmd, stdin, client, stop, u64::MAX).await.status
    }

    /// A push: the app's lock, then `git receive-pack`, whose pre-receive hook hands the
    /// push to the pipeline (see [`hook`]). The lock is held until both are done.
    async fn receive_pack(
        &self,
        app: &AppName,
        user: &str,
        stdin: mpsc::Receiver<Bytes>,
        client: &dyn ClientSink,
        cancel: CancellationToken,
    ) -> u32 {
        let receive_started = std::time::Instant::now();
        let Some(lock) = self.lock_app(app, client, &cancel).await else {
            deis_metrics::push_finished(deis_metrics::PushResult::Rejected);
            return 1;
        };
        let git_dir = match self.ensure_repo(app).await {
            Ok(dir) => dir,
            Err(error) => {
                tracing::error!(%error, "repository setup failed");
                client.stdout(pkt_line_error(&error.to_string())).await;
                return 1;
            }
        };
        if let Some(saved) = &self.saved {
            restore(saved, app, &git_dir, client).await;
        }
        let lock = Arc::new(lock);
        let push_id = new_push_id();
        // The caller's span (SSH: `git`) declares the field; logs tie up by it.
        tracing::Span::current().record("push_id", push_id.as_str());
        // A push that will wait in line gets nothing early: only pushes that hold a slot
        // have running build containers.
        if let Some(runner) = self
            .runner
            .as_ref()
            .filter(|_| self.admission.queue().has_free_slot())
        {
            runner.expect(app, &push_id);
        }
        self.pending.insert(
            push_id.clone(),
            PendingPush {
                app: app.clone(),
                user: user.to_owned(),
                git_dir: git_dir.clone(),
                cancel: cancel.clone(),
                lock: lock.clone(),
                receive_started,
            },
        );
        let mut cmd = git_command(&git_dir);
        cmd.arg("receive-pack")
            .arg(&git_dir)
            .env(ENV_HOOK_SOCKET, &self.hook_socket)
            .env(ENV_PUSH_ID, &push_id)
            .env(ENV_EXE, &self.exe);
        // Only the client going away stops git here: on shutdown the hook rejects the
        // push with a message, which needs git alive to reach the client.
        let piped = run_piped(
            cmd,
            stdin,
            client,
            cancel.cancelled(),
            self.limits.max_push_bytes,
        )
        .await;
        self.pending.remove(&push_id);
        if let Some(runner) = &self.runner {
            runner.forget(&push_id).await;
        }
        if piped.status != 0 {
            // The app is still locked: a quarantine left now is this push's.
            remove_quarantine_of_unfinished_push(&git_dir).await;
        } else if let Some(saved) = self.saved.clone() {
            // After the client has its answer, still under the app's lock.
            let app = app.clone();
            self.saving.spawn(async move {
                let _locked = lock;
                if let Err(error) = saved.save(&app, &git_dir).await {
                    tracing::warn!(%app, %error, "cannot save the push's git objects to storage");
                }
            });
            return self.finish_push(piped, client).await;
        }
        drop(lock);
        self.finish_push(piped, client).await
    }

    async fn finish_push(&self, piped: Piped, client: &dyn ClientSink) -> u32 {
        if piped.input_exceeded {
            self.refuse_oversized_push(client).await;
            return 1;
        }
        piped.status
    }

    async fn refuse_oversized_push(&self, client: &dyn ClientSink) {
        deis_metrics::push_finished(deis_metrics::PushResult::Rejected);
        let limit = self.limits.max_push_bytes;
        tracing::info!(limit, "push over the size limit refused");
        let msg = format!(
            "deis-builder: this push is larger than the limit of {} (--max-push-size); it was refused and nothing was stored\n",
            deis_types::units::format_size(limit)
        );
        client.stderr(Bytes::from(msg)).await;
    }

    /// The app's push lock, waiting up to the lock wait for a running push to finish.
    /// `None` (the client has been told why) when it is still running or the client left.
    async fn lock_app(
        &self,
        app: &AppName,
        client: &dyn ClientSink,
        cancel: &CancellationToken,
    ) -> Option<AppLock> {
        let wait = self.limits.lock_wait;
        let busy = |waited: &str| {
            format!("another push to {app} is in progress{waited}; try again when it has finished")
        };
        let refusal = match self.admission.try_lock(app).await {
            Ok(lock) => return Some(lock),
            Err(Refusal::Busy { builder }) if !wait.is_zero() => {
                let shown = deis_types::units::format_duration(wait);
                let on = builder
                    .map(|id| format!(" (on builder {id})"))
                    .unwrap_or_default();
                let msg = format!(
                    "-----> Another push to {app} is in progress{on}; waiting up to {shown} for it to finish\n"
                );
                client.stderr(Bytes::from(msg)).await;
                match self.admission.lock(app, wait, cancel).await {
                    Ok(lock) => return Some(lock),
                    Err(Refusal::Busy { .. }) => {
                        let waited = format!(" (waited {shown})");
                        client.stdout(pkt_line_error(&busy(&waited))).await;
                        return None;
                    }
                    Err(refusal) => refusal,
                }
            }
            Err(refusal) => refusal,
        };
        let message = match refusal {
            Refusal::Busy { .. } => busy(""),
            Refusal::Unavailable(error) => {
                format!("cannot take {app}'s lease in the shared store, so nothing was started: {error}")
            }
            Refusal::Draining => RESTARTING.to_owned(),
            Refusal::Gone => return None,
        };
        client.stdout(pkt_line_error(&message)).await;
        None
    }

    /// Creates the bare repository on first push and keeps its hook current.
    async fn ensure_repo(&self, app: &AppName) -> Result<PathBuf, GitError> {
        let git_dir = self.repo_path(app);
        let repo_err = |message: String| GitError::Repo {
            app: app.clone(),
            message,
        };
        if !git_dir.join("HEAD").is_file() {
            tokio::fs::create_dir_all(&self.repos_dir)
                .await
                .map_err(|e| repo_err(e.to_string()))?;
            let output = Command::new("git")
                .args(["init", "--quiet", "--bare", "--initial-branch=master"])
                .arg(&git_dir)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .output()
                .await
                .map_err(|e| repo_err(e.to_string()))?;
            if !output.status.success() {
                return Err(repo_err(
                    String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                ));
            }
            tracing::info!(%app, "created repository");
        }
        // Check every object a client sends: a corrupt or malicious pack is refused by git.
        // Set on every push, so a repository never stays without it.
        let fsck = git_command(&git_dir)
            .args(["config", "receive.fsckObjects", "true"])
            .output()
            .await
            .map_err(|e| repo_err(e.to_string()))?;
        if !fsck.status.success() {
            return Err(repo_err("cannot configure receive.fsckObjects".into()));
        }
        let hook = git_dir.join("hooks").join("pre-receive");
        let current = tokio::fs::read_to_string(&hook).await.unwrap_or_default();
        if current != PRE_RECEIVE_HOOK {
            write_executable(&hook, PRE_RECEIVE_HOOK)
                .await
                .map_err(|e| repo_err(format!("cannot install hook: {e}")))?;
        }
        Ok(git_dir)
    }
}

/// Brings the app's repository up to the saved one, telling the client what happened; a
/// failure only costs the client a larger push.
async fn restore(saved: &SavedRepos, app: &AppName, git_dir: &Path, client: &dyn ClientSink) {
    use deis_types::units::format_size;
    let message = match saved.restore(app, git_dir).await {
        Ok(saved::Restored::UpToDate) => return,
        Ok(saved::Restored::Fetched { bundles, bytes }) => {
            tracing::info!(%app, bundles, bytes, "restored the repository from storage");
            format!(
                "-----> Restored {app}'s repository from storage ({bundles} bundle{}, {})",
                if bundles == 1 { "" } else { "s" },
                format_size(bytes)
            )
        }
        Ok(saved::Restored::TooLarge { bytes, limit }) => format!(
            "-----> {app}'s saved repository ({}) is over the restore limit of {} (--repo-restore-max): this push sends the whole history",
            format_size(bytes),
            format_size(limit)
        ),
        Err(error) => {
            tracing::warn!(%app, %error, "cannot restore the repository from storage");
            format!("-----> Cannot restore {app}'s repository from storage ({error}): this push sends what this builder lacks")
        }
    };
    client.stderr(Bytes::from(message + "\n")).await;
}

async fn write_executable(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, content).await?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).await?;
    tokio::fs::rename(&tmp, path).await
}

fn new_push_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Git prints `fatal: remote error: <msg>` for this instead of a protocol error.
fn pkt_line_error(message: &str) -> Bytes {
    let payload = format!("ERR {message}\n");
    Bytes::from(format!("{:04x}{payload}", payload.len() + 4))
}

/// How a git server process ended.
struct Piped {
    status: u32,
    /// The client sent more than the input limit; git got end-of-file at the limit instead.
    input_exceeded: bool,
}

/// Runs a git server process with the client's bytes on stdin and its output on the channel,
/// until it ends or `stop` completes. At most `max_input` bytes reach git: past that git sees
/// end-of-file (so it fails cleanly and removes what it received) and the rest is discarded.
async fn run_piped(
    mut cmd: Command,
    mut stdin_rx: mpsc::Receiver<Bytes>,
    client: &dyn ClientSink,
    stop: impl std::future::Future<Output = ()>,
    max_input: u64,
) -> Piped {
    let failed = |status| Piped {
        status,
        input_exceeded: false,
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(%error, "cannot start git");
            client
                .stderr(Bytes::from_static(b"fatal: the builder cannot run git\n"))
                .await;
            return failed(1);
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return failed(1);
    };
    let input_exceeded = std::sync::atomic::AtomicBool::new(false);
    let exceeded = &input_exceeded;
    let feed_stdin = async move {
        let mut stdin = Some(stdin);
        let mut received: u64 = 0;
        while let Some(data) = stdin_rx.recv().await {
            received = received.saturating_add(data.len() as u64);
            if received > max_input {
                // Dropping stdin closes it: git sees a truncated pack and stores nothing.
                // The rest is read and dropped, so the SSH session is never blocked on it.
                exceeded.store(true, std::sync::atomic::Ordering::Relaxed);
                stdin = None;
                continue;
            }
            if let Some(pipe) = stdin.as_mut() {
                if pipe.write_all(&data).await.is_err() {
                    stdin = None;
                }
            }
        }
        // Dropping stdin closes it: git sees the client's EOF.
        drop(stdin);
        // Git decides when the exchange is over, not the client's input.
        std::future::pending::<()>().await;
    };
    let relay_out = relay(stdout, |data| client.stdout(data));
    let relay_err = relay(stderr, |data| client.stderr(data));
    let finished = async {
        tokio::join!(relay_out, relay_err);
        child.wait().await
    };
    let outcome = tokio::select! {
        status = finished => match status {
            Ok(status) => exit_code(status),
            Err(error) => {
                tracing::error!(%error, "waiting for git failed");
                1
            }
        },
        () = feed_stdin => 1,
        () = stop => {
            kill(&mut child).await;
            1
        }
    };
    Piped {
        status: outcome,
        input_exceeded: input_exceeded.load(std::sync::atomic::Ordering::Relaxed),
    }
}

async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u32::try_from(code).unwrap_or(1),
        (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
        (None, None) => 1,
    }
}

/// `receive-pack` is SIGKILLed when the client goes and then cannot remove its quarantine.
/// Call only while holding the app's lock.
async fn remove_quarantine_of_unfinished_push(git_dir: &Path) {
    let repo = git_dir.to_owned();
    if let Ok(removed @ 1..) =
        tokio::task::spawn_blocking(move || crate::sweep::remove_quarantines(&repo)).await
    {
        tracing::info!(removed, "removed the quarantine of an unfinished push");
    }
}

async fn relay<F, Fut>(mut from: impl AsyncRead + Unpin, mut send: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !send(Bytes::copy_from_slice(&buf[..n])).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkt_line_error_has_the_right_length() {
        let line = pkt_line_error("busy");
        assert_eq!(&line[..], b"000dERR busy\n");
    }
}
