//! The routing decision, pure: from a batch's statement class, the session's routing state, the
//! cluster's desired and observed state and the time, which node serves the batch and why.
//! No sockets, clocks or randomness here; the session relays to whatever this returns.

use std::time::{Duration, Instant};

use crate::classify::{Class, Hint};
use crate::config::{NoEligibleReplica, Region, Routing};
use crate::health::{ClusterHealth, NodeHealth, PrimaryView};
use crate::protocol::backend::TxnStatus;
use crate::topology::ClusterSpec;

/// Where a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    /// Index into the cluster's configured replicas.
    Replica(usize),
}

/// Why it goes there; a metric label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not provably read-only (writes, DDL, unknown statements, read-write transactions).
    Write,
    /// A read served by the best eligible replica.
    ReadNearest,
    /// A read kept on the primary because no replica has replayed this session's last write.
    PinnedAfterWrite,
    /// Inside a transaction block, which never changes backend.
    InTransaction,
    /// A routing hint (comment or `SET pgmeridian.route`) chose the target.
    Hint,
    /// A nearer replica is beyond `max_replica_lag`: the read went to the next one, or to the
    /// primary when none is within it.
    LagExcluded,
    /// A nearer replica is down: the read went to the next one, or to the primary.
    UnhealthyExcluded,
    /// A read on the primary because no replica is configured, up and in recovery.
    NoReplicaFallback,
    /// The session used a feature that cannot move (temp table, LISTEN, …): primary for life.
    StickySessionFeature,
    /// A replica refused the statement as a write; it was re-run on the primary.
    ReadonlyRetry,
    /// A replica connection broke, or a recovery conflict cancelled the read there, before any
    /// answer reached the client; the read went elsewhere.
    ReadRetry,
    /// No reachable node is out of recovery: writes are refused, and reads of a session
    /// pinned after its write go to a replica anyway (the write cannot be confirmed there).
    NoPrimary,
    /// Refused: more than one node claims to be the primary.
    PrimaryConflict,
    /// A read that needed a WAL position waited for the nearest replica to replay it, since
    /// that was expected to be faster than the primary (`routing.causal_wait_max`).
    WaitedForReplica,
}

impl Reason {
    /// Every reason, in declaration order (the admin console's SHOW STATS columns).
    pub const ALL: [Reason; 14] = [
        Reason::Write,
        Reason::ReadNearest,
        Reason::PinnedAfterWrite,
        Reason::InTransaction,
        Reason::Hint,
        Reason::LagExcluded,
        Reason::UnhealthyExcluded,
        Reason::NoReplicaFallback,
        Reason::StickySessionFeature,
        Reason::ReadonlyRetry,
        Reason::ReadRetry,
        Reason::NoPrimary,
        Reason::PrimaryConflict,
        Reason::WaitedForReplica,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::ReadNearest => "read_nearest",
            Reason::PinnedAfterWrite => "pinned_after_write",
            Reason::InTransaction => "in_transaction",
            Reason::Hint => "hint",
            Reason::LagExcluded => "lag_excluded",
            Reason::UnhealthyExcluded => "unhealthy_excluded",
            Reason::NoReplicaFallback => "no_replica_fallback",
            Reason::StickySessionFeature => "sticky_session_feature",
            Reason::ReadonlyRetry => "readonly_retry",
            Reason::ReadRetry => "read_retry",
            Reason::NoPrimary => "no_primary",
            Reason::PrimaryConflict => "primary_conflict",
            Reason::WaitedForReplica => "waited_for_replica",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Route {
        target: Target,
        reason: Reason,
    },
    /// `no_eligible_replica: error` and no replica qualifies for a read.
    Refuse(Reason),
    /// The read needs WAL position `lsn`, which replica `replica` is expected to replay sooner
    /// than the primary could answer: wait for it there, at most `routing.causal_wait_max`.
    Wait {
        replica: usize,
        lsn: u64,
    },
}

/// What a session's next reads must wait for: its own last write, a causal token it was
/// given, the writes of its scope. All parts must hold; `Requirement::NONE` asks nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requirement {
    /// Replicas must have replayed at least this primary WAL position.
    pub lsn: Option<u64>,
    /// A write committed at this instant and its position is not known yet: the first primary
    /// WAL sample taken after it is (until then no replica qualifies).
    pub sample_after: Option<Instant>,
    /// `window` mode: reads stay on the primary until this instant.
    pub until: Option<Instant>,
}

