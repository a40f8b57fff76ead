//! From client bytes to a routed batch: framing, batching, asking `route::decide` with the
//! session's and cluster's state, holding a batch until its connection is free and leased,
//! following a reload between transactions, and the answers the proxy gives itself.

use std::sync::Arc;

use super::*;
use crate::classify::{Class, Hint};
use crate::error::{sqlstate, ErrorKind};
use crate::health::PrimaryView;
use crate::protocol::backend::TxnStatus;
use crate::protocol::encode;
use crate::protocol::frame::{self, FrameError};
use crate::protocol::tag;
use crate::route::{self, Decision, RouteInput, Target};

use super::super::batch;

/// What a client is told when a batch cannot be routed; the session goes on.
pub(super) fn refusal(cluster: &str, reason: Reason) -> ClientError {
    match reason {
        Reason::NoPrimary => ClientError::error(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("cluster \"{cluster}\" has no reachable primary; writes are refused until one is back"),
        )
        .with_hint("reads continue on replicas; a promoted replica is followed automatically")
        .with_kind(ErrorKind::RefusedNoPrimary),
        Reason::PrimaryConflict => ClientError::error(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("more than one node of cluster \"{cluster}\" claims to be the primary; writes are refused until that resolves"),
        )
        .with_kind(ErrorKind::RefusedConflict),
        other => ClientError::error(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("no replica of cluster \"{cluster}\" can serve this read ({})", other.as_str()),
        )
        .with_hint("routing.no_eligible_replica is `error`; a replica must be up and within routing.max_replica_lag")
        .with_kind(ErrorKind::RefusedNoReplica),
    }
}

