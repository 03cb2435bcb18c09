//! Per-app push locks, held in memory by the push that owns them.
//!
//! Being in memory is the point: a lock can never outlive its push or the process, so
//! there is no stale lock to clean up after a crash and no timeout that cuts long pushes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::names::AppName;

#[derive(Debug, Clone, Default)]
pub struct AppLocks {
    held: Arc<Mutex<HashSet<AppName>>>,
}

/// Releases its app when dropped, whatever path the push took.
#[derive(Debug)]
pub struct AppLock {
    app: AppName,
    held: Arc<Mutex<HashSet<AppName>>>,
}

impl AppLocks {
    /// `None` when another push to `app` is in progress.
    pub fn try_lock(&self, app: &AppName) -> Option<AppLock> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(app.clone()).then(|| AppLock {
            app: app.clone(),
            held: self.held.clone(),
        })
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
}
