//! Per-instance locks: every operation that changes an instance's state and its VMM process
//! together holds the instance's lock, so two operations on one instance never interleave.
//! Operations on different instances run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// One async mutex per instance id, made on first use.
#[derive(Default)]
pub(super) struct Locks {
    by_instance: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    /// Waits for and takes the lock of `instance_id`; it is released when the guard drops (the
    /// guard is owned, so a task may carry it, e.g. a boot that finishes in the background).
    pub(super) async fn lock(&self, instance_id: &str) -> OwnedMutexGuard<()> {
        let m = {
            // The map is only touched here, briefly; a poisoned map is still consistent.
            let mut locks = self.by_instance.lock().unwrap_or_else(|p| p.into_inner());
            locks
                .entry(instance_id.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        m.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_instance_at_a_time_others_in_parallel() {
        let locks = Locks::default();
        let a = locks.lock("i-a").await;
        // Another instance's lock is free.
        let _b = locks.lock("i-b").await;
        // The same instance's lock waits for the first guard.
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("i-a"));
        assert!(again.await.is_err(), "a second lock of i-a must wait");
        drop(a);
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock("i-a"));
        assert!(again.await.is_ok());
    }
}
