//! Leases per transaction, reads and writes, session mode, pins, cancel targets.

use super::*;

fn select_answer() -> Vec<Bytes> {
    vec![
        msg(
            b'T',
            b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        ),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]
}

#[test]
fn a_read_leases_a_replica_for_one_statement_and_gives_it_back() {
    let mut h = Harness::new();
    h.client(&[query("select 1")]);
    let node = h.take_acquire(Slot::Replica);
    assert_eq!(node.name, "r");
    h.no_actions();
    h.grant_state(Slot::Replica, ServerState::new(node, 11, 7));
    assert_eq!(tags(&h.server_got(Slot::Replica)), "Q");
    h.server(Slot::Replica, &select_answer());
    assert_eq!(tags(&h.client_got()), "TDCZ");
    let (state, reuse) = h.take_release(Slot::Replica);
    assert!(reuse);
    assert_eq!(state.pid, 11);
    h.no_actions();
    assert!(h.engine.quiescent(&h.b));
}

#[test]
fn a_write_goes_to_the_primary_and_sets_read_your_writes() {
    let mut h = Harness::new();
    h.client(&[query("insert into t values (1)")]);
    h.grant(Slot::Primary);
    let got = h.server_got(Slot::Primary);
    assert_eq!(
        tags(&got),
        "QQ",
        "the write, then the proxy's position query"
    );
    assert_eq!(got[1].text(), "SELECT pg_current_wal_insert_lsn()|");
    h.server(Slot::Primary, &[complete("INSERT 0 1"), ready(b'I')]);
    // The client's ReadyForQuery waits for the position, so the token comes before it.
    assert_eq!(tags(&h.client_got()), "C");
    h.server(Slot::Primary, &position("0/3000060"));
    assert_eq!(tags(&h.client_got()), "Z");
    assert!(h.take_release(Slot::Primary).1);
    assert_eq!(h.engine.own, crate::route::Requirement::lsn(0x300_0060));
    // The replica (at 100) has not replayed it: the next read stays on the primary.
    h.client(&[query("select 1")]);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "Q");
}

#[test]
fn a_transaction_keeps_its_lease_until_it_ends() {
    let mut h = Harness::new();
    h.client(&[query("begin")]);
    h.grant(Slot::Primary);
    h.server(Slot::Primary, &[complete("BEGIN"), ready(b'T')]);
    h.no_actions();
    // A read inside the transaction follows it to the primary, on the same lease.
    h.client(&[query("select 1")]);
    h.no_actions();
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQ");
    h.server(Slot::Primary, &[complete("SELECT 1"), ready(b'T')]);
    h.no_actions();
    h.client(&[query("commit")]);
    h.server(
        Slot::Primary,
        &with_position(&[complete("COMMIT"), ready(b'I')], "0/10"),
    );
    assert_eq!(tags(&h.client_got()), "CZCZCZ");
    assert!(h.take_release(Slot::Primary).1);
    h.no_actions();
}

#[test]
fn pipelined_batches_behind_a_begin_follow_it_without_a_second_lease() {
    let mut h = Harness::new();
    h.client(&[query("begin"), query("select 1"), query("commit")]);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQQQ");
    h.no_actions();
    h.server(
        Slot::Primary,
        &with_position(
            &[
                complete("BEGIN"),
                ready(b'T'),
                complete("SELECT 1"),
                ready(b'T'),
                complete("COMMIT"),
                ready(b'I'),
            ],
            "0/10",
        ),
    );
    assert_eq!(tags(&h.client_got()), "CZCZCZ");
    assert!(h.take_release(Slot::Primary).1);
}

#[test]
fn a_read_pipelined_behind_a_write_follows_it_to_the_primary() {
    let mut h = Harness::new();
    h.client(&[query("insert into t values (1)"), query("select 1")]);
    h.grant(Slot::Primary);
    h.no_actions();
    // The read was sent behind the write (and its position query) on the same connection: it
    // sees the write.
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQQ");
    h.server(
        Slot::Primary,
        &with_position(&[complete("INSERT 0 1"), ready(b'I')], "0/10"),
    );
    h.no_actions();
    h.server(Slot::Primary, &[complete("SELECT 1"), ready(b'I')]);
    assert!(h.take_release(Slot::Primary).1);
    assert_eq!(tags(&h.client_got()), "CZCZ");
}

