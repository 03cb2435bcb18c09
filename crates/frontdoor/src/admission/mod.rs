//! Admission: the one path by which work gets to run. A push (through the pre-receive
//! hook) and an image import (through HTTP) both take the app's lock, wait for a build
//! slot, are refused while the builder drains, and are cancelled (and wait for their
//! clean-up) when the shutdown grace period is over.
//!
//! The lock and the slot are guards: dropping them is the only way to release them, so no
//! path through a push can leave either behind. With replicas ([`Admission::with_leases`])
//! the lock also holds the app's lease in the shared store.

mod lock;
mod queue;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use deis_lease::{Attempt, Leases};
use deis_pipeline::push::Output;
use deis_types::names::AppName;

pub use lock::{AppLock, AppLocks};
pub use queue::{BuildQueue, BuildSlot};

/// Why work was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The builder is shutting down: try again on another (or the restarted) builder.
    Draining,
    /// Another push to the app is still running after the lock wait; with replicas, the id
    /// of the builder running it.
    Busy { builder: Option<String> },
    /// The lease store did not answer (the message says why): nothing was started.
    Unavailable(String),
    /// The caller went away while waiting.
    Gone,
}

/// The server's shutdown stages.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// SIGTERM: nothing new is admitted; waiting work gives up.
    pub draining: CancellationToken,
    /// The grace period is over: running work is cancelled and cleans up.
    pub abort: CancellationToken,
}

/// Locks, build slots and the shutdown stages, shared by every front door. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    locks: AppLocks,
    queue: BuildQueue,
    shutdown: Shutdown,
    leases: Option<Leases>,
}

impl Admission {
    /// `max_builds` builds (and imports) at once; the rest wait in line.
    pub fn new(max_builds: usize, shutdown: Shutdown) -> Admission {
        Admission {
            locks: AppLocks::default(),
            queue: BuildQueue::new(max_builds),
            shutdown,
            leases: None,
        }
    }

    /// Replicas: an app's lock also takes its lease in the shared store.
    pub fn with_leases(mut self, leases: Leases) -> Admission {
        self.leases = Some(leases);
        self
    }

    pub fn leases(&self) -> Option<&Leases> {
        self.leases.as_ref()
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn queue(&self) -> &BuildQueue {
        &self.queue
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.draining.is_cancelled()
    }

    /// The app's lock if it is free now.
    pub async fn try_lock(&self, app: &AppName) -> Result<AppLock, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        match self.locks.try_lock(app) {
            Some(lock) => self.lease(lock, app).await,
            None => Err(self.busy_here()),
        }
    }

    /// The app's lock, waiting up to `wait` for the push holding it (here or, with
    /// replicas, on another builder). Gives up when the builder starts draining or
    /// `cancel` fires.
    pub async fn lock(
        &self,
        app: &AppName,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<AppLock, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        tokio::select! {
            locked = self.lock_within(app, wait) => locked,
            () = self.shutdown.draining.cancelled() => Err(Refusal::Draining),
            () = cancel.cancelled() => Err(Refusal::Gone),
        }
    }

    async fn lock_within(&self, app: &AppName, wait: Duration) -> Result<AppLock, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(lock) = self.locks.lock_within(app, remaining).await else {
                return Err(self.busy_here());
            };
            let refusal = match self.lease(lock, app).await {
                Err(refusal @ Refusal::Busy { .. }) => refusal,
                leased => return leased,
            };
            // Another builder has the app: look again, without holding this app's lock.
            let poll = self.leases.as_ref().map_or(wait, Leases::poll_interval);
            if tokio::time::Instant::now() + poll >= deadline {
                return Err(refusal);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Adds the app's lease to its lock, when replicas share a store.
    async fn lease(&self, mut lock: AppLock, app: &AppName) -> Result<AppLock, Refusal> {
        let Some(leases) = &self.leases else {
            return Ok(lock);
        };
        let started = std::time::Instant::now();
        match leases.try_acquire(app).await {
            Ok(Attempt::Held(lease)) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(%app, lease_ms = ms, "took the app's lease");
                lock.hold(lease);
                Ok(lock)
            }
            Ok(Attempt::Busy { builder }) => Err(Refusal::Busy {
                builder: Some(builder),
            }),
            Err(error) => {
                tracing::warn!(%app, %error, "cannot take the app's lease");
                Err(Refusal::Unavailable(error.to_string()))
            }
        }
    }

