//! What the fuzz targets share: `tests/fuzz/peer.rs` (in-memory peer, piecewise delivery,
//! poll-once executor, read-buffer bound; one copy for both fuzzers), and how a control byte
//! picks the pieces' sizes.

#[path = "../../tests/fuzz/peer.rs"]
mod peer;
pub use peer::{capacity_bound, chunked_peer, pieces, run_now, Peer};

/// Sizes of the pieces a stream arrives in, picked by one control byte: from byte by byte to
/// reads bigger than any message of the limits under test.
pub fn chunk_sizes(control: u8) -> Vec<usize> {
    const SIZES: [usize; 8] = [1, 3, 7, 64, 600, 8192, 20_000, usize::MAX];
    vec![
        SIZES[usize::from(control & 7)],
        SIZES[usize::from((control >> 3) & 7)],
    ]
}
