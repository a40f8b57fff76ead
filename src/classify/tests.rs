//! Table-driven tests for `classify`, plus robustness and holdout checks.

use super::{classify, Class, Hint, PinReason, Setting, WriteFunctions};

mod functions;
mod holdout;
mod renumber;
mod robustness;
mod shape;

const R: Class = Class::Read;
const W: Class = Class::Write;
const U: Class = Class::Unknown;
const E: Class = Class::Empty;
const END: Class = Class::End;

const fn pin(reason: PinReason) -> Class {
    Class::Pin(reason)
}

const fn begin(read_only: Option<bool>) -> Class {
    Class::Begin { read_only }
}

const fn set_tx(read_only: Option<bool>) -> Class {
    Class::SetTransaction { read_only }
}

fn set(name: &str, value: &str) -> Class {
    Class::Session(Setting::Set {
        name: name.to_string(),
        value: value.to_string(),
    })
}

fn reset(name: &str) -> Class {
    Class::Session(Setting::Reset {
        name: name.to_string(),
    })
}

use PinReason::*;

/// Configured write functions used by every table test.
fn wf() -> WriteFunctions {
    WriteFunctions::new(["billing.bump_counter", "Audit_Log", "\"Stats\".\"Touch\""])
}

fn check(cases: &[(&str, Class)]) {
    let wf = wf();
    let mut failures = Vec::new();
    for (sql, want) in cases {
        let got = classify(sql, &wf).class;
        if &got != want {
            failures.push(format!("{sql:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// All the table cases (also fed to the robustness tests).
pub(super) fn cases() -> Vec<(&'static str, Class)> {
    let mut all = Vec::new();
    all.extend(reads());
    all.extend(writes());
    all.extend(pins_and_transactions());
    all.extend(settings());
    all.extend(lexing());
    all.extend(multi_and_unknown());
    all
}

fn reads() -> Vec<(&'static str, Class)> {
    vec![
        ("SELECT 1", R),
        ("select abalance from pgbench_accounts where aid = $1", R),
        ("VALUES (1), (2)", R),
        ("TABLE accounts", R),
        ("SHOW search_path", R),
        ("SHOW ALL", R),
        ("FETCH 10 FROM c", R),
        ("MOVE NEXT IN c", R),
        ("CLOSE c", R),
        ("CLOSE ALL", R),
        ("SAVEPOINT sp1", R),
        ("RELEASE SAVEPOINT sp1", R),
        ("RELEASE sp1", R),
        ("ROLLBACK TO SAVEPOINT sp1", R),
        ("ROLLBACK TO sp1", R),
        ("rollback work to savepoint sp1", R),
        ("SET LOCAL statement_timeout = '5s'", R),
        ("SET LOCAL search_path TO app", R),
        ("SET LOCAL ROLE admin", R),
        ("SET CONSTRAINTS ALL DEFERRED", R),
        ("EXPLAIN SELECT * FROM t", R),
        ("EXPLAIN UPDATE t SET a = 1", R),
        ("EXPLAIN VERBOSE DELETE FROM t", R),
        ("EXPLAIN (FORMAT JSON) DELETE FROM t", R),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", R),
        ("EXPLAIN (ANALYZE off, BUFFERS) INSERT INTO t VALUES (1)", R),
        ("EXPLAIN (ANALYZE 0) UPDATE t SET a = 1", R),
        ("EXPLAIN (ANALYZE 'false') UPDATE t SET a = 1", R),
        ("EXPLAIN ANALYZE SELECT * FROM t", R),
        ("EXPLAIN (SELECT 1)", R),
        ("EXPLAIN SELECT nextval('s')", R),
        ("COPY t TO STDOUT", R),
        ("COPY (SELECT 1) TO STDOUT", R),
        ("copy t (a, b) to stdout with (format csv)", R),
        ("COPY public.t TO STDOUT (FORMAT binary)", R),
        ("WITH x AS (SELECT 1) SELECT * FROM x", R),
        (
            "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 10) \
             SELECT sum(n) FROM t",
            R,
        ),
        (
            "WITH a AS NOT MATERIALIZED (SELECT 1), b AS (SELECT 2) TABLE a",
            R,
        ),
        ("DECLARE c CURSOR FOR SELECT * FROM t", R),
        ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", R),
        ("(SELECT 1) UNION (SELECT 2)", R),
        ("((VALUES (1)))", R),
        ("SELECT 1 AS \"into\"", R),
        ("SELECT * FROM t FOR READ ONLY", R),
        ("SELECT pg_is_in_recovery(), now(), lo_get(1)", R),
        ("SELECT pg_catalog.pg_sleep(0.1)", R),
        ("SELECT nextval_report(1)", R),
        ("SELECT * FROM t WHERE x IN (SELECT y FROM u)", R),
        ("SELECT other.bump_counter(1)", R),
        ("SELECT count(*) FROM t WHERE note = 'INTO TEMP'", R),
    ]
}

fn writes() -> Vec<(&'static str, Class)> {
    vec![
        ("INSERT INTO t VALUES (1)", W),
        ("insert into t select * from u", W),
        ("INSERT INTO temp VALUES (1)", W),
        ("UPDATE t SET a = 1", W),
        ("DELETE FROM t WHERE id = $1", W),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            W,
        ),
        ("TRUNCATE t", W),
        ("COPY t FROM STDIN", W),
        ("COPY t (a) FROM '/tmp/x.csv' WITH (FORMAT csv)", W),
        ("COPY t TO '/tmp/out.csv'", W),
        ("COPY t TO PROGRAM 'gzip > /tmp/x.gz'", W),
        ("COPY (SELECT nextval('s')) TO STDOUT", W),
        ("COPY (INSERT INTO t VALUES (1) RETURNING id) TO STDOUT", W),
        ("CREATE TABLE t (a int)", W),
        ("CREATE UNLOGGED TABLE t (a int)", W),
        ("CREATE TABLE t AS SELECT 1", W),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", W),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
            W,
        ),
        ("ALTER TABLE t ADD COLUMN b int", W),
        ("ALTER SYSTEM SET work_mem = '1GB'", W),
        ("DROP TABLE IF EXISTS t", W),
        ("GRANT SELECT ON t TO bob", W),
        ("REVOKE ALL ON t FROM bob", W),
        ("COMMENT ON TABLE t IS 'select only'", W),
        ("SECURITY LABEL ON TABLE t IS 'x'", W),
        ("VACUUM (VERBOSE) t", W),
        ("ANALYZE t", W),
        ("CLUSTER t USING i", W),
        ("REINDEX TABLE t", W),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", W),
        ("LOCK TABLE t IN ACCESS SHARE MODE", W),
        ("CALL p(1)", W),
        ("DO $$ BEGIN PERFORM 1; END $$", W),
        (
            "do $body$ begin insert into t values (1); end $body$ language plpgsql",
            W,
        ),
        ("NOTIFY chan, 'x'", W),
        ("UNLISTEN *", W),
        ("CHECKPOINT", W),
        ("LOAD 'auto_explain'", W),
        ("IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO local", W),
        ("REASSIGN OWNED BY a TO b", W),
        ("PREPARE TRANSACTION 'gid1'", W),
        ("COMMIT PREPARED 'gid1'", W),
        ("ROLLBACK PREPARED 'gid1'", W),
        ("EXECUTE stmt(1)", W),
        ("DEALLOCATE ALL", W),
        ("DISCARD PLANS", W),
        ("DISCARD SEQUENCES", W),
        ("DISCARD TEMP", W),
        ("SELECT * INTO newt FROM t", W),
        ("SELECT a, b INTO UNLOGGED newt FROM t", W),
        ("WITH x AS (SELECT 1) SELECT * INTO y FROM x", W),
        ("SELECT * FROM t FOR UPDATE", W),
        ("select * from t for no key update skip locked", W),
        ("SELECT * FROM t FOR SHARE", W),
        ("SELECT * FROM t FOR KEY SHARE OF t NOWAIT", W),
        (
            "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
            W,
        ),
        ("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", W),
        (
            "WITH ins AS (INSERT INTO t (a) VALUES (1) RETURNING id) SELECT id FROM ins",
            W,
        ),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", W),
        (
            "WITH d AS MATERIALIZED (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
            W,
        ),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", W),
        (
            "WITH x AS (SELECT 1) MERGE INTO t USING x ON true WHEN MATCHED THEN DELETE",
            W,
        ),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1", W),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", W),
        ("EXPLAIN (ANALYZE) DELETE FROM t", W),
        (
            "EXPLAIN (ANALYZE true, VERBOSE) INSERT INTO t VALUES (1)",
            W,
        ),
        ("EXPLAIN (ANALYZE on) INSERT INTO t VALUES (1)", W),
        ("EXPLAIN (ANALYZE 1) INSERT INTO t VALUES (1)", W),
        ("EXPLAIN (FORMAT JSON, ANALYZE) DELETE FROM t", W),
        ("explain analyse verbose delete from t", W),
        ("EXPLAIN ANALYZE SELECT nextval('s')", W),
        ("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1", W),
        ("select nextval('s')", W),
        ("SELECT setval('s', 10)", W),
        ("SELECT currval('s'), lastval()", W),
        ("SELECT txid_current()", W),
        ("SELECT pg_catalog.nextval('s')", W),
        ("SELECT \"nextval\"('s')", W),
        ("SELECT NEXTVAL ( 's' )", W),
        ("SELECT pg_notify('c', 'x')", W),
        ("SELECT pg_advisory_xact_lock(1)", W),
        ("SELECT pg_advisory_unlock(1)", W),
        ("SELECT lo_create(0)", W),
        ("SELECT pg_terminate_backend(123)", W),
        ("SELECT pg_stat_reset()", W),
        ("SELECT pg_stat_reset_shared('bgwriter')", W),
        ("SELECT pg_replication_origin_create('o')", W),
        (
            "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
            W,
        ),
        ("SELECT pg_backup_start('x')", W),
        ("SELECT pg_switch_wal()", W),
        ("SELECT pg_current_wal_lsn()", W),
        ("SELECT * FROM t WHERE id = (SELECT nextval('s'))", W),
        ("VALUES (nextval('s'))", W),
        ("SELECT billing.bump_counter(1)", W),
        ("SELECT bump_counter(1)", W),
        ("SELECT BILLING.BUMP_COUNTER(1)", W),
        ("SELECT audit_log('x')", W),
        ("SELECT \"stats\".touch()", W),
        ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", W),
        ("SET search_path FROM CURRENT", W),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
            W,
        ),
    ]
}

fn pins_and_transactions() -> Vec<(&'static str, Class)> {
    vec![
        ("CREATE TEMP TABLE t (a int)", pin(TempTable)),
        ("CREATE TEMPORARY TABLE t AS SELECT 1", pin(TempTable)),
        (
            "create global temporary table t (a int) on commit drop",
            pin(TempTable),
        ),
        ("CREATE LOCAL TEMP VIEW v AS SELECT 1", pin(TempTable)),
        ("CREATE TEMP SEQUENCE s", pin(TempTable)),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", pin(TempTable)),
        ("CREATE TABLE pg_temp.t (a int)", pin(TempTable)),
        ("SELECT * INTO TEMP t2 FROM t", pin(TempTable)),
        ("SELECT * INTO TEMPORARY TABLE t2 FROM t", pin(TempTable)),
        ("SELECT * INTO LOCAL TEMP t2 FROM t", pin(TempTable)),
        ("LISTEN chan", pin(Listen)),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            pin(WithHoldCursor),
        ),
        (
            "DECLARE \"C\" BINARY INSENSITIVE SCROLL CURSOR WITH HOLD FOR SELECT 1",
            pin(WithHoldCursor),
        ),
        ("SET ROLE admin", pin(SetRole)),
        ("SET SESSION ROLE admin", pin(SetRole)),
        ("RESET ROLE", pin(SetRole)),
        ("SET SESSION AUTHORIZATION bob", pin(SessionAuthorization)),
        (
            "SET SESSION AUTHORIZATION DEFAULT",
            pin(SessionAuthorization),
        ),
        ("RESET SESSION AUTHORIZATION", pin(SessionAuthorization)),
        ("SET role = 'admin'", pin(SetRole)),
        (
            "SET session_authorization TO 'bob'",
            pin(SessionAuthorization),
        ),
        ("RESET session_authorization", pin(SessionAuthorization)),
        ("PREPARE q (int) AS SELECT $1", pin(SqlPrepare)),
        ("PREPARE q AS SELECT 1", pin(SqlPrepare)),
        (
            "SELECT set_config('search_path', 'app', false)",
            pin(SetConfig),
        ),
        (
            "SELECT pg_catalog.set_config('x.y', '1', true)",
            pin(SetConfig),
        ),
        ("SELECT pg_advisory_lock(42)", pin(AdvisoryLock)),
        ("SELECT pg_try_advisory_lock(1, 2)", pin(AdvisoryLock)),
        (
            "SELECT pg_advisory_lock_shared(1) FROM t FOR UPDATE",
            pin(AdvisoryLock),
        ),
        (
            "UPDATE t SET a = 1 WHERE pg_try_advisory_lock(id)",
            pin(AdvisoryLock),
        ),
        ("BEGIN", begin(None)),
        ("begin work", begin(None)),
        ("BEGIN TRANSACTION", begin(None)),
        ("BEGIN READ ONLY", begin(Some(true))),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            begin(Some(false)), // a hot standby refuses serializable transactions
        ),
        (
            "SET default_transaction_isolation = 'serializable'",
            Class::Pin(PinReason::Serializable),
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Class::Pin(PinReason::Serializable),
        ),
        (
            "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE",
            begin(Some(false)),
        ),
        ("BEGIN ISOLATION LEVEL REPEATABLE READ", begin(None)),
        ("START TRANSACTION READ WRITE", begin(Some(false))),
        (
            "start transaction read only, not deferrable",
            begin(Some(true)),
        ),
        ("BEGIN READ ONLY, READ WRITE", begin(Some(false))),
        ("BEGIN FOO", U),
        ("BEGIN ISOLATION LEVEL READ", U),
        ("COMMIT", END),
        ("COMMIT WORK", END),
        ("END", END),
        ("END TRANSACTION", END),
        ("ABORT", END),
        ("ROLLBACK", END),
        ("ROLLBACK AND NO CHAIN", END),
        ("commit and chain", END),
        ("COMMIT FOO", U),
        ("SET TRANSACTION READ ONLY", set_tx(Some(true))),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            set_tx(Some(false)),
        ),
        ("SET TRANSACTION READ WRITE", set_tx(Some(false))),
        ("SET SESSION TRANSACTION READ ONLY", set_tx(Some(true))),
        (
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            set_tx(None),
        ),
        ("SET transaction_read_only = on", set_tx(Some(true))),
        (
            "SET LOCAL transaction_read_only TO off",
            set_tx(Some(false)),
        ),
        ("SET transaction_isolation = 'serializable'", set_tx(None)),
    ]
}

