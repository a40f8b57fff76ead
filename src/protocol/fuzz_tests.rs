//! Property tests: no decoder in `protocol` (or the auth body parser) panics on arbitrary bytes,
//! and the scanner forwards any well-framed stream byte for byte whatever the chunking.

use bytes::BytesMut;
use proptest::prelude::*;

use super::backend::{parameter_status, ErrorFields, TxnStatus};
use super::frame::{split_message, Scanner, Step};
use super::startup;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = startup::parse(&bytes);
        if bytes.len() >= 4 {
            let _ = startup::body_len([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let _ = ErrorFields::parse(&bytes);
        let _ = parameter_status(&bytes);
        let _ = TxnStatus::from_ready_body(&bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = split_message(&mut buf, 64) {}
        let mut scanner = Scanner::new(|t| t == b'Z', 64);
        let mut pos = 0;
        for _ in 0..bytes.len() + 1 {
            match scanner.step(&bytes[pos..]) {
                Ok(Step::Forward(n)) => { prop_assert!(n > 0); pos += n }
                Ok(Step::Inspect(h)) => pos += h.total_len,
                Ok(Step::NeedMore(_)) | Err(_) => break,
            }
        }
    }

    #[test]
    fn scanner_forwards_framed_streams_exactly(
        msgs in proptest::collection::vec((prop_oneof![Just(b'D'), Just(b'Z'), Just(b'C')], proptest::collection::vec(any::<u8>(), 0..200)), 0..20),
        chunk in 1usize..300,
    ) {
        let mut stream = Vec::new();
        for (tag, body) in &msgs {
            stream.push(*tag);
            stream.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let mut scanner = Scanner::new(|t| t == b'Z', 100);
        let (mut buf, mut out, mut inspected) = (Vec::new(), Vec::new(), 0usize);
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match scanner.step(&buf).unwrap() {
                    Step::Forward(n) => out.extend(buf.drain(..n)),
                    Step::Inspect(h) => {
                        prop_assert_eq!(buf[0], b'Z');
                        out.extend(buf.drain(..h.total_len));
                        inspected += 1;
                    }
                    Step::NeedMore(_) => break,
                }
            }
        }
        prop_assert_eq!(out, stream);
        let small_z = msgs.iter().filter(|(t, b)| *t == b'Z' && b.len() + 5 <= 100).count();
        prop_assert_eq!(inspected, small_z);
    }
}
