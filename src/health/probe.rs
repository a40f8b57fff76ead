//! The probe loop: every `health.interval`, each node of a cluster is asked for its role and
//! WAL position over a persistent connection (the proxy's own login code, so node TLS settings
//! apply); the results are folded into one `ClusterHealth` and published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::task::JoinSet;

use super::tracker::Tracker;
use super::{parse_lsn, ClusterHealth, NodeHealth, PrimaryHistory};
use crate::app::Shared;
use crate::backend::{self, BackendConn};
use crate::protocol::frame;
use crate::topology::{NodeSpec, UserSpec};

const PROBE_SQL: &str = "select pg_is_in_recovery(), \
     case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end";

/// Starts a probe loop for each cluster of the current topology that has none yet (at start,
/// and after a reload adds clusters). A loop ends when its cluster leaves the topology.
pub fn spawn_missing(shared: &Arc<Shared>) {
    let topology = shared.topology.load_full();
    let mut running = shared.probing.lock().unwrap_or_else(|e| e.into_inner());
    for name in topology.clusters.keys() {
        if running.insert(name.clone()) {
            tokio::spawn(cluster_loop(shared.clone(), name.clone()));
        }
    }
}

struct Sample {
    in_recovery: bool,
    lsn: Option<u64>,
    sent_at: Instant,
    rtt: Duration,
}

/// What the loop keeps per node across rounds (and reloads, by node key).
struct NodeState {
    /// The spec `conn` was opened with; a reload that changes it (TLS, …) reconnects.
    spec: Arc<NodeSpec>,
    conn: Option<BackendConn>,
    tracker: Tracker,
    /// Recent round trips: the median is what ranking and the metric see.
    rtts: super::rtt::RttWindow,
    last: NodeHealth,
}

/// The probe user: `health.user`, else the first configured user.
pub(crate) fn probe_user(t: &crate::topology::Topology) -> Option<Arc<UserSpec>> {
    match t.health.user.as_ref().and_then(|u| t.users.get(u).cloned()) {
        Some(u) => Some(u),
        None => t.users_in_order.first().cloned(),
    }
}

