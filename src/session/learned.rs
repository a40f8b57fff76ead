//! SQL texts that replicas refused as writes although they classified as reads (a user
//! function that writes, say): later runs of the same text by the same user go to the
//! primary. Kept per user (one user cannot move another's reads) and bounded, forgetting the
//! least recently learned first. No I/O.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Shapes remembered per user and generation: at most twice this many per user.
const GENERATION: usize = 1_000;

#[derive(Debug, Default)]
pub struct LearnedWrites {
    users: RwLock<HashMap<String, Generations>>,
    /// Lock-free fast path: nothing learned yet.
    any: AtomicBool,
}

/// Two generations: when the newer fills up it becomes the older and the older is
/// forgotten, so what is still refused keeps being relearned and the rest ages out.
#[derive(Debug, Default)]
struct Generations {
    newer: HashSet<u64>,
    older: HashSet<u64>,
}

impl LearnedWrites {
    pub fn contains(&self, user: &str, shape: u64) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .users
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(user)
                .is_some_and(|g| g.newer.contains(&shape) || g.older.contains(&shape))
    }

    /// Nothing learned yet (the usual case: no hashing needed).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    pub fn learn(&self, user: &str, shape: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let g = match users.get_mut(user) {
            Some(g) => g,
            None => users.entry(user.to_owned()).or_default(),
        };
        if g.newer.contains(&shape) {
            return;
        }
        if g.newer.len() >= GENERATION {
            g.older = std::mem::take(&mut g.newer);
        }
        g.older.remove(&shape);
        g.newer.insert(shape);
        self.any.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_per_user_and_bounded_with_the_oldest_forgotten() {
        let l = LearnedWrites::default();
        assert!(l.is_empty());
        l.learn("alice", 1);
        assert!(!l.is_empty());
        assert!(l.contains("alice", 1));
        assert!(!l.contains("bob", 1), "one user's lesson is not another's");
        for shape in 100..100 + 2 * GENERATION as u64 {
            l.learn("alice", shape);
        }
        assert!(!l.contains("alice", 1), "the oldest is forgotten");
        assert!(l.contains("alice", 100 + 2 * GENERATION as u64 - 1));
        assert!(l.contains("alice", 100 + GENERATION as u64));
        let users = l.users.read().unwrap();
        let g = &users["alice"];
        assert!(g.newer.len() + g.older.len() <= 2 * GENERATION);
    }

    #[test]
    fn relearning_keeps_a_shape_young() {
        let l = LearnedWrites::default();
        l.learn("u", 7);
        for shape in 1000..1000 + GENERATION as u64 - 1 {
            l.learn("u", shape);
        }
        // The newer generation rolls over; 7 is in the older one now, then refused again.
        l.learn("u", 5000);
        l.learn("u", 7);
        for shape in 6000..6000 + GENERATION as u64 - 2 {
            l.learn("u", shape);
        }
        assert!(l.contains("u", 7));
    }
}