fn settings() -> Vec<(&'static str, Class)> {
    vec![
        ("SET search_path TO public, app", set("search_path", "public, app")),
        ("SET search_path = \"$user\", public", set("search_path", "\"$user\", public")),
        ("SET TIME ZONE 'UTC'", set("timezone", "'UTC'")),
        ("set TimeZone = 'Europe/Paris'", set("timezone", "'Europe/Paris'")),
        ("SET SESSION statement_timeout = 5000", set("statement_timeout", "5000")),
        ("SET NAMES 'UTF8'", set("client_encoding", "'UTF8'")),
        ("SET SCHEMA 'app'", set("search_path", "'app'")),
        ("SET XML OPTION DOCUMENT", set("xmloption", "DOCUMENT")),
        ("SET \"MyApp\".Setting = 'x'", set("MyApp.setting", "'x'")),
        ("SET application_name TO DEFAULT", set("application_name", "DEFAULT")),
        ("SET work_mem = '64MB' -- trailing", set("work_mem", "'64MB'")),
        ("SET\tdatestyle\nTO\n ISO, MDY ", set("datestyle", "ISO, MDY")),
        ("SET extra_float_digits=-1", set("extra_float_digits", "-1")),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            set("default_transaction_read_only", "on"),
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE",
            set("default_transaction_read_only", "off"),
        ),
        ("RESET search_path", reset("search_path")),
        ("RESET TIME ZONE", reset("timezone")),
        ("RESET ALL", Class::Session(Setting::ResetAll)),
        ("DISCARD ALL", Class::Session(Setting::DiscardAll)),
        ("SET pgmeridian.route = primary", Class::RouteHint(Hint::Primary)),
        ("SET pgmeridian.route TO 'replica'", Class::RouteHint(Hint::Replica)),
        ("set PGMERIDIAN.ROUTE to AUTO", Class::RouteHint(Hint::Auto)),
        ("SET pgmeridian.route = \"primary\"", Class::RouteHint(Hint::Primary)),
        ("SET pgmeridian.route = sideways", U),
        ("SET pgmeridian.route = primary, replica", U),
        ("SET pgmeridian.route = DEFAULT", U),
        ("RESET pgmeridian.route", Class::RouteHint(Hint::Auto)),
        (
            "SET pgmeridian.causal_token = 'pgm1:7:1:0/16B3748'",
            Class::CausalToken(Some("pgm1:7:1:0/16B3748".into())),
        ),
        (
            "set PGMERIDIAN.CAUSAL_TOKEN to 'x'",
            Class::CausalToken(Some("x".into())),
        ),
        ("SET pgmeridian.causal_token = 'a', 'b'", U),
        ("RESET pgmeridian.causal_token", Class::CausalToken(None)),
        ("SHOW pgmeridian.causal_token", Class::ShowCausalToken),
        ("show PGMERIDIAN.causal_token;", Class::ShowCausalToken),
        ("SHOW pgmeridian.route", R),
        ("SHOW search_path", R),
    ]
}

