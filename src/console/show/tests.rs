//! SHOW answers from hand-made snapshots: columns, values, and what is never shown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::clients::{ClientState, Clients};
use crate::health::{ClusterHealth, NodeHealth};

const YAML: &str = "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: { lat: 39.0, lon: -77.5 }
  eu-west: { lat: 53.3, lon: -6.3 }
users:
  - { name: app, password: s3cret-app }
  - { name: ops, password: s3cret-ops, admin: true }
clusters:
  app:
    primary: { host: 127.0.0.1, port: 5432, region: us-east, tls: disable }
    replicas:
      - { name: eu, host: 127.0.0.1, port: 5433, region: eu-west, tls: disable }
routing: { max_replica_lag: 3s }
";

struct Fixture {
    topology: Topology,
    health: Health,
    pools: crate::pool::Pools,
    clients: Clients,
    pauses: Pauses,
    metrics: Arc<Metrics>,
    config: Config,
}

fn fixture() -> Fixture {
    let config = Config::from_yaml(YAML, &|_| None).unwrap();
    let topology = Topology::build(&config).unwrap_or_else(|_| panic!("topology"));
    let up = |rec: bool| NodeHealth {
        up: true,
        in_recovery: Some(rec),
        rtt: Some(Duration::from_micros(1500)),
        lag: rec.then_some(Duration::from_millis(250)),
        lag_bytes: rec.then_some(4096),
        ..Default::default()
    };
    let mut health = Health::default();
    health.clusters.insert(
        "app".into(),
        Arc::new(ClusterHealth {
            primary: up(false),
            replicas: vec![up(true)],
            primary_samples: vec![],
            keys: vec![],
        }),
    );
    let metrics = Arc::new(Metrics::new());
    let pools = crate::pool::Pools::new(metrics.clone());
    Fixture {
        topology,
        health,
        pools,
        clients: Clients::default(),
        pauses: Pauses::default(),
        metrics,
        config,
    }
}

fn answer(f: &Fixture, what: Show) -> Table {
    let pools = f.pools.all();
    let clients = f.clients.all();
    let snap = Snapshot {
        topology: &f.topology,
        health: &f.health,
        pools: &pools,
        clients: &clients,
        pauses: &f.pauses,
        metrics: &f.metrics,
        config: &f.config,
        started: &f.config,
    };
    show(what, &snap)
}

