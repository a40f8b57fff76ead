//! Server answers: walks a leased connection's bytes message by message against what it owes
//! (`expect.rs`), streams rows to the client without decoding them, never interleaves two
//! connections, keeps transaction, read-your-writes and settings state, runs the safety net
//! (a replica refusing a write) and read retries, and gives a lease back when its transaction
//! is over.

use bytes::Buf;

use super::expect::{Outcome, ProxyUnit, Sink, Unit};
use super::*;
use crate::classify::{Class, Setting};
use crate::error::sqlstate;
use crate::protocol::backend::{ErrorFields, TxnStatus};
use crate::protocol::frame::{self, peek_header};
use crate::protocol::tag::backend as btag;
use crate::route::Target;

/// A CommandComplete tag of DDL, after which statements prepared earlier may be stale.
fn changes_schema(tag: &[u8]) -> bool {
    tag.starts_with(b"CREATE") || tag.starts_with(b"ALTER") || tag.starts_with(b"DROP")
}

/// The errors a statement prepared before a schema change gets when reused after it.
fn stale_statement(e: &ErrorFields) -> bool {
    (e.code == "XX000" && e.message.starts_with("cache lookup failed"))
        || (e.code == "0A000" && e.message.starts_with("cached plan must not change"))
}

/// Whole server messages up to this size are copied to the stack to be looked at.
const SMALL_MESSAGE: usize = 256;

/// Bulk messages streamed without being buffered whole.
fn streamed(tag: u8) -> bool {
    matches!(tag, b'D' | b'd')
}

impl Engine {
    /// New bytes from `slot`'s connection are in `b.server_in`.
    pub fn on_server_input(&mut self, slot: Slot, b: &mut Buffers, env: &Env) {
        self.pump(slot, b, env);
        self.after_answers(slot, b, env);
    }

