//! 10,000 idle clients on one proxy process, half of them over TLS: what each costs in proxy memory, that none holds a server connection, and that a new client is still served at once.
//!
//! The clients log in with a minimal SCRAM client over raw sockets (the salted password is
//! derived once), each from its own loopback address, run one `SELECT 1` (so that their
//! session has read, written and leased a server connection once), and then sit idle. The proxy runs as its
//! own process so that its resident memory (`VmRSS`) can be read before and after each half.

mod common;

/// No replicas: idle clients are about the proxy, not routing.
pub const REPLICA_DELAYS_MS: &[u64] = &[];

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use pgmeridian::backend::scram::{salt_password, ScramClient};
use pgmeridian::protocol::backend::ErrorFields;
use pgmeridian::protocol::frame;
use pgmeridian::wire::MessageIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::process::ProxyProcess;
use common::*;

const PLAIN: usize = 5_000;
const TLS: usize = 5_000;
/// Logins in flight at once (within the proxy's handshake caps set below).
const CONCURRENT: usize = 64;
/// The target for a plain idle client.
const TARGET_PLAIN_KIB: f64 = 16.0;

/// An idle client: a logged-in socket, plain or TLS.
enum Idle {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// A salt, its iteration count and the salted password for them.
type Salted = (Vec<u8>, u32, [u8; 32]);

/// The salted password for the proxy's salt, derived once (SCRAM's 4096 rounds).
static SALTED: Mutex<Option<Salted>> = Mutex::new(None);

fn salted(salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut cache = SALTED.lock().unwrap();
    match &*cache {
        Some((s, i, p)) if s == salt && *i == iterations => *p,
        _ => {
            let p = salt_password(APP_PASSWORD, salt, iterations);
            *cache = Some((salt.to_vec(), iterations, p));
            p
        }
    }
}

fn put_message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(body);
}

/// Reads one message, failing on an ErrorResponse.
async fn expect<S: AsyncRead + AsyncWrite + Unpin>(io: &mut MessageIo<S>, what: &str) -> BytesMut {
    let m = io
        .read_message(1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if m[0] == b'E' {
        panic!("{what}: {:?}", ErrorFields::parse(frame::body(&m)));
    }
    m
}

/// The SASL data of an Authentication message with `code`.
fn sasl(m: &[u8], code: u32) -> Vec<u8> {
    let body = frame::body(m);
    assert!(
        m[0] == b'R' && body[..4] == code.to_be_bytes(),
        "expected auth {code}"
    );
    body[4..].to_vec()
}

/// Startup, SCRAM-SHA-256 and the greeting up to ReadyForQuery.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> S {
    let mut io = MessageIo::new(stream);
    io.wbuf
        .extend_from_slice(&startup_packet(&[("user", "app"), ("database", "app")]));
    io.flush().await.unwrap();
    sasl(&expect(&mut io, "SASL offer").await, 10);
    let mut client = ScramClient::new("idleclientnonce");
    let first = client.client_first();
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(&first);
    put_message(&mut io.wbuf, b'p', &body);
    io.flush().await.unwrap();
    let raw = sasl(&expect(&mut io, "server-first").await, 11);
    let server_first = client.parse_server_first(&raw, 100_000).unwrap();
    let key = salted(&server_first.salt, server_first.iterations);
    let last = client.client_final(&raw, &server_first, key);
    put_message(&mut io.wbuf, b'p', &last);
    io.flush().await.unwrap();
    let server_final = sasl(&expect(&mut io, "server-final").await, 12);
    client.verify_server_final(&server_final).unwrap();
    while expect(&mut io, "greeting").await[0] != b'Z' {}
    assert!(io.rbuf.is_empty(), "nothing after ReadyForQuery");
    io.io
}

/// Runs `SELECT 1` on a logged-in stream.
async fn select_one<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let mut io = MessageIo::new(stream);
    put_message(&mut io.wbuf, b'Q', b"SELECT 1\0");
    io.flush().await.unwrap();
    let mut tags = String::new();
    loop {
        let m = expect(&mut io, "SELECT 1").await;
        tags.push(m[0] as char);
        if m[0] == b'Z' {
            break;
        }
    }
    assert_eq!(tags, "TDCZ");
}