fn names(t: &Table) -> Vec<&str> {
    t.columns.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn clusters_and_nodes_show_roles_pause_and_drain() {
    let f = fixture();
    f.pauses.of("app").set(true);
    f.topology.clusters["app"].replicas[0]
        .drained
        .store(true, Ordering::Relaxed);
    let addr = "192.0.2.1:5000".parse().unwrap();
    let _c = f.clients.register(crate::clients::ClientEntry::new(
        7, addr, "app", "app", false, "geoip",
    ));
    let c = answer(&f, Show::Clusters);
    assert_eq!(
        names(&c),
        [
            "cluster",
            "primary_view",
            "acting_primary",
            "pool_mode",
            "nodes",
            "replicas_up",
            "paused",
            "clients",
            "allowed_regions"
        ]
    );
    assert_eq!(
        c.rows,
        vec![vec![
            text("app"),
            text("ok"),
            text("127.0.0.1:5432"),
            text("transaction"),
            text("2"),
            text("1"),
            text("t"),
            text("1"),
            None
        ]]
    );
    let n = answer(&f, Show::Nodes);
    assert_eq!(n.column("node"), [Some("127.0.0.1:5432"), Some("eu")]);
    assert_eq!(n.column("role"), [Some("primary"), Some("replica")]);
    assert_eq!(n.column("up"), [Some("t"), Some("t")]);
    assert_eq!(n.column("drained"), [Some("f"), Some("t")]);
    assert_eq!(n.column("lag_seconds"), [None, Some("0.25")]);
    assert_eq!(n.column("lag_bytes"), [None, Some("4096")]);
    assert_eq!(n.column("rtt_ms"), [Some("1.5"), Some("1.5")]);
    assert_eq!(n.column("port"), [Some("5432"), Some("5433")]);
    let types: Vec<Type> = n.columns.iter().map(|(_, t)| *t).collect();
    assert_eq!(types[3], Type::Int4);
    assert_eq!(types[9], Type::Float8);
}

#[test]
fn pools_clients_and_servers_list_what_exists() {
    let f = fixture();
    let user = f.topology.users["app"].clone();
    let spec = &f.topology.clusters["app"];
    f.pools.get(&spec.primary, &user, &spec.pooling);
    let p = answer(&f, Show::Pools);
    assert_eq!(
        p.rows,
        vec![vec![
            text("app"),
            text("127.0.0.1:5432"),
            text("app"),
            text("transaction"),
            text("20"),
            text("0"),
            text("0"),
            text("0"),
            text("0")
        ]]
    );
    assert!(answer(&f, Show::Servers).rows.is_empty());
    let addr = "192.0.2.1:5000".parse().unwrap();
    let a = f.clients.register(crate::clients::ClientEntry::new(
        3, addr, "app", "app", true, "geoip",
    ));
    a.entry
        .set_state(ClientState::IdleInTransaction, Ordering::Relaxed);
    let c = answer(&f, Show::Clients);
    assert_eq!(c.column("id"), [Some("3")]);
    assert_eq!(c.column("address"), [Some("192.0.2.1:5000")]);
    assert_eq!(c.column("state"), [Some("idle in transaction")]);
    assert_eq!(c.column("tls"), [Some("t")]);
    assert!(c.column("connected_since")[0].is_some_and(|t| t.ends_with("+00")));
}

#[test]
fn stats_sum_the_routing_metrics_per_cluster() {
    let f = fixture();
    let routed = |target: &str, node: &str, reason: &str, n: u64| {
        f.metrics
            .routed
            .with_label_values(&["app", target, node, reason, "geoip"])
            .inc_by(n);
    };
    routed("replica", "eu", "read_nearest", 5);
    routed("primary", "p", "write", 3);
    routed("primary", "p", "readonly_retry", 1);
    f.metrics
        .routed
        .with_label_values(&["gone", "primary", "p", "write", "geoip"])
        .inc();
    f.metrics
        .refused
        .with_label_values(&["app", "no_primary"])
        .inc();
    f.metrics
        .pinned_sessions
        .with_label_values(&["app", "temp_table"])
        .set(2);
    let s = answer(&f, Show::Stats);
    assert_eq!(s.rows.len(), 1, "only configured clusters");
    assert_eq!(s.column("batches"), [Some("9")]);
    assert_eq!(s.column("to_primary"), [Some("4")]);
    assert_eq!(s.column("to_replica"), [Some("5")]);
    assert_eq!(s.column("read_nearest"), [Some("5")]);
    assert_eq!(s.column("readonly_retry"), [Some("1")]);
    assert_eq!(s.column("read_retry"), [Some("0")]);
    assert_eq!(s.column("refused"), [Some("1")]);
    assert_eq!(s.column("pinned_sessions"), [Some("2")]);
    assert_eq!(s.columns.len(), 4 + Reason::ALL.len() + 2);
}

#[test]
fn config_is_flat_key_values_without_passwords() {
    let f = fixture();
    let c = answer(&f, Show::Config);
    assert_eq!(names(&c), ["key", "value", "changeable"]);
    let get = |k: &str| {
        c.rows
            .iter()
            .find(|r| r[0].as_deref() == Some(k))
            .unwrap_or_else(|| panic!("no {k} in {:?}", c.rows))
            .clone()
    };
    assert_eq!(
        get("listen"),
        vec![text("listen"), text("127.0.0.1:0"), text("restart")]
    );
    assert_eq!(
        get("users[1].admin"),
        vec![text("users[1].admin"), text("true"), text("live")]
    );
    assert_eq!(
        get("users[0].password"),
        vec![text("users[0].password"), text("********"), text("live")]
    );
    assert_eq!(
        get("routing.max_replica_lag"),
        vec![text("routing.max_replica_lag"), text("3s"), text("live")]
    );
    assert_eq!(
        get("clusters.app.replicas[0].name"),
        vec![
            text("clusters.app.replicas[0].name"),
            text("eu"),
            text("live")
        ]
    );
    assert_eq!(get("admin_listen")[1], None);
    let all: String = c
        .rows
        .iter()
        .flat_map(|r| r.iter().flatten())
        .cloned()
        .collect();
    assert!(!all.contains("s3cret"), "a password leaked: {all}");
}

#[test]
fn help_lists_every_command() {
    let f = fixture();
    let h = answer(&f, Show::Help);
    let commands: Vec<&str> = h.column("command").into_iter().flatten().collect();
    for c in [
        "SHOW NODES",
        "RELOAD",
        "PAUSE [cluster]",
        "DRAIN [cluster] node",
    ] {
        assert!(commands.contains(&c), "{c}");
    }
    let v = answer(&f, Show::Version);
    assert!(v.column("version")[0].is_some_and(|v| v.starts_with("pgmeridian ")));
}
