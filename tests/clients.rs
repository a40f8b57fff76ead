//! tokio-postgres through the proxy against a real primary: simple and extended protocol,
//! prepared statements, transactions, errors, COPY, LISTEN/NOTIFY, cancel, large results.

mod common;

/// One replica, replaying without delay.
pub const REPLICA_DELAYS_MS: &[u64] = &[0];

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use common::*;

fn simple_values(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_runs_a_streaming_replica() {
    let c = cluster();
    assert_eq!(c.replicas.len(), 1);
    assert_eq!(
        c.replicas[0]
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
    let t = table("harness");
    c.primary
        .psql(
            "app",
            &format!("create table {t} (v int); insert into {t} values (7)"),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.replicas[0].psql("app", &format!("select v from {t}")) {
            Ok(v) if v == "7" => break,
            other => assert!(
                Instant::now() < deadline,
                "replica never caught up: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_multi_statement_and_parameterized_queries() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let msgs = client
        .simple_query("select 1; select 'two'; select null::text")
        .await
        .unwrap();
    assert_eq!(simple_values(&msgs), ["1", "two", "NULL"]);
    let row = client
        .query_one("select $1::int4 + 1, $2::text || '!'", &[&41i32, &"hi"])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (42, "hi!".to_owned())
    );
    // The primary hint reaches the configured primary.
    let port: i32 = client
        .query_one("/* pgmeridian:primary */ select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(cluster().primary.port));
    // Empty query and a non-ASCII round trip.
    client.simple_query("").await.unwrap();
    let s: String = client
        .query_one("select $1::text", &[&"zażółć 東京"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(s, "zażółć 東京");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_reuse_and_pipelining() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let stmt = client.prepare("select $1::int8 * 2").await.unwrap();
    for i in 0..20i64 {
        let v: i64 = client.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i * 2);
    }
    // Many extended-protocol batches in flight at once on one connection.
    let futures = (0..50i64).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            client
                .query_one(stmt, &[&i])
                .await
                .map(|r| r.get::<_, i64>(0))
        }
    });
    let results = futures_util::future::join_all(futures).await;
    let got: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, (0..50).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_rollback() {
    let proxy = proxy("").await;
    let mut client = connect(proxy.addr).await;
    let t = table("txn");
    client
        .batch_execute(&format!("create table {t} (id int primary key, v text)"))
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("insert into {t} values (1, 'kept')"), &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("insert into {t} values (2, 'dropped')"), &[])
        .await
        .unwrap();
    let inside: i64 = tx
        .query_one(&format!("select count(*) from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, 2);
    tx.rollback().await.unwrap();
    let rows = client
        .query(&format!("select v from {t} order by id"), &[])
        .await
        .unwrap();
    let values: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(values, ["kept"]);
    // Seen from outside the proxy too.
    let direct: i64 = rows_on_primary(&t).await;
    assert_eq!(direct, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mid_session_leave_it_usable() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let err = client.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .query("select * from no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(
        simple_values(&client.simple_query("select 'after'").await.unwrap()),
        ["after"]
    );
    // An error inside a transaction block aborts it until ROLLBACK.
    client.batch_execute("begin").await.unwrap();
    assert!(client.simple_query("select 1/0").await.is_err());
    let err = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("rollback").await.unwrap();
    let v: i32 = client.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    // An error in the middle of a multi-statement string stops the rest of it.
    let err = client
        .batch_execute("select 1; select 1/0; select 3")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let t = table("copy");
    client
        .batch_execute(&format!("create table {t} (id int, v text)"))
        .await
        .unwrap();
    let sink = client
        .copy_in(&format!("copy {t} from stdin"))
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut expected = String::new();
    for chunk in 0..10 {
        let mut data = String::new();
        for i in 0..1000 {
            let id = chunk * 1000 + i;
            data.push_str(&format!("{id}\trow {id}\n"));
        }
        expected.push_str(&data);
        sink.send(Bytes::from(data)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 10_000);
    let stream = client
        .copy_out(&format!("copy (select * from {t} order by id) to stdout"))
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    // A failing COPY FROM leaves the session usable.
    let sink = client
        .copy_in(&format!("copy {t} from stdin"))
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let n: i64 = client
        .query_one(&format!("select count(*) from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_notices_arrive() {
    let proxy = proxy("").await;
    let (listener, mut conn) =
        tokio_postgres::connect(&conn_string(proxy.addr, "app", APP_PASSWORD, "app"), NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    listener.batch_execute("listen pgm_chan").await.unwrap();
    let sender = connect(proxy.addr).await;
    sender
        .batch_execute("notify pgm_chan, 'hello through the proxy'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Some(AsyncMessage::Notification(n)) => return n,
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    })
    .await
    .expect("notification arrived");
    assert_eq!(
        (got.channel(), got.payload()),
        ("pgm_chan", "hello through the proxy")
    );
    // A NOTICE raised by the server reaches the client too.
    listener
        .batch_execute("do $$ begin raise notice 'notice via proxy'; end $$")
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(AsyncMessage::Notice(n)) = rx.recv().await {
                return n;
            }
        }
    })
    .await
    .expect("notice arrived");
    assert_eq!(notice.message(), "notice via proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("select pg_sleep(10)").await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(NoTls)
        .await
        .expect("cancel request sent");
    let (result, elapsed) = sleeper.await.unwrap();
    let err = result.expect_err("the sleep must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(elapsed < Duration::from_secs(2), "cancel took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_a_wrong_key_is_ignored() {
    use tokio::io::AsyncWriteExt;
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let sleeper =
        tokio::spawn(async move { client.simple_query("select pg_sleep(1)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every live session's pid with key 0 (their keys are random), and a pid nobody has.
    for pid in [1i32, 12345, i32::MAX] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(&0i32.to_be_bytes());
        s.write_all(&packet).await.unwrap();
    }
    sleeper
        .await
        .unwrap()
        .expect("query was not cancelled by a wrong key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_stream_through() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    let rows = client
        .query_raw(
            "select g, 'row-' || g from generate_series(1, 1000000) g",
            Vec::<i32>::new(),
        )
        .await
        .unwrap();
    let mut rows = std::pin::pin!(rows);
    let (mut count, mut sum) = (0u64, 0i64);
    while let Some(row) = rows.try_next().await.unwrap() {
        let g: i32 = row.get(0);
        count += 1;
        sum += i64::from(g);
    }
    assert_eq!(count, 1_000_000);
    assert_eq!(sum, 500_000_500_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_trust_backends_and_md5_clients() {
    // The harness's nodes allow MD5 explicitly (`require_auth: [scram-sha-256, md5, none]`).
    assert!(config_yaml(cluster(), "").contains("md5, none"));
    let proxy = proxy("").await;
    // Client authenticates to the proxy with MD5; the proxy logs in to PostgreSQL with MD5.
    let md5 = connect_as(proxy.addr, "pgm_md5", MD5_PASSWORD)
        .await
        .unwrap();
    let who: String = md5
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "pgm_md5");
    let err = refused(
        connect_as(proxy.addr, "pgm_md5", "wrong").await,
        "wrong md5 password refused",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    // A backend that trusts the role: the proxy still authenticates the client (SCRAM).
    let trust = connect_as(proxy.addr, "pgm_trust", "anything")
        .await
        .unwrap();
    let who: String = trust
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "pgm_trust");
    assert!(connect_as(proxy.addr, "pgm_trust", "not-anything")
        .await
        .is_err());
}

/// By default the proxy answers only SCRAM (or no authentication) from a backend: a server
/// (or whatever answers for it) asking for an MD5 password gets nothing, and the client is told
/// which node asked for what. Trusted roles keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_asking_for_md5_are_refused_unless_the_node_allows_it() {
    let yaml = strict_auth(&config_yaml(cluster(), ""));
    assert!(!yaml.contains("require_auth"));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let err = refused(
        connect_as(proxy.addr, "pgm_md5", MD5_PASSWORD).await,
        "MD5 backend login refused",
    );
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE, "{db:?}");
    assert!(
        db.message().contains(&format!(
            "app/primary (127.0.0.1:{})",
            cluster().primary.port
        )),
        "{db:?}"
    );
    assert!(db.message().contains("an MD5 password"), "{db:?}");
    assert!(db.message().contains("require_auth"), "{db:?}");
    let trust = connect_as(proxy.addr, "pgm_trust", "anything")
        .await
        .unwrap();
    trust.simple_query("select 1").await.unwrap();
    let scram = connect(proxy.addr).await;
    scram.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_database_errors_have_their_sqlstates() {
    let proxy = proxy("").await;
    let wrong = refused(
        connect_as(proxy.addr, "app", "nope").await,
        "wrong password refused",
    );
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD));
    let unknown_user = refused(
        connect_as(proxy.addr, "mallory", "x").await,
        "unknown user refused",
    );
    assert_eq!(unknown_user.code(), Some(&SqlState::INVALID_PASSWORD));
    let err = refused(
        tokio_postgres::connect(&conn_string(proxy.addr, "app", APP_PASSWORD, "nope"), NoTls).await,
        "unknown database refused",
    );
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));
    let db = err
        .as_db_error()
        .expect("a server error, not a dropped socket");
    assert_eq!(db.message(), "database \"nope\" does not exist");
    assert_eq!(db.severity(), "FATAL");
}

/// The pid of the session's primary backend. Simple protocol: tokio-postgres closes a prepared
/// statement with a Close it does not wait for, which could still be in flight when the test
/// terminates the backend (the FATAL would then answer the Close, and tokio-postgres drops it).
async fn primary_pid(client: &tokio_postgres::Client) -> i32 {
    let rows = client
        .simple_query("/* pgmeridian:primary */ select pg_backend_pid()")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_termination_of_an_idle_unpinned_session_is_transparent() {
    let proxy = proxy("").await;
    let client = connect(proxy.addr).await;
    client
        .batch_execute("set application_name = 'survivor'")
        .await
        .unwrap();
    let pid = primary_pid(&client).await;
    let admin = superuser("postgres").await;
    admin
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Nothing of the session lived only in that backend: a new one takes over, with the
    // session's settings replayed.
    let row = client
        .query_one(
            "/* pgmeridian:primary */ select pg_backend_pid(), current_setting('application_name')",
            &[],
        )
        .await
        .expect("transparent reconnect");
    let (new_pid, app): (i32, String) = (row.get(0), row.get(1));
    assert_ne!(new_pid, pid);
    assert_eq!(app, "survivor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_termination_of_a_pinned_session_is_reported_and_the_proxy_carries_on() {
    let proxy = proxy("").await;
    let (client, conn) = tokio_postgres::connect(
        &conn_string(proxy.addr, "app", APP_PASSWORD, "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    // What the connection ended with: the client must be told why, not just see EOF.
    let ended = tokio::spawn(conn);
    // A temp table lives only in that backend: losing it must not be hidden.
    client
        .batch_execute("create temp table mine (x int)")
        .await
        .unwrap();
    let pid = primary_pid(&client).await;
    let admin = superuser("postgres").await;
    admin
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The backend's FATAL arrives while the session is idle; the proxy reports the loss as
    // soon as the connection closes, without waiting for the next statement.
    let outcome = tokio::time::timeout(Duration::from_secs(20), ended)
        .await
        .expect("the terminated backend was never reported")
        .unwrap();
    let err = outcome.expect_err("the session cannot go on without its temp table");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a server-style error, not a dropped socket: {err:?}"));
    assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE, "{db:?}");
    assert!(
        db.message()
            .contains("terminating connection due to administrator command"),
        "the backend's own reason is passed on: {db:?}"
    );
    assert!(client
        .simple_query("select 1")
        .await
        .unwrap_err()
        .is_closed());
    let again = connect(proxy.addr).await;
    let v: i32 = again.query_one("select 9", &[]).await.unwrap().get(0);
    assert_eq!(v, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_modes() {
    let c = cluster();
    let ca = ca_file().display().to_string();
    let port = c.primary.port;
    let on_localhost = |yaml: String| {
        yaml.replacen(
            &format!("host: 127.0.0.1, port: {port}"),
            &format!("host: localhost, port: {port}"),
            1,
        )
    };
    let cases = [
        (", tls: disable".to_owned(), false),
        (String::new(), true), // default: prefer
        (", tls: require".to_owned(), true),
        (format!(", tls: verify-full, tls_ca: {ca}"), true),
    ];
    for (primary_extra, want_ssl) in cases {
        let yaml = on_localhost(config_yaml_with(c, &primary_extra, ""));
        let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
        let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
        let client = connect(proxy.addr).await;
        let ssl: bool = client
            .query_one(
                "/* pgmeridian:primary */ select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ssl, want_ssl, "primary{primary_extra}");
        proxy.shutdown().await;
    }
    // verify-full by IP address, which the certificate (issued for localhost) does not carry.
    let yaml = without_replicas(&config_yaml_with(
        c,
        &format!(", tls: verify-full, tls_ca: {ca}"),
        "",
    ));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let err = refused(
        connect_as(proxy.addr, "app", APP_PASSWORD).await,
        "certificate name mismatch refused",
    );
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err:?}");
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("TLS handshake failed"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_reach_the_backend_and_parameter_status_comes_back() {
    let proxy = proxy("").await;
    let conn = format!(
        "{} application_name=pgm-app options='-c search_path=pg_catalog -c statement_timeout=1234'",
        conn_string(proxy.addr, "app", APP_PASSWORD, "app")
    );
    let (client, c) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(c);
    let row = client
        .query_one(
            "select current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout')",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        got,
        ("pgm-app".into(), "pg_catalog".into(), "1234ms".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_backends_fail_with_08006() {
    let c = cluster();
    // Nothing listens on this port.
    let closed = pgmeridian::localpg::free_port().unwrap();
    // This one accepts TCP but never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (port, expect) in [
        (closed, "could not connect to app/primary"),
        (silent_port, "timed out connecting to app/primary"),
    ] {
        let yaml = without_replicas(
            &config_yaml(c, "limits: { connect_timeout: 500ms }\n").replacen(
                &format!("port: {}, region: us-east", c.primary.port),
                &format!("port: {port}, region: us-east"),
                1,
            ),
        );
        let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
        let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
        let started = Instant::now();
        let err = refused(
            connect_as(proxy.addr, "app", APP_PASSWORD).await,
            "backend unavailable",
        );
        assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err:?}");
        let msg = err.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains(expect), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by connect_timeout, took {:?}",
            started.elapsed()
        );
        proxy.shutdown().await;
    }
    drop(silent);
}
