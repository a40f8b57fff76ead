//! Hand-written SQL lexer over bytes: just enough of PostgreSQL's scanner to
//! find keywords, identifiers and punctuation outside literals and comments.
//!
//! Token boundaries always fall on ASCII bytes (every byte >= 0x80 is an
//! identifier byte, as in PostgreSQL), so every boundary is a char boundary.
//! Unterminated quotes and comments consume the rest of the input.

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Unquoted identifier or keyword.
    Ident,
    /// `"..."` or `U&"..."`; never a keyword.
    QuotedIdent,
    /// Any string constant: `'..'`, `E'..'`, `U&'..'`, `B'..'`, `X'..'`, `N'..'`, `$tag$..$tag$`.
    String,
    /// Positional parameter `$1`.
    Param,
    Number,
    LParen,
    RParen,
    Semicolon,
    Comma,
    Dot,
    /// `::`
    DoubleColon,
    /// Operator such as `=`, `<>`, `||`.
    Op,
    /// Anything else (`[`, `]`, `:`, a lone `$`, control bytes...).
    Other,
}

/// One token: its kind, raw text and byte range in the source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token<'a> {
    pub kind: Kind,
    pub text: &'a [u8],
    pub start: usize,
    pub end: usize,
}

impl<'a> Token<'a> {
    /// Unquoted identifier equal to `kw` (lowercase), ignoring ASCII case.
    pub fn is_kw(&self, kw: &str) -> bool {
        self.kind == Kind::Ident && self.text.eq_ignore_ascii_case(kw.as_bytes())
    }

    /// Unquoted identifier equal to one of `kws`.
    pub fn is_any_kw(&self, kws: &[&str]) -> bool {
        kws.iter().any(|kw| self.is_kw(kw))
    }

    pub fn is(&self, kind: Kind) -> bool {
        self.kind == kind
    }

    pub fn is_op(&self, op: &str) -> bool {
        self.kind == Kind::Op && self.text == op.as_bytes()
    }

    /// The name of an identifier token: the text of an unquoted one, the
    /// content between the quotes of a quoted one (`""` left as is).
    pub fn name(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Ident => Some(self.text),
            Kind::QuotedIdent => Some(strip_quotes(self.text, b'"')),
            _ => None,
        }
    }

    /// The body of a plain quoted string constant (optional one-letter prefix).
    pub fn string_body(&self) -> Option<&'a [u8]> {
        if self.kind != Kind::String {
            return None;
        }
        Some(strip_quotes(self.text, b'\''))
    }
}

/// Drops everything before the first `q`, that quote, and a trailing `q`.
fn strip_quotes(text: &[u8], q: u8) -> &[u8] {
    let from = text.iter().position(|&b| b == q).map_or(0, |i| i + 1);
    let body = text.get(from..).unwrap_or(&[]);
    body.strip_suffix(&[q]).unwrap_or(body)
}

/// A token, or a comment (returned only by [`Lexer::next_item`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Item<'a> {
    Token(Token<'a>),
    /// `body` is the text between `--` and the line end, or between `/*` and `*/`.
    Comment {
        body: &'a [u8],
    },
}

/// Lexer over `src[start..end]`; positions are offsets into the whole `src`.
#[derive(Clone, Debug)]
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
const OP: u8 = 8;

/// Byte classes, indexed by byte value (a `u8` index cannot be out of bounds).
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            class |= SPACE;
        }
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            class |= IDENT_START | IDENT_CONT;
        }
        if b.is_ascii_digit() || b == b'$' {
            class |= IDENT_CONT;
        }
        if matches!(
            b,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            class |= OP;
        }
        table[i] = class;
        i += 1;
    }
    table
};

