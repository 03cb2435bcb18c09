//! A held lease: renewed in the background until dropped, then released.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use deis_storage::{ObjectStore, StorageError, Version};
use deis_types::names::AppName;

use crate::record::Record;

/// This builder holds an app in the shared store. While it lives a task renews it every
/// third of the TTL; dropping it releases the app (in the background: a release that does
/// not land only means the next holder waits out the TTL).
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
}

/// Why this builder may no longer release the app.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this builder lost its lease on {app}: {reason}")]
pub struct LeaseLost {
    pub app: AppName,
    pub reason: String,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn ObjectStore>,
    app: AppName,
    key: String,
    ttl: Duration,
    state: tokio::sync::Mutex<State>,
    /// Fires once the lease is lost.
    lost: CancellationToken,
    /// Fires when the lease is dropped: renewals stop and the app is released.
    stop: CancellationToken,
}

#[derive(Debug)]
struct State {
    record: Record,
    version: Version,
    /// When the last renewal that succeeded was sent. Nobody can take the lease over before
    /// a TTL has passed since (they must see this version unchanged for a TTL).
    confirmed: Instant,
    lost: Option<String>,
}

impl Lease {
    pub(crate) fn start(
        tasks: &tokio_util::task::TaskTracker,
        store: Arc<dyn ObjectStore>,
        app: &AppName,
        key: String,
        ttl: Duration,
        (record, version, sent): (Record, Version, Instant),
    ) -> Lease {
        let shared = Arc::new(Shared {
            store,
            app: app.clone(),
            key,
            ttl,
            state: tokio::sync::Mutex::new(State {
                record,
                version,
                confirmed: sent,
                lost: None,
            }),
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        tasks.spawn(keep(shared.clone(), deis_metrics::lease_held()));
        Lease { shared }
    }

    /// Fires when the lease is lost: the work it guards must stop.
    pub fn lost(&self) -> CancellationToken {
        self.shared.lost.clone()
    }

    /// Renews the lease now: `Ok` means nobody can take it over for most of a TTL. Called
    /// right before a release, so a builder that cannot reach the store never releases.
    pub async fn confirm(&self) -> Result<(), LeaseLost> {
        match self.shared.renew().await {
            Renewal::Renewed => Ok(()),
            Renewal::Failed(reason) | Renewal::Lost(reason) => Err(LeaseLost {
                app: self.shared.app.clone(),
                reason,
            }),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

enum Renewal {
    Renewed,
    /// Not renewed, but still within the TTL of the last renewal: try again.
    Failed(String),
    Lost(String),
}

/// Renews until dropped or lost, then releases (when not lost).
async fn keep(shared: Arc<Shared>, _held: deis_metrics::InFlight) {
    let every = shared.ttl / 3;
    let mut wait = every;
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = match shared.renew().await {
            Renewal::Renewed => every,
            Renewal::Failed(reason) => {
                tracing::warn!(app = %shared.app, %reason, "cannot renew the app's lease; trying again");
                (shared.ttl / 10).max(Duration::from_millis(100))
            }
            Renewal::Lost(_) => return,
        };
    }
    shared.release().await;
}

impl Shared {
    /// How long after its last confirmed renewal the holder still acts on a lease. Less
    /// than the TTL: clocks of two machines may run at slightly different rates.
    fn validity(&self) -> Duration {
        self.ttl.mul_f64(0.9)
    }

    /// One store call, bounded so a store that answers slowly cannot outlast the lease.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.ttl / 3, call).await {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(_) => Err(self.too_slow()),
        }
    }

    fn too_slow(&self) -> String {
        format!("the store did not answer within {:?}", self.ttl / 3)
    }

    async fn renew(&self) -> Renewal {
        let mut state = self.state.lock().await;
        if let Some(reason) = &state.lost {
            return Renewal::Lost(reason.clone());
        }
        let sent = Instant::now();
        let next = state.record.renewed();
        let data = next.to_bytes();
        let written = self.store.replace_record(&self.key, &data, &state.version);
        match tokio::time::timeout(self.ttl / 3, written).await {
            Ok(Ok(version)) => {
                state.record = next;
                state.version = version;
                state.confirmed = sent;
                Renewal::Renewed
            }
            Ok(Err(StorageError::Conflict { .. })) => self.after_conflict(&mut state).await,
            Ok(Err(error)) => self.failed(&mut state, error.to_string()),
            Err(_) => {
                let reason = self.too_slow();
                self.failed(&mut state, reason)
            }
        }
    }

    /// The record changed under us: either an earlier renewal of ours landed after all
    /// (its answer was lost or late), or another builder took the app over.
    async fn after_conflict(&self, state: &mut State) -> Renewal {
        let current = match self.call(self.store.read_record(&self.key)).await {
            Ok(current) => current,
            Err(reason) => return self.failed(state, reason),
        };
        match current.and_then(|(data, version)| Some((Record::parse(&data)?, version))) {
            Some((record, version)) if record.token == state.record.token && !record.released => {
                state.record = record;
                state.version = version;
                // Not confirmed: we do not know when that write landed.
                Renewal::Failed("an earlier renewal landed late".to_owned())
            }
            Some((record, _)) => {
                self.lose(state, format!("builder {} took it over", record.builder))
            }
            None => self.lose(state, "its record was removed".to_owned()),
        }
    }

    fn failed(&self, state: &mut State, reason: String) -> Renewal {
        if state.confirmed.elapsed() < self.validity() {
            return Renewal::Failed(reason);
        }
        self.lose(
            state,
            format!(
                "not renewed for {:?} (the TTL is {:?}); last error: {reason}",
                state.confirmed.elapsed(),
                self.ttl
            ),
        )
    }

    fn lose(&self, state: &mut State, reason: String) -> Renewal {
        state.lost = Some(reason.clone());
        // A lease already let go is not lost: its work is over.
        if !self.stop.is_cancelled() {
            deis_metrics::lease_lost();
            tracing::warn!(app = %self.app, %reason, "lost the app's lease");
            self.lost.cancel();
        }
        Renewal::Lost(reason)
    }

    async fn release(&self) {
        let state = self.state.lock().await;
        if state.lost.is_some() {
            return;
        }
        let released = state.record.released().to_bytes();
        match self
            .call(
                self.store
                    .replace_record(&self.key, &released, &state.version),
            )
            .await
        {
            Ok(_) => tracing::debug!(app = %self.app, "released the app's lease"),
            Err(reason) => {
                tracing::info!(app = %self.app, %reason, "cannot release the app's lease; it expires after its TTL")
            }
        }
    }
}
