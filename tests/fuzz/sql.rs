//! The SQL classifier over text in every client encoding: statements from a small grammar of
//! reads and writes, with literals, identifiers, comments and dollar quotes whose contents are
//! hostile (quotes, backslashes, `;`, `*/`, multibyte characters whose bytes look like ASCII
//! syntax), plus fragment soup and raw bytes.

use std::sync::Arc;

use pgmeridian::classify::{classify, Class, ClientEncoding, VolatileFunctions, WriteFunctions};
use proptest::prelude::*;

use crate::alloc::peak_growth;
use crate::gen;
use crate::{cases, Case};

const ENCODINGS: &[ClientEncoding] = &[
    ClientEncoding::Utf8,
    ClientEncoding::SingleByte,
    ClientEncoding::Euc,
    ClientEncoding::Johab,
    ClientEncoding::Sjis,
    ClientEncoding::DoubleByte,
    ClientEncoding::Gb18030,
];

fn writes() -> WriteFunctions {
    WriteFunctions::new(["billing.bump_counter"])
        .with_catalog(Arc::new(VolatileFunctions::new(["my_volatile", "random"])))
}

/// One character valid in `enc` other than ASCII, as its bytes: the trail bytes of SJIS, BIG5,
/// GBK, UHC and GB18030 characters may be `\`, `'`, `;`, digits… which must not be read as
/// syntax.
fn multibyte(enc: ClientEncoding) -> BoxedStrategy<Vec<u8>> {
    let hi = || 0x80u8..=0xFF;
    match enc {
        ClientEncoding::Utf8 => proptest::char::range('\u{80}', '\u{10FFFF}')
            .prop_map(|c| c.to_string().into_bytes())
            .boxed(),
        ClientEncoding::SingleByte | ClientEncoding::Euc => hi().prop_map(|b| vec![b]).boxed(),
        ClientEncoding::Johab => (hi(), 0xA1u8..=0xFE, 0xA1u8..=0xFE)
            .prop_map(|(l, a, b)| if l == 0x8F { vec![l, a, b] } else { vec![l, a] })
            .boxed(),
        ClientEncoding::Sjis => prop_oneof![
            (0xA1u8..=0xDF).prop_map(|b| vec![b]),
            (
                prop_oneof![0x81u8..=0x9F, 0xE0u8..=0xFC],
                prop_oneof![0x40u8..=0x7E, 0x80u8..=0xFC]
            )
                .prop_map(|(l, t)| vec![l, t]),
        ]
        .boxed(),
        ClientEncoding::DoubleByte => (hi(), 1u8..=0xFF).prop_map(|(l, t)| vec![l, t]).boxed(),
        ClientEncoding::Gb18030 => prop_oneof![
            (0x81u8..=0xFE, prop_oneof![0x40u8..=0x7E, 0x80u8..=0xFE])
                .prop_map(|(l, t)| vec![l, t]),
            (0x81u8..=0xFE, 0x30u8..=0x39, 0x81u8..=0xFE, 0x30u8..=0x39)
                .prop_map(|(a, b, c, d)| vec![a, b, c, d]),
        ]
        .boxed(),
    }
}

/// Text inside a literal, identifier or comment: ASCII syntax characters and multibyte
/// characters, each unit kept apart so that quoting escapes only what is ASCII.
fn content(enc: ClientEncoding) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let ascii =
        proptest::sample::select(b"'\"\\;$*/-\n\r\t a0E(){}|@".to_vec()).prop_map(|b| vec![b]);
    proptest::collection::vec(prop_oneof![2 => ascii, 1 => multibyte(enc)], 0..10)
}

/// `units` with every ASCII byte in `drop` removed and every one in `double` doubled (or
/// prefixed by `escape`).
fn quote(units: &[Vec<u8>], drop: &[u8], double: &[u8], escape: Option<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for u in units {
        if u.len() == 1 && u[0] < 0x80 {
            let b = u[0];
            if drop.contains(&b) {
                continue;
            }
            if double.contains(&b) {
                out.push(escape.unwrap_or(b));
            }
        }
        out.extend_from_slice(u);
    }
    out
}

fn literal(enc: ClientEncoding) -> impl Strategy<Value = Vec<u8>> {
    (
        content(enc),
        0u8..6,
        proptest::sample::select(vec!["", "a", "x_1", "q"]),
    )
        .prop_map(|(units, kind, tag)| {
            let wrap = |pre: &[u8], body: Vec<u8>, post: &[u8]| [pre, &body, post].concat();
            match kind {
                // Standard string: '' for a quote, backslash literal.
                0 => wrap(b"'", quote(&units, b"", b"'", None), b"'"),
                // Escape string: \' and \\.
                1 => wrap(b"E'", quote(&units, b"", b"'\\", Some(b'\\')), b"'"),
                2 => {
                    let d = format!("${tag}$").into_bytes();
                    wrap(&d, quote(&units, b"$", b"", None), &d)
                }
                3 => b"42".to_vec(),
                4 => b"-1.5e3".to_vec(),
                _ => b"X'ff'".to_vec(),
            }
        })
}

