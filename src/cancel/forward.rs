//! Acting on a CancelRequest: to the backend running the session's query when this instance
//! minted the key, to the peer that minted it otherwise (`key::route` decides), and counted in
//! `pgmeridian_cancel_requests_total`. Nothing here answers the client: PostgreSQL's protocol
//! has no answer to a CancelRequest, only the connection closing once it was acted on.
//!
//! Not an open relay: a request is only ever sent to a backend of the topology or to an
//! address in `peers`, at most once per request (a forwarded request carries a mark and is never
//! forwarded again), and it is the 16-byte CancelRequest the client sent, nothing more; and a
//! request for a peer's key is forwarded only when it comes from a peer's address, a trusted
//! balancer (`proxy_protocol.trusted`) or `cancel_forward_from`.

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::key::{self, Route};
use crate::app::Shared;
use crate::topology::Topology;

/// Another instance of the fleet (`peers[]`), as the topology holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u16,
    /// A name (resolved at each forward) or an IP address.
    pub host: String,
    pub port: u16,
    /// Send a PROXY v2 `LOCAL` header first: the peer expects one from this instance's address.
    pub proxy_protocol: bool,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "instance {} at [{}]:{}", self.id, self.host, self.port)
        } else {
            write!(f, "instance {} at {}:{}", self.id, self.host, self.port)
        }
    }
}

/// What became of a CancelRequest: the `result` label of `pgmeridian_cancel_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the backend running the session's query.
    Backend,
    BackendFailed,
    /// Minted here, but no live session has that key or nothing of it runs now.
    NoTarget,
    /// Sent to the peer that minted the key.
    Peer,
    PeerFailed,
    /// Minted by an instance that is not among `peers`: sent nowhere.
    UnknownInstance,
    /// Forwarded here by a peer, but minted by another instance: sent nowhere.
    Loop,
    /// For a peer, but from an address that may not have requests forwarded: sent nowhere.
    RefusedSource,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Backend,
        Outcome::BackendFailed,
        Outcome::NoTarget,
        Outcome::Peer,
        Outcome::PeerFailed,
        Outcome::UnknownInstance,
        Outcome::Loop,
        Outcome::RefusedSource,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Backend => "backend",
            Outcome::BackendFailed => "backend_failed",
            Outcome::NoTarget => "no_target",
            Outcome::Peer => "peer",
            Outcome::PeerFailed => "peer_failed",
            Outcome::UnknownInstance => "unknown_instance",
            Outcome::Loop => "loop",
            Outcome::RefusedSource => "refused_source",
        }
    }
}

