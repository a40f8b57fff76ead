//! What a session reports about itself beyond the routed-batch counter: the sticky-pin gauge,
//! the read-your-writes pin histogram, errors told to the client, and the per-batch routing log
//! line. Bookkeeping only: nothing here changes where a batch goes.

use super::*;
use crate::error::ErrorKind;
use crate::metrics::GaugeGuard;

/// Measures one read-your-writes pin: from the write that set the session's requirement to
/// the first read a replica served after it.
#[derive(Debug, Default)]
pub(super) struct WritePin {
    /// When the last write that set a requirement committed (its ReadyForQuery).
    since: Option<std::time::Instant>,
    /// A read has been kept on the primary (`pinned_after_write`) since then.
    held_reads: bool,
}

impl Relay<'_> {
    /// The session used a feature that cannot move: the primary for the rest of its life.
    pub(super) fn pin(&mut self) {
        self.route.pinned = true;
        if self.pin_gauge.is_none() {
            let gauge = self
                .shared
                .metrics
                .pinned_sessions
                .with_label_values(&[self.cluster.name.as_str(), "sticky_feature"]);
            self.pin_gauge = Some(GaugeGuard::new(gauge));
        }
    }

    /// A write committed at `now` and `route.requirement` was set from it: a new pin starts (a
    /// later write restarts it, since reads then wait for that one).
    pub(super) fn write_pin_started(&mut self, now: std::time::Instant) {
        self.write_pin = WritePin {
            since: (self.route.requirement != Requirement::None).then_some(now),
            held_reads: false,
        };
    }

    /// A batch goes to `slot` for `reason`: logs it at debug and ends a read-your-writes pin
    /// when a replica serves a read by ranking again. A pin is observed only if reads were
    /// kept on the primary meanwhile (otherwise the session never waited), so the value is the
    /// time until the first replica read, at the resolution of the session's own reads.
    pub(super) fn observe_routed(&mut self, slot: Slot, reason: Reason, node: &NodeSpec) {
        let target = slot.role();
        tracing::debug!(
            target = target.as_str(),
            node = node.label(),
            reason = reason.as_str(),
            "routed batch"
        );
        let Some(since) = self.write_pin.since else {
            return;
        };
        match (slot, reason) {
            (Slot::Primary, Reason::PinnedAfterWrite) => self.write_pin.held_reads = true,
            (
                Slot::Replica,
                Reason::ReadNearest | Reason::LagExcluded | Reason::UnhealthyExcluded,
            ) => {
                if self.write_pin.held_reads {
                    self.shared
                        .metrics
                        .pin_after_write
                        .observe(since.elapsed().as_secs_f64());
                }
                self.write_pin = WritePin::default();
            }
            // The primary is gone and reads went back to replicas without the guarantee.
            (Slot::Replica, Reason::NoPrimary) => self.write_pin = WritePin::default(),
            _ => {}
        }
    }

    /// An error is being told to the client.
    pub(super) fn count_error(&self, kind: ErrorKind) {
        self.shared.metrics.error(kind);
    }

    /// Counts how the session ended, when that was an error.
    pub(super) fn count_end(&self, end: &End) {
        match end {
            End::ClientError(e) => self.count_error(e.kind),
            End::BackendGone(_) => self.count_error(ErrorKind::BackendLost),
            End::ClientTerminated | End::ClientGone | End::Shutdown | End::IdleTimeout => {}
        }
    }

    /// A batch's ReadyForQuery arrived: how long it took since it was forwarded.
    pub(super) fn observe_batch(&self, slot: Slot, pending: &Pending) {
        let target = slot.role();
        self.shared
            .metrics
            .batch_done(target, pending.sent_at.elapsed());
    }
}
