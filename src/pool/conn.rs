//! One pooled server connection: its socket and the protocol-level state it carries between
//! leases (backend key, the proxy-wide prepared statements it has, the settings applied to
//! it). Opening, the pre-lease liveness check, moving a socket to the leasing session's thread,
//! and the goodbye. No routing and no session state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::backend::{self, ConnectError};
use crate::protocol::backend::{parameter_status, ErrorFields};
use crate::protocol::frame;
use crate::stream::Stream;
use crate::topology::{NodeSpec, UserSpec};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The settings applied to a server connection (beyond its login defaults): canonical name and
/// the statement that set it, in order. Shared, never mutated: a change makes a new list.
pub type SettingsList = Arc<[(String, Arc<str>)]>;

/// What a server connection has, as the protocol sees it. Moves into the session engine for
/// the length of a lease and back into the pool after it.
#[derive(Debug)]
pub struct ServerState {
    /// Proxy-wide id, for logs and the admin console.
    pub id: u64,
    pub node: Arc<NodeSpec>,
    /// The backend's own process id and cancel key.
    pub pid: i32,
    pub key: i32,
    /// Proxy-wide prepared statements this connection has, by (statement key, schema epoch it
    /// was prepared in), with the tick of their last use (least-recently-used eviction).
    /// Keys are outputs of a randomly keyed hash, so a cheap unkeyed hasher is safe here.
    pub prepared: HashMap<(u128, u64), u64, rustc_hash::FxBuildHasher>,
    pub tick: u64,
    /// The statement key of what the unnamed prepared statement holds, if known.
    pub unnamed: Option<u128>,
    /// Settings applied since login; `None` when unknown (a replay failed): reset before use.
    pub settings: Option<SettingsList>,
}

impl ServerState {
    pub fn new(node: Arc<NodeSpec>, pid: i32, key: i32) -> ServerState {
        ServerState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            node,
            pid,
            key,
            prepared: HashMap::default(),
            tick: 0,
            unnamed: None,
            settings: Some(Arc::from(Vec::new())),
        }
    }
}

/// What the admin console shows of a server connection (`SHOW SERVERS`): fixed at login,
/// plus two flags set on rare events. Lives as long as the connection.
#[derive(Debug)]
pub struct ServerInfo {
    /// The same id as its [`ServerState`].
    pub id: u64,
    /// The backend's process id.
    pub pid: i32,
    pub opened_at: SystemTime,
    /// Dedicated to one session for life.
    pub pinned: AtomicBool,
    /// Saying goodbye; no longer in use.
    pub closing: AtomicBool,
}

/// A logged-in server connection, idle in its pool or leased.
pub struct ServerConn {
    pub stream: Stream,
    /// Bytes read from the socket but not consumed (only ever between messages).
    pub rbuf: BytesMut,
    pub state: Option<Box<ServerState>>,
    /// The session thread whose runtime the socket is registered with (`None`: the main one).
    pub home: Option<usize>,
    pub created: Instant,
    pub last_used: Instant,
    /// `None` only in the stand-in of a connection being moved ([`ServerConn::placeholder`]).
    pub info: Option<Arc<ServerInfo>>,
}

