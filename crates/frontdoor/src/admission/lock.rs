//! Per-app push locks, held in memory by the push that owns them.
//!
//! Being in memory is the point: a lock can never outlive its push or the process, so
//! there is no stale lock to clean up after a crash and no timeout that cuts long pushes.
//! Replicas sharing a store also hold the app's lease there (`deis_lease`), which the
//! lock carries and lets go of with it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use deis_lease::Lease;
use deis_pipeline::push::{Hold, Output};
use deis_types::names::AppName;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

#[derive(Debug, Clone, Default)]
pub struct AppLocks {
    held: Arc<Mutex<HashSet<AppName>>>,
    /// Wakes pushes waiting for a lock whenever one is released.
    released: Arc<Notify>,
}

/// Releases its app when dropped, whatever path the push took.
#[derive(Debug)]
pub struct AppLock {
    app: AppName,
    held: Arc<Mutex<HashSet<AppName>>>,
    released: Arc<Notify>,
    /// The app's lease in the shared store, when replicas share one.
    lease: Option<Lease>,
}

impl AppLock {
    pub(super) fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// Until the returned guard is dropped: if the app's lease is lost, tells `out` and
    /// fires `cancel`, so the work stops (and cleans up) before it could release.
    pub fn stop_if_lost(
        self: &Arc<Self>,
        cancel: &CancellationToken,
        out: &Output,
    ) -> Option<AbortOnDropHandle<()>> {
        let lost = self.lease.as_ref()?.lost();
        let (lock, cancel, out) = (self.clone(), cancel.clone(), out.clone());
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            lost.cancelled().await;
            if let Err(reason) = lock.confirm().await {
                let error = deis_pipeline::BuildError::HoldLost(reason);
                out.error(format!("Build failed: {error}")).await;
            }
            cancel.cancel();
        })))
    }
}

#[async_trait::async_trait]
impl Hold for AppLock {
    async fn confirm(&self) -> Result<(), String> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        lease.confirm().await.map_err(|lost| lost.to_string())?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(app = %self.app, confirm_ms = ms, "confirmed the app's lease before the release");
        Ok(())
    }
}

impl AppLocks {
    /// `None` when another push to `app` is in progress.
    pub fn try_lock(&self, app: &AppName) -> Option<AppLock> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(app.clone()).then(|| AppLock {
            app: app.clone(),
            held: self.held.clone(),
            released: self.released.clone(),
            lease: None,
        })
    }

    /// Waits up to `wait` for the push holding `app` to finish; `None` if it is still running.
    pub async fn lock_within(&self, app: &AppName, wait: Duration) -> Option<AppLock> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lock) = self.try_lock(app) {
                return Some(lock);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.try_lock(app);
            }
        }
    }

    pub fn is_locked(&self, app: &AppName) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(app)
    }
}

impl Drop for AppLock {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.app);
        self.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_app_released_on_drop() {
        let locks = AppLocks::default();
        let a = AppName::parse("a").unwrap();
        let b = AppName::parse("b").unwrap();
        let guard = locks.try_lock(&a).unwrap();
        assert!(locks.try_lock(&a).is_none());
        assert!(locks.try_lock(&b).is_some());
        drop(guard);
        assert!(!locks.is_locked(&a));
        assert!(locks.try_lock(&a).is_some());
    }

    #[tokio::test]
    async fn a_waiting_push_gets_the_lock_when_it_is_released_or_gives_up() {
        let locks = AppLocks::default();
        let a = AppName::parse("a").unwrap();
        let guard = locks.try_lock(&a).unwrap();
        assert!(locks
            .lock_within(&a, Duration::from_millis(50))
            .await
            .is_none());
        let waiter = {
            let (locks, a) = (locks.clone(), a.clone());
            tokio::spawn(async move { locks.lock_within(&a, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(guard);
        let got = waiter.await.unwrap();
        assert!(got.is_some());
        assert!(locks.is_locked(&a));
    }
}
