//! The registry of client sessions, for the admin console (`SHOW CLIENTS`, `SHOW CLUSTERS`) and
//! `PAUSE` (which waits until no session of the cluster has work in flight). A session is
//! listed from login to close; it publishes its state with a store to its own entry when the
//! state changes. The registry's lock is taken at login, at close, by the console and at
//! shutdown, never per statement. It also tells its sessions to drain or stop (one shared
//! level and a waker per session, instead of a watcher task each). No policy here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

/// What a session is doing, as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, nothing in flight.
    Idle = 0,
    /// A batch is in flight.
    Active = 1,
    /// Inside a transaction block, waiting for the client's next statement.
    IdleInTransaction = 2,
    /// Waiting for a server connection from a pool.
    Waiting = 3,
    /// Its next batch is held by `PAUSE` of its cluster.
    Paused = 4,
}

impl ClientState {
    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Active,
            2 => ClientState::IdleInTransaction,
            3 => ClientState::Waiting,
            4 => ClientState::Paused,
            _ => ClientState::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::IdleInTransaction => "idle in transaction",
            ClientState::Waiting => "waiting",
            ClientState::Paused => "paused",
        }
    }

    /// Work a `PAUSE` waits for: a batch in flight or a transaction open.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            ClientState::Active | ClientState::IdleInTransaction | ClientState::Waiting
        )
    }
}

/// One client session.
#[derive(Debug)]
pub struct ClientEntry {
    /// The session id of the logs (`session{id=…}`).
    pub id: u64,
    /// The client's address (after PROXY protocol).
    pub addr: SocketAddr,
    pub user: String,
    /// The cluster (database) it uses; the console's sessions show `pgmeridian`.
    pub cluster: String,
    pub connected_at: SystemTime,
    pub tls: bool,
    /// How its location was found (`startup_option`, `geoip`, `proxy_region`, …).
    pub located_by: &'static str,
    state: AtomicU8,
    /// Woken when the proxy asks its sessions to drain or stop.
    stop_waker: atomic_waker::AtomicWaker,
}

impl ClientEntry {
    pub fn new(
        id: u64,
        addr: SocketAddr,
        user: &str,
        cluster: &str,
        tls: bool,
        located_by: &'static str,
    ) -> ClientEntry {
        ClientEntry {
            id,
            addr,
            user: user.to_owned(),
            cluster: cluster.to_owned(),
            connected_at: SystemTime::now(),
            tls,
            located_by,
            state: AtomicU8::new(ClientState::Idle as u8),
            stop_waker: atomic_waker::AtomicWaker::new(),
        }
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Publishes a state change (ordering: see `control::Pause::is_paused`).
    pub fn set_state(&self, state: ClientState, order: Ordering) {
        self.state.store(state as u8, order);
    }
}

/// What the proxy asks of its sessions, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stop {
    /// Serve on.
    No = 0,
    /// Finish what is open, then close.
    Drain = 1,
    /// Close now.
    Now = 2,
}

impl Stop {
    fn from_u8(v: u8) -> Stop {
        match v {
            0 => Stop::No,
            1 => Stop::Drain,
            _ => Stop::Now,
        }
    }
}

/// Every client session now, by session id.
#[derive(Debug, Default)]
pub struct Clients {
    map: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    /// A [`Stop`]: only ever raised.
    stop: AtomicU8,
}

/// A session's place in the registry; dropping it removes the session.
pub struct Registered<'a> {
    clients: &'a Clients,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.entry.id);
    }
}

impl Clients {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ClientEntry>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, entry: ClientEntry) -> Registered<'_> {
        let entry = Arc::new(entry);
        self.lock().insert(entry.id, entry.clone());
        Registered {
            clients: self,
            entry,
        }
    }

    /// Every session, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<Arc<ClientEntry>> = self.lock().values().cloned().collect();
        all.sort_by_key(|e| e.id);
        all
    }

    /// Asks every session, and every session registered from now on, to `stop`.
    pub fn stop(&self, stop: Stop) {
        // Raised before the sessions are woken: one that registers its waker after the loop
        // below sees the level when it next polls.
        self.stop.fetch_max(stop as u8, Ordering::SeqCst);
        for entry in self.lock().values() {
            entry.stop_waker.wake();
        }
    }

    /// Ready with the proxy's [`Stop`] once it is above `seen`; else `entry`'s task is woken
    /// when it rises.
    pub fn poll_stop(&self, entry: &ClientEntry, seen: Stop, cx: &mut Context<'_>) -> Poll<Stop> {
        entry.stop_waker.register(cx.waker());
        match Stop::from_u8(self.stop.load(Ordering::SeqCst)) {
            now if now > seen => Poll::Ready(now),
            _ => Poll::Pending,
        }
    }

    /// Sessions of `cluster` with work in flight or a transaction open.
    pub fn busy(&self, cluster: &str) -> usize {
        self.lock()
            .values()
            .filter(|e| e.cluster == cluster && e.state().is_busy())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_listed_while_registered_and_counted_when_busy() {
        let clients = Clients::default();
        let addr: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let a = clients.register(ClientEntry::new(2, addr, "app", "app", false, "geoip"));
        let b = clients.register(ClientEntry::new(1, addr, "app", "other", true, "geoip"));
        assert_eq!(
            clients.all().iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(clients.busy("app"), 0);
        for (state, busy) in [
            (ClientState::Active, 1),
            (ClientState::IdleInTransaction, 1),
            (ClientState::Waiting, 1),
            (ClientState::Paused, 0),
            (ClientState::Idle, 0),
        ] {
            a.entry.set_state(state, Ordering::Relaxed);
            assert_eq!(a.entry.state(), state);
            assert_eq!(clients.busy("app"), busy, "{}", state.as_str());
        }
        drop(b);
        assert_eq!(clients.all().len(), 1);
        drop(a);
        assert!(clients.all().is_empty());
    }

    #[test]
    fn sessions_see_a_stop_raised_before_or_after_they_registered() {
        let clients = Clients::default();
        let addr: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let a = clients.register(ClientEntry::new(1, addr, "app", "app", false, "geoip"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(
            clients.poll_stop(&a.entry, Stop::No, &mut cx),
            Poll::Pending
        );
        clients.stop(Stop::Drain);
        assert_eq!(
            clients.poll_stop(&a.entry, Stop::No, &mut cx),
            Poll::Ready(Stop::Drain)
        );
        assert_eq!(
            clients.poll_stop(&a.entry, Stop::Drain, &mut cx),
            Poll::Pending
        );
        // Only ever raised.
        clients.stop(Stop::No);
        let b = clients.register(ClientEntry::new(2, addr, "app", "app", false, "geoip"));
        assert_eq!(
            clients.poll_stop(&b.entry, Stop::No, &mut cx),
            Poll::Ready(Stop::Drain)
        );
        clients.stop(Stop::Now);
        assert_eq!(
            clients.poll_stop(&a.entry, Stop::Drain, &mut cx),
            Poll::Ready(Stop::Now)
        );
    }
}
