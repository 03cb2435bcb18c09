//! Admission: the one path by which work gets to run. A push (through the pre-receive
//! hook) and an image import (through HTTP) both take the app's lock, wait for a build
//! slot, are refused while the builder drains, and are cancelled (and wait for their
//! clean-up) when the shutdown grace period is over.
//!
//! The lock and the slot are guards: dropping them is the only way to release them, so no
//! path through a push can leave either behind.

mod lock;
mod queue;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use deis_pipeline::push::Output;
use deis_types::names::AppName;

pub use lock::{AppLock, AppLocks};
pub use queue::{BuildQueue, BuildSlot};

/// Why work was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The builder is shutting down: try again on another (or the restarted) builder.
    Draining,
    /// Another push to the app is still running after the lock wait.
    Busy,
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
}

impl Admission {
    /// `max_builds` builds (and imports) at once; the rest wait in line.
    pub fn new(max_builds: usize, shutdown: Shutdown) -> Admission {
        Admission {
            locks: AppLocks::default(),
            queue: BuildQueue::new(max_builds),
            shutdown,
        }
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
    pub fn try_lock(&self, app: &AppName) -> Result<AppLock, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        self.locks.try_lock(app).ok_or(Refusal::Busy)
    }

    /// The app's lock, waiting up to `wait` for the push holding it. Gives up when the
    /// builder starts draining or `cancel` fires.
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
            locked = self.locks.lock_within(app, wait) => locked.ok_or(Refusal::Busy),
            () = self.shutdown.draining.cancelled() => Err(Refusal::Draining),
            () = cancel.cancelled() => Err(Refusal::Gone),
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
        let lock = admission.try_lock(&app("one")).unwrap();
        admission.shutdown().draining.cancel();
        assert_eq!(
            admission.try_lock(&app("two")).err(),
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
        let held = admission.try_lock(&app("busy")).unwrap();
        let never = CancellationToken::new();
        assert_eq!(admission.try_lock(&app("busy")).err(), Some(Refusal::Busy));
        assert_eq!(
            admission
                .lock(&app("busy"), Duration::from_millis(20), &never)
                .await
                .err(),
            Some(Refusal::Busy)
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
