//! The untagged packets a client may send first: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage. Parses a length-checked body; knows nothing about sockets or authentication.

use super::frame::read_cstr;

/// The largest packet, length word included: PostgreSQL's `MAX_STARTUP_PACKET_LENGTH` (10000)
/// counts the bytes after the length word.
pub const MAX_STARTUP_LEN: usize = 10_004;
/// The smallest valid packet: length word + request code.
pub const MIN_STARTUP_LEN: usize = 8;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// One packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// A cancel key; 4 bytes in protocol 3.0, up to 256 in 3.2.
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
    /// StartupMessage for protocol 3.`minor`, with its parameters in the order sent.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet ({0})")]
    BadLength(u32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    #[error("invalid cancel request key length {0}")]
    BadCancelKey(usize),
}

impl StartupError {
    /// Whether the connection is closed without a word, as PostgreSQL does: a length word that
    /// no startup packet can have (HTTP requests, TLS ClientHellos, a driver's Terminate sent
    /// before it ever started up) and a cancel request of the wrong size are only logged
    /// (`COMMERROR`), since whatever sent them does not speak the protocol or expects no
    /// answer. A packet of a valid length whose content is wrong gets a FATAL ErrorResponse.
    pub fn closes_silently(&self) -> bool {
        matches!(
            self,
            StartupError::BadLength(_) | StartupError::BadCancelKey(_)
        )
    }

    /// The SQLSTATE of the FATAL error PostgreSQL sends for the others.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            StartupError::UnsupportedProtocol { .. } => {
                crate::error::sqlstate::FEATURE_NOT_SUPPORTED
            }
            _ => crate::error::sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

/// Validates the 4-byte length word that opens every startup-phase packet; returns the number
/// of bytes that follow it.
pub fn body_len(length_word: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(length_word);
    if (len as usize) < MIN_STARTUP_LEN || (len as usize) > MAX_STARTUP_LEN {
        return Err(StartupError::BadLength(len));
    }
    Ok(len as usize - 4)
}

/// Parses the bytes after the length word.
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(StartupError::Malformed("missing request code"));
    };
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let Some((pid, key)) = rest.split_first_chunk::<4>() else {
                return Err(StartupError::BadCancelKey(rest.len()));
            };
            if !(4..=256).contains(&key.len()) {
                return Err(StartupError::BadCancelKey(key.len()));
            }
            Ok(StartupPacket::Cancel {
                pid: i32::from_be_bytes(*pid),
                key: key.to_vec(),
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let (name, after) =
            read_cstr(rest).ok_or(StartupError::Malformed("parameter name not terminated"))?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the final terminator"));
            }
            return Ok(params);
        }
        let (value, after) =
            read_cstr(after).ok_or(StartupError::Malformed("parameter value not terminated"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        // Like PostgreSQL, the last occurrence of a repeated name wins.
        params.retain(|(n, _)| n != name);
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: u32) -> Vec<u8> {
        c.to_be_bytes().to_vec()
    }

    #[test]
    fn length_word_limits() {
        for (len, ok) in [
            (0u32, false),
            (7, false),
            (8, true),
            (10_000, true),
            (10_004, true),
            (10_005, false),
            // node-postgres' Terminate sent where a startup packet belongs: `X\0\0\0\x04`.
            (u32::from_be_bytes(*b"X\0\0\0"), false),
            // An HTTP request.
            (u32::from_be_bytes(*b"GET "), false),
            (0x8000_0000, false),
        ] {
            assert_eq!(body_len(len.to_be_bytes()).is_ok(), ok, "length {len}");
        }
    }

    #[test]
    fn parses_each_packet_kind() {
        let mut startup = code(196608);
        startup.extend_from_slice(b"user\0app\0database\0db\0user\0app2\0\0");
        let mut cancel = code(CANCEL_REQUEST);
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&[1, 2, 3, 4]);
        let cases: Vec<(Vec<u8>, Result<StartupPacket, StartupError>)> = vec![
            (code(SSL_REQUEST), Ok(StartupPacket::SslRequest)),
            (code(GSSENC_REQUEST), Ok(StartupPacket::GssEncRequest)),
            (
                cancel,
                Ok(StartupPacket::Cancel {
                    pid: 7,
                    key: vec![1, 2, 3, 4],
                }),
            ),
            (
                startup,
                Ok(StartupPacket::Startup {
                    minor: 0,
                    params: vec![
                        ("database".into(), "db".into()),
                        ("user".into(), "app2".into()),
                    ],
                }),
            ),
            (
                code(0x0002_0000),
                Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 }),
            ),
            (
                vec![1, 2],
                Err(StartupError::Malformed("missing request code")),
            ),
            (
                [code(196608), b"user\0app".to_vec()].concat(),
                Err(StartupError::Malformed("parameter value not terminated")),
            ),
            (
                [code(196608), b"user\0app\0".to_vec()].concat(),
                Err(StartupError::Malformed("parameter name not terminated")),
            ),
            (
                [code(196608), b"\0junk".to_vec()].concat(),
                Err(StartupError::Malformed("bytes after the final terminator")),
            ),
            (
                [code(CANCEL_REQUEST), vec![0, 0, 0, 1, 9]].concat(),
                Err(StartupError::BadCancelKey(1)),
            ),
            (
                [code(196608), b"us\xffer\0x\0\0".to_vec()].concat(),
                Err(StartupError::Malformed("parameter name is not UTF-8")),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input), want, "{input:?}");
        }
    }

    #[test]
    fn which_errors_close_silently_as_postgresql_does() {
        let cases = [
            (StartupError::BadLength(4), true, "08P01"),
            (StartupError::BadCancelKey(1), true, "08P01"),
            (
                StartupError::UnsupportedProtocol { major: 2, minor: 0 },
                false,
                "0A000",
            ),
            (StartupError::Malformed("x"), false, "08P01"),
        ];
        for (e, silent, code) in cases {
            assert_eq!(e.closes_silently(), silent, "{e:?}");
            assert_eq!(e.sqlstate(), code, "{e:?}");
        }
    }

    #[test]
    fn protocol_3_2_is_recognised_as_minor_2() {
        let body = [code(0x0003_0002), b"user\0u\0\0".to_vec()].concat();
        assert!(matches!(
            parse(&body),
            Ok(StartupPacket::Startup { minor: 2, .. })
        ));
    }
}
