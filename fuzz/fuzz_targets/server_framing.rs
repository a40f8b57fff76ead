//! Fuzz target: a server's byte stream, walked by the relay's `frame::Scanner` (forwarding
//! what it does not inspect), with each inspected message read by the typed views the proxy
//! acts on (`ErrorFields::parse`, `parameter_status`, `TxnStatus::from_ready_body`,
//! `first_column`).
//!
//! Input: one byte picks the inspect limit and the read sizes; the rest is the server's stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmeridian::protocol::backend::{first_column, parameter_status, ErrorFields, TxnStatus};
use pgmeridian::protocol::frame::{self, Scanner, Step, HEADER_LEN};
use pgmeridian_fuzz::{chunk_sizes, pieces};

const INSPECT_LIMITS: [usize; 4] = [5, 64, 8192, 1 << 20];

fn inspected(tag: u8) -> bool {
    matches!(tag, b'Z' | b'E' | b'N' | b'S' | b'C' | b'D')
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let inspect_limit = INSPECT_LIMITS[usize::from(control >> 6)];
    let sizes = chunk_sizes(control);
    let mut scanner = Scanner::new(inspected, inspect_limit);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    'feed: for piece in pieces(data, &sizes) {
        buf.extend_from_slice(piece);
        loop {
            match scanner.step(&buf) {
                Ok(Step::Forward(n)) => {
                    assert!(n > 0 && n <= buf.len());
                    out.extend(buf.drain(..n));
                }
                Ok(Step::Inspect(h)) => {
                    assert!(inspected(h.tag) && h.total_len <= inspect_limit);
                    assert!(h.total_len <= buf.len() && buf[0] == h.tag);
                    let m: Vec<u8> = buf.drain(..h.total_len).collect();
                    let body = frame::body(&m);
                    match h.tag {
                        b'E' | b'N' => {
                            if let Some(f) = ErrorFields::parse(body) {
                                let _ = f.is_fatal();
                            }
                        }
                        b'S' => {
                            if let Some((name, value)) = parameter_status(body) {
                                assert!(name.len() + value.len() + 2 <= body.len());
                            }
                        }
                        b'Z' => {
                            if let Some(s) = TxnStatus::from_ready_body(body) {
                                assert_eq!(body, [s.as_byte()]);
                            }
                        }
                        b'D' => {
                            if let Some(col) = first_column(body) {
                                assert!(col.len() + 6 <= body.len());
                            }
                        }
                        _ => {}
                    }
                    out.extend(m);
                }
                Ok(Step::NeedMore(n)) => {
                    assert!(n > buf.len() || n == 1);
                    assert!(n <= inspect_limit.max(HEADER_LEN));
                    break;
                }
                Err(_) => break 'feed,
            }
        }
    }
    // What it passed on is exactly what came in, in order.
    assert_eq!(&out[..], &data[..out.len()]);
});
