//! One client connection from accept to close: the startup phase (`handshake`), then the
//! steady-state relay (`relay`). Owns the per-session tracing span.

mod batch;
mod handshake;
mod relay;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::app::Shared;
pub use batch::LearnedWrites;
pub use handshake::Established;
use handshake::Outcome;
pub use relay::End;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted client connection to completion.
pub async fn run(tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", id, client = %peer, cluster = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let startup_timeout = shared.topology.load().limits.startup_timeout;
        let outcome =
            match tokio::time::timeout(startup_timeout, handshake::handshake(tcp, shared)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::debug!(?startup_timeout, "client did not finish startup in time");
                    return;
                }
            };
        match outcome {
            Outcome::Closed => {}
            Outcome::Refused(mut io, error) => {
                tracing::info!(code = %error.code, message = %error.message, "refused client");
                error.encode(&mut io.wbuf);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    let _ = io.flush().await;
                    let _ = io.io.shutdown().await;
                })
                .await;
            }
            Outcome::Session(established) => {
                tracing::debug!(user = %established.user.name, "session started");
                let end = relay::run(*established, shared).await;
                tracing::debug!(?end, "session ended");
            }
        }
    }
    .instrument(span)
    .await
}
