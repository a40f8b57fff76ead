//! Geo routing end to end: clients located by PROXY v2 address + a generated GeoIP database,
//! by startup option, or by the proxy's region, each reading from the nearest replica; the next
//! nearest when that one is down or lagging; RTT between equals (via the delay relay); and a
//! second cluster with its own primary. One sequential story: it stops and pauses replicas.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use pgmeridian::app::Proxy;
use pgmeridian::config::Config;
use pgmeridian::delay::DelayRelay;
use pgmeridian::localpg::LocalCluster;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

/// replica0 sits in eu-west, replica1 in ap-southeast, replica2 in us-east (the proxy's region).
const REPLICA_DELAYS_MS: &[u64] = &[0, 0, 0];

const EUROPE: &str = "198.51.100.7"; // GeoIP: Paris
const ASIA: &str = "203.0.113.9"; // GeoIP: Tokyo
const NOWHERE: &str = "192.0.2.10"; // not in the database

fn geoip_file(dir: &std::path::Path) -> std::path::PathBuf {
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
    w.insert(
        "198.51.100.0/24".parse::<IpNet>().unwrap(),
        &place("Paris", 48.85, 2.35),
    )
    .unwrap();
    w.insert(
        "203.0.113.0/24".parse::<IpNet>().unwrap(),
        &place("Tokyo", 35.68, 139.69),
    )
    .unwrap();
    let path = dir.join("test-city.mmdb");
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    path
}

/// A PROXY v2 header saying the connection comes from `client`.
fn proxy_v2(client: &str) -> Vec<u8> {
    let ip: std::net::Ipv4Addr = client.parse().unwrap();
    let mut h = pgmeridian::proxy_protocol::V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&ip.octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&6432u16.to_be_bytes());
    h
}

