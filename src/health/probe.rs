//! The probe loop: every `health.interval`, each node of a cluster is asked for its role, WAL
//! position and (out of recovery) timeline over a persistent connection (the proxy's own login
//! code, so node TLS settings apply), and once per connection for its system identifier; the
//! results go through hysteresis (`tracker`) and the acting primary's WAL history
//! (`WalHistory`) into one `ClusterHealth`, which is published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::task::JoinSet;

use super::tracker::Tracker;
use super::{parse_lsn, ClusterHealth, NodeHealth, WalHistory};
use crate::app::Shared;
use crate::backend::{self, BackendConn};
use crate::protocol::frame;
use crate::topology::{NodeSpec, UserSpec};

/// Role, position (replay position on a standby), and on a primary the WAL file name, whose
/// first 8 hex digits are its timeline (`pg_walfile_name` fails during recovery).
const PROBE_SQL: &str = "select pg_is_in_recovery(), \
     case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end, \
     case when pg_is_in_recovery() then null else pg_walfile_name(pg_current_wal_lsn()) end";

/// Asked once per probe connection: which database system the server belongs to (nodes of
/// one replicated cluster share it). Not fatal when refused: the identifier stays unknown.
/// Asked between rounds of a replica that reads are waiting for.
const REPLAY_SQL: &str = "select pg_last_wal_replay_lsn()";

const SYSTEM_ID_SQL: &str = "select system_identifier from pg_control_system()";

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

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    in_recovery: bool,
    lsn: Option<u64>,
    /// Out of recovery: the timeline of the current WAL file.
    timeline: Option<u32>,
    /// Learned on the connection's first probe.
    system_id: Option<u64>,
    sent_at: Instant,
    rtt: Duration,
}

/// A probe connection and the system identifier its server reported on the first probe.
struct ProbeConn {
    conn: BackendConn,
    system_id: Option<u64>,
}

