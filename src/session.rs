//! One client connection from accept to close: the startup phase (`handshake`, `login`), then
//! the sans-I/O protocol engine (`engine`) driven by its I/O loop (`driver`), or the admin
//! console (`console`) for its database. Owns the per-session tracing span, the session's
//! place in the clients registry and the handles a session gets (`Handles`), nothing else.

mod batch;
mod driver;
pub mod engine;
mod gate;
mod handshake;
mod learned;
mod login;
mod settings;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::app::Shared;
use crate::proxy_protocol;
pub use engine::End;
pub use handshake::Established;
use handshake::Outcome;
pub use learned::LearnedWrites;

/// What a session reads and uses beyond its own sockets; built from `app::Shared`.
pub struct Handles<'s> {
    pub topology: &'s arc_swap::ArcSwap<crate::topology::Topology>,
    pub health: &'s arc_swap::ArcSwap<crate::health::Health>,
    pub metrics: &'s crate::metrics::Metrics,
    pub learned: &'s LearnedWrites,
    pub scopes: &'s crate::causal::Scopes,
    /// See [`engine::Env::schema_epoch`].
    pub schema_epoch: &'s std::sync::atomic::AtomicU64,
    pub catalogs: &'s crate::catalog::Catalogs,
    pub pools: &'s crate::pool::Pools,
    pub drain: &'s tokio_util::sync::CancellationToken,
    pub hard_stop: &'s tokio_util::sync::CancellationToken,
    /// Where failed backend connects are reported (the probes count them).
    pub hints: &'s crate::health::hints::ProbeHints,
    /// The operator's pauses, by cluster (a session takes its cluster's once).
    pub pauses: &'s crate::control::Pauses,
    /// The client registry, which also tells sessions to drain or stop.
    pub sessions: &'s crate::clients::Clients,
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted client connection to completion.
pub async fn run(mut tcp: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
    let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        id,
        client = %peer,
        via = tracing::field::Empty,
        cluster = tracing::field::Empty,
        geo = tracing::field::Empty
    );
    async move {
        let _ = tcp.set_nodelay(true);
        let (startup_timeout, trusted, max_handshakes) = {
            let t = shared.topology.load();
            if let Err(e) = crate::server::tune_socket(&tcp, (&t.limits).into()) {
                tracing::debug!(error = %e, "could not set keepalive on the client socket");
            }
            (
                t.limits.startup_timeout,
                !t.proxy_trusted.is_empty()
                    && proxy_protocol::is_trusted(peer.ip(), &t.proxy_trusted),
                (t.limits.max_handshakes, t.limits.max_handshakes_per_address),
            )
        };
        let startup = async move {
            let (client, early) = if trusted {
                match proxy_protocol::read_header(&mut tcp, peer).await {
                    Ok(found) => found,
                    Err(e) => {
                        let io = crate::wire::MessageIo::new(crate::stream::Stream::Plain(tcp));
                        let error = crate::error::ClientError::fatal(
                            crate::error::sqlstate::PROTOCOL_VIOLATION,
                            e,
                        )
                        .with_kind(crate::error::ErrorKind::ProxyProtocol);
                        return Outcome::Refused(io, error);
                    }
                }
            } else {
                (peer, bytes::BytesMut::new())
            };
            if client != peer {
                let span = tracing::Span::current();
                span.record("via", tracing::field::display(peer));
                span.record("client", tracing::field::display(client));
            }
            // Held until the handshake ends (or the startup timeout drops this future).
            let (total, per_address) = max_handshakes;
            let _slot = match shared.handshakes.enter(client.ip(), total, per_address) {
                Ok(slot) => slot,
                Err(refusal) => {
                    let io = crate::wire::MessageIo::new(crate::stream::Stream::Plain(tcp));
                    return Outcome::Refused(io, refusal.to_client());
                }
            };
            handshake::handshake(tcp, early, client, shared).await
        };
        let outcome = match tokio::time::timeout(startup_timeout, startup).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::debug!(?startup_timeout, "client did not finish startup in time");
                shared
                    .metrics
                    .error(crate::error::ErrorKind::StartupTimeout);
                return;
            }
        };
        match outcome {
            Outcome::Closed => {}
            Outcome::Refused(mut io, error) => {
                // The message may quote what the client sent (its user or database name).
                let message = crate::telemetry::escape(&error.message);
                if error.kind == crate::error::ErrorKind::TooManyClients {
                    // Counted in metrics; one line each would let a flood fill the log.
                    tracing::debug!(code = %error.code, %message, "refused client");
                } else {
                    tracing::info!(code = %error.code, %message, "refused client");
                }
                shared.metrics.error(error.kind);
                error.encode(&mut io.wbuf);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    let _ = io.flush().await;
                    let _ = io.io.shutdown().await;
                })
                .await;
            }
            Outcome::Session(established) => {
                let Established {
                    client,
                    start,
                    addr,
                } = *established;
                tracing::debug!(user = %start.user.name, "session started");
                let registered = shared.sessions.register(crate::clients::ClientEntry::new(
                    id,
                    addr,
                    &start.user.name,
                    &start.cluster.name,
                    client.io.is_tls(),
                    start.location.source.as_str(),
                ));
                let engine = engine::Engine::new(start);
                let handles = shared.session_handles();
                let end = driver::run(client, engine, &handles, &registered.entry).await;
                tracing::debug!(?end, "session ended");
            }
            Outcome::Console(login) => {
                tracing::info!(user = %login.user.name, "admin console session started");
                crate::console::run(*login, id, shared).await;
                tracing::debug!("admin console session ended");
            }
        }
    }
    .instrument(span)
    .await
}
