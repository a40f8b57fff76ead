//! A fleet behind a real L4 balancer: HAProxy in TCP mode with `send-proxy-v2` and `/readyz`
//! health checks in front of two pgmeridian processes (instances 1 and 2, peers of each other)
//! over a real primary and two delayed replicas. One story: through HAProxy, GeoIP places
//! clients from two loopback addresses by the address PROXY v2 carries; a session reads its
//! own writes; a CancelRequest reaches the query whichever instance it lands on; then a rolling
//! restart (SIGTERM, drain, start again on the same port, one instance after the other) under
//! pgbench with a new connection per transaction ends with 0 failed transactions, and an open
//! transaction on a draining instance commits before its connection is closed with 57P01.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::haproxy::{Backend, Haproxy};
use common::process::ProxyProcess;
use common::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// replica0 in eu-west, replica1 in ap-southeast, each replaying 400 ms behind.
const REPLICA_DELAYS_MS: &[u64] = &[400, 400];

const EUROPE: &str = "127.0.0.2"; // GeoIP: Paris
const ASIA: &str = "127.0.0.3"; // GeoIP: Tokyo

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn geoip_file(dir: &Path) -> PathBuf {
    use mmdb_writer::{ipnet::IpNet, ReservedNetworks, Writer};
    let mut w = Writer::builder("GeoIP2-City")
        .reserved_networks(ReservedNetworks::Included)
        .build();
    let place = |city: &str, lat: f64, lon: f64| {
        serde_json::json!({
            "city": { "names": { "en": city } },
            "location": { "latitude": lat, "longitude": lon, "accuracy_radius": 50 },
        })
    };
    let paris = place("Paris", 48.85, 2.35);
    let tokyo = place("Tokyo", 35.68, 139.69);
    w.insert("127.0.0.2/32".parse::<IpNet>().unwrap(), &paris)
        .unwrap();
    w.insert("127.0.0.3/32".parse::<IpNet>().unwrap(), &tokyo)
        .unwrap();
    let path = dir.join("fleet-city.mmdb");
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    path
}

/// One instance's ports and configuration file text.
struct Instance {
    id: u16,
    port: u16,
    admin_port: u16,
    yaml: String,
}

impl Instance {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    async fn start(&self) -> ProxyProcess {
        let p = ProxyProcess::start(&self.yaml).await;
        assert_eq!(
            p.addr,
            self.addr(),
            "instance {} listens on its port",
            self.id
        );
        p
    }
}

