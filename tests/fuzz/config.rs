//! The configuration loader: YAML text (the shipped example file, mutated line by line and
//! byte by byte) through `${VAR}` expansion and validation, plus `expand` itself.

use pgmeridian::config::{expand, Config, ExpandError};
use proptest::prelude::*;

use crate::alloc::peak_growth;
use crate::gen;
use crate::{cases, Case};

const EXAMPLE: &str = include_str!("../../config/pgmeridian.example.yaml");
const PASSWORD_LINE: &str = "    password: \"${APP_PASSWORD}\"";
/// What `${APP_PASSWORD}` expands to: it must never be quoted in a problem.
const SECRET: &str = "Zq9-env-secret";
/// A password written into the file itself: never quoted either.
const LITERAL_SECRET: &str = "Lk4-file-secret";

fn env(name: &str) -> Option<String> {
    match name {
        "APP_PASSWORD" => Some(SECRET.into()),
        "REGION" => Some("eu-west".into()),
        "NESTED" => Some("${APP_PASSWORD}".into()),
        _ => None,
    }
}

/// A YAML value in any position: well-typed, wrongly typed, or hostile.
fn value() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "",
        "~",
        "0",
        "-1",
        "18446744073709551616",
        "1e309",
        "5s",
        "-5s",
        "99999999999h",
        "\"${REGION}\"",
        "\"${UNSET}\"",
        "\"${bad name}\"",
        "\"${\"",
        "\"$${x}\"",
        "[]",
        "{}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]",
        "&a x",
        "*a",
        "*undefined",
        "!!binary aGVsbG8=",
        "!custom x",
        "|\n  block",
        "'quoted'",
        "\"\\u0000\"",
        "\"é€\u{10FFFF}\"",
        "127.0.0.1:0",
        "0.0.0.0:99999",
        "::1",
        "true",
        "null",
        "{ lat: 91, lon: 0 }",
        "[scram-sha-256, md5, none, bogus]",
        "<<: *a",
    ])
    .prop_map(str::to_owned)
}

/// What to do to one line of the example.
#[derive(Debug, Clone)]
enum LineEdit {
    Keep,
    Delete,
    Duplicate,
    /// Replace what follows the first `:` with a value.
    Value(String),
    Indent(usize),
    Dedent,
}

fn line_edits() -> impl Strategy<Value = Vec<(proptest::sample::Index, LineEdit)>> {
    let edit = prop_oneof![
        Just(LineEdit::Keep),
        Just(LineEdit::Delete),
        Just(LineEdit::Duplicate),
        value().prop_map(LineEdit::Value),
        (1usize..5).prop_map(LineEdit::Indent),
        Just(LineEdit::Dedent),
    ];
    proptest::collection::vec((any::<proptest::sample::Index>(), edit), 0..6)
}

/// The example with these edits, never touching the password line (whose fate the caller
/// decides), and the password line's replacement.
fn edited(edits: &[(proptest::sample::Index, LineEdit)], password: &str) -> String {
    let mut lines: Vec<String> = EXAMPLE.lines().map(str::to_owned).collect();
    for (at, edit) in edits {
        let i = at.index(lines.len());
        if lines[i] == PASSWORD_LINE {
            continue;
        }
        match edit {
            LineEdit::Keep => {}
            LineEdit::Delete => {
                lines.remove(i);
            }
            LineEdit::Duplicate => lines.insert(i, lines[i].clone()),
            LineEdit::Value(v) => {
                if let Some((key, _)) = lines[i].split_once(':') {
                    lines[i] = format!("{key}: {v}");
                }
            }
            LineEdit::Indent(n) => lines[i] = format!("{}{}", " ".repeat(*n), lines[i]),
            LineEdit::Dedent => lines[i] = lines[i].trim_start().to_owned(),
        }
    }
    let text = lines.join("\n");
    text.replace(PASSWORD_LINE, &format!("    password: {password}"))
}

/// Loads `text`, checking that it ends within bounded memory.
fn load(text: &str) -> Result<Result<Config, Vec<pgmeridian::config::Problem>>, TestCaseError> {
    let (got, grew) = peak_growth(|| Config::from_yaml(text, &env));
    prop_assert!(
        grew <= (64 << 20),
        "loading {} bytes held {grew} bytes",
        text.len()
    );
    Ok(got)
}

