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
use crate::health::PrimaryView;
use crate::protocol::backend::{ErrorFields, TxnStatus};
use crate::protocol::encode;
use crate::protocol::frame::{self, FrameError, Scanner, Step};
use crate::protocol::tag::{self, backend as btag};
use crate::route::{self, Decision, Reason, Requirement, RouteInput, SessionRoute, Target};
use crate::stream::Stream;
use crate::topology::{ClusterSpec, NodeSpec, Topology, UserSpec};
use crate::wire;

/// An unfinished extended-protocol batch is forwarded once it grows past this.
const BATCH_FORWARD_BYTES: usize = 64 * 1024;
/// Replica answers held back while a retry on the primary is still possible; past this much
/// (rows are flowing) they are released and the statement is committed to the replica.
const TENTATIVE_LIMIT: usize = 64 * 1024;
/// How long a closing session may spend flushing its last bytes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

mod answers;
mod backend_side;
mod decide;
mod observe;
mod prepare;

use backend_side::*;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Primary,
    Replica,
}

impl Slot {
    /// The metric label for what this slot connects to.
    fn role(self) -> crate::metrics::TargetRole {
        match self {
            Slot::Primary => crate::metrics::TargetRole::Primary,
            Slot::Replica => crate::metrics::TargetRole::Replica,
        }
    }
}

/// A complete batch that cannot go out yet. (One per session at most: its size is no concern.)
#[allow(clippy::large_enum_variant)]
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
    /// Where this client is, for ranking replicas.
    location: crate::geo::ClientLocation,
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
    /// `pgmeridian_routed_batches_total` handles this session has used.
    /// Keyed by slot, reason and node address (the entry holds the node, so the address is not
    /// reused while cached).
    routed_counters:
        std::collections::HashMap<(Slot, Reason, usize), (Arc<NodeSpec>, prometheus::IntCounter)>,
    /// The batch in flight may open a transaction: pipelined batches behind it follow it.
    txn_may_be_opening: bool,
    max_message: usize,
    draining: bool,
    /// Counts the session in `pgmeridian_pinned_sessions` once `route.pinned` is set.
    pin_gauge: Option<crate::metrics::GaugeGuard>,
    /// The read-your-writes pin being measured.
    write_pin: observe::WritePin,
}