fn lexing() -> Vec<(&'static str, Class)> {
    vec![
        ("SELECT 'for update' FROM t", R),
        ("SELECT 1 -- for update\n", R),
        (
            "SELECT /* FOR UPDATE /* nested */ still comment FOR UPDATE */ 1",
            R,
        ),
        ("SELECT \"nextval\" FROM t", R),
        ("SELECT nextval FROM t", R),
        ("SELECT 'nextval(''s'')'", R),
        ("SELECT 'it''s' FROM t FOR UPDATE", W),
        ("SELECT E'it\\'s FOR UPDATE' FROM t", R),
        ("SELECT e'\\\\' FROM t FOR SHARE", W),
        ("SELECT E'\\'' , 1 FROM t FOR SHARE", W),
        ("SELECT '\\' FROM t FOR SHARE", W),
        ("SELECT $fn$ DELETE FROM t; $fn$ AS body", R),
        ("SELECT $$insert$$, $a$ $$ update $$ $a$", R),
        ("SELECT $a$ $b$ FOR UPDATE $b$ $a$", R),
        ("SELECT $a$x$a$ FROM t FOR UPDATE", W),
        ("SELECT $1 FROM t FOR UPDATE", W),
        ("SELECT U&'d\\0061t\\+000061 for update'", R),
        ("SELECT U&\"for\" FROM t", R),
        ("SELECT B'101', X'1F', N'for update'", R),
        ("SELECT 1 AS \"a\"\"b\" FROM t FOR UPDATE", W),
        ("SELECT \"FOR UPDATE\", \"into\" FROM t", R),
        (
            "SELECT a FROM t WHERE b = 'x' -- FOR UPDATE\n FOR UPDATE",
            W,
        ),
        ("SELECT a/*c*/FROM t", R),
        ("SELECT 1--c\n;DELETE FROM t", W),
        (
            "SELECT x::text, y::int[] FROM t WHERE a<>b AND a||b = 'c'",
            R,
        ),
        ("SELECT café FROM naïve WHERE ü = 'ö'", R),
        ("SELECT foo$bar FROM t", R),
        ("SELECT 'unterminated FOR UPDATE", R),
        ("SELECT 1 /* unterminated FOR UPDATE", R),
        ("SELECT $tag$ unterminated; DELETE FROM t", R),
        ("SELECT \"unterminated FOR UPDATE", R),
        ("\t\n  SeLeCt\t1\r\n", R),
        ("SELECT 1 FROM t\nFOR\tUPDATE", W),
        ("SELECT .5e3, 1.5, 0x1F FROM t", R),
    ]
}

