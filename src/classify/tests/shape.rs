//! The shape rule: text that qualifies classifies as its shape does, whatever its numbers.

use super::super::classify;
use super::super::shape::{kept_by_shape as kept, numbers_blanked};
use super::renumber::renumbered;
use super::{cases, wf};

#[test]
fn blanking_keeps_words_and_refuses_what_rules_read() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            "select * from t where id = 123",
            Some("select * from t where id = 0"),
        ),
        (
            "select t1.a2 from t1 limit 10",
            Some("select t1.a2 from t1 limit 0"),
        ),
        ("select 1e5, 1.25, -7", Some("select 0e5, 0.0, -0")),
        (
            "select pg_advisory_lock(42)",
            Some("select pg_advisory_lock(0)"),
        ),
        ("select int4 '1'", None),
        ("select \"T1\" from x", None),
        ("select $1", None),
        ("select 1 -- note", None),
        ("select /* pgmeridian:primary */ 1", None),
        ("select e'\\n'", None),
        ("explain (analyze 1) update t set a = 1", None),
        ("select 1; EXPLAIN select 2", None),
        ("select explained from t where n = 1", None),
        ("select 2 - -3 / 4", Some("select 0 - -0 / 0")),
    ];
    let mut out = Vec::new();
    for (sql, want) in cases {
        let ok = numbers_blanked(sql.as_bytes(), &mut out);
        match want {
            Some(w) => assert!(
                ok && out == w.as_bytes(),
                "{sql:?} → {:?}",
                String::from_utf8_lossy(&out)
            ),
            None => assert!(!ok, "{sql:?} should not qualify"),
        }
    }
    let long = format!("select {}", "1+".repeat(600));
    assert!(!numbers_blanked(long.as_bytes(), &mut out));
}

/// Over every table case and extra numeric ones, in several numberings: a kept class is the
/// class of every text of the same shape (and an unkept one is never mistaken for a kept one).
#[test]
fn a_shape_has_one_class() {
    let wf = wf();
    let extra = [
        "select abalance from pgbench_accounts where aid = 48213;",
        "update pgbench_accounts set abalance = abalance + 5 where aid = 7;",
        "insert into t values (1, 2.5, 3e10)",
        "select * from t for update limit 1",
        "select pg_advisory_lock(12), 3",
        "select pg_sleep(1)",
        "set statement_timeout = 5000",
        "set local lock_timeout to 100",
        "begin isolation level serializable, read only; select 1",
        "select nextval(5)",
        "select 1; select 2",
        "fetch 10 from c",
        "select x from t offset 4 rows fetch first 3 rows only",
    ];
    let corpus: Vec<&str> = cases().iter().map(|(s, _)| *s).chain(extra).collect();
    let mut shape = Vec::new();
    let mut checked = 0;
    for sql in corpus {
        if !numbers_blanked(sql.as_bytes(), &mut shape) {
            continue;
        }
        let shape = String::from_utf8(shape.clone()).unwrap();
        let of_shape = classify(&shape, &wf).class;
        for variant in [
            sql.to_string(),
            renumbered(sql, "7"),
            renumbered(sql, "123456"),
        ] {
            let got = classify(&variant, &wf).class;
            assert_eq!(
                kept(&got),
                kept(&of_shape),
                "{variant:?} ({got:?}) vs its shape {shape:?} ({of_shape:?})"
            );
            if kept(&got) {
                assert_eq!(got, of_shape, "{variant:?} vs its shape {shape:?}");
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "only {checked} texts qualified");
}