impl Requirement {
    pub const NONE: Requirement = Requirement {
        lsn: None,
        sample_after: None,
        until: None,
    };

    pub fn lsn(lsn: u64) -> Requirement {
        Requirement {
            lsn: Some(lsn),
            ..Requirement::NONE
        }
    }

    pub fn awaiting(committed: Instant) -> Requirement {
        Requirement {
            sample_after: Some(committed),
            ..Requirement::NONE
        }
    }

    pub fn until(t: Instant) -> Requirement {
        Requirement {
            until: Some(t),
            ..Requirement::NONE
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Requirement::NONE
    }

    /// Both requirements at once: the later of each part.
    pub fn and(self, other: Requirement) -> Requirement {
        Requirement {
            lsn: self.lsn.max(other.lsn),
            sample_after: self.sample_after.max(other.sample_after),
            until: self.until.max(other.until),
        }
    }

    /// Replaces "awaiting a sample" by the first primary WAL position sampled after the write
    /// committed (`samples`: oldest first): that position is at or after the commit, and the
    /// earliest such one is the least a replica must have replayed.
    pub fn resolve(self, samples: &[(Instant, u64)]) -> Requirement {
        let Some(committed) = self.sample_after else {
            return self;
        };
        match samples.iter().find(|&&(at, _)| at > committed) {
            Some(&(_, lsn)) => Requirement {
                lsn: self.lsn.max(Some(lsn)),
                sample_after: None,
                until: self.until,
            },
            None => self,
        }
    }

    fn satisfied_by(self, replica: &NodeHealth, now: Instant) -> bool {
        self.sample_after.is_none()
            && self
                .lsn
                .is_none_or(|need| replica.lsn.is_some_and(|l| l >= need))
            && self.until.is_none_or(|t| now >= t)
    }
}

/// The routing-relevant part of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionRoute {
    pub txn: TxnStatus,
    /// Where the open transaction runs (set while `txn` is not Idle).
    pub txn_target: Option<Target>,
    /// A sticky feature was used: primary for the rest of the session.
    pub pinned: bool,
    /// `SET pgmeridian.route`; `Auto` routes by class.
    pub route_override: Option<Hint>,
    /// `default_transaction_read_only` is on for this session.
    pub default_read_only: bool,
    pub requirement: Requirement,
    /// A replica to leave out of this decision (its connection just broke).
    pub avoid: Option<usize>,
    /// The replica this session holds a connection to (it does not count toward its own load).
    pub current_replica: Option<usize>,
}

pub struct RouteInput<'a> {
    pub class: &'a Class,
    /// From a leading `/* pgmeridian:… */` comment.
    pub hint: Option<Hint>,
    pub session: &'a SessionRoute,
    pub cluster: &'a ClusterSpec,
    /// None until the first probe round has been published.
    pub health: Option<&'a ClusterHealth>,
    pub policy: &'a Routing,
    /// Where reads are ranked from.
    pub location: Region,
    /// Distances from `location` to the cluster's replicas by index, when the caller keeps
    /// them ([`replica_distances`]; a session computes them once per topology); a replica
    /// without one here is measured on the spot.
    pub replica_km: &'a [f64],
    pub now: Instant,
}

/// Distances from `from` to each of the cluster's replicas, in its order (for
/// [`RouteInput::replica_km`]).
pub fn replica_distances(cluster: &ClusterSpec, from: Region) -> Vec<f64> {
    cluster
        .replicas
        .iter()
        .map(|spec| distance_km(from, spec.location))
        .collect()
}

/// Writes (and everything else that needs the primary) go there if exactly one node is it.
fn primary_for(input: &RouteInput, reason: Reason) -> Decision {
    match input.health.map(|h| h.primary_view()) {
        Some(PrimaryView::None) => Decision::Refuse(Reason::NoPrimary),
        Some(PrimaryView::Conflict) => Decision::Refuse(Reason::PrimaryConflict),
        _ => Decision::Route {
            target: Target::Primary,
            reason,
        },
    }
}

