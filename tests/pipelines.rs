//! Protocol edge cases across two backends, on raw bytes: asyncpg-style Flush before Sync,
//! pipelined transactions, extended-protocol COPY with libpq's extra Sync, answer order behind a
//! retryable batch, settings with comments, and batches split by size. Against a primary and
//! replicas replaying 200 ms and 500 ms behind.
mod common;
pub const REPLICA_DELAYS_MS: &[u64] = &[200, 500];

use bytes::{BufMut, BytesMut};
use common::*;
use pgmeridian::protocol::backend::ErrorFields;
use pgmeridian::protocol::frame;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut m = BytesMut::new();
    m.put_u8(tag);
    m.put_u32(body.len() as u32 + 4);
    m.put_slice(body);
    m
}
fn q(sql: &str) -> BytesMut {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    msg(b'Q', &b)
}

/// Reads messages until `n` ReadyForQuery (or until `stop` tag); returns (tag, body) list.
async fn read_until(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    nz: usize,
    stop: Option<u8>,
) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut z = 0;
    loop {
        while let Some(m) = frame::split_message(buf, 1 << 24).unwrap() {
            let t = m[0];
            out.push((t, frame::body(&m).to_vec()));
            if t == b'E' {
                eprintln!("  error: {:?}", ErrorFields::parse(frame::body(&m)));
            }
            if t == b'Z' {
                z += 1;
                if z == nz {
                    return out;
                }
            }
            if Some(t) == stop {
                return out;
            }
        }
        let n = match tokio::time::timeout(Duration::from_secs(5), s.read_buf(buf)).await {
            Ok(r) => r.unwrap(),
            Err(_) => panic!(
                "TIMEOUT (hang); got so far: {:?}",
                out.iter()
                    .map(|m: &(u8, Vec<u8>)| m.0 as char)
                    .collect::<String>()
            ),
        };
        assert!(n > 0, "closed");
    }
}
fn datarow_texts(msgs: &[(u8, Vec<u8>)]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut p = 2;
            let mut row = vec![];
            for _ in 0..n {
                let l = i32::from_be_bytes(b[p..p + 4].try_into().unwrap());
                p += 4;
                if l < 0 {
                    row.push("NULL".into());
                    continue;
                }
                row.push(String::from_utf8_lossy(&b[p..p + l as usize]).into_owned());
                p += l as usize;
            }
            row
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_prepare_of_a_write_runs_on_the_primary() {
    let t = table("r1");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    out.unsplit(msg(
        b'P',
        format!("st1\0insert into {t} values (1)\0\0\0").as_bytes(),
    ));
    out.unsplit(msg(b'D', b"Sst1\0"));
    out.unsplit(msg(b'H', b""));
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 0, Some(b'n')).await;
    eprintln!(
        "prepare answer tags: {:?}",
        a.iter().map(|m| m.0 as char).collect::<String>()
    );
    let mut out = BytesMut::new();
    out.unsplit(msg(b'B', b"\0st1\0\0\0\0\0\0\0"));
    out.unsplit(msg(b'E', b"\0\0\0\0\0"));
    out.unsplit(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 1, None).await;
    let tags: String = a.iter().map(|m| m.0 as char).collect();
    assert!(!tags.contains('E'), "asyncpg-style INSERT failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_transaction_stays_on_one_backend() {
    let t = table("r2");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    for sql in [
        "begin",
        &format!("insert into {t} values (42)"),
        "select 1",
        &format!("select count(*), inet_server_port() from {t} where x = 42"),
        "rollback",
    ] {
        out.unsplit(q(sql));
    }
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 5, None).await;
    let rows = datarow_texts(&a);
    assert_eq!(
        rows[1][0], "1",
        "in-transaction read did not see the transaction's own insert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_a_pipelined_read_only_transaction_is_rolled_back() {
    let t = table("r2b");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    for sql in [
        "begin read only",
        "select 1",
        &format!("insert into {t} values (7)"),
        "rollback",
    ] {
        out.unsplit(q(sql));
    }
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 4, None).await;
    eprintln!(
        "R2b tags: {:?}",
        a.iter().map(|m| m.0 as char).collect::<String>()
    );
    let n: i64 = rows_on_primary(&t).await;
    assert_eq!(
        n, 0,
        "insert inside a rolled-back READ ONLY transaction was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_copy_from_with_the_extra_sync_does_not_hang() {
    let t = table("r3");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    out.unsplit(msg(b'P', format!("\0copy {t} from stdin\0\0\0").as_bytes()));
    out.unsplit(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    out.unsplit(msg(b'E', b"\0\0\0\0\0"));
    out.unsplit(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 0, Some(b'G')).await;
    eprintln!(
        "R3 before copy: {:?}",
        a.iter().map(|m| m.0 as char).collect::<String>()
    );
    let mut out = BytesMut::new();
    out.unsplit(msg(b'd', b"5\n"));
    out.unsplit(msg(b'c', b""));
    out.unsplit(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 1, None).await;
    let tags: String = a.iter().map(|m| m.0 as char).collect();
    assert_eq!(
        tags, "CZ",
        "COPY completes and the extra Sync is answered once"
    );
    // The session is not stuck: a read after it is served (by a replica, once caught up).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(&q(&format!("select count(*), inet_server_port() from {t}")))
        .await
        .unwrap();
    let a = read_until(&mut s, &mut buf, 1, None).await;
    let rows = datarow_texts(&a);
    assert_eq!(rows[0][0], "1");
    assert_ne!(
        rows[0][1],
        primary_port().to_string(),
        "reads use replicas again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_with_trailing_comments_replay_correctly() {
    let proxy = proxy_ready("").await;
    let c = connect(proxy.addr).await;
    c.simple_query("SET application_name = 'a1' -- note")
        .await
        .unwrap();
    c.simple_query("SET search_path = zz, public")
        .await
        .unwrap();
    let row = c
        .query_one(
            "select current_setting('search_path'), inet_server_port()",
            &[],
        )
        .await
        .unwrap();
    let (sp, _port): (String, i32) = (row.get(0), row.get(1));
    assert_eq!(sp, "zz, public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_in_order_behind_a_retryable_batch() {
    let t = table("r6");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to pgm_md5;
         create or replace function pgm_w_{t}() returns int language sql volatile
           as 'insert into {t} values (1) returning 1';
         grant execute on function pgm_w_{t}() to pgm_md5;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let mut out = q(&format!("select pgm_w_{t}()"));
    out.unsplit(msg(b'P', b"\0select 2\0\0\0"));
    out.unsplit(msg(b'D', b"S\0"));
    out.unsplit(msg(b'H', b""));
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 1, None).await;
    let tags: String = a.iter().map(|m| m.0 as char).collect();
    // The Query's answers (rows after a retry, or its error when another batch was already
    // queued behind it) come before the Flush batch's ParseComplete.
    assert!(
        tags.starts_with('T') || tags.starts_with('E'),
        "answers reordered: {tags}"
    );
    assert!(tags.ends_with('Z'), "{tags}");
    let a = read_until(&mut s, &mut buf, 0, Some(b'T')).await;
    let tags: String = a.iter().map(|m| m.0 as char).collect();
    assert_eq!(tags, "1tT", "then the Flush batch's answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_by_size_runs_on_the_primary() {
    let t = table("r7");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to pgm_md5;"
    ))
    .await;
    let proxy = proxy_ready("").await;
    let mut s = raw_login(proxy.addr).await;
    let mut buf = BytesMut::new();
    let pad = "x".repeat(70 * 1024);
    let mut out = msg(b'P', format!("\0select 1 /* {pad} */\0\0\0").as_bytes());
    out.unsplit(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    out.unsplit(msg(b'E', b"\0\0\0\0\0"));
    s.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut out = msg(
        b'P',
        format!("\0insert into {t} values (1)\0\0\0").as_bytes(),
    );
    out.unsplit(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    out.unsplit(msg(b'E', b"\0\0\0\0\0"));
    out.unsplit(msg(b'S', b""));
    s.write_all(&out).await.unwrap();
    let a = read_until(&mut s, &mut buf, 1, None).await;
    let tags: String = a.iter().map(|m| m.0 as char).collect();
    assert!(!tags.contains('E'));
}
