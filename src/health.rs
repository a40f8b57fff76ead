//! Observed state: each node's liveness, role, WAL position and lag, published whole per cluster
//! through `arc-swap` (desired state is `topology`). Pure helpers here; probing I/O is in
//! `health/probe.rs`.

pub mod hints;
pub mod probe;
pub mod rtt;
pub mod tracker;
mod wal;

pub use wal::{PrimaryHistory, WalHistory, WalSource};

use std::collections::HashMap;
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
    /// Replicas: how far behind the primary, in time and bytes. The time is an upper bound
    /// (the primary had the first missing position no later than a sample).
    pub lag: Option<Duration>,
    /// Replicas: how long after the primary wrote a position this replica replayed it, as
    /// estimated from the primary's samples around its replay position (0 when it has replayed
    /// all the primary's sampled WAL). What a read waiting for a fresh write expects to wait.
    pub apply_delay: Option<Duration>,
    pub lag_bytes: Option<u64>,
    pub rtt: Option<Duration>,
    /// Added by a reload and not probed yet (only set while health is re-laid for a new spec).
    pub unprobed: bool,
    /// The PostgreSQL system identifier (`pg_control_system()`), learned once per probe
    /// connection: nodes of one replicated cluster share it.
    pub system_id: Option<u64>,
    /// Out of recovery only: the timeline the node writes WAL on (from
    /// `pg_walfile_name(pg_current_wal_lsn())`); None on standbys.
    pub timeline: Option<u32>,
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
    /// Node `i` in configuration order: 0 is the configured primary, `i + 1` is `replicas[i]`.
    pub fn node(&self, i: usize) -> Option<&NodeHealth> {
        match i {
            0 => Some(&self.primary),
            i => self.replicas.get(i - 1),
        }
    }

    /// Node `i` in configuration order, to change.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut NodeHealth> {
        match i {
            0 => Some(&mut self.primary),
            i => self.replicas.get_mut(i - 1),
        }
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = &mut NodeHealth> {
        std::iter::once(&mut self.primary).chain(&mut self.replicas)
    }

    /// The node acting as primary (whichever slot it is configured in), when exactly one does.
    pub fn acting_primary(&self) -> Option<&NodeHealth> {
        match self.primary_view() {
            PrimaryView::One(i) => self.node(i),
            _ => None,
        }
    }

    /// The acting primary's (system identifier, timeline), when exactly one node acts as
    /// primary and its probes have learned both: WAL positions are comparable only within it.
    pub fn acting_primary_identity(&self) -> Option<(u64, u32)> {
        let p = self.acting_primary()?;
        Some((p.system_id?, p.timeline?))
    }

    /// The probe round trip of the node acting as primary.
    pub fn acting_primary_rtt(&self) -> Option<std::time::Duration> {
        self.acting_primary()?.rtt
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
