//! Health, lag and failover against real servers stopped, started and promoted with pg_ctl.
//! One story in order (each step changes the cluster): a replica dies under read load and comes
//! back; a replica lags beyond the budget and catches up; the primary dies; a replica is promoted.

mod common;

/// Replica 0 replays at once; replica 1 stays 1.5 s behind.
pub const REPLICA_DELAYS_MS: &[u64] = &[0, 1500];

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use common::*;

const PROBE_INTERVAL: Duration = Duration::from_millis(100);

async fn port(c: &Client) -> Result<i32, tokio_postgres::Error> {
    c.query_one("select inet_server_port()", &[])
        .await
        .map(|r| r.get(0))
}

/// Runs reads on `sessions` connections until `stop`; counts errors and which port served.
fn read_load(
    addr: std::net::SocketAddr,
    sessions: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (reads, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = (0..sessions)
        .map(|_| {
            let (reads, errors, stop) = (reads.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                let c = connect(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match port(&c).await {
                        Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("read failed: {e:?}");
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    (reads, errors, tasks)
}

/// Polls `f` every 20 ms until it returns true; returns how long that took (fails after 30 s).
async fn until<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_story() {
    let c = cluster();
    let (r0, r1) = (&c.replicas[0], &c.replicas[1]);
    let (p_port, r0_port, r1_port) = (
        i32::from(c.primary.port),
        i32::from(r0.port),
        i32::from(r1.port),
    );
    superuser("app")
        .await
        .batch_execute("create table if not exists fo (id int primary key, v bigint); insert into fo values (1, 0) on conflict do nothing; grant all on fo to app;")
        .await
        .unwrap();
    let proxy = proxy(
        "health: { interval: 100ms, fall: 2, rise: 2 }\nrouting: { max_replica_lag: 800ms }\nadmin_listen: 127.0.0.1:0\n",
    )
    .await;
    let admin = proxy.admin_addr.expect("admin listener");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let probe = connect(proxy.addr).await;
    assert_eq!(
        port(&probe).await.unwrap(),
        r0_port,
        "the nearest caught-up replica serves reads"
    );

    // 1. A replica dies under steady read load: no autocommit read fails; it comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, errors, tasks) = read_load(proxy.addr, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg_ctl("stop_immediate r0", || r0.stop_immediate());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg_ctl("start r0", || r0.start());
    // A fresh session: existing ones keep the replica they moved to (equal rank, no hopping).
    let back = until("replica 0 serves reads again", || async {
        match connect_as(proxy.addr, "app", APP_PASSWORD).await {
            Ok(s) => port(&s).await.ok() == Some(r0_port),
            Err(_) => false,
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "replica stop/start: {} reads, {} errors; back in service {back:?} after pg_ctl start returned (probe interval {PROBE_INTERVAL:?})",
        reads.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    assert!(reads.load(Ordering::Relaxed) > 100);
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "client-visible read errors while a replica died"
    );
    assert!(
        back < Duration::from_secs(3),
        "replica took {back:?} to serve reads again"
    );

    // 2. With replica 0 gone, replica 1 (1.5 s behind) serves reads only while within 800 ms.
    pg_ctl("stop r0", || r0.stop());
    let writer = connect(proxy.addr).await;
    let writing = Arc::new(AtomicBool::new(true));
    let w = {
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut n = 0i64;
            while writing.load(Ordering::Relaxed) {
                n += 1;
                writer
                    .execute("update fo set v = $1 where id = 1", &[&n])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..50 {
        assert_ne!(
            port(&probe).await.unwrap(),
            r1_port,
            "a replica beyond max_replica_lag served a read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writing.store(false, Ordering::Relaxed);
    w.await.unwrap();
    let caught_up = until(
        "the lagging replica catches up and serves reads",
        || async { port(&probe).await.ok() == Some(r1_port) },
    )
    .await;
    eprintln!("lagging replica served reads again {caught_up:?} after writes stopped");

    // 3. The primary dies: writes fail fast and clearly; reads go on from the replica.
    pg_ctl("start r0", || r0.start());
    until("replica 0 is back", || async {
        match connect_as(proxy.addr, "app", APP_PASSWORD).await {
            Ok(s) => port(&s).await.ok() == Some(r0_port),
            Err(_) => false,
        }
    })
    .await;
    let session = connect(proxy.addr).await;
    // Simple protocol: no statement Close left in flight when the primary dies.
    session
        .batch_execute("update fo set v = 0 where id = 1")
        .await
        .unwrap();
    pg_ctl("stop_immediate c.primary", || c.primary.stop_immediate());
    tokio::time::sleep(PROBE_INTERVAL * 3).await;
    let started = Instant::now();
    let err = session
        .execute("update fo set v = 1 where id = 1", &[])
        .await
        .expect_err("no primary");
    let took = started.elapsed();
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a clear server-style error, not a dropped socket: {err:?}"));
    eprintln!(
        "write without a primary: {took:?}: {} {}",
        db.code().code(),
        db.message()
    );
    assert!(took < Duration::from_secs(1), "write failure took {took:?}");
    assert!(matches!(db.code().code(), "57P03" | "08006"), "{db:?}");
    assert!(
        db.message().contains("\"app\"") || db.message().contains("app/primary"),
        "{db:?}"
    );
    // Both replicas sit in one region at loopback RTT: the ranking's load tie-break may pick
    // either one.
    for _ in 0..20 {
        let served = port(&session).await.expect("reads continue");
        assert!([r0_port, r1_port].contains(&served), "{served}");
    }
    // A new client can still log in and read.
    let fresh = connect(proxy.addr).await;
    assert_ne!(
        port(&fresh)
            .await
            .expect("login and read without a primary"),
        p_port
    );

    // 4. Promote replica 0: writes succeed through the proxy, no config change.
    pg_ctl("promote r0", || r0.promote());
    let promoted = until("writes succeed on the promoted replica", || async {
        session
            .execute("update fo set v = 2 where id = 1", &[])
            .await
            .is_ok()
    })
    .await;
    eprintln!("writes succeeded {promoted:?} after pg_ctl promote returned");
    assert!(
        promoted < Duration::from_secs(3),
        "promotion followed in {promoted:?}"
    );
    let p: i32 = session
        .query_one("/* pgmeridian:primary */ select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, r0_port, "writes go to the promoted node");

    // 5. The old primary comes back as a primary too: two nodes claim the role (split brain),
    //    and writes are refused until an operator resolves it; reads are unaffected.
    pg_ctl("start c.primary", || c.primary.start());
    let refused = until(
        "writes are refused while two nodes claim to be primary",
        || async {
            match session
                .execute("update fo set v = 3 where id = 1", &[])
                .await
            {
                Err(e) => e
                    .as_db_error()
                    .is_some_and(|d| d.message().contains("claims to be the primary")),
                Ok(_) => false,
            }
        },
    )
    .await;
    eprintln!("split brain detected {refused:?} after the old primary restarted");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("pgmeridian_primary_conflict{cluster=\"app\"} 1"),
        "{metrics}"
    );
    let (status, body) = http_get(admin, "/readyz").await;
    assert!(
        status.contains("503") && body.contains("app"),
        "{status} {body}"
    );
    pg_ctl("stop_immediate c.primary", || c.primary.stop_immediate());
    until(
        "writes work again once only one primary is left",
        || async {
            session
                .execute("update fo set v = 4 where id = 1", &[])
                .await
                .is_ok()
        },
    )
    .await;
}
