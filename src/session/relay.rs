//! A session's steady state: frames client messages into batches (a Query, or extended-protocol
//! messages up to Sync/Flush), routes and forwards each batch, and streams backend bytes back
//! unmodified, inspecting only ReadyForQuery and ErrorResponse. Row data is never decoded.

use std::pin::pin;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::handshake::Established;
use crate::app::Shared;
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{ErrorFields, TxnStatus};
use crate::protocol::frame::{self, FrameError, Scanner, Step};
use crate::protocol::tag::{self, backend as btag};
use crate::route::{self, RouteInput, Target};
use crate::stream::Stream;

/// Stop reading a side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Bytes reserved before each socket read.
const READ_CHUNK: usize = 16 * 1024;
/// An unfinished extended-protocol batch is forwarded once it grows past this.
const BATCH_FORWARD_BYTES: usize = 64 * 1024;
/// Inspected backend messages (ReadyForQuery, errors) larger than this pass uninspected.
const INSPECT_LIMIT: usize = 1 << 20;
/// How long a closing session may spend flushing its last bytes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend messages the relay reads: transaction status and errors.
fn inspected_backend_message(tag: u8) -> bool {
    matches!(tag, btag::READY_FOR_QUERY | btag::ERROR_RESPONSE)
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientTerminated,
    ClientGone,
    /// The client broke the protocol; it has been told.
    ClientError(ClientError),
    /// The backend connection ended; the client has been told.
    BackendGone(String),
    Shutdown,
    IdleTimeout,
}

struct BackendSide {
    node: String,
    r: ReadHalf<Stream>,
    w: WriteHalf<Stream>,
    inbuf: BytesMut,
    outbuf: BytesMut,
    /// Finds message boundaries in `inbuf`; stops at ReadyForQuery and ErrorResponse.
    scan: Scanner,
    /// ReadyForQuery messages still owed for forwarded Query/Sync/FunctionCall messages.
    awaiting_ready: u32,
    /// The last ErrorResponse seen was FATAL: the backend is about to close, and said why.
    sent_fatal: bool,
}

struct Relay<'s> {
    shared: &'s Shared,
    client_r: ReadHalf<Stream>,
    client_w: WriteHalf<Stream>,
    cin: BytesMut,
    to_client: BytesMut,
    backend: BackendSide,
    /// Extended-protocol messages of the batch in progress, not yet forwarded.
    batch: BytesMut,
    txn: TxnStatus,
    max_message: usize,
    draining: bool,
}

pub async fn run(session: Established, shared: &Shared) -> End {
    let Established {
        client,
        backend,
        cancel,
        ..
    } = session;
    let limits = shared.topology.load().limits.clone();
    let (client_r, client_w) = tokio::io::split(client.io);
    let (br, bw) = tokio::io::split(backend.io.io);
    let mut relay = Relay {
        shared,
        client_r,
        client_w,
        cin: client.rbuf,
        to_client: BytesMut::with_capacity(READ_CHUNK),
        backend: BackendSide {
            node: backend.node.to_string(),
            r: br,
            w: bw,
            inbuf: backend.io.rbuf,
            outbuf: BytesMut::with_capacity(READ_CHUNK),
            scan: Scanner::new(inspected_backend_message, INSPECT_LIMIT),
            awaiting_ready: 0,
            sent_fatal: false,
        },
        batch: BytesMut::new(),
        txn: TxnStatus::Idle,
        max_message: limits.max_message_bytes,
        draining: false,
    };
    let end = relay.run_loop(limits.client_idle_timeout).await;
    relay.close(&end).await;
    drop(cancel);
    end
}

