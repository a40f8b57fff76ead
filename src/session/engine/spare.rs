//! Released connections' empty answer queues and held-answers buffers, kept per thread for the
//! next lease, which a lease per transaction would otherwise allocate anew. Per thread, not per
//! session, so a quiet session holds none (a per-session spare cost 1.3 KiB of RSS per idle
//! client in tests/scale.rs). Reuses allocations only: nothing in here carries state.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::BytesMut;

use super::expect::Expect;

/// Larger ones are not kept.
const MAX_QUEUE: usize = 16;
const MAX_TENTATIVE: usize = 4096;
/// Spares kept per thread (one per lease in flight on it is enough).
const MAX_KEPT: usize = 32;

thread_local! {
    static KEPT: RefCell<Vec<(VecDeque<Expect>, BytesMut)>> = const { RefCell::new(Vec::new()) };
}

/// An empty queue and buffer, reused when this thread has some.
pub(crate) fn take() -> (VecDeque<Expect>, BytesMut) {
    KEPT.try_with(|k| k.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps a released connection's queue and buffer (emptied) for the next lease.
pub(crate) fn keep(mut queue: VecDeque<Expect>, mut tentative: BytesMut) {
    if queue.capacity() > MAX_QUEUE {
        queue = VecDeque::new();
    }
    if tentative.capacity() > MAX_TENTATIVE {
        tentative = BytesMut::new();
    }
    if queue.capacity() == 0 && tentative.capacity() == 0 {
        return;
    }
    queue.clear();
    tentative.clear();
    let _ = KEPT.try_with(|k| {
        let mut k = k.borrow_mut();
        if k.len() < MAX_KEPT {
            k.push((queue, tentative));
        }
    });
}
