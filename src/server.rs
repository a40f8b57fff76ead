//! The accept loop: admits clients up to the connection limit, spawns a session each, and on
//! drain stops accepting, waits for sessions to finish, then stops the stragglers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
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