    fn pump(&mut self, slot: Slot, b: &mut Buffers, env: &Env) {
        let i = slot.index();
        loop {
            if self.end.is_some() {
                return;
            }
            let Some(server) = self.servers[i].as_mut() else {
                return;
            };
            server.need = 0;
            let inbuf = &mut b.server_in[i];
            if server.remaining > 0 {
                let n = server.remaining.min(inbuf.len());
                if n == 0 {
                    return;
                }
                server.remaining -= n;
                let sink = server.remaining_sink;
                move_bytes(server, sink, inbuf, n, &mut b.client_out);
                continue;
            }
            advance(server, &mut self.statements, &mut b.client_out);
            // A run of rows (one destination) is moved in one piece.
            let sink = server.owed.sink_for(b'D');
            let mut run = 0;
            let mut partial = 0;
            loop {
                let header = match peek_header(&inbuf[run..]) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        let reason = format!("invalid data from the server: {e}");
                        self.server_lost(slot, reason, b, env);
                        return;
                    }
                };
                if !streamed(header.tag) || server.owed.commit_lsn_next() {
                    break;
                }
                if run + header.total_len > inbuf.len() {
                    partial = run + header.total_len - inbuf.len();
                    run = inbuf.len();
                    break;
                }
                run += header.total_len;
            }
            if run > 0 {
                if server.retry.as_ref().is_some_and(|r| r.retrying) {
                    inbuf.advance(run);
                } else {
                    move_bytes(server, sink, inbuf, run, &mut b.client_out);
                }
                server.remaining = partial;
                server.remaining_sink = sink;
                continue;
            }
            let header = match peek_header(inbuf) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => {
                    let reason = format!("invalid data from the server: {e}");
                    self.server_lost(slot, reason, b, env);
                    return;
                }
            };
            if header.total_len > INSPECT_LIMIT {
                // Too big to read whole (a huge error text): the queue moves on its tag alone.
                let outcome = server.owed.on_message(
                    header.tag,
                    None,
                    &mut server.state,
                    &mut self.statements,
                );
                let sink = outcome.sink.unwrap_or(Sink::Client);
                server.remaining = header.total_len;
                server.remaining_sink = sink;
                server.dirty |= outcome.confused;
                self.on_outcome(slot, outcome, b, env);
                continue;
            }
            if inbuf.len() < header.total_len {
                server.need = header.total_len;
                return;
            }
            // Small messages (most answers but rows) are copied out of the buffer, which
            // stays unshared; larger ones are split off it.
            let len = header.total_len;
            let mut small = [0u8; SMALL_MESSAGE];
            let split;
            let msg: &[u8] = if len <= SMALL_MESSAGE {
                small[..len].copy_from_slice(&inbuf[..len]);
                inbuf.advance(len);
                &small[..len]
            } else {
                split = inbuf.split_to(len);
                &split
            };
            let outcome = server.owed.on_message(
                header.tag,
                Some(frame::body(msg)),
                &mut server.state,
                &mut self.statements,
            );
            server.dirty |= outcome.confused;
            if outcome.confused {
                tracing::warn!(node = %server.state.node, tag = %(header.tag as char), "unexpected message from the server");
            }
            self.on_whole_message(slot, msg, outcome, b, env);
        }
    }

    /// Routes one whole server message and acts on what it meant.
    fn on_whole_message(
        &mut self,
        slot: Slot,
        msg: &[u8],
        outcome: Outcome,
        b: &mut Buffers,
        env: &Env,
    ) {
        let tag = msg[0];
        if tag == b'C' && changes_schema(frame::body(msg)) {
            // Other sessions' statements prepared before this may mean something else now;
            // again at the end of the transaction, once the change is visible to all.
            env.schema_epoch
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.txn_changed_schema = true;
        }
        if tag == btag::PARAMETER_STATUS {
            self.note_parameter(frame::body(msg));
        }
        let Some(server) = self.server_mut(slot) else {
            return;
        };
        let unsolicited = tag == btag::ERROR_RESPONSE
            && outcome.sink == Some(Sink::Drop)
            && server.owed.queue.is_empty();
        if unsolicited {
            if let Some(f) = ErrorFields::parse(frame::body(msg)).filter(|f| f.is_fatal()) {
                tracing::debug!(node = %server.state.node, error = ?f, "farewell from an idle server");
                server.farewell = Some(format!("{} ({})", f.message, f.code));
            }
            return;
        }
        let retrying = server.retry.as_ref().is_some_and(|r| r.retrying);
        if !retrying && outcome.sink == Some(Sink::Client) {
            if tag == btag::ERROR_RESPONSE {
                // Held answers of a retryable batch have not reached the client (yet).
                server.sent_fatal = server.retry.is_none()
                    && ErrorFields::parse(frame::body(msg)).is_some_and(|f| f.is_fatal());
            }
            let bytes = outcome.replace.as_deref().unwrap_or(msg);
            if outcome.ready.is_some() && server.owed.commit_lsn_next() {
                // The proxy's position query behind this commit answers next; the client's
                // ReadyForQuery waits for it (and the token it yields) to be first.
                pass_on(&mut b.client_out, &mut server.tentative);
                server.held_ready = Some(BytesMut::from(bytes));
            } else if server.retry.is_some() {
                if outcome.ready.is_some() {
                    // The end of a retryable batch: what was held goes out before it.
                    server.retry = None;
                    pass_on(&mut b.client_out, &mut server.tentative);
                    b.client_out.extend_from_slice(bytes);
                } else {
                    server.tentative.extend_from_slice(bytes);
                    if server.tentative.len() > TENTATIVE_LIMIT {
                        // Rows are flowing: this statement stays on the replica.
                        server.retry = None;
                        pass_on(&mut b.client_out, &mut server.tentative);
                    }
                }
            } else {
                b.client_out.extend_from_slice(bytes);
            }
        }
        self.on_outcome(slot, outcome, b, env);
    }

    /// Acts on what a message meant for the session: the safety net, transaction state.
    fn on_outcome(&mut self, slot: Slot, outcome: Outcome, b: &mut Buffers, env: &Env) {
        if let Some(e) = &outcome.client_error {
            if stale_statement(e) {
                // A schema change the proxy did not see (made behind its back): statements are
                // prepared afresh from now on.
                env.schema_epoch
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.on_client_error(slot, e);
        }
        if let Some((status, unit)) = outcome.ready {
            self.on_ready(slot, status, &unit, b, env);
        }
    }

    /// A replica refused the retryable batch as a write (25006), or cancelled it for a
    /// recovery conflict (40001, 40P01: a standby has no other cause for them): its answers
    /// are swallowed and it runs again on the primary.
    fn on_client_error(&mut self, slot: Slot, e: &ErrorFields) {
        let Some(server) = self.server_mut(slot) else {
            return;
        };
        let refused_write = e.code == sqlstate::READ_ONLY_SQL_TRANSACTION;
        let conflict = matches!(e.code.as_str(), "40001" | "40P01");
        // A retry is kept only while its batch is the only one in flight (`send`).
        if let Some(r) = server.retry.as_mut() {
            if refused_write || conflict {
                tracing::info!(node = %server.state.node, error = ?e, "a replica refused a statement; re-running it on the primary");
                r.retrying = true;
                r.wrote = refused_write;
                server.tentative.clear();
            }
        }
    }

    /// A ReadyForQuery ended a unit on `slot`.
    fn on_ready(&mut self, slot: Slot, status: TxnStatus, unit: &Unit, b: &mut Buffers, env: &Env) {
        match unit.proxy {
            Some(ProxyUnit::Settings) if unit.errored => {
                self.settings_replay_failed(slot, env);
                return;
            }
            Some(ProxyUnit::AwaitReplay) => {
                self.wait_answered(!unit.errored);
                return;
            }
            Some(ProxyUnit::CommitLsn) => {
                let committed = status == TxnStatus::Idle && !unit.errored;
                self.commit_position(slot, committed, unit.lsn, b, env);
                return;
            }
            Some(_) => return,
            None => {}
        }
        if let Some(retry) = self
            .server_mut(slot)
            .and_then(|s| s.retry.take_if(|r| r.retrying))
        {
            let mut batch = retry.batch;
            let reason = if retry.wrote {
                // It wrote: read-your-writes applies once it has run on the primary.
                batch.class = Some(Class::Write);
                for shape in super::super::batch::shapes(&batch) {
                    env.learned.learn(&self.user.name, shape);
                }
                Reason::ReadonlyRetry
            } else {
                Reason::ReadRetry
            };
            self.held_after_retry = self.held.take();
            self.held = Some(Held::Forward {
                batch: *batch,
                slot: Slot::Primary,
                reason,
                replica: None,
                wait: None,
            });
            return;
        }
        let before = self.route.txn;
        self.route.txn = status;
        if let Some(at) = unit.sent_at {
            env.metrics
                .batch_done(slot.role(), env.now.saturating_duration_since(at));
        }
        let target = match slot {
            Slot::Primary => Target::Primary,
            Slot::Replica => {
                Target::Replica(self.server(slot).and_then(|s| s.replica).unwrap_or(0))
            }
        };
        match status {
            TxnStatus::Idle => {
                if std::mem::take(&mut self.txn_changed_schema) {
                    env.schema_epoch
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if slot == Slot::Primary && (unit.wrote || self.txn_wrote) {
                    let exact_follows = self.server(slot).is_some_and(|s| s.owed.commit_lsn_next());
                    self.after_write(exact_follows, env);
                }
                self.txn_wrote = false;
                self.route.txn_target = None;
                if !unit.errored {
                    if let Some((setting, sql)) = unit.setting.as_deref() {
                        if before == TxnStatus::Idle {
                            self.record_setting(slot, setting, sql);
                        } else {
                            // A setting made inside a transaction cannot be replayed faithfully.
                            self.pin(env);
                        }
                    }
                    if unit.drops_all_statements {
                        self.statements.clear_named();
                        if let Some(s) = self.server_mut(slot) {
                            s.state.prepared.clear();
                        }
                    }
                }
            }
            TxnStatus::InTransaction | TxnStatus::Failed => {
                self.route.txn_target = Some(target);
                // A transaction on the primary may write through anything (a function the
                // classifier took for a read): treat it as a write when it ends.
                self.txn_wrote |= unit.wrote || slot == Slot::Primary;
                if unit.setting.is_some() {
                    self.pin(env);
                }
            }
        }
    }

    /// The session's settings could not be replayed on `slot`'s connection: it cannot serve
    /// the session faithfully. A retryable read moves to the primary for good; otherwise the
    /// connection is not reused and the next lease replays from scratch.
    fn settings_replay_failed(&mut self, slot: Slot, env: &Env) {
        let Some(server) = self.server_mut(slot) else {
            return;
        };
        tracing::warn!(node = %server.state.node, "replaying the session's settings failed");
        server.state.settings = None;
        server.dirty = true;
        if slot == Slot::Replica {
            if let Some(r) = server.retry.as_mut() {
                r.retrying = true;
                server.tentative.clear();
            }
            self.pin(env);
        }
    }

    fn record_setting(&mut self, slot: Slot, setting: &Setting, sql: &std::sync::Arc<str>) {
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
        let list = self.settings.list().clone();
        if let Some(s) = self.server_mut(slot) {
            s.state.settings = Some(list);
            if matches!(setting, Setting::DiscardAll) {
                s.state.prepared.clear();
                s.state.unnamed = None;
            }
        }
        if matches!(setting, Setting::DiscardAll) {
            self.statements.clear_named();
        }
    }

    /// After answers were processed: an idle connection frees the session to send what waits,
    /// and in transaction mode goes back to its pool.
    fn after_answers(&mut self, slot: Slot, b: &mut Buffers, env: &Env) {
        if self.end.is_some() {
            return;
        }
        let idle = self
            .server(slot)
            .is_some_and(|s| s.idle(&b.server_out[slot.index()]));
        if idle && self.active == Some(slot) {
            self.active = None;
            self.txn_may_be_opening = false;
        }
        if idle && self.releases(slot) && b.server_in[slot.index()].is_empty() {
            self.give_back(slot, b);
        }
        self.resume(b, env);
    }

    /// Whether an idle connection goes back to the pool now.
    fn releases(&self, slot: Slot) -> bool {
        let Some(s) = self.server(slot) else {
            return false;
        };
        if s.dedicated || s.farewell.is_some() {
            return s.farewell.is_some() && !s.dedicated;
        }
        let wanted_next = matches!(&self.held, Some(Held::Forward { slot: s, .. }) if *s == slot);
        self.mode == PoolMode::Transaction
            && !wanted_next
            && self.route.txn == TxnStatus::Idle
            && !self.txn_may_be_opening
            && !(slot == Slot::Primary && self.route.pinned)
    }

    /// Gives `slot`'s connection back to its pool (closed if not clean).
    pub(super) fn give_back(&mut self, slot: Slot, b: &mut Buffers) {
        let Some(server) = self.servers[slot.index()].take() else {
            return;
        };
        let i = slot.index();
        let cancelled = self
            .cancel
            .release_target(&server.state.node, server.state.pid);
        let reuse = !server.dirty
            && !cancelled
            && server.farewell.is_none()
            && server.idle(&b.server_out[i])
            && b.server_in[i].is_empty();
        b.server_in[i].clear();
        b.server_out[i].clear();
        if self.active == Some(slot) {
            self.active = None;
        }
        let Server {
            state,
            owed,
            tentative,
            ..
        } = server;
        super::spare::keep(owed.queue, tentative);
        self.actions
            .push_back(Action::Release { slot, state, reuse });
    }

    /// The session cannot lose this connection without the client noticing: work is in
    /// flight on it, a transaction lives there, or it is the session's for life.
    fn needs(&self, slot: Slot, b: &Buffers) -> bool {
        self.active == Some(slot)
            || self.route.txn != TxnStatus::Idle && self.bound_slot() == Some(slot)
            || self
                .server(slot)
                .is_some_and(|s| !s.idle(&b.server_out[slot.index()]) || s.dedicated)
            || (slot == Slot::Primary && self.route.pinned)
    }

    /// `slot`'s connection ended. An idle one is just dropped; a replica read none of whose
    /// answer reached the client runs elsewhere; otherwise the client is told (08006 unless
    /// the server sent its own FATAL) and the session ends.
    pub fn on_server_closed(&mut self, slot: Slot, reason: String, b: &mut Buffers, env: &Env) {
        self.server_lost(slot, reason, b, env);
        if self.end.is_none() {
            self.resume(b, env);
        }
    }

    fn server_lost(&mut self, slot: Slot, reason: String, b: &mut Buffers, env: &Env) {
        if slot == Slot::Replica && self.retry_elsewhere(&reason, b, env) {
            return;
        }
        let needed = self.needs(slot, b);
        let Some(mut server) = self.servers[slot.index()].take() else {
            return;
        };
        server.dirty = true;
        b.server_in[slot.index()].clear();
        b.server_out[slot.index()].clear();
        if self.active == Some(slot) {
            self.active = None;
            self.txn_may_be_opening = false;
        }
        self.cancel
            .release_target(&server.state.node, server.state.pid);
        let farewell = server.farewell.clone();
        let sent_fatal = server.sent_fatal;
        let node = server.state.node.clone();
        self.actions.push_back(Action::Release {
            slot,
            state: server.state,
            reuse: false,
        });
        if !needed {
            tracing::debug!(node = %node, %reason, "idle server connection closed; will lease another when needed");
            return;
        }
        let reason = farewell.unwrap_or(reason);
        if !sent_fatal {
            ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("lost the connection to backend {node}: {reason}"),
            )
            .with_hint(
                "the statement in progress may or may not have completed; reconnect and check",
            )
            .encode(&mut b.client_out);
        }
        self.end = Some(End::BackendGone(reason));
    }

    /// A replica connection broke while its only batch was an autocommit read none of whose
    /// answer had reached the client: that read runs on another node, invisibly.
    fn retry_elsewhere(&mut self, reason: &str, b: &mut Buffers, env: &Env) -> bool {
        let i = Slot::Replica.index();
        let Some(server) = self.servers[i].as_ref() else {
            return false;
        };
        let retryable = self.route.txn == TxnStatus::Idle
            && !server.open_batch
            && server.retry.as_ref().is_some_and(|r| !r.retrying);
        if !retryable {
            return false;
        }
        let Some(mut server) = self.servers[i].take() else {
            return false;
        };
        let Some(retry) = server.retry.take() else {
            return false;
        };
        b.server_in[i].clear();
        b.server_out[i].clear();
        tracing::info!(node = %server.state.node, %reason, "replica connection lost before any answer; retrying the read elsewhere");
        let avoid = server.replica;
        self.cancel
            .release_target(&server.state.node, server.state.pid);
        self.actions.push_back(Action::Release {
            slot: Slot::Replica,
            state: server.state,
            reuse: false,
        });
        self.active = None;
        self.txn_may_be_opening = false;
        let batch = retry.batch;
        let class = batch.class.clone().unwrap_or(Class::Empty);
        self.route.avoid = avoid;
        let decision = self.decide(&class, batch.hint, env);
        self.route.avoid = None;
        let wait = self.waiting_for.take().map(|lsn| Wait { lsn, sent: false });
        self.held_after_retry = self.held.take();
        self.held = Some(match decision {
            Ok((Target::Replica(r), _)) => Held::Forward {
                batch: *batch,
                slot: Slot::Replica,
                reason: Reason::ReadRetry,
                replica: Some(r),
                wait,
            },
            Ok((Target::Primary, _)) => Held::Forward {
                batch: *batch,
                slot: Slot::Primary,
                reason: Reason::ReadRetry,
                replica: None,
                wait: None,
            },
            Err(e) => Held::Answer {
                reply: LocalReply::Refuse(e),
            },
        });
        true
    }
}

