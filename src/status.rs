//! The `/status` document: desired state (topology) next to observed state (health) for every
//! node, as JSON. Pure: built from snapshots the caller loaded, no I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::health::{ClusterHealth, Health, NodeHealth, PrimaryView};
use crate::metrics::{Metrics, TargetRole};
use crate::topology::{ConfiguredRole, NodeSpec, Topology};

#[derive(Debug, Serialize)]
pub struct Status {
    /// The live topology's generation (1 at start, +1 per applied reload).
    pub generation: u64,
    /// Where the proxy runs.
    pub region: String,
    /// Keyed by cluster (database) name.
    pub clusters: BTreeMap<String, ClusterStatus>,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// `ok` (exactly one node acts as primary), `none`, `conflict`, or `unknown` (no probe
    /// round published yet).
    pub primary_view: &'static str,
    /// The node acting as primary, when `primary_view` is `ok`.
    pub acting_primary: Option<String>,
    /// Backend connections held by client sessions, by role.
    pub backend_connections: BackendConnections,
    /// The configured primary first, then the replicas in configuration order.
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendConnections {
    pub primary: i64,
    pub replica: i64,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub region: String,
    /// `primary` or `replica`, as configured.
    pub configured_role: &'static str,
    /// `primary`, `replica` or `unknown`, from `pg_is_in_recovery()` of the last probes.
    pub observed_role: &'static str,
    /// The probes succeed (after fall/rise hysteresis).
    pub up: bool,
    pub lag_seconds: Option<f64>,
    pub lag_bytes: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// Sessions holding a read connection to the node.
    pub sessions: usize,
}

/// The status of every configured cluster, in name order.
pub fn build(topology: &Topology, health: &Health, metrics: &Metrics) -> Status {
    let clusters = topology
        .clusters
        .iter()
        .map(|(name, spec)| {
            let aligned = health.clusters.get(name).map(|h| h.aligned_to(spec));
            let h = aligned.as_deref();
            let specs = std::iter::once(&spec.primary).chain(&spec.replicas);
            let nodes = specs
                .enumerate()
                .map(|(i, n)| node(n, h.and_then(|h| observed(h, i))))
                .collect();
            let view = h.map_or(PrimaryView::Unknown, ClusterHealth::primary_view);
            let acting_primary = match view {
                PrimaryView::One(0) => Some(spec.primary.label().to_owned()),
                PrimaryView::One(i) => spec.replicas.get(i - 1).map(|n| n.label().to_owned()),
                _ => None,
            };
            let connections = |role: TargetRole| {
                metrics
                    .backend_connections
                    .with_label_values(&[name.as_str(), role.as_str()])
                    .get()
            };
            let status = ClusterStatus {
                primary_view: match view {
                    PrimaryView::One(_) => "ok",
                    PrimaryView::None => "none",
                    PrimaryView::Conflict => "conflict",
                    PrimaryView::Unknown => "unknown",
                },
                acting_primary,
                backend_connections: BackendConnections {
                    primary: connections(TargetRole::Primary),
                    replica: connections(TargetRole::Replica),
                },
                nodes,
            };
            (name.clone(), status)
        })
        .collect();
    Status {
        generation: topology.generation,
        region: topology.region.clone(),
        clusters,
    }
}

/// Node `i` of the cluster's health, primary first (the order `ClusterSpec` lists them).
fn observed(h: &ClusterHealth, i: usize) -> Option<&NodeHealth> {
    match i {
        0 => Some(&h.primary),
        _ => h.replicas.get(i - 1),
    }
}

fn node(spec: &NodeSpec, health: Option<&NodeHealth>) -> NodeStatus {
    let unknown = NodeHealth::default();
    let h = health.unwrap_or(&unknown);
    NodeStatus {
        name: spec.label().to_owned(),
        host: spec.host.clone(),
        port: spec.port,
        region: spec.region.clone(),
        configured_role: match spec.role {
            ConfiguredRole::Primary => "primary",
            ConfiguredRole::Replica(_) => "replica",
        },
        observed_role: match h.in_recovery {
            Some(false) => "primary",
            Some(true) => "replica",
            None => "unknown",
        },
        up: h.up,
        lag_seconds: h.lag.map(|l| l.as_secs_f64()),
        lag_bytes: h.lag_bytes,
        rtt_ms: h.rtt.map(|r| r.as_secs_f64() * 1000.0),
        sessions: spec.sessions.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// The document as pretty-printed JSON.
pub fn render(topology: &Topology, health: &Health, metrics: &Metrics) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(&build(topology, health, metrics))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;
    use std::time::Duration;

    const YAML: &str = "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: { lat: 39.0, lon: -77.5 }
  eu-west: { lat: 53.3, lon: -6.3 }
users:
  - { name: app, password: x }
clusters:
  app:
    primary: { host: 127.0.0.1, port: 5432, region: us-east, tls: disable }
    replicas:
      - { name: eu, host: 127.0.0.1, port: 5433, region: eu-west, tls: disable }
";

    fn topology() -> Topology {
        let config = Config::from_yaml(YAML, &|_| None).unwrap();
        Topology::build(&config).unwrap_or_else(|_| panic!("topology"))
    }

    #[test]
    fn unprobed_nodes_are_unknown_and_down() {
        let t = topology();
        let s = build(&t, &Health::default(), &Metrics::new());
        let app = &s.clusters["app"];
        assert_eq!(s.generation, 1);
        assert_eq!(s.region, "us-east");
        assert_eq!(app.primary_view, "unknown");
        assert_eq!(app.nodes.len(), 2);
        assert_eq!(app.nodes[0].name, "127.0.0.1:5432");
        assert_eq!(app.nodes[1].name, "eu");
        assert!(app
            .nodes
            .iter()
            .all(|n| !n.up && n.observed_role == "unknown"));
    }

    #[test]
    fn observed_roles_lag_and_sessions() {
        let t = topology();
        let up = |rec| NodeHealth {
            up: true,
            in_recovery: Some(rec),
            rtt: Some(Duration::from_micros(1500)),
            ..Default::default()
        };
        let mut replica = up(true);
        replica.lag = Some(Duration::from_millis(250));
        replica.lag_bytes = Some(4096);
        let mut health = Health::default();
        health.clusters.insert(
            "app".into(),
            Arc::new(ClusterHealth {
                primary: up(false),
                replicas: vec![replica],
                primary_samples: vec![],
                keys: vec![],
            }),
        );
        t.clusters["app"].replicas[0]
            .sessions
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let metrics = Metrics::new();
        let _conn = metrics.backend_connection("app", TargetRole::Primary);
        let json: serde_json::Value =
            serde_json::from_slice(&render(&t, &health, &metrics)).unwrap();
        let app = &json["clusters"]["app"];
        assert_eq!(app["primary_view"], "ok");
        assert_eq!(app["acting_primary"], "127.0.0.1:5432");
        assert_eq!(app["backend_connections"]["primary"], 1);
        let eu = &app["nodes"][1];
        assert_eq!(eu["configured_role"], "replica");
        assert_eq!(eu["observed_role"], "replica");
        assert_eq!(eu["region"], "eu-west");
        assert_eq!(eu["lag_seconds"], 0.25);
        assert_eq!(eu["lag_bytes"], 4096);
        assert_eq!(eu["rtt_ms"], 1.5);
        assert_eq!(eu["sessions"], 2);
        assert_eq!(app["nodes"][0]["observed_role"], "primary");
    }
}
