//! Owns reading SQL bytes in the session's `client_encoding` for classification: character
//! boundaries as PostgreSQL finds them; pure, and it never converts text for the server.
//!
//! The lexer works on bytes and treats every byte >= 0x80 as part of an identifier, as
//! PostgreSQL's scanner does. That is right as is for UTF-8, the single-byte encodings and the
//! EUC family, whose multibyte characters never contain ASCII bytes. SJIS, BIG5, GBK, UHC and
//! GB18030 have ASCII bytes (`\`, `|`, digits…) inside characters, so their text is rewritten
//! for the lexer: every byte of a non-ASCII character becomes the character U+0100 + byte,
//! which keeps distinct characters distinct (dollar-quote tags) and keeps ASCII syntax where it
//! is. Text that is not valid in its encoding is `None`: the caller treats it as a write.

use std::borrow::Cow;

/// How an encoding's bytes form characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientEncoding {
    /// UTF8 (alias UNICODE): text must be valid UTF-8.
    #[default]
    Utf8,
    /// SQL_ASCII, LATIN*, WIN*, KOI8*, ISO_8859_*: each byte is a character.
    SingleByte,
    /// EUC_JP, EUC_CN, EUC_KR, EUC_TW, EUC_JIS_2004, MULE_INTERNAL: multibyte characters use
    /// only bytes >= 0x80.
    Euc,
    /// JOHAB: like EUC, with the trail bytes PostgreSQL accepts checked.
    Johab,
    /// SJIS, SHIFT_JIS_2004.
    Sjis,
    /// BIG5, GBK, UHC: a byte >= 0x80 starts a two-byte character.
    DoubleByte,
    /// GB18030: two- or four-byte characters.
    Gb18030,
}

impl ClientEncoding {
    /// The encoding of a `client_encoding` value (any spelling PostgreSQL accepts, quoted or
    /// not); `None` for a name PostgreSQL does not know.
    pub fn from_name(name: &str) -> Option<ClientEncoding> {
        // As PostgreSQL's clean_encoding_name: letters and digits only, lowercase.
        let clean: String = name
            .trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        use ClientEncoding::*;
        let enc = match clean.as_str() {
            "utf8" | "unicode" => Utf8,
            "sqlascii" | "alt" | "abc" | "tcvn" | "tcvn5712" | "vscii" | "koi8" | "koi8r"
            | "koi8u" | "win" => SingleByte,
            "eucjp" | "euccn" | "euckr" | "euctw" | "eucjis2004" | "muleinternal" => Euc,
            "johab" => Johab,
            "sjis" | "shiftjis" | "mskanji" | "win932" | "windows932" | "shiftjis2004" => Sjis,
            "big5" | "win950" | "windows950" | "gbk" | "cp936" | "win936" | "windows936"
            | "uhc" | "cp949" | "win949" | "windows949" => DoubleByte,
            "gb18030" => Gb18030,
            s if is_single_byte_name(s) => SingleByte,
            _ => return None,
        };
        Some(enc)
    }

    /// `sql` as text the lexer classifies exactly as PostgreSQL would split it into
    /// characters, or `None` when it is not valid in this encoding.
    pub fn readable(self, sql: &[u8]) -> Option<Cow<'_, str>> {
        let utf8 = std::str::from_utf8(sql);
        if self == ClientEncoding::Utf8 {
            return utf8.ok().map(Cow::Borrowed);
        }
        if let Ok(text) = utf8 {
            // Read byte-wise, valid UTF-8 has its ASCII syntax where this encoding has it,
            // unless the encoding hides ASCII bytes inside characters.
            if self.keeps_ascii() || text.is_ascii() {
                return Some(Cow::Borrowed(text));
            }
        }
        let mut out = String::with_capacity(sql.len() * 2);
        let mut i = 0;
        while i < sql.len() {
            let b = sql[i];
            if b < 0x80 {
                out.push(b as char);
                i += 1;
                continue;
            }
            let len = self.char_len(&sql[i..])?;
            for &byte in &sql[i..i + len] {
                out.push(mapped(byte));
            }
            i += len;
        }
        Some(Cow::Owned(out))
    }

    /// True when no multibyte character contains an ASCII byte.
    fn keeps_ascii(self) -> bool {
        matches!(
            self,
            ClientEncoding::SingleByte | ClientEncoding::Euc | ClientEncoding::Johab
        )
    }

    /// The length of the character starting with a byte >= 0x80 at `s[0]`, once its bytes
    /// are checked as PostgreSQL's verifier checks them; `None` when invalid or cut short.
    fn char_len(self, s: &[u8]) -> Option<usize> {
        let lead = s[0];
        let trail = |n: usize, ok: fn(u8) -> bool| -> Option<usize> {
            (s.len() >= n && s[1..n].iter().all(|&b| ok(b))).then_some(n)
        };
        match self {
            ClientEncoding::Utf8 => None,
            ClientEncoding::SingleByte | ClientEncoding::Euc => Some(1),
            ClientEncoding::Johab => {
                let n = match lead {
                    0x8E => 2,
                    0x8F => 3,
                    _ => 2,
                };
                trail(n, |b| (0xA1..=0xFE).contains(&b))
            }
            ClientEncoding::Sjis => match lead {
                0xA1..=0xDF => Some(1),
                0x81..=0x9F | 0xE0..=0xFC => trail(2, |b| matches!(b, 0x40..=0x7E | 0x80..=0xFC)),
                _ => None,
            },
            ClientEncoding::DoubleByte => trail(2, |b| b != 0),
            ClientEncoding::Gb18030 => {
                if !(0x81..=0xFE).contains(&lead) {
                    return None;
                }
                match s.get(1) {
                    Some(0x30..=0x39) => trail(4, |_| true)
                        .filter(|_| (0x81..=0xFE).contains(&s[2]) && (0x30..=0x39).contains(&s[3])),
                    _ => trail(2, |b| matches!(b, 0x40..=0x7E | 0x80..=0xFE)),
                }
            }
        }
    }
}