async fn cluster_loop(shared: Arc<Shared>, name: String) {
    let mut states: std::collections::HashMap<Arc<str>, NodeState> = Default::default();
    let mut history = PrimaryHistory::new(Duration::from_secs(120));
    let mut recent: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let mut published: Vec<Arc<NodeSpec>> = Vec::new();
    let mut round_started: Option<Instant> = None;
    loop {
        // Every round reads the live topology: interval, nodes and users follow reloads.
        let interval = shared.topology.load().health.interval;
        if let Some(started) = round_started {
            let next = tokio::time::Instant::from_std(started + interval);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shared.drain.cancelled() => return,
            }
        }
        round_started = Some(Instant::now());
        let topology = shared.topology.load_full();
        let Some(cluster) = topology.clusters.get(&name).cloned() else {
            let mut running = shared.probing.lock().unwrap_or_else(|e| e.into_inner());
            if shared.topology.load().clusters.contains_key(&name) {
                continue; // re-added meanwhile: keep probing
            }
            running.remove(&name);
            drop(running);
            tracing::info!(cluster = %name, "cluster removed from the configuration; probes stop");
            shared.health.rcu(|h| {
                let mut clusters = h.clusters.clone();
                clusters.remove(&name);
                super::Health { clusters }
            });
            forget_metrics(&shared, &name, &published);
            let _ = shared
                .metrics
                .primary_conflict
                .remove_label_values(&[&name]);
            return;
        };
        let Some(user) = probe_user(&topology) else {
            continue;
        };
        let (timeout, fall, rise) = (
            topology.health.timeout,
            topology.health.fall,
            topology.health.rise,
        );
        let nodes: Vec<Arc<NodeSpec>> = cluster.nodes().cloned().collect();
        // Nodes no longer configured are forgotten; new ones start down and must rise.
        states.retain(|k, _| nodes.iter().any(|n| &n.key == k));
        for n in &nodes {
            let st = states.entry(n.key.clone()).or_insert_with(|| NodeState {
                spec: n.clone(),
                conn: None,
                tracker: Tracker::new(fall, rise),
                rtts: Default::default(),
                last: NodeHealth::default(),
            });
            st.tracker.set_limits(fall, rise);
            if !Arc::ptr_eq(&st.spec, n) {
                st.spec = n.clone();
                st.conn = None;
            }
        }
        // Series under labels no longer in use (removed or renamed nodes).
        let gone: Vec<Arc<NodeSpec>> = published
            .iter()
            .filter(|p| !nodes.iter().any(|n| n.label() == p.label()))
            .cloned()
            .collect();
        forget_metrics(&shared, &name, &gone);
        let mut probes = JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let conn = states.get_mut(&node.key).and_then(|s| s.conn.take());
            let (node, user) = (node.clone(), user.clone());
            probes.spawn(async move {
                let (conn, result) = probe(&node, &user, conn, timeout).await;
                (i, conn, result)
            });
        }
        let mut samples: Vec<Option<Sample>> = nodes.iter().map(|_| None).collect();
        while let Some(joined) = probes.join_next().await {
            let Ok((i, conn, result)) = joined else {
                continue;
            };
            let Some(st) = states.get_mut(&nodes[i].key) else {
                continue;
            };
            st.conn = conn;
            match result {
                Ok(mut s) => {
                    s.rtt = st.rtts.push(s.rtt);
                    samples[i] = Some(s);
                }
                Err(e) => tracing::debug!(node = %nodes[i], error = %e, "probe failed"),
            }
        }
        let now = Instant::now();
        let mut folded = fold(&samples, &mut history, now);
        for (i, node) in nodes.iter().enumerate() {
            let Some(st) = states.get_mut(&node.key) else {
                continue;
            };
            let h = if i == 0 {
                &mut folded.primary
            } else {
                &mut folded.replicas[i - 1]
            };
            // Sessions that failed to connect since the last round count as failed probes.
            for _ in 0..shared.connect_failures.take(node).min(fall) {
                if let Some(state) = st.tracker.observe(false) {
                    tracing::info!(node = %node, ?state, "node state changed (session connect failures)");
                }
            }
            if let Some(state) = st.tracker.observe(samples[i].is_some()) {
                tracing::info!(node = %node, ?state, "node state changed");
                if state == super::tracker::State::Down {
                    // Round trips from before the outage say nothing about the node that returns.
                    st.rtts = Default::default();
                }
            }
            if samples[i].is_none() && st.tracker.is_up() {
                // One missed probe within `fall`: keep what we last knew.
                *h = st.last.clone();
            }
            h.up = st.tracker.is_up();
            st.last = h.clone();
        }
        if let (Some(false), Some(lsn), Some(at)) = (
            folded.primary.in_recovery,
            folded.primary.lsn,
            folded.primary.sampled_at,
        ) {
            recent.push_back((at, lsn));
        }
        while recent
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > super::PRIMARY_SAMPLES_KEPT)
        {
            recent.pop_front();
        }
        folded.primary_samples = recent.iter().copied().collect();
        folded.keys = nodes.iter().map(|n| n.key.clone()).collect();
        publish_metrics(&shared, &cluster.name, &nodes, &folded);
        published = nodes;
        shared.health.rcu(|h| {
            let mut clusters = h.clusters.clone();
            clusters.insert(cluster.name.clone(), Arc::new(folded.clone()));
            super::Health { clusters }
        });
    }
}

/// Drops the per-node series of nodes that left the configuration.
fn forget_metrics(shared: &Shared, cluster: &str, nodes: &[Arc<NodeSpec>]) {
    let m = &shared.metrics;
    for node in nodes {
        let labels = [cluster, node.label()];
        let _ = m.node_up.remove_label_values(&labels);
        let _ = m.node_primary.remove_label_values(&labels);
        let _ = m.probe_rtt_seconds.remove_label_values(&labels);
        let _ = m.replica_lag_seconds.remove_label_values(&labels);
        let _ = m.replica_lag_bytes.remove_label_values(&labels);
    }
}

fn publish_metrics(shared: &Shared, cluster: &str, nodes: &[Arc<NodeSpec>], h: &ClusterHealth) {
    let m = &shared.metrics;
    let view = h.primary_view();
    m.primary_conflict
        .with_label_values(&[cluster])
        .set(i64::from(view == super::PrimaryView::Conflict));
    for (i, (node, n)) in nodes
        .iter()
        .zip(std::iter::once(&h.primary).chain(&h.replicas))
        .enumerate()
    {
        let labels = [cluster, node.label()].map(str::to_owned);
        let labels = [labels[0].as_str(), labels[1].as_str()];
        m.node_up.with_label_values(&labels).set(i64::from(n.up));
        let acting = matches!(view, super::PrimaryView::One(p) if p == i);
        m.node_primary
            .with_label_values(&labels)
            .set(i64::from(acting));
        if let Some(rtt) = n.rtt {
            m.probe_rtt_seconds
                .with_label_values(&labels)
                .set(rtt.as_secs_f64());
        }
        if let Some(lag) = n.lag {
            m.replica_lag_seconds
                .with_label_values(&labels)
                .set(lag.as_secs_f64());
        }
        if let Some(bytes) = n.lag_bytes {
            m.replica_lag_bytes
                .with_label_values(&labels)
                .set(bytes.min(i64::MAX as u64) as i64);
        }
    }
}