pub async fn run(session: Established, shared: &Shared) -> End {
    let Established {
        client,
        backend,
        login_replica,
        cancel,
        user,
        cluster,
        params,
        location,
        topology,
    } = session;
    let (primary, replica) = match login_replica {
        None => (
            Some(BackendSide::new(backend, None, 0, &shared.metrics)),
            None,
        ),
        Some(i) => (
            None,
            Some(BackendSide::new(backend, Some(i), 0, &shared.metrics)),
        ),
    };
    let (client_r, client_w) = tokio::io::split(client.io);
    let mut relay = Relay {
        shared,
        location,
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
        primary,
        replica,
        active: None,
        held: None,
        held_after_retry: None,
        batch: Batch::default(),
        statements: Statements::default(),
        settings: Settings::default(),
        route: SessionRoute::default(),
        txn_wrote: false,
        routed_counters: Default::default(),
        txn_may_be_opening: false,
        draining: false,
        pin_gauge: None,
        write_pin: Default::default(),
    };
    let idle_timeout = relay.topology.limits.client_idle_timeout;
    let end = relay.run_loop(idle_timeout).await;
    relay.count_end(&end);
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

    fn slot_ref(&self, s: Slot) -> Option<&BackendSide> {
        match s {
            Slot::Primary => self.primary.as_ref(),
            Slot::Replica => self.replica.as_ref(),
        }
    }

    async fn run_loop(&mut self, idle_timeout: Duration) -> End {
        let idle_enabled = !idle_timeout.is_zero();
        let mut idle = pin!(tokio::time::sleep(idle_timeout));
        // Registered once for the session, not once per turn of the loop.
        let shared = self.shared;
        let mut drain = pin!(shared.drain.cancelled());
        let mut hard_stop = pin!(shared.hard_stop.cancelled());
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
                _ = drain.as_mut(), if !self.draining => self.draining = true,
                _ = hard_stop.as_mut() => return End::Shutdown,
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
        let mut class = batch.class.clone().unwrap_or(Class::Empty);
        if !batch.completes {
            // Its Bind/Execute will follow it to the same backend: route by what it prepares,
            // and send a batch split only by its size to the primary.
            if let Some(parsed) = &batch.parse_class {
                class = batch::combine(class, parsed);
            }
            if batch.bytes.len() >= BATCH_FORWARD_BYTES {
                class = Class::Write;
            }
        }
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
            self.follow_topology().await?;
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
                    LocalReply::Refuse(e) => {
                        self.count_error(e.kind);
                        e.encode(&mut self.to_client);
                    }
                }
                encode::ready_for_query(&mut self.to_client, self.route.txn);
                self.held = self.held_after_retry.take();
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
                let continuing = self.slot_ref(slot).is_some_and(|b| b.open_batch);
                let switching_replica = slot == Slot::Replica
                    && self
                        .replica
                        .as_ref()
                        .is_some_and(|b| b.replica_index != *replica);
                let needs_prep = !continuing && (switching_replica || self.needs_prep(slot, batch));
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
                    Ok(()) => (Slot::Primary, Reason::UnhealthyExcluded),
                    Err(e) => return self.answer_instead(batch, e),
                }
            }
            Err(e) => return self.answer_instead(batch, e),
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
        let continuing = self.slot_ref(slot).is_some_and(|b| b.open_batch);
        if !continuing && !self.prepare(slot, &batch).await? {
            // The session's settings could not be replayed there: the primary, for good.
            self.pin();
            if slot == Slot::Replica {
                self.held = Some(Held::Forward {
                    batch,
                    slot: Slot::Primary,
                    reason: Reason::StickySessionFeature,
                    replica: None,
                });
                return Ok(());
            }
        }
        self.send(slot, batch, reason);
        if self.held.is_none() {
            self.held = self.held_after_retry.take();
        }
        Ok(())
    }

    fn send(&mut self, slot: Slot, batch: Batch, reason: Reason) {
        let target = slot.role().as_str();
        // Label lookups hash strings: resolve each (node, reason) once per session.
        let (shared, cluster, geo) = (self.shared, &self.cluster.name, self.location.source);
        if let Some(node) = self.slot_ref(slot).map(|b| b.node.clone()) {
            self.routed_counters
                .entry((slot, reason, Arc::as_ptr(&node) as usize))
                .or_insert_with(|| {
                    let counter = shared.metrics.routed.with_label_values(&[
                        cluster.as_str(),
                        target,
                        node.label(),
                        reason.as_str(),
                        geo.as_str(),
                    ]);
                    // Holding the node keeps its address from being reused by another.
                    (node.clone(), counter)
                })
                .1
                .inc();
            self.observe_routed(slot, reason, &node);
        }
        let class = batch.class.clone().unwrap_or(Class::Empty);
        if matches!(class, Class::Pin(_)) {
            self.pin();
        }
        let wrote = matches!(class, Class::Write | Class::Unknown | Class::Pin(_));
        let opens_txn = matches!(
            class,
            Class::Begin { .. } | Class::Write | Class::Unknown | Class::Pin(_)
        );
        let autocommit = self.route.txn == TxnStatus::Idle && !self.txn_may_be_opening;
        if let Some(which) = &batch.deallocate {
            self.statements.drop_named(which);
        }
        let b = match slot {
            Slot::Primary => self.primary.as_mut(),
            Slot::Replica => self.replica.as_mut(),
        };
        let Some(b) = b else {
            return;
        };
        let retry = (slot == Slot::Replica
            && autocommit
            && batch.completes
            && !b.open_batch
            && b.pending.is_empty()
            && !matches!(class, Class::Begin { .. }))
        .then(|| Box::new(batch.clone()));
        for (name, op) in &batch.statement_ops {
            match op {
                Some(hash) => b.prepared.insert(name.clone(), *hash),
                None => b.prepared.remove(name),
            };
        }
        if batch.simple_query {
            b.prepared.remove("");
        }
        if let Some(which) = &batch.deallocate {
            match which {
                None => b.prepared.clear(),
                Some(name) => {
                    b.prepared.remove(name);
                }
            }
        }
        // Another batch behind a retryable one: its answers can no longer be replaced, so they
        // go out now, in order.
        if let Some(front) = b.pending.front_mut().filter(|p| p.retry.is_some()) {
            front.retry = None;
            self.to_client.unsplit(b.tentative.split());
        }
        b.outbuf.unsplit(batch.bytes);
        // libpq ends an extended-protocol COPY FROM with CopyDone then another Sync; the
        // server ignored the first Sync (sent during copy-in), so only this one is answered.
        let answers_earlier = batch.completes
            && batch.extended
            && match b.pending.iter_mut().find(|p| p.sync_ignored) {
                Some(p) => {
                    p.sync_ignored = false;
                    true
                }
                None => false,
            };
        if !batch.completes {
            b.open_batch = true;
        } else {
            b.open_batch = false;
            if !answers_earlier {
                b.pending.push_back(Pending {
                    wrote,
                    setting: batch.setting,
                    errored: false,
                    retry,
                    retrying: false,
                    extended: batch.extended,
                    sync_ignored: false,
                    sent_at: std::time::Instant::now(),
                });
            }
        }
        let target = CancelTarget {
            node: b.node.clone(),
            pid: b.pid,
            key: b.key,
        };
        self.cancel.set_target(target);
        self.active = Some(slot);
        self.txn_may_be_opening |= opens_txn;
    }

    /// A batch that cannot be served: outside a transaction, a complete batch is answered
    /// with the error and ReadyForQuery and the session goes on; otherwise the session ends.
    fn answer_instead(&mut self, batch: Batch, mut e: ClientError) -> Result<(), End> {
        if batch.completes && self.route.txn == TxnStatus::Idle && self.active.is_none() {
            e.fatal = false;
            tracing::info!(code = %e.code, message = %e.message, "batch refused");
            self.count_error(e.kind);
            e.encode(&mut self.to_client);
            encode::ready_for_query(&mut self.to_client, TxnStatus::Idle);
            if self.held.is_none() {
                self.held = self.held_after_retry.take();
            }
            return Ok(());
        }
        e.fatal = true;
        Err(End::ClientError(e))
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
