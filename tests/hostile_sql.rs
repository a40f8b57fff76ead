//! Hostile or unusual SQL from an authenticated client: errors bigger than the proxy reads
//! whole, SQL in other client encodings, volatile functions with effects on a standby,
//! statements the backend rejects, and floods of notices. Against a real primary and a replica
//! that replays 1.5 s late (so a write sent there by mistake fails visibly).

mod common;

/// One replica, replaying 1.5 s behind: a table created a moment ago is not there yet.
pub const REPLICA_DELAYS_MS: &[u64] = &[1500];

use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgmeridian::protocol::backend::ErrorFields;
use pgmeridian::protocol::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

use common::*;

/// One simple-protocol message carrying raw SQL bytes (any client encoding).
fn query_msg(sql: &[u8]) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql);
    m.push(0);
    m
}

/// Reads messages until `n` ReadyForQuery have arrived (10 s at most).
async fn read_until_ready(s: &mut TcpStream, buf: &mut BytesMut, mut n: usize) -> Vec<BytesMut> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(m) = frame::split_message(buf, 1 << 24).unwrap() {
            let ready = m[0] == b'Z';
            out.push(m);
            if ready {
                n -= 1;
                if n == 0 {
                    return out;
                }
            }
        }
        let read = tokio::time::timeout_at(deadline, s.read_buf(buf))
            .await
            .expect("the proxy answered within 10 s")
            .unwrap();
        assert!(read > 0, "the proxy closed the connection");
    }
}

/// Runs raw SQL bytes; returns the answer's messages, failing on an ErrorResponse.
async fn run(s: &mut TcpStream, buf: &mut BytesMut, sql: &[u8]) -> Vec<BytesMut> {
    s.write_all(&query_msg(sql)).await.unwrap();
    let out = read_until_ready(s, buf, 1).await;
    if let Some(e) = out.iter().find(|m| m[0] == b'E') {
        panic!(
            "{:?} failed: {:?}",
            String::from_utf8_lossy(sql),
            ErrorFields::parse(frame::body(e))
        );
    }
    out
}

/// The first column of the first DataRow, as text.
fn first_value(msgs: &[BytesMut]) -> String {
    let row = msgs.iter().find(|m| m[0] == b'D').expect("a row");
    let body = frame::body(row);
    let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&body[6..6 + len]).into_owned()
}