/// Gives the client what the proxy owes it at the front of `server`'s queue: held back with
/// the rest while a retry is possible, dropped if the retry is under way.
pub(super) fn advance(server: &mut Server, statements: &mut Statements, client_out: &mut BytesMut) {
    match &server.retry {
        Some(r) if r.retrying => {
            let mut dropped = BytesMut::new();
            server
                .owed
                .advance(&mut server.state, statements, &mut dropped);
        }
        Some(_) => server
            .owed
            .advance(&mut server.state, statements, &mut server.tentative),
        None => server
            .owed
            .advance(&mut server.state, statements, client_out),
    }
}

/// Appends the answers held back in `held` to `client_out` and empties `held`, each buffer
/// keeping an allocation of its own (an `unsplit` of a split would leave the two sharing one,
/// and the next held answer would need a fresh allocation).
pub(super) fn pass_on(client_out: &mut BytesMut, held: &mut BytesMut) {
    if client_out.is_empty() {
        std::mem::swap(client_out, held);
    } else {
        client_out.extend_from_slice(held);
        held.clear();
    }
}

/// Moves `n` bytes from the front of `inbuf` to where they go.
fn move_bytes(
    server: &mut Server,
    sink: Sink,
    inbuf: &mut BytesMut,
    n: usize,
    client_out: &mut BytesMut,
) {
    if server.retry.as_ref().is_some_and(|r| r.retrying) {
        inbuf.advance(n);
        return;
    }
    match sink {
        Sink::Drop => inbuf.advance(n),
        Sink::Client if server.retry.is_some() => {
            server.tentative.extend_from_slice(&inbuf[..n]);
            inbuf.advance(n);
            if server.tentative.len() > TENTATIVE_LIMIT {
                server.retry = None;
                pass_on(client_out, &mut server.tentative);
            }
        }
        Sink::Client if client_out.is_empty() && n == inbuf.len() => {
            // Bulk rows: hand the whole buffer over instead of copying it.
            std::mem::swap(client_out, inbuf);
        }
        Sink::Client => {
            client_out.extend_from_slice(&inbuf[..n]);
            inbuf.advance(n);
        }
    }
}

impl Engine {
    /// Follows the server's `client_encoding`, which says how the client's SQL bytes read.
    fn note_parameter(&mut self, body: &[u8]) {
        if let Some((b"client_encoding", value)) = crate::protocol::backend::parameter_status(body)
        {
            if let Some(enc) = ClientEncoding::from_name(&String::from_utf8_lossy(value)) {
                if enc != self.client_encoding {
                    self.client_encoding = enc;
                    self.classify_epoch += 1;
                }
            }
        }
    }
}
