//! Batches that go out before their Sync (a Flush, a quiet client) and what follows them:
//! the rest of such a batch may write, so it goes to the primary; a lone Flush needs no server;
//! a proxy answer behind an open batch is not held forever; an error in such a batch skips to
//! its Sync; answers the proxy gives itself wait for a client that does not read them; a proxy
//! statement is answered by the proxy only alone in its batch.

use super::*;

#[test]
fn a_read_sent_before_its_sync_goes_to_the_primary_with_the_write_behind_it() {
    let mut h = Harness::new();
    h.client(&[parse("", "select 1"), bind(""), execute()]);
    // The client goes quiet (libpq pipeline mode between statements).
    h.run(|e, b, env| e.flush_partial(b, env));
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBE");
    h.client(&[
        parse("", "insert into t values (1)"),
        bind(""),
        execute(),
        sync(),
    ]);
    // The write, then the proxy's commit-position query behind it (read-your-writes).
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBESQ");
    h.no_actions();
    assert!(h.server_got(Slot::Replica).is_empty());
}

#[test]
fn a_read_and_flush_go_to_the_primary_and_the_sync_follows() {
    let mut h = Harness::new();
    h.client(&[parse("", "select 1"), bind(""), execute(), flush()]);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBEH");
    h.server(
        Slot::Primary,
        &[
            parse_complete(),
            bind_complete(),
            row("1"),
            complete("SELECT 1"),
        ],
    );
    assert_eq!(tags(&h.client_got()), "12DC");
    h.client(&[sync()]);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "S");
    h.server(Slot::Primary, &[ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "Z");
    h.take_release(Slot::Primary);
}

#[test]
fn a_lone_flush_needs_no_server_and_binds_nothing() {
    let mut h = Harness::new();
    h.client(&[flush()]);
    h.no_actions();
    assert!(h.client_got().is_empty());
    assert!(h.engine.quiescent(&h.b));
    // The write that follows is routed as a write.
    h.client(&[query("insert into t values (1)")]);
    h.grant(Slot::Primary);
    // The write and the proxy's commit-position query behind it.
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQ");
}

#[test]
fn a_close_and_flush_get_their_close_complete_without_ready_for_query() {
    let mut h = Harness::new();
    h.client(&[close_stmt("never_prepared"), flush()]);
    h.no_actions();
    assert_eq!(tags(&h.client_got()), "3");
    h.client(&[sync()]);
    assert_eq!(tags(&h.client_got()), "Z");
}

#[test]
fn a_proxy_statement_behind_an_open_batch_is_answered() {
    let mut h = Harness::new();
    h.client(&[parse("s", "select 1"), describe_stmt("s"), flush()]);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PDH");
    h.server(
        Slot::Primary,
        &[parse_complete(), msg(b't', b"\0\0"), msg(b'n', b"")],
    );
    assert_eq!(tags(&h.client_got()), "1tn");
    h.client(&[query("SHOW pgmeridian.causal_token")]);
    assert_eq!(tags(&h.client_got()), "TDCZ");
    assert!(h.engine.wants_client_input(&h.b, 1 << 20));
}

#[test]
fn a_refused_hint_before_a_flush_skips_to_the_sync() {
    let mut h = Harness::new();
    h.client(&[
        parse("", "/* pgmeridian:causal_token=junk */ select 1"),
        bind(""),
        execute(),
        flush(),
    ]);
    assert_eq!(
        tags(&h.client_got()),
        "E",
        "no ReadyForQuery before the Sync"
    );
    h.client(&[bind(""), execute(), flush()]);
    assert!(h.client_got().is_empty(), "skipped until the Sync");
    h.client(&[sync()]);
    assert_eq!(tags(&h.client_got()), "Z");
    h.no_actions();
    // The session goes on normally.
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Replica);
}

#[test]
fn answers_the_proxy_gives_itself_wait_for_a_client_that_does_not_read() {
    let mut h = Harness::new();
    let syncs: Vec<Bytes> = (0..20_000).map(|_| sync()).collect();
    h.client(&syncs);
    assert!(h.b.client_out.len() >= 100_000);
    assert!(!h.engine.wants_client_input(&h.b, 100_000));
    h.b.client_out.clear();
    assert!(h.engine.wants_client_input(&h.b, 100_000));
}

#[test]
fn a_proxy_statement_beside_another_in_one_batch_leaves_the_batch_to_the_server() {
    let mut h = Harness::new();
    h.client(&[
        parse("", "select 1"),
        bind(""),
        execute(),
        parse("", "SET pgmeridian.route = primary"),
        bind(""),
        execute(),
        sync(),
    ]);
    assert!(h.client_got().is_empty(), "nothing answered by the proxy");
    h.grant(Slot::Primary);
    // Run as a possible write (then the commit-position query).
    assert_eq!(tags(&h.server_got(Slot::Primary)), "PBEPBESQ");
}
