//! The one interface where a received push meets the build pipeline:
//! "run this push, write output here, give me a verdict".

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::source::Source;
use deis_types::names::{AppName, CommitId};

/// A push that passed authentication, authorisation and ref checks.
#[derive(Debug)]
pub struct Push {
    /// Random id, used in logs, container labels and `REQUEST_ID`.
    pub id: String,
    pub app: AppName,
    pub user: String,
    pub commit: CommitId,
    /// Read access to the pushed tree (it still sits in git's quarantine).
    pub source: Source,
    /// When `git receive-pack` was started for this push: the receive stage is logged.
    pub receive_started: std::time::Instant,
    /// What must still hold right before the release (replicas: the app's lease).
    pub hold: Option<Arc<dyn Hold>>,
}

/// What lets a push or an import release its app. With replicas, the app's lease in the
/// shared store: confirmed right before the release call, so a builder that lost the app
/// never releases it.
#[async_trait::async_trait]
pub trait Hold: Send + Sync + std::fmt::Debug {
    /// `Err`, a sentence saying why, when this builder may no longer release the app.
    async fn confirm(&self) -> Result<(), String>;
}

/// Right before a release: `hold`, if any, must still hold.
pub async fn confirm(hold: Option<&dyn Hold>) -> Result<(), crate::BuildError> {
    match hold {
        Some(hold) => hold.confirm().await.map_err(crate::BuildError::HoldLost),
        None => Ok(()),
    }
}

/// Whether the push may land. The pipeline has already written the reason to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
}

#[async_trait::async_trait]
pub trait PushRunner: Send + Sync + std::fmt::Debug {
    /// Runs the whole pipeline for `push`. Must stop promptly and clean up when `cancel` fires
    /// (the client went away or the server is shutting down).
    async fn run(&self, push: Push, out: Output, cancel: CancellationToken) -> Verdict;

    /// A push to `app` with id `push_id` is being received: work that needs none of its
    /// bytes may start now (a build container, say). [`PushRunner::forget`] follows once
    /// the push is over, run or not.
    fn expect(&self, _app: &AppName, _push_id: &str) {}

    /// The push `push_id` is over and git is done with it (a deployed push's objects are
    /// in the repository now): what [`PushRunner::expect`] prepared and the run did not use
    /// is removed before this returns (so before the client learns the outcome); work a
    /// deployed push left for later (its source tarball) starts in the background.
    async fn forget(&self, _push_id: &str) {}
}

/// Where a push's progress goes: the client's terminal, as `remote:` lines.
/// Cheap to clone; writes never fail (if the client is gone the text is dropped and the push
/// is cancelled through its token instead).
#[derive(Debug, Clone)]
pub struct Output {
    tx: mpsc::Sender<Bytes>,
}

impl Output {
    /// Returns the writer and the receiving end the transport drains.
    pub fn channel(capacity: usize) -> (Output, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Output { tx }, rx)
    }

    pub async fn bytes(&self, data: Bytes) {
        // An error means the reader is gone; cancellation handles that case.
        let _ = self.tx.send(data).await;
    }

    pub async fn line(&self, text: impl AsRef<str>) {
        let mut data = String::with_capacity(text.as_ref().len() + 1);
        data.push_str(text.as_ref());
        data.push('\n');
        self.bytes(Bytes::from(data)).await;
    }

    /// A section header, Heroku style.
    pub async fn step(&self, text: impl AsRef<str>) {
        self.line(format!("-----> {}", text.as_ref())).await;
    }

    /// A body line under a header, indented 7 spaces.
    pub async fn detail(&self, text: impl AsRef<str>) {
        self.line(format!("       {}", text.as_ref())).await;
    }

    /// An error line, Heroku style.
    pub async fn error(&self, text: impl AsRef<str>) {
        self.line(format!(" !     {}", text.as_ref())).await;
    }
}