impl Relay<'_> {
    async fn run_loop(&mut self, idle_timeout: Duration) -> End {
        let idle_enabled = !idle_timeout.is_zero();
        let mut idle = pin!(tokio::time::sleep(idle_timeout));
        // Bytes that arrived with the startup messages.
        if !self.cin.is_empty() {
            if let Err(end) = self.on_client_bytes() {
                return end;
            }
        }
        if !self.backend.inbuf.is_empty() {
            if let Err(end) = self.on_backend_bytes() {
                return end;
            }
        }
        loop {
            if self.draining && self.quiescent() {
                return End::Shutdown;
            }
            self.cin.reserve(READ_CHUNK);
            self.backend.inbuf.reserve(READ_CHUNK);
            let quiescent = self.quiescent();
            tokio::select! {
                r = self.client_r.read_buf(&mut self.cin), if self.backend.outbuf.len() < HIGH_WATER => {
                    match r {
                        Ok(0) | Err(_) => return End::ClientGone,
                        Ok(_) => {
                            if idle_enabled {
                                idle.as_mut().reset(Instant::now() + idle_timeout);
                            }
                            if let Err(end) = self.on_client_bytes() {
                                return end;
                            }
                        }
                    }
                }
                r = self.backend.r.read_buf(&mut self.backend.inbuf), if self.to_client.len() < HIGH_WATER => {
                    match r {
                        Ok(0) => return self.backend_gone("server closed the connection".into()),
                        Err(e) => return self.backend_gone(e.to_string()),
                        Ok(_) => {
                            if let Err(end) = self.on_backend_bytes() {
                                return end;
                            }
                        }
                    }
                }
                r = self.client_w.write(&self.to_client), if !self.to_client.is_empty() => {
                    match r {
                        Ok(n) if n > 0 => {
                            self.to_client.advance(n);
                            if self.to_client.is_empty() && self.client_w.flush().await.is_err() {
                                return End::ClientGone;
                            }
                        }
                        _ => return End::ClientGone,
                    }
                }
                r = self.backend.w.write(&self.backend.outbuf), if !self.backend.outbuf.is_empty() => {
                    match r {
                        Ok(n) if n > 0 => {
                            self.backend.outbuf.advance(n);
                            if self.backend.outbuf.is_empty() {
                                if let Err(e) = self.backend.w.flush().await {
                                    return self.backend_gone(e.to_string());
                                }
                            }
                        }
                        Ok(_) => return self.backend_gone("backend stopped accepting data".into()),
                        Err(e) => return self.backend_gone(e.to_string()),
                    }
                }
                _ = self.shared.drain.cancelled(), if !self.draining => self.draining = true,
                _ = self.shared.hard_stop.cancelled() => return End::Shutdown,
                _ = idle.as_mut(), if idle_enabled && quiescent => return End::IdleTimeout,
            }
        }
    }

    /// Nothing in flight and no transaction open: the session may be closed or moved.
    fn quiescent(&self) -> bool {
        self.txn == TxnStatus::Idle
            && self.backend.awaiting_ready == 0
            && self.batch.is_empty()
            && self.backend.outbuf.is_empty()
            && self.backend.scan.at_boundary()
    }

    fn on_client_bytes(&mut self) -> Result<(), End> {
        loop {
            let msg = match frame::split_message(&mut self.cin, self.max_message) {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e @ FrameError::TooLarge { .. }) => {
                    return Err(End::ClientError(ClientError::fatal(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        e.to_string(),
                    )));
                }
                Err(e) => {
                    return Err(End::ClientError(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    )))
                }
            };
            match msg[0] {
                tag::QUERY | tag::FUNCTION_CALL => {
                    self.batch.unsplit(msg);
                    self.forward_batch(true);
                }
                tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => {
                    self.batch.unsplit(msg)
                }
                tag::FLUSH => {
                    self.batch.unsplit(msg);
                    self.forward_batch(false);
                }
                tag::SYNC => {
                    self.batch.unsplit(msg);
                    self.forward_batch(true);
                }
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                    self.forward_batch(false);
                    self.backend.outbuf.unsplit(msg);
                }
                tag::TERMINATE => return Err(End::ClientTerminated),
                other => {
                    return Err(End::ClientError(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid frontend message type {}", other),
                    )))
                }
            }
        }
        if self.batch.len() >= BATCH_FORWARD_BYTES {
            self.forward_batch(false);
        }
        Ok(())
    }

    /// Routes and forwards the batch built so far; `completes` when it ends with a message
    /// that is answered by ReadyForQuery (Query, Sync, FunctionCall).
    fn forward_batch(&mut self, completes: bool) {
        if self.batch.is_empty() {
            return;
        }
        let decision = route::decide(&RouteInput { txn: self.txn });
        match decision.target {
            Target::Primary => {}
        }
        tracing::debug!(reason = decision.reason.as_str(), node = %self.backend.node, bytes = self.batch.len(), "routed batch");
        let batch = self.batch.split();
        self.backend.outbuf.unsplit(batch);
        if completes {
            self.backend.awaiting_ready += 1;
        }
    }

    fn on_backend_bytes(&mut self) -> Result<(), End> {
        let b = &mut self.backend;
        loop {
            let step = match b.scan.step(&b.inbuf) {
                Ok(step) => step,
                Err(e) => {
                    let reason = format!("invalid data from backend: {e}");
                    return Err(self.backend_gone(reason));
                }
            };
            match step {
                Step::Forward(n) if self.to_client.is_empty() && n == b.inbuf.len() => {
                    // Bulk rows: hand the whole buffer over instead of copying it.
                    std::mem::swap(&mut self.to_client, &mut b.inbuf);
                }
                Step::Forward(n) => {
                    self.to_client.extend_from_slice(&b.inbuf[..n]);
                    b.inbuf.advance(n);
                }
                Step::Inspect(header) => {
                    let msg = &b.inbuf[..header.total_len];
                    let body = frame::body(msg);
                    if header.tag == btag::READY_FOR_QUERY {
                        if let Some(status) = TxnStatus::from_ready_body(body) {
                            self.txn = status;
                        }
                        b.awaiting_ready = b.awaiting_ready.saturating_sub(1);
                    } else {
                        b.sent_fatal = ErrorFields::parse(body).is_some_and(|f| f.is_fatal());
                    }
                    self.to_client.extend_from_slice(msg);
                    b.inbuf.advance(header.total_len);
                }
                Step::NeedMore(total) => {
                    b.inbuf.reserve(total.saturating_sub(b.inbuf.len()));
                    return Ok(());
                }
            }
        }
    }

    /// The backend connection ended. Unless the server already said why (a FATAL error, such
    /// as an administrator shutdown), the client is told with 08006.
    fn backend_gone(&mut self, reason: String) -> End {
        if !self.backend.sent_fatal {
            ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "lost the connection to backend {}: {reason}",
                    self.backend.node
                ),
            )
            .with_hint(
                "the statement in progress may or may not have completed; reconnect and check",
            )
            .encode(&mut self.to_client);
        }
        End::BackendGone(reason)
    }

    async fn close(&mut self, end: &End) {
        match end {
            End::ClientError(e) => e.encode(&mut self.to_client),
            End::Shutdown => ClientError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection because pgmeridian is shutting down",
            )
            .encode(&mut self.to_client),
            End::IdleTimeout => ClientError::fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout",
            )
            .encode(&mut self.to_client),
            End::ClientGone | End::ClientTerminated | End::BackendGone(_) => {}
        }
        let client = async {
            if !matches!(end, End::ClientGone) && !self.to_client.is_empty() {
                let _ = self.client_w.write_all(&self.to_client).await;
            }
            let _ = self.client_w.shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, client).await;
        if !matches!(end, End::BackendGone(_)) {
            let backend = async {
                let _ = self.backend.w.write_all(b"X\0\0\0\x04").await;
                let _ = self.backend.w.shutdown().await;
            };
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, backend).await;
        }
    }
}
