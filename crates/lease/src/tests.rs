use std::sync::atomic::{AtomicBool, Ordering};

use deis_storage::{Body, LocalStore, ObjectReader};

use super::*;

const TTL: Duration = Duration::from_millis(600);

/// The shared local store, as one builder reaches it: its link can be cut.
#[derive(Debug)]
struct Link {
    store: LocalStore,
    cut: AtomicBool,
}

impl Link {
    fn check(&self) -> Result<(), StorageError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StorageError::InvalidSettings {
                reason: "the link to the store is cut".to_owned(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Link {
    async fn put(&self, key: &str, body: Body<'_>) -> Result<u64, StorageError> {
        self.check()?;
        self.store.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        self.check()?;
        self.store.get(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.check()?;
        self.store.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.check()?;
        self.store.delete(key).await
    }
    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StorageError> {
        self.check()?;
        self.store.read_record(key).await
    }
    async fn create_record(&self, key: &str, data: &[u8]) -> Result<Version, StorageError> {
        self.check()?;
        self.store.create_record(key, data).await
    }
    async fn replace_record(
        &self,
        key: &str,
        data: &[u8],
        expected: &Version,
    ) -> Result<Version, StorageError> {
        self.check()?;
        self.store.replace_record(key, data, expected).await
    }
    async fn check(&self) -> Result<(), StorageError> {
        self.check()
    }
    fn describe(&self) -> String {
        self.store.describe()
    }
}

async fn shared_store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("store")).await.unwrap();
    (dir, store)
}

fn builder(store: &LocalStore, id: &str) -> (Arc<Link>, Leases) {
    let link = Arc::new(Link {
        store: store.clone(),
        cut: AtomicBool::new(false),
    });
    let leases = Leases::new(link.clone(), id.to_owned(), TTL);
    (link, leases)
}

fn app() -> AppName {
    AppName::parse("web").unwrap()
}

async fn acquire(leases: &Leases) -> Lease {
    match leases.try_acquire(&app()).await.unwrap() {
        Attempt::Held(lease) => lease,
        Attempt::Busy { builder } => panic!("held by {builder}"),
    }
}

/// Polls like a waiting push until the app is taken, for at most `limit`.
async fn acquire_within(leases: &Leases, limit: Duration) -> Option<Lease> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Attempt::Held(lease) = leases.try_acquire(&app()).await.unwrap() {
            return Some(lease);
        }
        tokio::time::sleep(leases.poll_interval()).await;
    }
    None
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_released_lease_is_free_at_once() {
    let (_dir, store) = shared_store().await;
    let (_, one) = builder(&store, "one");
    let (_, two) = builder(&store, "two");
    let held = acquire(&one).await;
    // Renewals keep it: well past the TTL, the other builder still cannot take it.
    tokio::time::sleep(TTL * 2).await;
    match two.try_acquire(&app()).await.unwrap() {
        Attempt::Busy { builder } => assert_eq!(builder, "one"),
        Attempt::Held(_) => panic!("two builders hold one app"),
    }
    assert!(held.confirm().await.is_ok());
    drop(held);
    // Released in the background (settle waits for it, as a stopping builder does), then
    // free for anyone without waiting for the TTL.
    one.settle(TTL).await;
    assert!(matches!(
        two.try_acquire(&app()).await.unwrap(),
        Attempt::Held(_)
    ));
}

#[tokio::test]
async fn a_holder_cut_from_the_store_loses_the_lease_before_anyone_takes_it_over() {
    let (_dir, store) = shared_store().await;
    let (link, one) = builder(&store, "one");
    let (_, two) = builder(&store, "two");
    let held = acquire(&one).await;
    let lost = held.lost();
    let cut_at = Instant::now();
    link.cut.store(true, Ordering::SeqCst);
    assert!(matches!(
        two.try_acquire(&app()).await.unwrap(),
        Attempt::Busy { .. }
    ));
    let taken = acquire_within(&two, TTL * 20).await.expect("taken over");
    // The old holder knew first: it stops acting on a lease before a TTL has passed.
    assert!(lost.is_cancelled());
    assert!(cut_at.elapsed() >= TTL);
    let refused = held.confirm().await.unwrap_err();
    assert!(
        refused.to_string().contains("lost its lease on web"),
        "{refused}"
    );
    // Its link back, the old holder learns who has the app now and writes nothing.
    link.cut.store(false, Ordering::SeqCst);
    drop(held);
    assert!(taken.confirm().await.is_ok());
}

#[tokio::test]
async fn a_lease_left_by_this_builders_previous_run_is_taken_at_once() {
    let (_dir, store) = shared_store().await;
    let (link, before) = builder(&store, "one");
    let old = acquire(&before).await;
    // The previous run dies: nothing renews or releases.
    link.cut.store(true, Ordering::SeqCst);
    let (_, after) = builder(&store, "one");
    assert!(acquire_within(&after, TTL / 3).await.is_some());
    drop(old);
}

#[tokio::test]
async fn a_store_that_cannot_be_read_is_an_error_not_a_free_app() {
    let (_dir, store) = shared_store().await;
    let (link, one) = builder(&store, "one");
    link.cut.store(true, Ordering::SeqCst);
    assert!(one.try_acquire(&app()).await.is_err());
    assert!(one.check().await.is_err());
    link.cut.store(false, Ordering::SeqCst);
    assert!(one.check().await.is_ok());
}
