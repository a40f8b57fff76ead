//! A session's steady state: groups client messages into batches (`batch.rs`), asks `route`
//! where each goes, brings that backend up to the session's state (settings, prepared
//! statements), forwards the batch, and streams the backend's bytes back, reading only
//! ReadyForQuery and ErrorResponse. Batches to different backends are serialized, so responses
//! never interleave. Row data is never decoded.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::batch::{self, Batch, Settings, Statements};
use super::handshake::Established;
use crate::app::Shared;
use crate::backend::{self, BackendConn};
use crate::cancel::{CancelHandle, CancelTarget};
use crate::classify::{Class, Hint, Setting};
use crate::config::ReadYourWrites;
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{ErrorFields, TxnStatus};
use crate::protocol::encode;
use crate::protocol::frame::{self, FrameError, Scanner, Step};
use crate::protocol::tag::{self, backend as btag};
use crate::route::{self, Decision, Reason, Requirement, RouteInput, SessionRoute, Target};
use crate::stream::Stream;
use crate::topology::{ClusterSpec, NodeSpec, Topology, UserSpec};
use crate::wire;

/// Stop reading a side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Bytes reserved before each socket read.
const READ_CHUNK: usize = 16 * 1024;
/// An unfinished extended-protocol batch is forwarded once it grows past this.
const BATCH_FORWARD_BYTES: usize = 64 * 1024;
/// Inspected backend messages (ReadyForQuery, errors) larger than this pass uninspected.
const INSPECT_LIMIT: usize = 1 << 20;
/// Replica answers held back while a retry on the primary is still possible; past this much
/// (rows are flowing) they are released and the statement is committed to the replica.
const TENTATIVE_LIMIT: usize = 64 * 1024;
/// How long a closing session may spend flushing its last bytes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend messages the relay reads: transaction status, errors, and the asynchronous
/// messages it may forward while no request is in flight.
fn inspected_backend_message(tag: u8) -> bool {
    matches!(
        tag,
        btag::READY_FOR_QUERY
            | btag::ERROR_RESPONSE
            | btag::NOTIFICATION_RESPONSE
            | btag::NOTICE_RESPONSE
            | btag::PARAMETER_STATUS
    )
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientTerminated,
    ClientGone,
    /// The client broke the protocol or a limit; it has been told.
    ClientError(ClientError),
    /// A backend connection the session needed ended; the client has been told.
    BackendGone(String),
    Shutdown,
    IdleTimeout,
}

/// The two backend connections a session may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Primary,
    Replica,
}

/// What a forwarded batch left to learn from its ReadyForQuery.
#[derive(Debug)]
struct Pending {
    /// The batch may have written: reads after it must see it.
    wrote: bool,
    setting: Option<(Setting, Arc<str>)>,
    errored: bool,
    /// An autocommit batch on a replica: kept so that, if the replica refuses it as a write
    /// before anything reached the client, it can be re-run on the primary.
    retry: Option<Box<Batch>>,
    /// The replica refused it; its answers up to ReadyForQuery are swallowed.
    retrying: bool,
}

struct BackendSide {
    node: Arc<NodeSpec>,
    replica_index: Option<usize>,
    pid: i32,
    key: i32,
    r: ReadHalf<Stream>,
    w: WriteHalf<Stream>,
    inbuf: BytesMut,
    outbuf: BytesMut,
    scan: Scanner,
    /// One entry per forwarded message answered by ReadyForQuery, oldest first.
    pending: std::collections::VecDeque<Pending>,
    /// A batch was forwarded without its Sync yet (after Flush): the next messages belong here.
    open_batch: bool,
    /// The last ErrorResponse seen was FATAL: the backend is about to close, and said why.
    sent_fatal: bool,
    /// Prepared statements this backend has: name → Parse hash.
    prepared: std::collections::HashMap<String, u64>,
    /// `Settings::version` this backend has applied.
    settings_version: u64,
    /// Answers to a retryable batch, held until it is clear they can be forwarded.
    tentative: BytesMut,
}

