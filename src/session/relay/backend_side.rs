//! One backend connection as the relay sees it: its socket halves and buffers, the answers it
//! still owes, what session state it has, and the future that drives its socket.

use super::*;
use crate::metrics::{GaugeGuard, Metrics, TargetRole};

/// Stop reading a side while this much is queued for the other (backpressure).
pub(super) const HIGH_WATER: usize = 256 * 1024;
/// Bytes reserved before each socket read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Inspected backend messages (ReadyForQuery, errors) larger than this pass uninspected.
pub(super) const INSPECT_LIMIT: usize = 1 << 20;

/// The backend messages the relay reads: transaction status, errors, and the asynchronous
/// messages it may forward while no request is in flight.
pub(super) fn inspected_backend_message(tag: u8) -> bool {
    matches!(
        tag,
        btag::READY_FOR_QUERY
            | btag::ERROR_RESPONSE
            | btag::NOTIFICATION_RESPONSE
            | btag::NOTICE_RESPONSE
            | btag::PARAMETER_STATUS
            | btag::COPY_IN_RESPONSE
    )
}

/// What a forwarded batch has left to learn from its ReadyForQuery.
#[derive(Debug)]
pub(super) struct Pending {
    /// The batch may have written: reads after it must see it.
    pub(super) wrote: bool,
    pub(super) setting: Option<(Setting, Arc<str>)>,
    pub(super) errored: bool,
    /// An autocommit batch on a replica: kept so that, if the replica refuses it as a write
    /// before anything reached the client, it can be re-run on the primary.
    pub(super) retry: Option<Box<Batch>>,
    /// The replica refused it; its answers up to ReadyForQuery are swallowed.
    pub(super) retrying: bool,
    /// Sent with the extended protocol (its Sync is ignored if it starts a COPY FROM).
    pub(super) extended: bool,
    /// It started a COPY FROM: the server ignored its Sync and answers the client's next one.
    pub(super) sync_ignored: bool,
    /// When it was forwarded (for `pgmeridian_batch_duration_seconds`).
    pub(super) sent_at: std::time::Instant,
}

/// A backend connection held by the session.
pub(super) struct BackendSide {
    pub(super) node: Arc<NodeSpec>,
    pub(super) replica_index: Option<usize>,
    pub(super) pid: i32,
    pub(super) key: i32,
    pub(super) r: ReadHalf<Stream>,
    pub(super) w: WriteHalf<Stream>,
    pub(super) inbuf: BytesMut,
    pub(super) outbuf: BytesMut,
    pub(super) scan: Scanner,
    /// One entry per forwarded message answered by ReadyForQuery, oldest first.
    pub(super) pending: std::collections::VecDeque<Pending>,
    /// A batch was forwarded without its Sync yet (after Flush): the next messages belong here.
    pub(super) open_batch: bool,
    /// The last ErrorResponse forwarded to the client was FATAL: the backend is about to
    /// close, and the client has been told why.
    pub(super) sent_fatal: bool,
    /// A FATAL the backend sent while no request was in flight (not forwarded): the connection
    /// is about to close, for this reason. It must not be given more work.
    pub(super) farewell: Option<String>,
    /// Prepared statements this backend has: name → Parse hash.
    pub(super) prepared: std::collections::HashMap<String, u64>,
    /// `Settings::version` this backend has applied.
    pub(super) settings_version: u64,
    /// Answers to a retryable batch, held until it is clear they can be forwarded.
    pub(super) tentative: BytesMut,
    /// Counts this session in the replica's load while the connection lives.
    _load: Option<crate::occupancy::Occupied>,
    /// Counts the connection in `pgmeridian_backend_connections` while it lives.
    _counted: GaugeGuard,
}

impl BackendSide {
    pub(super) fn new(
        conn: BackendConn,
        replica_index: Option<usize>,
        settings_version: u64,
        metrics: &Metrics,
    ) -> BackendSide {
        let (r, w) = tokio::io::split(conn.io.io);
        let role = match replica_index {
            Some(_) => TargetRole::Replica,
            None => TargetRole::Primary,
        };
        BackendSide {
            _load: replica_index.map(|_| crate::occupancy::Occupied::new(&conn.node.sessions)),
            _counted: metrics.backend_connection(&conn.node.cluster, role),
            node: conn.node,
            replica_index,
            pid: conn.pid,
            key: conn.key,
            r,
            w,
            inbuf: conn.io.rbuf,
            outbuf: BytesMut::with_capacity(READ_CHUNK),
            scan: Scanner::new(inspected_backend_message, INSPECT_LIMIT),
            pending: Default::default(),
            open_batch: false,
            sent_fatal: false,
            farewell: None,
            prepared: Default::default(),
            settings_version,
            tentative: BytesMut::new(),
        }
    }

    /// Nothing in flight: no answer owed, nothing unsent, between messages.
    pub(super) fn idle(&self) -> bool {
        self.pending.is_empty()
            && !self.open_batch
            && self.outbuf.is_empty()
            && self.scan.at_boundary()
    }
}

/// What one turn of a backend socket produced.
pub(super) enum SlotEvent {
    Read,
    Wrote,
    Closed(String),
}

/// One backend's socket work: read if allowed, write what is queued.
pub(super) async fn drive(slot: &mut Option<BackendSide>, can_read: bool) -> SlotEvent {
    let Some(b) = slot else {
        return std::future::pending().await;
    };
    let can_read = can_read && b.inbuf.len() < HIGH_WATER;
    b.inbuf.reserve(READ_CHUNK);
    tokio::select! {
        r = b.r.read_buf(&mut b.inbuf), if can_read => match r {
            Ok(0) => SlotEvent::Closed("server closed the connection".into()),
            Ok(_) => SlotEvent::Read,
            Err(e) => SlotEvent::Closed(e.to_string()),
        },
        r = b.w.write(&b.outbuf), if !b.outbuf.is_empty() => match r {
            Ok(n) if n > 0 => {
                b.outbuf.advance(n);
                if b.outbuf.is_empty() {
                    if let Err(e) = b.w.flush().await {
                        return SlotEvent::Closed(e.to_string());
                    }
                }
                SlotEvent::Wrote
            }
            Ok(_) => SlotEvent::Closed("backend stopped accepting data".into()),
            Err(e) => SlotEvent::Closed(e.to_string()),
        },
        else => std::future::pending().await,
    }
}
