//! What each SHOW command answers, built from snapshots the caller loaded (topology, health,
//! pools, sessions, metrics, configuration). Pure: no I/O, no waiting; passwords never leave.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::core::Collector;

use super::parse::Show;
use super::table::{boolean, count, float, int, text, timestamp, Table, Type};
use crate::clients::ClientEntry;
use crate::config::Config;
use crate::control::Pauses;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::route::Reason;
use crate::status::Status;
use crate::topology::Topology;

/// Everything SHOW reads, loaded once per command.
pub struct Snapshot<'a> {
    pub topology: &'a Topology,
    pub health: &'a Health,
    pub pools: &'a [Arc<Pool>],
    pub clients: &'a [Arc<ClientEntry>],
    pub pauses: &'a Pauses,
    pub metrics: &'a Metrics,
    /// The configuration file last applied, and the one the proxy started with (whose
    /// restart-only settings are the ones in force).
    pub config: &'a Config,
    pub started: &'a Config,
}

/// The result set of `SHOW what`.
pub fn show(what: Show, s: &Snapshot) -> Table {
    match what {
        Show::Clusters => clusters(s),
        Show::Nodes => nodes(s),
        Show::Pools => pools(s),
        Show::Clients => clients(s),
        Show::Servers => servers(s),
        Show::Stats => stats(s),
        Show::Config => config::table(s.config, s.started),
        Show::Help => help(),
        Show::Version => {
            let mut t = Table::new(&[("version", Type::Text)]);
            t.push(vec![text(format!(
                "pgmeridian {}",
                env!("CARGO_PKG_VERSION")
            ))]);
            t
        }
    }
}

fn status(s: &Snapshot) -> Status {
    crate::status::build(s.topology, s.health, s.pools, s.pauses)
}

fn clusters(s: &Snapshot) -> Table {
    let mut t = Table::new(&[
        ("cluster", Type::Text),
        ("primary_view", Type::Text),
        ("acting_primary", Type::Text),
        ("pool_mode", Type::Text),
        ("nodes", Type::Int8),
        ("replicas_up", Type::Int8),
        ("paused", Type::Bool),
        ("clients", Type::Int8),
        ("allowed_regions", Type::Text),
    ]);
    for (name, c) in status(s).clusters {
        let spec = &s.topology.clusters[&name];
        let replicas_up = c
            .nodes
            .iter()
            .filter(|n| n.up && n.observed_role == "replica")
            .count();
        let clients = s.clients.iter().filter(|e| e.cluster == name).count();
        let allowed = (!spec.allowed_regions.is_empty()).then(|| spec.allowed_regions.join(","));
        t.push(vec![
            text(name),
            text(c.primary_view),
            c.acting_primary,
            text(c.pool_mode),
            count(c.nodes.len()),
            count(replicas_up),
            boolean(c.paused),
            count(clients),
            allowed,
        ]);
    }
    t
}

fn nodes(s: &Snapshot) -> Table {
    let mut t = Table::new(&[
        ("cluster", Type::Text),
        ("node", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int4),
        ("region", Type::Text),
        ("configured_role", Type::Text),
        ("role", Type::Text),
        ("up", Type::Bool),
        ("drained", Type::Bool),
        ("lag_seconds", Type::Float8),
        ("lag_bytes", Type::Int8),
        ("rtt_ms", Type::Float8),
        ("leases", Type::Int8),
    ]);
    for (cluster, c) in status(s).clusters {
        for n in c.nodes {
            t.push(vec![
                text(cluster.as_str()),
                text(n.name),
                text(n.host),
                int(n.port),
                text(n.region),
                text(n.configured_role),
                text(n.observed_role),
                boolean(n.up),
                boolean(n.drained),
                n.lag_seconds.and_then(float),
                n.lag_bytes
                    .map(|b| i64::try_from(b).unwrap_or(i64::MAX).to_string()),
                n.rtt_ms.and_then(float),
                count(n.leases),
            ]);
        }
    }
    t
}

fn pools(s: &Snapshot) -> Table {
    let mut t = Table::new(&[
        ("cluster", Type::Text),
        ("node", Type::Text),
        ("user", Type::Text),
        ("pool_mode", Type::Text),
        ("size", Type::Int8),
        ("open", Type::Int8),
        ("idle", Type::Int8),
        ("in_use", Type::Int8),
        ("waiting", Type::Int8),
    ]);
    for (cluster, c) in status(s).clusters {
        for n in &c.nodes {
            for p in &n.pools {
                t.push(vec![
                    text(cluster.as_str()),
                    text(n.name.as_str()),
                    text(p.user.as_str()),
                    text(c.pool_mode),
                    count(p.size),
                    count(p.open),
                    count(p.idle),
                    count(p.open.saturating_sub(p.idle)),
                    count(p.waiting),
                ]);
            }
        }
    }
    t
}

