//! Operator controls that sessions obey: a pause per cluster (`PAUSE`/`RESUME` in the admin
//! console). Keyed by cluster name and kept apart from the topology, so a reload neither sees
//! nor clears them. Sessions read a pause with one atomic load; nothing here decides routing
//! (a node's drain lives on its `NodeSpec`, read by `route`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// One cluster's pause: while set, sessions outside a transaction start no new batch.
#[derive(Debug)]
pub struct Pause {
    paused: AtomicBool,
    /// Sends the new state on every change, for sessions waiting to go on.
    changed: watch::Sender<bool>,
}

impl Default for Pause {
    fn default() -> Pause {
        Pause {
            paused: AtomicBool::new(false),
            changed: watch::channel(false).0,
        }
    }
}

impl Pause {
    /// Sequentially consistent: a session publishes that it starts a batch, then reads this;
    /// `PAUSE` sets this, then reads the sessions' states. One of the two sees the other.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.changed.send_replace(paused);
    }

    /// A receiver that wakes at the next change; take it before checking [`Pause::is_paused`]
    /// so that a `RESUME` in between is not missed.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changed.subscribe()
    }
}

/// Every cluster's pause, by cluster name (made on first use).
#[derive(Debug, Default)]
pub struct Pauses {
    map: Mutex<HashMap<String, Arc<Pause>>>,
}

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pause>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pause of `cluster` (a session takes it once, at start).
    pub fn of(&self, cluster: &str) -> Arc<Pause> {
        self.lock().entry(cluster.to_owned()).or_default().clone()
    }

    pub fn is_paused(&self, cluster: &str) -> bool {
        self.lock().get(cluster).is_some_and(|p| p.is_paused())
    }

    /// Lifts every pause; returns the clusters that were paused, in name order.
    pub fn resume_all(&self) -> Vec<String> {
        let mut resumed: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, p)| p.is_paused())
            .map(|(name, p)| {
                p.set(false);
                name.clone()
            })
            .collect();
        resumed.sort();
        resumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_shared_by_name_and_wakes_subscribers() {
        let pauses = Pauses::default();
        let a = pauses.of("app");
        assert!(!pauses.is_paused("app") && !pauses.is_paused("other"));
        let mut rx = a.subscribe();
        pauses.of("app").set(true);
        assert!(a.is_paused() && pauses.is_paused("app"));
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        a.set(false);
        assert!(!pauses.is_paused("app"));
        assert!(rx.has_changed().unwrap());
        assert!(!pauses.is_paused("other"));
        pauses.of("a").set(true);
        pauses.of("b").set(true);
        assert_eq!(pauses.resume_all(), ["a", "b"]);
        assert!(!pauses.is_paused("a") && !pauses.is_paused("b"));
    }
}
