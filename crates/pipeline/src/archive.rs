//! The source tarball (`home/<app>:git-<sha8>/tar`, Deis's layout), written once the push
//! is over. Nothing of a release reads it: Deis stored it first because its slugbuilder
//! built from it, while ours builds from git. So the developer does not wait for it: it
//! is uploaded after the client has its answer, from the repository the push landed in.
//!
//! Only deployed pushes are archived, under the keys their build chose (write-once, like
//! the slug). A failed archive is logged and counted; the release stands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::io::StreamReader;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::source::Source;
use crate::BuildError;
use deis_storage::ObjectStore;
use deis_types::names::CommitId;

/// Deployed pushes whose source waits for the push to end, and the uploads under way.
#[derive(Debug, Default)]
pub struct SourceArchives {
    waiting: Mutex<HashMap<String, Archive>>,
    uploads: TaskTracker,
}

#[derive(Debug)]
struct Archive {
    store: Arc<dyn ObjectStore>,
    /// The app's repository, read without the push's quarantine: by the time the upload
    /// starts, git has moved the pushed objects in.
    source: Source,
    commit: CommitId,
    key: String,
}

impl SourceArchives {
    /// Push `push_id` deployed `commit`: its tree goes to `key` once the push is over.
    pub(crate) fn after_push(
        &self,
        push_id: &str,
        store: Arc<dyn ObjectStore>,
        source: Source,
        commit: CommitId,
        key: String,
    ) {
        let archive = Archive {
            store,
            source,
            commit,
            key,
        };
        self.waiting().insert(push_id.to_owned(), archive);
    }

    /// Push `push_id` is over (git has updated the refs, or given up): its archive, if it
    /// deployed, starts in the background.
    pub(crate) fn start(&self, push_id: &str) {
        let Some(archive) = self.waiting().remove(push_id) else {
            return;
        };
        let span = tracing::info_span!("source_archive", push_id, key = %archive.key);
        self.uploads.spawn(archive.upload().instrument(span));
    }

    /// Waits up to `limit` for the uploads under way; false when some are still running.
    pub async fn wait(&self, limit: Duration) -> bool {
        self.uploads.close();
        let done = tokio::time::timeout(limit, self.uploads.wait())
            .await
            .is_ok();
        self.uploads.reopen();
        done
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Archive>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Archive {
    async fn upload(self) {
        let started = Instant::now();
        let stored = async {
            let mut body = StreamReader::new(self.source.archive(&self.commit)?);
            Ok::<u64, BuildError>(self.store.put(&self.key, &mut body).await?)
        }
        .await;
        match stored {
            Ok(bytes) => tracing::info!(
                bytes,
                elapsed_ms = crate::timing::millis(started.elapsed()),
                "source archived"
            ),
            Err(error) => {
                deis_metrics::source_archive_failed();
                tracing::error!(%error, "source tarball not stored; the release stands without it");
            }
        }
    }
}
