//! The shape of plain SQL text with its numbers blanked, so that a session can reuse the class
//! of text it sent before with other numbers (`WHERE aid = 123` / `= 456`); pure, no I/O.
//!
//! Only text whose class cannot depend on more than its token kinds qualifies: no quotes,
//! dollar signs, backslashes or comments (hints live in comments; strings and quoted names
//! are looked at by the rules), no EXPLAIN (whose `ANALYZE 0` / `ANALYZE 1` decides whether
//! the statement runs), and short enough to keep. The tests check the rule over the
//! classifier's whole table in several numberings.

use super::Class;

/// Longest text whose shape is taken.
pub const MAX_SHAPE: usize = 1024;

/// The classes that may be reused for every text of a shape: those that carry nothing of the
/// text's own (a setting's value, a token).
pub fn kept_by_shape(class: &Class) -> bool {
    matches!(class, Class::Read | Class::Write | Class::Pin(_))
}

/// What a byte means to the shape scan.
const PLAIN: u8 = 0;
const DIGIT: u8 = 1;
/// `e`/`E`: may start EXPLAIN.
const E: u8 = 2;
/// A quote, `$` or `\`: the text does not qualify.
const REFUSE: u8 = 3;
/// `-` or `/`: may start a comment.
const SLASH_DASH: u8 = 4;

static CLASSES: [u8; 256] = {
    let mut table = [PLAIN; 256];
    let mut b = b'0';
    while b <= b'9' {
        table[b as usize] = DIGIT;
        b += 1;
    }
    table[b'e' as usize] = E;
    table[b'E' as usize] = E;
    table[b'\'' as usize] = REFUSE;
    table[b'"' as usize] = REFUSE;
    table[b'$' as usize] = REFUSE;
    table[b'\\' as usize] = REFUSE;
    table[b'-' as usize] = SLASH_DASH;
    table[b'/' as usize] = SLASH_DASH;
    table
};

/// Whether `b` continues a word (a digit after one is part of it, not a number).
fn in_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Writes `sql` into `out` with every numeric literal's digit run replaced by `0`; `false`
/// (with `out` unspecified) when the text does not qualify.
pub fn numbers_blanked(sql: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if sql.len() > MAX_SHAPE {
        return false;
    }
    // Bytes from `copied` up to `i` are still to be copied as they are.
    let (mut i, mut copied) = (0, 0);
    while i < sql.len() {
        let b = sql[i];
        let class = CLASSES[usize::from(b)];
        if class == PLAIN {
            i += 1;
            continue;
        }
        let after_word = i > 0 && in_word(sql[i - 1]);
        match class {
            REFUSE => return false,
            SLASH_DASH => {
                let comment = if b == b'-' { b'-' } else { b'*' };
                if sql.get(i + 1) == Some(&comment) {
                    return false;
                }
                i += 1;
            }
            E => {
                if !after_word
                    && sql
                        .get(i..i + 7)
                        .is_some_and(|w| w.eq_ignore_ascii_case(b"explain"))
                {
                    return false;
                }
                i += 1;
            }
            _ if after_word => i += 1,
            _ => {
                out.extend_from_slice(&sql[copied..i]);
                while i < sql.len() && sql[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(b'0');
                copied = i;
            }
        }
    }
    out.extend_from_slice(&sql[copied..]);
    true
}
