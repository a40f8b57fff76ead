//! Observed state: each node's liveness, role, WAL position and lag, published whole per cluster
//! through `arc-swap` (desired state is `topology`). Pure helpers here; probing I/O is in
//! `health/probe.rs`.

pub mod probe;
pub mod rtt;
pub mod tracker;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One node as last probed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeHealth {
    /// The last probe succeeded.
    pub up: bool,
    pub in_recovery: Option<bool>,
    /// Primary: `pg_current_wal_lsn()`; replica: `pg_last_wal_replay_lsn()`; as of `sampled_at`.
    pub lsn: Option<u64>,
    /// When the probe that produced `lsn` was sent: the value is at least the position then.
    pub sampled_at: Option<Instant>,
    /// Replicas: how far behind the primary, in time and bytes.
    pub lag: Option<Duration>,
    pub lag_bytes: Option<u64>,
    pub rtt: Option<Duration>,
    /// Added by a reload and not probed yet (only set while health is re-laid for a new spec).
    pub unprobed: bool,
}

impl NodeHealth {
    /// A replica that may serve reads with at most `max_lag` staleness.
    pub fn serves_reads(&self, max_lag: Duration) -> bool {
        self.up && self.in_recovery == Some(true) && self.lag.is_some_and(|l| l <= max_lag)
    }
}

/// One cluster's nodes, in configuration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterHealth {
    pub primary: NodeHealth,
    pub replicas: Vec<NodeHealth>,
    /// The primary's recent WAL positions, oldest first, as (probe sent at, LSN): a session
    /// that committed at `t` needs the first position sampled after `t`.
    pub primary_samples: Vec<(Instant, u64)>,
    /// Node keys (`NodeSpec::key`), primary first, that `primary` and `replicas` describe.
    /// Empty in hand-built health (tests): taken as matching the spec.
    pub keys: Vec<Arc<str>>,
}

impl ClusterHealth {
    /// This health laid out like `spec` (primary, then its replicas in order). After a reload,
    /// until the probe loop publishes for the new layout, nodes are matched by key; a node
    /// not probed yet is down, so it gets no traffic before its first good probes.
    pub fn aligned_to(self: &Arc<Self>, spec: &crate::topology::ClusterSpec) -> Arc<Self> {
        let aligned = self.keys.is_empty()
            || (self.keys.len() == spec.replicas.len() + 1
                && spec
                    .nodes()
                    .zip(&self.keys)
                    .all(|(n, k)| Arc::ptr_eq(&n.key, k) || n.key == *k));
        if aligned {
            return self.clone();
        }
        let find = |key: &Arc<str>| {
            self.keys
                .iter()
                .position(|k| k == key)
                .map(|i| match i {
                    0 => self.primary.clone(),
                    i => self.replicas.get(i - 1).cloned().unwrap_or_default(),
                })
                .unwrap_or(NodeHealth {
                    unprobed: true,
                    ..Default::default()
                })
        };
        Arc::new(ClusterHealth {
            primary: find(&spec.primary.key),
            replicas: spec.replicas.iter().map(|n| find(&n.key)).collect(),
            primary_samples: self.primary_samples.clone(),
            keys: spec.nodes().map(|n| n.key.clone()).collect(),
        })
    }
}

/// How long primary samples are kept for resolving read-your-writes requirements.
pub const PRIMARY_SAMPLES_KEPT: Duration = Duration::from_secs(10);

/// Which node acts as the primary, as the probes see it (whatever the YAML listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryView {
    /// No node has answered a probe yet: assume the configured primary.
    Unknown,
    /// Exactly one node is up and not in recovery: 0 is the configured primary, `i + 1` is
    /// `replicas[i]` (promoted).
    One(usize),
    /// No reachable node is out of recovery.
    None,
    /// Several nodes claim to be primary (split brain): writes are refused until it resolves.
    Conflict,
}

impl ClusterHealth {
    /// The acting primary's (system identifier, timeline), when known.
    pub fn acting_primary_identity(&self) -> Option<(u64, u32)> {
        None
    }

    /// The probe round trip of the node acting as primary.
    pub fn acting_primary_rtt(&self) -> Option<std::time::Duration> {
        match self.primary_view() {
            PrimaryView::One(0) => self.primary.rtt,
            PrimaryView::One(i) => self.replicas.get(i - 1)?.rtt,
            _ => None,
        }
    }

