//! Bad input and lifecycle at the byte level: garbage, truncated and oversized startup
//! packets (closed as PostgreSQL closes them), idle sockets, protocol violations, connection limits and graceful shutdown.
//! After each, the proxy must still serve a normal client.

mod common;

/// One replica, replaying without delay.
pub const REPLICA_DELAYS_MS: &[u64] = &[0];

use std::time::Duration;

use pgmeridian::protocol::backend::ErrorFields;
use pgmeridian::protocol::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

use common::*;

/// Reads until the proxy closes the connection (or 10 s pass, which fails the test).
async fn read_until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection")
        .ok();
    out
}

/// The SQLSTATE of the first ErrorResponse in `bytes`.
fn first_error(bytes: &[u8]) -> Option<ErrorFields> {
    let mut buf = bytes::BytesMut::from(bytes);
    while let Ok(Some(msg)) = frame::split_message(&mut buf, 1 << 20) {
        if msg[0] == b'E' {
            return ErrorFields::parse(frame::body(&msg));
        }
    }
    None
}

async fn still_serves(addr: std::net::SocketAddr) {
    let client = connect(addr).await;
    let v: i32 = client.query_one("select 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

/// Bytes whose length word no startup packet can have are closed without a word, as
/// PostgreSQL does ("invalid length of startup packet" goes to its log only): an HTTP request,
/// and node-postgres' connect-then-end, which sends Terminate where the startup packet belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_cannot_be_a_startup_packet_are_closed_silently() {
    let proxy = proxy("").await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"[..],
        b"X\0\0\0\x04",
        &[0, 0, 0, 4, 0, 3, 0, 0],
        &[0, 0, 0x27, 0x15, 0, 3, 0, 0], // 10005 bytes: one over PostgreSQL's limit
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let reply = read_until_close(&mut s).await;
        assert!(reply.is_empty(), "{garbage:?} got an answer: {reply:?}");
    }
    still_serves(proxy.addr).await;
}