fn has_class(b: u8, class: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

fn is_space(b: u8) -> bool {
    has_class(b, SPACE)
}

fn is_ident_start(b: u8) -> bool {
    has_class(b, IDENT_START)
}

fn is_ident_cont(b: u8) -> bool {
    has_class(b, IDENT_CONT)
}

fn is_op_char(b: u8) -> bool {
    has_class(b, OP)
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
        }
    }

    /// Lexes only `src[start..end]` (clamped to the input).
    pub fn with_range(src: &'a str, start: usize, end: usize) -> Self {
        let bytes = src.as_bytes();
        let src = bytes.get(..end).unwrap_or(bytes);
        Lexer {
            src,
            pos: start.min(src.len()),
        }
    }

    /// Offset of the end of the lexed range.
    pub fn end(&self) -> usize {
        self.src.len()
    }

    /// First position at or after `p` whose byte fails `pred` (or the end).
    fn run_end(&self, p: usize, pred: impl Fn(u8) -> bool) -> usize {
        let rest = self.src.get(p..).unwrap_or(&[]);
        p + rest.iter().position(|&c| !pred(c)).unwrap_or(rest.len())
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        self.src.get(from..to).unwrap_or(&[])
    }

    /// Next token, skipping comments.
    pub fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            match self.next_item()? {
                Item::Token(t) => return Some(t),
                Item::Comment { .. } => {}
            }
        }
    }

    /// The token `next_token` would return, without consuming it.
    pub fn peek(&self) -> Option<Token<'a>> {
        self.clone().next_token()
    }

    /// Consumes the next token if it is the keyword `kw`.
    pub fn eat_kw(&mut self, kw: &str) -> bool {
        let mut ahead = self.clone();
        match ahead.next_token() {
            Some(t) if t.is_kw(kw) => {
                *self = ahead;
                true
            }
            _ => false,
        }
    }

    /// Next token or comment, skipping whitespace.
    #[inline(always)]
    pub fn next_item(&mut self) -> Option<Item<'a>> {
        self.pos = self.run_end(self.pos, is_space);
        let start = self.pos;
        let b = self.at(start)?;
        let b1 = self.at(start + 1);
        let kind = match b {
            b'-' if b1 == Some(b'-') => return Some(self.line_comment(start)),
            b'/' if b1 == Some(b'*') => return Some(self.block_comment(start)),
            b'\'' => self.quoted(start + 1, b'\'', false),
            b'"' => self.quoted(start + 1, b'"', false),
            b'e' | b'E' if b1 == Some(b'\'') => self.quoted(start + 2, b'\'', true),
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if b1 == Some(b'\'') => {
                self.quoted(start + 2, b'\'', false)
            }
            b'u' | b'U' if b1 == Some(b'&') && self.at(start + 2) == Some(b'\'') => {
                self.quoted(start + 3, b'\'', false)
            }
            b'u' | b'U' if b1 == Some(b'&') && self.at(start + 2) == Some(b'"') => {
                self.quoted(start + 3, b'"', false)
            }
            b'$' => self.dollar(start),
            b'0'..=b'9' => self.number(start),
            b'.' if b1.is_some_and(|c| c.is_ascii_digit()) => self.number(start),
            b':' if b1 == Some(b':') => {
                self.pos = start + 2;
                Kind::DoubleColon
            }
            b'(' | b')' | b';' | b',' | b'.' => {
                self.pos = start + 1;
                match b {
                    b'(' => Kind::LParen,
                    b')' => Kind::RParen,
                    b';' => Kind::Semicolon,
                    b',' => Kind::Comma,
                    _ => Kind::Dot,
                }
            }
            c if is_op_char(c) => self.operator(start),
            c if is_ident_start(c) => {
                self.pos = self.run_end(start + 1, is_ident_cont);
                Kind::Ident
            }
            _ => {
                self.pos = start + 1;
                Kind::Other
            }
        };
        self.pos = self.pos.min(self.src.len());
        Some(Item::Token(Token {
            kind,
            text: self.slice(start, self.pos),
            start,
            end: self.pos,
        }))
    }

    fn line_comment(&mut self, start: usize) -> Item<'a> {
        let mut p = start + 2;
        while self.at(p).is_some_and(|c| c != b'\n' && c != b'\r') {
            p += 1;
        }
        self.pos = p.min(self.src.len());
        Item::Comment {
            body: self.slice(start + 2, self.pos),
        }
    }

    /// `/* ... */` with nesting, as PostgreSQL does.
    fn block_comment(&mut self, start: usize) -> Item<'a> {
        let mut depth = 1usize;
        let mut p = start + 2;
        let mut body_end = None;
        while let Some(c) = self.at(p) {
            let next = self.at(p + 1);
            if c == b'/' && next == Some(b'*') {
                depth += 1;
                p += 2;
            } else if c == b'*' && next == Some(b'/') {
                depth -= 1;
                p += 2;
                if depth == 0 {
                    body_end = Some(p - 2);
                    break;
                }
            } else {
                p += 1;
            }
        }
        self.pos = p.min(self.src.len());
        Item::Comment {
            body: self.slice(start + 2, body_end.unwrap_or(self.pos)),
        }
    }

    /// Scans a quoted body starting at `p` up to the closing `q` (a doubled
    /// `q` is part of the body; with `backslash`, `\` escapes the next byte).
    fn quoted(&mut self, mut p: usize, q: u8, backslash: bool) -> Kind {
        while let Some(c) = self.at(p) {
            if c == q {
                if self.at(p + 1) == Some(q) {
                    p += 2;
                    continue;
                }
                p += 1;
                break;
            }
            p += if backslash && c == b'\\' { 2 } else { 1 };
        }
        self.pos = p;
        if q == b'"' {
            Kind::QuotedIdent
        } else {
            Kind::String
        }
    }

    /// `$1`, `$$...$$`, `$tag$...$tag$`, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Kind {
        let mut p = start + 1;
        match self.at(p) {
            Some(c) if c.is_ascii_digit() => {
                while self.at(p).is_some_and(|c| c.is_ascii_digit()) {
                    p += 1;
                }
                self.pos = p;
                return Kind::Param;
            }
            Some(b'$') => {}
            Some(c) if is_ident_start(c) => {
                while self.at(p).is_some_and(|c| c != b'$' && is_ident_cont(c)) {
                    p += 1;
                }
                if self.at(p) != Some(b'$') {
                    self.pos = start + 1;
                    return Kind::Other;
                }
            }
            _ => {
                self.pos = start + 1;
                return Kind::Other;
            }
        }
        // `p` is on the closing `$` of the opening delimiter.
        let delim = self.slice(start, p + 1);
        let mut q = p + 1;
        // The tag holds no `$`, so a failed comparison starting at one `$`
        // stops at the next `$` at the latest: the search is linear.
        while let Some(c) = self.at(q) {
            if c == b'$' && self.matches_at(q, delim) {
                self.pos = q + delim.len();
                return Kind::String;
            }
            q += 1;
        }
        self.pos = self.src.len();
        Kind::String
    }

    fn matches_at(&self, p: usize, pat: &[u8]) -> bool {
        pat.iter()
            .enumerate()
            .all(|(i, &b)| self.at(p + i) == Some(b))
    }

    fn number(&mut self, start: usize) -> Kind {
        let mut p = start;
        while let Some(c) = self.at(p) {
            let dot = c == b'.' && self.at(p + 1) != Some(b'.');
            if c.is_ascii_alphanumeric() || c == b'_' || dot {
                p += 1;
            } else {
                break;
            }
        }
        self.pos = p;
        Kind::Number
    }

    /// Operator chars; a comment start ends the operator, and (as in
    /// PostgreSQL) a trailing `+`/`-` is dropped unless the operator holds
    /// one of `~!@#%^&|`?`.
    fn operator(&mut self, start: usize) -> Kind {
        let mut p = start;
        while let Some(c) = self.at(p) {
            let next = self.at(p + 1);
            let comment = (c == b'-' && next == Some(b'-')) || (c == b'/' && next == Some(b'*'));
            if !is_op_char(c) || (p > start && comment) {
                break;
            }
            p += 1;
        }
        let text = self.slice(start, p);
        if !text.iter().any(|c| b"~!@#%^&|`?".contains(c)) {
            while p > start + 1 && matches!(self.at(p - 1), Some(b'+' | b'-')) {
                p -= 1;
            }
        }
        self.pos = p;
        Kind::Op
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_token()
    }
}
