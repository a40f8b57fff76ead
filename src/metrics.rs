//! Every Prometheus metric family in one struct, registered under the `pgmeridian_` prefix.
//! Label values come from closed sets (cluster and node names from the config, route reasons,
//! roles, error kinds): never SQL text, user names or client addresses. Gauges that count
//! live things are held by RAII guards ([`GaugeGuard`]).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ErrorKind;

/// Batch latencies from 100 µs (a local cache hit) to 10 s (a long report), about three
/// buckets per decade.
const BATCH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Read-your-writes pins: replication catch-up from a few ms to beyond the window maximum.
const PIN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Where a batch ran: the `target` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRole {
    Primary,
    Replica,
}

impl TargetRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetRole::Primary => "primary",
            TargetRole::Replica => "replica",
        }
    }
}

/// Keeps a gauge incremented while it lives.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Metrics {
    registry: Registry,
    /// Batches routed, by cluster, target role and reason.
    pub routed: IntCounterVec,
    /// Batches answered with an error instead of being routed, by cluster and reason.
    pub refused: IntCounterVec,
    pub client_connections: IntGauge,
    /// 1 if the node's last probes succeed (after hysteresis), by cluster and node.
    pub node_up: IntGaugeVec,
    /// 1 if the node is the one acting as primary.
    pub node_primary: IntGaugeVec,
    pub replica_lag_seconds: GaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub probe_rtt_seconds: GaugeVec,
    /// 1 while more than one node of the cluster claims to be the primary.
    pub primary_conflict: IntGaugeVec,
    /// GeoIP lookups of client addresses, by result.
    pub geoip_lookups: IntCounterVec,
    /// From forwarding a batch to its ReadyForQuery, by target role (use [`Metrics::batch_done`]).
    pub batch_duration: HistogramVec,
    batch_duration_by_target: [Histogram; 2],
    /// Server connections of the pools, by cluster, node and state (active, idle, pinned).
    pub pool_server_connections: IntGaugeVec,
    /// Sessions waiting for a server connection, by cluster and node.
    pub pool_clients_waiting: IntGaugeVec,
    /// How long sessions waited for a server connection when they had to.
    pub pool_wait_seconds: HistogramVec,
    /// Server connections leased to sessions, by cluster and node.
    pub pool_leases: IntCounterVec,
    /// Server connections closed, by cluster, node and reason.
    pub pool_closes: IntCounterVec,
    /// Backend logins made for the pools, by cluster and node: each costs the backend a
    /// process and the proxy a SCRAM exchange.
    pub backend_logins: IntCounterVec,
    /// Sessions pinned to the primary for life, by cluster and kind (`sticky_feature`).
    pub pinned_sessions: IntGaugeVec,
    /// How long a session's reads stayed on the primary after its write (read-your-writes).
    pub pin_after_write: Histogram,
    /// Errors reported to clients (or connections refused), by [`ErrorKind`].
    pub errors: IntCounterVec,
    /// Configuration reloads, by result (`applied`, `rejected`, `unchanged`).
    pub config_reloads: IntCounterVec,
    /// The live topology's generation (1 at start, +1 per applied reload).
    pub config_generation: IntGauge,
    /// CancelRequests received, by what became of them (`cancel::forward::Outcome`).
    pub cancel_requests: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("pgmeridian".into()), None).expect("valid prefix");
        let client_connections = int_gauge(
            &registry,
            "client_connections",
            "Client connections currently open.",
        );
        let batch_duration = histogram_vec(
            &registry,
            "batch_duration_seconds",
            "Time from forwarding a statement batch to its ReadyForQuery, by target role.",
            &["target"],
            BATCH_BUCKETS,
        );
        let batch_duration_by_target = [TargetRole::Primary, TargetRole::Replica]
            .map(|t| batch_duration.with_label_values(&[t.as_str()]));
        let pin_after_write = Histogram::with_opts(
            HistogramOpts::new(
                "pin_after_write_seconds",
                "Read-your-writes: time from a session's write to its first read a replica served, for sessions that had reads kept on the primary meanwhile.",
            )
            .buckets(PIN_BUCKETS.to_vec()),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(pin_after_write.clone()))
            .expect("metric registered once");
        let errors = counter(
            &registry,
            "errors_total",
            "Errors reported to clients and connections refused, by kind.",
            &["kind"],
        );
        for kind in ErrorKind::ALL {
            errors.with_label_values(&[kind.as_str()]);
        }
        let config_reloads = counter(
            &registry,
            "config_reloads_total",
            "Configuration reloads, by result (applied, rejected, unchanged).",
            &["result"],
        );
        for result in ["applied", "rejected", "unchanged"] {
            config_reloads.with_label_values(&[result]);
        }
        let cancel_requests = counter(
            &registry,
            "cancel_requests_total",
            "CancelRequests received, by result: backend (sent to the backend running the query), backend_failed, no_target (unknown key, or nothing running), peer (forwarded to the fleet instance that minted the key), peer_failed, unknown_instance (minted by an instance not among peers: dropped), loop (forwarded here by a peer for another instance: dropped).",
            &["result"],
        );
        for outcome in crate::cancel::forward::Outcome::ALL {
            cancel_requests.with_label_values(&[outcome.as_str()]);
        }
        Metrics {
            batch_duration,
            batch_duration_by_target,
            pool_server_connections: int_gauge_vec(
                &registry,
                "pool_server_connections",
                "Server connections of the pools, by cluster, node and state (active: leased; idle; pinned: leased to a session for its life).",
                &["cluster", "node", "state"],
            ),
            pool_clients_waiting: int_gauge_vec(
                &registry,
                "pool_clients_waiting",
                "Sessions waiting for a free server connection, by cluster and node.",
                &["cluster", "node"],
            ),
            pool_wait_seconds: histogram_vec(
                &registry,
                "pool_wait_seconds",
                "How long sessions that had to wait waited for a server connection.",
                &["cluster", "node"],
                BATCH_BUCKETS,
            ),
            pool_leases: counter(
                &registry,
                "pool_leases_total",
                "Server connections leased to sessions (one per transaction in transaction mode).",
                &["cluster", "node"],
            ),
            pool_closes: counter(
                &registry,
                "pool_closes_total",
                "Server connections closed, by reason (idle_timeout, lifetime, broken, discarded, reload, shrink).",
                &["cluster", "node", "reason"],
            ),
            backend_logins: counter(
                &registry,
                "backend_logins_total",
                "Backend logins made for the pools, by cluster and node.",
                &["cluster", "node"],
            ),
            pinned_sessions: int_gauge_vec(
                &registry,
                "pinned_sessions",
                "Sessions pinned to the primary for the rest of their life, by cluster and kind.",
                &["cluster", "kind"],
            ),
            pin_after_write,
            errors,
            config_reloads,
            cancel_requests,
            config_generation: int_gauge(
                &registry,
                "config_generation",
                "Generation of the live configuration: 1 at start, +1 for each applied reload.",
            ),
            routed: counter(
                &registry,
                "routed_batches_total",
                "Statement batches routed, by cluster, target role, node, reason and how the client was located.",
                &["cluster", "target", "node", "reason", "geo"],
            ),
            refused: counter(
                &registry,
                "refused_batches_total",
                "Statement batches answered with an error instead of being routed.",
                &["cluster", "reason"],
            ),
            client_connections,
            node_up: int_gauge_vec(
                &registry,
                "node_up",
                "1 if the node answers its probes (after fall/rise hysteresis).",
                &["cluster", "node"],
            ),
            node_primary: int_gauge_vec(
                &registry,
                "node_primary",
                "1 if the node is acting as the primary (not in recovery).",
                &["cluster", "node"],
            ),
            replica_lag_seconds: gauge_vec(
                &registry,
                "replica_lag_seconds",
                "How far a replica's replay is behind the primary, in time.",
                &["cluster", "node"],
            ),
            replica_lag_bytes: int_gauge_vec(
                &registry,
                "replica_lag_bytes",
                "How far a replica's replay is behind the primary, in WAL bytes.",
                &["cluster", "node"],
            ),
            probe_rtt_seconds: gauge_vec(
                &registry,
                "probe_rtt_seconds",
                "Round-trip time of the last probe query.",
                &["cluster", "node"],
            ),
            primary_conflict: int_gauge_vec(
                &registry,
                "primary_conflict",
                "1 while more than one node of the cluster claims to be the primary.",
                &["cluster"],
            ),
            geoip_lookups: counter(
                &registry,
                "geoip_lookups_total",
                "GeoIP lookups of client addresses, by result (found, not_found, off, error).",
                &["result"],
            ),
            registry,
        }
    }

    /// A batch sent to `target` got its ReadyForQuery `elapsed` after it was forwarded.
    pub fn batch_done(&self, target: TargetRole, elapsed: std::time::Duration) {
        let i = match target {
            TargetRole::Primary => 0,
            TargetRole::Replica => 1,
        };
        self.batch_duration_by_target[i].observe(elapsed.as_secs_f64());
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.with_label_values(&[kind.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_families_with_labels() {
        let m = Metrics::new();
        m.routed
            .with_label_values(&["app", "replica", "eu:5432", "read_nearest", "geoip"])
            .inc();
        m.primary_conflict.with_label_values(&["app"]).set(1);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("pgmeridian_routed_batches_total{cluster=\"app\",geo=\"geoip\",node=\"eu:5432\",reason=\"read_nearest\",target=\"replica\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE pgmeridian_primary_conflict gauge"),
            "{text}"
        );
    }

    #[test]
    fn closed_label_sets_start_at_zero_and_guards_count_live_things() {
        let m = Metrics::new();
        let text = String::from_utf8(m.render()).unwrap();
        for kind in ErrorKind::ALL {
            let series = format!("pgmeridian_errors_total{{kind=\"{}\"}} 0", kind.as_str());
            assert!(text.contains(&series), "{series}:\n{text}");
        }
        assert!(text.contains("pgmeridian_config_reloads_total{result=\"unchanged\"} 0"));
        assert!(text.contains("pgmeridian_batch_duration_seconds_count{target=\"replica\"} 0"));
        let gauge = || m.pinned_sessions.with_label_values(&["app", "x"]).get();
        let a = GaugeGuard::new(m.pinned_sessions.with_label_values(&["app", "x"]));
        let b = GaugeGuard::new(m.pinned_sessions.with_label_values(&["app", "x"]));
        assert_eq!(gauge(), 2);
        drop(a);
        assert_eq!(gauge(), 1);
        drop(b);
        assert_eq!(gauge(), 0);
        m.batch_done(TargetRole::Primary, std::time::Duration::from_micros(300));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                "pgmeridian_batch_duration_seconds_bucket{target=\"primary\",le=\"0.0005\"} 1"
            ),
            "{text}"
        );
    }
}
