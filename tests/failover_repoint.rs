//! After a failover done as Patroni or repmgr do it (the primary stops, a replica is promoted
//! with `pg_ctl promote`, the other replica is re-pointed at it through `primary_conninfo` and a
//! reload), replica lag and read-your-writes are measured against the promoted node, the
//! acting primary, not against the configured (dead) one. Its own binary, so its own cluster:
//! `tests/failover.rs` ends with a split brain that leaves its replicas unfit to be re-pointed.

mod common;

/// Both replicas replay at once; replica 1 gets its delay after the failover.
pub const REPLICA_DELAYS_MS: &[u64] = &[0, 0];

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use common::*;

const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// `recovery_min_apply_delay` of the re-pointed replica: beyond the 1 s lag budget.
const APPLY_DELAY: &str = "3s";

/// A superuser connection straight to the server on `port` (behind the proxy's back).
async fn direct(port: u16) -> Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=app"),
        NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("direct connection to port {port}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A WAL position as a number: `sql` returns a `pg_lsn`.
async fn lsn(c: &Client, sql: &str) -> u64 {
    let n: i64 = c
        .query_one(&format!("select ({sql} - '0/0')::bigint"), &[])
        .await
        .unwrap()
        .get(0);
    n as u64
}

/// Which server answered, and the value of row 2 it saw.
async fn read_row2(c: &Client) -> (u16, i64) {
    let row = c
        .query_one("select inet_server_port(), v from fo where id = 2", &[])
        .await
        .unwrap();
    (row.get::<_, i32>(0) as u16, row.get(1))
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

/// The /status entry of the node on `port` in cluster `app`, and the cluster's acting primary.
async fn node_status(admin: std::net::SocketAddr, port: u16) -> (serde_json::Value, String) {
    let (_, body) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    let app = &status["clusters"]["app"];
    let node = app["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["port"] == port)
        .unwrap_or_else(|| panic!("port {port} in /status: {body}"))
        .clone();
    (
        node,
        app["acting_primary"].as_str().unwrap_or("").to_owned(),
    )
}

/// Sum of `pgmeridian_routed_batches_total` for cluster `app` with `reason`.
fn routed(metrics: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("pgmeridian_routed_batches_total{") && l.contains(&label))
        .filter(|l| l.contains("cluster=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_read_your_writes_follow_the_promoted_primary() {
    let c = cluster();
    let (r0, r1) = (&c.replicas[0], &c.replicas[1]);
    superuser("app")
        .await
        .batch_execute(
            "create table fo (id int primary key, v bigint);
             insert into fo values (1, 0), (2, 0);
             grant all on fo to app;",
        )
        .await
        .unwrap();
    let proxy = proxy(
        "health: { interval: 100ms, fall: 2, rise: 2 }\nrouting: { max_replica_lag: 1s }\nadmin_listen: 127.0.0.1:0\n",
    )
    .await;
    let admin = proxy.admin_addr.expect("admin listener");
    let reader = connect(proxy.addr).await;
    until("reads are served by a replica", || async {
        [r0.port, r1.port].contains(&served_port(&reader).await)
    })
    .await;

    // The failover: the primary stops (fast: its replicas receive all of its WAL), replica 0 is
    // promoted, replica 1 follows it from now on, 3 s behind it.
    pg_ctl("stop the primary", || c.primary.stop());
    pg_ctl("promote replica 0", || r0.promote());
    pg_ctl("re-point replica 1 at replica 0", || {
        r1.set_params(&[("recovery_min_apply_delay", Some(APPLY_DELAY))])?;
        r1.follow(r0)
    });
    let failed_over = Instant::now();
    // A small writer beside the proxy keeps the new primary's WAL moving.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, w) = (writing.clone(), direct(r0.port).await);
        tokio::spawn(async move {
            let mut n = 0i64;
            while writing.load(Ordering::Relaxed) {
                n += 1;
                w.execute("update fo set v = $1 where id = 1", &[&n])
                    .await
                    .expect("write on the promoted replica");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // (a) Replica 1's lag is measured against the promoted replica, so the 1 s budget holds.
    let r0_label = format!("127.0.0.1:{}", r0.port);
    until(
        "/status shows replica 1 more than 1 s behind the promoted replica",
        || async {
            let (n, acting) = node_status(admin, r1.port).await;
            acting == r0_label
                && n["lag_seconds"].as_f64().is_some_and(|s| s > 1.0)
                && n["lag_bytes"].as_u64().is_some_and(|b| b > 0)
        },
    )
    .await;
    let (n, _) = node_status(admin, r1.port).await;
    eprintln!(
        "{:?} after the failover, replica 1 lags {}s / {} bytes behind the promoted replica",
        failed_over.elapsed(),
        n["lag_seconds"],
        n["lag_bytes"]
    );
    let (promoted, _) = node_status(admin, r0.port).await;
    assert_eq!(promoted["observed_role"], "primary", "{promoted}");
    assert!(
        promoted["lag_seconds"].is_null() && promoted["lag_bytes"].is_null(),
        "the acting primary has no lag: {promoted}"
    );
    let (_, before) = http_get(admin, "/metrics").await;
    for _ in 0..30 {
        assert_eq!(
            served_port(&reader).await,
            r0.port,
            "a read went to a replica beyond max_replica_lag (or not to the acting primary)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, after) = http_get(admin, "/metrics").await;
    let excluded = routed(&after, "lag_excluded") - routed(&before, "lag_excluded");
    assert!(
        excluded >= 30.0,
        "lag_excluded grew by {excluded}:\n{after}"
    );
    let (n, _) = node_status(admin, r1.port).await;
    eprintln!(
        "{excluded} batches lag_excluded; {:?} after the failover replica 1 lags {}s / {} bytes",
        failed_over.elapsed(),
        n["lag_seconds"],
        n["lag_bytes"]
    );

    // (b) A session writes through the proxy; its reads stay on the promoted replica until
    //     replica 1 has replayed the write, then move there within two probe intervals.
    let session = connect(proxy.addr).await;
    session
        .execute("update fo set v = 42 where id = 2", &[])
        .await
        .unwrap();
    let on_r0 = direct(r0.port).await;
    let written = lsn(&on_r0, "pg_current_wal_lsn()").await;
    tokio::time::sleep(PROBE_INTERVAL * 3).await;
    assert_eq!(
        read_row2(&session).await,
        (r0.port, 42),
        "the write's session read from a replica that has not replayed it"
    );
    let on_r1 = direct(r1.port).await;
    let replayed = tokio::spawn(async move {
        loop {
            if lsn(&on_r1, "pg_last_wal_replay_lsn()").await >= written {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let delay_removed = Instant::now();
    pg_ctl("remove replica 1's apply delay", || {
        r1.set_params(&[("recovery_min_apply_delay", None)])
    });
    let mut served_by_r1 = None;
    while delay_removed.elapsed() < Duration::from_secs(15) {
        let (port, v) = read_row2(&session).await;
        assert_eq!(
            v, 42,
            "the session read a state older than its own write (port {port})"
        );
        if port == r1.port {
            served_by_r1 = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caught_up = replayed.await.unwrap();
    let served = served_by_r1.expect(
        "the session's reads never went back to replica 1 after it replayed the write \
         (waiting for a WAL sample of the dead configured primary?)",
    );
    let after_catch_up = served.saturating_duration_since(caught_up);
    eprintln!(
        "replica 1 replayed the write {:?} after its delay was removed; the writing session read \
         from it {after_catch_up:?} later (probe interval {PROBE_INTERVAL:?})",
        caught_up - delay_removed
    );
    let bound = PROBE_INTERVAL * 2 + Duration::from_millis(300);
    assert!(
        after_catch_up <= bound,
        "reads moved {after_catch_up:?} after the replica caught up (bound {bound:?})"
    );
    // Writes still go to the promoted replica.
    let p: i32 = session
        .query_one("/* pgmeridian:primary */ select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, i32::from(r0.port));
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
}
