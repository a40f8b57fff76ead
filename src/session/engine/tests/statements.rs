//! Prepared statements under pooling: proxy-wide names, Parse only where missing, answers the
//! proxy owes for statements the server already has, Close and DEALLOCATE, and evictions.

use super::*;

/// The statement name in a Parse, Bind or statement Describe the server got.
fn stmt_name(s: &Seen) -> String {
    let body = match s.tag {
        'P' => &s.body[..],
        'B' => {
            let nul = s.body.iter().position(|&c| c == 0).unwrap();
            &s.body[nul + 1..]
        }
        'D' | 'C' => &s.body[1..],
        other => panic!("no statement in {other}"),
    };
    let nul = body.iter().position(|&c| c == 0).unwrap();
    String::from_utf8_lossy(&body[..nul]).into_owned()
}

#[test]
fn named_statements_get_proxy_wide_names_and_are_prepared_where_missing() {
    let mut h = Harness::new();
    h.client(&[parse("s1", "select 1"), bind("s1"), execute(), sync()]);
    h.grant(Slot::Replica);
    let got = h.server_got(Slot::Replica);
    assert_eq!(tags(&got), "PBES");
    let server_name = stmt_name(&got[0]);
    assert!(server_name.starts_with("pgm_"), "{server_name}");
    assert_eq!(stmt_name(&got[1]), server_name);
    h.server(
        Slot::Replica,
        &[
            parse_complete(),
            bind_complete(),
            row("1"),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(tags(&h.client_got()), "12DCZ");
    let (first_conn, reuse) = h.take_release(Slot::Replica);
    assert!(reuse);
    assert_eq!(first_conn.prepared.len(), 1);

    // The next transaction gets a connection that never saw it: Parse first, its answer
    // swallowed.
    h.client(&[bind("s1"), execute(), sync()]);
    h.grant(Slot::Replica);
    let got = h.server_got(Slot::Replica);
    assert_eq!(tags(&got), "PBES");
    assert_eq!(stmt_name(&got[0]), server_name);
    h.server(
        Slot::Replica,
        &[
            parse_complete(),
            bind_complete(),
            row("1"),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(tags(&h.client_got()), "2DCZ");
    h.take_release(Slot::Replica);

    // Back on the first connection: nothing to prepare.
    h.client(&[bind("s1"), execute(), sync()]);
    h.take_acquire(Slot::Replica);
    h.grant_state(Slot::Replica, *first_conn);
    assert_eq!(tags(&h.server_got(Slot::Replica)), "BES");
}

#[test]
fn a_parse_the_server_already_has_is_answered_by_the_proxy_in_order() {
    let mut h = Harness::new();
    // Another session prepared the same text on this connection.
    // (Parse, Describe and Flush go out before their Sync: to the primary.)
    let mut state = ServerState::new(h.topology.clusters["app"].primary.clone(), 5, 7);
    let mut other = Harness::new();
    other.client(&[parse("x", "select $1"), sync()]);
    other.grant(Slot::Replica);
    let name = stmt_name(&other.server_got(Slot::Replica)[0]);
    let hex = name.trim_start_matches("pgm_").split('_').next().unwrap();
    let key = u128::from_str_radix(hex, 16).unwrap();
    state.prepared.insert((key, 0), 1);

    h.client(&[parse("mine", "select $1"), describe_stmt("mine"), flush()]);
    h.take_acquire(Slot::Primary);
    h.grant_state(Slot::Primary, state);
    let got = h.server_got(Slot::Primary);
    assert_eq!(tags(&got), "DH", "no Parse sent: {got:?}");
    assert_eq!(stmt_name(&got[0]), name);
    // The ParseComplete the client expects comes first, before the server's answers.
    assert_eq!(tags(&h.client_got()), "1");
    h.server(
        Slot::Primary,
        &[msg(b't', b"\0\x01\0\0\0\x17"), msg(b'n', b"")],
    );
    assert_eq!(tags(&h.client_got()), "tn");
}

#[test]
fn closing_and_deallocating_client_statements_is_answered_by_the_proxy() {
    let mut h = Harness::new();
    h.client(&[parse("a", "select 1"), parse("b", "select 2"), sync()]);
    h.grant(Slot::Replica);
    h.server(
        Slot::Replica,
        &[parse_complete(), parse_complete(), ready(b'I')],
    );
    h.take_release(Slot::Replica);
    assert_eq!(tags(&h.client_got()), "11Z");
    // Close + Sync: no lease at all.
    h.client(&[close_stmt("a"), sync()]);
    h.no_actions();
    assert_eq!(tags(&h.client_got()), "3Z");
    assert!(h.engine.statements.get("a").is_none());
    // psycopg's eviction: DEALLOCATE of a protocol-level statement.
    h.client(&[query("DEALLOCATE b")]);
    h.no_actions();
    let got = h.client_got();
    assert_eq!(tags(&got), "CZ");
    assert_eq!(got[0].text(), "DEALLOCATE|");
    assert!(h.engine.statements.get("b").is_none());
    // A name the proxy does not know goes to the server, which reports it.
    h.client(&[query("DEALLOCATE nope")]);
    h.take_acquire(Slot::Primary);
}

#[test]
fn a_duplicate_parse_and_an_unknown_statement_get_postgresqls_errors() {
    let mut h = Harness::new();
    h.client(&[parse("s", "select 1"), sync()]);
    h.grant(Slot::Replica);
    h.server(Slot::Replica, &[parse_complete(), ready(b'I')]);
    h.take_release(Slot::Replica);
    h.client_got();
    h.client(&[parse("s", "select 2"), bind("s"), execute(), sync()]);
    h.grant(Slot::Replica);
    let got = h.server_got(Slot::Replica);
    assert_eq!(
        tags(&got),
        "BPBES",
        "the stand-in, then s (missing there) and its Bind"
    );
    assert_eq!(stmt_name(&got[0]), "\u{1}pgmeridian-none");
    h.server(
        Slot::Replica,
        &[
            error(
                "26000",
                "prepared statement \"\u{1}pgmeridian-none\" does not exist",
            ),
            ready(b'I'),
        ],
    );
    let got = h.client_got();
    assert_eq!(tags(&got), "EZ");
    assert!(got[0].text().contains("42P05"), "{}", got[0].text());
    assert!(got[0]
        .text()
        .contains("prepared statement \"s\" already exists"));
    let (state, _) = h.take_release(Slot::Replica);
    assert!(
        state.prepared.is_empty(),
        "the skipped Parse is not counted as prepared"
    );

    h.client(&[bind("nope"), execute(), sync()]);
    h.grant(Slot::Primary);
    h.server(
        Slot::Primary,
        &[
            error(
                "26000",
                "prepared statement \"\u{1}pgmeridian-none\" does not exist",
            ),
            ready(b'I'),
        ],
    );
    let got = h.client_got();
    assert!(got[0]
        .text()
        .contains("prepared statement \"nope\" does not exist"));
}

#[test]
fn a_refused_parse_withdraws_the_definition() {
    let mut h = Harness::new();
    h.client(&[parse("s", "select * from missing"), sync()]);
    h.grant(Slot::Replica);
    h.server(
        Slot::Replica,
        &[
            error("42P01", "relation \"missing\" does not exist"),
            ready(b'I'),
        ],
    );
    assert_eq!(tags(&h.client_got()), "EZ");
    let (state, reuse) = h.take_release(Slot::Replica);
    assert!(reuse);
    assert!(state.prepared.is_empty(), "the server does not have it");
    assert!(
        h.engine.statements.get("s").is_none(),
        "nor does the client"
    );
    // So the name can be prepared again without a duplicate error.
    h.client(&[parse("s", "select 1"), sync()]);
    h.grant(Slot::Replica);
    assert_eq!(tags(&h.server_got(Slot::Replica)), "PS");
}

#[test]
fn statements_past_the_limit_are_evicted_before_a_transaction() {
    let mut h = Harness::with(YAML, "pooling: { max_prepared_statements: 10 }\n");
    let mut state = ServerState::new(h.topology.clusters["app"].replicas[0].clone(), 5, 7);
    for k in 0..12u128 {
        state.prepared.insert((k, 0), k as u64);
    }
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Replica);
    h.grant_state(Slot::Replica, state);
    let got = h.server_got(Slot::Replica);
    // Down to 90% of the limit: the three oldest go, in a unit of their own.
    assert_eq!(tags(&got), "CCCSQ");
    h.server(
        Slot::Replica,
        &[
            msg(b'3', b""),
            msg(b'3', b""),
            msg(b'3', b""),
            ready(b'I'),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        tags(&h.client_got()),
        "CZ",
        "the evictions' answers are swallowed"
    );
    let (state, _) = h.take_release(Slot::Replica);
    assert_eq!(state.prepared.len(), 9);
    assert!(!state.prepared.contains_key(&(0, 0)) && state.prepared.contains_key(&(11, 0)));
}

#[test]
fn the_unnamed_statement_is_reprepared_on_a_connection_that_lacks_it() {
    let mut h = Harness::new();
    h.client(&[parse("", "select 1"), sync()]);
    h.grant(Slot::Replica);
    h.server(Slot::Replica, &[parse_complete(), ready(b'I')]);
    h.take_release(Slot::Replica);
    h.client_got();
    h.client(&[bind(""), execute(), sync()]);
    h.grant(Slot::Replica);
    let got = h.server_got(Slot::Replica);
    assert_eq!(tags(&got), "PBES");
    assert_eq!(stmt_name(&got[0]), "");
    h.server(
        Slot::Replica,
        &[
            parse_complete(),
            bind_complete(),
            row("1"),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(tags(&h.client_got()), "2DCZ");
}

#[test]
fn after_ddl_statements_are_prepared_afresh_under_new_names() {
    let mut h = Harness::new();
    h.client(&[
        parse("s", "insert into t values ($1::e)"),
        bind("s"),
        execute(),
        sync(),
    ]);
    h.grant(Slot::Primary);
    let before = stmt_name(&h.server_got(Slot::Primary)[0]);
    h.server(
        Slot::Primary,
        &with_position(
            &[
                parse_complete(),
                bind_complete(),
                complete("INSERT 0 1"),
                ready(b'I'),
            ],
            "0/10",
        ),
    );
    let (conn, _) = h.take_release(Slot::Primary);
    h.client_got();
    // Any session's DDL: the type behind `e` may be another one now.
    h.client(&[query("drop type e; create type e as enum ('x')")]);
    h.take_acquire(Slot::Primary);
    h.grant_state(Slot::Primary, *conn);
    h.server_got(Slot::Primary);
    h.server(
        Slot::Primary,
        &with_position(
            &[complete("DROP TYPE"), complete("CREATE TYPE"), ready(b'I')],
            "0/20",
        ),
    );
    let (conn, _) = h.take_release(Slot::Primary);
    h.client_got();
    h.client(&[bind("s"), execute(), sync()]);
    h.take_acquire(Slot::Primary);
    h.grant_state(Slot::Primary, *conn);
    let got = h.server_got(Slot::Primary);
    assert_eq!(
        tags(&got),
        "PBESQ",
        "prepared again although the connection has the old one"
    );
    let after = stmt_name(&got[0]);
    assert_ne!(after, before);
    assert_eq!(stmt_name(&got[1]), after);
}
