//! Causal reads: the commit position behind a write, tokens given by SET, comment or startup,
//! positions shared by a scope, and waiting on a near replica.

use super::*;

impl Harness {
    /// Changes the cluster's observed state.
    fn set_health(&mut self, f: impl FnOnce(&mut ClusterHealth)) {
        let mut ch = (*self.health.clusters["app"]).clone();
        f(&mut ch);
        let mut health = Health::default();
        health.clusters.insert("app".into(), Arc::new(ch));
        self.health = Arc::new(health);
    }

    /// A write through the session that commits at `lsn` (text as PostgreSQL prints it).
    fn write_committed_at(&mut self, lsn: &str) {
        self.client(&[query("insert into t values (1)")]);
        self.grant(Slot::Primary);
        self.server_got(Slot::Primary);
        self.server(
            Slot::Primary,
            &with_position(&[complete("INSERT 0 1"), ready(b'I')], lsn),
        );
        self.take_release(Slot::Primary);
    }
}

#[test]
fn a_malformed_token_is_22023_and_the_session_goes_on() {
    let mut h = Harness::new();
    h.client(&[query("SET pgmeridian.causal_token = 'nonsense'")]);
    h.no_actions();
    let got = h.client_got();
    assert_eq!(tags(&got), "EZ");
    assert!(got[0].text().contains("22023"), "{}", got[0].text());
    // The same through the extended protocol (psycopg sends SET that way).
    h.client(&[
        parse("", "SET pgmeridian.causal_token = 'pgm1:1:1:0/10'"),
        bind(""),
        msg(b'D', b"P\0"),
        execute(),
        sync(),
    ]);
    h.no_actions();
    let got = h.client_got();
    assert_eq!(tags(&got), "12nCZ", "answered by the proxy: {got:?}");
    // A hint on a statement: the statement does not run.
    h.client(&[query("/* pgmeridian:causal_token=pgm1:x */ SELECT 1")]);
    h.no_actions();
    let got = h.client_got();
    assert_eq!(tags(&got), "EZ");
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Replica);
}

#[test]
fn show_reports_the_sessions_position_once_the_cluster_is_known() {
    let mut h = Harness::new();
    h.client(&[query("SHOW pgmeridian.causal_token")]);
    h.no_actions();
    let got = h.client_got();
    assert_eq!(tags(&got), "TDCZ");
    assert_eq!(&got[1].body, b"\0\x01\0\0\0\0", "empty before any write");
    h.set_health(|ch| {
        ch.primary.system_id = Some(42);
        ch.primary.timeline = Some(1);
    });
    h.write_committed_at("0/3000060");
    let got = h.client_got();
    // The token comes before the write's ReadyForQuery.
    assert_eq!(tags(&got), "CSZ");
    assert!(got[1]
        .text()
        .starts_with("pgmeridian.causal_token|pgm1:42:1:0/3000060"));
    h.client(&[query("SHOW pgmeridian.causal_token")]);
    let got = h.client_got();
    assert!(
        got[1].text().contains("pgm1:42:1:0/3000060"),
        "{}",
        got[1].text()
    );
}

#[test]
fn a_token_from_another_connection_keeps_reads_off_replicas_that_lack_it() {
    let mut h = Harness::new();
    h.set_health(|ch| {
        ch.primary.system_id = Some(42);
        ch.primary.timeline = Some(1);
    });
    // The replica has replayed 100 (0/64): a token at 0/200 sends reads to the primary.
    h.client(&[query("SET pgmeridian.causal_token TO 'pgm1:42:1:0/200'")]);
    assert_eq!(tags(&h.client_got()), "CZ");
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Primary);
    // A token of another cluster or timeline is ignored, with a notice.
    let mut h = Harness::new();
    h.set_health(|ch| {
        ch.primary.system_id = Some(42);
        ch.primary.timeline = Some(2);
    });
    h.client(&[query("SET pgmeridian.causal_token TO 'pgm1:42:1:0/200'")]);
    let got = h.client_got();
    assert_eq!(tags(&got), "NCZ");
    assert!(got[0].text().contains("timeline"), "{}", got[0].text());
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Replica);
}

#[test]
fn a_startup_token_is_checked_once_the_cluster_is_known() {
    let mut h = Harness::new();
    h.engine.pending_token = Some(crate::causal::Token {
        system_id: 42,
        timeline: 1,
        lsn: 0x200,
    });
    h.set_health(|ch| {
        ch.primary.system_id = Some(42);
        ch.primary.timeline = Some(1);
    });
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Primary);
    assert!(h.engine.pending_token.is_none());
}

