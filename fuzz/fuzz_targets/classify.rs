//! Fuzz target: the SQL classifier (`classify::classify`) over raw bytes read in a client
//! encoding (`ClientEncoding::readable`), and the `client_encoding` names a client may send
//! (`ClientEncoding::from_name`).
//!
//! Input: one byte picks the encoding; the rest is the SQL as the client sent it.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use pgmeridian::classify::{classify, Class, ClientEncoding, VolatileFunctions, WriteFunctions};

const ENCODINGS: [ClientEncoding; 7] = [
    ClientEncoding::Utf8,
    ClientEncoding::SingleByte,
    ClientEncoding::Euc,
    ClientEncoding::Johab,
    ClientEncoding::Sjis,
    ClientEncoding::DoubleByte,
    ClientEncoding::Gb18030,
];

static WRITES: LazyLock<WriteFunctions> = LazyLock::new(|| {
    WriteFunctions::new(["billing.bump_counter"])
        .with_catalog(Arc::new(VolatileFunctions::new(["my_volatile", "random"])))
});

/// A statement that writes, ahead of the fuzzed text: whatever follows it, the string is
/// never routed as a read.
const WRITE_FIRST: &str = "INSERT INTO t VALUES (1);\n";

fuzz_target!(|input: &[u8]| {
    let Some((&control, raw)) = input.split_first() else {
        return;
    };
    let enc = ENCODINGS[usize::from(control) % ENCODINGS.len()];
    if control >= 0xF0 {
        // A `client_encoding` value: known or not, never a panic.
        if let Ok(name) = std::str::from_utf8(raw) {
            let _ = ClientEncoding::from_name(name);
        }
        return;
    }
    let text = enc.readable(raw);
    if raw.is_ascii() {
        assert_eq!(text.as_deref().map(str::as_bytes), Some(raw));
    }
    if enc == ClientEncoding::Utf8 {
        assert_eq!(text.is_some(), std::str::from_utf8(raw).is_ok());
    }
    let Some(text) = text else {
        return;
    };
    let got = classify(&text, &WRITES);
    if text.trim().is_empty() {
        assert_eq!(got.class, Class::Empty);
    }
    let after_write = classify(&format!("{WRITE_FIRST}{text}"), &WRITES);
    assert!(
        !matches!(after_write.class, Class::Read | Class::Empty),
        "{:?} after a write for {text:?}",
        after_write.class
    );
});
