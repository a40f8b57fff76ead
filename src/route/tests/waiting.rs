//! Table tests for waiting on a replica instead of reading from the primary, and for
//! operator-drained replicas.

use std::time::{Duration, Instant};

use super::*;

#[test]
fn a_read_waits_for_its_replica_only_when_that_is_faster_than_the_primary() {
    let t0 = Instant::now();
    let c = cluster();
    let ms = Duration::from_millis;
    // The primary is far (180 ms); the EU replica is 1 ms away and replays 30 ms behind, at
    // position 900 (the read needs 950).
    let with = |replica_lag: u64, replica_rtt: u64, primary_rtt: u64| {
        let mut h = health(vec![
            NodeHealth {
                rtt: Some(ms(300)),
                ..replica(900, 10)
            },
            NodeHealth {
                rtt: Some(ms(replica_rtt)),
                ..replica(900, replica_lag)
            },
        ]);
        h.primary.rtt = Some(ms(primary_rtt));
        h
    };
    let need = |lsn| SessionRoute {
        requirement: Requirement::lsn(lsn),
        ..SessionRoute::default()
    };
    let cases = [
        (
            "near replica, far primary: wait",
            with(30, 1, 180),
            need(950),
            200,
            Decision::Wait {
                replica: 1,
                lsn: 950,
            },
        ),
        (
            "waiting is off",
            with(30, 1, 180),
            need(950),
            0,
            route(Target::Primary, Reason::PinnedAfterWrite),
        ),
        (
            "the primary is nearer than the wait",
            with(30, 1, 20),
            need(950),
            200,
            route(Target::Primary, Reason::PinnedAfterWrite),
        ),
        (
            "the replica lags more than the bound",
            with(300, 1, 900),
            need(950),
            200,
            route(Target::Primary, Reason::PinnedAfterWrite),
        ),
        (
            "already replayed: no wait at all",
            with(30, 1, 180),
            need(900),
            200,
            route(Target::Replica(1), Reason::ReadNearest),
        ),
    ];
    for (name, h, session, wait_ms, want) in cases {
        let policy = Routing {
            causal_wait_max: ms(wait_ms),
            ..Routing::default()
        };
        let input = RouteInput {
            class: &Class::Read,
            hint: None,
            session: &session,
            cluster: &c,
            health: Some(&h),
            policy: &policy,
            location: US,
            replica_km: &[],
            now: t0,
        };
        assert_eq!(decide(&input), want, "{name}");
    }
    // A position still awaiting its probe sample cannot be waited for.
    let awaiting = SessionRoute {
        requirement: Requirement::awaiting(t0),
        ..SessionRoute::default()
    };
    let policy = Routing {
        causal_wait_max: ms(200),
        ..Routing::default()
    };
    let h = with(30, 1, 180);
    let input = RouteInput {
        class: &Class::Read,
        hint: None,
        session: &awaiting,
        cluster: &c,
        health: Some(&h),
        policy: &policy,
        location: US,
        replica_km: &[],
        now: t0,
    };
    assert_eq!(
        decide(&input),
        route(Target::Primary, Reason::PinnedAfterWrite)
    );
}

#[test]
fn drained_replicas_get_no_new_reads() {
    use std::sync::atomic::Ordering;
    let t0 = Instant::now();
    let s = SessionRoute::default();
    let on_eu = SessionRoute {
        current_replica: Some(1),
        ..s
    };
    let in_txn_on_eu = SessionRoute {
        txn: TxnStatus::InTransaction,
        txn_target: Some(Target::Replica(1)),
        ..s
    };
    // (name, drained replicas, class, hint, session, policy, want)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        &[usize],
        Class,
        Option<Hint>,
        SessionRoute,
        NoEligibleReplica,
        Decision,
    )> = vec![
        (
            "nothing drained: EU, the nearest",
            &[],
            Class::Read,
            None,
            s,
            NoEligibleReplica::Primary,
            route(Target::Replica(1), Reason::ReadNearest),
        ),
        (
            "EU drained: the next nearest, AP",
            &[1],
            Class::Read,
            None,
            s,
            NoEligibleReplica::Primary,
            route(Target::Replica(0), Reason::ReadNearest),
        ),
        (
            "AP drained: EU as before",
            &[0],
            Class::Read,
            None,
            s,
            NoEligibleReplica::Primary,
            route(Target::Replica(1), Reason::ReadNearest),
        ),
        (
            "a session on EU leaves it once drained",
            &[1],
            Class::Read,
            None,
            on_eu,
            NoEligibleReplica::Primary,
            route(Target::Replica(0), Reason::ReadNearest),
        ),
        (
            "a replica hint skips a drained replica",
            &[1],
            Class::Read,
            Some(Hint::Replica),
            s,
            NoEligibleReplica::Primary,
            route(Target::Replica(0), Reason::Hint),
        ),
        (
            "all drained: reads fall back to the primary",
            &[0, 1],
            Class::Read,
            None,
            s,
            NoEligibleReplica::Primary,
            route(Target::Primary, Reason::NoReplicaFallback),
        ),
        (
            "all drained, no_eligible_replica: error",
            &[0, 1],
            Class::Read,
            None,
            s,
            NoEligibleReplica::Error,
            Decision::Refuse(Reason::NoReplicaFallback),
        ),
        (
            "writes are not affected",
            &[0, 1],
            Class::Write,
            None,
            s,
            NoEligibleReplica::Primary,
            route(Target::Primary, Reason::Write),
        ),
        (
            "a transaction running on EU finishes there",
            &[1],
            Class::Read,
            None,
            in_txn_on_eu,
            NoEligibleReplica::Primary,
            route(Target::Replica(1), Reason::InTransaction),
        ),
    ];
    let policy = |p| Routing {
        no_eligible_replica: p,
        max_replica_lag: Duration::from_secs(10),
        ..Routing::default()
    };
    let h = health(vec![replica(1000, 10), replica(1000, 10)]);
    for (name, drained, class, hint, session, p, want) in cases {
        let c = cluster();
        for &i in drained {
            c.replicas[i].drained.store(true, Ordering::Relaxed);
        }
        let policy = policy(p);
        let input = RouteInput {
            class: &class,
            hint,
            session: &session,
            cluster: &c,
            health: Some(&h),
            policy: &policy,
            location: US,
            replica_km: &[],
            now: t0,
        };
        assert_eq!(decide(&input), want, "{name}");
    }
}
