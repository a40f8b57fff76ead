//! Test helper shared with tests/fuzz (by `#[path]`): SQL text with its numbers changed.

/// `sql` with every digit run outside a word replaced by `with`.
pub fn renumbered(sql: &str, with: &str) -> String {
    let mut out = String::new();
    let mut in_word = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && !in_word {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push_str(with);
            in_word = true;
            continue;
        }
        out.push(c);
        in_word = c.is_alphanumeric() || c == '_';
    }
    out
}
