//! What the fuzz targets share: the in-memory peer, piecewise delivery and poll-once executor
//! of `tests/fuzz/peer.rs` (one copy for both fuzzers), and the bound on read buffers.

#[path = "../../tests/fuzz/peer.rs"]
mod peer;
pub use peer::{chunked_peer, pieces, run_now, Peer};

/// Sizes of the pieces a stream arrives in, picked by one control byte: from byte by byte to
/// reads bigger than any message of the limits under test.
pub fn chunk_sizes(control: u8) -> Vec<usize> {
    const SIZES: [usize; 8] = [1, 3, 7, 64, 600, 8192, 20_000, usize::MAX];
    vec![
        SIZES[usize::from(control & 7)],
        SIZES[usize::from((control >> 3) & 7)],
    ]
}

/// Most a read buffer may hold after at most `held` bytes were received at once: growth by
/// doubling stays within a small multiple; reserving a declared length would not.
pub fn capacity_bound(held: usize) -> usize {
    16 * held + (16 << 10)
}