proptest! {
    #![proptest_config(cases(300))]

    /// The shipped example, edited line by line: it loads or is refused with problems, and
    /// neither a password from the environment nor one written in the file is ever quoted in a
    /// problem, however the password field is written.
    #[test]
    fn config_problems_never_quote_passwords(
        edits in line_edits(),
        password in proptest::sample::select(vec![
            "\"${APP_PASSWORD}\"", "\"${NESTED}\"", "\"Lk4-file-secret\"",
            "\"Lk4-file-secret${\"", "\"Lk4-file-secret${bad name}\"",
            "\"Lk4-file-secret${UNSET}\"", "\"$${APP_PASSWORD}Lk4-file-secret\"",
            "\"${APP_PASSWORD}${UNSET}\"", "[Lk4-file-secret]", "{ a: Lk4-file-secret }",
        ]),
    ) {
        let _case = Case::start("config_problems_never_quote_passwords");
        let text = edited(&edits, password);
        if let Err(problems) = load(&text)? {
            for p in &problems {
                prop_assert!(!p.message.contains(SECRET) && !p.path.contains(SECRET),
                    "the environment's password is quoted: {p:?}");
                prop_assert!(!p.message.contains(LITERAL_SECRET),
                    "the file's password is quoted: {p:?}");
            }
        }
    }

    /// The example damaged byte by byte: loaded or refused, never a panic, a hang or
    /// unbounded memory.
    #[test]
    fn damaged_config_is_refused_cleanly(muts in proptest::collection::vec(gen::Mutation::strategy(), 1..6)) {
        let _case = Case::start("damaged_config_is_refused_cleanly");
        let bytes = gen::mutate(EXAMPLE.as_bytes().to_vec(), &muts);
        load(&String::from_utf8_lossy(&bytes))?.ok();
    }

    /// `$${` is how a literal `${` is written, for any text; a variable's value is inserted
    /// as is, never expanded again.
    #[test]
    fn expansion_escapes_round_trip(
        text in proptest::collection::vec(
            proptest::sample::select(vec!["$", "{", "}", "${", "$${", "a", "APP_PASSWORD", "é", " "]),
            0..16),
    ) {
        let _case = Case::start("expansion_escapes_round_trip");
        let text = text.concat();
        let escaped = text.replace("${", "$${");
        prop_assert_eq!(expand(&escaped, &|_| None), Ok(text.clone()));
        if !text.contains('$') {
            prop_assert_eq!(expand(&text, &env), Ok(text.clone()));
        }
        prop_assert_eq!(expand("${NESTED}", &env), Ok("${APP_PASSWORD}".to_owned()));
        if let Err(e) = expand(&text, &env) {
            prop_assert!(!e.describe_secret(&text).contains(SECRET));
            prop_assert!(matches!(e, ExpandError::Unterminated | ExpandError::BadName(_) | ExpandError::Unset(_)));
        }
    }
}

#[test]
fn aliases_and_deep_nesting_are_refused_quickly() {
    let laughs = (1..9).fold(
        "regions:\n  a0: &a0 { lat: 1, lon: 2 }\n".to_owned(),
        |y, i| {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            format!("{y}  a{i}: &a{i} [{refs}]\n")
        },
    );
    let nested = format!("users: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let maps = format!("users: {}", "{a: ".repeat(50_000));
    for text in [laughs, nested, maps] {
        let (got, grew) = peak_growth(|| Config::from_yaml(&text, &env));
        assert!(got.is_err(), "{}", &text[..80]);
        assert!(grew <= 64 << 20, "held {grew} bytes");
    }
}

/// Found by the long run: `users: |` folds the lines below it, the password among them, into a
/// string, and the type error used to quote that string whole.
#[test]
fn a_password_folded_into_a_block_scalar_is_not_quoted() {
    let text = EXAMPLE
        .replace("users:", "users: |\n  block")
        .replace(PASSWORD_LINE, "    password: \"Lk4-file-secret\"");
    let problems = Config::from_yaml(&text, &env).unwrap_err();
    assert!(
        problems.iter().all(|p| !p.message.contains(LITERAL_SECRET)),
        "{problems:?}"
    );
}
