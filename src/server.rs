//! The accept loop: admits clients up to the connection limit, spawns a session each, and on
//! drain stops accepting, waits for sessions to finish, then stops the stragglers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

mod lanes;

pub use lanes::{current_lane, Lanes};

use crate::app::Shared;
use crate::error::{sqlstate, ClientError};
use crate::session;

/// After the hard stop, how long sessions get to write their goodbye.
const HARD_STOP_GRACE: Duration = Duration::from_secs(5);

/// Accepts clients until the drain, running each session on one of `lanes`.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, lanes: Lanes) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.drain.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let limit = shared.topology.load().limits.max_client_connections;
        let guard = ClientSlot::take(&shared);
        if guard.count > limit {
            shared
                .metrics
                .error(crate::error::ErrorKind::TooManyClients);
            tracker.spawn(refuse(tcp, limit));
            continue;
        }
        // The session's lane registers the socket with its own runtime.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "could not hand the connection to a session thread");
                continue;
            }
        };
        let shared = shared.clone();
        lanes.spawn(tracker.track_future(async move {
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => session::run(tcp, peer, &shared).await,
                Err(e) => tracing::warn!(error = %e, %peer, "could not register the connection"),
            }
            drop(guard);
        }));
    }
    drop(listener);
    tracker.close();
    let timeout = shared.topology.load().limits.shutdown_timeout;
    tracing::info!(
        sessions = tracker.len(),
        ?timeout,
        "stopped accepting; waiting for sessions to finish"
    );
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "shutdown timeout reached; closing remaining sessions"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(HARD_STOP_GRACE, tracker.wait()).await;
    }
}

/// Connections in their startup phase, in total and per client address (`limits.max_handshakes`,
/// `limits.max_handshakes_per_address`). A connection holds a [`HandshakeSlot`] from the moment
/// its client address is known (after the PROXY header, if any) until its session is
/// established, it is refused, or the startup timeout ends it.
#[derive(Default)]
pub struct Handshakes {
    counts: Mutex<HandshakeCounts>,
}

#[derive(Default)]
struct HandshakeCounts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection could not start its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// `max_handshakes` connections are already starting up.
    Total(usize),
    /// `max_handshakes_per_address` connections from this address are already starting up.
    Address(usize),
}

impl HandshakeRefusal {
    /// 53300, as for `max_client_connections`: the client may try again shortly.
    pub fn to_client(self) -> ClientError {
        let message = match self {
            HandshakeRefusal::Total(limit) => {
                format!("sorry, too many connections are starting up (limit {limit})")
            }
            HandshakeRefusal::Address(limit) => format!(
                "sorry, too many connections from this address are starting up (limit {limit})"
            ),
        };
        ClientError::fatal(sqlstate::TOO_MANY_CONNECTIONS, message)
    }
}

impl Handshakes {
    /// Takes a slot for a connection from `ip`, unless a limit is reached.
    pub fn enter(
        &self,
        ip: IpAddr,
        max_total: usize,
        max_per_address: usize,
    ) -> Result<HandshakeSlot<'_>, HandshakeRefusal> {
        let mut counts = self.lock();
        if counts.total >= max_total {
            return Err(HandshakeRefusal::Total(max_total));
        }
        let from_ip = counts.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= max_per_address {
            return Err(HandshakeRefusal::Address(max_per_address));
        }
        counts.per_address.insert(ip, from_ip + 1);
        counts.total += 1;
        Ok(HandshakeSlot {
            handshakes: self,
            ip,
        })
    }

    /// Connections starting up now: in total, and from `ip`.
    pub fn in_progress(&self, ip: IpAddr) -> (usize, usize) {
        let counts = self.lock();
        (
            counts.total,
            counts.per_address.get(&ip).copied().unwrap_or(0),
        )
    }

    fn leave(&self, ip: IpAddr) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&ip);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandshakeCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place among those starting up; released when dropped.
