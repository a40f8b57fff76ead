//! Shared generators: wire messages, mutations of valid inputs, chunked delivery and an
//! in-memory stream that is always ready (so async readers finish in one poll).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// `data` cut into pieces of the cycled `sizes`.
pub fn pieces<'a>(data: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let n = sizes[i % sizes.len()].max(1).min(data.len() - at);
        i += 1;
        at += n;
        Some(&data[at - n..at])
    })
}

/// A peer that answers each read at once: with its next queued piece, with what `respond`
/// makes of everything written to it so far, or with EOF. Writes always succeed.
pub struct Peer<F> {
    queue: VecDeque<Vec<u8>>,
    pub written: Vec<u8>,
    /// How many times `respond` was asked for more.
    pub turns: usize,
    respond: F,
}

impl<F: FnMut(usize, &[u8]) -> Option<Vec<u8>>> Peer<F> {
    /// `respond(turn, written)` is called when the queue is empty: `Some(bytes)` to send (an
    /// empty vector sends nothing but asks again), `None` for EOF.
    pub fn new(respond: F) -> Peer<F> {
        Peer {
            queue: VecDeque::new(),
            written: Vec::new(),
            turns: 0,
            respond,
        }
    }
}

/// A peer that sends `data` in pieces of the cycled `sizes`, then EOF.
pub fn chunked_peer(
    data: &[u8],
    sizes: &[usize],
) -> Peer<impl FnMut(usize, &[u8]) -> Option<Vec<u8>>> {
    let all: Vec<Vec<u8>> = pieces(data, sizes).map(<[u8]>::to_vec).collect();
    let mut all = all.into_iter();
    Peer::new(move |_, _| all.next())
}

impl<F: FnMut(usize, &[u8]) -> Option<Vec<u8>> + Unpin> AsyncRead for Peer<F> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.queue.front().is_none_or(Vec::is_empty) {
            this.queue.pop_front();
            if this.turns > 10_000 {
                return Poll::Ready(Ok(()));
            }
            this.turns += 1;
            match (this.respond)(this.turns - 1, &this.written) {
                Some(bytes) => this.queue.push_back(bytes),
                None => return Poll::Ready(Ok(())),
            }
        }
        let front = this.queue.front_mut().expect("a queued piece");
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        front.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<F: Unpin> AsyncWrite for Peer<F> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that must not wait for anything (its I/O is a [`Peer`]); panics if it would.
pub fn run_now<T>(f: impl std::future::Future<Output = T>) -> T {
    use futures_util::FutureExt;
    f.now_or_never()
        .expect("finished without waiting: an always-ready peer cannot make it wait")
}
