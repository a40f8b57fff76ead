//! The safety net (a replica refusing a write), read retries when a replica connection dies,
//! settings replayed on a connection that lacks them, and connections lost while needed.

use super::*;

#[test]
fn a_write_the_replica_refuses_runs_again_on_the_primary_invisibly() {
    let mut h = Harness::new();
    h.client(&[query("select my_writer()")]);
    h.grant(Slot::Replica);
    h.server_got(Slot::Replica);
    h.server(
        Slot::Replica,
        &[
            msg(
                b'T',
                b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
            ),
            error("25006", "cannot execute INSERT in a read-only transaction"),
            ready(b'I'),
        ],
    );
    assert!(
        h.client_got().is_empty(),
        "nothing of the refused attempt reaches the client"
    );
    assert!(h.take_release(Slot::Replica).1);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQ");
    h.server(
        Slot::Primary,
        &with_position(&[row("1"), complete("SELECT 1"), ready(b'I')], "0/10"),
    );
    assert_eq!(tags(&h.client_got()), "DCZ");
    assert!(h.take_release(Slot::Primary).1);
    // The text is learned: next time it goes to the primary directly.
    h.client(&[query("select my_writer()")]);
    h.take_acquire(Slot::Primary);
}

#[test]
fn a_read_cancelled_by_a_recovery_conflict_runs_again_on_the_primary_and_is_not_learned() {
    let mut h = Harness::new();
    h.client(&[query("select count(*) from big")]);
    h.grant(Slot::Replica);
    h.server_got(Slot::Replica);
    h.server(
        Slot::Replica,
        &[
            error("40001", "canceling statement due to conflict with recovery"),
            ready(b'I'),
        ],
    );
    assert!(h.client_got().is_empty());
    h.take_release(Slot::Replica);
    h.grant(Slot::Primary);
    // A read: no commit position behind it.
    assert_eq!(tags(&h.server_got(Slot::Primary)), "Q");
    h.server(
        Slot::Primary,
        &[row("7"), complete("SELECT 1"), ready(b'I')],
    );
    assert_eq!(tags(&h.client_got()), "DCZ");
    h.take_release(Slot::Primary);
    assert!(h.learned.is_empty(), "a read, not a write");
    assert!(!h.engine.route.pinned);
}

#[test]
fn an_error_that_only_mentions_recovery_is_the_client_s_and_teaches_nothing() {
    let mut h = Harness::new();
    h.client(&[query("select noisy()")]);
    h.grant(Slot::Replica);
    h.server_got(Slot::Replica);
    h.server(
        Slot::Replica,
        &[
            error("P0001", "not allowed during recovery, says my function"),
            ready(b'I'),
        ],
    );
    assert_eq!(tags(&h.client_got()), "EZ");
    h.take_release(Slot::Replica);
    assert!(h.learned.is_empty());
    h.client(&[query("select noisy()")]);
    h.take_acquire(Slot::Replica);
}

#[test]
fn a_read_whose_replica_connection_dies_before_answering_runs_elsewhere() {
    let mut h = Harness::new();
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    h.server_closes(Slot::Replica);
    let (_, reuse) = h.take_release(Slot::Replica);
    assert!(!reuse);
    assert!(h.engine.ended().is_none());
    // The only replica is avoided for this retry: the primary serves it.
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "Q");
    h.server(Slot::Primary, &[complete("SELECT 1"), ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "CZ");
}

#[test]
fn a_connection_lost_mid_transaction_ends_the_session_with_08006() {
    let mut h = Harness::new();
    h.client(&[query("begin")]);
    h.grant(Slot::Primary);
    h.server(Slot::Primary, &[complete("BEGIN"), ready(b'T')]);
    h.client_got();
    h.server_closes(Slot::Primary);
    let got = h.client_got();
    assert_eq!(tags(&got), "E");
    assert!(got[0].text().contains("08006"));
    assert!(matches!(h.engine.ended(), Some(End::BackendGone(_))));
    assert!(!h.take_release(Slot::Primary).1);
}

#[test]
fn settings_follow_the_session_to_every_connection() {
    let mut h = Harness::new();
    h.client(&[query("SET search_path = a")]);
    h.grant(Slot::Primary);
    h.server(Slot::Primary, &[complete("SET"), ready(b'I')]);
    assert_eq!(tags(&h.client_got()), "CZ");
    let (primary_conn, _) = h.take_release(Slot::Primary);
    assert!(primary_conn.settings.as_ref().is_some_and(|s| s.len() == 1));
    // A replica connection that never saw it gets it first, in the same write.
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    let got = h.server_got(Slot::Replica);
    assert_eq!(tags(&got), "QQ");
    assert!(
        got[0].text().contains("SET search_path = a"),
        "{}",
        got[0].text()
    );
    h.server(
        Slot::Replica,
        &[
            complete("SET"),
            ready(b'I'),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        tags(&h.client_got()),
        "CZ",
        "the replay's answers are swallowed"
    );
    h.take_release(Slot::Replica);
    // The primary connection already has it: nothing is replayed there.
    h.client(&[query("insert into t values (1)")]);
    h.take_acquire(Slot::Primary);
    h.grant_state(Slot::Primary, *primary_conn);
    let got = h.server_got(Slot::Primary);
    assert_eq!(
        tags(&got),
        "QQ",
        "the insert and the proxy's position query"
    );
    assert!(got[0].text().starts_with("insert"), "{}", got[0].text());
}

#[test]
fn a_replay_a_replica_refuses_moves_the_read_and_the_session_to_the_primary() {
    let mut h = Harness::new();
    h.client(&[query("SET default_transaction_read_only = off")]);
    h.grant(Slot::Primary);
    h.server(Slot::Primary, &[complete("SET"), ready(b'I')]);
    h.take_release(Slot::Primary);
    h.client_got();
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    h.server(
        Slot::Replica,
        &[
            error(
                "25006",
                "cannot set transaction read-write mode during recovery",
            ),
            ready(b'I'),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert!(h.client_got().is_empty());
    assert!(
        !h.take_release(Slot::Replica).1,
        "its settings are unknown now"
    );
    h.grant(Slot::Primary);
    // A fresh primary connection gets the settings first too; the read itself wrote nothing
    // (it is not learned as a write and needs no commit position).
    assert_eq!(tags(&h.server_got(Slot::Primary)), "QQ");
    h.server(
        Slot::Primary,
        &[
            complete("SET"),
            ready(b'I'),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert!(h.learned.is_empty());
    assert_eq!(tags(&h.client_got()), "CZ");
    assert!(h.engine.route.pinned);
}

#[test]
fn a_fatal_from_an_idle_session_mode_connection_is_a_farewell() {
    let mut h = Harness::with(YAML, "pooling: { mode: session }\n");
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    h.server(Slot::Replica, &[complete("SELECT 1"), ready(b'I')]);
    h.client_got();
    let mut fatal = BytesMut::new();
    crate::protocol::encode::error_response(
        &mut fatal,
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
        None,
        None,
    );
    h.server(Slot::Replica, &[fatal.freeze()]);
    assert!(
        h.client_got().is_empty(),
        "not the client's business while idle"
    );
    assert!(
        !h.take_release(Slot::Replica).1,
        "it is closing: given back, not reused"
    );
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Replica);
}
