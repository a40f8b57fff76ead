//! An always-ready in-memory peer for fuzzing the library's async readers without a runtime,
//! delivery of a byte stream in pieces, a poll-once executor, and the bound read buffers must
//! keep. Shared by the stable property tests (`tests/fuzz`) and the cargo-fuzz targets
//! (`fuzz/`, through `#[path]`).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// `respond(turn, written)` is called when the queue is empty: `Some(bytes)` to send,
    /// `None` for EOF.
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

/// Runs a future that must not wait for anything (its I/O is a [`Peer`]); panics, which the
/// fuzzer reports as a crash, if it would.
pub fn run_now<T>(f: impl Future<Output = T>) -> T {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("waited on an always-ready peer"),
    }
}

/// Most a buffer may hold for `held` bytes received at most at once: growth by doubling (and a
/// buffer shared with messages split off it) stays within a small multiple. Reserving a
/// message's declared length would not.
pub fn capacity_bound(held: usize) -> usize {
    16 * held + (16 << 10)
}
