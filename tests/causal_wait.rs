//! Waiting for a near replica instead of crossing the world: the primary sits 90 ms away
//! (one way, through the delay relay), the replica 1 ms away replaying 30 ms behind. With
//! `causal_wait_max: 200ms` a read right after a write waits on the replica for its position
//! (reason `waited_for_replica`) and is never stale; with the default (0) it never waits (it
//! goes to the primary, unless the probes already saw the replica replay it). Latencies are measured by `cargo bench --bench causal`, not asserted here.

mod common;

/// One replica, replaying 30 ms behind the primary.
pub const REPLICA_DELAYS_MS: &[u64] = &[30];

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pgmeridian::app::Proxy;
use pgmeridian::config::Config;
use pgmeridian::delay::DelayRelay;

use common::*;

struct Far {
    proxy: Proxy,
    _relays: (DelayRelay, DelayRelay),
}

/// A proxy in Singapore whose primary is in Virginia (90 ms one way) and whose replica is next
/// door (1 ms).
async fn far_primary(routing: &str) -> Far {
    let c = cluster();
    let local = IpAddr::from([127, 0, 0, 1]);
    let primary = DelayRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        SocketAddr::new(local, c.primary.port),
        Duration::from_millis(90),
    )
    .await
    .unwrap();
    let replica = DelayRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        SocketAddr::new(local, c.replicas[0].port),
        Duration::from_millis(1),
    )
    .await
    .unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0
region: ap-southeast
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  ap-southeast: {{ lat: 1.35, lon: 103.8 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
health: {{ interval: 200ms, timeout: 2s }}
routing: {routing}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: {}, region: us-east, tls: disable }}
    replicas:
      - {{ host: 127.0.0.1, port: {}, region: ap-southeast, tls: disable }}
",
        primary.addr().port(),
        replica.addr().port()
    );
    let proxy = Proxy::start(&Config::from_yaml(&yaml, &|_| None).unwrap())
        .await
        .unwrap();
    // Round trips and lag measured.
    wait_for("probes of both nodes", || {
        proxy
            .shared
            .health
            .load()
            .clusters
            .get("app")
            .is_some_and(|h| h.primary.rtt.is_some() && h.replicas[0].lag.is_some())
    })
    .await;
    Far {
        proxy,
        _relays: (primary, replica),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_waits_on_the_near_replica() {
    let t = table("wait");
    setup(&format!(
        "CREATE TABLE {t} (id int primary key); GRANT ALL ON {t} TO PUBLIC;"
    ))
    .await;
    let far = far_primary("{ causal_wait_max: 200ms }").await;
    let c = connect(far.proxy.addr).await;
    let mut stale = 0;
    for i in 0..40 {
        c.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&i])
            .await
            .unwrap();
        let row = c
            .query_one(
                &format!("SELECT count(*), inet_server_port() FROM {t} WHERE id = $1"),
                &[&i],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) != 1 {
            stale += 1;
        }
        assert_eq!(
            row.get::<_, i32>(1) as u16,
            cluster().replicas[0].port,
            "read {i} was served by the near replica"
        );
    }
    assert_eq!(stale, 0);
    let waited = metric(
        &far.proxy,
        "routed_batches_total|reason=\"waited_for_replica\"",
    );
    assert!(waited >= 40.0, "waited_for_replica: {waited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_causal_wait_max_a_read_never_waits() {
    let t = table("nowait");
    setup(&format!(
        "CREATE TABLE {t} (id int primary key); GRANT ALL ON {t} TO PUBLIC;"
    ))
    .await;
    let far = far_primary("{}").await;
    let c = connect(far.proxy.addr).await;
    let mut stale = 0;
    for i in 0..10 {
        c.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&i])
            .await
            .unwrap();
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {t} WHERE id = $1"), &[&i])
            .await
            .unwrap()
            .get(0);
        if n != 1 {
            stale += 1;
        }
    }
    assert_eq!(stale, 0);
    assert_eq!(
        metric(
            &far.proxy,
            "routed_batches_total|reason=\"waited_for_replica\""
        ),
        0.0,
        "never waits"
    );
}
