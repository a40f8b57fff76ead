//! Causal reads beyond one connection, against a replica replaying 500 ms behind: a token
//! carried to another connection (and another proxy instance) by SET, startup option or
//! comment hint; and `read_your_writes_scope: client_address`, where connections of one client
//! address share their writes while other addresses keep reading from the replica.

mod common;

/// One replica, replaying 500 ms behind the primary.
pub const REPLICA_DELAYS_MS: &[u64] = &[500];

use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use common::*;

/// The session's causal token (`SHOW pgmeridian.causal_token`).
async fn token_of(c: &Client) -> String {
    let rows = c
        .simple_query("SHOW pgmeridian.causal_token")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a token row")
}

async fn count(c: &Client, t: &str, id: i32) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {t} WHERE id = $1"), &[&id])
        .await
        .unwrap()
        .get(0)
}

fn replica_port() -> u16 {
    cluster().replicas[0].port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_carries_a_write_to_other_connections_and_other_instances() {
    let t = table("token");
    setup(&format!(
        "CREATE TABLE {t} (id int primary key); GRANT ALL ON {t} TO PUBLIC;"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = proxy_ready("").await;
    let second = proxy_ready("").await;
    let writer = connect(first.addr).await;
    let same_instance = connect(first.addr).await;
    let other_instance = connect(second.addr).await;
    let (mut stale, mut pairs) = (0, 0);
    for i in 0..1000 {
        writer
            .execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&i])
            .await
            .unwrap();
        let token = token_of(&writer).await;
        assert!(token.starts_with("pgm1:"), "{token}");
        let reader = if i % 2 == 0 {
            &same_instance
        } else {
            &other_instance
        };
        reader
            .batch_execute(&format!("SET pgmeridian.causal_token = '{token}'"))
            .await
            .unwrap();
        pairs += 1;
        if count(reader, &t, i).await != 1 {
            stale += 1;
        }
    }
    assert_eq!((stale, pairs), (0, 1000), "stale reads among pairs");
    // Without the token the same read is stale: the replica is 500 ms behind.
    let plain = connect(second.addr).await;
    writer
        .execute(&format!("INSERT INTO {t} VALUES (5000)"), &[])
        .await
        .unwrap();
    assert_eq!(
        count(&plain, &t, 5000).await,
        0,
        "the replica lags: the test can see stale reads"
    );
    // 1.5 s later the replica has replayed the token's position: it serves the reads again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served_port(&other_instance).await, replica_port());
    assert_eq!(served_port(&same_instance).await, replica_port());

    // The other ways of presenting a token: a startup option and a comment hint.
    writer
        .execute(&format!("INSERT INTO {t} VALUES (6000)"), &[])
        .await
        .unwrap();
    let token = token_of(&writer).await;
    let (startup, conn) = tokio_postgres::connect(
        &format!(
            "{} options='-c pgmeridian.causal_token={token}'",
            conn_string(second.addr, "app", APP_PASSWORD, "app")
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(count(&startup, &t, 6000).await, 1, "startup option");
    writer
        .execute(&format!("INSERT INTO {t} VALUES (7000)"), &[])
        .await
        .unwrap();
    let token = token_of(&writer).await;
    let rows = plain
        .simple_query(&format!(
            "/* pgmeridian:causal_token={token} */ SELECT count(*) FROM {t} WHERE id = 7000"
        ))
        .await
        .unwrap();
    let hinted = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(hinted.as_deref(), Some("1"), "comment hint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_token_is_22023_and_a_foreign_one_a_notice() {
    let p = proxy_ready("").await;
    let c = connect(p.addr).await;
    let e = c
        .batch_execute("SET pgmeridian.causal_token = 'pgm1:nonsense'")
        .await
        .expect_err("malformed");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    // A well-formed token of another database system: ignored, the reads are not held back.
    c.batch_execute("SET pgmeridian.causal_token = 'pgm1:12345:1:FF/0'")
        .await
        .unwrap();
    assert_eq!(served_port(&c).await, replica_port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_one_client_address_read_each_other_s_writes() {
    let t = table("scope");
    setup(&format!(
        "CREATE TABLE {t} (id int primary key); GRANT ALL ON {t} TO PUBLIC;"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let p = proxy_ready("routing: { read_your_writes_scope: client_address }\n").await;
    let local: IpAddr = [127, 0, 0, 1].into();
    let writer = connect_from(p.addr, local).await;
    let reader = connect_from(p.addr, local).await;
    let elsewhere = connect_from(p.addr, [127, 0, 0, 2].into()).await;
    let (mut stale, mut on_replica, mut other_reads) = (0, 0, 0);
    for i in 0..400 {
        // Alternately: one connection writes, the other reads it.
        let (w, r) = if i % 2 == 0 {
            (&writer, &reader)
        } else {
            (&reader, &writer)
        };
        w.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&i])
            .await
            .unwrap();
        if count(r, &t, i).await != 1 {
            stale += 1;
        }
        other_reads += 1;
        if served_port(&elsewhere).await == replica_port() {
            on_replica += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads within one client address");
    assert!(
        on_replica * 100 >= other_reads * 95,
        "another address read from the replica {on_replica} times of {other_reads}"
    );
}