#[test]
fn a_batch_for_the_other_node_waits_until_the_first_is_answered() {
    let mut h = Harness::new();
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    // A write while the read is in flight waits: no second lease until the read is answered.
    h.client(&[query("insert into t values (1)")]);
    h.no_actions();
    h.server(Slot::Replica, &select_answer());
    assert!(h.take_release(Slot::Replica).1);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQ");
    assert_eq!(tags(&h.client_got()), "TDCZ");
}

#[test]
fn session_mode_keeps_connections_for_the_session() {
    let mut h = Harness::with(YAML, "pooling: { mode: session }\n");
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    h.server(Slot::Replica, &select_answer());
    h.no_actions();
    h.client(&[query("select 1")]);
    h.no_actions();
    assert_eq!(tags(&h.server_got(Slot::Replica)), "QQ");
    h.server(Slot::Replica, &select_answer());
    h.no_actions();
    let mut b = std::mem::take(&mut h.b);
    h.engine.finish(&mut b);
    h.b = b;
    h.run(|_, _, _| {});
    assert!(
        h.take_release(Slot::Replica).1,
        "clean at the end: reusable"
    );
}

#[test]
fn a_sticky_feature_pins_the_session_to_a_dedicated_primary_connection() {
    let mut h = Harness::new();
    h.client(&[query("create temp table x (a int)")]);
    h.grant(Slot::Primary);
    assert!(h.pending.iter().any(|a| matches!(
        a,
        Action::Dedicate {
            slot: Slot::Primary
        }
    )));
    h.pending.clear();
    h.server(
        Slot::Primary,
        &with_position(&[complete("CREATE TABLE"), ready(b'I')], "0/10"),
    );
    h.no_actions();
    // Reads stay there too, on the same connection.
    h.client(&[query("select 1")]);
    h.no_actions();
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQQ");
    let mut b = std::mem::take(&mut h.b);
    h.engine.finish(&mut b);
    h.b = b;
    h.run(|_, _, _| {});
    assert!(
        !h.take_release(Slot::Primary).1,
        "pinned state is never reused"
    );
}

#[test]
fn the_cancel_target_lives_only_while_the_lease_does() {
    let mut h = Harness::new();
    let (pid, key) = h.cancel;
    assert!(h.cancels.lookup(pid, &key.to_be_bytes()).is_none());
    h.client(&[query("select pg_sleep(1)")]);
    let server_pid = h.grant(Slot::Replica);
    let target = h.cancels.lookup(pid, &key.to_be_bytes()).unwrap();
    assert_eq!(target.pid, server_pid);
    h.server(
        Slot::Replica,
        &[error("57014", "canceling statement"), ready(b'I')],
    );
    let (_, reuse) = h.take_release(Slot::Replica);
    assert!(!reuse, "a connection a cancel was sent to is not reused");
    assert!(
        h.cancels.lookup(pid, &key.to_be_bytes()).is_none(),
        "a late cancel reaches nothing"
    );
    // The next statement's lease is clean again.
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    h.server(Slot::Replica, &select_answer());
    assert!(h.take_release(Slot::Replica).1);
}

#[test]
fn a_refused_lease_answers_the_statement_and_the_session_goes_on() {
    let mut h = Harness::new();
    h.client(&[query("insert into t values (1)")]);
    h.take_acquire(Slot::Primary);
    let e = crate::error::ClientError::error("53300", "no server connection");
    h.run(|eng, b, env| eng.on_acquire_failed(Slot::Primary, e, b, env));
    let got = h.client_got();
    assert_eq!(tags(&got), "EZ");
    assert!(got[0].text().contains("53300"));
    assert!(h.engine.ended().is_none());
    // A read whose replica cannot be leased moves to the primary.
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Replica);
    let e = crate::error::ClientError::error("08006", "down");
    h.run(|eng, b, env| eng.on_acquire_failed(Slot::Replica, e, b, env));
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "Q");
}

#[test]
fn route_hints_and_sync_only_batches_are_answered_by_the_proxy() {
    let mut h = Harness::new();
    h.client(&[query("SET pgmeridian.route = primary")]);
    assert_eq!(tags(&h.client_got()), "CZ");
    h.client(&[sync()]);
    assert_eq!(tags(&h.client_got()), "Z");
    h.no_actions();
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Primary);
}
