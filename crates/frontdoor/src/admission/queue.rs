//! The build queue: at most `limit` builds (and image imports) run at once; the rest wait in
//! first-come order and are told their place in line whenever it changes.
//!
//! A waiter that goes away (its client disconnected, so its `acquire` future is dropped)
//! leaves the line at once, and everyone behind it moves up.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct BuildQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Bumped on every change, so waiters re-check their place.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    running: usize,
    /// Tickets of the waiters, first in line first.
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

/// A build slot; the next in line may start when it is dropped.
#[derive(Debug)]
pub struct BuildSlot {
    inner: Arc<Inner>,
    _active: deis_metrics::InFlight,
}

/// A place in line; leaves the line when dropped before it became a slot.
struct Ticket {
    inner: Arc<Inner>,
    id: u64,
    seated: bool,
    _queued: deis_metrics::InFlight,
}

impl BuildQueue {
    /// `limit` builds at once (at least one).
    pub fn new(limit: usize) -> BuildQueue {
        let (changed, _) = watch::channel(0);
        BuildQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    limit: limit.max(1),
                    running: 0,
                    waiting: VecDeque::new(),
                    next_ticket: 0,
                }),
                changed,
            }),
        }
    }

    /// Builds running now.
    pub fn active(&self) -> usize {
        self.inner.state().running
    }

    /// Whether a build asking now would get a slot at once.
    pub fn has_free_slot(&self) -> bool {
        let state = self.inner.state();
        state.waiting.is_empty() && state.running < state.limit
    }

    /// Builds waiting for a slot.
    pub fn queued(&self) -> usize {
        self.inner.state().waiting.len()
    }

    /// Waits for a slot. `report` is called with the waiter's place in line (1 = next)
    /// when it first has to wait and whenever that place changes; never when a slot is free
    /// at once. Dropping the future leaves the line.
    pub async fn acquire<F, Fut>(&self, mut report: F) -> BuildSlot
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut changes = self.inner.changed.subscribe();
        let mut ticket = {
            let mut state = self.inner.state();
            if state.waiting.is_empty() && state.running < state.limit {
                state.running += 1;
                return BuildSlot {
                    inner: self.inner.clone(),
                    _active: deis_metrics::build_active(),
                };
            }
            let id = state.next_ticket;
            state.next_ticket += 1;
            state.waiting.push_back(id);
            Ticket {
                inner: self.inner.clone(),
                id,
                seated: false,
                _queued: deis_metrics::build_queued(),
            }
        };
        let mut reported = None;
        loop {
            changes.borrow_and_update();
            let position = {
                let mut state = self.inner.state();
                let index = state.waiting.iter().position(|&t| t == ticket.id);
                match index {
                    Some(0) if state.running < state.limit => {
                        state.waiting.pop_front();
                        state.running += 1;
                        ticket.seated = true;
                        drop(state);
                        // Others moved up one place.
                        self.inner.bump();
                        return BuildSlot {
                            inner: self.inner.clone(),
                            _active: deis_metrics::build_active(),
                        };
                    }
                    Some(index) => index + 1,
                    // Cannot happen: only this ticket's drop removes it from the line.
                    None => 1,
                }
            };
            if reported != Some(position) {
                reported = Some(position);
                report(position).await;
                // The line may have moved while we reported: look again before sleeping.
                continue;
            }
            if changes.changed().await.is_err() {
                // The sender lives in `inner`, which we hold: this cannot happen, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl BuildQueue {
    /// [`BuildQueue::acquire`], telling the client its place in line on `out`.
    pub async fn acquire_telling(&self, out: &deis_pipeline::push::Output) -> BuildSlot {
        self.acquire(|place| {
            let out = out.clone();
            async move {
                out.step(format!(
                    "Waiting for a build slot (position {place} in queue)"
                ))
                .await;
            }
        })
        .await
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }
}

impl Drop for BuildSlot {
    fn drop(&mut self) {
        {
            let mut state = self.inner.state();
            state.running = state.running.saturating_sub(1);
        }
        self.inner.bump();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.seated {
            return;
        }
        {
            let mut state = self.inner.state();
            state.waiting.retain(|&t| t != self.id);
        }
        self.inner.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// Starts a waiter whose reported places arrive on the returned channel and whose slot
    /// is sent once it has one.
    fn waiter(
        queue: &BuildQueue,
    ) -> (
        mpsc::UnboundedReceiver<usize>,
        tokio::sync::oneshot::Receiver<BuildSlot>,
        tokio::task::JoinHandle<()>,
    ) {
        let (places_tx, places) = mpsc::unbounded_channel();
        let (slot_tx, slot) = tokio::sync::oneshot::channel();
        let queue = queue.clone();
        let task = tokio::spawn(async move {
            let slot = queue
                .acquire(|place| {
                    let _ = places_tx.send(place);
                    async {}
                })
                .await;
            let _ = slot_tx.send(slot);
        });
        (places, slot, task)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn waiters_are_told_their_place_and_served_in_order() {
        let queue = BuildQueue::new(1);
        let first = queue
            .acquire(|_| async { panic!("a free slot never waits") })
            .await;
        assert_eq!((queue.active(), queue.queued()), (1, 0));

        let (mut places_a, slot_a, _a) = waiter(&queue);
        settle().await;
        let (mut places_b, mut slot_b, _b) = waiter(&queue);
        settle().await;
        assert_eq!(places_a.recv().await, Some(1));
        assert_eq!(places_b.recv().await, Some(2));
        assert_eq!((queue.active(), queue.queued()), (1, 2));

        drop(first);
        let slot_a = slot_a.await.unwrap();
        // B moved up, but the one slot is taken by A.
        assert_eq!(places_b.recv().await, Some(1));
        assert!(slot_b.try_recv().is_err());
        assert_eq!((queue.active(), queue.queued()), (1, 1));
        drop(slot_a);
        let _slot_b = slot_b.await.unwrap();
        assert_eq!((queue.active(), queue.queued()), (1, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_line() {
        let queue = BuildQueue::new(1);
        let first = queue.acquire(|_| async {}).await;
        let (mut places_a, _slot_a, task_a) = waiter(&queue);
        settle().await;
        let (mut places_b, slot_b, _b) = waiter(&queue);
        settle().await;
        assert_eq!(places_a.recv().await, Some(1));
        assert_eq!(places_b.recv().await, Some(2));

        task_a.abort();
        assert_eq!(places_b.recv().await, Some(1));
        assert_eq!(queue.queued(), 1);
        drop(first);
        let _slot_b = slot_b.await.unwrap();
        assert_eq!((queue.active(), queue.queued()), (1, 0));
    }

    #[tokio::test]
    async fn up_to_the_limit_run_at_once() {
        let queue = BuildQueue::new(3);
        let slots: Vec<BuildSlot> = futures_util::future::join_all(
            (0..3).map(|_| queue.acquire(|_| async { panic!("must not wait") })),
        )
        .await;
        assert_eq!(queue.active(), 3);
        drop(slots);
        assert_eq!(queue.active(), 0);
    }
}
