//! Fuzz target: the proxy as SCRAM-SHA-256 client of a hostile backend
//! (`backend::scram::ScramClient`): the server-first message it parses and the server-final
//! signature it checks.
//!
//! Input: one byte picks the node's iteration limit; the rest is the server-first message, then
//! (after the first NUL, if any) the server-final message.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pgmeridian::backend::scram::{ScramClient, DEFAULT_MAX_ITERATIONS, MAX_SALT};
use ring::hmac;

const NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";
const LIMITS: [u32; 4] = [4096, DEFAULT_MAX_ITERATIONS, 10_000_000, u32::MAX];

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let max_iterations = LIMITS[usize::from(control & 3)];
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut client = ScramClient::new(NONCE);
    assert!(client.client_first().ends_with(NONCE.as_bytes()));
    // Before client-final, no server-final is accepted.
    if let Some(last) = last {
        assert!(client.verify_server_final(last).is_err());
    }
    let Ok(parsed) = client.parse_server_first(first, max_iterations) else {
        return;
    };
    assert!(parsed.nonce.starts_with(NONCE) && parsed.nonce.len() > NONCE.len());
    assert!(!parsed.salt.is_empty() && parsed.salt.len() <= MAX_SALT);
    assert!(parsed.iterations >= 1 && parsed.iterations <= max_iterations);
    // A stand-in for the salted password: only the parsing and the check are under test.
    let proof = client.client_final(first, &parsed, [9u8; 32]);
    assert!(proof.starts_with(b"c=biws,r="));
    // A second server-first is refused.
    assert!(client.parse_server_first(first, max_iterations).is_err());
    if let Some(last) = last {
        // The fuzzer cannot forge an HMAC-SHA-256 signature: any it sends is refused.
        assert!(client.verify_server_final(last).is_err());
    }
    // The right signature, computed as a server would, is accepted.
    let mac = |k: &[u8], m: &[u8]| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), m);
    let auth = format!(
        "n=,r={NONCE},{},c=biws,r={}",
        String::from_utf8_lossy(first),
        parsed.nonce
    );
    let server_key = mac(&[9u8; 32], b"Server Key");
    let signature = mac(server_key.as_ref(), auth.as_bytes());
    let right = format!("v={}", STANDARD.encode(signature.as_ref()));
    assert!(client.verify_server_final(right.as_bytes()).is_ok());
});