impl Engine {
    /// Reads the client's complete messages into batches and sends or holds them.
    pub fn on_client_input(&mut self, b: &mut Buffers, env: &Env) {
        while self.held.is_none() && self.end.is_none() {
            let msg = match frame::split_client_message(&mut b.client_in, self.max_message) {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e @ FrameError::TooLarge { .. }) => {
                    self.end_with(ClientError::fatal(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        e.to_string(),
                    ));
                    return;
                }
                Err(e) => {
                    self.end_with(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ));
                    return;
                }
            };
            match msg[0] {
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                    // COPY data follows its statement to the connection running it.
                    let slot = Slot::ALL
                        .into_iter()
                        .find(|&s| self.server(s).is_some_and(|srv| srv.owed.copy_in))
                        .or(self.active)
                        .unwrap_or(Slot::Primary);
                    if self.server(slot).is_some() {
                        b.server_out[slot.index()].unsplit(msg);
                    }
                }
                tag::TERMINATE => {
                    self.end = Some(End::ClientTerminated);
                    return;
                }
                _ => {
                    self.follow_catalog(env);
                    let writes = match &self.functions {
                        Some((_, _, Some(w))) => w,
                        _ => &self.topology.write_functions,
                    };
                    let ctx = batch::Ctx {
                        writes,
                        learned: env.learned,
                        max_statements: MAX_SESSION_STATEMENTS,
                        encoding: self.client_encoding,
                        user: &self.user.name,
                        epoch: self.classify_epoch,
                    };
                    match batch::add(&mut self.batch, &mut self.statements, msg, &ctx) {
                        Ok(batch::Step::Send) => self.dispatch(b, env),
                        Ok(batch::Step::Continue) => {}
                        Err(e) => {
                            self.end_with(ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, e));
                            return;
                        }
                    }
                }
            }
        }
        if self.held.is_none() && self.end.is_none() && self.batch.len >= BATCH_FORWARD_BYTES {
            self.dispatch(b, env);
        }
    }

    /// The client has sent all it has for now, in the middle of a batch (libpq pipeline mode
    /// sends no Sync or Flush until it wants to): PostgreSQL would run what it got, so the
    /// partial batch goes out now; the rest follows it to the same connection.
    pub fn flush_partial(&mut self, b: &mut Buffers, env: &Env) {
        if self.held.is_none() && self.end.is_none() && !self.batch.is_empty() {
            self.dispatch(b, env);
        }
    }

    /// A batch is half built and waits for the client's next message.
    pub fn has_partial_batch(&self) -> bool {
        !self.batch.is_empty() && self.held.is_none()
    }

    pub(super) fn end_with(&mut self, e: ClientError) {
        if self.end.is_none() {
            self.end = Some(End::ClientError(e));
        }
    }

    /// Routes the batch built so far, then sends it (or holds it until it can go).
    fn dispatch(&mut self, b: &mut Buffers, env: &Env) {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return;
        }
        if self.skip_to_sync {
            // An error ended this extended batch early: like PostgreSQL, the rest is skipped
            // and its Sync gets ReadyForQuery.
            if batch.completes {
                self.skip_to_sync = false;
                self.held = Some(Held::Answer {
                    reply: LocalReply::Ready,
                });
                self.release_held(b, env);
            }
            return;
        }
        let mut class = batch.class.clone().unwrap_or(Class::Empty);
        if !batch.completes && !batch.inert {
            // Part of a batch goes out before its Sync (a Flush, a pause of the client, its
            // size): the rest follows it to the same backend, and what the rest does is not
            // known yet (a write may follow a read), so it goes to the primary.
            class = Class::Write;
        }
        if let Some(text) = batch.causal_token.clone() {
            if let Err(e) = self.present_token(&text, env) {
                // The statement does not run: its hint was not one the proxy can follow. In
                // a batch without its Sync yet, the rest of it is skipped until that Sync.
                let reply = if batch.completes {
                    LocalReply::Refuse(e)
                } else {
                    self.skip_to_sync = true;
                    LocalReply::Error(e)
                };
                self.held = Some(Held::Answer { reply });
                self.release_held(b, env);
                return;
            }
        }
        self.flush_notices(&mut b.client_out);
        let held = if let Some(reply) = self.answered_here(&batch) {
            Held::Answer { reply }
        } else if let Some(slot) = self.bound_slot() {
            let replica = self
                .server(Slot::Replica)
                .and_then(|s| s.replica)
                .filter(|_| slot == Slot::Replica);
            Held::Forward {
                batch,
                slot,
                reason: Reason::InTransaction,
                replica,
                wait: None,
            }
        } else if batch.inert {
            // A Sync or Flush with nothing before it (after Close only, say): no server needed
            // (a Flush with nothing in flight flushes nothing).
            Held::Answer {
                reply: LocalReply::Inert(batch),
            }
        } else {
            self.follow_topology(env);
            match self.decide(&class, batch.hint, env) {
                Ok((Target::Primary, reason)) => Held::Forward {
                    batch,
                    slot: Slot::Primary,
                    reason,
                    replica: None,
                    wait: None,
                },
                Ok((Target::Replica(i), reason)) => Held::Forward {
                    batch,
                    slot: Slot::Replica,
                    reason,
                    replica: Some(i),
                    wait: self.waiting_for.take().map(|lsn| Wait { lsn, sent: false }),
                },
                Err(e) if batch.completes => Held::Answer {
                    reply: LocalReply::Refuse(e),
                },
                Err(_) => Held::Forward {
                    batch,
                    slot: Slot::Primary,
                    reason: Reason::NoReplicaFallback,
                    replica: None,
                    wait: None,
                },
            }
        };
        self.held = Some(held);
        self.release_held(b, env);
    }

    /// The connection a batch must follow whatever its class: the rest of a batch whose first
    /// part went out before a Flush, a COPY's closing Sync, or an open transaction.
    pub(super) fn bound_slot(&self) -> Option<Slot> {
        for slot in Slot::ALL {
            if let Some(s) = self.server(slot) {
                let ignored_sync = s
                    .owed
                    .queue
                    .iter()
                    .any(|e| matches!(e.kind, expect::Kind::Sync { ignored: true, .. }));
                if s.open_batch || s.owed.copy_in || ignored_sync {
                    return Some(slot);
                }
            }
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

    /// Sends the held batch if nothing blocks it now; asks for a lease if it needs one.
    pub(super) fn release_held(&mut self, b: &mut Buffers, env: &Env) {
        loop {
            match &self.held {
                None => return,
                Some(Held::Answer { .. }) => {
                    // After every answer of the active connection (one whose batch is still
                    // open owes nothing more until the client sends the rest).
                    let waits_for_active = self.active.is_some_and(|a| !self.owes_nothing(a, b));
                    if waits_for_active || self.acquiring.is_some() {
                        return;
                    }
                    let Some(Held::Answer { reply }) = self.held.take() else {
                        return;
                    };
                    self.answer_locally(reply, b, env);
                    self.held = self.held_after_retry.take();
                }
                Some(Held::Forward { slot, replica, .. }) => {
                    let (slot, replica) = (*slot, *replica);
                    if self.active.is_some_and(|a| a != slot) || self.acquiring.is_some() {
                        return;
                    }
                    if !self.lease_ready(slot, replica, b, env) {
                        return;
                    }
                    if let Some(Held::Forward { wait: Some(w), .. }) = &mut self.held {
                        // First the replica replays the position the read needs (or the wait
                        // times out and the read goes to the primary): see `wait_answered`.
                        if !w.sent {
                            w.sent = true;
                            let lsn = w.lsn;
                            self.send_wait(slot, lsn, b, env);
                        }
                        return;
                    }
                    let Some(Held::Forward {
                        batch,
                        slot,
                        reason,
                        ..
                    }) = self.held.take()
                    else {
                        return;
                    };
                    self.send(slot, batch, reason, b, env);
                    self.held = self.held_after_retry.take();
                }
            }
            if self.end.is_some() {
                return;
            }
        }
    }

    /// Whether `slot` holds the right connection for the held batch; if not, gives back a
    /// wrong idle one and asks for the right one (refusing the batch when there is none).
    fn lease_ready(
        &mut self,
        slot: Slot,
        replica: Option<usize>,
        b: &mut Buffers,
        env: &Env,
    ) -> bool {
        // A transaction, an open batch or a COPY finishes where it began, whatever the probes
        // or a reload say meanwhile.
        if self.server(slot).is_some() && self.bound_slot() == Some(slot) {
            return true;
        }
        let want = match slot {
            Slot::Primary => match self.effective_primary(env) {
                Ok(node) => node,
                Err(e) => {
                    self.refuse_held(e, b);
                    return false;
                }
            },
            Slot::Replica => match replica.and_then(|i| self.cluster.replicas.get(i)) {
                Some(node) => node.clone(),
                None => {
                    let e = ClientError::error(
                        sqlstate::CONNECTION_FAILURE,
                        "the chosen replica is no longer configured",
                    );
                    self.refuse_held(e, b);
                    return false;
                }
            },
        };
        if let Some(s) = self.server(slot) {
            let right = Arc::ptr_eq(&s.state.node, &want) && s.farewell.is_none();
            if right {
                if slot == Slot::Replica {
                    if let Some(s) = self.server_mut(slot) {
                        s.replica = replica;
                    }
                }
                return true;
            }
            if !s.idle(&b.server_out[slot.index()]) {
                return false; // wait until it is done, then switch
            }
            tracing::debug!(old = %s.state.node, new = %want, "moving to another node");
            self.give_back(slot, b);
        }
        self.acquiring = Some(slot);
        self.actions.push_back(Action::Acquire { slot, node: want });
        false
    }

    /// A lease for `slot` arrived.
    pub fn on_acquired(&mut self, slot: Slot, state: Box<ServerState>, b: &mut Buffers, env: &Env) {
        self.acquiring = None;
        let replica = match &self.held {
            Some(Held::Forward { replica, .. }) if slot == Slot::Replica => *replica,
            _ => None,
        };
        b.server_in[slot.index()].clear();
        b.server_out[slot.index()].clear();
        let mut server = Server::new(state, replica);
        if self.route.pinned && slot == Slot::Primary {
            server.dedicated = true;
            self.actions.push_back(Action::Dedicate { slot });
        }
        self.servers[slot.index()] = Some(server);
        self.release_held(b, env);
        self.resume(b, env);
    }

    /// No lease could be had for `slot`: a read moves to the primary, anything else is
    /// answered with the error.
    pub fn on_acquire_failed(&mut self, slot: Slot, e: ClientError, b: &mut Buffers, env: &Env) {
        self.acquiring = None;
        if slot == Slot::Replica && self.route.txn == TxnStatus::Idle {
            if let Some(Held::Forward {
                slot: s,
                reason,
                replica,
                wait,
                ..
            }) = &mut self.held
            {
                tracing::warn!(error = %e, "replica unavailable; serving from the primary");
                *s = Slot::Primary;
                *reason = Reason::UnhealthyExcluded;
                *replica = None;
                // The primary has every position: nothing to wait for there.
                *wait = None;
                self.release_held(b, env);
                self.resume(b, env);
                return;
            }
        }
        self.refuse_held(e, b);
        self.release_held(b, env);
        self.resume(b, env);
    }

    /// The held batch cannot be served: outside a transaction a complete batch is answered
    /// with the error and the session goes on; otherwise the session ends.
    fn refuse_held(&mut self, mut e: ClientError, b: &mut Buffers) {
        let Some(Held::Forward { batch, .. }) = self.held.take() else {
            return;
        };
        if batch.completes && self.route.txn == TxnStatus::Idle && self.active.is_none() {
            e.fatal = false;
            tracing::info!(code = %e.code, message = %e.message, "batch refused");
            self.obs.count_error(e.kind);
            e.encode(&mut b.client_out);
            encode::ready_for_query(&mut b.client_out, TxnStatus::Idle);
            self.held = self.held_after_retry.take();
            return;
        }
        e.fatal = true;
        self.end_with(e);
    }

    /// After a reload, moves the session to the new topology at a point where nothing is in
    /// flight and no transaction is open (a transaction finishes on the snapshot it began
    /// with). A connection to a node that left or changed is given back.
    pub(super) fn follow_topology(&mut self, env: &Env) {
        let live = env.topology;
        if live.generation == self.topology.generation
            || self.active.is_some()
            || self.held.is_some()
            || self.held_after_retry.is_some()
            || self.route.txn != TxnStatus::Idle
        {
            return;
        }
        let Some(cluster) = live.clusters.get(&self.cluster.name).cloned() else {
            self.end_with(ClientError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                format!(
                    "database \"{}\" was removed from the proxy configuration",
                    self.cluster.name
                ),
            ));
            return;
        };
        let Some(user) = live.users.get(&self.user.name).cloned() else {
            self.end_with(ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "user \"{}\" was removed from the proxy configuration",
                    self.user.name
                ),
            ));
            return;
        };
        self.user = user;
        if let Some(s) = self.server_mut(Slot::Replica) {
            match cluster
                .replicas
                .iter()
                .position(|n| Arc::ptr_eq(n, &s.state.node))
            {
                Some(i) => s.replica = Some(i),
                None => {
                    tracing::info!(node = %s.state.node, "replica removed or changed by a reload; this session moves");
                    self.pending_give_back(Slot::Replica);
                }
            }
        }
        self.route.avoid = None;
        self.max_message = live.limits.max_message_bytes;
        self.mode = cluster.pooling.mode;
        self.cluster = cluster;
        self.replica_km.clear();
        self.topology = live.clone();
    }

    /// Gives back an idle lease later, when buffers are at hand (from `follow_topology`).
    fn pending_give_back(&mut self, slot: Slot) {
        if let Some(server) = self.servers[slot.index()].take() {
            let cancelled = self
                .cancel
                .release_target(&server.state.node, server.state.pid);
            self.actions.push_back(Action::Release {
                slot,
                state: server.state,
                reuse: !server.dirty && !cancelled,
            });
        }
    }

    pub(super) fn decide(
        &mut self,
        class: &Class,
        hint: Option<Hint>,
        env: &Env,
    ) -> Result<(Target, Reason), ClientError> {
        self.route.requirement = self.effective_requirement(env);
        let cluster_health = self.cluster_health(env);
        self.route.current_replica = self.server(Slot::Replica).and_then(|s| s.replica);
        if self.replica_km.len() != self.cluster.replicas.len() {
            self.replica_km = route::replica_distances(&self.cluster, self.location.at);
        }
        let input = RouteInput {
            class,
            hint,
            session: &self.route,
            cluster: &self.cluster,
            health: cluster_health.as_deref(),
            policy: &self.topology.routing,
            location: self.location.at,
            replica_km: &self.replica_km,
            now: env.now,
        };
        self.waiting_for = None;
        match route::decide(&input) {
            Decision::Route { target, reason } => {
                if reason == Reason::PinnedAfterWrite {
                    if let Some(lsn) = self.route.requirement.lsn {
                        // Its replicas' replay is asked again soon, not at the next round.
                        self.probe_hint(env).want(lsn, env.now);
                    }
                }
                Ok((target, reason))
            }
            Decision::Wait { replica, lsn } => {
                // The caller picks the wait up (`waiting_for`); a caller that cannot wait
                // sends the read to the replica only once it has the position.
                self.waiting_for = Some(lsn);
                Ok((Target::Replica(replica), Reason::WaitedForReplica))
            }
            Decision::Refuse(reason) => {
                env.metrics
                    .refused
                    .with_label_values(&[self.cluster.name.as_str(), reason.as_str()])
                    .inc();
                Err(refusal(&self.cluster.name, reason))
            }
        }
    }

    /// The node acting as primary now (a promoted replica after a failover).
    pub(super) fn effective_primary(&mut self, env: &Env) -> Result<Arc<NodeSpec>, ClientError> {
        let view = self.cluster_health(env).map(|h| h.primary_view());
        match view {
            None | Some(PrimaryView::Unknown) | Some(PrimaryView::One(0)) => {
                Ok(self.cluster.primary.clone())
            }
            Some(PrimaryView::One(i)) => self
                .cluster
                .replicas
                .get(i - 1)
                .cloned()
                .ok_or_else(|| refusal(&self.cluster.name, Reason::NoPrimary)),
            Some(PrimaryView::None) => Err(refusal(&self.cluster.name, Reason::NoPrimary)),
            Some(PrimaryView::Conflict) => {
                Err(refusal(&self.cluster.name, Reason::PrimaryConflict))
            }
        }
    }

    /// This cluster's observed state laid out like its spec, computed once per published health
    /// snapshot (the probes publish every `health.interval`; batches come far more often).
    pub(super) fn cluster_health(
        &mut self,
        env: &Env,
    ) -> Option<Arc<crate::health::ClusterHealth>> {
        if let Some((health, spec, aligned)) = &self.health_cache {
            if Arc::ptr_eq(health, env.health) && Arc::ptr_eq(spec, &self.cluster) {
                return aligned.clone();
            }
        }
        let aligned = env
            .health
            .clusters
            .get(&self.cluster.name)
            .map(|h| h.aligned_to(&self.cluster));
        self.health_cache = Some((env.health.clone(), self.cluster.clone(), aligned.clone()));
        aligned
    }

    /// Goes on with what waits once something finished: a held batch, then queued client
    /// messages.
    pub(super) fn resume(&mut self, b: &mut Buffers, env: &Env) {
        self.release_held(b, env);
        if self.held.is_none() && self.end.is_none() && !b.client_in.is_empty() {
            self.on_client_input(b, env);
        }
    }
}

impl Engine {
    /// Picks up a newly published function catalog, or a reload's configured functions.
    fn follow_catalog(&mut self, env: &Env) {
        let version = env.catalogs.version();
        let fresh = self
            .functions
            .as_ref()
            .is_some_and(|(v, t, _)| *v == version && Arc::ptr_eq(t, &self.topology));
        if !fresh {
            let writes = env
                .catalogs
                .get(&self.cluster.name)
                .map(|v| self.topology.write_functions.with_catalog(v));
            self.functions = Some((version, self.topology.clone(), writes));
            self.classify_epoch += 1;
        }
    }
}

impl Engine {
    /// The cluster's probe hints (looked up once per session and cluster).
    fn probe_hint(&mut self, env: &Env) -> &crate::health::hints::ClusterHint {
        let stale = self
            .probe_hint
            .as_ref()
            .is_none_or(|(c, _)| **c != *self.cluster.name);
        if stale {
            let hint = env.hints.cluster(&self.cluster.name);
            self.probe_hint = Some((Arc::from(self.cluster.name.as_str()), hint));
        }
        &self.probe_hint.as_ref().expect("just set").1
    }
}
