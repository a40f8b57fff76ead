//! No-panic checks: truncations, generated inputs, deep nesting, large inputs.

use super::super::{classify, Class, WriteFunctions};

/// xorshift64: deterministic pseudo-random numbers without dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

/// SQL-significant fragments to glue together.
const PIECES: &[&str] = &[
    "'",
    "\"",
    "$",
    "$$",
    "$a$",
    "$1",
    "--",
    "/*",
    "*/",
    "\n",
    ";",
    "(",
    ")",
    "E'",
    "e'",
    "\\",
    "U&'",
    "U&\"",
    "B'",
    "x'",
    "select ",
    "for ",
    "update ",
    "share ",
    "key ",
    "no ",
    "into ",
    "temp ",
    "nextval",
    "set_config",
    "set ",
    "reset ",
    "local ",
    "session ",
    "to ",
    " = ",
    "explain ",
    "analyze ",
    "with ",
    "as ",
    "insert ",
    "copy ",
    "stdout ",
    "declare ",
    "cursor ",
    "hold ",
    "begin ",
    "rollback ",
    "commit ",
    "transaction ",
    "read ",
    "only ",
    "pgmeridian",
    ".",
    "route ",
    "é",
    "€",
    "\u{0}",
    "1",
    "::",
    ",",
    "x ",
    " ",
    "\t",
    "-",
    "*",
    "/",
    "=",
];

fn check_no_panic(sql: &str, wf: &WriteFunctions) {
    let got = classify(sql, wf);
    // Splitting never invents a class from nothing.
    if sql.trim().is_empty() {
        assert_eq!(got.class, Class::Empty, "{sql:?}");
    }
}

#[test]
fn truncations_of_table_cases_do_not_panic() {
    let wf = super::wf();
    for (sql, _) in super::cases() {
        for i in 0..=sql.len() {
            if let Some(prefix) = sql.get(..i) {
                check_no_panic(prefix, &wf);
            }
            if let Some(suffix) = sql.get(i..) {
                check_no_panic(suffix, &wf);
            }
        }
    }
}

#[test]
fn generated_fragment_soup_does_not_panic() {
    let wf = super::wf();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let n = rng.below(40);
        let mut sql = String::new();
        for _ in 0..n {
            sql.push_str(PIECES.get(rng.below(PIECES.len())).copied().unwrap_or(" "));
        }
        check_no_panic(&sql, &wf);
    }
}

#[test]
fn random_bytes_do_not_panic() {
    let wf = WriteFunctions::default();
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
        let sql = String::from_utf8_lossy(&bytes);
        check_no_panic(&sql, &wf);
        // Printable ASCII only, to reach deeper into the rules.
        let ascii: String = bytes.iter().map(|b| char::from(b' ' + b % 95)).collect();
        check_no_panic(&ascii, &wf);
    }
}

#[test]
fn deep_nesting_and_large_inputs_do_not_panic() {
    let wf = WriteFunctions::default();
    let explain = format!("{}SELECT 1", "EXPLAIN ANALYZE ".repeat(10_000));
    assert_eq!(classify(&explain, &wf).class, Class::Unknown);
    let copy = format!(
        "{}SELECT 1{}",
        "COPY (".repeat(5_000),
        ") TO STDOUT".repeat(5_000)
    );
    check_no_panic(&copy, &wf);
    let declare = "DECLARE c CURSOR FOR ".repeat(5_000);
    check_no_panic(&declare, &wf);
    for unit in [
        "(", ")", "/*", "*/", "'", "$a$", "$", ";", "--\n", "E'\\", "U&",
    ] {
        check_no_panic(&unit.repeat(100_000), &wf);
    }
    let parens = format!(
        "SELECT {}1{} FOR UPDATE",
        "(".repeat(50_000),
        ")".repeat(50_000)
    );
    assert_eq!(classify(&parens, &wf).class, Class::Write);
    // A long dollar tag with many near-miss closers stays linear.
    let tag = "a".repeat(10_000);
    let body = format!("$a{}", "a".repeat(100)).repeat(1_000);
    let dollar = format!("SELECT ${tag}${body}${tag}$ FROM t FOR UPDATE");
    assert_eq!(classify(&dollar, &wf).class, Class::Write);
    let many = "SELECT 1;".repeat(50_000);
    assert_eq!(classify(&many, &wf).class, Class::Read);
}