/// A session as if from `client` (behind a load balancer), with extra libpq `options`.
async fn session_from(
    proxy: SocketAddr,
    client: &str,
    options: Option<&str>,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&proxy_v2(client)).await.unwrap();
    let mut cfg = tokio_postgres::Config::new();
    cfg.user("app").password(APP_PASSWORD).dbname(db);
    if let Some(o) = options {
        cfg.options(o);
    }
    let (c, conn) = cfg.connect_raw(tcp, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

async fn read_from(proxy: SocketAddr, client: &str, options: Option<&str>) -> u16 {
    let c = session_from(proxy, client, options, "app").await.unwrap();
    served_port(&c).await
}

fn replica_health(p: &Proxy, cluster: &str, i: usize) -> pgmeridian::health::NodeHealth {
    p.shared
        .health
        .load()
        .clusters
        .get(cluster)
        .map(|h| h.replicas[i].clone())
        .unwrap_or_default()
}

fn yaml(c: &LocalCluster, ledger: &LocalCluster, geoip: &std::path::Path) -> String {
    format!(
        "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  eu-west: {{ lat: 53.3, lon: -6.3 }}
  ap-southeast: {{ lat: 1.35, lon: 103.8 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
geoip: {{ database: {} }}
proxy_protocol: {{ trusted: [127.0.0.1] }}
routing: {{ max_replica_lag: 400ms }}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: {}, region: us-east }}
    replicas:
      - {{ name: eu, host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
      - {{ name: ap, host: 127.0.0.1, port: {}, region: ap-southeast, tls: disable }}
      - {{ name: us, host: 127.0.0.1, port: {}, region: us-east, tls: disable }}
  ledger:
    primary: {{ host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
",
        geoip.display(),
        c.primary.port,
        c.replicas[0].port,
        c.replicas[1].port,
        c.replicas[2].port,
        ledger.primary.port,
    )
}

fn ledger_cluster() -> LocalCluster {
    let l = LocalCluster::start_primary("ledger")
        .unwrap_or_else(|e| panic!("this test needs a real PostgreSQL server: {e}"));
    l.sql(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"))
        .unwrap();
    l.sql("CREATE DATABASE ledger OWNER app").unwrap();
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_read_from_the_replica_nearest_to_them() {
    let c = cluster();
    let (eu, ap, us) = (c.replicas[0].port, c.replicas[1].port, c.replicas[2].port);
    let ledger = tokio::task::spawn_blocking(ledger_cluster).await.unwrap();
    let geoip = geoip_file(&c.base);
    let config = Config::from_yaml(&yaml(c, &ledger, &geoip), &|_| None).unwrap();
    let p = Proxy::start(&config).await.unwrap();
    wait_for("every replica probed up", || {
        (0..3).all(|i| replica_health(&p, "app", i).serves_reads(Duration::from_secs(1)))
    })
    .await;

    // Located by GeoIP from the PROXY v2 source address.
    assert_eq!(
        read_from(p.addr, EUROPE, None).await,
        eu,
        "Europe reads in eu-west"
    );
    assert_eq!(
        read_from(p.addr, ASIA, None).await,
        ap,
        "Asia reads in ap-southeast"
    );
    assert_eq!(
        read_from(p.addr, NOWHERE, None).await,
        us,
        "no GeoIP match: nearest to the proxy's region"
    );
    assert_eq!(metric(&p, "geoip_lookups_total{result=\"found\"}"), 2.0);
    assert_eq!(metric(&p, "geoip_lookups_total{result=\"not_found\"}"), 1.0);
    assert!(
        metric(
            &p,
            "routed_batches_total|geo=\"geoip\"|node=\"eu\"|reason=\"read_nearest\""
        ) >= 1.0
    );
    assert!(metric(&p, "routed_batches_total|geo=\"proxy_region\"|node=\"us\"") >= 1.0);

    // The startup option wins over GeoIP; a bad one is an error, not a fallback.
    let opt = Some("-c pgmeridian.region=ap-southeast");
    assert_eq!(
        read_from(p.addr, EUROPE, opt).await,
        ap,
        "option beats GeoIP"
    );
    let coords = Some("-c pgmeridian.location=50.1,8.7"); // Frankfurt
    assert_eq!(
        read_from(p.addr, ASIA, coords).await,
        eu,
        "coordinates beat GeoIP"
    );
    assert!(
        metric(
            &p,
            "routed_batches_total|geo=\"startup_option\"|node=\"ap\""
        ) >= 1.0
    );
    let err = refused(
        session_from(p.addr, EUROPE, Some("-c pgmeridian.region=atlantis"), "app").await,
        "an unknown region",
    );
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023");
    assert!(
        db.message()
            .contains("unknown pgmeridian.region \"atlantis\""),
        "{}",
        db.message()
    );

    // The nearest replica down: the next nearest serves, and the reason says so.
    pg_ctl("stop c.replicas[0]", || c.replicas[0].stop());
    wait_for("eu down", || !replica_health(&p, "app", 0).up).await;
    assert_eq!(
        read_from(p.addr, EUROPE, None).await,
        us,
        "next nearest to Paris"
    );
    assert!(
        metric(
            &p,
            "routed_batches_total|node=\"us\"|reason=\"unhealthy_excluded\""
        ) >= 1.0
    );
    pg_ctl("start c.replicas[0]", || c.replicas[0].start());
    wait_for("eu back", || {
        replica_health(&p, "app", 0).serves_reads(Duration::from_secs(1))
    })
    .await;
    assert_eq!(read_from(p.addr, EUROPE, None).await, eu, "eu serves again");

    // The nearest replica lagging: same, with lag_excluded.
    let eu_direct = direct(eu).await;
    eu_direct
        .batch_execute("select pg_wal_replay_pause()")
        .await
        .unwrap();
    let writer = tokio::spawn(async {
        let su = superuser("app").await;
        su.batch_execute("create table if not exists geo_ticks (at timestamptz)")
            .await
            .unwrap();
        loop {
            if su
                .batch_execute("insert into geo_ticks values (now())")
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    wait_for("eu beyond max_replica_lag", || {
        replica_health(&p, "app", 0)
            .lag
            .is_some_and(|l| l > Duration::from_millis(600))
    })
    .await;
    assert_eq!(
        read_from(p.addr, EUROPE, None).await,
        us,
        "lagging eu is passed over"
    );
    assert!(
        metric(
            &p,
            "routed_batches_total|node=\"us\"|reason=\"lag_excluded\""
        ) >= 1.0
    );
    eu_direct
        .batch_execute("select pg_wal_replay_resume()")
        .await
        .unwrap();
    writer.abort();

    // A second cluster by database name, with its own primary and health.
    let l = session_from(p.addr, EUROPE, None, "ledger").await.unwrap();
    l.batch_execute("create table if not exists entries (id int)")
        .await
        .unwrap();
    assert_eq!(
        served_port(&l).await,
        ledger.primary.port,
        "ledger's own primary"
    );
    let a = session_from(p.addr, EUROPE, None, "app").await.unwrap();
    a.batch_execute("create temp table t (id int)")
        .await
        .unwrap(); // pins to the primary
    assert_eq!(served_port(&a).await, c.primary.port, "app's primary");
    assert!(p.shared.health.load().clusters.contains_key("ledger"));
    drop(ledger);
}

async fn direct(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Two replicas in one region: the one with the lower measured RTT gets the reads, although it
/// is listed second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn between_equals_the_lower_rtt_replica_serves() {
    let c = cluster();
    let far = DelayRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), c.replicas[1].port),
        Duration::from_millis(30),
    )
    .await
    .unwrap();
    let near = DelayRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), c.replicas[2].port),
        Duration::from_millis(1),
    )
    .await
    .unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  eu-west: {{ lat: 53.3, lon: -6.3 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: {}, region: us-east }}
    replicas:
      - {{ name: slow, host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
      - {{ name: fast, host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
",
        c.primary.port,
        far.addr().port(),
        near.addr().port()
    );
    let p = Proxy::start(&Config::from_yaml(&yaml, &|_| None).unwrap())
        .await
        .unwrap();
    wait_for("both RTTs measured", || {
        (0..2).all(|i| replica_health(&p, "app", i).rtt.is_some())
    })
    .await;
    let (slow, fast) = (
        replica_health(&p, "app", 0).rtt,
        replica_health(&p, "app", 1).rtt,
    );
    println!("probe RTT: slow {slow:?}, fast {fast:?}");
    assert!(
        slow.unwrap() >= Duration::from_millis(60),
        "the relay adds 2 × 30 ms"
    );
    for _ in 0..10 {
        let s = connect(p.addr).await;
        assert_eq!(
            served_port(&s).await,
            c.replicas[2].port,
            "the low-RTT replica"
        );
    }
    assert_eq!(metric(&p, "routed_batches_total|node=\"slow\""), 0.0);
    assert!(
        metric(
            &p,
            "routed_batches_total|node=\"fast\"|reason=\"read_nearest\""
        ) >= 10.0
    );
}

/// PROXY headers count only from trusted addresses, and trusted peers must send one.
#[tokio::test]
async fn proxy_headers_only_from_trusted_peers() {
    use tokio::io::AsyncReadExt;
    let untrusted = proxy("proxy_protocol: { trusted: [10.0.0.0/8] }\n").await;
    let mut s = TcpStream::connect(untrusted.addr).await.unwrap();
    s.write_all(&proxy_v2(EUROPE)).await.unwrap();
    s.write_all(&startup_packet(&[("user", "app"), ("database", "app")]))
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        reply.first() == Some(&b'E') && text.contains("08P01"),
        "{text}"
    );
    assert!(text.contains("not in proxy_protocol.trusted"), "{text}");
    // A plain client from an untrusted address is served as usual.
    let ok = connect(untrusted.addr).await;
    ok.simple_query("select 1").await.unwrap();

    let trusted = proxy("proxy_protocol: { trusted: [127.0.0.0/8] }\n").await;
    let err = refused(
        connect_as(trusted.addr, "app", APP_PASSWORD).await,
        "no header",
    );
    let msg = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("expected a PROXY protocol header")),
        "{err:?}"
    );
    // v1 text header works too.
    let mut tcp = TcpStream::connect(trusted.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 6432\r\n")
        .await
        .unwrap();
    let mut cfg = tokio_postgres::Config::new();
    cfg.user("app").password(APP_PASSWORD).dbname("app");
    let (client, conn) = cfg.connect_raw(tcp, NoTls).await.unwrap();
    tokio::spawn(conn);
    client.simple_query("select 1").await.unwrap();
}
