//! Fuzz target: PROXY protocol v1/v2 headers (`proxy_protocol::parse`, `looks_like_header`)
//! as the proxy reads them, growing byte by byte until the header is complete or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmeridian::proxy_protocol::{looks_like_header, parse, Parsed};

/// The longest header the proxy waits for: 16 fixed bytes and a 16-bit payload length.
const MAX_HEADER: usize = 16 + u16::MAX as usize;

fn check(buf: &[u8]) -> Parsed {
    let parsed = parse(buf);
    match &parsed {
        Parsed::Complete { len, .. } => assert!(*len <= buf.len() && *len <= MAX_HEADER),
        Parsed::Incomplete => assert!(buf.len() < MAX_HEADER),
        Parsed::Invalid(_) => {}
    }
    parsed
}

fuzz_target!(|data: &[u8]| {
    let whole = check(data);
    let _ = looks_like_header(data);
    // Every prefix, as the proxy sees the header arrive: once a header is complete, more bytes
    // do not change it, and a prefix of a complete header is never refused. (Short inputs
    // only: each prefix is a whole parse.)
    if data.len() > 512 {
        return;
    }
    let mut complete: Option<Parsed> = None;
    let mut refused_at = None;
    for end in 0..=data.len() {
        let got = check(&data[..end]);
        if let Some(first) = &complete {
            assert_eq!(&got, first, "more bytes changed a complete header");
        } else if let Parsed::Complete { len, .. } = got {
            // The header ends where it first reads as complete, and none of its prefixes was
            // refused (the proxy reads it in as many pieces as the network delivers).
            assert_eq!(len, end, "complete at {end} bytes, but {len} long");
            assert_eq!(
                refused_at, None,
                "refused at {refused_at:?}, complete at {end}"
            );
            complete = Some(got);
        } else if matches!(got, Parsed::Invalid(_)) && refused_at.is_none() {
            refused_at = Some(end);
        }
    }
    if let Some(first) = complete {
        assert_eq!(first, whole);
    }
});
