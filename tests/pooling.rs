//! Transaction pooling against a real primary and two caught-up replicas in one region: idle
//! clients hold no backends, 500 pgbench clients share 10 server connections per node, reads
//! spread over equally near replicas, a waiting client gets 53300, session state and prepared
//! statements follow the session, a late cancel never reaches another client's query, session
//! mode keeps a backend per session, a reload resizes pools live, an acquire given up midway
//! leaves no count behind, and warm connections stay within the size. Plus the two driver bugs
//! from the pooling issue: psycopg's DEALLOCATE of a statement the backend never saw, and a
//! libpq pipeline failing inside a transaction.
mod common;

/// Two replicas replaying without delay (both in eu-west, so they are equally near).
pub const REPLICA_DELAYS_MS: &[u64] = &[0, 0];

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::*;
use pgmeridian::localpg::PgBin;
use pgmeridian::protocol::frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Client backends of `app` on the node at `port`, the proxy's probes left out.
/// Tests here count the cluster's backends: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn app_backends(port: u16) -> i64 {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' \
             and backend_type = 'client backend' and application_name not in ('pgmeridian-probe', 'pgmeridian-catalog')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn node_ports() -> Vec<u16> {
    let c = cluster();
    std::iter::once(c.primary.port)
        .chain(c.replicas.iter().map(|r| r.port))
        .collect()
}

fn pgbench(addr: std::net::SocketAddr, args: &[&str]) -> Command {
    let bin = PgBin::find().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin.program("pgbench"));
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "disable")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-U",
            "app",
        ])
        .args(args)
        .arg("app");
    cmd
}

async fn run(mut cmd: Command) -> String {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_hold_no_backends_and_500_clients_share_10_connections() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy_ready("pooling: { size: 10 }\n").await;
    // The first login fills the pool's greeting cache; then 50 clients that send nothing.
    let first = connect(proxy.addr).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(connect(proxy.addr).await);
    }
    let mut total = 0;
    for port in node_ports() {
        total += app_backends(port).await;
    }
    assert!(total <= 1, "{total} backends for 51 idle clients");
    drop(idle);
    drop(first);

    run(pgbench(proxy.addr, &["-i", "-s", "1", "-q"])).await;
    // Sample every node's backends for `app` while pgbench runs.
    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for port in node_ports() {
                    peak.fetch_max(app_backends(port).await, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for workload in [&["-S"][..], &[][..]] {
        let mut args = vec!["-n", "-c", "500", "-j", "2", "-T", "4"];
        args.extend_from_slice(workload);
        let out = run(pgbench(proxy.addr, &args)).await;
        assert!(out.contains("number of failed transactions: 0 "), "{out}");
        assert!(!out.contains("aborted"), "{out}");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        (1..=10).contains(&peak),
        "at most pooling.size backends per node, saw {peak}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equally_near_replicas_share_the_reads() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy_ready("").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let c = connect(addr).await;
            let mut ports = Vec::new();
            for _ in 0..40 {
                ports.push(served_port(&c).await);
            }
            ports
        }));
    }
    let mut count: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        for p in t.await.unwrap() {
            *count.entry(p).or_default() += 1;
        }
    }
    let c = cluster();
    let shares: Vec<usize> = c
        .replicas
        .iter()
        .map(|r| count.get(&r.port).copied().unwrap_or(0))
        .collect();
    assert_eq!(
        shares.iter().sum::<usize>(),
        320,
        "every read on a replica: {count:?}"
    );
    assert!(
        shares.iter().all(|&n| n >= 320 / 5),
        "both replicas get a fair part of the reads: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_past_wait_timeout_gets_53300_and_goes_on() {
    let _serial = SERIAL.lock().await;
    let yaml = without_replicas(&config_yaml(
        cluster(),
        "pooling: { size: 1, wait_timeout: 300ms }\n",
    ));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let a = connect(proxy.addr).await;
    let b = connect(proxy.addr).await;
    a.batch_execute("begin").await.unwrap();
    let started = Instant::now();
    let e = b.simple_query("select 1").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    a.batch_execute("commit").await.unwrap();
    b.simple_query("select 1").await.unwrap();
}

