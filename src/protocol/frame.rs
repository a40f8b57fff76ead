//! Finding whole messages in a byte buffer (tag + 4-byte length), with size limits. It decodes
//! nothing past the header and never allocates per message beyond `BytesMut::split_to`.

use bytes::BytesMut;

/// Tag byte plus the 4-byte length word.
pub const HEADER_LEN: usize = 5;

/// The header of one message: its tag and its total size on the wire (tag included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Bytes on the wire for the whole message: 1 (tag) + the length word's value.
    pub total_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    #[error("message of type {tag:?} is {len} bytes, over the limit of {limit} bytes")]
    TooLarge { tag: char, len: usize, limit: usize },
}

/// Reads the header at the start of `buf`; `Ok(None)` when fewer than 5 bytes are there.
pub fn peek_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = head[0];
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len,
        });
    }
    Ok(Some(Header {
        tag,
        total_len: 1 + len as usize,
    }))
}

/// Splits one whole message (header included) off the front of `buf`.
///
/// `Ok(None)` means "need more bytes". A message whose declared size exceeds `limit` is an
/// error as soon as its header is visible, so a peer cannot make us buffer it.
pub fn split_message(buf: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, FrameError> {
    let Some(header) = peek_header(buf)? else {
        return Ok(None);
    };
    if header.total_len > limit {
        return Err(FrameError::TooLarge {
            tag: header.tag as char,
            len: header.total_len,
            limit,
        });
    }
    if buf.len() < header.total_len {
        buf.reserve(header.total_len - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(header.total_len)))
}

/// The body of a whole message (everything after the 5-byte header).
pub fn body(message: &[u8]) -> &[u8] {
    message.get(HEADER_LEN..).unwrap_or(&[])
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest after the NUL.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_whole_messages_and_waits_for_partial_ones() {
        let mut bytes = msg(b'Q', b"select 1\0");
        bytes.extend_from_slice(&msg(b'S', b"")[..3]);
        let mut buf = BytesMut::from(&bytes[..]);
        let first = split_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&first[..], &msg(b'Q', b"select 1\0")[..]);
        assert_eq!(body(&first), b"select 1\0");
        assert_eq!(split_message(&mut buf, 1024).unwrap(), None);
        buf.extend_from_slice(&msg(b'S', b"")[3..]);
        assert_eq!(
            &split_message(&mut buf, 1024).unwrap().unwrap()[..],
            b"S\0\0\0\x04"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_and_oversized_lengths_from_the_header_alone() {
        let cases: &[(&[u8], FrameError)] = &[
            (b"Q\0\0\0\x03", FrameError::BadLength { tag: 'Q', len: 3 }),
            (
                b"Q\x7f\xff\xff\xff",
                FrameError::TooLarge {
                    tag: 'Q',
                    len: 0x8000_0000,
                    limit: 1024,
                },
            ),
            (
                b"d\0\0\x04\x01",
                FrameError::TooLarge {
                    tag: 'd',
                    len: 1026,
                    limit: 1024,
                },
            ),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(*input);
            assert_eq!(
                split_message(&mut buf, 1024).unwrap_err(),
                *want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0").unwrap(), None);
        assert_eq!(
            peek_header(b"Z\0\0\0\x05I").unwrap(),
            Some(Header {
                tag: b'Z',
                total_len: 6
            })
        );
    }

    #[test]
    fn cstr_reading() {
        assert_eq!(read_cstr(b"abc\0rest"), Some((&b"abc"[..], &b"rest"[..])));
        assert_eq!(read_cstr(b"no terminator"), None);
    }
}
