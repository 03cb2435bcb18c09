//! The pre-receive hook relay.
//!
//! `git receive-pack` runs `deis-builder hook`, which sends the ref updates and the
//! quarantine environment to the server over a unix socket and copies back the build
//! output (git shows it as `remote:` lines) and the verdict (its exit status).
//!
//! Wire format, hook → server: one JSON line ([`HookRequest`]).
//! Server → hook: frames of `tag (1 byte) | length (u32, big endian) | payload`;
//! tag `o` is output, tag `v` ends the stream with one byte: 0 accept, 1 reject.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{GitServer, ENV_HOOK_SOCKET, ENV_PUSH_ID, RESTARTING};
use crate::admission::Refusal;
use deis_pipeline::push::{Output, Push, PushRunner, Verdict};
use deis_pipeline::source::Source;
use deis_types::names::select_commit;

const TAG_OUTPUT: u8 = b'o';
const TAG_VERDICT: u8 = b'v';
const MAX_REQUEST: u64 = 1 << 20;
const MAX_FRAME: usize = 1 << 20;

/// Object-directory variables git sets for hooks; nothing else crosses the socket.
const QUARANTINE_ENV: [&str; 3] = [
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
];

#[derive(Debug, Serialize, Deserialize)]
pub struct HookRequest {
    pub push_id: String,
    /// The lines git gave the hook on stdin: `<old> <new> <ref>`.
    pub updates: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Entry point of `deis-builder hook`. Returns the hook's exit status.
pub fn run_hook() -> i32 {
    match relay_to_server() {
        Ok(Verdict::Accept) => 0,
        Ok(Verdict::Reject) => 1,
        Err(message) => {
            eprintln!(" !     {message}");
            1
        }
    }
}

fn relay_to_server() -> Result<Verdict, String> {
    let socket = std::env::var_os(ENV_HOOK_SOCKET)
        .ok_or("this hook is run by deis-builder during a push, not by hand")?;
    let push_id =
        std::env::var(ENV_PUSH_ID).map_err(|_| "push id missing from the hook environment")?;
    let mut stdin = String::new();
    std::io::stdin()
        .take(MAX_REQUEST)
        .read_to_string(&mut stdin)
        .map_err(|e| format!("cannot read ref updates: {e}"))?;
    let request = HookRequest {
        push_id,
        updates: stdin.lines().map(str::to_owned).collect(),
        env: QUARANTINE_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect(),
    };
    let mut stream = std::os::unix::net::UnixStream::connect(Path::new(&socket))
        .map_err(|e| format!("cannot reach the builder: {e}"))?;
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("cannot reach the builder: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).is_err() {
            return Err("lost the connection to the builder; the push was not deployed".into());
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME {
            return Err("malformed reply from the builder".into());
        }
        let mut payload = vec![0u8; len];
        stream
            .read_exact(&mut payload)
            .map_err(|_| "lost the connection to the builder; the push was not deployed")?;
        match (header[0], payload.as_slice()) {
            (TAG_OUTPUT, text) => {
                // Flushed per frame so the developer sees each line as it happens.
                let _ = stdout.write_all(text).and_then(|()| stdout.flush());
            }
            (TAG_VERDICT, [0]) => return Ok(Verdict::Accept),
            (TAG_VERDICT, _) => return Ok(Verdict::Reject),
            _ => return Err("malformed reply from the builder".into()),
        }
    }
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(tag);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// Accepts hook connections until `shutdown`. Builds are admitted by the git server's
/// [`crate::admission::Admission`].
pub async fn serve(
    listener: UnixListener,
    git: GitServer,
    runner: Arc<dyn PushRunner>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "hook socket accept failed");
                    continue;
                }
            },
        };
        let git = git.clone();
        let runner = runner.clone();
        tracker.spawn(async move {
            if let Err(error) = handle(stream, &git, runner.as_ref()).await {
                tracing::warn!(%error, "hook connection failed");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    git: &GitServer,
    runner: &dyn PushRunner,
) -> std::io::Result<()> {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half).take(MAX_REQUEST);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let request: HookRequest = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "malformed hook request");
            return write_half.write_all(&frame(TAG_VERDICT, &[1])).await;
        }
    };
    let Some(pending) = git.pending().take(&request.push_id) else {
        let msg = b" !     unknown push; the hook is only valid during a push\n";
        write_half.write_all(&frame(TAG_OUTPUT, msg)).await?;
        return write_half.write_all(&frame(TAG_VERDICT, &[1])).await;
    };
    let cancel = pending.cancel.child_token();
    let app_lock = pending.lock.clone();
    let (out, mut rx) = Output::channel(64);

    // If the hook process dies (its client went away), stop the build.
    let mut reader = reader.into_inner();
    let hook_gone = cancel.clone();
    let watcher = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
        hook_gone.cancel();
    });
    let write_cancel = cancel.clone();
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            for chunk in data.chunks(MAX_FRAME) {
                if write_half
                    .write_all(&frame(TAG_OUTPUT, chunk))
                    .await
                    .is_err()
                {
                    write_cancel.cancel();
                    return None;
                }
            }
        }
        Some(write_half)
    });

    // A lease lost during the push stops it before it could release.
    let lease_watch = app_lock.stop_if_lost(&cancel, &out);
    let verdict = match select_commit(&request.updates) {
        Ok(commit) => {
            let object_env = quarantine_env(&request.env, &pending.git_dir);
            let push = Push {
                id: request.push_id,
                app: pending.app,
                user: pending.user,
                commit,
                source: Source::new(pending.git_dir, object_env),
                receive_started: pending.receive_started,
                hold: Some(app_lock.clone()),
            };
            run_in_turn(push, out, cancel, git, runner).await
        }
        Err(message) => {
            tracing::info!(push_id = %request.push_id, %message, "push refused");
            deis_metrics::push_finished(deis_metrics::PushResult::Rejected);
            out.error(message).await;
            drop(out);
            Verdict::Reject
        }
    };
    watcher.abort();
    drop(lease_watch);
    // The build, clean-up included, is over: the app may take the next push.
    drop(app_lock);
    if let Ok(Some(mut write_half)) = writer.await {
        let code = if verdict == Verdict::Accept { 0 } else { 1 };
        write_half.write_all(&frame(TAG_VERDICT, &[code])).await?;
    }
    Ok(())
}

