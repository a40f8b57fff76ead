//! Asking `route::decide` for a batch's target with the session's and cluster's current state,
//! finding the node acting as primary, and wording refusals for the client.

use super::*;
use crate::error::ErrorKind;

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

impl Relay<'_> {
    /// After a reload, moves the session to the new topology, at a point where nothing is in
    /// flight and no transaction is open (a transaction finishes on the snapshot it began
    /// with). A replica connection to a node that left or changed is closed; the next read
    /// picks from the new set.
    pub(super) async fn follow_topology(&mut self) -> Result<(), End> {
        let live_generation = self.shared.topology.load().generation;
        if live_generation == self.topology.generation
            || self.active.is_some()
            || self.held.is_some()
            || self.held_after_retry.is_some()
            || self.route.txn != TxnStatus::Idle
        {
            return Ok(());
        }
        let live = self.shared.topology.load_full();
        let Some(cluster) = live.clusters.get(&self.cluster.name).cloned() else {
            return Err(End::ClientError(ClientError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                format!(
                    "database \"{}\" was removed from the proxy configuration",
                    self.cluster.name
                ),
            )));
        };
        let Some(user) = live.users.get(&self.user.name).cloned() else {
            return Err(End::ClientError(ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "user \"{}\" was removed from the proxy configuration",
                    self.user.name
                ),
            )));
        };
        self.user = user;
        if let Some(b) = &mut self.replica {
            match cluster
                .replicas
                .iter()
                .position(|n| Arc::ptr_eq(n, &b.node))
            {
                Some(i) => b.replica_index = Some(i),
                None => {
                    if let Some(mut old) = self.replica.take() {
                        tracing::info!(node = %old.node, "replica removed or changed by a reload; this session moves");
                        let _ = old.w.write_all(b"X\0\0\0\x04").await;
                    }
                }
            }
        }
        self.route.avoid = None;
        self.max_message = live.limits.max_message_bytes;
        self.cluster = cluster;
        self.topology = live;
        Ok(())
    }

    pub(super) fn decide(
        &mut self,
        class: &Class,
        hint: Option<Hint>,
    ) -> Result<(Target, Reason), ClientError> {
        let health = self.shared.health.load();
        let cluster_health = health
            .clusters
            .get(&self.cluster.name)
            .map(|h| h.aligned_to(&self.cluster));
        if let Some(h) = &cluster_health {
            self.route.requirement = self.route.requirement.resolve(&h.primary_samples);
        }
        self.route.current_replica = self.replica.as_ref().and_then(|b| b.replica_index);
        let input = RouteInput {
            class,
            hint,
            session: &self.route,
            cluster: &self.cluster,
            health: cluster_health.as_deref(),
            policy: &self.topology.routing,
            location: self.location.at,
            now: std::time::Instant::now(),
        };
        match route::decide(&input) {
            Decision::Route { target, reason } => Ok((target, reason)),
            Decision::Refuse(reason) => {
                self.shared
                    .metrics
                    .refused
                    .with_label_values(&[self.cluster.name.as_str(), reason.as_str()])
                    .inc();
                Err(refusal(&self.cluster.name, reason))
            }
        }
    }

    /// The node acting as primary now (a promoted replica after a failover).
    pub(super) fn effective_primary(&self) -> Result<Arc<NodeSpec>, ClientError> {
        let health = self.shared.health.load();
        let view = health
            .clusters
            .get(&self.cluster.name)
            .map(|h| h.aligned_to(&self.cluster).primary_view());
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
}