fn multi_and_unknown() -> Vec<(&'static str, Class)> {
    vec![
        ("SELECT 1; SELECT 2", R),
        ("SELECT 1;", R),
        ("  ;;  SELECT 1 ;; ", R),
        ("SELECT 1; INSERT INTO t VALUES (1)", W),
        ("BEGIN; SELECT 1; COMMIT", W),
        ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", W),
        ("BEGIN READ ONLY; SELECT 1", W),
        ("SET search_path TO app; SELECT 1", pin(MultiStatementSet)),
        (
            "SELECT 1; SET pgmeridian.route = primary",
            pin(MultiStatementSet),
        ),
        ("SET x.y = 1; LISTEN c", pin(Listen)),
        (
            "SELECT 1; CREATE TEMP TABLE t (a int); SET x.y = 1",
            pin(TempTable),
        ),
        ("SELECT 1; FOO BAR", U),
        ("SELECT 'a;b'; SELECT $$;$$; SELECT \";\"", R),
        ("SET LOCAL work_mem = '1MB'; SELECT 1", R),
        ("ROLLBACK TO SAVEPOINT a; SELECT 1", R),
        ("SELECT 1; DO $$ BEGIN NULL; END $$", W),
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); DELETE FROM v)",
            W,
        ),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            W,
        ),
        (";;;", E),
        ("", E),
        ("  -- just a comment\n", E),
        ("/* a */ ; /* b */", E),
        ("FOO", U),
        ("garbage(", U),
        ("'string'", U),
        ("123", U),
        ("(", U),
        ("()", U),
        ("START", U),
        ("SET", U),
        ("RESET", U),
        ("DISCARD", U),
        ("EXPLAIN ANALYZE", U),
        ("EXPLAIN (ANALYZE", U),
        ("DECLARE c FOR SELECT 1", U),
        ("COPY t", U),
    ]
}

