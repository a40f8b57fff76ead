//! Message framing in both directions: client messages (`split_client_message`, the startup
//! phase's `MessageIo`) and the server stream the relay scans (`Scanner`).

use bytes::BytesMut;
use pgmeridian::protocol::frame::{self, client_limit, split_client_message, Scanner, Step};
use pgmeridian::wire::{MessageIo, WireError};
use proptest::prelude::*;

use crate::alloc::peak_growth;
use crate::gen::{self, chunked_peer, Length};
use crate::peer::capacity_bound;
use crate::{cases, Case};

/// What a session accepts for Query, Parse, Bind, FunctionCall and CopyData in these tests.
const LARGE: usize = 16 << 20;

fn client_tag() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => proptest::sample::select(b"QPBDECSHFdcfXp".to_vec()),
        1 => any::<u8>(),
    ]
}

fn server_tag() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => proptest::sample::select(b"RKSZENAGHWvDTC123sntI".to_vec()),
        1 => any::<u8>(),
    ]
}

/// A stream of messages with the given tags, length words right or wrong, then mutated.
fn stream(tag: impl Strategy<Value = u8>) -> impl Strategy<Value = Vec<u8>> {
    let one = (tag, Length::strategy(), gen::bytes(2000)).prop_map(|(tag, len, body)| {
        let mut m = vec![tag];
        m.extend_from_slice(&len.word(body.len()).to_be_bytes());
        m.extend_from_slice(&body);
        m
    });
    let framed = (proptest::collection::vec(one, 0..12), gen::mutations())
        .prop_map(|(msgs, muts)| gen::mutate(msgs.concat(), &muts));
    prop_oneof![4 => framed, 1 => gen::bytes(4000)]
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Whatever arrives, in whatever pieces: each message split off respects its type's limit,
    /// an oversized declaration is refused from the header alone, and splitting allocates
    /// nothing for the declared size (the buffer grows only with bytes received).
    #[test]
    fn client_framing_is_bounded(data in stream(client_tag()), sizes in gen::chunking()) {
        let _case = Case::start("client_framing_is_bounded");
        let mut buf = BytesMut::new();
        let mut held_max = 0;
        'feed: for piece in gen::pieces(&data, &sizes) {
            buf.extend_from_slice(piece);
            held_max = held_max.max(buf.len());
            loop {
                let header = frame::peek_header(&buf);
                let (got, grew) = peak_growth(|| split_client_message(&mut buf, LARGE));
                prop_assert!(grew <= 256, "splitting allocated {grew} bytes");
                prop_assert!(buf.capacity() <= capacity_bound(held_max),
                    "capacity {} for at most {held_max} bytes held", buf.capacity());
                match got {
                    Ok(Some(m)) => {
                        let h = header.unwrap().unwrap();
                        prop_assert_eq!(m.len(), h.total_len);
                        prop_assert!(m.len() <= client_limit(m[0], LARGE));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let h = header.ok().flatten();
                        prop_assert!(h.is_none_or(|h| h.total_len > client_limit(h.tag, LARGE)),
                            "refused {e} for a header within the limit");
                        break 'feed;
                    }
                }
            }
        }
    }

    /// The relay's scan of a server stream: it forwards bytes in order without holding any
    /// message but small inspected ones, never asks to buffer more than the inspect limit, and
    /// what it passes on is exactly what came in.
    #[test]
    fn server_scan_is_bounded_and_exact(
        data in stream(server_tag()),
        sizes in gen::chunking(),
        inspect_limit in prop_oneof![Just(5usize), 6usize..64, Just(8192), Just(1 << 20)],
    ) {
        let _case = Case::start("server_scan_is_bounded_and_exact");
        let inspected = |t: u8| matches!(t, b'Z' | b'E' | b'S' | b'C' | b'N');
        let mut scanner = Scanner::new(inspected, inspect_limit);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        'feed: for piece in gen::pieces(&data, &sizes) {
            buf.extend_from_slice(piece);
            loop {
                match scanner.step(&buf) {
                    Ok(Step::Forward(n)) => {
                        prop_assert!(n > 0 && n <= buf.len());
                        out.extend(buf.drain(..n));
                    }
                    Ok(Step::Inspect(h)) => {
                        prop_assert!(inspected(h.tag) && h.total_len <= inspect_limit);
                        prop_assert!(h.total_len <= buf.len() && buf[0] == h.tag);
                        out.extend(buf.drain(..h.total_len));
                    }
                    Ok(Step::NeedMore(n)) => {
                        prop_assert!(n > buf.len() || n == 1);
                        prop_assert!(n <= inspect_limit.max(frame::HEADER_LEN));
                        break;
                    }
                    Err(_) => break 'feed,
                }
            }
        }
        prop_assert_eq!(&out[..], &data[..out.len()]);
    }

    /// The startup phase's whole-message reads over a peer sending in pieces: the read
    /// buffer grows only with what arrived, and each message is within the limit.
    #[test]
    fn message_io_reads_are_bounded(
        data in stream(prop_oneof![Just(b'p'), client_tag()]),
        sizes in gen::chunking(),
        limit in prop_oneof![Just(8192usize), Just(LARGE)],
    ) {
        let _case = Case::start("message_io_reads_are_bounded");
        let mut io = MessageIo::new(chunked_peer(&data, &sizes));
        let mut consumed = 0;
        let end = loop {
            match gen::run_now(io.read_message(limit)) {
                Ok(m) => {
                    prop_assert!(m.len() <= limit);
                    prop_assert_eq!(&m[..], &data[consumed..consumed + m.len()]);
                    consumed += m.len();
                }
                Err(e) => break e,
            }
            prop_assert!(io.rbuf.capacity() <= capacity_bound(data.len().max(8192)));
        };
        prop_assert!(io.rbuf.capacity() <= capacity_bound(data.len().max(8192)),
            "capacity {} after {} bytes", io.rbuf.capacity(), data.len());
        prop_assert!(matches!(end, WireError::Eof | WireError::Frame(_)), "{end:?}");
    }
}