pub fn decide(input: &RouteInput) -> Decision {
    let s = input.session;
    if s.txn != TxnStatus::Idle {
        return Decision::Route {
            target: s.txn_target.unwrap_or(Target::Primary),
            reason: Reason::InTransaction,
        };
    }
    if s.pinned || matches!(input.class, Class::Pin(_)) {
        return primary_for(input, Reason::StickySessionFeature);
    }
    let hint = input.hint.or(s.route_override).filter(|h| *h != Hint::Auto);
    match hint {
        Some(Hint::Primary) => return primary_for(input, Reason::Hint),
        Some(Hint::Replica) if is_movable(input.class) => {
            // The client accepts staleness up to the lag budget, but not writes on a replica.
            return match best_replica(input, Requirement::NONE) {
                Ok((i, _)) => Decision::Route {
                    target: Target::Replica(i),
                    reason: Reason::Hint,
                },
                Err(reason) => fallback(input, reason),
            };
        }
        _ => {}
    }
    let read = match input.class {
        Class::Read | Class::Empty => true,
        Class::Begin { read_only } => read_only.unwrap_or(s.default_read_only),
        _ => false,
    };
    if !read {
        return primary_for(input, Reason::Write);
    }
    match best_replica(input, s.requirement) {
        Ok((i, reason)) => Decision::Route {
            target: Target::Replica(i),
            reason,
        },
        Err(Reason::PinnedAfterWrite) if worth_waiting(input).is_some() => {
            let (replica, lsn) = worth_waiting(input).unwrap_or_default();
            Decision::Wait { replica, lsn }
        }
        // Pinned to a primary that is gone: waiting cannot help (no new WAL position will be
        // sampled), and "reads continue from replicas" wins over a guarantee nobody can give.
        Err(Reason::PinnedAfterWrite) if no_primary(input) => {
            match best_replica(input, Requirement::NONE) {
                Ok((i, _)) => Decision::Route {
                    target: Target::Replica(i),
                    reason: Reason::NoPrimary,
                },
                Err(reason) => fallback(input, reason),
            }
        }
        Err(reason) => fallback(input, reason),
    }
}

/// When a read's position is not replayed anywhere yet: whether the best replica (ignoring
/// the position) is expected to replay it and answer sooner than the primary would answer,
/// within `routing.causal_wait_max`. The expected wait is the replica's apply delay (else its
/// lag); both sides pay their probe round trip.
fn worth_waiting(input: &RouteInput) -> Option<(usize, u64)> {
    let max = input.policy.causal_wait_max;
    let need = input.session.requirement.lsn?;
    if max.is_zero() || input.session.requirement.sample_after.is_some() {
        return None;
    }
    let health = input.health?;
    let until_ok = input
        .session
        .requirement
        .until
        .is_none_or(|t| input.now >= t);
    let (i, _) = best_replica(input, Requirement::NONE).ok()?;
    let replica = health.replicas.get(i)?;
    let primary_rtt = health.acting_primary_rtt()?;
    let expected = replica.apply_delay.or(replica.lag).unwrap_or_default() + replica.rtt?;
    (until_ok && expected <= max && expected < primary_rtt).then_some((i, need))
}

fn no_primary(input: &RouteInput) -> bool {
    matches!(
        input.health.map(|h| h.primary_view()),
        Some(PrimaryView::None | PrimaryView::Conflict)
    )
}

/// Statements a replica can run at all (a hint never sends writes to a replica).
fn is_movable(class: &Class) -> bool {
    matches!(
        class,
        Class::Read
            | Class::Empty
            | Class::Begin {
                read_only: Some(true)
            }
    )
}

fn fallback(input: &RouteInput, reason: Reason) -> Decision {
    match (input.policy.no_eligible_replica, reason) {
        // Waiting for our own write to replicate is normal: always the primary.
        (_, Reason::PinnedAfterWrite) | (NoEligibleReplica::Primary, _) => {
            primary_for(input, reason)
        }
        (NoEligibleReplica::Error, _) => Decision::Refuse(reason),
    }
}

