//! SQL texts that replicas refused as writes although they classified as reads (a user
//! function that writes, say): later runs of the same text go to the primary. Shared by all
//! sessions; bounded. No I/O.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Bound on remembered shapes; past it nothing more is learned (the safety net still works).
const LEARNED_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub struct LearnedWrites {
    set: RwLock<HashSet<u64>>,
    /// Lock-free fast path: nothing learned yet.
    any: AtomicBool,
}

impl LearnedWrites {
    pub fn contains(&self, shape: u64) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .set
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&shape)
    }

    /// Nothing learned yet (the usual case: no hashing needed).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    pub fn learn(&self, shape: u64) {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        if set.len() < LEARNED_MAX {
            set.insert(shape);
            self.any.store(true, Ordering::Relaxed);
        }
    }
}