fn replica_port() -> u16 {
    cluster().replicas[0].port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_bigger_than_the_proxy_reads_whole_reaches_the_client() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    // Errors of 300 kB, 1 MB (the size that hung before) and 5 MB.
    for n in [300_000, 1_000_000, 5_000_000] {
        let sql = format!("SELECT repeat('x', {n})::int");
        let e = tokio::time::timeout(Duration::from_secs(20), client.query(&sql, &[]))
            .await
            .unwrap_or_else(|_| panic!("no answer to a {n}-byte error within 20 s"))
            .expect_err("not an integer");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code(), &SqlState::INVALID_TEXT_REPRESENTATION);
        assert!(db.message().len() > n, "the whole message arrived");
        let v: i32 = client.query_one("select 7", &[]).await.unwrap().get(0);
        assert_eq!(v, 7, "the session goes on after a {n}-byte error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_in_latin1_and_sjis_is_classified_in_that_encoding() {
    let proxy = proxy_ready("").await;
    let t = table("latin1");
    let t2 = table("sjis");
    // Created on the primary a moment ago: the replica will not have them for 1.5 s.
    superuser("app")
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (v text); GRANT ALL ON {t} TO PUBLIC;
             CREATE TABLE {t2} (v text); GRANT ALL ON {t2} TO PUBLIC;"
        ))
        .await
        .unwrap();
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    run(&mut s, &mut buf, b"SET client_encoding = 'LATIN1'").await;
    // A read in LATIN1 is still a read: the replica serves it.
    let read = run(&mut s, &mut buf, b"SELECT inet_server_port(), 'caf\xe9'").await;
    assert_eq!(first_value(&read), replica_port().to_string());
    // 0xE9 is é in LATIN1 and not UTF-8: it was read as an empty statement, routed to the
    // replica, and failed there with 42P01.
    let insert = [
        format!("INSERT INTO {t} VALUES ('caf").as_bytes(),
        b"\xe9')",
    ]
    .concat();
    let out = run(&mut s, &mut buf, &insert).await;
    assert!(out.iter().any(|m| m[0] == b'C'), "INSERT completed");
    let stored: String = superuser("app")
        .await
        .query_one(&format!("select v from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "café", "stored as LATIN1 é");

    // SJIS hides a backslash inside 0x95 0x5C: read byte-wise, the string would swallow the
    // INSERT after it and the batch would look like a read.
    run(&mut s, &mut buf, b"SET client_encoding = 'SJIS'").await;
    let batch = [
        &b"SELECT E'\x95\x5c', 1; INSERT INTO "[..],
        t2.as_bytes(),
        b" VALUES ('x')",
    ]
    .concat();
    let out = run(&mut s, &mut buf, &batch).await;
    assert!(
        out.iter().filter(|m| m[0] == b'C').count() == 2,
        "both statements completed"
    );
    assert_eq!(rows_on_primary(&t2).await, 1);
}

/// Waits until the proxy has read the cluster's function catalog: `pg_sleep` (volatile) is
/// then a write.
async fn wait_for_catalog(client: &tokio_postgres::Client) {
    let primary = cluster().primary.port;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let port: i32 = client
            .query_one("select inet_server_port() from pg_sleep(0)", &[])
            .await
            .unwrap()
            .get(0);
        if port as u16 == primary {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the function catalog was not loaded within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_functions_go_to_the_primary_unless_allowed() {
    let suffix = std::process::id();
    let (noisy, reader, stable) = (
        format!("noisy_{suffix}"),
        format!("reader_{suffix}"),
        format!("stable_{suffix}"),
    );
    superuser("app")
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION {noisy}() RETURNS int LANGUAGE sql AS 'SELECT inet_server_port()';
             CREATE FUNCTION {reader}() RETURNS int LANGUAGE sql AS 'SELECT inet_server_port()';
             CREATE FUNCTION {stable}() RETURNS int LANGUAGE sql STABLE AS 'SELECT inet_server_port()';"
        ))
        .await
        .unwrap();
    // Let the replica replay the functions (1.5 s behind).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let proxy = proxy_ready(&format!(
        "routing: {{ volatile_functions_refresh: 1s, read_functions: [{reader}] }}\n"
    ))
    .await;
    let client = connect(proxy.addr).await;
    wait_for_catalog(&client).await;
    let (primary, replica) = (i32::from(cluster().primary.port), i32::from(replica_port()));
    let cases = [
        (format!("SELECT {noisy}()"), primary),
        (format!("SELECT {reader}()"), replica),
        (format!("SELECT {stable}()"), replica),
        (
            "SELECT inet_server_port() FROM (SELECT random()) r".to_string(),
            replica,
        ),
        (
            "SELECT inet_server_port() FROM (SELECT pg_sleep(0)) s".to_string(),
            primary,
        ),
        (
            "SELECT inet_server_port() FROM (SELECT gen_random_uuid()) g".to_string(),
            replica,
        ),
    ];
    for (sql, want) in cases {
        let port: i32 = client.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(port, want, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cancelling_another_connection_s_query_finds_it() {
    // node-postgres' own tests stop a query this way; it used to run on a replica and find
    // nothing to cancel.
    let proxy = proxy_ready("routing: { volatile_functions_refresh: 1s }\n").await;
    let sleeper = connect(proxy.addr).await;
    wait_for_catalog(&sleeper).await;
    let marker = format!("sleep_{}", std::process::id());
    let sql = format!("SELECT pg_sleep(30) AS {marker}");
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { sleeper.query(&sql, &[]).await });
    let canceller = connect(proxy.addr).await;
    let pattern = format!("%AS {marker}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = canceller
            .query(
                "SELECT pid, pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .unwrap();
        if rows.iter().any(|r| r.get::<_, bool>(1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sleeping query was never found"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the cancelled query ended")
        .unwrap();
    let e = result.expect_err("cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_the_backend_rejects_are_not_kept() {
    let proxy = proxy("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    // More rejected named statements than a session may keep (10,000), in pipelines.
    let total = 12_000;
    for chunk in 0..total / 1000 {
        let mut out = Vec::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let body = [format!("bad_{i}\0SELEC {i}\0").as_bytes(), &[0, 0]].concat();
            out.push(b'P');
            out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b"S\0\0\0\x04");
        }
        s.write_all(&out).await.unwrap();
        let answers = read_until_ready(&mut s, &mut buf, 1000).await;
        let errors: Vec<_> = answers
            .iter()
            .filter(|m| m[0] == b'E')
            .map(|m| ErrorFields::parse(frame::body(m)).unwrap())
            .collect();
        assert_eq!(errors.len(), 1000);
        assert!(errors.iter().all(|e| e.code == "42601"), "{:?}", errors[0]);
    }
    // The session still prepares and runs statements.
    let mut out = Vec::new();
    for (tag, body) in [
        (b'P', &b"good\0SELECT 42\0\0\0"[..]),
        (b'B', &b"\0good\0\0\0\0\0\0\0"[..]),
        (b'E', &b"\0\0\0\0\0"[..]),
        (b'S', &b""[..]),
    ] {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    s.write_all(&out).await.unwrap();
    let answers = read_until_ready(&mut s, &mut buf, 1).await;
    let tags: String = answers.iter().map(|m| m[0] as char).collect();
    assert_eq!(tags, "12DCZ");
    assert_eq!(first_value(&answers), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_notices_on_a_replica_read_is_not_buffered() {
    let f = format!("notices_{}", std::process::id());
    superuser("app")
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION {f}(n int) RETURNS int LANGUAGE plpgsql STABLE AS $$
             BEGIN FOR i IN 1..n LOOP RAISE NOTICE 'notice number % of a flood', i; END LOOP;
             RETURN inet_server_port(); END $$;"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A separate process, so that only the proxy's memory is measured.
    let proxy = common::process::ProxyProcess::start(&config_yaml(cluster(), "")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (client, mut conn) = tokio_postgres::connect(
        &conn_string(proxy.addr, "app", APP_PASSWORD, "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    // Count the notices as they arrive (the client keeps none).
    let notices = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = notices.clone();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, tokio_postgres::AsyncMessage::Notice(_)) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // Warm up: the session, its lane and its pooled connections exist before measuring.
    client
        .query_one(&format!("SELECT {f}(1000)"), &[])
        .await
        .unwrap();
    let before = proxy.rss();
    let n = 400_000;
    let port: i32 = client
        .query_one(&format!("SELECT {f}({n})"), &[])
        .await
        .unwrap()
        .get(0);
    let grew = proxy.rss().saturating_sub(before);
    eprintln!(
        "proxy RSS {} KiB before, grew {} KiB",
        before >> 10,
        grew >> 10
    );
    // A read: normally the replica serves it (the retryable path that holds answers back).
    eprintln!("served by port {port} (replica {})", replica_port());
    assert_eq!(notices.load(std::sync::atomic::Ordering::Relaxed), n + 1000);
    // Over 100 bytes a notice: more than 40 MB went through. What a retryable read holds
    // back is bounded (64 KiB), and reading stops while the client is behind; the allowance
    // is for allocator and thread noise on a busy machine (1 to 8 MiB measured).
    assert!(
        grew < 32 << 20,
        "resident memory grew by {} MiB while {n} notices passed",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_whose_settings_fail_cannot_take_a_node_out_of_service() {
    // Sessions used to count their failed backend logins as failed probes: a client could
    // mark the primary down for everyone. Now they only ask the probes to look sooner.
    let proxy = proxy_ready("health: { interval: 200ms, fall: 2 }\n").await;
    // A startup packet just under PostgreSQL's 10,000-byte limit (the pool logs in with its
    // own parameters; the setting is applied with SET).
    let path: String = (0..1600).map(|i| format!("s{i:04},")).collect::<String>();
    let path = path[..8999].trim_end_matches(',');
    for _ in 0..20 {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "{} options='-c search_path={path}'",
                conn_string(proxy.addr, "app", APP_PASSWORD, "app")
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("a long startup packet within the limit is accepted");
        tokio::spawn(conn);
        let v: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(v, 1);
    }
    // Settings the server refuses: every session's login fails, with the server's error.
    for _ in 0..20 {
        let e = refused(
            tokio_postgres::connect(
                &format!(
                    "{} options='-c statement_timeout=banana'",
                    conn_string(proxy.addr, "app", APP_PASSWORD, "app")
                ),
                tokio_postgres::NoTls,
            )
            .await,
            "an invalid setting",
        );
        assert_eq!(e.code(), Some(&SqlState::INVALID_PARAMETER_VALUE), "{e}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let health = proxy.shared.health.load();
    let h = &health.clusters["app"];
    assert!(h.primary.up, "the primary is still up");
    let c = connect(proxy.addr).await;
    c.batch_execute("CREATE TEMP TABLE still_writable (x int)")
        .await
        .expect("writes still work");
}
