//! Owns what sessions tell a cluster's probe loop: a WAL position reads are waiting for (so the
//! replicas' replay is asked again soon, not at the next round) and a failed backend connect (so
//! the next round runs now). Hints only: a node's health comes from its probes alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Every cluster's hints, by cluster name.
#[derive(Debug, Default)]
pub struct ProbeHints {
    clusters: Mutex<HashMap<String, Arc<ClusterHint>>>,
}

impl ProbeHints {
    /// The hints of `cluster` (created on first use; a session keeps the Arc).
    pub fn cluster(&self, cluster: &str) -> Arc<ClusterHint> {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(cluster) {
            Some(h) => h.clone(),
            None => map.entry(cluster.to_owned()).or_default().clone(),
        }
    }
}

/// A wanted position not asked for again this long is dropped: the replicas are then asked
/// at the probe rounds only. (A position that is never reached, such as one from a forged
/// causal token, would otherwise keep the replicas polled for good.)
const WANT_LASTS: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct ClusterHint {
    /// The highest WAL position a read was kept from replicas for.
    wanted: AtomicU64,
    /// When a read last asked for a position.
    asked: Mutex<Option<Instant>>,
    /// A session could not connect to a node: probe now.
    round_now: AtomicBool,
    notify: Notify,
}

impl ClusterHint {
    /// A read waits for replicas to replay `lsn`; `now` is the session's clock reading.
    pub fn want(&self, lsn: u64, now: Instant) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        if self.wanted.fetch_max(lsn, Ordering::AcqRel) < lsn {
            self.notify.notify_one();
        }
    }

    /// The position reads wait for, as of `now` (0: none, or none asked for lately).
    pub fn wanted(&self, now: Instant) -> u64 {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.is_some_and(|t| now.saturating_duration_since(t) >= WANT_LASTS) {
            *asked = None;
            self.wanted.store(0, Ordering::Release);
        }
        self.wanted.load(Ordering::Acquire)
    }

    /// A session's backend connect failed: the probes should look now.
    pub fn connect_failed(&self) {
        if !self.round_now.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Whether a round was asked for since the last call.
    pub fn take_round_now(&self) -> bool {
        self.round_now.swap(false, Ordering::AcqRel)
    }

    pub fn round_now_asked(&self) -> bool {
        self.round_now.load(Ordering::Acquire)
    }

    /// Resolves at the next hint (or at once if one came since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_rise_and_hints_are_per_cluster() {
        let hints = ProbeHints::default();
        let a = hints.cluster("a");
        let t = Instant::now();
        a.want(10, t);
        a.want(5, t);
        assert_eq!(a.wanted(t), 10);
        assert_eq!(hints.cluster("a").wanted(t), 10, "the same hint");
        assert_eq!(hints.cluster("b").wanted(t), 0);
        assert!(!a.take_round_now());
        a.connect_failed();
        a.connect_failed();
        assert!(a.round_now_asked());
        assert!(a.take_round_now());
        assert!(!a.take_round_now());
    }

    #[test]
    fn a_position_not_asked_for_lately_is_dropped() {
        let a = ClusterHint::default();
        let t = Instant::now();
        // Say a forged causal token: a position no replica will reach.
        a.want(u64::MAX, t);
        assert_eq!(a.wanted(t + Duration::from_secs(9)), u64::MAX);
        // Asked for again (any position): still wanted.
        a.want(7, t + Duration::from_secs(9));
        assert_eq!(a.wanted(t + Duration::from_secs(18)), u64::MAX);
        assert_eq!(a.wanted(t + Duration::from_secs(19)), 0, "dropped");
        a.want(5, t + Duration::from_secs(20));
        assert_eq!(a.wanted(t + Duration::from_secs(20)), 5);
    }
}
