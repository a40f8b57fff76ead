//! Function calls: configured write and read functions, and the catalog of volatile ones.

use super::*;
use crate::classify::VolatileFunctions;

#[test]
fn write_functions_config_parsing() {
    let wf = WriteFunctions::new(["  ", "App.Bump", "plain", "\"Odd\""]);
    let w = |sql: &str| classify(sql, &wf).class;
    assert_eq!(w("SELECT app.bump(1)"), W);
    assert_eq!(w("SELECT bump(1)"), W);
    assert_eq!(w("SELECT other.bump(1)"), R);
    assert_eq!(w("SELECT x.plain(1)"), W);
    assert_eq!(w("SELECT odd()"), W);
    assert_eq!(w("SELECT bump FROM t"), R);
    let default = WriteFunctions::default();
    assert_eq!(classify("SELECT nextval('s')", &default).class, W);
    assert_eq!(classify("SELECT app.bump(1)", &default).class, R);
}

#[test]
fn volatile_functions_from_the_catalog_are_writes_unless_allowed() {
    let catalog = std::sync::Arc::new(VolatileFunctions::new([
        "my_counter",
        "audit_read",
        "pg_sleep",
        "random",
        "pg_wal_replay_pause",
        "pg_is_in_recovery",
        "Mixed_Case",
    ]));
    let wf = WriteFunctions::new(["billing.charge"])
        .with_reads(["audit_read", "app.my_counter"])
        .with_catalog(catalog);
    let cases: &[(&str, Class)] = &[
        ("SELECT my_counter()", R), // allowed as app.my_counter: any unqualified call may be it
        ("SELECT other.my_counter()", W),
        ("SELECT app.my_counter()", R),
        ("SELECT audit_read(1), x FROM t", R),
        ("SELECT pg_sleep(10)", W),
        ("SELECT pid, pg_wal_replay_pause() FROM pg_stat_activity", W),
        ("SELECT random(), pg_is_in_recovery()", R),
        ("SELECT mixed_case()", W),
        ("SELECT \"MIXED_CASE\"()", W),
        ("SELECT lower('A'), count(*) FROM t", R),
        ("SELECT billing.charge(1)", W),
        ("SELECT nextval('s')", W),
        ("SELECT pg_advisory_lock(1)", pin(AdvisoryLock)),
        // A name, not a call.
        ("SELECT pg_sleep FROM t", R),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql, &wf).class, *want, "{sql}");
    }
    // Without a catalog (not loaded yet, or switched off) only the lists apply.
    let plain = WriteFunctions::new(["billing.charge"]);
    assert_eq!(classify("SELECT pg_sleep(10)", &plain).class, R);
    assert_eq!(classify("SELECT my_counter()", &plain).class, R);
}

#[test]
fn reads_of_primary_only_state_go_to_the_primary() {
    let wf = WriteFunctions::default();
    let cases: &[(&str, Class)] = &[
        // A standby lists no prepared transactions: psycopg's ROLLBACK PREPARED loop.
        ("select gid from pg_prepared_xacts where database = $1", W),
        ("SELECT count(*) FROM PG_CATALOG.PG_PREPARED_XACTS", W),
        ("SELECT * FROM \"pg_prepared_xacts\"", W),
        ("SELECT * FROM pg_stat_replication", W),
        ("SELECT slot_name FROM pg_replication_slots", W),
        (
            "WITH a AS (SELECT * FROM pg_prepared_xacts) SELECT 1 FROM a",
            W,
        ),
        // Quoted names are case-sensitive; other schemas and look-alikes are ordinary.
        ("SELECT * FROM \"PG_PREPARED_XACTS\"", R),
        ("SELECT * FROM app.pg_prepared_xacts", R),
        ("SELECT * FROM pg_prepared_xacts_log", R),
        ("SELECT 'pg_prepared_xacts', 1", R),
        // Sessions to look for run their writes and volatile calls on the primary.
        ("SELECT pid FROM pg_stat_activity WHERE query LIKE $1", W),
        ("SELECT * FROM pg_locks l JOIN t ON true", W),
        ("SELECT * FROM pg_catalog.pg_locks", W),
        ("SELECT * FROM \"PG_LOCKS\"", R),
        ("SELECT * FROM pg_lockset", R),
        ("SELECT * FROM pg_stat_user_tables", R),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql, &wf).class, *want, "{sql}");
    }
}

#[test]
fn function_names_are_cut_to_63_bytes_as_postgresql_does() {
    let long = "f".repeat(63);
    let catalog = std::sync::Arc::new(VolatileFunctions::new([long.as_str()]));
    let wf = WriteFunctions::default().with_catalog(catalog);
    let w = |sql: String| classify(&sql, &wf).class;
    assert_eq!(w(format!("SELECT {long}()")), W);
    // PostgreSQL truncates the longer name and calls the same function.
    assert_eq!(w(format!("SELECT {long}xyz()")), W);
    assert_eq!(w(format!("SELECT \"{long}XYZ\"()")), W);
    assert_eq!(w(format!("SELECT {}()", "f".repeat(62))), R);
    // Cut at a character boundary: 62 ASCII bytes and a 2-byte character is 64 bytes, cut
    // to 62, not into the character.
    assert_eq!(w(format!("SELECT {}é()", "g".repeat(62))), R);
}