/// Turns one round of samples (primary first) into the published state.
fn fold(samples: &[Option<Sample>], history: &mut PrimaryHistory, now: Instant) -> ClusterHealth {
    let node = |s: &Option<Sample>| match s {
        None => NodeHealth::default(),
        Some(s) => NodeHealth {
            up: true,
            in_recovery: Some(s.in_recovery),
            lsn: s.lsn,
            sampled_at: Some(s.sent_at),
            lag: None,
            lag_bytes: None,
            rtt: Some(s.rtt),
            unprobed: false,
        },
    };
    let primary = samples.first().map(node).unwrap_or_default();
    if let (Some(false), Some(lsn), Some(at)) =
        (primary.in_recovery, primary.lsn, primary.sampled_at)
    {
        history.push(at, lsn);
    }
    let replicas = samples
        .iter()
        .skip(1)
        .map(|s| {
            let mut h = node(s);
            if let (Some(true), Some(replay)) = (h.in_recovery, h.lsn) {
                h.lag = history.lag_of(replay, now);
                h.lag_bytes = history.latest().map(|p| p.saturating_sub(replay));
            }
            h
        })
        .collect();
    ClusterHealth {
        primary,
        replicas,
        primary_samples: Vec::new(),
        keys: Vec::new(),
    }
}

async fn probe(
    node: &Arc<NodeSpec>,
    user: &UserSpec,
    conn: Option<BackendConn>,
    timeout: Duration,
) -> (Option<BackendConn>, Result<Sample, String>) {
    let mut conn = match conn {
        Some(c) => c,
        None => {
            let params = [("application_name".to_owned(), "pgmeridian-probe".to_owned())];
            match backend::connect(node, user, &params, timeout).await {
                Ok(c) => c,
                Err(e) => return (None, Err(e.to_string())),
            }
        }
    };
    let mut request = BytesMut::new();
    if let Err(e) = frontend::query(PROBE_SQL, &mut request) {
        return (None, Err(e.to_string()));
    }
    let sent_at = Instant::now();
    let reply = tokio::time::timeout(timeout, conn.exchange(&request)).await;
    let messages = match reply {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return (None, Err(e.to_string())),
        Err(_) => return (None, Err(format!("no answer within {timeout:?}"))),
    };
    let rtt = sent_at.elapsed();
    let row = messages
        .iter()
        .find(|m| m[0] == b'D')
        .map(|m| data_row_text(frame::body(m)));
    let result = match row.as_deref() {
        Some([Some(rec), lsn]) => Ok(Sample {
            in_recovery: rec == "t",
            lsn: lsn.as_deref().and_then(parse_lsn),
            sent_at,
            rtt,
        }),
        _ => Err("unexpected probe answer".to_owned()),
    };
    (Some(conn), result)
}

/// Text columns of a DataRow body.
fn data_row_text(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let Some((count, mut rest)) = body.split_first_chunk::<2>() else {
        return out;
    };
    for _ in 0..u16::from_be_bytes(*count) {
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            out.push(None);
            rest = after;
            continue;
        }
        let Some(value) = after.get(..len as usize) else {
            break;
        };
        out.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &after[len as usize..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_columns() {
        let body = [
            &[0u8, 3][..],
            &2i32.to_be_bytes(),
            b"ok",
            &(-1i32).to_be_bytes(),
            &0i32.to_be_bytes(),
        ]
        .concat();
        assert_eq!(
            data_row_text(&body),
            vec![Some("ok".into()), None, Some(String::new())]
        );
        assert_eq!(
            data_row_text(&[0, 1, 0, 0, 0, 9, b'x']),
            Vec::<Option<String>>::new()
        );
    }

    #[test]
    fn folding_a_round_computes_replica_lag() {
        let t0 = Instant::now();
        let mut history = PrimaryHistory::new(Duration::from_secs(60));
        let s = |rec, lsn, ms| {
            Some(Sample {
                in_recovery: rec,
                lsn: Some(lsn),
                sent_at: t0 + Duration::from_millis(ms),
                rtt: Duration::from_millis(1),
            })
        };
        fold(&[s(false, 100, 0), s(true, 100, 0)], &mut history, t0);
        let h = fold(
            &[s(false, 300, 500), s(true, 100, 500), None],
            &mut history,
            t0 + Duration::from_millis(600),
        );
        assert!(h.primary.up && h.primary.in_recovery == Some(false));
        assert_eq!(h.replicas[0].lag, Some(Duration::from_millis(100)));
        assert_eq!(h.replicas[0].lag_bytes, Some(200));
        assert!(!h.replicas[1].up);
    }
}