/// How eligible replicas are ordered, best first: nearer (whole km), then lower probe RTT (in
/// `rtt_granularity` steps; unmeasured last), then the replica the session already uses, then
/// fewer sessions, then configuration order, so the choice is deterministic.
///
/// Moving a session costs a backend login, so it stays where it is unless another replica is
/// nearer or clearly faster: its current replica's RTT counts one step less, so another must be
/// at least two steps lower (more than one `rtt_granularity` faster, never just jitter across a
/// step boundary), and load only places
/// sessions that have no replica yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RankKey {
    pub distance_km: u64,
    pub rtt_step: u64,
    /// False for the session's current replica.
    pub switch: bool,
    pub load: usize,
    pub index: usize,
}

impl RankKey {
    pub fn new(
        distance_km: f64,
        rtt: Option<Duration>,
        load: usize,
        current: bool,
        index: usize,
        granularity: Duration,
    ) -> RankKey {
        let step = granularity.as_nanos().max(1);
        let rtt_step = rtt.map_or(u64::MAX, |r| (r.as_nanos() / step) as u64);
        RankKey {
            distance_km: distance_km.round() as u64,
            rtt_step: if current {
                rtt_step.saturating_sub(1)
            } else {
                rtt_step
            },
            switch: !current,
            load,
            index,
        }
    }
}

/// The best eligible replica (up, within the lag budget, has what the session needs, allowed by
/// residency, not drained), with `read_nearest`, or the reason a nearer one was passed over; otherwise why
/// none qualified.
fn best_replica(input: &RouteInput, need: Requirement) -> Result<(usize, Reason), Reason> {
    let Some(health) = input.health else {
        return Err(Reason::NoReplicaFallback);
    };
    let max_lag = input.policy.max_replica_lag;
    let mut saw_behind_write = false;
    let mut best: Option<RankKey> = None;
    // The nearest replica left out for being down or lagging, and why.
    let mut passed_over: Option<(u64, Reason)> = None;
    for (i, (spec, h)) in input
        .cluster
        .replicas
        .iter()
        .zip(&health.replicas)
        .enumerate()
    {
        // Drained by the operator: out of the choice, like a replica residency forbids.
        if input.session.avoid == Some(i) || !input.cluster.allows(spec) || spec.is_drained() {
            continue;
        }
        let km = match input.replica_km.get(i) {
            Some(&km) => km,
            None => distance_km(input.location, spec.location),
        };
        let excluded = if !h.up {
            Some(Reason::UnhealthyExcluded)
        } else if h.in_recovery != Some(true) {
            // A promoted node is no replica; nothing to report.
            continue;
        } else if !h.serves_reads(max_lag) {
            Some(Reason::LagExcluded)
        } else {
            None
        };
        if let Some(reason) = excluded {
            let d = km.round() as u64;
            // Lag wins a tie: it is the more telling reason (the node is there, but behind).
            let nearer = passed_over.is_none_or(|(pd, pr)| {
                d < pd || (d == pd && reason == Reason::LagExcluded && pr != reason)
            });
            if nearer {
                passed_over = Some((d, reason));
            }
            continue;
        }
        if !need.satisfied_by(h, input.now) {
            saw_behind_write = true;
            continue;
        }
        let own = input.session.current_replica == Some(i);
        let load = spec
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(own as usize);
        let key = RankKey::new(km, h.rtt, load, own, i, input.policy.rtt_granularity);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    match (best, passed_over) {
        (Some(k), Some((d, reason))) if d <= k.distance_km => Ok((k.index, reason)),
        (Some(k), _) => Ok((k.index, Reason::ReadNearest)),
        (None, _) if saw_behind_write => Err(Reason::PinnedAfterWrite),
        (None, Some((_, reason))) => Err(reason),
        (None, None) => Err(Reason::NoReplicaFallback),
    }
}

/// Great-circle distance (haversine, mean Earth radius).
pub fn distance_km(a: Region, b: Region) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// `window` mode: how long reads stay on the primary after a write.
pub fn window_after_write(policy: &Routing, measured_lag: Duration) -> Duration {
    let w = &policy.window;
    let scaled = measured_lag.mul_f64(w.lag_factor.max(0.0));
    scaled.clamp(w.min, w.max)
}

#[cfg(test)]
mod tests;