fn ident(enc: ClientEncoding) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"t".to_vec()),
        Just(b"public.t".to_vec()),
        content(enc).prop_map(|u| [&b"\""[..], &quote(&u, b"\0", b"\"", None), b"x\""].concat()),
    ]
}

/// Whitespace or a comment between two tokens (block comments may nest).
fn gap(enc: ClientEncoding) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::sample::select(vec![" ", "\n", "\t", "  "]).prop_map(|s| s.as_bytes().to_vec()),
        1 => (content(enc), any::<bool>()).prop_map(|(u, nest)| {
            let body = quote(&u, b"*/", b"", None);
            if nest {
                [&b" /* a /*"[..], &body, b"*/ b */ "].concat()
            } else {
                [&b" /*"[..], &body, b"*/ "].concat()
            }
        }),
        1 => content(enc).prop_map(|u| [&b" --"[..], &quote(&u, b"\n\r", b"", None), b"\n"].concat()),
    ]
}

const READS: &[&str] = &[
    "SELECT %L",
    "SELECT %L , %L FROM %I",
    "SELECT * FROM %I WHERE a = %L",
    "WITH q AS ( SELECT %L ) SELECT * FROM q",
    "VALUES ( %L )",
    "SELECT lower( %L ) FROM %I",
    "SELECT random( )",
];

const WRITES: &[&str] = &[
    "INSERT INTO %I VALUES ( %L )",
    "UPDATE %I SET a = %L",
    "DELETE FROM %I WHERE a = %L",
    "SELECT %L FROM %I FOR UPDATE",
    "SELECT * FROM %I FOR NO KEY UPDATE",
    "SELECT nextval( %L )",
    "SELECT pg_terminate_backend( %L )",
    "SELECT billing.bump_counter( %L )",
    "SELECT my_volatile( %L )",
    "CREATE TABLE %I ( a int )",
    "WITH d AS ( DELETE FROM %I RETURNING 1 ) SELECT * FROM d",
    "SELECT * INTO %I FROM %I",
    "COPY %I FROM STDIN",
    "LOCK %I",
    "TRUNCATE %I",
    "DO %L",
];

/// One statement of `templates`: each space a random gap, `%L` a literal, `%I` an identifier.
fn statement(
    enc: ClientEncoding,
    templates: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(templates),
        proptest::collection::vec(literal(enc), 3),
        proptest::collection::vec(ident(enc), 3),
        proptest::collection::vec(gap(enc), 12),
    )
        .prop_map(|(template, lits, idents, gaps)| {
            let (mut l, mut i) = (lits.into_iter(), idents.into_iter());
            let mut out = Vec::new();
            for (n, word) in template.split(' ').enumerate() {
                if n > 0 {
                    out.extend_from_slice(&gaps[n % gaps.len()]);
                }
                match word {
                    "%L" => out.extend(l.next().unwrap_or_else(|| b"1".to_vec())),
                    "%I" => out.extend(i.next().unwrap_or_else(|| b"t".to_vec())),
                    w if w.ends_with("%L") => {
                        out.extend_from_slice(w.trim_end_matches("%L").as_bytes());
                        out.extend(l.next().unwrap_or_else(|| b"1".to_vec()));
                    }
                    w => out.extend_from_slice(w.as_bytes()),
                }
            }
            out
        })
}