/// Waits for a build slot (telling the client its place in line), then runs the push. On
/// shutdown a push that has not started is refused, and one still running when the grace
/// period ends is cancelled; either way the client is told the builder is restarting.
async fn run_in_turn(
    push: Push,
    out: Output,
    cancel: CancellationToken,
    git: &GitServer,
    runner: &dyn PushRunner,
) -> Verdict {
    let admission = git.admission();
    let slot = match admission.slot(&out, &cancel).await {
        Ok(slot) => slot,
        Err(refusal) => {
            deis_metrics::push_finished(deis_metrics::PushResult::Cancelled);
            // A client that went away while waiting leaves the line quietly.
            if refusal == Refusal::Draining {
                tracing::info!("push refused: the builder is shutting down");
                out.error(RESTARTING).await;
            }
            return Verdict::Reject;
        }
    };
    let notice = out.clone();
    let verdict = admission
        .run(&cancel, runner.run(push, out, cancel.clone()))
        .await;
    drop(slot);
    if admission.is_aborted() && verdict == Verdict::Reject {
        notice.error(RESTARTING).await;
    }
    verdict
}

/// Keeps only the quarantine variables, and only when they point inside the app's repository.
fn quarantine_env(env: &[(String, String)], git_dir: &Path) -> Vec<(String, String)> {
    env.iter()
        .filter(|(k, v)| {
            QUARANTINE_ENV.contains(&k.as_str())
                && v.split(':').all(|p| Path::new(p).starts_with(git_dir))
                && !v.contains("..")
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_env_stays_inside_the_repo() {
        let repo = Path::new("/data/repos/app.git");
        let env = vec![
            (
                "GIT_OBJECT_DIRECTORY".to_owned(),
                "/data/repos/app.git/objects/incoming-x".to_owned(),
            ),
            (
                "GIT_ALTERNATE_OBJECT_DIRECTORIES".to_owned(),
                "/etc".to_owned(),
            ),
            (
                "LD_PRELOAD".to_owned(),
                "/data/repos/app.git/evil.so".to_owned(),
            ),
        ];
        let kept = quarantine_env(&env, repo);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, "GIT_OBJECT_DIRECTORY");
        assert_eq!(frame(TAG_VERDICT, &[0]), vec![b'v', 0, 0, 0, 1, 0]);
    }
}