/// What the loop keeps per node across rounds (and reloads, by node key).
struct NodeState {
    /// The spec `conn` was opened with; a reload that changes it (TLS, …) reconnects.
    spec: Arc<NodeSpec>,
    conn: Option<ProbeConn>,
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
    let mut wal = WalHistory::new(Duration::from_secs(120));
    let mut published: Vec<Arc<NodeSpec>> = Vec::new();
    let mut round_started: Option<Instant> = None;
    let hint = shared.probe_hints.cluster(&name);
    loop {
        // Every round reads the live topology: interval, nodes and users follow reloads.
        let interval = shared.topology.load().health.interval;
        if let Some(started) = round_started {
            let stop = between_rounds(
                &shared,
                &name,
                &hint,
                &mut states,
                &published,
                started + interval,
            );
            if stop.await.is_break() {
                return;
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
        let mut health: Vec<NodeHealth> = samples.iter().map(node_health).collect();
        for (i, node) in nodes.iter().enumerate() {
            let Some(st) = states.get_mut(&node.key) else {
                continue;
            };
            let h = &mut health[i];
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
        let mut replicas = health;
        let primary = replicas.remove(0);
        let mut folded = ClusterHealth {
            primary,
            replicas,
            primary_samples: Vec::new(),
            keys: nodes.iter().map(|n| n.key.clone()).collect(),
        };
        if wal.fold(&mut folded, now) {
            if let Some(source) = wal.source() {
                tracing::info!(
                    cluster = %name,
                    node = %source.node,
                    system_id = ?source.system_id,
                    timeline = ?source.timeline,
                    "another primary acts: WAL history and replica lag start afresh from it"
                );
            }
        }
        publish_metrics(&shared, &cluster.name, &nodes, &folded);
        published = nodes;
        shared.health.rcu(|h| {
            let mut clusters = h.clusters.clone();
            clusters.insert(cluster.name.clone(), Arc::new(folded.clone()));
            super::Health { clusters }
        });
    }
}

/// Soonest a session's failed connect brings the next round after the last one.
const HINTED_ROUND_GAP: Duration = Duration::from_millis(100);
/// How often replicas' replay positions are asked while reads wait for a position.
const REPLAY_POLL: Duration = Duration::from_millis(2);
/// How long one replay question may take (it is skipped when slower).
const REPLAY_TIMEOUT: Duration = Duration::from_millis(200);

/// Waits until the next round is due at `next`, or sooner when a session's connect failed.
/// Meanwhile, while reads wait for a WAL position some up replica has not replayed, asks
/// those replicas for their replay position every `REPLAY_POLL` and publishes what they say.
/// Breaks at the drain.
async fn between_rounds(
    shared: &Shared,
    name: &str,
    hint: &super::hints::ClusterHint,
    states: &mut std::collections::HashMap<Arc<str>, NodeState>,
    nodes: &[Arc<NodeSpec>],
    next: Instant,
) -> std::ops::ControlFlow<()> {
    let started = next - shared.topology.load().health.interval;
    let mut polled: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next {
            return std::ops::ControlFlow::Continue(());
        }
        if hint.round_now_asked() && now >= started + HINTED_ROUND_GAP {
            hint.take_round_now();
            return std::ops::ControlFlow::Continue(());
        }
        let behind = replicas_behind(shared, name, nodes, hint.wanted(now));
        let poll_due = polled.map_or(now, |p| p + REPLAY_POLL);
        if !behind.is_empty() && now >= poll_due {
            polled = Some(now);
            refresh_replay(shared, name, states, nodes, &behind).await;
            continue;
        }
        let mut wake = next;
        if !behind.is_empty() {
            wake = wake.min(poll_due);
        }
        if hint.round_now_asked() {
            wake = wake.min(started + HINTED_ROUND_GAP);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            _ = hint.notified() => {}
            _ = shared.drain.cancelled() => return std::ops::ControlFlow::Break(()),
        }
    }
}

/// Indexes (in `nodes`) of up replicas in recovery whose published replay position is
/// below `wanted`.
fn replicas_behind(
    shared: &Shared,
    name: &str,
    nodes: &[Arc<NodeSpec>],
    wanted: u64,
) -> Vec<usize> {
    if wanted == 0 {
        return Vec::new();
    }
    let health = shared.health.load();
    let Some(h) = health.clusters.get(name) else {
        return Vec::new();
    };
    (0..nodes.len())
        .filter(|&i| {
            h.node(i).is_some_and(|n| {
                n.up && n.in_recovery == Some(true) && n.lsn.is_some_and(|l| l < wanted)
            })
        })
        .collect()
}

/// Asks the replicas at `which` for their replay position on their probe connections and
/// publishes the positions that moved (nothing else of their health changes here).
async fn refresh_replay(
    shared: &Shared,
    name: &str,
    states: &mut std::collections::HashMap<Arc<str>, NodeState>,
    nodes: &[Arc<NodeSpec>],
    which: &[usize],
) {
    let mut asks = JoinSet::new();
    for &i in which {
        let Some(pc) = states.get_mut(&nodes[i].key).and_then(|s| s.conn.take()) else {
            continue;
        };
        asks.spawn(async move {
            let mut pc = pc;
            let answer = ask(&mut pc.conn, REPLAY_SQL, REPLAY_TIMEOUT).await;
            let lsn = match &answer {
                Ok(Some(row)) => row
                    .first()
                    .cloned()
                    .flatten()
                    .as_deref()
                    .and_then(parse_lsn),
                _ => None,
            };
            // A connection whose question timed out is in an unknown state: the next round
            // opens a new one.
            (i, answer.is_ok().then_some(pc), lsn)
        });
    }
    let mut moved = Vec::new();
    while let Some(joined) = asks.join_next().await {
        let Ok((i, pc, lsn)) = joined else {
            continue;
        };
        if let Some(st) = states.get_mut(&nodes[i].key) {
            st.conn = pc;
        }
        if let Some(lsn) = lsn {
            moved.push((i, lsn));
        }
    }
    if moved.is_empty() {
        return;
    }
    shared.health.rcu(|h| {
        let mut clusters = h.clusters.clone();
        if let Some(current) = clusters.get(name) {
            let mut ch = ClusterHealth::clone(current);
            for &(i, lsn) in &moved {
                if let Some(n) = ch.node_mut(i) {
                    if n.in_recovery == Some(true) && n.lsn.is_none_or(|l| l < lsn) {
                        n.lsn = Some(lsn);
                    }
                }
            }
            clusters.insert(name.to_owned(), Arc::new(ch));
        }
        super::Health { clusters }
    });
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
        // No lag (down, promoted, not following the acting primary): no series, not a stale one.
        match n.lag {
            Some(lag) => m
                .replica_lag_seconds
                .with_label_values(&labels)
                .set(lag.as_secs_f64()),
            None => drop(m.replica_lag_seconds.remove_label_values(&labels)),
        }
        match n.lag_bytes {
            Some(bytes) => m
                .replica_lag_bytes
                .with_label_values(&labels)
                .set(bytes.min(i64::MAX as u64) as i64),
            None => drop(m.replica_lag_bytes.remove_label_values(&labels)),
        }
    }
}

/// A node as one probe saw it (a failed probe: nothing known). Lag comes later, from the
/// acting primary's history.
fn node_health(sample: &Option<Sample>) -> NodeHealth {
    match sample {
        None => NodeHealth::default(),
        Some(s) => NodeHealth {
            up: true,
            in_recovery: Some(s.in_recovery),
            lsn: s.lsn,
            sampled_at: Some(s.sent_at),
            lag: None,
            apply_delay: None,
            lag_bytes: None,
            rtt: Some(s.rtt),
            unprobed: false,
            system_id: s.system_id,
            timeline: s.timeline.filter(|_| !s.in_recovery),
        },
    }
}

async fn probe(
    node: &Arc<NodeSpec>,
    user: &UserSpec,
    conn: Option<ProbeConn>,
    timeout: Duration,
) -> (Option<ProbeConn>, Result<Sample, String>) {
    let mut pc = match conn {
        Some(c) => c,
        None => {
            let params = [("application_name".to_owned(), "pgmeridian-probe".to_owned())];
            let mut conn = match backend::connect(node, user, &params, timeout).await {
                Ok(c) => c,
                Err(e) => return (None, Err(e.to_string())),
            };
            let system_id = match ask(&mut conn, SYSTEM_ID_SQL, timeout).await {
                Ok(row) => row.as_deref().and_then(parse_system_id),
                Err(e) => return (None, Err(e)),
            };
            ProbeConn { conn, system_id }
        }
    };
    let sent_at = Instant::now();
    let row = match ask(&mut pc.conn, PROBE_SQL, timeout).await {
        Ok(row) => row,
        Err(e) => return (None, Err(e)),
    };
    let rtt = sent_at.elapsed();
    let result = row
        .as_deref()
        .and_then(parse_probe_row)
        .map(|(in_recovery, lsn, timeline)| Sample {
            in_recovery,
            lsn,
            timeline,
            system_id: pc.system_id,
            sent_at,
            rtt,
        })
        .ok_or_else(|| "unexpected probe answer".to_owned());
    (Some(pc), result)
}

/// Runs `sql` (one row expected) on a probe connection within `timeout`: the first row's text
/// columns, None when the server answered without a row (an error, say); Err when the
/// connection is unusable.
async fn ask(
    conn: &mut BackendConn,
    sql: &str,
    timeout: Duration,
) -> Result<Option<Vec<Option<String>>>, String> {
    let mut request = BytesMut::new();
    frontend::query(sql, &mut request).map_err(|e| e.to_string())?;
    let messages = match tokio::time::timeout(timeout, conn.exchange(&request)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {timeout:?}")),
    };
    Ok(messages
        .iter()
        .find(|m| m[0] == b'D')
        .map(|m| data_row_text(frame::body(m))))
}

/// (in recovery, position, timeline) from the columns of [`PROBE_SQL`].
fn parse_probe_row(row: &[Option<String>]) -> Option<(bool, Option<u64>, Option<u32>)> {
    match row {
        [Some(rec), lsn, walfile] => Some((
            rec == "t",
            lsn.as_deref().and_then(parse_lsn),
            walfile.as_deref().and_then(walfile_timeline),
        )),
        _ => None,
    }
}

/// The timeline in a WAL file name: its first 8 hex digits (`000000020000000000000003` → 2).
fn walfile_timeline(name: &str) -> Option<u32> {
    let hex = name
        .get(..8)
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
    u32::from_str_radix(hex, 16).ok()
}

/// `system_identifier` is a uint64 that PostgreSQL shows as a signed bigint.
fn parse_system_id(row: &[Option<String>]) -> Option<u64> {
    match row {
        [Some(id)] => id.parse::<i64>().ok().map(|v| v as u64),
        _ => None,
    }
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
    fn probe_rows() {
        let row = |cols: &[Option<&str>]| {
            cols.iter()
                .map(|c| c.map(str::to_owned))
                .collect::<Vec<_>>()
        };
        // (columns, parsed)
        let cases = [
            (
                row(&[
                    Some("f"),
                    Some("0/3000060"),
                    Some("000000010000000000000003"),
                ]),
                Some((false, Some(0x300_0060), Some(1))),
            ),
            (
                row(&[Some("f"), Some("1/0"), Some("0000000A0000000100000000")]),
                Some((false, Some(1 << 32), Some(10))),
            ),
            // A standby: no WAL file name (pg_walfile_name fails during recovery).
            (
                row(&[Some("t"), Some("0/5000000"), None]),
                Some((true, Some(0x500_0000), None)),
            ),
            // A standby that has replayed nothing yet.
            (row(&[Some("t"), None, None]), Some((true, None, None))),
            (
                row(&[Some("f"), Some("0/1"), Some("xyz")]),
                Some((false, Some(1), None)),
            ),
            (
                row(&[Some("f"), Some("0/1"), Some("+0000001000")]),
                Some((false, Some(1), None)),
            ),
            // Answers of another shape (an older probe, a proxy in between).
            (row(&[Some("f"), Some("0/1")]), None),
            (row(&[None, Some("0/1"), None]), None),
            (row(&[]), None),
        ];
        for (cols, want) in cases {
            assert_eq!(parse_probe_row(&cols), want, "{cols:?}");
        }
    }

    #[test]
    fn system_identifiers() {
        let cases: [(&[Option<&str>], Option<u64>); 5] = [
            (
                &[Some("7312345678901234567")],
                Some(7_312_345_678_901_234_567),
            ),
            // Shown as a signed bigint when the top bit is set.
            (&[Some("-1")], Some(u64::MAX)),
            (&[None], None),
            (&[Some("abc")], None),
            (&[], None),
        ];
        for (cols, want) in cases {
            let cols: Vec<Option<String>> = cols.iter().map(|c| c.map(str::to_owned)).collect();
            assert_eq!(parse_system_id(&cols), want, "{cols:?}");
        }
    }

    #[test]
    fn a_sample_becomes_node_health_without_lag() {
        let t0 = Instant::now();
        let sample = |in_recovery, timeline| Sample {
            in_recovery,
            lsn: Some(7),
            timeline,
            system_id: Some(42),
            sent_at: t0,
            rtt: Duration::from_millis(2),
        };
        let primary = node_health(&Some(sample(false, Some(3))));
        assert_eq!(
            primary,
            NodeHealth {
                up: true,
                in_recovery: Some(false),
                lsn: Some(7),
                sampled_at: Some(t0),
                rtt: Some(Duration::from_millis(2)),
                system_id: Some(42),
                timeline: Some(3),
                ..Default::default()
            }
        );
        let standby = node_health(&Some(sample(true, Some(3))));
        assert_eq!(standby.timeline, None, "standbys write no timeline");
        assert_eq!(standby.lag, None, "lag comes from the WAL history");
        assert_eq!(node_health(&None), NodeHealth::default());
    }
}