/// Statements joined by `;` in one string, and whether any of them writes.
fn script() -> impl Strategy<Value = (ClientEncoding, Vec<u8>, bool)> {
    proptest::sample::select(ENCODINGS).prop_flat_map(|enc| {
        let one = prop_oneof![
            2 => statement(enc, READS).prop_map(|s| (s, false)),
            1 => statement(enc, WRITES).prop_map(|s| (s, true)),
        ];
        (
            proptest::collection::vec(one, 1..4),
            gap(enc),
            any::<bool>(),
        )
            .prop_map(move |(stmts, gap, trailing)| {
                let wrote = stmts.iter().any(|(_, w)| *w);
                let mut sql = Vec::new();
                for (n, (s, _)) in stmts.into_iter().enumerate() {
                    if n > 0 {
                        sql.extend_from_slice(b";");
                        sql.extend_from_slice(&gap);
                    }
                    sql.extend(s);
                }
                if trailing {
                    sql.extend_from_slice(b" ;");
                }
                (enc, sql, wrote)
            })
    })
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Fail closed: a string with any write in it is never a read, however its literals,
    /// identifiers and comments are written and in whichever encoding; reads stay reads.
    #[test]
    fn writes_are_never_reads_in_any_encoding((enc, sql, wrote) in script()) {
        let _case = Case::start("writes_are_never_reads_in_any_encoding");
        let text = enc.readable(&sql);
        prop_assert!(text.is_some(), "valid {enc:?} text refused: {:?}", String::from_utf8_lossy(&sql));
        let text = text.unwrap();
        let (got, grew) = peak_growth(|| classify(&text, &writes()));
        prop_assert!(grew <= 4096 + 8 * text.len(), "classify held {grew} bytes");
        if wrote {
            prop_assert!(matches!(got.class, Class::Write | Class::Unknown),
                "{:?} for {text:?}", got.class);
        } else {
            prop_assert_eq!(got.class, Class::Read, "for {:?}", text);
        }
    }

    /// Any bytes in any encoding: reading them never panics; what reads as text classifies
    /// (a decision always comes back) within bounded memory; valid UTF-8 is itself in UTF-8,
    /// and pure ASCII is itself in every encoding.
    #[test]
    fn any_bytes_in_any_encoding(
        raw in prop_oneof![gen::bytes(200), soup()],
        enc in proptest::sample::select(ENCODINGS),
    ) {
        let _case = Case::start("any_bytes_in_any_encoding");
        let text = enc.readable(&raw);
        if raw.is_ascii() {
            prop_assert_eq!(text.as_deref().map(str::as_bytes), Some(&raw[..]));
        }
        if enc == ClientEncoding::Utf8 {
            prop_assert_eq!(text.is_some(), std::str::from_utf8(&raw).is_ok());
        }
        if let Some(text) = text {
            let (got, grew) = peak_growth(|| classify(&text, &writes()));
            prop_assert!(grew <= 4096 + 8 * text.len(), "classify held {grew} bytes");
            if text.trim().is_empty() {
                prop_assert_eq!(got.class, Class::Empty);
            }
        }
    }
}

/// SQL-significant fragments glued at random.
fn soup() -> impl Strategy<Value = Vec<u8>> {
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
        "\\",
        "U&'",
        "U&\"",
        " UESCAPE '!'",
        "select ",
        "insert ",
        "for ",
        "update ",
        "with ",
        "copy ",
        "explain ",
        "analyze ",
        "declare ",
        "cursor ",
        "begin ",
        "set ",
        "to ",
        "pgmeridian",
        ".route ",
        "nextval",
        "(",
        "é",
        "\u{0}",
        "\u{10FFFF}",
        "\u{FEFF}",
        "::",
        " ",
        "into ",
        "temp ",
        "listen ",
        "do ",
    ];
    proptest::collection::vec(proptest::sample::select(PIECES), 0..40)
        .prop_map(|p| p.concat().into_bytes())
}

/// Words, numbers and punctuation of statements whose class might hang on a number.
fn numeric_soup() -> impl Strategy<Value = String> {
    const PIECES: &[&str] = &[
        "0",
        "1",
        "42",
        "1.5",
        "2e3",
        ".5",
        "select ",
        "from t ",
        "where a = ",
        "limit ",
        "offset ",
        "for ",
        "update ",
        "share ",
        "no ",
        "key ",
        "insert into t ",
        "values ",
        "delete from t ",
        "set ",
        "local ",
        "session ",
        "transaction_read_only ",
        "to ",
        "= ",
        "statement_timeout ",
        "analyze ",
        "explain ",
        "(",
        ")",
        ",",
        ";",
        " ",
        "-",
        "+",
        "*",
        ".",
        "begin ",
        "read ",
        "only ",
        "write ",
        "pg_advisory_lock",
        "pg_sleep",
        "nextval",
        "t1",
        "x2 ",
        "fetch ",
        "declare c cursor ",
        "with ",
        "as ",
        "copy ",
        "call ",
        "e",
    ];
    proptest::collection::vec(proptest::sample::select(PIECES), 1..24).prop_map(|p| p.concat())
}

#[path = "../../src/classify/tests/renumber.rs"]
mod renumber;
use renumber::renumbered;

proptest! {
    #![proptest_config(cases(4000))]

    /// Sessions reuse the class of a plain query's shape (its numbers blanked) for Read, Write
    /// and Pin: text that qualifies classifies as its shape does, in any numbering, and text
    /// of another class is never taken for one of those.
    #[test]
    fn a_shape_has_one_class(sql in numeric_soup()) {
        let _case = Case::start("a_shape_has_one_class");
        let mut shape = Vec::new();
        if pgmeridian::classify::shape::numbers_blanked(sql.as_bytes(), &mut shape) {
            let shape = String::from_utf8(shape).expect("the shape of text is text");
            let kept = pgmeridian::classify::shape::kept_by_shape;
            let of_shape = classify(&shape, &writes()).class;
            for variant in [sql.clone(), renumbered(&sql, "7"), renumbered(&sql, "1")] {
                let got = classify(&variant, &writes()).class;
                prop_assert_eq!(kept(&got), kept(&of_shape), "{:?} ({:?}) vs shape {:?} ({:?})", variant, got, shape, of_shape);
                if kept(&got) {
                    prop_assert_eq!(got, of_shape.clone(), "{:?} vs shape {:?}", variant, shape);
                }
            }
        }
    }
}