/// Instances 1 and 2 with one shared `peers` list; HAProxy (on 127.0.0.1) is trusted for PROXY
/// headers, and so is each peer's address: a forwarded CancelRequest carries a LOCAL header.
/// Clients of 127.0.0.2 may also reach the instances directly (`cancel_forward_from`).
fn instances(geoip: &Path) -> [Instance; 2] {
    let c = cluster();
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, (port, _))| {
            format!(
                "  - {{ id: {}, address: \"127.0.0.1:{port}\", proxy_protocol: true }}\n",
                i + 1
            )
        })
        .collect();
    let instance = |i: usize| {
        let (port, admin_port) = ports[i];
        let id = i as u16 + 1;
        let yaml = format!(
            "listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
instance_id: {id}
peers:
{peers}region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  eu-west: {{ lat: 53.3, lon: -6.3 }}
  ap-southeast: {{ lat: 1.35, lon: 103.8 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
geoip: {{ database: {} }}
proxy_protocol: {{ trusted: [127.0.0.1] }}
cancel_forward_from: [{EUROPE}]
limits: {{ shutdown_delay: 1s, shutdown_timeout: 20s }}
clusters:
  app:
    primary: {{ name: primary, host: 127.0.0.1, port: {}, region: us-east{HARNESS_REQUIRE_AUTH} }}
    replicas:
      - {{ name: eu, host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
      - {{ name: ap, host: 127.0.0.1, port: {}, region: ap-southeast, tls: disable }}
",
            geoip.display(),
            c.primary.port,
            c.replicas[0].port,
            c.replicas[1].port,
        );
        Instance {
            id,
            port,
            admin_port,
            yaml,
        }
    };
    [instance(0), instance(1)]
}

/// The sum of an instance's metric lines that contain every `|`-separated part of `needle`.
async fn metric_of(i: &Instance, needle: &str) -> f64 {
    let (status, text) = http_get(i.admin(), "/metrics").await;
    assert!(status.contains("200"), "{status}");
    text.lines()
        .filter(|l| !l.starts_with('#') && needle.split('|').all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A connection from `source` (a loopback address: another client machine) to `to`.
async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(source), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Waits (20 s at most) until `ok` holds for a value read asynchronously.
async fn until<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pgbench(to: SocketAddr, args: &[&str]) -> tokio::process::Command {
    let bin = pgmeridian::localpg::PgBin::find().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = tokio::process::Command::new(bin.program("pgbench"));
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGSSLMODE")
        .args(["-h", "127.0.0.1", "-p", &to.port().to_string(), "-U", "app"])
        .args(args)
        .arg("app")
        .kill_on_drop(true);
    cmd
}

/// The number after `label` in pgbench's report.
fn reported(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    line[label.len()..]
        .split_whitespace()
        .next()?
        .split('/')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy() {
    let haproxy_bin = common::haproxy::binary();
    eprintln!("HAProxy: {}", haproxy_bin.display());
    let geoip = geoip_file(&cluster().base);
    let [one, two] = instances(&geoip);
    let mut running = [one.start().await, two.start().await];
    let lb_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let backends = [&one, &two].map(|i| Backend {
        name: if i.id == 1 { "one" } else { "two" },
        port: i.port,
        admin_port: i.admin_port,
    });
    let lb = Haproxy::start(lb_addr, &backends).await;

    geo_routing(&lb, [&one, &two]).await;
    read_your_writes(&lb, [&one, &two]).await;
    cancel_anywhere(&lb, [&one, &two]).await;

    // Rolling restart under pgbench, one new connection per transaction (-C): a client whose
    // instance drains reconnects through HAProxy to the other one.
    let init = pgbench(lb.addr, &["-i", "-s", "1", "-q"])
        .output()
        .await
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {init:?}");
    // pgbench's first read (`select count(*) from pgbench_branches`) comes over a new
    // connection, maybe to the other instance: only a causal token would carry the position
    // there, so let the replicas (400 ms behind) replay the tables first, as `setup` does.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut bench = pgbench(lb.addr, &["-C", "-c", "4", "-j", "2", "-T", "25", "-n"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, instance) in [&one, &two].into_iter().enumerate() {
        let name = backends[i].name;
        let open_txn = (i == 0).then_some(instance);
        let drained = restart(&lb, instance, name, &mut running[i], open_txn, &mut bench).await;
        eprintln!(
            "instance {}: drained and exited {drained:?} after SIGTERM; back in HAProxy",
            instance.id
        );
    }
    if bench.try_wait().unwrap().is_some() {
        let out = bench.wait_with_output().await.unwrap();
        panic!(
            "pgbench ended before the rolling restart was over:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = bench.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("pgbench during the rolling restart:\n{text}");
    assert!(out.status.success(), "pgbench failed:\n{text}");
    let processed = reported(&text, "number of transactions actually processed:").unwrap();
    assert_eq!(
        reported(&text, "number of failed transactions:"),
        Some(0.0),
        "{text}"
    );
    assert!(processed > 0.0, "{text}");
    drop(lb);
}

/// Clients from 127.0.0.2 (Paris) and 127.0.0.3 (Tokyo) read from the replica of their region,
/// on both instances (round robin): the address came through PROXY v2.
async fn geo_routing(lb: &Haproxy, fleet: [&Instance; 2]) {
    let c = cluster();
    for _ in 0..2 {
        for (source, replica) in [(EUROPE, &c.replicas[0]), (ASIA, &c.replicas[1])] {
            let client = connect_from(lb.addr, ip(source)).await;
            assert_eq!(
                served_port(&client).await,
                replica.port,
                "a read from {source}"
            );
        }
    }
    let mut located = 0.0;
    for i in fleet {
        let found = metric_of(i, "pgmeridian_geoip_lookups_total{result=\"found\"}").await;
        assert!(found >= 1.0, "instance {} located clients", i.id);
        located += found;
        let missed = metric_of(i, "pgmeridian_geoip_lookups_total{result=\"not_found\"}").await;
        assert_eq!(
            missed, 0.0,
            "instance {} saw only the clients' addresses",
            i.id
        );
    }
    assert_eq!(located, 4.0, "every client located by its own address");
}

/// A write and the read right after it on one connection through HAProxy, 20 times, with the
/// replicas 400 ms behind: every read sees its write.
async fn read_your_writes(lb: &Haproxy, fleet: [&Instance; 2]) {
    let t = table("ryw");
    setup(&format!(
        "create table {t} (id int primary key); grant all on {t} to app"
    ))
    .await;
    let client = connect_from(lb.addr, ip(EUROPE)).await;
    for id in 0..20 {
        client
            .execute(&format!("insert into {t} values ($1)"), &[&id])
            .await
            .unwrap();
        let seen: i64 = client
            .query_one(&format!("select count(*) from {t} where id = $1"), &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 1, "the read right after insert {id} saw it");
    }
    let mut pinned = 0.0;
    for i in fleet {
        pinned += metric_of(i, "reason=\"pinned_after_write\"").await;
    }
    assert!(
        pinned >= 1.0,
        "reads were kept on the primary while the replica lagged"
    );
}

/// `pg_sleep(30)` through HAProxy, cancelled by libpq's CancelRequest sent through HAProxy
/// (whichever instance gets it), then by one sent to the other instance directly from an
/// address in `cancel_forward_from`: forwarded, with a PROXY LOCAL header, to the instance
/// running it.
async fn cancel_anywhere(lb: &Haproxy, fleet: [&Instance; 2]) {
    for direct in [false, true] {
        until("no client sessions left", || async {
            metric_of(fleet[0], "pgmeridian_client_connections ").await
                + metric_of(fleet[1], "pgmeridian_client_connections ").await
                == 0.0
        })
        .await;
        let client = connect_from(lb.addr, ip(EUROPE)).await;
        let holder = if metric_of(fleet[0], "pgmeridian_client_connections ").await == 1.0 {
            0
        } else {
            1
        };
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move {
            let r = client.simple_query("select pg_sleep(30)").await;
            (r, Instant::now())
        });
        until("the sleep runs", || async {
            let n: i64 = superuser("app")
                .await
                .query_one(
                    "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == 1
        })
        .await;
        let other = fleet[1 - holder];
        let before = metric_of(other, "result=\"peer\"").await;
        let sent = Instant::now();
        let to = if direct { other.addr() } else { lb.addr };
        token
            .cancel_query_raw(tcp_from(EUROPE, to).await, NoTls)
            .await
            .expect("cancel request sent");
        let (result, ended) = sleeper.await.unwrap();
        let err = result.expect_err("the sleep must be cancelled");
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
        let latency = ended - sent;
        let how = if direct {
            "to the other instance"
        } else {
            "through HAProxy"
        };
        eprintln!("cancel {how}: the query ended {latency:?} after the request was sent");
        assert!(latency < Duration::from_secs(1), "cancel took {latency:?}");
        if direct {
            // libpq's cancel does not wait for the instance to close the connection, which
            // it does after counting the request.
            until("the forward counted", || async {
                metric_of(other, "result=\"peer\"").await == before + 1.0
            })
            .await;
        }
    }
}

/// SIGTERM to `instance`: HAProxy takes it out (its `/readyz` turns 503), it drains and exits,
/// starts again on the same ports, and HAProxy takes it back; it serves again. With
/// `open_txn`, a transaction open on it before the SIGTERM commits during the drain and its
/// connection is then closed with 57P01. Returns how long the drain took.
async fn restart(
    lb: &Haproxy,
    instance: &Instance,
    name: &str,
    running: &mut ProxyProcess,
    open_txn: Option<&Instance>,
    bench: &mut tokio::process::Child,
) -> Duration {
    let t = table("drain");
    let txn = match open_txn {
        None => None,
        Some(i) => {
            setup(&format!(
                "create table {t} (id int); grant all on {t} to app"
            ))
            .await;
            let tcp = tcp_from(EUROPE, i.addr()).await;
            let config: tokio_postgres::Config = conn_string(i.addr(), "app", APP_PASSWORD, "app")
                .parse()
                .unwrap();
            let (client, conn) = config.connect_raw(tcp, NoTls).await.unwrap();
            let conn = tokio::spawn(conn);
            client
                .batch_execute(&format!("begin; insert into {t} values (1)"))
                .await
                .unwrap();
            Some((client, conn))
        }
    };
    let term = Instant::now();
    running.terminate();
    lb.wait_for(name, "DOWN").await;
    let (status, _) = http_get(instance.admin(), "/readyz").await;
    assert!(status.contains("503"), "/readyz while leaving: {status}");
    if let Some((client, conn)) = txn {
        // The drain has begun once the listener is closed.
        until("the listener closes", || async {
            TcpStream::connect(instance.addr()).await.is_err()
        })
        .await;
        client
            .batch_execute(&format!("insert into {t} values (2); commit"))
            .await
            .expect("the open transaction finishes during the drain");
        let closed = conn.await.unwrap();
        let e = closed.expect_err("the connection is closed after the commit");
        assert_eq!(e.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{e}");
        assert!(client.simple_query("select 1").await.is_err());
        assert_eq!(rows_on_primary(&t).await, 2, "both rows committed");
    }
    let status = running.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "instance {} exit: {status}", instance.id);
    let drained = term.elapsed();
    *running = instance.start().await;
    lb.wait_for(name, "UP").await;
    let start = Instant::now();
    while metric_of(instance, "pgmeridian_routed_batches_total{").await == 0.0 {
        if bench.try_wait().unwrap().is_some() {
            let out =
                std::mem::replace(bench, tokio::process::Command::new("true").spawn().unwrap());
            let out = out.wait_with_output().await.unwrap();
            panic!(
                "pgbench ended while instance {} restarted:\n{}{}",
                instance.id,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the restarted instance to serve"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drained
}
