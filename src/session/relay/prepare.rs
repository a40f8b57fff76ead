//! Bringing a backend up to the session before it serves a batch: opening the connection,
//! replaying settings and re-preparing statements. Runs only while that backend is idle; the
//! answers to the proxy's own messages are never forwarded.

use super::*;

impl Relay<'_> {
    /// The backend lacks session settings or statements the batch needs.
    pub(super) fn needs_prep(&self, slot: Slot, batch: &Batch) -> bool {
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
    pub(super) async fn ensure_connected(
        &mut self,
        slot: Slot,
        replica: Option<usize>,
    ) -> Result<(), ClientError> {
        if self
            .slot_ref(slot)
            .is_some_and(|b| b.idle() && b.farewell.is_some())
            && !self.needs(slot)
        {
            // It said it is closing (a shutdown, an admin's terminate) and holds nothing the
            // session needs: connect afresh. A needed one is left to close, which ends the
            // session with the backend's reason (a transaction must not go on elsewhere).
            if let Some(b) = self.slot(slot).take() {
                tracing::debug!(node = %b.node, reason = ?b.farewell, "dropping a backend connection that is closing");
            }
        }
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
        if slot == Slot::Primary && self.route.txn != TxnStatus::Idle && self.primary.is_some() {
            // A transaction finishes where it began, whatever the probes or a reload say.
            return Ok(());
        }
        let primary = match slot {
            Slot::Primary => Some(self.effective_primary()?),
            Slot::Replica => None,
        };
        if let (Some(want), Some(b)) = (&primary, &self.primary) {
            if !Arc::ptr_eq(want, &b.node) && b.idle() {
                // The primary moved (failover): retire the connection to the old one.
                tracing::info!(old = %b.node, new = %want, "following the new primary");
                if let Some(mut old) = self.primary.take() {
                    let _ = old.w.write_all(b"X\0\0\0\x04").await;
                }
            }
        }
        if self.slot_ref(slot).is_some() {
            return Ok(());
        }
        let node = match (slot, replica, primary) {
            (Slot::Primary, _, Some(node)) => node,
            (Slot::Primary, _, None) => self.cluster.primary.clone(),
            (Slot::Replica, Some(i), _) => match self.cluster.replicas.get(i) {
                Some(n) => n.clone(),
                None => {
                    return Err(ClientError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "replica no longer configured",
                    ))
                }
            },
            (Slot::Replica, None, _) => {
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
        .map_err(|e| {
            if !matches!(e, backend::ConnectError::Rejected { .. }) {
                self.shared.report_connect_failure(&node);
            }
            e.to_client()
        })?;
        tracing::debug!(node = %node, "opened backend connection");
        *self.slot(slot) = Some(BackendSide::new(conn, replica, 0, &self.shared.metrics));
        Ok(())
    }

    /// Brings the backend up to the session's settings and the statements the batch uses.
    /// Runs only when that backend is idle; its answers are not forwarded.
    /// Returns false when the settings replay failed: this backend cannot serve the session
    /// faithfully, and the caller moves the batch to the primary.
    pub(super) async fn prepare(&mut self, slot: Slot, batch: &Batch) -> Result<bool, End> {
        if !self.needs_prep(slot, batch) {
            return Ok(true);
        }
        let replay = self.settings.replay_sql();
        let version = self.settings.version;
        let Some(b) = self.slot(slot).as_mut() else {
            return Ok(true);
        };
        if b.settings_version != version {
            let mut req = BytesMut::new();
            let _ = frontend::query(&replay, &mut req);
            match wire::exchange_split(&mut b.r, &mut b.w, &mut b.inbuf, &req).await {
                Ok(msgs) => {
                    // A simple query drops the backend's unnamed statement.
                    b.prepared.remove("");
                    if let Some(e) = msgs.iter().find(|m| m[0] == b'E') {
                        // The replay is one implicit transaction: nothing of it took effect.
                        tracing::warn!(node = %b.node, error = ?ErrorFields::parse(frame::body(e)), "replaying session settings failed");
                        return Ok(false);
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
        let mut statements_req = BytesMut::new();
        let mut installed = Vec::new();
        {
            let Some(b) = self.slot_ref(slot) else {
                return Ok(true);
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
                if !name.is_empty()
                    && b.prepared.contains_key(name)
                    && !installed.iter().any(|(n, _)| n == name)
                {
                    let _ = frontend::close(b'S', name, &mut statements_req);
                }
            }
        }
        let Some(b) = self.slot(slot).as_mut() else {
            return Ok(true);
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
        Ok(true)
    }
}