    pub fn primary_view(&self) -> PrimaryView {
        let nodes = std::iter::once(&self.primary).chain(&self.replicas);
        if nodes.clone().all(|n| n.in_recovery.is_none() && !n.up) {
            return PrimaryView::Unknown;
        }
        let mut found = nodes
            .enumerate()
            .filter(|(_, n)| n.up && n.in_recovery == Some(false))
            .map(|(i, _)| i);
        match (found.next(), found.next()) {
            // A primary just configured by a reload: assumed, as at start, until probed.
            (None, _) if self.primary.unprobed => PrimaryView::One(0),
            (None, _) => PrimaryView::None,
            (Some(i), None) => PrimaryView::One(i),
            (Some(_), Some(_)) => PrimaryView::Conflict,
        }
    }
}

/// Failed backend connects by sessions since the last probe round, keyed by node key
/// (`host:port/db`): the probe loop counts them as failed observations.
#[derive(Debug, Default)]
pub struct ConnectFailures {
    map: std::sync::Mutex<HashMap<String, u32>>,
}

impl ConnectFailures {
    /// A session could not connect to `node`.
    pub fn report(&self, node: &crate::topology::NodeSpec) {
        let mut failures = self.map.lock().unwrap_or_else(|e| e.into_inner());
        *failures.entry(node.key.to_string()).or_default() += 1;
    }

    /// Takes the failures reported for `node` since the last call.
    pub fn take(&self, node: &crate::topology::NodeSpec) -> u32 {
        let mut failures = self.map.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&*node.key).unwrap_or(0)
    }
}

/// Every cluster's observed state, keyed by cluster name.
#[derive(Debug, Default)]
pub struct Health {
    pub clusters: HashMap<String, Arc<ClusterHealth>>,
}

/// Parses PostgreSQL's `X/Y` hexadecimal LSN text.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// Recent primary WAL positions, to turn a replica's replay position into a time lag:
/// a replica is as far behind as the oldest primary position it has not replayed.
#[derive(Debug, Clone)]
pub struct PrimaryHistory {
    samples: VecDeque<(Instant, u64)>,
    keep: Duration,
}

impl PrimaryHistory {
    pub fn new(keep: Duration) -> PrimaryHistory {
        PrimaryHistory {
            samples: VecDeque::new(),
            keep,
        }
    }

