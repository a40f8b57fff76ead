//! Typed views of the few server messages the proxy inspects (ReadyForQuery, ErrorResponse,
//! ParameterStatus); bodies come from `frame`. Row data is never decoded here.

use super::frame::read_cstr;

/// Transaction status carried by ReadyForQuery: the source of truth for transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxnStatus {
    #[default]
    Idle,
    InTransaction,
    Failed,
}

impl TxnStatus {
    pub fn from_ready_body(body: &[u8]) -> Option<TxnStatus> {
        match body {
            [b'I'] => Some(TxnStatus::Idle),
            [b'T'] => Some(TxnStatus::InTransaction),
            [b'E'] => Some(TxnStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxnStatus::Idle => b'I',
            TxnStatus::InTransaction => b'T',
            TxnStatus::Failed => b'E',
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// `S`: ERROR, FATAL, PANIC (localized), or the non-localized `V` when present.
    pub severity: String,
    /// `C`: the SQLSTATE.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
}

impl ErrorFields {
    /// Parses an ErrorResponse/NoticeResponse body; unknown fields are skipped.
    pub fn parse(mut body: &[u8]) -> Option<ErrorFields> {
        let mut out = ErrorFields::default();
        let mut localized_severity = None;
        while let Some((&field, rest)) = body.split_first() {
            if field == 0 {
                break;
            }
            let (value, rest) = read_cstr(rest)?;
            let value = String::from_utf8_lossy(value);
            match field {
                b'S' => localized_severity = Some(value.into_owned()),
                b'V' => out.severity = value.into_owned(),
                b'C' => out.code = value.into_owned(),
                b'M' => out.message = value.into_owned(),
                _ => {}
            }
            body = rest;
        }
        if out.severity.is_empty() {
            out.severity = localized_severity.unwrap_or_default();
        }
        Some(out)
    }

    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

/// The first column of a DataRow body, as bytes (`None` for SQL NULL or a short body).
pub fn first_column(body: &[u8]) -> Option<&[u8]> {
    let (count, rest) = body.split_first_chunk::<2>()?;
    if u16::from_be_bytes(*count) == 0 {
        return None;
    }
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_be_bytes(*len)).ok()?;
    rest.get(..len)
}

/// Parses a ParameterStatus body into (name, value).
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = read_cstr(body)?;
    let (value, _) = read_cstr(rest)?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_for_query_status() {
        let cases: &[(&[u8], Option<TxnStatus>)] = &[
            (b"I", Some(TxnStatus::Idle)),
            (b"T", Some(TxnStatus::InTransaction)),
            (b"E", Some(TxnStatus::Failed)),
            (b"X", None),
            (b"", None),
            (b"II", None),
        ];
        for (body, want) in cases {
            assert_eq!(TxnStatus::from_ready_body(body), *want, "{body:?}");
        }
    }

    #[test]
    fn error_fields_prefer_nonlocalized_severity() {
        let body = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0";
        let e = ErrorFields::parse(body).unwrap();
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("FATAL", "57P01", "terminating connection")
        );
        assert!(e.is_fatal());
        let localized = ErrorFields::parse(b"SFEHLER\0C42601\0Mx\0\0").unwrap();
        assert_eq!(localized.severity, "FEHLER");
        assert!(!localized.is_fatal());
        assert_eq!(ErrorFields::parse(b"Cunterminated"), None);
    }

    #[test]
    fn first_column_of_a_data_row() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"\0\x01\0\0\0\x030/1", Some(b"0/1")),
            (b"\0\x02\0\0\0\x01a\0\0\0\x01b", Some(b"a")),
            (b"\0\x01\xff\xff\xff\xff", None),
            (b"\0\0", None),
            (b"\0\x01\0\0\0\x09ab", None),
            (b"\0", None),
        ];
        for (body, want) in cases {
            assert_eq!(first_column(body), *want, "{body:?}");
        }
    }

    #[test]
    fn parameter_status_pairs() {
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Some((&b"TimeZone"[..], &b"UTC"[..]))
        );
        assert_eq!(parameter_status(b"TimeZone\0UTC"), None);
    }
}
