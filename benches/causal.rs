//! Causal-read latencies, measured on a real local primary and replicas with the proxy
//! in-process (release build): how soon a session's reads return to a replica after its write
//! (replicas caught up: the pin should end as soon as a replica has replayed the commit), and
//! the latency of a read right after a write when the primary is 90 ms away (one way, through
//! the delay relay) and the near replica replays 30 ms behind, with and without
//! `routing.causal_wait_max`. Prints medians and quartiles; asserts no latency.
//!
//! `cargo bench --bench causal` (about a minute). The suite's tests check the behaviour.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use pgmeridian::app::Proxy;
use pgmeridian::config::Config;
use pgmeridian::delay::DelayRelay;
use pgmeridian::localpg::{LocalCluster, ReplicaOptions};
use tokio_postgres::{Client, NoTls};

const PASSWORD: &str = "bench-secret";
const WRITES: usize = 300;

fn main() {
    // `cargo bench -- FILTER` for the criterion benches: run only when the filter fits.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !"causal".contains(f.as_str())) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = LocalCluster::start_primary("causal-bench").expect("a local PostgreSQL primary");
    c.sql(&format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"))
        .unwrap();
    c.sql("CREATE DATABASE app OWNER app").unwrap();
    c.primary
        .psql(
            "app",
            "CREATE TABLE t (id int primary key); GRANT ALL ON t TO app",
        )
        .unwrap();
    c.add_replica("caught-up", &ReplicaOptions::default())
        .unwrap();
    c.add_replica("behind", &ReplicaOptions { apply_delay_ms: 30 })
        .unwrap();
    rt.block_on(async {
        unpin(&c).await;
        far_primary(&c, "{}").await;
        far_primary(&c, "{ causal_wait_max: 200ms }").await;
    });
}

fn yaml(primary: u16, replica: u16, region: &str, routing: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
region: {region}
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  ap-southeast: {{ lat: 1.35, lon: 103.8 }}
users:
  - {{ name: app, password: {PASSWORD} }}
health: {{ interval: 1s }}
routing: {routing}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: {primary}, region: us-east, tls: disable }}
    replicas:
      - {{ host: 127.0.0.1, port: {replica}, region: ap-southeast, tls: disable }}
"
    )
}

async fn client(addr: SocketAddr) -> Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app password={PASSWORD} dbname=app",
            addr.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

async fn port_of(c: &Client) -> u16 {
    let p: i32 = c
        .query_one("select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    p as u16
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
    println!(
        "{what}: median {:.1} ms (p25 {:.1}, p75 {:.1}, p95 {:.1}; n={})",
        q(0.5).as_secs_f64() * 1e3,
        q(0.25).as_secs_f64() * 1e3,
        q(0.75).as_secs_f64() * 1e3,
        q(0.95).as_secs_f64() * 1e3,
        v.len()
    );
}

/// Replicas caught up, probes once a second: time from a write's answer until a read of the
/// same session is served by the replica.
async fn unpin(c: &LocalCluster) {
    let yaml = yaml(c.primary.port, c.replicas[0].port, "ap-southeast", "{}");
    let proxy = Proxy::start(&Config::from_yaml(&yaml, &|_| None).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = client(proxy.addr).await;
    let replica = c.replicas[0].port;
    let mut took = Vec::new();
    for i in 0..WRITES as i32 {
        s.execute("INSERT INTO t VALUES ($1)", &[&(i + 1_000_000)])
            .await
            .unwrap();
        let written = Instant::now();
        while port_of(&s).await != replica {
            assert!(written.elapsed() < Duration::from_secs(5), "never unpinned");
        }
        took.push(written.elapsed());
    }
    s.execute("DELETE FROM t", &[]).await.unwrap();
    report(
        "unpin after a write (replica caught up, probe interval 1s)",
        took,
    );
    proxy.shutdown().await;
}

/// Primary 90 ms away, replica 1 ms away and 30 ms behind: latency of the read right after
/// each write.
async fn far_primary(c: &LocalCluster, routing: &str) {
    let local = IpAddr::from([127, 0, 0, 1]);
    let relay = |port, ms| {
        DelayRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            SocketAddr::new(local, port),
            Duration::from_millis(ms),
        )
    };
    let primary = relay(c.primary.port, 90).await.unwrap();
    let replica = relay(c.replicas[1].port, 1).await.unwrap();
    let yaml = yaml(
        primary.addr().port(),
        replica.addr().port(),
        "ap-southeast",
        routing,
    );
    let proxy = Proxy::start(&Config::from_yaml(&yaml, &|_| None).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = client(proxy.addr).await;
    let (mut took, mut stale) = (Vec::new(), 0);
    for i in 0..(WRITES / 3) as i32 {
        s.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
        let start = Instant::now();
        let n: i64 = s
            .query_one("SELECT count(*) FROM t WHERE id = $1", &[&i])
            .await
            .unwrap()
            .get(0);
        took.push(start.elapsed());
        stale += usize::from(n != 1);
    }
    s.execute("DELETE FROM t", &[]).await.unwrap();
    report(
        &format!("read after write, primary 90 ms away, routing {routing} ({stale} stale)"),
        took,
    );
    proxy.shutdown().await;
}