    /// Records that the primary was at `lsn` at `at`; only advances are kept.
    pub fn push(&mut self, at: Instant, lsn: u64) {
        if self.samples.back().is_none_or(|&(_, last)| lsn > last) {
            self.samples.push_back((at, lsn));
        }
        // Keep one sample older than the horizon, so long lags stay measurable.
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| at.saturating_duration_since(t) > self.keep)
        {
            self.samples.pop_front();
        }
    }

    pub fn latest(&self) -> Option<u64> {
        self.samples.back().map(|&(_, l)| l)
    }

    /// Time lag of a replica that has replayed up to `replay`, as of `now`.
    pub fn lag_of(&self, replay: u64, now: Instant) -> Option<Duration> {
        let latest = self.latest()?;
        if replay >= latest {
            return Some(Duration::ZERO);
        }
        // The first position the replica lacks appeared no later than this sample.
        let (since, _) = self.samples.iter().find(|&&(_, lsn)| lsn > replay)?;
        Some(now.saturating_duration_since(*since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        let cases = [
            ("0/4DFF618", Some(0x4DF_F618)),
            ("16/B374D848", Some((0x16 << 32) | 0xB374_D848)),
            ("0/0", Some(0)),
            ("", None),
            ("4DFF618", None),
            ("0/xyz", None),
            ("100000000/0", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_lsn(text), want, "{text}");
        }
    }

    #[test]
    fn replica_lag_from_primary_history() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = PrimaryHistory::new(Duration::from_secs(60));
        assert_eq!(h.lag_of(5, ms(0)), None, "no primary sample yet");
        h.push(ms(0), 100);
        h.push(ms(100), 100); // no advance: not recorded
        h.push(ms(200), 150);
        h.push(ms(300), 400);
        let now = ms(1000);
        let cases = [
            (400, Some(Duration::ZERO)),             // caught up
            (500, Some(Duration::ZERO)),             // ahead of our last sample
            (150, Some(Duration::from_millis(700))), // lacks 400, seen at 300 ms
            (120, Some(Duration::from_millis(800))), // lacks 150, seen at 200 ms
            (99, Some(Duration::from_millis(1000))), // lacks everything we have seen
        ];
        for (replay, want) in cases {
            assert_eq!(h.lag_of(replay, now), want, "replay {replay}");
        }
    }

    #[test]
    fn history_forgets_beyond_its_horizon_but_keeps_one_older_sample() {
        let t0 = Instant::now();
        let mut h = PrimaryHistory::new(Duration::from_secs(1));
        for i in 0..50u64 {
            h.push(t0 + Duration::from_millis(100 * i), i + 1);
        }
        assert!(h.samples.len() <= 12, "{}", h.samples.len());
        assert_eq!(
            h.lag_of(0, t0 + Duration::from_secs(5)),
            Some(Duration::from_millis(5000 - 3800))
        );
    }

    #[test]
    fn primary_is_whichever_node_is_out_of_recovery() {
        let primary = NodeHealth {
            up: true,
            in_recovery: Some(false),
            ..Default::default()
        };
        let standby = NodeHealth {
            up: true,
            in_recovery: Some(true),
            ..Default::default()
        };
        let down = NodeHealth {
            up: false,
            in_recovery: Some(false), // last known, but down
            ..Default::default()
        };
        let view = |p: &NodeHealth, r: &[&NodeHealth]| {
            ClusterHealth {
                primary: p.clone(),
                replicas: r.iter().map(|n| (*n).clone()).collect(),
                primary_samples: vec![],
                keys: vec![],
            }
            .primary_view()
        };
        let never = NodeHealth::default();
        assert_eq!(view(&never, &[&never]), PrimaryView::Unknown);
        assert_eq!(view(&primary, &[&standby, &standby]), PrimaryView::One(0));
        assert_eq!(
            view(&down, &[&standby, &primary]),
            PrimaryView::One(2),
            "promoted replica"
        );
        assert_eq!(view(&down, &[&standby, &standby]), PrimaryView::None);
        assert_eq!(view(&primary, &[&primary, &standby]), PrimaryView::Conflict);
        assert_eq!(
            view(&never, &[&standby]),
            PrimaryView::None,
            "primary never answered"
        );
    }

    #[test]
    fn serving_reads_needs_up_standby_within_lag() {
        let good = NodeHealth {
            up: true,
            in_recovery: Some(true),
            lag: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let max = Duration::from_secs(1);
        assert!(good.serves_reads(max));
        assert!(!NodeHealth {
            up: false,
            ..good.clone()
        }
        .serves_reads(max));
        assert!(!NodeHealth {
            in_recovery: Some(false),
            ..good.clone()
        }
        .serves_reads(max));
        assert!(!NodeHealth {
            lag: None,
            ..good.clone()
        }
        .serves_reads(max));
        assert!(!NodeHealth {
            lag: Some(Duration::from_secs(2)),
            ..good
        }
        .serves_reads(max));
    }
}

#[cfg(test)]
mod alignment_tests {
    use super::*;
    use crate::topology::{ClusterSpec, ConfiguredRole, NodeSpec};

    fn node(key: &str) -> Arc<NodeSpec> {
        let at = crate::config::Region { lat: 0.0, lon: 0.0 };
        Arc::new(NodeSpec::plain(
            "app",
            ConfiguredRole::Primary,
            key,
            1,
            "r",
            at,
        ))
    }

    #[test]
    fn health_follows_nodes_by_key_and_new_nodes_start_down() {
        let up = |lsn| NodeHealth {
            up: true,
            in_recovery: Some(true),
            lsn: Some(lsn),
            ..Default::default()
        };
        let probed = Arc::new(ClusterHealth {
            primary: NodeHealth {
                up: true,
                in_recovery: Some(false),
                ..Default::default()
            },
            replicas: vec![up(1), up(2)],
            primary_samples: vec![],
            keys: ["p", "a", "b"].map(|k| node(k).key.clone()).to_vec(),
        });
        // After a reload: b first, a removed, c added.
        let spec = ClusterSpec {
            name: "app".into(),
            primary: node("p"),
            replicas: vec![node("b"), node("c")],
            allowed_regions: vec![],
            pooling: Default::default(),
        };
        let h = probed.aligned_to(&spec);
        assert_eq!(h.replicas[0], up(2), "b keeps its health");
        assert!(!h.replicas[1].up, "c gets no traffic before its probes");
        // A new primary is assumed until probed, unless another node acts as primary.
        let moved = ClusterSpec {
            name: "app".into(),
            primary: node("q"),
            replicas: vec![node("a")],
            allowed_regions: vec![],
            pooling: Default::default(),
        };
        assert_eq!(
            probed.aligned_to(&moved).primary_view(),
            PrimaryView::One(0)
        );
        let promoted = ClusterSpec {
            primary: node("q"),
            replicas: vec![node("p")],
            ..moved
        };
        assert_eq!(
            probed.aligned_to(&promoted).primary_view(),
            PrimaryView::One(1)
        );
        assert!(h.primary.up);
        // Already aligned: the same allocation.
        let same = ClusterSpec {
            replicas: vec![node("a"), node("b")],
            ..spec
        };
        assert!(Arc::ptr_eq(&probed.aligned_to(&same), &probed));
    }
}
