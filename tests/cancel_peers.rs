//! Cancel across the instances of a fleet (`instance_id`, `peers`): a CancelRequest that lands on
//! another instance than the one running the query is forwarded to it and cancels the query;
//! one for an instance outside `peers`, one from an address that is neither a peer's nor a
//! trusted balancer's, or one a peer already forwarded, goes nowhere (also when two instances'
//! `peers` lists disagree and would otherwise bounce it between them).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pgmeridian::app::Proxy;
use pgmeridian::cancel::key;
use pgmeridian::protocol::backend::ErrorFields;
use pgmeridian::protocol::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

const REPLICA_DELAYS_MS: &[u64] = &[];

/// An instance of the fleet, in process, on `listen`.
async fn instance(id: u16, listen: SocketAddr, peers: &[(u16, SocketAddr)]) -> Proxy {
    let peers: String = peers
        .iter()
        .map(|(id, at)| format!("  - {{ id: {id}, address: \"{at}\" }}\n"))
        .collect();
    let yaml = config_yaml(cluster(), &format!("instance_id: {id}\npeers:\n{peers}"))
        .replace("peers:\n\n", "peers: []\n")
        .replace("listen: 127.0.0.1:0", &format!("listen: {listen}"));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None)
        .unwrap_or_else(|ps| panic!("test config invalid: {ps:?}\n{yaml}"));
    Proxy::start(&config)
        .await
        .unwrap_or_else(|ps| panic!("instance {id} did not start: {ps:?}"))
}

/// A loopback port free a moment ago (for instances that must know each other's address).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Sends a CancelRequest to `to` and waits until that instance closes the connection, which it
/// does once it has acted on it (forwarding included).
async fn send_cancel(to: SocketAddr, pid: i32, key: i32) {
    send_cancel_from(to, "127.0.0.1".parse().unwrap(), pid, key).await
}

/// [`send_cancel`] from the loopback address `source`.
async fn send_cancel_from(to: SocketAddr, source: std::net::IpAddr, pid: i32, key: i32) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&key.to_be_bytes());
    s.write_all(&packet).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "a CancelRequest gets no answer: {rest:?}");
}

fn cancels(p: &Proxy, result: &str) -> f64 {
    metric(
        p,
        &format!("pgmeridian_cancel_requests_total{{result=\"{result}\"}}"),
    )
}

fn all_cancels(p: &Proxy) -> f64 {
    metric(p, "pgmeridian_cancel_requests_total{")
}

/// Sessions on the primary running `sql` now.
async fn running(sql: &str) -> i64 {
    superuser("app")
        .await
        .query_one(
            "select count(*) from pg_stat_activity where query = $1 and state = 'active'",
            &[&sql],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_running(sql: &str) {
    let start = Instant::now();
    while running(sql).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{sql} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SQLSTATE a raw session's statement ended with (None: it succeeded).
async fn outcome(s: &mut TcpStream) -> Option<String> {
    let mut buf = bytes::BytesMut::new();
    let mut code = None;
    loop {
        while let Some(m) = frame::split_message(&mut buf, 1 << 20).unwrap() {
            match m[0] {
                b'E' => code = ErrorFields::parse(frame::body(&m)).map(|e| e.code),
                b'Z' => return code,
                _ => {}
            }
        }
        assert!(s.read_buf(&mut buf).await.unwrap() > 0, "session closed");
    }
}

fn query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_instance_cancels_the_query() {
    let a = instance(1, free_port(), &[]).await;
    let b = instance(2, free_port(), &[(1, a.addr)]).await;
    let client = connect(a.addr).await;
    let token = client.cancel_token();
    let sql = "select pg_sleep(30)";
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query(sql).await;
        (r, Instant::now())
    });
    wait_running(sql).await;
    // libpq's way: a new connection with A's key, which the balancer happened to send to B.
    let sent = Instant::now();
    let to_b = TcpStream::connect(b.addr).await.unwrap();
    token
        .cancel_query_raw(to_b, NoTls)
        .await
        .expect("cancel request sent");
    let (result, ended) = sleeper.await.unwrap();
    let err = result.expect_err("the sleep must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let latency = ended - sent;
    eprintln!("cross-instance cancel: query cancelled {latency:?} after the CancelRequest was sent to the other instance");
    assert!(latency < Duration::from_secs(1), "cancel took {latency:?}");
    // libpq's cancel does not wait for the connection to close; B counts before closing it.
    wait_for("B forwarded it to A", || cancels(&b, "peer") == 1.0).await;
    assert_eq!(cancels(&a, "backend"), 1.0, "A sent it to PostgreSQL");
    assert_eq!(all_cancels(&a) + all_cancels(&b), 2.0);
}

/// B's `peers` wrongly say instance 1 is at C, and C's say it is at B: a request for instance
/// 1 sent to B goes to C once and stops there. Instances outside `peers` get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_go_only_to_peers_and_only_once() {
    let (b_at, c_at) = (free_port(), free_port());
    let a = instance(1, free_port(), &[]).await;
    let b = instance(2, b_at, &[(1, c_at)]).await;
    let c = instance(3, c_at, &[(1, b_at)]).await;
    let (mut session, pid, secret) = raw_login_keyed(a.addr).await;
    assert_eq!(key::instance_of(pid), 1, "A's pids name instance 1");
    let sql = "select pg_sleep(29)";
    session.write_all(&query(sql)).await.unwrap();
    wait_running(sql).await;

    // From an address that is no peer's (the peers are on 127.0.0.1), no trusted balancer and
    // not in cancel_forward_from: B forwards nothing.
    send_cancel_from(b.addr, "127.0.0.2".parse().unwrap(), pid, secret).await;
    assert_eq!(cancels(&b, "refused_source"), 1.0);
    assert_eq!(all_cancels(&c), 0.0, "nothing was forwarded");
    // Minted by instance 4, which nobody lists: dropped by B, sent nowhere.
    let other = (pid & !(0x3FF << 20)) | (4 << 20);
    send_cancel(b.addr, other, secret).await;
    assert_eq!(cancels(&b, "unknown_instance"), 1.0);
    // Marked as forwarded (as a peer sends it) but not minted by B: dropped.
    send_cancel(b.addr, key::mark_forwarded(pid), secret).await;
    assert_eq!(cancels(&b, "loop"), 1.0);
    // Unmarked: B forwards it to where it believes instance 1 is (C), marked; C, which is not
    // instance 1, drops it instead of sending it back.
    send_cancel(b.addr, pid, secret).await;
    assert_eq!(cancels(&b, "peer"), 1.0);
    assert_eq!(cancels(&c, "loop"), 1.0);
    assert_eq!(
        all_cancels(&b),
        4.0,
        "B saw each request once: no ping-pong"
    );
    assert_eq!(all_cancels(&c), 1.0);
    assert_eq!(all_cancels(&a), 0.0, "nothing reached A");
    assert_eq!(running(sql).await, 1, "the query still runs");

    // A itself acts on its key, marked or not.
    send_cancel(a.addr, key::mark_forwarded(pid), secret).await;
    assert_eq!(cancels(&a, "backend"), 1.0);
    assert_eq!(outcome(&mut session).await.as_deref(), Some("57014"));
}
