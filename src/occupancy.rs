//! A shared count of things in use (sessions on a replica, sessions on a session thread), kept
//! by guards so that every exit path, a panic included, gives its place back. No policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One place in a shared count, held while this lives.
#[derive(Debug)]
pub struct Occupied(Arc<AtomicUsize>);

impl Occupied {
    pub fn new(count: &Arc<AtomicUsize>) -> Occupied {
        count.fetch_add(1, Ordering::Relaxed);
        Occupied(count.clone())
    }
}

impl Drop for Occupied {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
