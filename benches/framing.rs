//! Cost of the relay's per-message work on the hot path: walking a server→client stream with
//! `frame::Scanner` (result rows pass uninspected) and framing client messages.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgmeridian::protocol::frame::{split_message, Scanner, Step};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn inspected(tag: u8) -> bool {
    matches!(tag, b'Z' | b'E')
}

/// A result set like pgbench's: RowDescription, `rows` DataRows of ~90 bytes, CommandComplete, ReadyForQuery.
fn result_stream(rows: usize) -> Vec<u8> {
    let mut s = msg(b'T', &[0u8; 60]);
    for _ in 0..rows {
        s.extend_from_slice(&msg(b'D', &[b'x'; 90]));
    }
    s.extend_from_slice(&msg(b'C', b"SELECT 1000\0"));
    s.extend_from_slice(&msg(b'Z', b"I"));
    s
}

fn scan_all(stream: &[u8]) -> usize {
    let mut scanner = Scanner::new(inspected, 1 << 20);
    let mut pos = 0;
    let mut inspected = 0;
    loop {
        match scanner.step(&stream[pos..]).expect("valid stream") {
            Step::Forward(n) => pos += n,
            Step::Inspect(h) => {
                pos += h.total_len;
                inspected += 1;
            }
            Step::NeedMore(_) => return inspected,
        }
    }
}

fn bench(c: &mut Criterion) {
    let rows = result_stream(1000);
    let mut g = c.benchmark_group("backend_scan");
    g.throughput(Throughput::Elements(1003));
    g.bench_function("1000_rows_one_buffer", |b| {
        b.iter(|| scan_all(std::hint::black_box(&rows)))
    });
    // The same stream arriving in 16 kB socket reads.
    g.bench_function("1000_rows_16k_chunks", |b| {
        b.iter(|| {
            let mut scanner = Scanner::new(inspected, 1 << 20);
            let mut buf = BytesMut::new();
            for chunk in rows.chunks(16 * 1024) {
                buf.extend_from_slice(chunk);
                loop {
                    match scanner.step(&buf).unwrap() {
                        Step::Forward(n) => drop(buf.split_to(n)),
                        Step::Inspect(h) => drop(buf.split_to(h.total_len)),
                        Step::NeedMore(_) => break,
                    }
                }
            }
        })
    });
    g.finish();

    // A pgbench -M prepared transaction's client messages: Bind, Execute, Sync.
    let client: Vec<u8> = [
        msg(b'B', b"\0P0_1\0\0\x01\0\x01\0\0\0\x0512345\0\x01\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    c.bench_function("client_frame_bind_execute_sync", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&client[..]);
            let mut n = 0;
            while let Some(m) = split_message(&mut buf, 1 << 26).unwrap() {
                n += m.len();
            }
            n
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
