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
        // Nothing is reserved for the declared size: the buffer grows as bytes arrive.
        return Ok(None);
    }
    Ok(Some(buf.split_to(header.total_len)))
}

/// PostgreSQL's limit for a client message other than Query, Parse, Bind, FunctionCall and
/// CopyData (`PQ_SMALL_MESSAGE_LIMIT`): Sync, Execute, Describe, Close… are never bigger.
pub const SMALL_CLIENT_MESSAGE_LIMIT: usize = 10_000;

/// The size limit for a client message with this tag: `large` for the message types that
/// carry SQL or data, PostgreSQL's small limit for the rest.
pub fn client_limit(tag: u8, large: usize) -> usize {
    match tag {
        b'Q' | b'P' | b'B' | b'F' | b'd' => large,
        _ => SMALL_CLIENT_MESSAGE_LIMIT.min(large),
    }
}

/// [`split_message`] for client messages, with the limit that fits each message type.
pub fn split_client_message(
    buf: &mut BytesMut,
    large: usize,
) -> Result<Option<BytesMut>, FrameError> {
    match peek_header(buf)? {
        Some(h) => split_message(buf, client_limit(h.tag, large)),
        None => Ok(None),
    }
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
    fn client_messages_have_postgresql_s_limit_per_type() {
        let big = 1 << 24;
        // (tag, declared total length, refused)
        let cases: &[(u8, usize, bool)] = &[
            (b'Q', 1 << 20, false),
            (b'P', 1 << 20, false),
            (b'B', 1 << 20, false),
            (b'F', 1 << 20, false),
            (b'd', 1 << 20, false),
            (b'Q', big + 1, true),
            (b'S', 10_000, false),
            (b'S', 10_001, true),
            (b'E', 20_000, true),
            (b'D', 20_000, true),
            (b'C', 20_000, true),
            (b'H', 20_000, true),
            (b'X', 20_000, true),
            (b'c', 20_000, true),
            (b'f', 20_000, true),
        ];
        for &(tag, total, refused) in cases {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&[tag]);
            buf.extend_from_slice(&((total - 1) as u32).to_be_bytes());
            let got = split_client_message(&mut buf, big);
            assert_eq!(got.is_err(), refused, "{} {total}", tag as char);
            // Only the header is here: nothing was reserved for the declared size.
            assert!(
                buf.capacity() < 1024,
                "{} reserved {}",
                tag as char,
                buf.capacity()
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

/// What to do with the front of a server→client byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Forward this many bytes untouched (whole or partial messages nobody needs to read).
    Forward(usize),
    /// A whole message the caller wants to read is at the front; it is `Header::total_len` long.
    Inspect(Header),
    /// Nothing can be done until more bytes arrive; at least this many are needed in total.
    NeedMore(usize),
}

/// Walks a byte stream message by message without buffering messages it does not inspect:
/// their bytes are forwarded as they arrive, so a 1 GB row never has to fit in memory.
#[derive(Debug, Clone, Copy)]
pub struct Scanner {
    /// Bytes of the current uninspected message still to come.
    passthrough: usize,
    inspect: fn(u8) -> bool,
    /// Inspected-type messages larger than this are forwarded uninspected instead.
    inspect_limit: usize,
}

impl Scanner {
    pub fn new(inspect: fn(u8) -> bool, inspect_limit: usize) -> Scanner {
        Scanner {
            passthrough: 0,
            inspect,
            inspect_limit,
        }
    }

    /// True between messages (no uninspected message is half forwarded).
    pub fn at_boundary(&self) -> bool {
        self.passthrough == 0
    }

    /// Decides about the front of `buf`. After `Forward(n)` or `Inspect(h)` the caller removes
    /// those bytes (`n`, or `h.total_len`) from the front before calling again.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, FrameError> {
        let mut pos = 0;
        loop {
            if self.passthrough > 0 {
                let n = self.passthrough.min(buf.len() - pos);
                pos += n;
                self.passthrough -= n;
                if self.passthrough > 0 {
                    break;
                }
                continue;
            }
            let Some(header) = peek_header(&buf[pos..])? else {
                if pos == 0 {
                    return Ok(Step::NeedMore(HEADER_LEN));
                }
                break;
            };
            if (self.inspect)(header.tag) && header.total_len <= self.inspect_limit {
                if pos > 0 {
                    break;
                }
                if buf.len() < header.total_len {
                    return Ok(Step::NeedMore(header.total_len));
                }
                return Ok(Step::Inspect(header));
            }
            self.passthrough = header.total_len;
        }
        if pos == 0 {
            // Mid-way through an uninspected message, with none of its bytes here yet.
            return Ok(Step::NeedMore(1));
        }
        Ok(Step::Forward(pos))
    }
}

#[cfg(test)]
mod scanner_tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn is_z(tag: u8) -> bool {
        tag == b'Z'
    }

    /// Feeds `stream` in chunks of `chunk` bytes; returns what was forwarded and the
    /// inspected messages, in order, as the relay would see them.
    fn run(stream: &[u8], chunk: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut scanner = Scanner::new(is_z, 64);
        let mut buf: Vec<u8> = Vec::new();
        let (mut forwarded, mut inspected) = (Vec::new(), Vec::new());
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match scanner.step(&buf).unwrap() {
                    Step::Forward(n) => {
                        forwarded.extend(buf.drain(..n));
                    }
                    Step::Inspect(h) => {
                        let m: Vec<u8> = buf.drain(..h.total_len).collect();
                        forwarded.extend_from_slice(&m);
                        inspected.push(m);
                    }
                    Step::NeedMore(_) => break,
                }
            }
        }
        assert!(
            buf.is_empty() && scanner.at_boundary(),
            "stream fully consumed"
        );
        (forwarded, inspected)
    }

    #[test]
    fn forwards_everything_in_order_and_stops_only_at_inspected_messages() {
        let big_row = msg(b'D', &[7u8; 300]); // larger than the inspect limit, never buffered
        let big_z = msg(b'Z', &[b'I'; 100]); // an inspected type, but too big: forwarded as is
        let stream = [
            msg(b'T', b"rowdesc"),
            msg(b'D', b"r1"),
            big_row.clone(),
            msg(b'C', b"SELECT 2\0"),
            msg(b'Z', b"I"),
            big_z,
            msg(b'Z', b"T"),
        ]
        .concat();
        for chunk in [1, 2, 3, 5, 7, 64, 1000] {
            let (forwarded, inspected) = run(&stream, chunk);
            assert_eq!(forwarded, stream, "chunk {chunk}");
            assert_eq!(
                inspected,
                vec![msg(b'Z', b"I"), msg(b'Z', b"T")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn coalesces_runs_of_uninspected_messages() {
        let stream = [msg(b'D', b"a"), msg(b'D', b"b"), msg(b'Z', b"I")].concat();
        let mut s = Scanner::new(is_z, 64);
        assert_eq!(s.step(&stream).unwrap(), Step::Forward(12));
        assert_eq!(
            s.step(&stream[12..]).unwrap(),
            Step::Inspect(Header {
                tag: b'Z',
                total_len: 6
            })
        );
        assert_eq!(s.step(&stream[12..15]).unwrap(), Step::NeedMore(HEADER_LEN));
        assert_eq!(s.step(&stream[12..17]).unwrap(), Step::NeedMore(6));
        assert_eq!(s.step(&[]).unwrap(), Step::NeedMore(HEADER_LEN));
        // Mid-way through a long row with no new bytes: no progress is not "forward 0".
        let mut s = Scanner::new(is_z, 64);
        assert_eq!(
            s.step(&msg(b'D', &[0; 100])[..10]).unwrap(),
            Step::Forward(10)
        );
        assert_eq!(s.step(&[]).unwrap(), Step::NeedMore(1));
        assert!(!s.at_boundary());
    }

    #[test]
    fn bad_length_is_an_error() {
        let mut s = Scanner::new(is_z, 64);
        assert!(s.step(b"D\0\0\0\x01").is_err());
    }
}
