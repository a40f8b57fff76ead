//! Cost of one routing decision, and of classifying plus routing a point SELECT (the per-query
//! work the proxy adds on top of forwarding bytes). Target: well under 1 µs combined.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pgmeridian::classify::{classify, Class, WriteFunctions};
use pgmeridian::config::{Region, Routing};
use pgmeridian::health::{ClusterHealth, NodeHealth};
use pgmeridian::route::{decide, replica_distances, Requirement, RouteInput, SessionRoute};
use pgmeridian::topology::{ClusterSpec, ConfiguredRole, NodeSpec};

fn node(role: ConfiguredRole, lat: f64, lon: f64) -> Arc<NodeSpec> {
    let at = Region { lat, lon };
    Arc::new(NodeSpec::plain("app", role, "10.0.0.1", 5432, "r", at))
}

fn bench(c: &mut Criterion) {
    let cluster = ClusterSpec {
        name: "app".into(),
        primary: node(ConfiguredRole::Primary, 39.0, -77.5),
        replicas: vec![
            node(ConfiguredRole::Replica(0), 53.3, -6.3),
            node(ConfiguredRole::Replica(1), 1.35, 103.8),
            node(ConfiguredRole::Replica(2), 45.5, -73.6),
        ],
        allowed_regions: Vec::new(),
        pooling: Default::default(),
    };
    let replica = |lsn| NodeHealth {
        up: true,
        in_recovery: Some(true),
        lsn: Some(lsn),
        lag: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let health = ClusterHealth {
        primary: NodeHealth {
            up: true,
            in_recovery: Some(false),
            lsn: Some(5000),
            ..Default::default()
        },
        replicas: vec![replica(4000), replica(5000), replica(4500)],
        primary_samples: Vec::new(),
        keys: Vec::new(),
    };
    let policy = Routing::default();
    let session = SessionRoute {
        requirement: Requirement::lsn(4200),
        ..Default::default()
    };
    let location = Region {
        lat: 39.0,
        lon: -77.5,
    };
    // As a session keeps them: measured once per topology.
    let km = replica_distances(&cluster, location);
    let now = Instant::now();
    let writes = WriteFunctions::default();

    c.bench_function("route_decide_read_with_lsn_requirement", |b| {
        b.iter(|| {
            let input = RouteInput {
                class: &Class::Read,
                hint: None,
                session: &session,
                cluster: &cluster,
                health: Some(&health),
                policy: &policy,
                location,
                replica_km: &km,
                now,
            };
            decide(std::hint::black_box(&input))
        })
    });
    c.bench_function("classify_and_route_point_select", |b| {
        b.iter(|| {
            let classified = classify(
                std::hint::black_box("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
                &writes,
            );
            let input = RouteInput {
                class: &classified.class,
                hint: classified.hint,
                session: &session,
                cluster: &cluster,
                health: Some(&health),
                policy: &policy,
                location,
                replica_km: &km,
                now,
            };
            decide(&input)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
