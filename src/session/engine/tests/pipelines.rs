//! Pipelining, Flush before Sync, errors in the middle of a pipeline, COPY in both directions,
//! and answers arriving split at every byte.

use super::*;

#[test]
fn flush_before_sync_keeps_the_lease_and_answers_flow_at_once() {
    let mut h = Harness::new();
    // asyncpg: prepare and describe, wait for the answer, then bind and run.
    h.client(&[
        parse("s", "insert into t values ($1)"),
        describe_stmt("s"),
        flush(),
    ]);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PDH");
    h.server(
        Slot::Primary,
        &[
            parse_complete(),
            msg(b't', b"\0\x01\0\0\0\x17"),
            msg(b'n', b""),
        ],
    );
    assert_eq!(tags(&h.client_got()), "1tn");
    h.no_actions();
    h.client(&[bind("s"), execute(), sync()]);
    h.no_actions();
    assert_eq!(tags(&h.server_got(Slot::Primary)), "BESQ");
    h.server(
        Slot::Primary,
        &with_position(
            &[bind_complete(), complete("INSERT 0 1"), ready(b'I')],
            "0/10",
        ),
    );
    assert_eq!(tags(&h.client_got()), "2CZ");
    assert!(h.take_release(Slot::Primary).1);
}

#[test]
fn an_error_in_a_pipeline_skips_to_sync_and_the_next_batch_runs() {
    let mut h = Harness::new();
    h.client(&[
        parse("a", "insert into t values (1)"),
        bind("a"),
        execute(),
        close_stmt("a"),
        sync(),
        query("select 2"),
    ]);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBESQQ");
    let mut answer = vec![
        parse_complete(),
        bind_complete(),
        error("23505", "duplicate key"),
        ready(b'I'),
    ];
    answer.extend(position("0/10"));
    answer.extend([complete("SELECT 1"), ready(b'I')]);
    h.server(Slot::Primary, &answer);
    // The CloseComplete the proxy owed was skipped with the rest of the failed batch.
    assert_eq!(tags(&h.client_got()), "12EZCZ");
    assert!(h.take_release(Slot::Primary).1);
}