    /// Another push of this builder holds the app.
    fn busy_here(&self) -> Refusal {
        Refusal::Busy {
            builder: self.leases.as_ref().map(|l| l.builder().to_owned()),
        }
    }

    /// A build slot, telling `out` the place in line while waiting. Gives up when the
    /// builder starts draining or `cancel` fires (the waiter leaves the line).
    pub async fn slot(
        &self,
        out: &Output,
        cancel: &CancellationToken,
    ) -> Result<BuildSlot, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        tokio::select! {
            slot = self.queue.acquire_telling(out) => Ok(slot),
            () = self.shutdown.draining.cancelled() => Err(Refusal::Draining),
            () = cancel.cancelled() => Err(Refusal::Gone),
        }
    }

    /// Runs admitted `work`, which must stop and clean up when `cancel` fires. When the
    /// grace period ends first, `cancel` is fired and the clean-up awaited, so nothing is
    /// left half-published when the process exits.
    pub async fn run<F: Future>(&self, cancel: &CancellationToken, work: F) -> F::Output {
        tokio::pin!(work);
        tokio::select! {
            output = &mut work => output,
            () = self.shutdown.abort.cancelled() => {
                cancel.cancel();
                work.await
            }
        }
    }

    /// Whether running work was (or is being) cancelled by the end of the grace period.
    pub fn is_aborted(&self) -> bool {
        self.shutdown.abort.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse(name).unwrap()
    }

    #[tokio::test]
    async fn a_draining_builder_admits_nothing() {
        let admission = Admission::new(1, Shutdown::default());
        let (out, _rx) = Output::channel(8);
        let never = CancellationToken::new();
        let lock = admission.try_lock(&app("one")).await.unwrap();
        admission.shutdown().draining.cancel();
        assert_eq!(
            admission.try_lock(&app("two")).await.err(),
            Some(Refusal::Draining)
        );
        assert_eq!(
            admission
                .lock(&app("one"), Duration::from_secs(60), &never)
                .await
                .err(),
            Some(Refusal::Draining)
        );
        assert_eq!(
            admission.slot(&out, &never).await.err(),
            Some(Refusal::Draining)
        );
        drop(lock);
    }

    #[tokio::test]
    async fn a_busy_app_is_refused_after_the_wait_and_a_gone_caller_stops_waiting() {
        let admission = Admission::new(1, Shutdown::default());
        let held = admission.try_lock(&app("busy")).await.unwrap();
        let never = CancellationToken::new();
        let busy = Some(Refusal::Busy { builder: None });
        assert_eq!(admission.try_lock(&app("busy")).await.err(), busy);
        assert_eq!(
            admission
                .lock(&app("busy"), Duration::from_millis(20), &never)
                .await
                .err(),
            busy
        );
        let gone = CancellationToken::new();
        gone.cancel();
        assert_eq!(
            admission
                .lock(&app("busy"), Duration::from_secs(60), &gone)
                .await
                .err(),
            Some(Refusal::Gone)
        );
        drop(held);
        assert!(admission
            .lock(&app("busy"), Duration::ZERO, &never)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_end_of_the_grace_period_cancels_work_and_waits_for_its_clean_up() {
        let admission = Admission::new(1, Shutdown::default());
        let cancel = CancellationToken::new();
        let abort = admission.shutdown().abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            abort.cancel();
        });
        let work = {
            let cancel = cancel.clone();
            async move {
                cancel.cancelled().await;
                // Clean-up after cancellation still runs to its end.
                tokio::time::sleep(Duration::from_millis(10)).await;
                "cleaned up"
            }
        };
        assert_eq!(admission.run(&cancel, work).await, "cleaned up");
        assert!(admission.is_aborted());
    }
}