/// A packet of a possible length whose content is wrong gets PostgreSQL's FATAL 08P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_startup_packet_of_a_valid_length_gets_a_protocol_error() {
    let proxy = proxy("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // Protocol 3.0, a parameter name without its value or the final terminator.
    s.write_all(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'])
        .await
        .unwrap();
    let reply = read_until_close(&mut s).await;
    let e = first_error(&reply).expect("an ErrorResponse before the close");
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "08P01"),
        "{e:?}"
    );
    assert!(e.message.contains("invalid startup packet layout"), "{e:?}");
    still_serves(proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_packet_is_dropped_cleanly() {
    let proxy = proxy("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let packet = startup_packet(&[("user", "app"), ("database", "app")]);
    s.write_all(&packet[..packet.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(
        reply.is_empty(),
        "nothing to say to a client that left: {reply:?}"
    );
    still_serves(proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packet_claiming_2gb_is_closed_without_buffering() {
    let proxy = proxy("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(reply.is_empty(), "closed without a word: {reply:?}");
    still_serves(proxy.addr).await;
}

/// A TCP connection to `addr` from the loopback alias `from` (any 127.x.y.z works on Linux).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.expect("connection accepted")
}

/// A login as `app` over a connection from `from`.
async fn login_from(
    from: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let config: tokio_postgres::Config = conn_string(addr, "app", APP_PASSWORD, "app")
        .parse()
        .unwrap();
    let (client, conn) = config
        .connect_raw(connect_from(from, addr).await, tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// 2,000 sockets from one address that never send a startup packet hold at most
/// `max_handshakes_per_address` startup slots; the others are refused at once with 53300, and
/// a client from another address logs in as usual, quickly, although the silent sockets alone
/// would be more than `max_client_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_from_one_address_do_not_lock_out_others() {
    let proxy = proxy("limits: { startup_timeout: 60s, max_client_connections: 1500 }\n").await;
    let mut silent = Vec::with_capacity(2000);
    for _ in 0..2000 {
        silent.push(connect_from("127.0.0.2", proxy.addr).await);
    }
    let started = std::time::Instant::now();
    let client = login_from("127.0.0.1", proxy.addr)
        .await
        .expect("a client from another address is served");
    client.simple_query("select 1").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The same address is over its limit while the silent sockets wait.
    let err = refused(login_from("127.0.0.2", proxy.addr).await, "over the limit");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    // Only the default 100 are still open; the rest were told why and closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let open = loop {
        let mut open = 0;
        for s in &mut silent {
            let mut byte = [0u8; 1];
            if tokio::time::timeout(Duration::from_millis(2), s.peek(&mut byte))
                .await
                .is_err()
            {
                open += 1;
            }
        }
        if open == 100 || tokio::time::Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(open, 100);
    let e = first_error(&read_until_close(silent.last_mut().unwrap()).await)
        .expect("a refused one got an ErrorResponse");
    assert_eq!(e.code, "53300", "{e:?}");
    assert!(e.message.contains("from this address"), "{e:?}");
    // Once they go away, the address may log in again.
    drop(silent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match login_from("127.0.0.2", proxy.addr).await {
            Ok(c) => {
                c.simple_query("select 1").await.unwrap();
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the address never got its slots back: {e:?}"),
        }
    }
    still_serves(proxy.addr).await;
}

/// The cap on all connections starting up, whatever their address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_handshake_limit_refuses_with_53300() {
    let proxy = proxy("limits: { max_handshakes: 5, startup_timeout: 60s }\n").await;
    let mut silent = Vec::new();
    for i in 0..5 {
        silent.push(connect_from(&format!("127.0.1.{}", i + 1), proxy.addr).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The five take their slots as their sessions start.
        let err = match login_from("127.0.0.1", proxy.addr).await {
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Ok(_) => panic!("never refused"),
            Err(e) => e,
        };
        assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
        let message = err.as_db_error().map(|e| e.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("starting up")),
            "{message:?}"
        );
        break;
    }
    drop(silent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while login_from("127.0.0.1", proxy.addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_startup_is_closed_after_the_startup_timeout() {
    let proxy = proxy("limits: { startup_timeout: 500ms }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40]).await.unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(reply.is_empty(), "{reply:?}");
    still_serves(proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_pipelined_after_ssl_request_is_refused() {
    // The reply to SSLRequest must come before anything else is read (CVE-2021-23214 class).
    let proxy = proxy("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend_from_slice(&startup_packet(&[("user", "app")]));
    s.write_all(&bytes).await.unwrap();
    let reply = read_until_close(&mut s).await;
    let e = first_error(&reply).expect("an ErrorResponse");
    assert_eq!(e.code, "08P01");
    still_serves(proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_without_tls_configured() {
    let proxy = proxy("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap(); // GSSENCRequest
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap(); // SSLRequest
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    // Protocol 2.0 is refused clearly, with PostgreSQL's SQLSTATE.
    s.write_all(&[0, 0, 0, 9, 0, 2, 0, 0, 0]).await.unwrap();
    let e = first_error(&read_until_close(&mut s).await).expect("an ErrorResponse");
    assert!(
        e.message.contains("unsupported frontend protocol 2.0"),
        "{e:?}"
    );
    assert_eq!(e.code, "0A000", "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_after_login_is_a_protocol_violation() {
    let proxy = proxy("").await;
    let mut s = raw_login(proxy.addr).await;
    s.write_all(b"Y\0\0\0\x04").await.unwrap();
    let e = first_error(&read_until_close(&mut s).await).expect("an ErrorResponse");
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "08P01"),
        "{e:?}"
    );
    still_serves(proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_length_and_oversized_messages_after_login() {
    let proxy = proxy("limits: { max_message_bytes: 65536 }\n").await;
    let mut s = raw_login(proxy.addr).await;
    s.write_all(b"Q\0\0\0\x02").await.unwrap();
    let e = first_error(&read_until_close(&mut s).await).expect("an ErrorResponse");
    assert_eq!(e.code, "08P01", "{e:?}");
    // A 100 kB query over a 64 kB limit: refused with 54000, as soon as its header is seen.
    let client = connect(proxy.addr).await;
    let big = format!("select '{}'", "x".repeat(100_000));
    let err = client.simple_query(&big).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::PROGRAM_LIMIT_EXCEEDED),
        "{err:?}"
    );
    still_serves(proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_53300() {
    let proxy = proxy("limits: { max_client_connections: 2 }\n").await;
    let a = connect(proxy.addr).await;
    let _b = connect(proxy.addr).await;
    let err = refused(
        connect_as(proxy.addr, "app", APP_PASSWORD).await,
        "third client refused",
    );
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    drop(a);
    // The slot frees once the first session ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connect_as(proxy.addr, "app", APP_PASSWORD).await {
            Ok(c) => {
                c.simple_query("select 1").await.unwrap();
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot never freed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_after_the_idle_timeout() {
    let proxy = proxy("limits: { client_idle_timeout: 300ms }\n").await;
    let client = connect(proxy.addr).await;
    client.simple_query("select 1").await.unwrap();
    // A transaction that is open is not idle-closed by the proxy.
    client.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .batch_execute("commit")
        .await
        .expect("open transaction survives the idle timeout");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = client.simple_query("select 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code() == Some(&SqlState::IDLE_SESSION_TIMEOUT),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_open_transactions_finish() {
    let proxy = proxy("limits: { shutdown_timeout: 20s }\n").await;
    let addr = proxy.addr;
    let t = table("shutdown");
    let busy = connect(addr).await;
    busy.batch_execute(&format!(
        "create table {t} (v int); begin; insert into {t} values (1)"
    ))
    .await
    .unwrap();
    let idle = connect(addr).await;
    let stopping = tokio::spawn(proxy.shutdown());
    // New clients are no longer accepted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while connect_as(addr, "app", APP_PASSWORD).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open transaction can still finish, and its write lands.
    busy.batch_execute(&format!("insert into {t} values (2); commit"))
        .await
        .expect("transaction finishes during drain");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes once sessions are idle")
        .unwrap();
    let n: i64 = rows_on_primary(&t).await;
    assert_eq!(n, 2);
    let err = idle.simple_query("select 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{err:?}"
    );
}

/// Reads one whole backend message from `s` (`buf` keeps what follows it).
async fn next_message(s: &mut TcpStream, buf: &mut bytes::BytesMut) -> bytes::BytesMut {
    loop {
        if let Some(m) = frame::split_message(buf, 1 << 20).unwrap() {
            return m;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf))
            .await
            .expect("the proxy answered")
            .unwrap();
        assert!(n > 0, "closed by the proxy");
    }
}

/// The first SCRAM round as `user` over a raw socket: the mechanisms offered and the salt.
async fn scram_first_round(addr: std::net::SocketAddr, user: &str) -> (Vec<String>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", user), ("database", "app")]))
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    let offer = next_message(&mut s, &mut buf).await;
    assert_eq!(offer[0], b'R');
    let mechanisms = frame::body(&offer)[4..]
        .split(|b| *b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8(m.to_vec()).unwrap())
        .collect();
    let first = b"n,,n=,r=hostile-test-nonce";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    s.write_all(&msg).await.unwrap();
    let server_first = next_message(&mut s, &mut buf).await;
    assert_eq!(server_first[0], b'R', "{server_first:?}");
    let text = String::from_utf8(frame::body(&server_first)[4..].to_vec()).unwrap();
    let salt = text
        .split(',')
        .find_map(|f| f.strip_prefix("s="))
        .unwrap()
        .to_owned();
    (mechanisms, salt)
}

/// A user name that is not configured cannot be told from one that is by the SCRAM exchange:
/// the same mechanisms, and a salt that stays the same from one attempt to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_names_are_not_revealed_by_the_scram_exchange() {
    let proxy = proxy("").await;
    let (known, known_salt) = scram_first_round(proxy.addr, "app").await;
    let (unknown, salt) = scram_first_round(proxy.addr, "mallory").await;
    assert_eq!(known, unknown);
    assert_eq!(
        scram_first_round(proxy.addr, "app").await.1,
        known_salt,
        "a configured user's salt is stable"
    );
    assert_eq!(
        scram_first_round(proxy.addr, "mallory").await.1,
        salt,
        "so is an unknown user's"
    );
    assert_ne!(scram_first_round(proxy.addr, "mallory2").await.1, salt);
    assert_eq!(salt.len(), known_salt.len());
    still_serves(proxy.addr).await;
}

/// Client sockets get the configured keepalive and TCP_USER_TIMEOUT as their session starts,
/// so a client whose machine vanished is not kept forever (read back from the accepted socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sockets_get_keepalive_and_a_user_timeout() {
    let config = common::config(
        cluster(),
        "limits: { tcp_keepalive: 7s, tcp_user_timeout: 11s }\n",
    );
    let shared = std::sync::Arc::new(pgmeridian::app::Shared::new(&config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, peer) = listener.accept().await.unwrap();
    // A second handle on the same socket, to read its options while the session owns it.
    let accepted = accepted.into_std().unwrap();
    let probe = accepted.try_clone().unwrap();
    let accepted = TcpStream::from_std(accepted).unwrap();
    let session = tokio::spawn(async move {
        pgmeridian::session::run(accepted, peer, &shared).await;
    });
    let sock = socket2::SockRef::from(&probe);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sock.tcp_keepalive_time().unwrap() != Duration::from_secs(7) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keepalive never set"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sock.keepalive().unwrap());
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(11))
    );
    session.abort();
}

/// With `admin_token`, `/metrics` and `/status` need `Authorization: Bearer TOKEN`;
/// `/healthz` and `/readyz` (orchestrators' probes) do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_metrics_and_status_but_not_the_probes() {
    let proxy = proxy("admin_listen: 127.0.0.1:0\nadmin_token: 'a-long-admin-token'\n").await;
    let admin = proxy.admin_addr.expect("admin listener");
    for path in ["/metrics", "/status"] {
        let (head, _) = http_get(admin, path).await;
        assert!(head.contains(" 401 "), "{path} without a token: {head}");
        let wrong = [("Authorization", "Bearer a-long-admin-tokeX")];
        let (head, _) = http_get_with(admin, path, &wrong).await;
        assert!(head.contains(" 401 "), "{path} with a wrong token: {head}");
        let right = [("Authorization", "Bearer a-long-admin-token")];
        let (head, body) = http_get_with(admin, path, &right).await;
        assert!(head.contains(" 200 "), "{path} with the token: {head}");
        assert!(!body.is_empty());
    }
    let (head, _) = http_get(admin, "/healthz").await;
    assert!(head.contains(" 200 "), "{head}");
    let (head, _) = http_get(admin, "/readyz").await;
    assert!(head.contains(" 200 ") || head.contains(" 503 "), "{head}");
}

/// A client that opens an admin connection and sends no (or half a) request is closed after
/// `limits.admin_header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_must_send_their_headers_in_time() {
    let proxy = proxy("admin_listen: 127.0.0.1:0\nlimits: { admin_header_timeout: 300ms }\n").await;
    let admin = proxy.admin_addr.expect("admin listener");
    for sent in [&b""[..], b"GET /metrics HTTP/1.1\r\nHost: x\r\n"] {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(sent).await.unwrap();
        let started = std::time::Instant::now();
        read_until_close(&mut s).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{sent:?}: closed after {:?}",
            started.elapsed()
        );
    }
    let (head, _) = http_get(admin, "/healthz").await;
    assert!(head.contains(" 200 "), "{head}");
}

/// Past `limits.max_admin_connections`, new admin connections are closed at once; the slots
/// come back when the connections end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped() {
    let proxy = proxy(
        "admin_listen: 127.0.0.1:0\nlimits: { max_admin_connections: 2, admin_header_timeout: 60s }\n",
    )
    .await;
    let admin = proxy.admin_addr.expect("admin listener");
    let held = [
        TcpStream::connect(admin).await.unwrap(),
        TcpStream::connect(admin).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(admin).await.unwrap();
    let started = std::time::Instant::now();
    assert!(read_until_close(&mut third).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A connection over the cap is dropped, maybe with a reset: read tolerantly.
        let mut s = TcpStream::connect(admin).await.unwrap();
        let _ = s
            .write_all(
                b"GET /healthz HTTP/1.0

",
            )
            .await;
        let reply = read_until_close(&mut s).await;
        if String::from_utf8_lossy(&reply)
            .lines()
            .next()
            .is_some_and(|l| l.contains(" 200 "))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pgmeridian run` raises its soft open-files limit to the hard one, and warns when that is
/// below what the configuration may need (clients, pools, probes, admin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_raises_the_open_files_limit_and_warns_when_it_is_too_low() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("pgm-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:0
region: r
regions: { r: { lat: 0, lon: 0 } }
users: [ { name: app, password: pw } ]
clusters: { app: { primary: { host: 127.0.0.1, port: 1, region: r, tls: disable } } }
limits: { max_client_connections: 2000000 }
",
    )
    .unwrap();
    let script = format!(
        "ulimit -Sn 256 && exec {} run --config {}",
        env!("CARGO_BIN_EXE_pgmeridian"),
        file.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("PGMERIDIAN_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("accepting connections") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the proxy started");
    child.kill().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let plain: String = log
        .split('\x1b')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or("", |p| p.1)
            }
        })
        .collect();
    assert!(
        plain.contains("raised the open files limit (RLIMIT_NOFILE) from=256"),
        "{plain}"
    );
    assert!(
        plain.contains("is below what limits.max_client_connections"),
        "{plain}"
    );
}
