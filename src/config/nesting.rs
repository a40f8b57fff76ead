//! Refuses YAML whose flow collections (`[…]`, `{…}`) nest deeper than any configuration
//! needs, before the parser sees it: libyaml's cost grows with the square of that depth
//! (a 200 kB file of brackets took over a minute), so a bad file could stall a reload.

/// Deepest flow nesting accepted; the configuration itself needs three or four levels.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The deepest nesting of `[` and `{` in `text`, outside quoted scalars and comments. Brackets
/// inside plain scalars count too, which can only overstate the depth.
pub fn flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '#' if prev.is_whitespace() => {
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
            }
            '\'' => {
                // '' is an escaped quote inside a single-quoted scalar.
                while let Some(n) = chars.next() {
                    if n == '\'' && chars.peek() != Some(&'\'') {
                        break;
                    }
                    if n == '\'' {
                        chars.next();
                    }
                }
            }
            '"' => {
                while let Some(n) = chars.next() {
                    match n {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        prev = c;
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flow_nesting_outside_quotes_and_comments() {
        let cases = [
            ("a: 1", 0),
            ("a: [1, {b: [2]}]", 3),
            ("a: '[[[['  # [[[[\nb: \"{{\\\"{{\"", 0),
            ("a: 'it''s [' ", 0),
            ("a: [[[]]] [", 3),
            ("x#[[[: [1]", 4),
        ];
        for (text, want) in cases {
            assert_eq!(flow_depth(text), want, "{text}");
        }
        assert_eq!(flow_depth(&"[".repeat(100_000)), 100_000);
    }
}