#[test]
fn libpq_pipeline_in_a_transaction_with_a_failing_statement_does_not_hang() {
    // psycopg's test_pipeline_communicate_uniqviol: BEGIN, a prepared insert run five times
    // with the third violating the key, COMMIT, one Sync.
    let mut h = Harness::new();
    let mut msgs = vec![parse("", "BEGIN"), bind(""), execute()];
    msgs.push(parse("ins", "insert into t values ($1)"));
    for _ in 0..5 {
        msgs.extend([bind("ins"), execute()]);
    }
    msgs.extend([parse("", "COMMIT"), bind(""), execute(), sync()]);
    h.client(&msgs);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBEPBEBEBEBEBEPBESQ");
    h.server(
        Slot::Primary,
        &[
            parse_complete(),
            bind_complete(),
            complete("BEGIN"),
            parse_complete(),
            bind_complete(),
            complete("INSERT 0 1"),
            bind_complete(),
            complete("INSERT 0 1"),
            bind_complete(),
            error("23505", "duplicate key value violates unique constraint"),
            ready(b'E'),
            // The proxy's position query, in the failed transaction: refused, swallowed.
            error("25P02", "current transaction is aborted"),
            ready(b'E'),
        ],
    );
    assert_eq!(tags(&h.client_got()), "12C12C2C2EZ");
    h.no_actions();
    // The failed transaction keeps its connection; ROLLBACK goes there and ends the lease.
    h.client(&[query("rollback")]);
    h.no_actions();
    assert_eq!(tags(&h.server_got(Slot::Primary)), "Q");
    h.server(Slot::Primary, &[complete("ROLLBACK"), ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "CZ");
    assert!(h.take_release(Slot::Primary).1);
}

#[test]
fn extended_copy_from_with_libpqs_second_sync() {
    let mut h = Harness::new();
    h.client(&[parse("", "copy t from stdin"), bind(""), execute(), sync()]);
    h.grant(Slot::Primary);
    // Nothing of the proxy's behind a COPY: the server would read it as COPY data.
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBES");
    h.server(
        Slot::Primary,
        &[parse_complete(), bind_complete(), msg(b'G', b"\0\0\0")],
    );
    assert_eq!(tags(&h.client_got()), "12G");
    h.client(&[msg(b'd', b"1\n"), msg(b'd', b"2\n"), msg(b'c', b""), sync()]);
    h.no_actions();
    assert_eq!(tags(&h.server_got(Slot::Primary)), "ddcS");
    // The first Sync was ignored during COPY; the server answers the second one.
    h.server(Slot::Primary, &[complete("COPY 2"), ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "CZ");
    assert!(h.take_release(Slot::Primary).1);
    assert!(h.engine.quiescent(&h.b));
}

#[test]
fn simple_copy_out_streams_rows_and_copy_in_routes_data() {
    let mut h = Harness::new();
    h.client(&[query("copy t to stdout")]);
    h.grant(Slot::Replica);
    let mut answer = vec![msg(b'H', b"\0\0\0")];
    for i in 0..100 {
        answer.push(msg(b'd', format!("{i}\n").as_bytes()));
    }
    answer.extend([msg(b'c', b""), complete("COPY 100"), ready(b'I')]);
    h.server(Slot::Replica, &answer);
    let got = h.client_got();
    assert_eq!(got.len(), 104);
    assert!(h.take_release(Slot::Replica).1);

    h.client(&[query("copy t from stdin")]);
    h.grant(Slot::Primary);
    h.server_got(Slot::Primary);
    h.server(Slot::Primary, &[msg(b'G', b"\0\0\0")]);
    h.client(&[msg(b'd', b"1\n"), msg(b'c', b"")]);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "dc");
    h.server(Slot::Primary, &[complete("COPY 1"), ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "GCZ");
    assert!(h.take_release(Slot::Primary).1);
}

#[test]
fn answers_split_at_every_byte_arrive_whole_and_in_order() {
    let mut h = Harness::new();
    h.client(&[
        parse("s", "select $1"),
        bind("s"),
        execute(),
        close_stmt("s"),
        sync(),
    ]);
    h.grant(Slot::Replica);
    h.server_got(Slot::Replica);
    let answer = [
        parse_complete(),
        bind_complete(),
        row("a"),
        row("bb"),
        complete("SELECT 2"),
        ready(b'I'),
    ];
    h.server_trickle(Slot::Replica, &answer);
    let got = h.client_got();
    assert_eq!(tags(&got), "12DDC3Z");
    assert_eq!(got[3].body, row("bb")[5..].to_vec());
    assert!(h.take_release(Slot::Replica).1);
}

#[test]
fn a_large_row_streams_through_without_being_buffered_whole() {
    let mut h = Harness::new();
    h.client(&[query("select big")]);
    h.grant(Slot::Replica);
    let big = "x".repeat(3 << 20);
    let r = row(&big);
    // Only the first megabyte has arrived: it is already on its way to the client.
    h.server(Slot::Replica, &[r.slice(..1 << 20)]);
    assert_eq!(h.b.client_out.len(), 1 << 20);
    h.b.client_out.clear();
    h.server(
        Slot::Replica,
        &[r.slice(1 << 20..), complete("SELECT 1"), ready(b'I')],
    );
    assert!(h.take_release(Slot::Replica).1);
}

#[test]
fn a_large_error_is_read_whole_even_when_the_client_is_slow() {
    let mut h = Harness::new();
    h.client(&[query("select repeat('x', 1000000)::int")]);
    h.grant(Slot::Replica);
    let e = error("22P02", &"x".repeat(700_000));
    h.server(Slot::Replica, &[e.slice(..300_000)]);
    assert!(
        h.engine.needs_server_bytes(Slot::Replica, &h.b),
        "the rest of an inspected message must be read whatever the backlog"
    );
    h.server(Slot::Replica, &[e.slice(300_000..), ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "EZ");
    assert!(!h.engine.needs_server_bytes(Slot::Replica, &h.b));
}
