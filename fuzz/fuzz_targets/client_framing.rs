//! Fuzz target: client message framing, as the session splits a client's byte stream
//! (`frame::split_client_message` with the configured `max_message_bytes`) and as the startup
//! phase reads whole messages (`MessageIo::read_message`).
//!
//! Input: one byte picks the limit and the read sizes; the rest is the client's stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgmeridian::protocol::frame::{self, client_limit, split_client_message, HEADER_LEN};
use pgmeridian::wire::{MessageIo, WireError};
use pgmeridian_fuzz::{capacity_bound, chunk_sizes, chunked_peer, pieces, run_now};

/// `limits.max_message_bytes`: the default, the least the config accepts, and two between.
const LIMITS: [usize; 4] = [16 << 20, 1024, 8192, 1 << 20];

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let large = LIMITS[usize::from(control >> 6)];
    let sizes = chunk_sizes(control);

    // The session's split: each message within its type's limit, an oversized declaration
    // refused from the header alone, and the buffer grown only with bytes received.
    let mut buf = BytesMut::new();
    let (mut held_max, mut consumed) = (0, 0);
    'feed: for piece in pieces(data, &sizes) {
        buf.extend_from_slice(piece);
        held_max = held_max.max(buf.len());
        loop {
            let header = frame::peek_header(&buf);
            let got = split_client_message(&mut buf, large);
            assert!(buf.capacity() <= capacity_bound(held_max));
            match got {
                Ok(Some(m)) => {
                    let h = header.unwrap().unwrap();
                    assert_eq!(m.len(), h.total_len);
                    assert!(m.len() >= HEADER_LEN);
                    assert!(m.len() <= client_limit(m[0], large) && m.len() <= large);
                    assert_eq!(&m[..], &data[consumed..consumed + m.len()]);
                    consumed += m.len();
                }
                Ok(None) => {
                    let h = header.unwrap();
                    assert!(h.is_none_or(|h| h.total_len > buf.len()));
                    break;
                }
                Err(_) => {
                    let h = header.ok().flatten();
                    assert!(h.is_none_or(|h| h.total_len > client_limit(h.tag, large)));
                    break 'feed;
                }
            }
        }
    }

    // The startup phase's whole-message reads, over a peer sending the same bytes in pieces.
    let mut io = MessageIo::new(chunked_peer(data, &sizes));
    let mut consumed = 0;
    let end = loop {
        match run_now(io.read_message(large)) {
            Ok(m) => {
                assert!(m.len() <= large && m.len() >= HEADER_LEN);
                assert_eq!(&m[..], &data[consumed..consumed + m.len()]);
                consumed += m.len();
            }
            Err(e) => break e,
        }
        assert!(io.rbuf.capacity() <= capacity_bound(data.len().max(8192)));
    };
    assert!(
        matches!(end, WireError::Eof | WireError::Frame(_)),
        "{end:?}"
    );
});
