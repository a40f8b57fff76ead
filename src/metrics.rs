//! Every Prometheus metric family in one struct, registered under the `pgmeridian_` prefix.
//! Label values come from closed sets (cluster and node names from the config, route reasons,
//! roles): never SQL text, user names or client addresses.

use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    /// Configuration reloads by result: applied, unchanged, rejected.
    pub config_reloads: IntCounterVec,
    /// The live topology generation (1 at start, +1 per applied reload).
    pub config_generation: IntGauge,
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
        let client_connections =
            IntGauge::new("client_connections", "Client connections currently open.")
                .expect("valid metric definition");
        registry
            .register(Box::new(client_connections.clone()))
            .expect("metric registered once");
        Metrics {
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
            config_reloads: counter(
                &registry,
                "config_reloads_total",
                "Configuration reloads, by result (applied, unchanged, rejected).",
                &["result"],
            ),
            config_generation: {
                let g = IntGauge::new(
                    "config_generation",
                    "The live topology generation: 1 at start, +1 per applied reload.",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            registry,
        }
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
}
