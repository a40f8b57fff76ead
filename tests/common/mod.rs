//! Test harness: one real PostgreSQL primary (plus streaming replicas on request) per test
//! binary, started with initdb / pg_basebackup / pg_ctl; the proxy runs in-process on a free
//! loopback port. Fails loudly when PostgreSQL cannot be started; never skips.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;

use pgmeridian::app::Proxy;
use pgmeridian::config::Config;
use pgmeridian::localpg::{LocalCluster, ReplicaOptions};
use pgmeridian::protocol::backend::ErrorFields;
use pgmeridian::protocol::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

pub const APP_PASSWORD: &str = "app-secret";
pub const MD5_PASSWORD: &str = "md5-secret";

pub mod haproxy;
pub mod process;

static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
static CA: OnceLock<TestCa> = OnceLock::new();

/// A test certificate authority and a server certificate it signed for `localhost` only.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The test CA as a file (inside the cluster directory, removed with it), for `tls_ca:`.
pub fn ca_file() -> std::path::PathBuf {
    cluster().base.join("test-ca.pem")
}

pub fn test_ca() -> &'static TestCa {
    CA.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgmeridian test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    })
}

/// The shared cluster for this test binary: a primary and one streaming replica per entry of
/// the binary's `REPLICA_DELAYS_MS` (its `recovery_min_apply_delay`), with roles `app` (SCRAM),
/// `pgm_md5` (MD5) and `pgm_trust` (trust), and database `app`.
pub fn cluster() -> &'static LocalCluster {
    CLUSTER.get_or_init(|| {
        let fail = |e: String| -> ! {
            panic!("this test needs a real PostgreSQL server and could not start one:\n{e}")
        };
        let mut c = LocalCluster::start_primary("test").unwrap_or_else(|e| fail(e));
        c.sql(&format!(
            "CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';
             SET password_encryption = 'md5';
             CREATE ROLE pgm_md5 LOGIN PASSWORD '{MD5_PASSWORD}';
             CREATE ROLE pgm_trust LOGIN;"
        ))
        .unwrap_or_else(|e| fail(e));
        c.sql("CREATE DATABASE app OWNER app")
            .unwrap_or_else(|e| fail(e));
        let ca = test_ca();
        c.enable_ssl(&ca.cert_pem, &ca.key_pem)
            .unwrap_or_else(|e| fail(e));
        std::fs::write(c.base.join("test-ca.pem"), &ca.ca_pem)
            .unwrap_or_else(|e| fail(e.to_string()));
        c.primary
            .psql("app", "GRANT ALL ON SCHEMA public TO pgm_md5, pgm_trust")
            .unwrap_or_else(|e| fail(e));
        for (i, delay) in crate::REPLICA_DELAYS_MS.iter().enumerate() {
            let opts = ReplicaOptions {
                apply_delay_ms: *delay,
            };
            c.add_replica(&format!("replica{i}"), &opts)
                .unwrap_or_else(|e| fail(e));
        }
        c
    })
}

/// YAML for a proxy in front of `c` (cluster `app`), with `extra` appended at top level.
pub fn config_yaml(c: &LocalCluster, extra: &str) -> String {
    config_yaml_with(c, "", extra)
}

/// What the harness's nodes let the proxy answer: its cluster has an MD5 role (`pgm_md5`,
/// which `raw_login` uses) and a trusted one besides SCRAM roles. The proxy's default is
/// `[scram-sha-256, none]`; [`strict_auth`] turns this back into it.
pub const HARNESS_REQUIRE_AUTH: &str = ", require_auth: [scram-sha-256, md5, none]";

/// `yaml` (from [`config_yaml`]) with the nodes' `require_auth` removed: the proxy's default.
pub fn strict_auth(yaml: &str) -> String {
    yaml.replace(HARNESS_REQUIRE_AUTH, "")
}

/// Like [`config_yaml`], with `primary_extra` added to the primary's node entry.
pub fn config_yaml_with(c: &LocalCluster, primary_extra: &str, extra: &str) -> String {
    let replicas: String = c
        .replicas
        .iter()
        .map(|r| {
            format!(
                "      - {{ host: 127.0.0.1, port: {}, region: eu-west, tls: disable{HARNESS_REQUIRE_AUTH} }}\n",
                r.port
            )
        })
        .collect();
    format!(
        "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  eu-west: {{ lat: 53.3, lon: -6.3 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
  - {{ name: pgm_md5, password: {MD5_PASSWORD}, auth: md5 }}
  - {{ name: pgm_trust, password: anything }}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: {}, region: us-east{HARNESS_REQUIRE_AUTH}{primary_extra} }}
    replicas:
{replicas}{extra}",
        c.primary.port
    )
}

pub fn config(c: &LocalCluster, extra: &str) -> Config {
    let yaml = config_yaml(c, extra);
    Config::from_yaml(&yaml, &|_| None)
        .unwrap_or_else(|ps| panic!("test config invalid: {ps:?}\n{yaml}"))
}