impl BackendSide {
    fn new(conn: BackendConn, replica_index: Option<usize>, settings_version: u64) -> BackendSide {
        let (r, w) = tokio::io::split(conn.io.io);
        BackendSide {
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
            prepared: Default::default(),
            settings_version,
            tentative: BytesMut::new(),
        }
    }

    /// Nothing in flight: no answer owed, nothing unsent, between messages.
    fn idle(&self) -> bool {
        self.pending.is_empty()
            && !self.open_batch
            && self.outbuf.is_empty()
            && self.scan.at_boundary()
    }
}

enum SlotEvent {
    Read,
    Wrote,
    Closed(String),
}

/// One backend's socket work: read if allowed, write what is queued.
async fn drive(slot: &mut Option<BackendSide>, can_read: bool) -> SlotEvent {
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

/// A complete batch that cannot go out yet.
enum Held {
    /// Forward to `slot` once the other backend is idle (and this one, if it needs preparing).
    Forward {
        batch: Batch,
        slot: Slot,
        reason: Reason,
        replica: Option<usize>,
    },
    /// Answer in the proxy once nothing is in flight.
    Answer { reply: LocalReply },
}

enum LocalReply {
    /// `SET pgmeridian.route = …`.
    RouteHint(Hint),
    /// A read refused by `no_eligible_replica: error`.
    Refuse(ClientError),
}

struct Relay<'s> {
    shared: &'s Shared,
    topology: Arc<Topology>,
    cluster: Arc<ClusterSpec>,
    user: Arc<UserSpec>,
    params: Vec<(String, String)>,
    cancel: CancelHandle,
    client_r: ReadHalf<Stream>,
    client_w: WriteHalf<Stream>,
    cin: BytesMut,
    to_client: BytesMut,
    primary: Option<BackendSide>,
    replica: Option<BackendSide>,
    /// The backend with work in flight; batches for the other one wait.
    active: Option<Slot>,
    held: Option<Held>,
    /// A batch that was held when a retry jumped ahead of it.
    held_after_retry: Option<Held>,
    batch: Batch,
    statements: Statements,
    settings: Settings,
    route: SessionRoute,
    /// The open transaction may have written (marks read-your-writes at its end).
    txn_wrote: bool,
    /// The batch in flight may open a transaction: pipelined batches behind it follow it.
    txn_may_be_opening: bool,
    max_message: usize,
    draining: bool,
}

pub async fn run(session: Established, shared: &Shared) -> End {
    let Established {
        client,
        backend,
        cancel,
        user,
        cluster,
        params,
    } = session;
    let topology = shared.topology.load_full();
    let (client_r, client_w) = tokio::io::split(client.io);
    let mut relay = Relay {
        shared,
        max_message: topology.limits.max_message_bytes,
        topology,
        cluster,
        user,
        params,
        cancel,
        client_r,
        client_w,
        cin: client.rbuf,
        to_client: BytesMut::with_capacity(READ_CHUNK),
        primary: Some(BackendSide::new(backend, None, 0)),
        replica: None,
        active: None,
        held: None,
        held_after_retry: None,
        batch: Batch::default(),
        statements: Statements::default(),
        settings: Settings::default(),
        route: SessionRoute::default(),
        txn_wrote: false,
        txn_may_be_opening: false,
        draining: false,
    };
    let idle_timeout = relay.topology.limits.client_idle_timeout;
    let end = relay.run_loop(idle_timeout).await;
    relay.close(&end).await;
    end
}