/// The primary's pool for `user` in `/status` (null before its first use).
async fn primary_pool_of(admin: std::net::SocketAddr, user: &str) -> serde_json::Value {
    let s: serde_json::Value = serde_json::from_str(&http_get(admin, "/status").await.1).unwrap();
    let pools = s["clusters"]["app"]["nodes"][0]["pools"]
        .as_array()
        .cloned();
    pools
        .unwrap_or_default()
        .into_iter()
        .find(|p| p["user"] == user)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_given_up_midway_leaves_no_count_behind() {
    let _serial = SERIAL.lock().await;
    // A session's acquire is dropped when the session ends while it waits or logs in (its
    // startup timeout, a shutdown): the pool's counts must not keep it.
    let yaml = without_replicas(&config_yaml(
        cluster(),
        "admin_listen: 127.0.0.1:0\npooling: { size: 1, wait_timeout: 30s }\n",
    ));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let admin = proxy.admin_addr.unwrap();
    let options = pgmeridian::backend::ConnectOptions::from(&proxy.shared.topology.load().limits);
    let a = connect(proxy.addr).await;
    a.batch_execute("begin; select 1").await.unwrap();
    let pool = proxy
        .shared
        .pools
        .all()
        .into_iter()
        .find(|p| p.user_name == "app")
        .unwrap();
    // Waiting for the only connection, then given up.
    let gave_up = tokio::time::timeout(Duration::from_millis(200), pool.acquire(options)).await;
    assert!(gave_up.is_err(), "the only connection is leased");
    let stats = pool.stats();
    assert_eq!((stats.waiting, stats.open), (0, 1), "{stats:?}");
    assert!(metric(&proxy, "pgmeridian_pool_clients_waiting{").abs() < 0.5);
    // Given up while logging in to the server: the half-made connection is not counted.
    a.batch_execute("commit").await.unwrap();
    drop(a);
    let mut given_up_in_login = 0;
    for _ in 0..50 {
        // The pool's one connection closes (a discarded lease), so the next acquire logs in.
        if let Some(lease) = pool.try_acquire_now(std::time::Instant::now()) {
            pool.release(lease, false, std::time::Instant::now());
        }
        assert_eq!(pool.stats().open, pool.stats().idle, "{:?}", pool.stats());
        match tokio::time::timeout(Duration::from_micros(300), pool.acquire(options)).await {
            Err(_) => given_up_in_login += 1,
            Ok(lease) => pool.release(lease.unwrap(), false, std::time::Instant::now()),
        }
        let stats = pool.stats();
        assert_eq!(stats.open, stats.idle, "nothing leased: {stats:?}");
    }
    assert!(
        given_up_in_login > 0,
        "no acquire was given up in its login"
    );
    // The pool still serves its size.
    let c = connect(proxy.addr).await;
    c.simple_query("select 1").await.unwrap();
    let status = primary_pool_of(admin, "app").await;
    assert!(status["open"].as_u64().unwrap() <= 1, "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_never_take_the_pool_past_its_size() {
    let _serial = SERIAL.lock().await;
    let primary = cluster().primary.port;
    let yaml = without_replicas(&config_yaml(
        cluster(),
        "admin_listen: 127.0.0.1:0\npooling: { size: 3, min_idle: 2 }\n",
    ));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let admin = proxy.admin_addr.unwrap();
    // Two idle warm connections appear on their own.
    let mut pool = serde_json::Value::Null;
    for _ in 0..100 {
        pool = primary_pool_of(admin, "app").await;
        if pool["idle"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool["idle"], 2, "{pool:#}");
    // Two clients hold both in transactions: one place is left, and the warm-up may fill it
    // but must not open past the size to get back to two idle connections.
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = connect(proxy.addr).await;
        c.batch_execute("begin; select 1").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pool = primary_pool_of(admin, "app").await;
    assert_eq!(pool["open"], 3, "{pool:#}");
    assert_eq!(app_backends(primary).await, 3);
    for c in &held {
        c.batch_execute("commit").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_the_session_across_pooled_connections() {
    let _serial = SERIAL.lock().await;
    let yaml = without_replicas(&config_yaml(cluster(), "pooling: { size: 2 }\n"));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let a = connect(proxy.addr).await;
    let b = connect(proxy.addr).await;
    a.batch_execute("set search_path = a_schema, public")
        .await
        .unwrap();
    a.batch_execute("set application_name = 'session-a'")
        .await
        .unwrap();
    let stmt = a
        .prepare("select current_setting('search_path')")
        .await
        .unwrap();
    for _ in 0..20 {
        // b uses whichever connection; a's settings and statement stay a's.
        let bs: String = b.query_one("show search_path", &[]).await.unwrap().get(0);
        assert_eq!(bs, "\"$user\", public");
        let r: String = a.query_one(&stmt, &[]).await.unwrap().get(0);
        assert_eq!(r, "a_schema, public");
        let app: String = a
            .query_one("show application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(app, "session-a");
    }
    // A temporary table pins its session to a connection of its own for life.
    let c = connect(proxy.addr).await;
    c.batch_execute("create temp table pinned_scratch (x int)")
        .await
        .unwrap();
    for _ in 0..5 {
        c.batch_execute("insert into pinned_scratch values (1)")
            .await
            .unwrap();
        b.simple_query("select 1").await.unwrap();
    }
    let n: i64 = c
        .query_one("select count(*) from pinned_scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_reaches_another_clients_query() {
    let _serial = SERIAL.lock().await;
    let yaml = without_replicas(&config_yaml(cluster(), "pooling: { size: 1 }\n"));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let a = connect(proxy.addr).await;
    let b = connect(proxy.addr).await;
    let a_pid: i32 = a
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // b runs on the same (only) server connection; a cancels late.
    let sleeping = tokio::spawn(async move {
        let pid: i32 = b
            .query_one("select pg_backend_pid() from pg_sleep(1.5)", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        Ok::<i32, String>(pid)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let b_pid = sleeping
        .await
        .unwrap()
        .expect("b's query must not be cancelled");
    assert_eq!(b_pid, a_pid, "both ran on the one pooled connection");
    // a's own running query is still cancellable.
    let token = a.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let e = a.simple_query("select pg_sleep(5)").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    canceller.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_backend_per_session() {
    let _serial = SERIAL.lock().await;
    let yaml = without_replicas(&config_yaml(cluster(), "pooling: { mode: session }\n"));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let a = connect(proxy.addr).await;
    let first: i32 = a
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let b = connect(proxy.addr).await;
    for _ in 0..5 {
        let p: i32 = a
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(p, first);
        let q: i32 = b
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(q, first, "another session has its own backend");
    }
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next session gets the returned connection (no new backend login).
    let c = connect(proxy.addr).await;
    let p: i32 = c
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resizes_pools_and_keeps_their_connections() {
    let _serial = SERIAL.lock().await;
    let dir = cluster().base.join("pooling-reload");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgmeridian.yaml");
    let yaml = |size: u32| {
        config_yaml(
            cluster(),
            &format!("admin_listen: 127.0.0.1:0\npooling: {{ size: {size} }}\n"),
        )
    };
    std::fs::write(&path, yaml(2)).unwrap();
    let config = pgmeridian::config::Config::load(&path).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let admin = proxy.admin_addr.unwrap();
    let c = connect(proxy.addr).await;
    c.batch_execute("select 1").await.unwrap();
    let primary_pool = |s: &serde_json::Value| s["clusters"]["app"]["nodes"][0]["pools"][0].clone();
    let s: serde_json::Value = serde_json::from_str(&http_get(admin, "/status").await.1).unwrap();
    assert_eq!(primary_pool(&s)["size"], 2, "{s:#}");
    let open_before = primary_pool(&s)["open"].as_u64().unwrap();
    assert!(open_before >= 1);
    std::fs::write(&path, yaml(7)).unwrap();
    pgmeridian::reload::reload(&proxy.shared, &path).await;
    let s: serde_json::Value = serde_json::from_str(&http_get(admin, "/status").await.1).unwrap();
    assert_eq!(primary_pool(&s)["size"], 7, "{s:#}");
    assert_eq!(
        primary_pool(&s)["open"],
        open_before,
        "connections kept: {s:#}"
    );
    c.simple_query("select 1").await.unwrap();
}

fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut m = BytesMut::new();
    m.put_u8(tag);
    m.put_u32(body.len() as u32 + 4);
    m.put_slice(body);
    m
}

fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn parse(name: &str, sql: &str) -> BytesMut {
    let mut b = cstrs(&[name, sql]);
    b.extend_from_slice(&[0, 0]);
    msg(b'P', &b)
}

fn bind(stmt: &str, params: &[&str]) -> BytesMut {
    let mut b = cstrs(&["", stmt]);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    msg(b'B', &b)
}

fn exec() -> BytesMut {
    msg(b'E', &[0, 0, 0, 0, 0])
}

/// Reads until the `n`th ReadyForQuery; returns the tags seen (with SQLSTATEs of errors).
async fn answers(s: &mut TcpStream, buf: &mut BytesMut, n: usize) -> String {
    answers_until(s, buf, n, None).await
}

/// Reads until the `n`th ReadyForQuery or the first message tagged `stop`.
async fn answers_until(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    n: usize,
    stop: Option<u8>,
) -> String {
    let mut tags = String::new();
    let mut z = 0;
    loop {
        while let Some(m) = frame::split_message(buf, 1 << 24).unwrap() {
            if m[0] == b'S' {
                // ParameterStatus (the causal token after a commit) is not part of the answer.
                continue;
            }
            tags.push(m[0] as char);
            if m[0] == b'E' {
                let f = pgmeridian::protocol::backend::ErrorFields::parse(frame::body(&m)).unwrap();
                tags.push_str(&format!("({})", f.code));
            }
            if m[0] == b'Z' {
                tags.push(m[5] as char);
                z += 1;
                if z == n {
                    return tags;
                }
            }
            if Some(m[0]) == stop {
                return tags;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_buf(buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            other => panic!("hang or close after {tags:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_of_a_statement_the_backend_never_saw() {
    let _serial = SERIAL.lock().await;
    // psycopg evicts past prepared_max with DEALLOCATE; the statement may live only on another
    // server connection (or none): PostgreSQL's answer must come back either way.
    let yaml = config_yaml(cluster(), "pooling: { size: 3 }\n");
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    for i in 0..120 {
        out.unsplit(parse(&format!("_pg3_{i}"), &format!("select {i}")));
        out.unsplit(bind(&format!("_pg3_{i}"), &[]));
        out.unsplit(exec());
        out.unsplit(msg(b'S', b""));
    }
    s.write_all(&out).await.unwrap();
    let tags = answers(&mut s, &mut buf, 120).await;
    assert!(!tags.contains('E'), "{tags}");
    for i in 0..20 {
        s.write_all(&msg(b'Q', &cstrs(&[&format!("DEALLOCATE _pg3_{i}")])))
            .await
            .unwrap();
        let tags = answers(&mut s, &mut buf, 1).await;
        assert_eq!(tags, "CZI", "DEALLOCATE _pg3_{i}");
    }
    // A deallocated statement is gone, as in PostgreSQL; the others still run.
    s.write_all(&[bind("_pg3_0", &[]), exec(), msg(b'S', b"")].concat())
        .await
        .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "E(26000)ZI");
    s.write_all(&[bind("_pg3_119", &[]), exec(), msg(b'S', b"")].concat())
        .await
        .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "2DCZI");
    s.write_all(&msg(b'Q', &cstrs(&["DEALLOCATE ALL"])))
        .await
        .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "CZI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_libpq_pipeline_in_a_transaction_does_not_hang() {
    let _serial = SERIAL.lock().await;
    // psycopg's test_pipeline_communicate_uniqviol: BEGIN, PREPARE, five pipelined executions
    // with the third violating the key, COMMIT, one Sync.
    let t = table("uniqviol");
    setup(&format!(
        "create table {t} (id int primary key); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    out.unsplit(parse("", "BEGIN"));
    out.unsplit(bind("", &[]));
    out.unsplit(exec());
    out.unsplit(parse("ins", &format!("insert into {t} values ($1)")));
    for id in ["1", "2", "1", "3", "4"] {
        out.unsplit(bind("ins", &[id]));
        out.unsplit(exec());
    }
    out.unsplit(parse("", "COMMIT"));
    out.unsplit(bind("", &[]));
    out.unsplit(exec());
    out.unsplit(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let tags = answers(&mut s, &mut buf, 1).await;
    assert_eq!(tags, "12C12C2C2E(23505)ZE");
    s.write_all(&msg(b'Q', &cstrs(&["ROLLBACK"])))
        .await
        .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "CZI");
    assert_eq!(rows_on_primary(&t).await, 0);
    // The session and its server connections are usable again.
    s.write_all(&msg(
        b'Q',
        &cstrs(&[&format!("insert into {t} values (9)")]),
    ))
    .await
    .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "CZI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_without_sync_gets_its_answers_as_postgresql_gives_them() {
    // psycopg's test_pipeline_communicate_uniqviol as libpq sends it: the statements go out in
    // pipeline mode with no Sync and no Flush, and the client waits for their results.
    let _serial = SERIAL.lock().await;
    let t = table("nosync");
    setup(&format!(
        "create table {t} (id int primary key); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    s.write_all(&msg(b'Q', &cstrs(&["BEGIN"]))).await.unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "CZT");
    s.write_all(
        &[
            parse("ins", &format!("insert into {t} values ($1) returning id")),
            msg(b'S', b""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "1ZT");
    let mut out = BytesMut::new();
    for id in ["1", "2", "1", "3", "4"] {
        out.unsplit(bind("ins", &[id]));
        out.unsplit(exec());
    }
    out.unsplit(parse("", "COMMIT"));
    out.unsplit(bind("", &[]));
    out.unsplit(exec());
    s.write_all(&out).await.unwrap();
    // No Sync yet: the results (and the error) still arrive.
    let tags = answers_until(&mut s, &mut buf, 0, Some(b'E')).await;
    assert_eq!(tags, "2DC2DC2E(23505)");
    s.write_all(&msg(b'S', b"")).await.unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "ZE");
    s.write_all(&msg(b'Q', &cstrs(&["ROLLBACK"])))
        .await
        .unwrap();
    assert_eq!(answers(&mut s, &mut buf, 1).await, "CZI");
}
