//! Fuzz target: the startup phase's untagged packets (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest) read as a client sends them (`MessageIo::read_startup`), and
//! what the proxy takes out of a startup packet's parameters (`geo::take_ours`,
//! `split_options`, `parse_location`, `causal::Token::parse`).
//!
//! Input: one byte picks the read sizes; the rest is the client's stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmeridian::causal::Token;
use pgmeridian::geo::{parse_location, split_options, take_ours, Requested};
use pgmeridian::protocol::startup::{StartupPacket, MAX_STARTUP_LEN};
use pgmeridian::wire::{MessageIo, WireError};
use pgmeridian_fuzz::{capacity_bound, chunk_sizes, chunked_peer, run_now};

/// A setting the proxy keeps for itself, matched as PostgreSQL matches setting names.
fn ours(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "_");
    [
        "pgmeridian.region",
        "pgmeridian.location",
        "pgmeridian.causal_token",
    ]
    .contains(&n.as_str())
}

fn check_params(mut params: Vec<(String, String)>) {
    for (i, (k, _)) in params.iter().enumerate() {
        assert!(!k.is_empty() && !k.contains('\0'));
        assert!(params[..i].iter().all(|(n, _)| n != k), "{k} twice");
    }
    let taken = take_ours(&mut params);
    // The proxy's own settings never reach the server, on their own or inside `options`.
    for (k, v) in &params {
        assert!(!ours(k), "{k} left in the startup packet");
        if k == "options" {
            let tokens = split_options(v);
            let mut it = tokens.iter();
            while let Some(t) = it.next() {
                let setting = if t == "-c" {
                    it.next().map(String::as_str)
                } else {
                    t.strip_prefix("--").or_else(|| t.strip_prefix("-c"))
                };
                if let Some((name, _)) = setting.and_then(|s| s.split_once('=')) {
                    assert!(!ours(name), "{name} left in options {v:?}");
                }
            }
        }
    }
    if let Some(Requested::Location(text)) = &taken.location {
        if let Ok(r) = parse_location(text) {
            assert!((-90.0..=90.0).contains(&r.lat) && (-180.0..=180.0).contains(&r.lon));
        }
    }
    if let Some(text) = &taken.causal_token {
        if let Ok(token) = Token::parse(text) {
            assert_eq!(Token::parse(&token.format()), Ok(token));
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let sizes = chunk_sizes(control);
    let mut io = MessageIo::new(chunked_peer(data, &sizes));
    // A client may send an SSLRequest, then its StartupMessage; take up to three.
    for _ in 0..3 {
        let got = run_now(io.read_startup());
        assert!(io.rbuf.capacity() <= capacity_bound(data.len().max(MAX_STARTUP_LEN)));
        match got {
            Ok(StartupPacket::Startup { params, .. }) => check_params(params),
            Ok(StartupPacket::Cancel { key, .. }) => assert!((4..=256).contains(&key.len())),
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {}
            Err(WireError::Startup(_) | WireError::Eof) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
});
