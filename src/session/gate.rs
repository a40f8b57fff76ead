//! Between a session and the operator: publishes what the session is doing to its entry in the
//! clients registry (SHOW CLIENTS, and what `PAUSE` waits for), and holds a batch that would
//! start while its cluster is paused until `RESUME`. A session with work in flight or a
//! transaction open is never held. Held client bytes are kept here, out of the engine's sight
//! (an idle server's notification would otherwise make it read on). Costs: a store when the
//! session's state changes, and a store and a load when an idle session starts a batch; no
//! lock. No routing or protocol.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::watch;

use crate::clients::{ClientEntry, ClientState};
use crate::control::Pause;

pub struct Gate<'a> {
    entry: &'a ClientEntry,
    pause: Arc<Pause>,
    /// The state last published.
    shown: ClientState,
    /// Set while the next batch is held: wakes at the pause's next change.
    held: Option<watch::Receiver<bool>>,
    /// The client's bytes while held, oldest first.
    stash: BytesMut,
}

impl<'a> Gate<'a> {
    pub fn new(entry: &'a ClientEntry, pause: Arc<Pause>) -> Gate<'a> {
        Gate {
            shown: entry.state(),
            entry,
            pause,
            held: None,
            stash: BytesMut::new(),
        }
    }

    /// Whether the client's bytes (`input`, after any held before them) may go to the engine
    /// now; if not, they are kept here. `idle`: nothing is in flight and no transaction is
    /// open, so what arrived would start new work. That work is announced (the session is
    /// busy) before the pause is read, while `PAUSE` sets the pause before it reads the
    /// sessions' states: either the session sees the pause, or `PAUSE` sees it busy.
    pub fn admit(&mut self, idle: bool, input: &mut BytesMut) -> bool {
        if idle {
            self.entry.set_state(ClientState::Active, Ordering::SeqCst);
            self.shown = ClientState::Active;
            if self.pause.is_paused() {
                // Subscribed before the second look, so a RESUME in between still wakes us.
                let rx = self.pause.subscribe();
                if self.pause.is_paused() {
                    self.held = Some(rx);
                    self.keep(input);
                    self.publish(ClientState::Paused);
                    return false;
                }
            }
        }
        self.held = None;
        if !self.stash.is_empty() {
            let newer = input.split();
            *input = std::mem::take(&mut self.stash);
            input.unsplit(newer);
        }
        true
    }

    /// Keeps what the client sent while its batch is held.
    pub fn keep(&mut self, input: &mut BytesMut) {
        self.stash.unsplit(input.split());
    }

    /// Bytes held for the client.
    pub fn kept(&self) -> usize {
        self.stash.len()
    }

    /// A batch waits for `RESUME`.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Resolves when the pause changes (then ask [`Gate::admit`] again); never while nothing
    /// is held.
    pub async fn changed(&mut self) {
        match &mut self.held {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The pause is gone with the proxy: let the session go on to its end.
                    self.held = None;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Publishes the session's state if it changed.
    pub fn publish(&mut self, state: ClientState) {
        if state != self.shown {
            self.entry.set_state(state, Ordering::Release);
            self.shown = state;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ClientEntry {
        ClientEntry::new(
            1,
            "192.0.2.1:1".parse().unwrap(),
            "app",
            "app",
            false,
            "geoip",
        )
    }

    #[test]
    fn idle_sessions_are_held_while_paused_and_busy_ones_go_on() {
        let e = entry();
        let pause = Arc::new(Pause::default());
        let mut gate = Gate::new(&e, pause.clone());
        let mut input = BytesMut::from(&b"Q1"[..]);
        assert!(gate.admit(true, &mut input));
        assert_eq!(&input[..], b"Q1");
        assert_eq!(e.state(), ClientState::Active);
        gate.publish(ClientState::Idle);
        assert_eq!(e.state(), ClientState::Idle);
        pause.set(true);
        assert!(
            gate.admit(false, &mut input),
            "work in flight or a transaction goes on"
        );
        assert_eq!(&input[..], b"Q1");
        assert!(!gate.admit(true, &mut input), "a new batch waits");
        assert!(input.is_empty(), "held bytes are out of the engine's sight");
        assert!(gate.is_holding());
        assert_eq!(e.state(), ClientState::Paused);
        input.extend_from_slice(b"Q2");
        gate.keep(&mut input);
        assert!(input.is_empty());
        assert_eq!(gate.kept(), 4);
        input.extend_from_slice(b"Q3");
        pause.set(false);
        assert!(gate.admit(true, &mut input));
        assert_eq!(&input[..], b"Q1Q2Q3", "in the order sent");
        assert_eq!(gate.kept(), 0);
        assert!(!gate.is_holding());
        assert_eq!(e.state(), ClientState::Active);
    }

    #[tokio::test]
    async fn a_held_session_wakes_at_resume() {
        let e = entry();
        let pause = Arc::new(Pause::default());
        pause.set(true);
        let mut gate = Gate::new(&e, pause.clone());
        let mut input = BytesMut::from(&b"Q"[..]);
        assert!(!gate.admit(true, &mut input));
        let resume = {
            let pause = pause.clone();
            async move {
                tokio::task::yield_now().await;
                pause.set(false);
            }
        };
        let (_, ()) = tokio::join!(resume, gate.changed());
        assert!(gate.admit(true, &mut input));
        assert_eq!(&input[..], b"Q");
    }
}