/// A socket from the `n`th loopback address (127.1.0.1 onwards): every client its own address.
async fn connect_from_nth(proxy: SocketAddr, n: usize) -> tokio::net::TcpStream {
    let source = Ipv4Addr::new(
        127,
        1 + (n / 62_500) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    );
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(proxy).await.unwrap()
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(test_ca().ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn open(proxy: SocketAddr, n: usize, tls: Option<&tokio_rustls::TlsConnector>) -> Idle {
    let mut tcp = connect_from_nth(proxy, n).await;
    let Some(connector) = tls else {
        let mut s = login(tcp).await;
        select_one(&mut s).await;
        return Idle::Plain(s);
    };
    let mut ssl_request = BytesMut::new();
    ssl_request.put_u32(8);
    ssl_request.put_u32(80_877_103);
    tcp.write_all(&ssl_request).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
        .await
        .unwrap();
    assert_eq!(answer[0], b'S', "the proxy offers TLS");
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut s = login(tls).await;
    select_one(&mut s).await;
    Idle::Tls(Box::new(s))
}

/// Opens `count` idle clients, numbered from `first`, `CONCURRENT` at a time.
async fn open_many(
    proxy: SocketAddr,
    first: usize,
    count: usize,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Vec<Idle> {
    futures_util::stream::iter(first..first + count)
        .map(|n| open(proxy, n, tls))
        .buffer_unordered(CONCURRENT)
        .collect()
        .await
}

/// Server connections of user `app` to database `app`.
async fn backends() -> i64 {
    superuser("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The proxy's RSS once it has settled after a burst of logins (quiet sessions give their
/// buffers back after a second).
async fn settled_rss(proxy: &ProxyProcess) -> u64 {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.rss()
}

fn kib_each(after: u64, before: u64, n: usize) -> f64 {
    after.saturating_sub(before) as f64 / 1024.0 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_clients_half_tls() {
    let started = Instant::now();
    let (_, limit) = pgmeridian::app::raise_open_files_limit().unwrap();
    let need = (PLAIN + TLS + 500) as u64;
    assert!(
        limit >= need,
        "this test holds {need} sockets: raise the open files limit (ulimit -Hn is {limit})"
    );
    let c = cluster();
    let ca = test_ca();
    let (cert, key) = (c.base.join("scale-tls.crt"), c.base.join("scale-tls.key"));
    std::fs::write(&cert, &ca.cert_pem).unwrap();
    std::fs::write(&key, &ca.key_pem).unwrap();
    let extra = format!(
        "tls: {{ cert: {}, key: {} }}
limits: {{ max_client_connections: 11000, max_handshakes: 1000, max_handshakes_per_address: 10, startup_timeout: 60s }}\n",
        cert.display(),
        key.display()
    );
    let proxy = ProxyProcess::start(&without_replicas(&config_yaml(c, &extra))).await;
    let tls = tls_connector();

    // Warm up: the session threads, the pool's greeting cache, the first TLS and SCRAM logins.
    let mut warm = open_many(proxy.addr, 100_000, 50, None).await;
    warm.extend(open_many(proxy.addr, 100_100, 50, Some(&tls)).await);
    drop(warm);
    let base = settled_rss(&proxy).await;
    let servers_before = backends().await;

    let plain = open_many(proxy.addr, 0, PLAIN, None).await;
    let after_plain = settled_rss(&proxy).await;
    let tls_clients = open_many(proxy.addr, PLAIN, TLS, Some(&tls)).await;
    let after_tls = settled_rss(&proxy).await;
    let opened = started.elapsed();

    // Pool (at most `pooling.size`, 20), probe and greeting-cache connections; none per client.
    let servers = backends().await;
    assert!(
        servers <= servers_before + 2 && servers <= 25,
        "{servers} server connections for {} idle clients ({servers_before} before them): \
         idle clients must hold none",
        PLAIN + TLS
    );

    // A new client: connect, log in, SELECT 1.
    let mut times = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let mut s = match open(proxy.addr, 200_000 + i, None).await {
            Idle::Plain(s) => s,
            Idle::Tls(_) => unreachable!(),
        };
        select_one(&mut s).await;
        times.push(t.elapsed());
    }
    times.sort();
    // The idle ones are still there and still served.
    let (mut plain, mut tls_clients) = (plain, tls_clients);
    for i in (0..PLAIN).step_by(500) {
        if let Idle::Plain(s) = &mut plain[i] {
            select_one(s).await;
        }
        if let Idle::Tls(s) = &mut tls_clients[i] {
            select_one(s).await;
        }
    }

    let per_plain = kib_each(after_plain, base, PLAIN);
    let per_tls = kib_each(after_tls, after_plain, TLS);
    eprintln!(
        "scale: proxy RSS {} KiB idle, {} KiB with {PLAIN} plain clients ({per_plain:.1} KiB each), \
         {} KiB with {TLS} TLS clients more ({per_tls:.1} KiB each); {servers_before} then {servers} server connections; \
         new client connect+login+SELECT 1: median {:?} (min {:?}, max {:?}); opened in {opened:?}",
        base >> 10,
        after_plain >> 10,
        after_tls >> 10,
        times[2],
        times[0],
        times[4],
    );
    // The target is 16 KiB for a plain client; the bounds here catch a session that
    // keeps its 16 KiB read buffers (and server buffers) while idle, which costs over 50 KiB.
    assert!(
        per_plain <= 2.0 * TARGET_PLAIN_KIB,
        "a plain idle client costs {per_plain:.1} KiB of proxy RSS (target {TARGET_PLAIN_KIB} KiB)"
    );
    assert!(
        per_tls <= 3.0 * TARGET_PLAIN_KIB,
        "a TLS idle client costs {per_tls:.1} KiB of proxy RSS"
    );
}
