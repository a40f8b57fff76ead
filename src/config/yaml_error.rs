//! serde_norway's error texts as problems, without the scalars they quote: a mis-indented file
//! can fold a password into a block scalar that a type error then prints whole.

use super::Problem;

/// The problem for a YAML or type error; serde errors already carry the YAML path and line.
pub fn problem(e: &serde_norway::Error) -> Problem {
    let text = without_quoted_strings(&e.to_string());
    match text.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => Problem::new(path, rest),
        _ => Problem::new("", text),
    }
}

/// `invalid type: string "…", expected …` → `invalid type: string, expected …`.
fn without_quoted_strings(text: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at + MARK.len() - 2]);
        let quoted = &rest[at + MARK.len()..];
        let mut escaped = false;
        let end = quoted.char_indices().find_map(|(i, c)| match c {
            '\\' if !escaped => {
                escaped = true;
                None
            }
            '"' if !escaped => Some(i + 1),
            _ => {
                escaped = false;
                None
            }
        });
        rest = &quoted[end.unwrap_or(quoted.len())..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_are_left_out() {
        let cases = [
            (
                r#"users: invalid type: string "a\"b\nsecret", expected a sequence at line 4"#,
                "users: invalid type: string, expected a sequence at line 4",
            ),
            ("x: unknown field `y`", "x: unknown field `y`"),
            (r#"string "unterminated"#, "string"),
        ];
        for (input, want) in cases {
            assert_eq!(without_quoted_strings(input), want);
        }
    }
}
