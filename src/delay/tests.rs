//! The relay with real loopback sockets. Timing is asserted only as a lower bound (the delay
//! must be paid); upper bounds would make the tests flaky on a loaded machine. Timeouts only
//! keep a broken relay from hanging the suite.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK: &str = "127.0.0.1:0";
/// Generous liveness bound for things that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

/// A server that echoes every connection until EOF, then shuts down its write side.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    s.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("echo within the patience bound")
        .unwrap();
    assert_eq!(back, msg);
    start.elapsed()
}

#[tokio::test]
async fn round_trip_pays_the_delay_both_ways() {
    let echo = echo_server().await;
    let relay = DelayRelay::start(loopback(), echo, Duration::from_millis(50))
        .await
        .unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    for _ in 0..3 {
        let rtt = round_trip(&mut s, b"ping").await;
        assert!(rtt >= Duration::from_millis(100), "rtt {rtt:?}");
    }
}

#[tokio::test]
async fn set_delay_applies_to_new_chunks() {
    let echo = echo_server().await;
    let relay = DelayRelay::start(loopback(), echo, Duration::ZERO)
        .await
        .unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    round_trip(&mut s, b"warm").await;
    relay.set_delay(Duration::from_millis(80));
    assert_eq!(relay.delay(), Duration::from_millis(80));
    let rtt = round_trip(&mut s, b"slow").await;
    assert!(rtt >= Duration::from_millis(160), "rtt {rtt:?}");
}

/// 8 MB through the relay and back, written while it is read: every byte arrives, in order.
#[tokio::test]
async fn multi_megabyte_stream_arrives_intact_and_in_order() {
    let echo = echo_server().await;
    let relay = DelayRelay::start(loopback(), echo, Duration::from_millis(5))
        .await
        .unwrap();
    let s = TcpStream::connect(relay.addr()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        for piece in data.chunks(1000) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(expected.len());
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("the whole stream within a minute")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "bytes differ or are out of order");
}

/// The client's EOF reaches the server after its data; the server's answer and EOF come back.
#[tokio::test]
async fn eof_propagates_both_ways() {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let relay = DelayRelay::start(loopback(), target, Duration::from_millis(20))
        .await
        .unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    s.write_all(&[7u8; 12345]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut answer))
        .await
        .expect("EOF within the patience bound")
        .unwrap();
    assert_eq!(answer, "got 12345 bytes");
}

#[tokio::test]
async fn dropping_the_relay_closes_connections_and_the_listener() {
    let echo = echo_server().await;
    let relay = DelayRelay::start(loopback(), echo, Duration::from_millis(10))
        .await
        .unwrap();
    let addr = relay.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut s, b"alive").await;
    drop(relay);
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("the connection is closed, not left hanging");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    // The listener goes away too (the accept task may need a moment to notice).
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(_) => panic!("the relay still accepts connections after being dropped"),
        }
    }
}

#[tokio::test]
async fn unreachable_target_closes_the_client() {
    // A port with nobody listening: bind, note the address, close.
    let target = TcpListener::bind(loopback())
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = DelayRelay::start(loopback(), target, Duration::from_millis(1))
        .await
        .unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn named_target_is_resolved_per_connection() {
    let echo = echo_server().await;
    let relay = DelayRelay::start_to_host(
        loopback(),
        format!("localhost:{}", echo.port()),
        Duration::from_millis(1),
    )
    .await
    .unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    round_trip(&mut s, b"by name").await;
}

#[test]
fn parses_delays() {
    assert_eq!(parse_delay("40ms"), Ok(Duration::from_millis(40)));
    assert_eq!(parse_delay("40"), Ok(Duration::from_millis(40)));
    assert_eq!(parse_delay("0.09s"), Ok(Duration::from_millis(90)));
    assert_eq!(parse_delay("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_delay("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
    assert!(parse_delay("-1ms").is_err());
    assert!(parse_delay("fast").is_err());
    assert!(parse_delay("").is_err());
}