#[test]
fn table_reads() {
    check(&reads());
}

#[test]
fn table_writes() {
    check(&writes());
}

#[test]
fn table_pins_and_transactions() {
    check(&pins_and_transactions());
}

#[test]
fn table_settings() {
    check(&settings());
}

#[test]
fn table_lexing() {
    check(&lexing());
}

#[test]
fn table_multi_and_unknown() {
    check(&multi_and_unknown());
}

#[test]
fn table_has_enough_cases() {
    let n = cases().len();
    println!("table cases: {n}");
    assert!(n >= 100, "{n}");
}

#[test]
fn hints_come_from_leading_comments_only() {
    let wf = wf();
    let cases = [
        ("/* pgmeridian:primary */ SELECT 1", Some(Hint::Primary), R),
        ("-- pgmeridian:replica\nSELECT 1", Some(Hint::Replica), R),
        (
            "/* other */ /* PGMERIDIAN: Primary */ select 1",
            Some(Hint::Primary),
            R,
        ),
        (
            "/* pgmeridian:replica */ INSERT INTO t VALUES (1)",
            Some(Hint::Replica),
            W,
        ),
        ("/* pgmeridian:primary */", Some(Hint::Primary), E),
        ("SELECT 1 /* pgmeridian:primary */", None, R),
        ("; /* pgmeridian:primary */ SELECT 1", None, R),
        ("/* pgmeridian:auto */ SELECT 1", None, R),
        ("/* pgmeridian:primary please */ SELECT 1", None, R),
        ("'/* pgmeridian:primary */'", None, U),
    ];
    for (sql, hint, class) in cases {
        let got = classify(sql, &wf);
        assert_eq!(got.hint, hint, "{sql:?}");
        assert_eq!(got.class, class, "{sql:?}");
    }
}

