//! The `/status` document: desired state (topology) next to observed state (health) for every
//! node, and the operator's pauses and drains, as JSON (the admin console's SHOW CLUSTERS,
//! NODES and POOLS are read from it too). Pure: built from snapshots the caller loaded.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::Pauses;
use crate::health::{ClusterHealth, Health, NodeHealth, PrimaryView};
use crate::pool::Pool;
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
    /// `transaction` or `session`.
    pub pool_mode: &'static str,
    /// New batches are held by the admin console's `PAUSE` until `RESUME`.
    pub paused: bool,
    /// The configured primary first, then the replicas in configuration order.
    pub nodes: Vec<NodeStatus>,
}

/// One pool (node and user) of server connections.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub user: String,
    /// Most server connections.
    pub size: usize,
    /// Open now: leased plus idle.
    pub open: usize,
    pub idle: usize,
    /// Sessions waiting for a connection.
    pub waiting: usize,
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
    /// Taken out of read routing by the admin console's `DRAIN`.
    pub drained: bool,
    pub lag_seconds: Option<f64>,
    pub lag_bytes: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// Server connections of this node leased to sessions now (ranking's load tie-break).
    pub leases: usize,
    /// Its pools, one per user that connected.
    pub pools: Vec<PoolStatus>,
}

/// The status of every configured cluster, in name order.
pub fn build(
    topology: &Topology,
    health: &Health,
    pools: &[std::sync::Arc<Pool>],
    pauses: &Pauses,
) -> Status {
    let clusters = topology
        .clusters
        .iter()
        .map(|(name, spec)| {
            let aligned = health.clusters.get(name).map(|h| h.aligned_to(spec));
            let h = aligned.as_deref();
            let specs = std::iter::once(&spec.primary).chain(&spec.replicas);
            let nodes = specs
                .enumerate()
                .map(|(i, n)| node(n, h.and_then(|h| observed(h, i)), pools))
                .collect();
            let view = h.map_or(PrimaryView::Unknown, ClusterHealth::primary_view);
            let acting_primary = match view {
                PrimaryView::One(0) => Some(spec.primary.label().to_owned()),
                PrimaryView::One(i) => spec.replicas.get(i - 1).map(|n| n.label().to_owned()),
                _ => None,
            };
            let status = ClusterStatus {
                primary_view: match view {
                    PrimaryView::One(_) => "ok",
                    PrimaryView::None => "none",
                    PrimaryView::Conflict => "conflict",
                    PrimaryView::Unknown => "unknown",
                },
                acting_primary,
                pool_mode: spec.pooling.mode.as_str(),
                paused: pauses.is_paused(name),
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

fn node(
    spec: &std::sync::Arc<NodeSpec>,
    health: Option<&NodeHealth>,
    pools: &[std::sync::Arc<Pool>],
) -> NodeStatus {
    let mut node_pools: Vec<PoolStatus> = pools
        .iter()
        .filter(|p| std::sync::Arc::ptr_eq(&p.node, spec))
        .map(|p| {
            let s = p.stats();
            PoolStatus {
                user: p.user_name.clone(),
                size: s.size,
                open: s.open,
                idle: s.idle,
                waiting: s.waiting,
            }
        })
        .collect();
    node_pools.sort_by(|a, b| a.user.cmp(&b.user));
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
        drained: spec.is_drained(),
        lag_seconds: h.lag.map(|l| l.as_secs_f64()),
        lag_bytes: h.lag_bytes,
        rtt_ms: h.rtt.map(|r| r.as_secs_f64() * 1000.0),
        leases: spec.sessions.load(std::sync::atomic::Ordering::Relaxed),
        pools: node_pools,
    }
}

/// The document as pretty-printed JSON.
pub fn render(
    topology: &Topology,
    health: &Health,
    pools: &[std::sync::Arc<Pool>],
    pauses: &Pauses,
) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(&build(topology, health, pools, pauses))
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
        let s = build(&t, &Health::default(), &[], &Pauses::default());
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
            .all(|n| !n.up && !n.drained && n.observed_role == "unknown"));
        assert!(!app.paused);
    }

    #[test]
    fn observed_roles_lag_leases_and_pools() {
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
        let pools = crate::pool::Pools::new(Arc::new(crate::metrics::Metrics::new()));
        let user = t.users["app"].clone();
        pools.get(&t.clusters["app"].primary, &user, &Default::default());
        let pauses = Pauses::default();
        pauses.of("app").set(true);
        t.clusters["app"].replicas[0]
            .drained
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let json: serde_json::Value =
            serde_json::from_slice(&render(&t, &health, &pools.all(), &pauses)).unwrap();
        let app = &json["clusters"]["app"];
        assert_eq!(app["primary_view"], "ok");
        assert_eq!(app["acting_primary"], "127.0.0.1:5432");
        assert_eq!(app["pool_mode"], "transaction");
        assert_eq!(app["paused"], true);
        assert_eq!(app["nodes"][0]["drained"], false);
        assert_eq!(app["nodes"][1]["drained"], true);
        let pool = &app["nodes"][0]["pools"][0];
        assert_eq!(
            (&pool["user"], &pool["size"], &pool["open"]),
            (
                &serde_json::json!("app"),
                &serde_json::json!(20),
                &serde_json::json!(0)
            )
        );
        assert_eq!(app["nodes"][1]["pools"], serde_json::json!([]));
        let eu = &app["nodes"][1];
        assert_eq!(eu["configured_role"], "replica");
        assert_eq!(eu["observed_role"], "replica");
        assert_eq!(eu["region"], "eu-west");
        assert_eq!(eu["lag_seconds"], 0.25);
        assert_eq!(eu["lag_bytes"], 4096);
        assert_eq!(eu["rtt_ms"], 1.5);
        assert_eq!(eu["leases"], 2);
        assert_eq!(app["nodes"][0]["observed_role"], "primary");
    }
}