impl Relay<'_> {
    fn slot(&mut self, s: Slot) -> &mut Option<BackendSide> {
        match s {
            Slot::Primary => &mut self.primary,
            Slot::Replica => &mut self.replica,
        }
    }

    async fn run_loop(&mut self, idle_timeout: Duration) -> End {
        let idle_enabled = !idle_timeout.is_zero();
        let mut idle = pin!(tokio::time::sleep(idle_timeout));
        if let Err(end) = self.on_client_bytes().await {
            return end;
        }
        loop {
            if let Err(end) = self.pump_backends() {
                return end;
            }
            if self.held.is_some() {
                if let Err(end) = self.release_held().await {
                    return end;
                }
                if self.held.is_none() {
                    // Released: go on with the client messages queued behind it.
                    if let Err(end) = self.on_client_bytes().await {
                        return end;
                    }
                    continue;
                }
            }
            if self.draining && self.quiescent() {
                return End::Shutdown;
            }
            self.cin.reserve(READ_CHUNK);
            let quiescent = self.quiescent();
            let outbound = self.primary.as_ref().map_or(0, |b| b.outbuf.len())
                + self.replica.as_ref().map_or(0, |b| b.outbuf.len());
            let read_client = self.held.is_none() && outbound < HIGH_WATER;
            let read_backends = self.to_client.len() < HIGH_WATER;
            tokio::select! {
                r = self.client_r.read_buf(&mut self.cin), if read_client => {
                    match r {
                        Ok(0) | Err(_) => return End::ClientGone,
                        Ok(_) => {
                            if idle_enabled {
                                idle.as_mut().reset(Instant::now() + idle_timeout);
                            }
                            if let Err(end) = self.on_client_bytes().await {
                                return end;
                            }
                        }
                    }
                }
                ev = drive(&mut self.primary, read_backends) => {
                    if let SlotEvent::Closed(reason) = ev {
                        if let Err(end) = self.backend_closed(Slot::Primary, reason) {
                            return end;
                        }
                    }
                }
                ev = drive(&mut self.replica, read_backends) => {
                    if let SlotEvent::Closed(reason) = ev {
                        if let Err(end) = self.backend_closed(Slot::Replica, reason) {
                            return end;
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
                _ = self.shared.drain.cancelled(), if !self.draining => self.draining = true,
                _ = self.shared.hard_stop.cancelled() => return End::Shutdown,
                _ = idle.as_mut(), if idle_enabled && quiescent => return End::IdleTimeout,
            }
        }
    }

    /// Nothing in flight and no transaction open: the session may be closed or moved.
    fn quiescent(&self) -> bool {
        self.route.txn == TxnStatus::Idle
            && self.active.is_none()
            && self.held.is_none()
            && self.batch.is_empty()
            && self.primary.as_ref().is_none_or(BackendSide::idle)
            && self.replica.as_ref().is_none_or(BackendSide::idle)
    }

    async fn on_client_bytes(&mut self) -> Result<(), End> {
        while self.held.is_none() {
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
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                    // COPY data follows its statement to the backend running it.
                    let slot = self.active.unwrap_or(Slot::Primary);
                    if let Some(b) = self.slot(slot).as_mut() {
                        b.outbuf.unsplit(msg);
                    }
                }
                tag::TERMINATE => return Err(End::ClientTerminated),
                _ => {
                    let writes = &self.topology.write_functions;
                    let learned = &self.shared.learned_writes;
                    let step =
                        batch::add(&mut self.batch, &mut self.statements, msg, writes, learned)
                            .map_err(|e| {
                                End::ClientError(ClientError::fatal(
                                    sqlstate::PROTOCOL_VIOLATION,
                                    e,
                                ))
                            })?;
                    if step == batch::Step::Send {
                        self.dispatch().await?;
                    }
                }
            }
        }
        if self.held.is_none() && self.batch.bytes.len() >= BATCH_FORWARD_BYTES {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// Routes the batch built so far, then forwards it (or holds it until it can go).
    async fn dispatch(&mut self) -> Result<(), End> {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        let class = batch.class.clone().unwrap_or(Class::Empty);
        let held = if let (Class::RouteHint(h), true) = (&class, batch.simple_query) {
            Held::Answer {
                reply: LocalReply::RouteHint(*h),
            }
        } else if let Some(slot) = self.bound_slot() {
            let replica = self
                .replica
                .as_ref()
                .and_then(|b| b.replica_index)
                .filter(|_| slot == Slot::Replica);
            Held::Forward {
                batch,
                slot,
                reason: Reason::InTransaction,
                replica,
            }
        } else {
            match self.decide(&class, batch.hint) {
                Ok((Target::Primary, reason)) => Held::Forward {
                    batch,
                    slot: Slot::Primary,
                    reason,
                    replica: None,
                },
                Ok((Target::Replica(i), reason)) => Held::Forward {
                    batch,
                    slot: Slot::Replica,
                    reason,
                    replica: Some(i),
                },
                Err(e) if batch.completes => Held::Answer {
                    reply: LocalReply::Refuse(e),
                },
                Err(_) => Held::Forward {
                    batch,
                    slot: Slot::Primary,
                    reason: Reason::NoReplicaFallback,
                    replica: None,
                },
            }
        };
        self.held = Some(held);
        self.release_held().await
    }

    /// The backend a batch must follow whatever its class: the rest of a batch whose first
    /// part went out before a Flush, or an open transaction.
    fn bound_slot(&self) -> Option<Slot> {
        if self.primary.as_ref().is_some_and(|b| b.open_batch) {
            return Some(Slot::Primary);
        }
        if self.replica.as_ref().is_some_and(|b| b.open_batch) {
            return Some(Slot::Replica);
        }
        if self.route.txn != TxnStatus::Idle {
            return Some(match self.route.txn_target {
                Some(Target::Replica(_)) => Slot::Replica,
                _ => Slot::Primary,
            });
        }
        // Pipelined batches after a transaction-opening batch whose answer has not come yet.
        self.active.filter(|_| self.txn_may_be_opening)
    }

    fn decide(
        &mut self,
        class: &Class,
        hint: Option<Hint>,
    ) -> Result<(Target, Reason), ClientError> {
        let health = self.shared.health.load();
        let cluster_health = health.clusters.get(&self.cluster.name).cloned();
        if let Some(h) = &cluster_health {
            self.route.requirement = self.route.requirement.resolve(&h.primary_samples);
        }
        let input = RouteInput {
            class,
            hint,
            session: &self.route,
            cluster: &self.cluster,
            health: cluster_health.as_deref(),
            policy: &self.topology.routing,
            location: self.topology.location,
            now: std::time::Instant::now(),
        };
        match route::decide(&input) {
            Decision::Route { target, reason } => Ok((target, reason)),
            Decision::Refuse(reason) => Err(ClientError {
                fatal: false,
                code: sqlstate::CANNOT_CONNECT_NOW.into(),
                message: format!("no replica of cluster \"{}\" can serve this read ({})", self.cluster.name, reason.as_str()),
                detail: None,
                hint: Some("routing.no_eligible_replica is `error`; a replica must be up and within routing.max_replica_lag".into()),
            }),
        }
    }

    /// Sends the held batch if nothing blocks it now.
    async fn release_held(&mut self) -> Result<(), End> {
        match &self.held {
            None => return Ok(()),
            Some(Held::Answer { .. }) => {
                if self.active.is_some() {
                    return Ok(());
                }
                let Some(Held::Answer { reply, .. }) = self.held.take() else {
                    return Ok(());
                };
                match reply {
                    LocalReply::RouteHint(h) => {
                        self.route.route_override = Some(h);
                        self.to_client.extend_from_slice(b"C\0\0\0\x08SET\0");
                    }
                    LocalReply::Refuse(e) => e.encode(&mut self.to_client),
                }
                encode::ready_for_query(&mut self.to_client, self.route.txn);
                return Ok(());
            }
            Some(Held::Forward {
                slot,
                replica,
                batch,
                ..
            }) => {
                let slot = *slot;
                if self.active.is_some_and(|a| a != slot) {
                    return Ok(());
                }
                let switching_replica = slot == Slot::Replica
                    && self
                        .replica
                        .as_ref()
                        .is_some_and(|b| b.replica_index != *replica);
                let needs_prep = switching_replica || self.needs_prep(slot, batch);
                if needs_prep && self.slot_ref(slot).is_some_and(|b| !b.idle()) {
                    return Ok(());
                }
            }
        }
        let Some(Held::Forward {
            batch,
            slot,
            reason,
            replica,
        }) = self.held.take()
        else {
            return Ok(());
        };
        let (slot, reason) = match self.ensure_connected(slot, replica).await {
            Ok(()) => (slot, reason),
            Err(e) if slot == Slot::Replica && self.route.txn == TxnStatus::Idle => {
                tracing::warn!(error = %e, "replica unavailable; serving from the primary");
                match self.ensure_connected(Slot::Primary, None).await {
                    Ok(()) => (Slot::Primary, Reason::NoReplicaFallback),
                    Err(e) => return Err(self.fail(e)),
                }
            }
            Err(e) => return Err(self.fail(e)),
        };
        if slot == Slot::Primary && self.active == Some(Slot::Replica) {
            // Fell back while the replica is busy: wait for it like any other switch.
            self.held = Some(Held::Forward {
                batch,
                slot,
                reason,
                replica: None,
            });
            return Ok(());
        }
        self.prepare(slot, &batch).await?;
        self.send(slot, batch, reason);
        if self.held.is_none() {
            self.held = self.held_after_retry.take();
        }
        Ok(())
    }

    fn slot_ref(&self, s: Slot) -> Option<&BackendSide> {
        match s {
            Slot::Primary => self.primary.as_ref(),
            Slot::Replica => self.replica.as_ref(),
        }
    }

    /// The backend lacks session settings or statements the batch needs.
    fn needs_prep(&self, slot: Slot, batch: &Batch) -> bool {
        let Some(b) = self.slot_ref(slot) else {
            return true;
        };
        b.settings_version != self.settings.version
            || batch.uses.iter().any(|n| match self.statements.get(n) {
                Some(st) => b.prepared.get(n) != Some(&st.hash),
                None => false,
            })
            || batch
                .parses
                .iter()
                .any(|(n, _)| !n.is_empty() && b.prepared.contains_key(n))
    }

    /// Opens the slot's connection if needed (the right replica), failing with a client error.
    async fn ensure_connected(
        &mut self,
        slot: Slot,
        replica: Option<usize>,
    ) -> Result<(), ClientError> {
        if slot == Slot::Replica {
            if let Some(b) = &self.replica {
                if b.replica_index != replica {
                    // Only reached when it is idle: retire the old replica connection.
                    if let Some(mut old) = self.replica.take() {
                        let _ = old.w.write_all(b"X\0\0\0\x04").await;
                    }
                }
            }
        }
        if self.slot_ref(slot).is_some() {
            return Ok(());
        }
        let node = match (slot, replica) {
            (Slot::Primary, _) => self.cluster.primary.clone(),
            (Slot::Replica, Some(i)) => match self.cluster.replicas.get(i) {
                Some(n) => n.clone(),
                None => {
                    return Err(ClientError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "replica no longer configured",
                    ))
                }
            },
            (Slot::Replica, None) => {
                return Err(ClientError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    "no replica chosen",
                ))
            }
        };
        let conn = backend::connect(
            &node,
            &self.user,
            &self.params,
            self.topology.limits.connect_timeout,
        )
        .await
        .map_err(|e| e.to_client())?;
        tracing::debug!(node = %node, "opened backend connection");
        *self.slot(slot) = Some(BackendSide::new(conn, replica, 0));
        Ok(())
    }

    /// Brings the backend up to the session's settings and the statements the batch uses.
    /// Runs only when that backend is idle; its answers are not forwarded.
    async fn prepare(&mut self, slot: Slot, batch: &Batch) -> Result<(), End> {
        if !self.needs_prep(slot, batch) {
            return Ok(());
        }
        let replay = self.settings.replay_sql();
        let version = self.settings.version;
        let mut statements_req = BytesMut::new();
        let mut installed = Vec::new();
        {
            let Some(b) = self.slot_ref(slot) else {
                return Ok(());
            };
            for name in &batch.uses {
                let Some(st) = self.statements.get(name) else {
                    continue;
                };
                if b.prepared.get(name) == Some(&st.hash) {
                    continue;
                }
                if !name.is_empty() && b.prepared.contains_key(name) {
                    let _ = frontend::close(b'S', name, &mut statements_req);
                }
                statements_req.extend_from_slice(&st.parse);
                installed.push((name.clone(), st.hash));
            }
            for (name, _) in &batch.parses {
                if !name.is_empty() && b.prepared.contains_key(name) {
                    let _ = frontend::close(b'S', name, &mut statements_req);
                }
            }
        }
        let Some(b) = self.slot(slot).as_mut() else {
            return Ok(());
        };
        if b.settings_version != version {
            let mut req = BytesMut::new();
            let _ = frontend::query(&replay, &mut req);
            let answer = wire::exchange_split(&mut b.r, &mut b.w, &mut b.inbuf, &req).await;
            match answer {
                Ok(msgs) => {
                    if let Some(e) = msgs.iter().find(|m| m[0] == b'E') {
                        tracing::warn!(node = %b.node, error = ?ErrorFields::parse(frame::body(e)), "replaying session settings failed");
                    }
                    b.settings_version = version;
                }
                Err(e) => {
                    let reason = e.to_string();
                    return Err(self
                        .backend_closed(slot, reason)
                        .err()
                        .unwrap_or(End::BackendGone("lost during state replay".into())));
                }
            }
        }
        let Some(b) = self.slot(slot).as_mut() else {
            return Ok(());
        };
        if !statements_req.is_empty() {
            frontend::sync(&mut statements_req);
            match wire::exchange_split(&mut b.r, &mut b.w, &mut b.inbuf, &statements_req).await {
                Ok(msgs) => {
                    if let Some(e) = msgs.iter().find(|m| m[0] == b'E') {
                        tracing::warn!(node = %b.node, error = ?ErrorFields::parse(frame::body(e)), "re-preparing statements failed");
                    } else {
                        for (name, hash) in installed {
                            b.prepared.insert(name, hash);
                        }
                    }
                    for (name, _) in &batch.parses {
                        b.prepared.remove(name);
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    return Err(self
                        .backend_closed(slot, reason)
                        .err()
                        .unwrap_or(End::BackendGone("lost while preparing".into())));
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, slot: Slot, batch: Batch, reason: Reason) {
        let class = batch.class.clone().unwrap_or(Class::Empty);
        if matches!(class, Class::Pin(_)) {
            self.route.pinned = true;
        }
        let wrote = matches!(class, Class::Write | Class::Unknown | Class::Pin(_));
        let opens_txn = matches!(
            class,
            Class::Begin { .. } | Class::Write | Class::Unknown | Class::Pin(_)
        );
        let autocommit = self.route.txn == TxnStatus::Idle && !self.txn_may_be_opening;
        let Some(b) = self.slot(slot).as_mut() else {
            return;
        };
        let retry = (slot == Slot::Replica
            && autocommit
            && batch.completes
            && !b.open_batch
            && b.pending.is_empty()
            && !matches!(class, Class::Begin { .. }))
        .then(|| Box::new(batch.clone()));
        tracing::debug!(reason = reason.as_str(), node = %b.node, bytes = batch.bytes.len(), "routed batch");
        for (name, hash) in &batch.parses {
            b.prepared.insert(name.clone(), *hash);
        }
        for name in &batch.closes {
            b.prepared.remove(name);
        }
        if batch.simple_query {
            b.prepared.remove("");
        }
        b.outbuf.unsplit(batch.bytes);
        if batch.completes {
            b.pending.push_back(Pending {
                wrote,
                setting: batch.setting,
                errored: false,
                retry,
                retrying: false,
            });
            b.open_batch = false;
        } else {
            b.open_batch = true;
        }
        let target = CancelTarget {
            node: b.node.clone(),
            pid: b.pid,
            key: b.key,
        };
        self.cancel.set_target(target);
        self.active = Some(slot);
        self.txn_may_be_opening = opens_txn;
    }

    /// Moves backend bytes to the client. Only the active backend (or, with nothing in flight,
    /// either one) is read, so responses from the two never interleave.
    fn pump_backends(&mut self) -> Result<(), End> {
        for slot in [Slot::Primary, Slot::Replica] {
            if self.active.is_some_and(|a| a != slot) {
                continue;
            }
            self.pump(slot)?;
            if self.active == Some(slot) && self.slot_ref(slot).is_some_and(BackendSide::idle) {
                self.active = None;
                self.txn_may_be_opening = false;
            }
        }
        Ok(())
    }

    fn pump(&mut self, slot: Slot) -> Result<(), End> {
        loop {
            let Some(b) = self.slot(slot).as_mut() else {
                return Ok(());
            };
            let solicited = !b.pending.is_empty() || b.open_batch || !b.scan.at_boundary();
            let step = match b.scan.step(&b.inbuf) {
                Ok(step) => step,
                Err(e) => {
                    let reason = format!("invalid data from backend: {e}");
                    return self.backend_closed(slot, reason);
                }
            };
            let b = match slot {
                Slot::Primary => self.primary.as_mut(),
                Slot::Replica => self.replica.as_mut(),
            };
            let Some(b) = b else { return Ok(()) };
            match step {
                Step::NeedMore(total) => {
                    b.inbuf.reserve(total.saturating_sub(b.inbuf.len()));
                    return Ok(());
                }
                Step::Forward(n) if !solicited => b.inbuf.advance(n),
                Step::Forward(n) if b.pending.front().is_some_and(|p| p.retry.is_some()) => {
                    b.tentative.extend_from_slice(&b.inbuf[..n]);
                    b.inbuf.advance(n);
                    if b.tentative.len() > TENTATIVE_LIMIT {
                        // Rows are flowing: this statement stays on the replica.
                        if let Some(p) = b.pending.front_mut() {
                            p.retry = None;
                        }
                        self.to_client.unsplit(b.tentative.split());
                    }
                }
                Step::Forward(n) if self.to_client.is_empty() && n == b.inbuf.len() => {
                    // Bulk rows: hand the whole buffer over instead of copying it.
                    std::mem::swap(&mut self.to_client, &mut b.inbuf);
                }
                Step::Forward(n) => {
                    self.to_client.extend_from_slice(&b.inbuf[..n]);
                    b.inbuf.advance(n);
                }
                Step::Inspect(header) => {
                    let msg = b.inbuf.split_to(header.total_len);
                    self.on_backend_message(slot, solicited, &msg);
                }
            }
        }
    }

    fn on_backend_message(&mut self, slot: Slot, solicited: bool, msg: &[u8]) {
        let tag = msg[0];
        let body = frame::body(msg);
        let b = match slot {
            Slot::Primary => self.primary.as_mut(),
            Slot::Replica => self.replica.as_mut(),
        };
        let Some(b) = b else { return };
        let tentative = b.pending.front().is_some_and(|p| p.retry.is_some());
        match tag {
            btag::ERROR_RESPONSE => {
                let fields = ErrorFields::parse(body);
                b.sent_fatal = fields.as_ref().is_some_and(ErrorFields::is_fatal);
                if !solicited {
                    tracing::debug!(node = %b.node, error = ?fields, "unsolicited error from an idle backend");
                    return;
                }
                let refused_write = fields
                    .as_ref()
                    .is_some_and(|f| f.code == "25006" || f.message.contains("during recovery"));
                let alone = b.pending.len() == 1 && b.outbuf.is_empty();
                if let Some(p) = b.pending.front_mut() {
                    p.errored = true;
                    if tentative && refused_write && alone {
                        tracing::info!(node = %b.node, error = ?fields, "replica refused a statement as a write; re-running it on the primary");
                        p.retrying = true;
                        b.tentative.clear();
                        return;
                    }
                }
            }
            btag::READY_FOR_QUERY if solicited => {
                let status = TxnStatus::from_ready_body(body).unwrap_or_default();
                let pending = b.pending.pop_front();
                if let Some(p) = pending.as_ref().filter(|p| p.retrying) {
                    let retry = p.retry.clone();
                    if let Some(batch) = retry {
                        for shape in &batch.shapes {
                            self.shared.learned_writes.learn(*shape);
                        }
                        self.held_after_retry = self.held.take();
                        self.held = Some(Held::Forward {
                            batch: *batch,
                            slot: Slot::Primary,
                            reason: Reason::ReadonlyRetry,
                            replica: None,
                        });
                    }
                    return;
                }
                self.to_client.unsplit(b.tentative.split());
                self.to_client.extend_from_slice(msg);
                self.on_ready(slot, status, pending);
                return;
            }
            btag::READY_FOR_QUERY => return,
            _ => {}
        }
        if tentative {
            b.tentative.extend_from_slice(msg);
        } else {
            self.to_client.extend_from_slice(msg);
        }
    }

    /// A ReadyForQuery from `slot`: transaction state, read-your-writes and settings bookkeeping.
    fn on_ready(&mut self, slot: Slot, status: TxnStatus, pending: Option<Pending>) {
        let before = self.route.txn;
        self.route.txn = status;
        let Some(p) = pending else { return };
        let target = match slot {
            Slot::Primary => Target::Primary,
            Slot::Replica => Target::Replica(
                self.replica
                    .as_ref()
                    .and_then(|b| b.replica_index)
                    .unwrap_or(0),
            ),
        };
        match status {
            TxnStatus::Idle => {
                if slot == Slot::Primary && (p.wrote || self.txn_wrote) {
                    self.after_write();
                }
                self.txn_wrote = false;
                self.route.txn_target = None;
                if let Some((setting, sql)) = p.setting.filter(|_| !p.errored) {
                    if before == TxnStatus::Idle {
                        self.record_setting(slot, &setting, &sql);
                    } else {
                        // A setting made inside a transaction cannot be replayed faithfully.
                        self.route.pinned = true;
                    }
                }
            }
            TxnStatus::InTransaction | TxnStatus::Failed => {
                self.route.txn_target = Some(target);
                self.txn_wrote |= p.wrote;
                if p.setting.is_some() {
                    self.route.pinned = true;
                }
            }
        }
    }

    fn record_setting(&mut self, slot: Slot, setting: &Setting, sql: &Arc<str>) {
        self.settings.apply(setting, sql);
        match setting {
            Setting::Set { name, value } if name == "default_transaction_read_only" => {
                let v = value.trim_matches('\'').to_ascii_lowercase();
                self.route.default_read_only = matches!(v.as_str(), "on" | "true" | "yes" | "1");
            }
            Setting::Reset { name } if name == "default_transaction_read_only" => {
                self.route.default_read_only = false
            }
            Setting::ResetAll | Setting::DiscardAll => self.route.default_read_only = false,
            _ => {}
        }
        let version = self.settings.version;
        if let Some(b) = self.slot(slot).as_mut() {
            b.settings_version = version;
            if matches!(setting, Setting::DiscardAll) {
                b.prepared.clear();
            }
        }
    }

    /// The session's write committed on the primary: later reads must see it.
    fn after_write(&mut self) {
        let now = std::time::Instant::now();
        self.route.requirement = match self.topology.routing.read_your_writes {
            ReadYourWrites::Lsn => Requirement::AwaitingSample(now),
            ReadYourWrites::Window => {
                let health = self.shared.health.load();
                let lag = health
                    .clusters
                    .get(&self.cluster.name)
                    .map(|c| {
                        c.replicas
                            .iter()
                            .filter_map(|r| r.lag)
                            .max()
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                Requirement::Until(now + route::window_after_write(&self.topology.routing, lag))
            }
            ReadYourWrites::Off => Requirement::None,
        };
    }

    /// A backend connection ended. If the session needed it, the client is told (08006 unless
    /// the server already sent its own FATAL) and the session ends; an idle one is just dropped.
    fn backend_closed(&mut self, slot: Slot, reason: String) -> Result<(), End> {
        let needed = self.active == Some(slot)
            || self.route.txn != TxnStatus::Idle && self.bound_slot() == Some(slot)
            || self.slot_ref(slot).is_some_and(|b| !b.idle())
            || (slot == Slot::Primary && self.route.pinned);
        let Some(b) = self.slot(slot).take() else {
            return Ok(());
        };
        if !needed {
            tracing::debug!(node = %b.node, %reason, "idle backend connection closed; will reconnect when needed");
            if self.active == Some(slot) {
                self.active = None;
            }
            return Ok(());
        }
        if !b.sent_fatal {
            ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("lost the connection to backend {}: {reason}", b.node),
            )
            .with_hint(
                "the statement in progress may or may not have completed; reconnect and check",
            )
            .encode(&mut self.to_client);
        }
        Err(End::BackendGone(reason))
    }

    fn fail(&mut self, e: ClientError) -> End {
        End::ClientError(e)
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
        for b in [self.primary.as_mut(), self.replica.as_mut()]
            .into_iter()
            .flatten()
        {
            let goodbye = async {
                let _ = b.w.write_all(b"X\0\0\0\x04").await;
                let _ = b.w.shutdown().await;
            };
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, goodbye).await;
        }
    }
}