fn clients(s: &Snapshot) -> Table {
    let mut t = Table::new(&[
        ("id", Type::Int8),
        ("address", Type::Text),
        ("user", Type::Text),
        ("cluster", Type::Text),
        ("state", Type::Text),
        ("connected_since", Type::Timestamptz),
        ("tls", Type::Bool),
        ("located_by", Type::Text),
    ]);
    for e in s.clients {
        t.push(vec![
            int(i64::try_from(e.id).unwrap_or(i64::MAX)),
            text(e.addr.to_string()),
            text(e.user.as_str()),
            text(e.cluster.as_str()),
            text(e.state().as_str()),
            timestamp(e.connected_at),
            boolean(e.tls),
            text(e.located_by),
        ]);
    }
    t
}

fn servers(s: &Snapshot) -> Table {
    let mut t = Table::new(&[
        ("id", Type::Int8),
        ("cluster", Type::Text),
        ("node", Type::Text),
        ("user", Type::Text),
        ("state", Type::Text),
        ("backend_pid", Type::Int4),
        ("connected_since", Type::Timestamptz),
        ("idle_since", Type::Timestamptz),
    ]);
    let mut rows: Vec<(u64, Vec<Option<String>>)> = Vec::new();
    for pool in s.pools {
        for r in pool.servers() {
            let row = vec![
                int(i64::try_from(r.info.id).unwrap_or(i64::MAX)),
                text(pool.node.cluster.as_str()),
                text(pool.node.label()),
                text(pool.user_name.as_str()),
                text(r.state),
                int(r.info.pid),
                timestamp(r.info.opened_at),
                r.idle_since.and_then(timestamp),
            ];
            rows.push((r.info.id, row));
        }
    }
    rows.sort_by_key(|(id, _)| *id);
    for (_, row) in rows {
        t.push(row);
    }
    t
}

/// Sums of a counter or gauge family by (cluster, the value of `label`).
fn sums(c: &dyn Collector, label: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for family in c.collect() {
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in family.get_metric() {
            let get = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map_or(String::new(), |l| l.value().to_owned())
            };
            let value = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            *out.entry((get("cluster"), get(label))).or_insert(0.0) += value;
        }
    }
    out
}

fn stats(s: &Snapshot) -> Table {
    let mut columns: Vec<(&str, Type)> = vec![
        ("cluster", Type::Text),
        ("batches", Type::Int8),
        ("to_primary", Type::Int8),
        ("to_replica", Type::Int8),
    ];
    columns.extend(Reason::ALL.iter().map(|r| (r.as_str(), Type::Int8)));
    columns.extend([("refused", Type::Int8), ("pinned_sessions", Type::Int8)]);
    let mut t = Table::new(&columns);
    let by_reason = sums(&s.metrics.routed, "reason");
    let by_target = sums(&s.metrics.routed, "target");
    let refused = sums(&s.metrics.refused, "reason");
    let pinned = sums(&s.metrics.pinned_sessions, "kind");
    let total = |m: &BTreeMap<(String, String), f64>, cluster: &str| -> f64 {
        m.iter()
            .filter(|((c, _), _)| c == cluster)
            .map(|(_, v)| v)
            .sum()
    };
    let n = |x: f64| int(x.max(0.0) as i64);
    let mut names: Vec<&String> = s.topology.clusters.keys().collect();
    names.sort();
    for cluster in names {
        let get = |m: &BTreeMap<(String, String), f64>, k: &str| {
            m.get(&(cluster.clone(), k.to_owned()))
                .copied()
                .unwrap_or(0.0)
        };
        let mut row = vec![
            text(cluster.as_str()),
            n(total(&by_reason, cluster)),
            n(get(&by_target, "primary")),
            n(get(&by_target, "replica")),
        ];
        row.extend(Reason::ALL.iter().map(|r| n(get(&by_reason, r.as_str()))));
        row.push(n(total(&refused, cluster)));
        row.push(n(total(&pinned, cluster)));
        t.push(row);
    }
    t
}

/// The commands, as `SHOW HELP` lists them.
pub const HELP: &[(&str, &str)] = &[
    ("SHOW CLUSTERS", "each cluster: primary view, acting primary, pool mode, replicas up, paused, clients"),
    ("SHOW NODES", "each node: roles, up, drained, lag, probe RTT, server connections leased"),
    ("SHOW POOLS", "each pool (cluster, node, user): size, open, idle, in use, waiting"),
    ("SHOW CLIENTS", "each client session: address, user, cluster, state, connected since"),
    ("SHOW SERVERS", "each pooled backend connection: node, user, state, backend pid, connected since"),
    ("SHOW STATS", "each cluster: routed batches by target and reason, refused, pinned sessions"),
    ("SHOW CONFIG", "the configuration in force, one key per row (passwords hidden)"),
    ("SHOW VERSION", "the proxy's version"),
    ("SHOW HELP", "this list"),
    ("RELOAD", "re-read the configuration file, as SIGHUP does"),
    ("PAUSE [cluster]", "hold new batches of the cluster (no name: of all); returns once running transactions are done"),
    ("RESUME [cluster]", "let held batches go on"),
    ("DRAIN [cluster] node", "route no new reads to the node (kept across reloads)"),
    ("UNDRAIN [cluster] node", "let the node serve reads again"),
];

fn help() -> Table {
    let mut t = Table::new(&[("command", Type::Text), ("description", Type::Text)]);
    for (c, d) in HELP {
        t.push(vec![text(*c), text(*d)]);
    }
    t
}

mod config;
#[cfg(test)]
mod tests;
