//! App leases in the shared object store: how several builders (replicas) sharing one
//! store agree that one push of an app runs at a time, with no service but the store.
//!
//! A lease is the record `builder/leases/<app>.json`, only ever written conditionally:
//! created when absent, replaced only at the version last read. Its holder renews it every
//! third of the TTL. A waiter that sees the same version for a whole TTL, by its own clock,
//! takes it over (no wall clocks are compared, so clock skew does not matter). A holder that
//! has not renewed for most of a TTL stops acting on it ([`Lease::lost`] fires), and
//! [`Lease::confirm`] renews right before a release, so two builders never both release an
//! app. See ARCHITECTURE.md, "Replicas".

mod held;
mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use deis_storage::{ObjectStore, StorageError, Version};
use deis_types::names::AppName;

pub use held::{Lease, LeaseLost};
use record::Record;

/// Where leases live in the store.
const PREFIX: &str = "builder/leases";
/// Conditional writes lost to a racing builder before [`Leases::try_acquire`] gives up
/// for this round (the record changed: it is looked at again at once).
const RACE_ATTEMPTS: usize = 3;

/// This builder's view of the app leases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    builder: String,
    ttl: Duration,
    /// The version of each app's lease as first seen by this builder, and when: a version
    /// unchanged for a TTL is stale.
    seen: Mutex<HashMap<AppName, (Version, Instant)>>,
    /// The tasks renewing (then releasing) held leases.
    holding: TaskTracker,
}

/// The outcome of one attempt to take an app.
#[derive(Debug)]
pub enum Attempt {
    Held(Lease),
    /// Another builder holds the app (its id).
    Busy {
        builder: String,
    },
}

/// What a waiter may do with a lease it found.
enum Found {
    Free,
    Stale { builder: String },
    Held { builder: String },
}

impl Leases {
    /// Leases of builder `builder` (unique per running builder) in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, builder: String, ttl: Duration) -> Leases {
        Leases {
            inner: Arc::new(Inner {
                store,
                builder,
                ttl,
                seen: Mutex::default(),
                holding: TaskTracker::new(),
            }),
        }
    }

    /// On shutdown, once no push runs: waits up to `limit` for the leases let go to be
    /// released, so other builders need not wait out the TTL.
    pub async fn settle(&self, limit: Duration) {
        self.inner.holding.close();
        if tokio::time::timeout(limit, self.inner.holding.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "leases still being released at exit: other builders wait out their TTL"
            );
        }
    }

    /// This builder's id, as other builders' waiting pushes name it.
    pub fn builder(&self) -> &str {
        &self.inner.builder
    }

    /// How often a waiting push looks at a lease again.
    pub fn poll_interval(&self) -> Duration {
        (self.inner.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Reads a lease record: the store answers the way pushes need it to.
    pub async fn check(&self) -> Result<(), StorageError> {
        let probe = format!("{PREFIX}/readiness-probe.json");
        self.inner.store.read_record(&probe).await.map(drop)
    }

    /// Takes `app` if no other builder holds it. Call only while holding the app's lock
    /// in this process: a lease of this builder's id is then left over (by a push of ours
    /// that just ended, or by this builder's previous run) and is taken at once.
    pub async fn try_acquire(&self, app: &AppName) -> Result<Attempt, StorageError> {
        let inner = &self.inner;
        let key = format!("{PREFIX}/{app}.json");
        let mut holder = "unknown".to_owned();
        for _ in 0..RACE_ATTEMPTS {
            let record = Record::new(&inner.builder);
            let data = record.to_bytes();
            let sent = Instant::now();
            let written = match inner.store.read_record(&key).await? {
                None => inner.store.create_record(&key, &data).await,
                Some((current, version)) => match self.judge(app, &current, &version) {
                    Found::Held { builder } => return Ok(Attempt::Busy { builder }),
                    Found::Free => inner.store.replace_record(&key, &data, &version).await,
                    Found::Stale { builder } => {
                        let taken = inner.store.replace_record(&key, &data, &version).await;
                        if taken.is_ok() {
                            deis_metrics::lease_taken_over();
                            tracing::warn!(%app, from = %builder, ttl = ?inner.ttl, "took over a lease not renewed within its TTL");
                        }
                        holder = builder;
                        taken
                    }
                },
            };
            match written {
                Ok(version) => {
                    inner.forget(app);
                    let lease = Lease::start(
                        &inner.holding,
                        inner.store.clone(),
                        app,
                        key,
                        inner.ttl,
                        (record, version, sent),
                    );
                    return Ok(Attempt::Held(lease));
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(Attempt::Busy { builder: holder })
    }

    fn judge(&self, app: &AppName, data: &[u8], version: &Version) -> Found {
        let inner = &self.inner;
        let record = Record::parse(data);
        let builder = record
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |record| record.builder.clone());
        if record.is_some_and(|record| record.released || record.builder == inner.builder) {
            return Found::Free;
        }
        let mut seen = inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(app) {
            Some((seen_version, since)) if seen_version == version => {
                if since.elapsed() >= inner.ttl {
                    return Found::Stale { builder };
                }
            }
            _ => {
                seen.insert(app.clone(), (version.clone(), Instant::now()));
            }
        }
        Found::Held { builder }
    }
}

impl Inner {
    fn forget(&self, app: &AppName) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(app);
    }
}

#[cfg(test)]
mod tests;