impl ServerConn {
    /// Logs in to `node` as `user`; returns the connection and the node's ParameterStatus.
    pub async fn open(
        node: &Arc<NodeSpec>,
        user: &UserSpec,
        options: &backend::ConnectOptions,
    ) -> Result<(ServerConn, Vec<(Vec<u8>, Vec<u8>)>), ConnectError> {
        let conn = backend::connect_with(node, user, &[], options).await?;
        let now = Instant::now();
        let state = ServerState::new(conn.node.clone(), conn.pid, conn.key);
        let info = Arc::new(ServerInfo {
            id: state.id,
            pid: conn.pid,
            opened_at: SystemTime::now(),
            pinned: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        Ok((
            ServerConn {
                stream: conn.io.io,
                rbuf: conn.io.rbuf,
                state: Some(Box::new(state)),
                home: crate::server::current_lane(),
                created: now,
                last_used: now,
                info: Some(info),
            },
            conn.params,
        ))
    }

    /// An empty stand-in, for moving a connection out of a lease being released (`at`: any
    /// time, so that making one reads no clock).
    pub(super) fn placeholder(at: Instant) -> ServerConn {
        ServerConn {
            stream: Stream::Detached,
            rbuf: BytesMut::new(),
            state: None,
            home: None,
            created: at,
            last_used: at,
            info: None,
        }
    }

    /// Makes an idle connection ready for a lease on this thread: reads what the server sent
    /// while it was idle (a FATAL or EOF means it is gone), checks with an empty query one that
    /// was idle long, and moves the socket to this session thread's runtime.
    pub(super) async fn ready_for_lease(
        mut self,
        check_after: Duration,
        timeout: Duration,
    ) -> Result<ServerConn, String> {
        self.drain_unsolicited()?;
        if self.last_used.elapsed() >= check_after {
            let mut request = BytesMut::new();
            postgres_protocol::message::frontend::query("", &mut request)
                .map_err(|e| e.to_string())?;
            let mut io =
                crate::wire::MessageIo::new(std::mem::replace(&mut self.stream, Stream::Detached));
            io.rbuf = std::mem::take(&mut self.rbuf);
            let answer = tokio::time::timeout(timeout, io.exchange(&request)).await;
            self.stream = io.io;
            self.rbuf = io.rbuf;
            match answer {
                Ok(Ok(msgs)) if msgs.last().is_some_and(|m| &m[..] == b"Z\0\0\0\x05I") => {}
                Ok(Ok(_)) => return Err("unexpected answer to the liveness check".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no answer to the liveness check".into()),
            }
        }
        let here = crate::server::current_lane();
        if self.home != here {
            self.stream = self.stream.rehome().map_err(|e| e.to_string())?;
            self.home = here;
        }
        Ok(self)
    }

    /// Reads, without waiting, whatever an idle server sent: ParameterStatus and notices are
    /// dropped (the next session replays its own settings), a FATAL or EOF is an error.
    pub(super) fn drain_unsolicited(&mut self) -> Result<(), String> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        if let Stream::Plain(tcp) = &self.stream {
            // The common case: nothing arrived. Readiness says so without a read.
            if tcp.poll_read_ready(&mut cx).is_pending() {
                return Ok(());
            }
        }
        loop {
            let mut chunk = [0u8; 512];
            let mut rb = ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut self.stream).poll_read(&mut cx, &mut rb) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e.to_string()),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Err("server closed the connection".into())
                }
                Poll::Ready(Ok(())) => self.rbuf.extend_from_slice(rb.filled()),
            }
            if self.rbuf.len() > 1 << 20 {
                return Err("idle server sent too much".into());
            }
        }
        while let Some(msg) =
            frame::split_message(&mut self.rbuf, 1 << 20).map_err(|e| e.to_string())?
        {
            match msg[0] {
                b'E' => {
                    let f = ErrorFields::parse(frame::body(&msg)).unwrap_or_default();
                    return Err(format!("{} ({})", f.message, f.code));
                }
                b'S' => {
                    if let Some((k, v)) = parameter_status(frame::body(&msg)) {
                        tracing::debug!(name = %String::from_utf8_lossy(k), value = %String::from_utf8_lossy(v), "idle server reported a parameter");
                    }
                }
                b'N' | b'A' => {}
                other => {
                    return Err(format!(
                        "unexpected message {:?} from an idle server",
                        other as char
                    ))
                }
            }
        }
        if !self.rbuf.is_empty() {
            return Err("idle server sent a partial message".into());
        }
        Ok(())
    }

    /// Says goodbye (Terminate) and closes, in the background.
    pub fn close(mut self) {
        if let Some(info) = &self.info {
            info.closing.store(true, Ordering::Relaxed);
        }
        if matches!(self.stream, Stream::Detached) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            let bye = async {
                let _ = self.stream.write_all(b"X\0\0\0\x04").await;
                let _ = self.stream.shutdown().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
        });
    }
}
