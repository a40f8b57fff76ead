//! What a session reports about itself: the routed-batch counter (label lookups cached per
//! session), the sticky-pin gauge, the read-your-writes pin histogram, errors told to the
//! client, and the per-batch routing log line. Bookkeeping only: nothing here changes where a
//! batch goes.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::error::ErrorKind;
use crate::geo::GeoSource;
use crate::metrics::GaugeGuard;
use crate::route::Requirement;

/// Measures one read-your-writes pin: from the write that set the session's requirement to
/// the first read a replica served after it.
#[derive(Debug, Default)]
pub(crate) struct WritePin {
    /// When the last write that set a requirement committed (its ReadyForQuery).
    since: Option<Instant>,
    /// A read has been kept on the primary (`pinned_after_write`) since then.
    held_reads: bool,
}

/// One cached `routed_batches_total` series: (slot, reason, node address), the node (kept
/// alive so its address is not reused), the counter.
type RoutedSeries = ((Slot, Reason, usize), Arc<NodeSpec>, prometheus::IntCounter);

#[derive(Default)]
pub(crate) struct Obs {
    /// `pgmeridian_routed_batches_total` handles this session has used, keyed by slot, reason
    /// and node (the entry holds the node, so its address is not reused while cached).
    /// A short list: a session meets few (node, reason) pairs, and a scan beats hashing.
    routed: Vec<RoutedSeries>,
    /// Counts the session in `pgmeridian_pinned_sessions` once it is pinned.
    pin_gauge: Option<GaugeGuard>,
    pub(crate) write_pin: WritePin,
    /// Errors told to the client, for the driver to count (the engine holds no metrics).
    pub(crate) errors: Vec<ErrorKind>,
}

impl Obs {
    pub(crate) fn routed(
        &mut self,
        env: &Env,
        cluster: &str,
        geo: GeoSource,
        slot: Slot,
        reason: Reason,
        node: &Arc<NodeSpec>,
    ) {
        let key = (slot, reason, Arc::as_ptr(node) as usize);
        if let Some((_, _, counter)) = self.routed.iter().find(|(k, _, _)| *k == key) {
            counter.inc();
            return;
        }
        let counter = env.metrics.routed.with_label_values(&[
            cluster,
            slot.role().as_str(),
            node.label(),
            reason.as_str(),
            geo.as_str(),
        ]);
        counter.inc();
        self.routed.push((key, node.clone(), counter));
    }

    pub(crate) fn count_error(&mut self, kind: ErrorKind) {
        self.errors.push(kind);
    }
}

impl Engine {
    /// The session used a feature that cannot move: the primary for the rest of its life, on a
    /// connection of its own.
    pub(crate) fn pin(&mut self, env: &Env) {
        self.route.pinned = true;
        if self.obs.pin_gauge.is_none() {
            tracing::info!(cluster = %self.cluster.name, "session pinned to the primary for its life (it used a feature that cannot move between server connections)");
            let gauge = env
                .metrics
                .pinned_sessions
                .with_label_values(&[self.cluster.name.as_str(), "sticky_feature"]);
            self.obs.pin_gauge = Some(GaugeGuard::new(gauge));
        }
        if let Some(s) = self.server_mut(Slot::Primary) {
            if !s.dedicated {
                s.dedicated = true;
                self.actions.push_back(Action::Dedicate {
                    slot: Slot::Primary,
                });
            }
        }
    }

    /// A write committed at `now` and `route.requirement` was set from it: a new pin starts (a
    /// later write restarts it, since reads then wait for that one).
    pub(crate) fn write_pin_started(&mut self, now: Instant) {
        self.obs.write_pin = WritePin {
            since: (self.own != Requirement::NONE).then_some(now),
            held_reads: false,
        };
    }

    /// A batch goes to `slot` for `reason`: logs it at debug and ends a read-your-writes pin
    /// when a replica serves a read by ranking again. A pin is observed only if reads were
    /// kept on the primary meanwhile (otherwise the session never waited), so the value is the
    /// time until the first replica read, at the resolution of the session's own reads.
    pub(crate) fn observe_routed(
        &mut self,
        slot: Slot,
        reason: Reason,
        node: &NodeSpec,
        env: &Env,
    ) {
        tracing::debug!(
            target = slot.role().as_str(),
            node = node.label(),
            reason = reason.as_str(),
            "routed batch"
        );
        let Some(since) = self.obs.write_pin.since else {
            return;
        };
        match (slot, reason) {
            (Slot::Primary, Reason::PinnedAfterWrite) => self.obs.write_pin.held_reads = true,
            (
                Slot::Replica,
                Reason::ReadNearest
                | Reason::LagExcluded
                | Reason::UnhealthyExcluded
                | Reason::WaitedForReplica,
            ) => {
                if self.obs.write_pin.held_reads {
                    env.metrics
                        .pin_after_write
                        .observe(env.now.saturating_duration_since(since).as_secs_f64());
                }
                self.obs.write_pin = WritePin::default();
            }
            // The primary is gone and reads went back to replicas without the guarantee.
            (Slot::Replica, Reason::NoPrimary) => self.obs.write_pin = WritePin::default(),
            _ => {}
        }
    }

    /// Errors told to the client since the last call (the driver counts them).
    pub fn take_errors(&mut self) -> Vec<ErrorKind> {
        std::mem::take(&mut self.obs.errors)
    }
}
