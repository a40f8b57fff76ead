//! Backend answers: moves their bytes to the client (never interleaving two backends), reads
//! ReadyForQuery and errors, and keeps transaction, read-your-writes and settings state.

use super::*;

impl Relay<'_> {
    /// Moves backend bytes to the client. Only the active backend (or, with nothing in flight,
    /// either one) is read, so responses from the two never interleave.
    pub(super) fn pump_backends(&mut self) -> Result<(), End> {
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

    pub(super) fn pump(&mut self, slot: Slot) -> Result<(), End> {
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

    pub(super) fn on_backend_message(&mut self, slot: Slot, solicited: bool, msg: &[u8]) {
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
                let fatal = fields.as_ref().filter(|f| f.is_fatal());
                if !solicited {
                    tracing::debug!(node = %b.node, error = ?fields, "unsolicited error from an idle backend");
                    if let Some(f) = fatal {
                        b.farewell = Some(format!("{} ({})", f.message, f.code));
                    }
                    return;
                }
                // Held answers of a retryable batch have not reached the client (yet).
                b.sent_fatal = fatal.is_some() && !tentative;
                let refused_write = fields
                    .as_ref()
                    .is_some_and(|f| f.code == "25006" || f.message.contains("during recovery"));
                let alone = b.pending.len() == 1 && b.outbuf.is_empty() && !b.open_batch;
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
                    b.tentative.clear();
                    let retry = p.retry.clone();
                    if let Some(mut batch) = retry {
                        // It wrote: read-your-writes applies once it has run on the primary.
                        batch.class = Some(Class::Write);
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
            btag::COPY_IN_RESPONSE => {
                if let Some(p) = b.pending.front_mut().filter(|p| p.extended) {
                    p.sync_ignored = true;
                }
            }
            _ => {}
        }
        if tentative {
            b.tentative.extend_from_slice(msg);
        } else {
            self.to_client.extend_from_slice(msg);
        }
    }

    /// A ReadyForQuery from `slot`: transaction state, read-your-writes and settings bookkeeping.
    pub(super) fn on_ready(&mut self, slot: Slot, status: TxnStatus, pending: Option<Pending>) {
        let before = self.route.txn;
        self.route.txn = status;
        let Some(p) = pending else { return };
        self.observe_batch(slot, &p);
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
                        self.pin();
                    }
                }
            }
            TxnStatus::InTransaction | TxnStatus::Failed => {
                self.route.txn_target = Some(target);
                // A transaction on the primary may write through anything (a function the
                // classifier took for a read): treat it as a write when it ends.
                self.txn_wrote |= p.wrote || slot == Slot::Primary;
                if p.setting.is_some() {
                    self.pin();
                }
            }
        }
    }

    pub(super) fn record_setting(&mut self, slot: Slot, setting: &Setting, sql: &Arc<str>) {
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
        if matches!(setting, Setting::DiscardAll) {
            self.statements.drop_named(&None);
        }
    }

    /// The session's write committed on the primary: later reads must see it.
    pub(super) fn after_write(&mut self) {
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
        self.write_pin_started(now);
    }

    /// A backend connection ended. If the session needed it, the client is told (08006 unless
    /// the server already sent its own FATAL) and the session ends; an idle one is just dropped.
    /// A replica connection broke while its only batch was an autocommit read none of whose
    /// answer had reached the client: run that read on another node, invisibly.
    fn retry_elsewhere(&mut self, reason: &str) -> bool {
        let Some(b) = &self.replica else { return false };
        // With one pending batch and no open one, unsent bytes (the connection died while the
        // batch was being written) can only be that batch's own: retrying is still exact.
        let retryable = self.route.txn == TxnStatus::Idle
            && b.pending.len() == 1
            && !b.open_batch
            && b.pending
                .front()
                .is_some_and(|p| p.retry.is_some() && !p.retrying);
        if !retryable {
            return false;
        }
        let Some(mut b) = self.replica.take() else {
            return false;
        };
        let Some(batch) = b.pending.pop_front().and_then(|p| p.retry) else {
            return false;
        };
        tracing::info!(node = %b.node, %reason, "replica connection lost before any answer; retrying the read elsewhere");
        self.active = None;
        self.txn_may_be_opening = false;
        let class = batch.class.clone().unwrap_or(Class::Empty);
        self.route.avoid = b.replica_index;
        let decision = self.decide(&class, batch.hint);
        self.route.avoid = None;
        self.held_after_retry = self.held.take();
        self.held = Some(match decision {
            Ok((Target::Replica(i), _)) => Held::Forward {
                batch: *batch,
                slot: Slot::Replica,
                reason: Reason::ReadRetry,
                replica: Some(i),
            },
            Ok((Target::Primary, _)) => Held::Forward {
                batch: *batch,
                slot: Slot::Primary,
                reason: Reason::ReadRetry,
                replica: None,
            },
            Err(e) => Held::Answer {
                reply: LocalReply::Refuse(e),
            },
        });
        true
    }

    /// The session cannot lose this backend connection without the client noticing: work is in
    /// flight on it, a transaction lives there, or the session is pinned to the primary.
    pub(super) fn needs(&self, slot: Slot) -> bool {
        self.active == Some(slot)
            || self.route.txn != TxnStatus::Idle && self.bound_slot() == Some(slot)
            || self.slot_ref(slot).is_some_and(|b| !b.idle())
            || (slot == Slot::Primary && self.route.pinned)
    }

    pub(super) fn backend_closed(&mut self, slot: Slot, reason: String) -> Result<(), End> {
        if slot == Slot::Replica && self.retry_elsewhere(&reason) {
            return Ok(());
        }
        let needed = self.needs(slot);
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
        let reason = b.farewell.clone().unwrap_or(reason);
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
}