/// The stand-in for one byte of a non-ASCII character: distinct per byte, never ASCII.
fn mapped(byte: u8) -> char {
    char::from_u32(0x100 + u32::from(byte)).expect("U+0100..U+01FF are characters")
}

/// True for a cleaned `client_encoding` name of a single-byte encoding PostgreSQL accepts.
fn is_single_byte_name(s: &str) -> bool {
    let numbered =
        |prefix: &str, ok: &[&str]| s.strip_prefix(prefix).is_some_and(|n| ok.contains(&n));
    numbered(
        "latin",
        &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
    ) || numbered(
        "iso8859",
        &[
            "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "13", "14", "15", "16",
        ],
    ) || numbered(
        "win",
        &[
            "866", "874", "1250", "1251", "1252", "1253", "1254", "1255", "1256", "1257", "1258",
        ],
    ) || numbered(
        "windows",
        &[
            "866", "874", "1250", "1251", "1252", "1253", "1254", "1255", "1256", "1257", "1258",
        ],
    ) || numbered(
        "cp",
        &[
            "866", "874", "1250", "1251", "1252", "1253", "1254", "1255", "1256", "1257", "1258",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::ClientEncoding::{self, *};

    #[test]
    fn names_as_postgresql_spells_them() {
        let cases: &[(&str, Option<ClientEncoding>)] = &[
            ("UTF8", Some(Utf8)),
            ("'utf-8'", Some(Utf8)),
            ("unicode", Some(Utf8)),
            ("LATIN1", Some(SingleByte)),
            ("latin10", Some(SingleByte)),
            ("latin11", None),
            ("ISO_8859_5", Some(SingleByte)),
            ("iso-8859-15", Some(SingleByte)),
            ("WIN1252", Some(SingleByte)),
            ("windows-1251", Some(SingleByte)),
            ("KOI8U", Some(SingleByte)),
            ("SQL_ASCII", Some(SingleByte)),
            ("EUC_JP", Some(Euc)),
            ("EUC_JIS_2004", Some(Euc)),
            ("MULE_INTERNAL", Some(Euc)),
            ("SJIS", Some(Sjis)),
            ("Shift_JIS", Some(Sjis)),
            ("SHIFT_JIS_2004", Some(Sjis)),
            ("BIG5", Some(DoubleByte)),
            ("GBK", Some(DoubleByte)),
            ("UHC", Some(DoubleByte)),
            ("GB18030", Some(Gb18030)),
            ("JOHAB", Some(Johab)),
            ("klingon", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(ClientEncoding::from_name(name), *want, "{name}");
        }
    }

    #[test]
    fn text_the_lexer_splits_as_postgresql_does() {
        // (encoding, bytes, readable: the ASCII the lexer must see, or None for invalid)
        let some = |s: &str| Some(s.to_string());
        let cases: &[(ClientEncoding, &[u8], Option<String>)] = &[
            (Utf8, b"select 1", some("select 1")),
            (Utf8, "caf\u{e9}".as_bytes(), some("caf\u{e9}")),
            (Utf8, b"insert 'caf\xe9'", None),
            (Utf8, b"select '\xe2\x82'", None),
            (SingleByte, b"insert 'caf\xe9'", some("insert 'caf\u{1e9}'")),
            (SingleByte, b"select 1", some("select 1")),
            (Euc, b"select '\xa4\xa2'", some("select '\u{1a4}\u{1a2}'")),
            // SJIS: 0x95 0x5C is one character whose second byte is a backslash.
            (Sjis, b"E'\x95\x5c'", some("E'\u{195}\u{15c}'")),
            (Sjis, b"'\xb1'", some("'\u{1b1}'")),
            (Sjis, b"'\x95", None),
            (Sjis, b"'\x95\x20'", None),
            (DoubleByte, b"'\xa4\x7c'", some("'\u{1a4}\u{17c}'")),
            (DoubleByte, b"'\xa4\x00'", None),
            (
                Gb18030,
                b"'\x81\x30\x81\x30'",
                some("'\u{181}\u{130}\u{181}\u{130}'"),
            ),
            (Gb18030, b"'\x81\x30\x20\x30'", None),
            (Gb18030, b"'\x81\x7e'", some("'\u{181}\u{17e}'")),
            (Johab, b"'\x88\xa1'", some("'\u{188}\u{1a1}'")),
            (Johab, b"'\x88\x27'", None),
        ];
        for (enc, bytes, want) in cases {
            let got = enc.readable(bytes).map(|c| c.into_owned());
            assert_eq!(got, *want, "{enc:?} {bytes:?}");
        }
    }
}
