//! Proxy-minted cancel keys. Each session gets its own (pid, key) to hand the client; a
//! CancelRequest carrying it is forwarded to the backend running that session's work.
//! A wrong key is ignored (no answer, as PostgreSQL does). The pid names the instance that
//! minted it (`key.rs`), so that a fleet's instances forward each other's requests
//! (`forward.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::topology::NodeSpec;

pub mod forward;
pub mod key;

pub use forward::Peer;
pub use key::MAX_INSTANCE_ID;

/// Where a session's in-flight work runs: the node and that backend's own key.
#[derive(Clone)]
pub struct CancelTarget {
    pub node: Arc<NodeSpec>,
    pub pid: i32,
    pub key: i32,
}

struct Entry {
    key: i32,
    target: Mutex<Target>,
}

#[derive(Default)]
struct Target {
    now: Option<CancelTarget>,
    /// Backends a CancelRequest was forwarded to while they ran this session's work, by node
    /// and pid (two nodes may use the same pid): the signal may still be on its way, so they
    /// must not serve anyone else.
    cancelled: Vec<(Arc<str>, i32)>,
}

/// The live sessions' keys. `Default` is a lone proxy's registry (instance 0).
#[derive(Default)]
pub struct CancelRegistry {
    /// `instance_id`, carried in every pid minted here (0: not part of a fleet).
    instance: u16,
    sessions: Mutex<HashMap<i32, Arc<Entry>>>,
}

/// A session's registration; dropping it unregisters the key.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    entry: Arc<Entry>,
    pub pid: i32,
    pub key: i32,
}

impl CancelRegistry {
    /// The registry of fleet instance `instance` (1..=[`MAX_INSTANCE_ID`], or 0 alone).
    pub fn new(instance: u16) -> CancelRegistry {
        CancelRegistry {
            instance,
            sessions: Mutex::default(),
        }
    }

    /// The instance id its pids carry.
    pub fn instance(&self) -> u16 {
        self.instance
    }

    /// Mints a fresh, unused (pid, key) pair for a new session: the pid carries this
    /// instance's id and random bits (see [`key::mint`]), the key is 32 random bits.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let pid = loop {
            let pid = key::mint(self.instance, rand::random());
            if !sessions.contains_key(&pid) {
                break pid;
            }
        };
        let entry = Arc::new(Entry {
            key: rand::random(),
            target: Mutex::new(Target::default()),
        });
        sessions.insert(pid, entry.clone());
        CancelHandle {
            registry: self.clone(),
            pid,
            key: entry.key,
            entry,
        }
    }

    /// The target for a CancelRequest, if the pid is live and the key matches; the target is
    /// marked as cancelled (see [`CancelHandle::release_target`]). `pid` as minted (without
    /// the forwarded mark).
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        let entry = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)?
            .clone();
        let expected = entry.key.to_be_bytes();
        let matches = key.len() == 4
            && key
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return None;
        }
        let mut target = entry.target.lock().unwrap_or_else(|e| e.into_inner());
        let now = target.now.clone()?;
        let backend = (now.node.key.clone(), now.pid);
        if !target.cancelled.contains(&backend) {
            target.cancelled.push(backend);
        }
        Some(now)
    }

    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CancelHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        self.entry.target.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records which backend now runs this session's work.
    pub fn set_target(&self, target: CancelTarget) {
        self.lock().now = Some(target);
    }

    /// No backend runs this session's work now: a late CancelRequest reaches nothing.
    pub fn clear_target(&self) {
        self.lock().now = None;
    }

    /// The lease of the backend with process id `pid` on `node` ends: it is no longer a
    /// target. Returns whether a CancelRequest was forwarded to it meanwhile (then it must not
    /// be reused: the signal could reach the next session's query). Atomic with the
    /// forwarding's lookup.
    pub fn release_target(&self, node: &NodeSpec, pid: i32) -> bool {
        let mut target = self.lock();
        let same = |n: &NodeSpec, p: i32| p == pid && n.key == node.key;
        if target.now.as_ref().is_some_and(|t| same(&t.node, t.pid)) {
            target.now = None;
        }
        match target
            .cancelled
            .iter()
            .position(|(k, p)| *p == pid && *k == node.key)
        {
            Some(i) => {
                target.cancelled.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ConfiguredRole;

    fn node() -> Arc<NodeSpec> {
        node_at(5432)
    }

    fn node_at(port: u16) -> Arc<NodeSpec> {
        let at = crate::config::Region { lat: 0.0, lon: 0.0 };
        Arc::new(NodeSpec::plain(
            "app",
            ConfiguredRole::Primary,
            "127.0.0.1",
            port,
            "r",
            at,
        ))
    }

    #[test]
    fn a_cancelled_backend_is_told_apart_from_another_nodes_backend_with_its_pid() {
        // Each server in its own container: the primary and a replica can both run pid 75.
        let reg = Arc::new(CancelRegistry::default());
        let h = reg.register();
        let (a, b) = (node_at(5432), node_at(5433));
        h.set_target(CancelTarget {
            node: b.clone(),
            pid: 75,
            key: 1,
        });
        let sent = reg.lookup(h.pid, &h.key.to_be_bytes()).unwrap();
        assert_eq!((sent.node.port, sent.pid), (5433, 75));
        // The session ends: its primary lease (also pid 75) goes back first.
        assert!(
            !h.release_target(&a, 75),
            "node A's pid 75 was never cancelled"
        );
        assert!(
            h.release_target(&b, 75),
            "node B's pid 75 was: not reusable"
        );
        assert!(!h.release_target(&b, 75), "reported once");
        assert!(
            reg.lookup(h.pid, &h.key.to_be_bytes()).is_none(),
            "no target left"
        );
    }

    #[test]
    fn only_the_right_key_finds_the_target_and_drop_unregisters() {
        let reg = Arc::new(CancelRegistry::default());
        let h = reg.register();
        let other = reg.register();
        assert_ne!(h.pid, other.pid);
        assert!(
            reg.lookup(h.pid, &h.key.to_be_bytes()).is_none(),
            "no target yet"
        );
        h.set_target(CancelTarget {
            node: node(),
            pid: 77,
            key: 88,
        });
        let t = reg.lookup(h.pid, &h.key.to_be_bytes()).unwrap();
        assert_eq!((t.pid, t.key), (77, 88));
        assert!(reg
            .lookup(h.pid, &h.key.wrapping_add(1).to_be_bytes())
            .is_none());
        assert!(reg.lookup(h.pid, &[1, 2, 3]).is_none());
        assert!(reg.lookup(other.pid, &h.key.to_be_bytes()).is_none() || other.key == h.key);
        let pid = h.pid;
        drop(h);
        assert!(reg.lookup(pid, &0i32.to_be_bytes()).is_none());
        assert_eq!(reg.len(), 1);
    }
}