#[test]
fn causal_tokens_come_from_leading_comments() {
    let wf = wf();
    let cases = [
        (
            "/* pgmeridian:causal_token=pgm1:7:1:0/10 */ SELECT 1",
            Some("pgm1:7:1:0/10"),
        ),
        (
            "/* pgmeridian:primary */ /* pgmeridian : causal_token = t */ SELECT 1",
            Some("t"),
        ),
        ("-- pgmeridian:causal_token=t\nSELECT 1", Some("t")),
        ("SELECT 1 /* pgmeridian:causal_token=t */", None),
        ("/* pgmeridian:causal_token= */ SELECT 1", None),
        ("/* pgmeridian:causal_token=a b */ SELECT 1", None),
    ];
    for (sql, token) in cases {
        let got = classify(sql, &wf);
        assert_eq!(got.causal_token.as_deref(), token, "{sql:?}");
        assert_eq!(got.class, R, "{sql:?}");
    }
}

#[test]
fn copy_statements_are_flagged() {
    let wf = WriteFunctions::default();
    let cases: &[(&str, bool)] = &[
        ("COPY t FROM STDIN", true),
        ("insert into t values (1); copy t from stdin", true),
        ("/* c */ copy (select 1) to stdout", true),
        ("SELECT 'copy'", false),
        ("SELECT pg_copy_physical_replication_slot('a', 'b')", false),
        ("insert into copy values (1)", false),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql, &wf).copies, *want, "{sql}");
    }
}

#[test]
fn pin_reason_names() {
    let all = [
        (TempTable, "temp_table"),
        (Listen, "listen"),
        (AdvisoryLock, "advisory_lock"),
        (WithHoldCursor, "with_hold_cursor"),
        (SetRole, "set_role"),
        (SessionAuthorization, "session_authorization"),
        (SqlPrepare, "sql_prepare"),
        (SetConfig, "set_config"),
        (MultiStatementSet, "multi_statement_set"),
        (Serializable, "serializable"),
        (EncodedSetting, "encoded_setting"),
    ];
    for (reason, name) in all {
        assert_eq!(reason.as_str(), name);
    }
}
