//! The layout of the process ids this proxy mints, and where a CancelRequest carrying one goes.
//! Pure: no I/O, no randomness of its own (callers pass the random bits).
//!
//! A pid is 31 bits (positive, like a real PID, so that tools printing it are not confused):
//!
//! ```text
//!  bit 31   30          29 … 20            19 … 0
//!  [ 0 ][ forwarded ][ instance id (10) ][ random, never 0 (20) ]
//! ```
//!
//! The instance id is `instance_id` of the proxy that minted it (0 for a proxy outside a
//! fleet). The forwarded mark is never minted: a proxy sets it when it forwards a request to
//! the peer that minted the pid, and a marked request is never forwarded again, whatever the
//! receiving proxy's `peers` say (two instances whose lists disagree cannot bounce a request
//! between them). The 32-bit key is the secret; it stays whole and random.

use super::forward::Peer;

/// The largest `instance_id`: the pid has 10 bits for it.
pub const MAX_INSTANCE_ID: u16 = (1 << INSTANCE_BITS) - 1;

const INSTANCE_BITS: u32 = 10;
const RANDOM_BITS: u32 = 20;
const RANDOM_MASK: u32 = (1 << RANDOM_BITS) - 1;
const FORWARDED: i32 = 1 << 30;

/// The pid of a new session of instance `instance`, from `random` bits (a zero random part
/// becomes 1, so that no pid is 0).
pub fn mint(instance: u16, random: u32) -> i32 {
    let random = (random & RANDOM_MASK).max(1);
    let instance = u32::from(instance.min(MAX_INSTANCE_ID));
    ((instance << RANDOM_BITS) | random) as i32
}

/// The instance that minted `pid`.
pub fn instance_of(pid: i32) -> u16 {
    ((pid as u32 >> RANDOM_BITS) & u32::from(MAX_INSTANCE_ID)) as u16
}

/// Whether a peer forwarded this request.
pub fn is_forwarded(pid: i32) -> bool {
    pid & FORWARDED != 0
}

/// `pid` as a forwarding proxy sends it on.
pub fn mark_forwarded(pid: i32) -> i32 {
    pid | FORWARDED
}

/// `pid` as it was minted.
pub fn unmarked(pid: i32) -> i32 {
    pid & !FORWARDED
}

/// Where a CancelRequest goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Minted here: look up this (unmarked) pid.
    Local(i32),
    /// Minted by this peer: send it this (marked) pid.
    Peer(&'a Peer, i32),
    /// Minted by another instance and already forwarded once: dropped (the fleet's `peers`
    /// lists disagree, or someone set the mark).
    Loop(u16),
    /// Minted by an instance that is not among `peers`: dropped, sent nowhere.
    UnknownInstance(u16),
}

/// Where a CancelRequest for `pid` goes, at instance `own` with these `peers`.
pub fn route(pid: i32, own: u16, peers: &[Peer]) -> Route<'_> {
    let minted_by = instance_of(pid);
    if minted_by == own {
        Route::Local(unmarked(pid))
    } else if is_forwarded(pid) {
        Route::Loop(minted_by)
    } else {
        match peers.iter().find(|p| p.id == minted_by) {
            Some(peer) => Route::Peer(peer, mark_forwarded(pid)),
            None => Route::UnknownInstance(minted_by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u16) -> Peer {
        Peer {
            id,
            host: "10.0.0.1".into(),
            port: 6432,
            proxy_protocol: false,
        }
    }

    #[test]
    fn pids_carry_their_instance_and_stay_positive_and_non_zero() {
        for (instance, random) in [
            (0u16, 0u32),
            (0, 1),
            (1, u32::MAX),
            (7, 0x1234_5678),
            (MAX_INSTANCE_ID, 0),
            (MAX_INSTANCE_ID, u32::MAX),
        ] {
            let pid = mint(instance, random);
            assert!(pid > 0, "{instance} {random:#x} -> {pid:#x}");
            assert_eq!(instance_of(pid), instance);
            assert!(!is_forwarded(pid));
            let marked = mark_forwarded(pid);
            assert!(marked > 0 && is_forwarded(marked));
            assert_eq!(instance_of(marked), instance);
            assert_eq!(unmarked(marked), pid);
        }
        assert_eq!(mint(3, 5) & 0xFFFFF, 5, "the random part is kept");
        assert_ne!(mint(3, 5), mint(4, 5));
        assert_eq!(MAX_INSTANCE_ID, 1023);
    }

    #[test]
    fn requests_go_to_the_minting_instance_once() {
        let peers = [peer(1), peer(3)];
        let of = |instance, random| mint(instance, random);
        let cases: Vec<(&str, i32, u16, Route)> = vec![
            ("ours", of(2, 9), 2, Route::Local(of(2, 9))),
            (
                "ours, forwarded by a peer",
                mark_forwarded(of(2, 9)),
                2,
                Route::Local(of(2, 9)),
            ),
            (
                "a peer's",
                of(3, 9),
                2,
                Route::Peer(&peers[1], mark_forwarded(of(3, 9))),
            ),
            (
                "a peer's, already forwarded",
                mark_forwarded(of(3, 9)),
                2,
                Route::Loop(3),
            ),
            ("not a peer", of(4, 9), 2, Route::UnknownInstance(4)),
            ("alone, ours", of(0, 9), 0, Route::Local(of(0, 9))),
            ("alone, garbage", 0x7FFF_FFFF, 0, Route::Loop(1023)),
            ("negative garbage", -1, 2, Route::Loop(1023)),
        ];
        for (name, pid, own, want) in cases {
            assert_eq!(route(pid, own, &peers), want, "{name}");
        }
        assert_eq!(route(of(1, 9), 0, &[]), Route::UnknownInstance(1));
    }
}
