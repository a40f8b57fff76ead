//! Shared generators: wire messages, mutations of valid inputs, chunked delivery and an
//! in-memory stream that is always ready (so async readers finish in one poll).

use proptest::prelude::*;

/// Raw bytes of up to `max` length.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// A length word: usually right, sometimes off by a little, tiny, or huge.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    Right,
    Delta(i32),
    Fixed(u32),
}

impl Length {
    pub fn strategy() -> impl Strategy<Value = Length> {
        prop_oneof![
            6 => Just(Length::Right),
            2 => (-8i32..8).prop_map(Length::Delta),
            1 => prop_oneof![
                Just(0u32),
                Just(3),
                Just(4),
                Just(10_000),
                Just(10_001),
                Just(1 << 24),
                Just(0x7fff_ffff),
                Just(u32::MAX),
                any::<u32>(),
            ]
            .prop_map(Length::Fixed),
        ]
    }

    /// The length word for a body of `body_len` bytes (which counts the word itself).
    pub fn word(self, body_len: usize) -> u32 {
        let right = body_len as u32 + 4;
        match self {
            Length::Right => right,
            Length::Delta(d) => right.wrapping_add_signed(d),
            Length::Fixed(v) => v,
        }
    }
}

/// How to damage an input that was valid.
#[derive(Debug, Clone)]
pub enum Mutation {
    None,
    /// Keep only this share (per mille) of the bytes.
    Truncate(u16),
    /// XOR the byte at this position (modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Remove a range (start, length).
    Remove(usize, usize),
    /// Append garbage.
    Append(Vec<u8>),
}

impl Mutation {
    pub fn strategy() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => Just(Mutation::None),
            2 => (0u16..1000).prop_map(Mutation::Truncate),
            2 => (any::<usize>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
            1 => (any::<usize>(), bytes(16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
            1 => bytes(32).prop_map(Mutation::Append),
        ]
    }

    pub fn apply(&self, mut input: Vec<u8>) -> Vec<u8> {
        let len = input.len();
        match self {
            Mutation::None => {}
            Mutation::Truncate(per_mille) => input.truncate(len * *per_mille as usize / 1000),
            Mutation::Flip(at, mask) if len > 0 => input[at % len] ^= mask,
            Mutation::Flip(..) => {}
            Mutation::Insert(at, bytes) => {
                let at = at % (len + 1);
                input.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(at, n) if len > 0 => {
                let at = at % len;
                input.drain(at..(at + n).min(len));
            }
            Mutation::Remove(..) => {}
            Mutation::Append(bytes) => input.extend_from_slice(bytes),
        }
        input
    }
}

/// Several mutations in a row.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(Mutation::strategy(), 0..3)
}

pub fn mutate(input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    mutations.iter().fold(input, |acc, m| m.apply(acc))
}

/// Sizes of the pieces a byte stream arrives in (cycled), from single bytes to large reads.
pub fn chunking() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![3 => 1usize..8, 2 => 8usize..600, 1 => 600usize..20_000],
        1..6,
    )
}

pub use crate::peer::{chunked_peer, pieces, run_now, Peer};