#[test]
fn sessions_of_one_client_address_share_their_writes() {
    let scoped = "routing: { read_your_writes_scope: client_address }\n";
    let mut writer = Harness::with(YAML, scoped);
    writer.write_committed_at("0/200");
    // Another session from the same address, sharing the writer's scopes.
    let mut reader = Harness::with(YAML, scoped);
    reader.scopes = std::mem::take(&mut writer.scopes);
    reader.client(&[query("select 1")]);
    // Its read goes to the primary (`grant` takes the Acquire for that slot).
    reader.grant(Slot::Primary);
    // Once the replica has replayed it, reads go back there.
    reader.set_health(|ch| ch.replicas[0].lsn = Some(0x200));
    reader.server(Slot::Primary, &[complete("SELECT 1"), ready(b'I')]);
    reader.take_release(Slot::Primary);
    reader.client(&[query("select 1")]);
    reader.take_acquire(Slot::Replica);
    // Without a scope, the reader would not have waited at all.
    let mut alone = Harness::new();
    alone.client(&[query("select 1")]);
    alone.take_acquire(Slot::Replica);
}

/// A session with `causal_wait_max` whose write committed at 0/3000 sends a read; its near
/// replica (1 ms away, 30 ms behind) has not replayed the write yet.
fn read_after_write_near_a_lagging_replica() -> Harness {
    let mut h = Harness::with(YAML, "routing: { causal_wait_max: 200ms }\n");
    h.set_health(|ch| {
        ch.primary.rtt = Some(Duration::from_millis(180));
        ch.replicas[0].rtt = Some(Duration::from_millis(1));
        ch.replicas[0].lag = Some(Duration::from_millis(30));
    });
    h.write_committed_at("0/3000");
    h.client_got();
    h.client(&[query("select 1")]);
    h
}

#[test]
fn a_read_waits_on_its_near_replica_until_it_has_replayed_the_write() {
    let mut h = read_after_write_near_a_lagging_replica();
    h.grant(Slot::Replica);
    let got = h.server_got(Slot::Replica);
    assert_eq!(tags(&got), "Q", "only the wait goes out first");
    assert!(
        got[0]
            .text()
            .contains("pg_last_wal_replay_lsn() < '0/3000'"),
        "{}",
        got[0].text()
    );
    h.no_actions();
    h.server(Slot::Replica, &[complete("DO"), ready(b'I')]);
    assert_eq!(tags(&h.server_got(Slot::Replica)), "Q", "then the read");
    h.no_actions();
    h.server(Slot::Replica, &[complete("SELECT 1"), ready(b'I')]);
    assert_eq!(
        tags(&h.client_got()),
        "CZ",
        "the wait's answer is swallowed"
    );
    assert!(h.take_release(Slot::Replica).1);
    // When the wait times out, the read goes to the primary.
    h.write_committed_at("0/4000");
    h.client_got();
    h.client(&[query("select 1")]);
    h.grant(Slot::Replica);
    h.server_got(Slot::Replica);
    h.server(
        Slot::Replica,
        &[
            error("P0001", "pgmeridian: replay wait timed out"),
            ready(b'I'),
        ],
    );
    assert!(h.client_got().is_empty());
    assert!(h.take_release(Slot::Replica).1);
    h.grant(Slot::Primary);
    assert_eq!(tags(&h.server_got(Slot::Primary)), "Q");
}

#[test]
fn a_waiting_read_whose_replica_cannot_be_leased_runs_on_the_primary_without_the_wait() {
    let mut h = read_after_write_near_a_lagging_replica();
    h.take_acquire(Slot::Replica);
    let e = crate::error::ClientError::error("08006", "down");
    h.run(|eng, b, env| eng.on_acquire_failed(Slot::Replica, e, b, env));
    h.grant(Slot::Primary);
    let got = h.server_got(Slot::Primary);
    assert_eq!(tags(&got), "Q", "the read itself");
    assert!(
        !got[0].text().contains("pg_last_wal_replay_lsn"),
        "no replay wait on the primary: {}",
        got[0].text()
    );
}

#[test]
fn a_read_kept_from_replicas_asks_the_probes_for_their_replay_position() {
    let mut h = Harness::new();
    assert_eq!(h.hints.cluster("app").wanted(std::time::Instant::now()), 0);
    h.write_committed_at("0/2000");
    h.client_got();
    h.client(&[query("select 1")]);
    h.take_acquire(Slot::Primary);
    assert_eq!(
        h.hints.cluster("app").wanted(std::time::Instant::now()),
        0x2000
    );
}

#[test]
fn nothing_follows_a_statement_that_may_start_a_copy() {
    // The server would read the position query as COPY data.
    let mut h = Harness::new();
    h.client(&[query("COPY t FROM STDIN")]);
    h.grant(Slot::Primary);
    assert_eq!(
        tags(&h.server_got(Slot::Primary)),
        "Q",
        "no position query behind it"
    );
    h.client(&[query("insert into t values (1)")]);
    h.no_actions();
}
