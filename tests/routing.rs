//! Read/write routing against a real primary and two replicas replaying 200 ms and 500 ms
//! behind (`recovery_min_apply_delay`): writes never reach a replica, a session's reads see its
//! own writes, reads go to replicas, and session state follows the session between backends.

mod common;

/// Two replicas with real replication lag.
pub const REPLICA_DELAYS_MS: &[u64] = &[200, 500];

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::Client;

use common::*;

async fn served_by(client: &Client, sql: &str) -> i32 {
    client.query_one(sql, &[]).await.unwrap().get::<_, i32>(0)
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    stale: AtomicU64,
    replica_reads: AtomicU64,
    later_reads: AtomicU64,
    later_replica_reads: AtomicU64,
    reader_reads: AtomicU64,
    reader_replica_reads: AtomicU64,
}

/// Reads session `id`'s row: (it shows write number `n`, a replica served it).
async fn read_own_row(
    c: &Client,
    read: &tokio_postgres::Statement,
    id: i32,
    n: i64,
) -> (bool, bool) {
    let row = c.query_one(read, &[&id]).await.unwrap();
    let (v, port): (i64, i32) = (row.get(0), row.get(1));
    (v >= n, port != primary_port())
}

fn count(
    reads: &AtomicU64,
    stale: &AtomicU64,
    replica_reads: &AtomicU64,
    fresh: bool,
    replica: bool,
) {
    reads.fetch_add(1, Ordering::Relaxed);
    if !fresh {
        stale.fetch_add(1, Ordering::Relaxed);
    }
    if replica {
        replica_reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// 16 sessions each write their own row and immediately read it back, for `run_for`; every
/// 8th round a session also reads again 1.1 s after its write. 4 more sessions only read.
async fn consistency(mode: &str, run_for: Duration) -> Arc<Counts> {
    let t = table(&format!("ryw_{mode}"));
    setup(&format!(
        "create table {t} (id int primary key, v bigint not null);
         insert into {t} select g, 0 from generate_series(0, 15) g;
         grant all on {t} to app;"
    ))
    .await;
    let proxy = proxy_ready(&format!("routing: {{ read_your_writes: {mode} }}\n")).await;
    let counts = Arc::new(Counts::default());
    // Every session connects and prepares first; the clock starts when all are ready.
    let ready = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for id in 0..16i32 {
        let (counts, t, addr, ready) = (counts.clone(), t.clone(), proxy.addr, ready.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(addr).await;
            let write = c
                .prepare(&format!("update {t} set v = $2 where id = $1"))
                .await
                .unwrap();
            let read = c
                .prepare(&format!(
                    "select v, inet_server_port() from {t} where id = $1"
                ))
                .await
                .unwrap();
            ready.wait().await;
            let deadline = Instant::now() + run_for;
            let mut n = 0i64;
            while Instant::now() < deadline {
                n += 1;
                c.execute(&write, &[&id, &n]).await.unwrap();
                let (fresh, replica) = read_own_row(&c, &read, id, n).await;
                count(
                    &counts.reads,
                    &counts.stale,
                    &counts.replica_reads,
                    fresh,
                    replica,
                );
                if n % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                    let (fresh, replica) = read_own_row(&c, &read, id, n).await;
                    count(
                        &counts.later_reads,
                        &counts.stale,
                        &counts.later_replica_reads,
                        fresh,
                        replica,
                    );
                }
            }
        }));
    }
    for _ in 0..4 {
        let (counts, t, addr, ready) = (counts.clone(), t.clone(), proxy.addr, ready.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(addr).await;
            ready.wait().await;
            let deadline = Instant::now() + run_for;
            while Instant::now() < deadline {
                let port: i32 = c
                    .query_one(&format!("select inet_server_port() from {t} limit 1"), &[])
                    .await
                    .unwrap()
                    .get(0);
                counts.reader_reads.fetch_add(1, Ordering::Relaxed);
                if port != primary_port() {
                    counts.reader_replica_reads.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    proxy.shutdown().await;
    counts
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_holds_under_concurrency_and_reads_use_replicas() {
    let on = consistency("lsn", Duration::from_secs(20)).await;
    let (reads, stale) = (load(&on.reads) + load(&on.later_reads), load(&on.stale));
    let reader_share = load(&on.reader_replica_reads) as f64 / load(&on.reader_reads).max(1) as f64;
    let later_share = load(&on.later_replica_reads) as f64 / load(&on.later_reads).max(1) as f64;
    eprintln!(
        "read_your_writes=lsn: {reads} reads, {stale} stale; read-only sessions {:.1}% on replicas ({} reads); \
         reads 1.1 s after a write {:.1}% on replicas ({} reads); immediate reads {:.1}% on replicas",
        reader_share * 100.0,
        load(&on.reader_reads),
        later_share * 100.0,
        load(&on.later_reads),
        load(&on.replica_reads) as f64 * 100.0 / load(&on.reads).max(1) as f64,
    );
    assert!(
        reads > 1000,
        "the checker did too little work to mean anything: {reads} reads"
    );
    assert_eq!(stale, 0, "stale reads with read-your-writes on");
    assert!(
        reader_share >= 0.95,
        "read-only sessions got {:.1}% of reads from replicas",
        reader_share * 100.0
    );
    assert!(load(&on.later_reads) >= 16, "too few late reads to judge");
    assert!(
        later_share >= 0.5,
        "reads 1.1 s after a write: {:.1}% from replicas",
        later_share * 100.0
    );

    // The same checker with the guarantee off must find stale reads: proof it can fail.
    let off = consistency("off", Duration::from_secs(5)).await;
    eprintln!(
        "read_your_writes=off: {} reads, {} stale",
        load(&off.reads),
        load(&off.stale)
    );
    assert!(
        load(&off.stale) > 0,
        "the checker found no stale reads with read-your-writes off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_mode_also_reads_its_writes() {
    let w = consistency("window", Duration::from_secs(5)).await;
    eprintln!(
        "read_your_writes=window: {} reads, {} stale",
        load(&w.reads),
        load(&w.stale)
    );
    // A floor that says the checker ran (it shares 2 cores with the other routing tests).
    assert!(
        load(&w.reads) > 30,
        "the checker did too little work: {}",
        load(&w.reads)
    );
    assert_eq!(load(&w.stale), 0, "stale reads in window mode");
}

/// Every shape of write, as simple and as extended protocol, in autocommit, inside
/// BEGIN … COMMIT and after a session SET: none may reach a replica (SQLSTATE 25006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_shape_reaches_a_replica() {
    setup(
        "create table if not exists ws (id serial primary key, v int);
         insert into ws (v) values (0);
         create sequence if not exists wseq;
         create or replace procedure wproc() language sql as $$ insert into ws (v) values (1) $$;
         grant all on ws, ws_id_seq, wseq to app; grant create on schema public to app;",
    )
    .await;
    let proxy = proxy_ready("").await;
    let client = connect(proxy.addr).await;
    let n = AtomicU64::new(0);
    let shapes = |extended: bool| -> Vec<String> {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let mut v = vec![
            "insert into ws (v) values (1)".to_owned(),
            "update ws set v = v + 1 where id = 1".to_owned(),
            "delete from ws where id < 0".to_owned(),
            "merge into ws using (select 1 as id) s on ws.id = s.id when matched then update set v = 0".to_owned(),
            "select * from ws where id = 1 for update".to_owned(),
            "select * from ws where id = 1 for no key update".to_owned(),
            "select * from ws where id = 1 for share".to_owned(),
            "select * from (select * from ws for key share) sub".to_owned(),
            format!("select v into ws_into_{i} from ws"),
            format!("drop table ws_into_{i}"),
            "with x as (insert into ws (v) values (2) returning id) select * from x".to_owned(),
            "select nextval('wseq')".to_owned(),
            "select setval('wseq', 100)".to_owned(),
            "select pg_advisory_xact_lock(42)".to_owned(),
            "select txid_current()".to_owned(),
            "select pg_notify('chan', 'x')".to_owned(),
            "call wproc()".to_owned(),
            "do $$ begin perform 1; end $$".to_owned(),
            format!("create table wt_{i} (x int)"),
            format!("alter table wt_{i} add column y int"),
            format!("drop table wt_{i}"),
            "explain analyze insert into ws (v) values (3)".to_owned(),
            "notify chan".to_owned(),
            "truncate table ws_t".to_owned(),
            "analyze ws".to_owned(),
            "select lo_unlink(lo_create(0))".to_owned(),
            "/* a comment first */ insert into ws (v) values (5)".to_owned(),
            "INSERT\tINTO ws (v)\nVALUES (6)".to_owned(),
        ];
        if !extended {
            v.push("select 1; insert into ws (v) values (4)".to_owned());
            v.push("vacuum ws".to_owned());
        }
        v
    };
    client
        .batch_execute("create table if not exists ws_t (x int)")
        .await
        .unwrap();
    let mut failures = Vec::new();
    let mut check = |what: String, r: Result<(), tokio_postgres::Error>| {
        if let Err(e) = r {
            failures.push(format!("{what}: {e:?}"));
        }
    };
    for round in ["autocommit", "in transaction", "after SET search_path"] {
        if round == "after SET search_path" {
            client
                .batch_execute("set search_path = public")
                .await
                .unwrap();
        }
        let txn = round == "in transaction";
        for extended in [false, true] {
            for sql in shapes(extended) {
                if txn && (sql.starts_with("vacuum") || sql.contains("; ")) {
                    continue;
                }
                if txn {
                    client.batch_execute("begin").await.unwrap();
                }
                let r = if extended {
                    client.execute(sql.as_str(), &[]).await.map(drop)
                } else {
                    client.simple_query(&sql).await.map(drop)
                };
                check(format!("[{round}, extended={extended}] {sql}"), r);
                if txn {
                    client.batch_execute("commit").await.unwrap();
                }
            }
        }
        // LOCK only exists inside a transaction; COPY FROM is its own sub-protocol.
        client.batch_execute("begin").await.unwrap();
        check(
            format!("[{round}] lock"),
            client.batch_execute("lock table ws in share mode").await,
        );
        client.batch_execute("commit").await.unwrap();
        let sink = client.copy_in("copy ws (v) from stdin").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        sink.send(Bytes::from_static(b"7\n8\n")).await.unwrap();
        check(
            format!("[{round}] copy from"),
            sink.finish().await.map(drop),
        );
    }
    assert!(
        failures.is_empty(),
        "writes that failed through the proxy:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_move_between_backends() {
    let t = table("ps");
    setup(&format!("create table {t} (id int primary key, v text); insert into {t} values (1, 'x'); grant all on {t} to app;")).await;
    let proxy = proxy_ready("").await;
    let c = connect(proxy.addr).await;
    let replicas: Vec<i32> = cluster()
        .replicas
        .iter()
        .map(|r| i32::from(r.port))
        .collect();

    // Prepared while pinned to the primary by a write, executed later on a replica.
    c.execute(&format!("update {t} set v = 'y' where id = 1"), &[])
        .await
        .unwrap();
    let on_primary = c
        .prepare(&format!(
            "select v, inet_server_port() from {t} where id = $1"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let row = c.query_one(&on_primary, &[&1i32]).await.unwrap();
    let (v, port): (String, i32) = (row.get(0), row.get(1));
    assert_eq!(v, "y");
    assert!(replicas.contains(&port), "expected a replica, got {port}");

    // Prepared on a replica, executed on the primary right after a write.
    let on_replica = c.prepare("select inet_server_port()").await.unwrap();
    c.execute(&format!("update {t} set v = 'z' where id = 1"), &[])
        .await
        .unwrap();
    let port: i32 = c.query_one(&on_replica, &[]).await.unwrap().get(0);
    assert_eq!(port, primary_port(), "pinned after the write");
    let v: String = c
        .query_one(&format!("select v from {t} where id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "z", "read your write");

    // Both statements still work wherever they run next.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        c.query_one(&on_primary, &[&1i32]).await.unwrap();
        c.query_one(&on_replica, &[]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_are_in_force_on_whichever_node_answers() {
    setup(
        "create schema if not exists pgm_s; create table if not exists pgm_s.marker (v text);
         truncate pgm_s.marker; insert into pgm_s.marker values ('from-schema');
         grant usage on schema pgm_s to app; grant all on pgm_s.marker to app;",
    )
    .await;
    let proxy = proxy_ready("").await;
    let c = connect(proxy.addr).await;
    c.batch_execute("set search_path = pgm_s, public")
        .await
        .unwrap();
    c.batch_execute("SET TIME ZONE 'Asia/Tokyo'").await.unwrap();
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..3 {
        // Right after a write (primary), then once the replicas have caught up.
        c.batch_execute("update marker set v = v").await.unwrap();
        for wait in [0u64, 1100] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let row = c
                .query_one(
                    "select v, current_setting('TimeZone'), inet_server_port() from marker",
                    &[],
                )
                .await
                .unwrap();
            let (v, tz, port): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                (v.as_str(), tz.as_str()),
                ("from-schema", "Asia/Tokyo"),
                "on port {port}"
            );
            ports.insert(port);
        }
    }
    assert!(
        ports.contains(&primary_port()) && ports.len() >= 2,
        "both kinds of node answered: {ports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_transactions() {
    let proxy = proxy_ready("").await;
    let c = connect(proxy.addr).await;
    let p = primary_port();
    assert_ne!(
        served_by(&c, "select inet_server_port()").await,
        p,
        "plain read on a replica"
    );
    assert_eq!(
        served_by(&c, "/* pgmeridian:primary */ select inet_server_port()").await,
        p
    );
    // SET pgmeridian.route is answered by the proxy and steers the session.
    c.simple_query("SET pgmeridian.route = primary")
        .await
        .unwrap();
    assert_eq!(served_by(&c, "select inet_server_port()").await, p);
    c.simple_query("set pgmeridian.route to 'auto'")
        .await
        .unwrap();
    assert_ne!(served_by(&c, "select inet_server_port()").await, p);
    // A read-write transaction stays on the primary, reads included.
    c.batch_execute("begin").await.unwrap();
    assert_eq!(served_by(&c, "select inet_server_port()").await, p);
    c.batch_execute("commit").await.unwrap();
    // A read-only transaction runs on one replica (once the read-write transaction above,
    // which may have written, has replicated).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.batch_execute("begin read only").await.unwrap();
    let first = served_by(&c, "select inet_server_port()").await;
    assert_ne!(first, p);
    assert_eq!(served_by(&c, "select inet_server_port()").await, first);
    c.batch_execute("commit").await.unwrap();
    // A temp table pins the session to the primary for good.
    c.batch_execute("create temp table pinned (x int)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(served_by(&c, "select inet_server_port()").await, p);
}

/// A user function that writes looks like a read; the replica refuses it (25006) and the
/// proxy re-runs it on the primary before the client sees anything, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_replica_refuses_are_rerun_on_the_primary() {
    let t = table("sn");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to app;
         create or replace function pgm_writer_{t}() returns int language sql volatile
           as 'insert into {t} values (1) returning 1';"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let c = connect(proxy.addr).await;
    let call = format!("select pgm_writer_{t}()");
    c.simple_query(&call)
        .await
        .expect("simple protocol: retried on the primary");
    // The retried statement wrote: the read right after it must see that (read-your-writes).
    let n: i64 = c
        .query_one(format!("select count(*) from {t}").as_str(), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "stale read right after a retried write");
    let v: i32 = c
        .query_one(call.as_str(), &[])
        .await
        .expect("extended protocol")
        .get(0);
    assert_eq!(v, 1);
    for _ in 0..3 {
        c.simple_query(&call).await.unwrap();
    }
    let n: i64 = rows_on_primary(&t).await;
    assert_eq!(n, 5, "each call wrote exactly once");
    // Reads around it still use replicas once the write has replicated.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_ne!(
        served_by(&c, "select inet_server_port()").await,
        primary_port()
    );
}

/// asyncpg prepares with Parse/Describe/Flush and waits for the answer before sending Sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_describe_flush_is_answered_before_sync() {
    use bytes::{BufMut, BytesMut};
    use pgmeridian::protocol::frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let msg = |tag: u8, body: &[u8]| {
        let mut m = BytesMut::new();
        m.put_u8(tag);
        m.put_u32(body.len() as u32 + 4);
        m.put_slice(body);
        m
    };
    let mut out = BytesMut::new();
    out.unsplit(msg(
        b'P',
        b"st1\0select inet_server_port(), $1::int + 1\0\0\0",
    ));
    out.unsplit(msg(b'D', b"Sst1\0"));
    out.unsplit(msg(b'H', b""));
    s.write_all(&out).await.unwrap();
    // ParseComplete, ParameterDescription, RowDescription arrive without a Sync.
    let mut buf = BytesMut::new();
    let mut tags = Vec::new();
    while tags.len() < 3 {
        match frame::split_message(&mut buf, 1 << 20).unwrap() {
            Some(m) => tags.push(m[0]),
            None => {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
                    .await
                    .expect("answer to Flush arrives before any Sync")
                    .unwrap();
                assert!(n > 0);
            }
        }
    }
    assert_eq!(tags, [b'1', b't', b'T']);
    // Then Bind/Execute/Sync on the prepared statement.
    let mut out = BytesMut::new();
    out.unsplit(msg(b'B', b"\0st1\0\0\0\0\x01\0\0\0\x0241\0\0"));
    out.unsplit(msg(b'E', b"\0\0\0\0\0"));
    out.unsplit(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let mut tags = Vec::new();
    loop {
        match frame::split_message(&mut buf, 1 << 20).unwrap() {
            Some(m) => {
                tags.push(m[0]);
                if m[0] == b'Z' {
                    break;
                }
            }
            None => assert!(s.read_buf(&mut buf).await.unwrap() > 0),
        }
    }
    assert_eq!(tags, [b'2', b'D', b'C', b'Z']);
}

/// Pipelined batches alternating between replica reads and primary writes: answers come back
/// complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_to_different_backends_are_serialized() {
    let t = table("pipe");
    setup(&format!(
        "create table {t} (id int, v int); grant all on {t} to app;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let c = connect(proxy.addr).await;
    let read = c
        .prepare("select $1::int, inet_server_port()")
        .await
        .unwrap();
    let write = c
        .prepare(&format!("insert into {t} values ($1, $1)"))
        .await
        .unwrap();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let futures = (0..30i32).map(|i| {
            let (c, read, write) = (&c, &read, &write);
            async move {
                if i % 10 == 5 {
                    c.execute(write, &[&i]).await.map(|_| (i, -1))
                } else {
                    c.query_one(read, &[&i])
                        .await
                        .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
                }
            }
        });
        let results: Vec<(i32, i32)> = futures_util::future::join_all(futures)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for (i, (v, port)) in results.iter().enumerate() {
            if i % 10 != 5 {
                assert_eq!(*v, i as i32, "round {round}: answer {i} out of order");
                if i < 5 {
                    assert_ne!(
                        *port,
                        primary_port(),
                        "round {round}: reads before the first write use a replica"
                    );
                }
            }
        }
    }
    let n: i64 = rows_on_primary(&t).await;
    assert_eq!(n, 15);
}

/// `routed_batches_total` for cluster `app` with this reason and target, summed over nodes
/// and geo sources.
fn counter(metrics: &str, reason: &str, target: &str) -> u64 {
    let (r, t) = (
        format!("reason=\"{reason}\""),
        format!("target=\"{target}\""),
    );
    metrics
        .lines()
        .filter(|l| l.starts_with("pgmeridian_routed_batches_total{cluster=\"app\","))
        .filter(|l| l.contains(&r) && l.contains(&t))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_why_each_statement_went_where_it_did() {
    let t = table("metrics");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to app;"
    ))
    .await;
    let proxy = proxy_ready("admin_listen: 127.0.0.1:0\n").await;
    let admin = proxy.admin_addr.expect("admin listener");
    let c = connect(proxy.addr).await;
    let (_, before) = http_get(admin, "/metrics").await;
    c.simple_query(&format!("insert into {t} values (1)"))
        .await
        .unwrap();
    c.simple_query(&format!("select count(*) from {t}"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.simple_query(&format!("select count(*) from {t}"))
        .await
        .unwrap();
    let (status, after) = http_get(admin, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let moved = |reason, target| counter(&after, reason, target) - counter(&before, reason, target);
    assert_eq!(moved("write", "primary"), 1, "{after}");
    assert_eq!(moved("pinned_after_write", "primary"), 1, "{after}");
    assert_eq!(moved("read_nearest", "replica"), 1, "{after}");
    let c = cluster();
    let primary = format!("node=\"127.0.0.1:{}\"", c.primary.port);
    let replica1 = format!("node=\"127.0.0.1:{}\"", c.replicas[1].port);
    for family in [
        format!("pgmeridian_node_up{{cluster=\"app\",{primary}}} 1"),
        format!("pgmeridian_node_primary{{cluster=\"app\",{primary}}} 1"),
        format!("pgmeridian_replica_lag_seconds{{cluster=\"app\",{replica1}}}"),
        "pgmeridian_client_connections".to_owned(),
    ] {
        assert!(after.contains(&family), "missing {family}:\n{after}");
    }
    assert!(!after.contains(&t), "no SQL text in metrics");
    let (status, _) = http_get(admin, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    let (status, body) = http_get(admin, "/readyz").await;
    assert!(status.contains("200"), "{status} {body}");
    let (status, _) = http_get(admin, "/nope").await;
    assert!(status.contains("404"), "{status}");
}