pub struct HandshakeSlot<'a> {
    handshakes: &'a Handshakes,
    ip: IpAddr,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.handshakes.leave(self.ip);
    }
}

/// Keepalive and user-timeout settings of a TCP socket (client or backend); zero disables each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalive: Duration,
    pub user_timeout: Duration,
}

impl From<&crate::config::Limits> for TcpOptions {
    fn from(l: &crate::config::Limits) -> TcpOptions {
        TcpOptions {
            keepalive: l.tcp_keepalive,
            user_timeout: l.tcp_user_timeout,
        }
    }
}

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions::from(&crate::config::Limits::default())
    }
}

/// Unanswered keepalive probes before the kernel gives up on the peer.
const KEEPALIVE_PROBES: u32 = 3;

/// Applies `options` to `tcp`: keepalive probes after `keepalive` of silence, then every third
/// of it; `TCP_USER_TIMEOUT` where the platform has it. A half-open connection (the peer's
/// machine vanished, a NAT dropped the mapping) is then closed instead of living forever.
pub fn tune_socket(tcp: &tokio::net::TcpStream, options: TcpOptions) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    if options.keepalive.is_zero() {
        sock.set_keepalive(false)?;
    } else {
        // The kernel counts these in whole seconds, at least one.
        let time = options.keepalive.max(Duration::from_secs(1));
        let interval = (time / 3).max(Duration::from_secs(1));
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(time)
            .with_interval(interval);
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
        sock.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout((!options.user_timeout.is_zero()).then_some(options.user_timeout))?;
    Ok(())
}

/// Counts a client connection for as long as it lives.
struct ClientSlot {
    shared: Arc<Shared>,
    count: usize,
}

impl ClientSlot {
    fn take(shared: &Arc<Shared>) -> ClientSlot {
        let count = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
        shared.metrics.client_connections.inc();
        ClientSlot {
            shared: shared.clone(),
            count,
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.client_connections.dec();
    }
}

async fn refuse(mut tcp: tokio::net::TcpStream, limit: usize) {
    let mut buf = BytesMut::new();
    ClientError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        format!("sorry, too many clients already (limit {limit})"),
    )
    .encode(&mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = tcp.write_all(&buf).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_are_limited_in_total_and_per_address() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let h = Handshakes::default();
        // Limits: 3 in total, 2 per address.
        let a1 = h.enter(a, 3, 2).unwrap();
        let a2 = h.enter(a, 3, 2).unwrap();
        assert_eq!(h.enter(a, 3, 2).err(), Some(HandshakeRefusal::Address(2)));
        let b1 = h.enter(b, 3, 2).unwrap();
        assert_eq!(h.enter(b, 3, 2).err(), Some(HandshakeRefusal::Total(3)));
        assert_eq!(h.in_progress(a), (3, 2));
        drop(a1);
        assert_eq!(h.in_progress(a), (2, 1));
        let a3 = h.enter(a, 3, 2).unwrap();
        drop((a2, a3, b1));
        assert_eq!(h.in_progress(a), (0, 0));
        assert!(h.lock().per_address.is_empty(), "no entry is left behind");
        let e = HandshakeRefusal::Address(2).to_client();
        assert_eq!(e.code, "53300");
        assert!(e.message.contains("from this address"), "{e:?}");
    }

    /// Reads back what `tune_socket` set on a real accepted connection.
    #[tokio::test]
    async fn socket_options_are_set_and_can_be_turned_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        let on = TcpOptions {
            keepalive: Duration::from_secs(30),
            user_timeout: Duration::from_secs(60),
        };
        tune_socket(&accepted, on).unwrap();
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(60))
        );
        let short = TcpOptions {
            keepalive: Duration::from_secs(2),
            user_timeout: Duration::from_millis(1500),
        };
        tune_socket(&accepted, short).unwrap();
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        let off = TcpOptions {
            keepalive: Duration::ZERO,
            user_timeout: Duration::ZERO,
        };
        tune_socket(&accepted, off).unwrap();
        assert!(!sock.keepalive().unwrap());
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    }
}