/// Starts an in-process proxy in front of the shared cluster.
pub async fn proxy(extra: &str) -> Proxy {
    let c = cluster();
    Proxy::start(&config(c, extra))
        .await
        .unwrap_or_else(|ps| panic!("proxy did not start: {ps:?}"))
}

pub fn conn_string(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} password={password} dbname={db} sslmode=disable",
        addr.ip(),
        addr.port()
    )
}

/// A tokio-postgres client through the proxy as `app`.
pub async fn connect(addr: SocketAddr) -> Client {
    connect_as(addr, "app", APP_PASSWORD)
        .await
        .expect("connect through the proxy")
}

pub async fn connect_as(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&conn_string(addr, user, password, "app"), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A direct connection to the primary as the superuser (for checks behind the proxy's back).
pub async fn superuser(db: &str) -> Client {
    let c = cluster();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            c.primary.port
        ),
        NoTls,
    )
    .await
    .expect("direct superuser connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Rows of `table` counted directly on the primary, behind the proxy's back.
pub async fn rows_on_primary(table: &str) -> i64 {
    superuser("app")
        .await
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// A table name unique to the calling test.
pub fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}

/// The error of a connection attempt that must fail.
pub fn refused<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("{what}: the connection was accepted"),
        Err(e) => e,
    }
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Logs in as the MD5 user over a raw socket and returns the socket, ready for queries.
pub async fn raw_login(addr: std::net::SocketAddr) -> TcpStream {
    raw_login_keyed(addr).await.0
}

/// Like [`raw_login`], also returning the session's cancel key (BackendKeyData: pid, key).
pub async fn raw_login_keyed(addr: std::net::SocketAddr) -> (TcpStream, i32, i32) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", "pgm_md5"), ("database", "app")]))
        .await
        .unwrap();
    let mut head = [0u8; 13];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[..9], &[b'R', 0, 0, 0, 12, 0, 0, 0, 5], "MD5 request");
    let salt: [u8; 4] = head[9..13].try_into().unwrap();
    let hash =
        postgres_protocol::authentication::md5_hash(b"pgm_md5", MD5_PASSWORD.as_bytes(), salt);
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((hash.len() + 5) as u32).to_be_bytes());
    msg.extend_from_slice(hash.as_bytes());
    msg.push(0);
    s.write_all(&msg).await.unwrap();
    // Read through ReadyForQuery.
    let mut buf = bytes::BytesMut::new();
    let mut keys = (0, 0);
    loop {
        while let Some(m) = frame::split_message(&mut buf, 1 << 20).unwrap() {
            if m[0] == b'Z' {
                return (s, keys.0, keys.1);
            }
            if m[0] == b'K' {
                let body = frame::body(&m);
                keys = (
                    i32::from_be_bytes(body[0..4].try_into().unwrap()),
                    i32::from_be_bytes(body[4..8].try_into().unwrap()),
                );
            }
            assert_ne!(
                m[0],
                b'E',
                "login failed: {:?}",
                ErrorFields::parse(frame::body(&m))
            );
        }
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "closed during login"
        );
    }
}

/// The same YAML with the replicas removed (for tests about the primary alone).
pub fn without_replicas(yaml: &str) -> String {
    yaml.lines()
        .filter(|l| !l.trim_start().starts_with("- { host: 127.0.0.1"))
        .map(|l| {
            if l.trim() == "replicas:" {
                "    replicas: []"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

pub fn primary_port() -> i32 {
    i32::from(cluster().primary.port)
}

/// A proxy whose first probe rounds have published every node's state.
pub async fn proxy_ready(extra: &str) -> Proxy {
    let p = proxy(extra).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    p
}

/// Runs `sql` on the primary as the superuser and waits until the replicas have replayed it.
pub async fn setup(sql: &str) {
    superuser("app").await.batch_execute(sql).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
}

/// GETs `path` from the admin listener with plain HTTP/1.0; returns (status line, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The backend port that answered `c`'s next statement (`inet_server_port()`).
pub async fn served_port(c: &Client) -> u16 {
    let port: i32 = c
        .query_one("select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    port as u16
}

/// Runs a blocking server control step (`pg_ctl` stop, start, promote) from an async test.
/// The proxy runs on the test's runtime: blocking a worker in place would stall its tasks (and
/// the clients' connection tasks) until the step returns, which reorders client traffic
/// around the event under test.
pub fn pg_ctl(what: &str, step: impl FnOnce() -> Result<(), String>) {
    tokio::task::block_in_place(step).unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// The sum of the proxy's metric lines that contain every `|`-separated part of `needle`.
pub fn metric(p: &Proxy, needle: &str) -> f64 {
    let text = String::from_utf8(p.shared.metrics.render()).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && needle.split('|').all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (20 s at most) until `ok` holds.
pub async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client through the proxy as `app` whose connection comes from `source` (another
/// loopback address: another client machine, as far as the proxy can tell).
pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let config: tokio_postgres::Config = conn_string(addr, "app", APP_PASSWORD, "app")
        .parse()
        .unwrap();
    let (client, conn) = config.connect_raw(stream, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Like [`http_get`], with extra request headers.
pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}