/// Whether a CancelRequest that came over a connection from `via` (the TCP peer: a balancer,
/// another instance or the client itself) may be forwarded to a peer: `via` is one of the
/// peers' addresses (a name is resolved), a trusted balancer or in `cancel_forward_from`.
async fn may_forward(via: Option<IpAddr>, topology: &Topology) -> bool {
    let Some(via) = via.map(|ip| ip.to_canonical()) else {
        return false;
    };
    if crate::proxy_protocol::is_trusted(via, &topology.proxy_trusted)
        || crate::proxy_protocol::is_trusted(via, &topology.cancel_forward_from)
    {
        return true;
    }
    for peer in &topology.peers {
        match peer.host.parse::<IpAddr>() {
            Ok(ip) if ip.to_canonical() == via => return true,
            Ok(_) => {}
            Err(_) => {
                if let Ok(addrs) = tokio::net::lookup_host((peer.host.as_str(), peer.port)).await {
                    if addrs.into_iter().any(|a| a.ip().to_canonical() == via) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// Acts on a CancelRequest for (`pid`, `key`) that came over a connection from `via` (the TCP
/// peer, before any PROXY header) and counts what became of it.
pub async fn handle(shared: &Shared, pid: i32, key: &[u8], via: Option<IpAddr>) -> Outcome {
    let topology = shared.topology.load_full();
    let timeout = topology.limits.connect_timeout;
    let outcome = match key::route(pid, shared.cancels.instance(), &topology.peers) {
        Route::Local(pid) => match shared.cancels.lookup(pid, key) {
            None => {
                tracing::debug!("ignoring a CancelRequest with an unknown key");
                Outcome::NoTarget
            }
            Some(target) => {
                match crate::backend::send_cancel(&target.node, target.pid, target.key, timeout)
                    .await
                {
                    Ok(()) => {
                        tracing::debug!(node = %target.node, "forwarded a CancelRequest");
                        Outcome::Backend
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not forward a CancelRequest");
                        Outcome::BackendFailed
                    }
                }
            }
        },
        Route::Peer(peer, _) if !may_forward(via, &topology).await => {
            // Debug only, as below: anyone can send these.
            tracing::debug!(%peer, ?via, "not forwarding a CancelRequest from an address that is neither a peer, a trusted balancer nor in cancel_forward_from");
            Outcome::RefusedSource
        }
        Route::Peer(peer, pid) => match send_to_peer(peer, pid, key, timeout).await {
            Ok(()) => {
                tracing::debug!(%peer, "forwarded a CancelRequest to the instance that minted its key");
                Outcome::Peer
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not forward a CancelRequest to a peer");
                Outcome::PeerFailed
            }
        },
        // Debug only: anyone can send these, and a log line each would be a flood.
        Route::Loop(instance) => {
            tracing::debug!(
                instance,
                "dropping a CancelRequest a peer forwarded for another instance (do the fleet's `peers` lists agree?)"
            );
            Outcome::Loop
        }
        Route::UnknownInstance(instance) => {
            tracing::debug!(
                instance,
                "dropping a CancelRequest for an instance that is not among `peers`"
            );
            Outcome::UnknownInstance
        }
    };
    shared
        .metrics
        .cancel_requests
        .with_label_values(&[outcome.as_str()])
        .inc();
    outcome
}

/// Sends a CancelRequest to `peer` (after a PROXY v2 `LOCAL` header when it wants one) and
/// waits until the peer closes the connection, which it does once it has acted on it.
pub async fn send_to_peer(
    peer: &Peer,
    pid: i32,
    key: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        let mut tcp = TcpStream::connect((peer.host.as_str(), peer.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(32);
        if peer.proxy_protocol {
            buf.extend_from_slice(&crate::proxy_protocol::V2_LOCAL);
        }
        crate::protocol::encode::cancel_request(&mut buf, pid, key);
        tcp.write_all(&buf)
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut sink = [0u8; 64];
        while tcp.read(&mut sink).await.map_err(|e| e.to_string())? > 0 {}
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// What a peer receives: the PROXY header when it wants one, then the plain CancelRequest;
    /// the sender returns once the peer has closed the connection.
    #[tokio::test]
    async fn a_peer_gets_the_plain_request_after_its_header() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let timeout = Duration::from_secs(5);
        for (host, proxy_protocol) in [("localhost", false), ("127.0.0.1", true)] {
            let peer = Peer {
                id: 2,
                host: host.into(),
                port,
                proxy_protocol,
            };
            let send =
                tokio::spawn(async move { send_to_peer(&peer, 77, &[1, 2, 3, 4], timeout).await });
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; if proxy_protocol { 32 } else { 16 }];
            s.read_exact(&mut got).await.unwrap();
            drop(s);
            send.await.unwrap().unwrap();
            let (header, request) = got.split_at(got.len() - 16);
            assert_eq!(
                header,
                if proxy_protocol {
                    &crate::proxy_protocol::V2_LOCAL[..]
                } else {
                    &[]
                }
            );
            assert_eq!(
                request,
                &[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 77, 1, 2, 3, 4]
            );
        }
        // Nobody listening: an error, not a hang.
        drop(listener);
        let gone = Peer {
            id: 2,
            host: "127.0.0.1".into(),
            port,
            proxy_protocol: false,
        };
        assert!(send_to_peer(&gone, 77, &[1, 2, 3, 4], timeout)
            .await
            .is_err());
    }
}
