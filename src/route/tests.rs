//! Table tests for the routing decision, with a controlled clock and hand-made health.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::classify::PinReason;
use crate::topology::{ConfiguredRole, NodeSpec};

const US: Region = Region {
    lat: 39.0,
    lon: -77.5,
};
const EU: Region = Region {
    lat: 53.3,
    lon: -6.3,
};
const AP: Region = Region {
    lat: 1.35,
    lon: 103.8,
};

fn node(role: ConfiguredRole, location: Region) -> Arc<NodeSpec> {
    Arc::new(node_in(role, location, "r"))
}

fn node_in(role: ConfiguredRole, location: Region, region: &str) -> NodeSpec {
    NodeSpec::plain("app", role, "127.0.0.1", 1, region, location)
}

/// Replica 0 in Asia, replica 1 in Europe.
fn cluster() -> ClusterSpec {
    ClusterSpec {
        name: "app".into(),
        primary: node(ConfiguredRole::Primary, US),
        replicas: vec![
            node(ConfiguredRole::Replica(0), AP),
            node(ConfiguredRole::Replica(1), EU),
        ],
        allowed_regions: Vec::new(),
        pooling: Default::default(),
    }
}

fn replica(lsn: u64, lag_ms: u64) -> NodeHealth {
    NodeHealth {
        up: true,
        in_recovery: Some(true),
        lsn: Some(lsn),
        lag: Some(Duration::from_millis(lag_ms)),
        ..Default::default()
    }
}

fn health(replicas: Vec<NodeHealth>) -> ClusterHealth {
    ClusterHealth {
        primary: NodeHealth {
            up: true,
            in_recovery: Some(false),
            lsn: Some(1000),
            ..Default::default()
        },
        replicas,
        primary_samples: Vec::new(),
        keys: Vec::new(),
    }
}

struct Case {
    name: &'static str,
    class: Class,
    hint: Option<Hint>,
    session: SessionRoute,
    replicas: Option<Vec<NodeHealth>>,
    policy: NoEligibleReplica,
    want: Decision,
}

fn route(target: Target, reason: Reason) -> Decision {
    Decision::Route { target, reason }
}

#[test]
fn decision_table() {
    let t0 = Instant::now();
    let s = SessionRoute::default();
    let both_fresh = Some(vec![replica(1000, 10), replica(1000, 10)]);
    let cases = vec![
        Case {
            name: "read goes to the nearest replica (EU is nearer us-east than AP)",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        Case {
            name: "write goes to the primary",
            class: Class::Write,
            hint: None,
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Write),
        },
        Case {
            name: "unknown goes to the primary",
            class: Class::Unknown,
            hint: None,
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Write),
        },
        Case {
            name: "BEGIN goes to the primary",
            class: Class::Begin { read_only: None },
            hint: None,
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Write),
        },
        Case {
            name: "BEGIN READ ONLY may use a replica",
            class: Class::Begin {
                read_only: Some(true),
            },
            hint: None,
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        Case {
            name: "BEGIN under default_transaction_read_only",
            class: Class::Begin { read_only: None },
            hint: None,
            session: SessionRoute {
                default_read_only: true,
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        Case {
            name: "BEGIN READ WRITE overrides the session default",
            class: Class::Begin {
                read_only: Some(false),
            },
            hint: None,
            session: SessionRoute {
                default_read_only: true,
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Write),
        },
        Case {
            name: "inside a transaction, stay where it runs",
            class: Class::Write,
            hint: None,
            session: SessionRoute {
                txn: TxnStatus::InTransaction,
                txn_target: Some(Target::Replica(0)),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(0), Reason::InTransaction),
        },
        Case {
            name: "failed transaction block also stays",
            class: Class::End,
            hint: None,
            session: SessionRoute {
                txn: TxnStatus::Failed,
                txn_target: Some(Target::Primary),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::InTransaction),
        },
        Case {
            name: "pinned session reads on the primary",
            class: Class::Read,
            hint: None,
            session: SessionRoute { pinned: true, ..s },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::StickySessionFeature),
        },
        Case {
            name: "a pinning statement goes to the primary",
            class: Class::Pin(PinReason::Listen),
            hint: None,
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::StickySessionFeature),
        },
        Case {
            name: "comment hint primary",
            class: Class::Read,
            hint: Some(Hint::Primary),
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Hint),
        },
        Case {
            name: "session route override primary",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                route_override: Some(Hint::Primary),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Hint),
        },
        Case {
            name: "comment hint replica ignores the read-your-writes pin",
            class: Class::Read,
            hint: Some(Hint::Replica),
            session: SessionRoute {
                requirement: Requirement::lsn(5000),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(1), Reason::Hint),
        },
        Case {
            name: "replica hint never moves a write",
            class: Class::Write,
            hint: Some(Hint::Replica),
            session: s,
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::Write),
        },
        Case {
            name: "auto override routes by class",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                route_override: Some(Hint::Auto),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        Case {
            name: "awaiting the first WAL sample after a write: primary",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                requirement: Requirement::awaiting(t0),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::PinnedAfterWrite),
        },
        Case {
            name: "pinned after write even when the policy says error",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                requirement: Requirement::lsn(2000),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Error,
            want: route(Target::Primary, Reason::PinnedAfterWrite),
        },
        Case {
            name: "only the replica that replayed the write is eligible",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                requirement: Requirement::lsn(1500),
                ..s
            },
            replicas: Some(vec![replica(1600, 10), replica(1400, 10)]),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(0), Reason::ReadNearest),
        },
        Case {
            name: "window not over yet",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                requirement: Requirement::until(t0 + Duration::from_secs(1)),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::PinnedAfterWrite),
        },
        Case {
            name: "window over",
            class: Class::Read,
            hint: None,
            session: SessionRoute {
                requirement: Requirement::until(t0),
                ..s
            },
            replicas: both_fresh.clone(),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        Case {
            name: "lagging nearest replica is skipped, and the reason says so",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: Some(vec![replica(1000, 10), replica(900, 60_000)]),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(0), Reason::LagExcluded),
        },
        Case {
            name: "all replicas lagging: primary, lag_excluded",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: Some(vec![replica(900, 60_000), replica(900, 60_000)]),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::LagExcluded),
        },
        Case {
            name: "all replicas lagging, policy error",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: Some(vec![replica(900, 60_000), replica(900, 60_000)]),
            policy: NoEligibleReplica::Error,
            want: Decision::Refuse(Reason::LagExcluded),
        },
        Case {
            name: "down nearest replica is skipped, and the reason says so",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: Some(vec![replica(1000, 10), NodeHealth::default()]),
            policy: NoEligibleReplica::Primary,
            want: route(Target::Replica(0), Reason::UnhealthyExcluded),
        },
        Case {
            name: "a second node out of recovery while the primary is up: split brain, refused",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: Some(vec![
                NodeHealth {
                    in_recovery: Some(false),
                    ..replica(1000, 0)
                },
                NodeHealth::default(),
            ]),
            policy: NoEligibleReplica::Primary,
            want: Decision::Refuse(Reason::PrimaryConflict),
        },
        Case {
            name: "no health published yet: primary",
            class: Class::Read,
            hint: None,
            session: s,
            replicas: None,
            policy: NoEligibleReplica::Primary,
            want: route(Target::Primary, Reason::NoReplicaFallback),
        },
    ];
    let c = cluster();
    for case in cases {
        let h = case.replicas.map(health);
        let policy = Routing {
            no_eligible_replica: case.policy,
            max_replica_lag: Duration::from_secs(10),
            ..Routing::default()
        };
        let input = RouteInput {
            class: &case.class,
            hint: case.hint,
            session: &case.session,
            cluster: &c,
            health: h.as_ref(),
            policy: &policy,
            location: US,
            replica_km: &[],
            now: t0 + Duration::from_millis(1),
        };
        assert_eq!(decide(&input), case.want, "{}", case.name);
    }
}

#[test]
fn writes_follow_the_observed_primary_and_fail_fast_without_one() {
    let t0 = Instant::now();
    let c = cluster();
    let policy = Routing::default();
    let s = SessionRoute::default();
    let down = NodeHealth::default();
    let standby = replica(1000, 10);
    let promoted = NodeHealth {
        in_recovery: Some(false),
        ..replica(1000, 0)
    };
    let cases = [
        (
            "primary down, replicas up: writes refused",
            vec![standby.clone(), standby.clone()],
            false,
            Class::Write,
            Decision::Refuse(Reason::NoPrimary),
        ),
        (
            "primary down: reads go on from replicas",
            vec![standby.clone(), standby.clone()],
            false,
            Class::Read,
            route(Target::Replica(1), Reason::ReadNearest),
        ),
        (
            "primary down, no replica: reads refused too",
            vec![down.clone(), down.clone()],
            false,
            Class::Read,
            Decision::Refuse(Reason::NoPrimary),
        ),
        (
            "a promoted replica is the primary",
            vec![promoted.clone(), standby.clone()],
            false,
            Class::Write,
            route(Target::Primary, Reason::Write),
        ),
        (
            "and it serves no reads as a replica",
            vec![promoted.clone(), standby.clone()],
            false,
            Class::Read,
            route(Target::Replica(1), Reason::ReadNearest),
        ),
        (
            "two primaries: writes refused",
            vec![promoted.clone(), standby.clone()],
            true,
            Class::Write,
            Decision::Refuse(Reason::PrimaryConflict),
        ),
    ];
    let pinned = SessionRoute {
        requirement: Requirement::lsn(5000),
        ..s
    };
    for (name, replicas, primary_up, class, want) in cases {
        let session = if name.contains("pinned") { pinned } else { s };
        let mut h = health(replicas);
        if !primary_up {
            h.primary = NodeHealth {
                up: false,
                ..h.primary
            };
        }
        let input = RouteInput {
            class: &class,
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
}

#[test]
fn requirement_resolves_from_the_first_sample_taken_after_the_commit() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let samples = [(at(5), 100), (at(10), 110), (at(15), 120), (at(60), 900)];
    let cases = [
        (Requirement::awaiting(at(1)), Requirement::lsn(100)),
        (Requirement::awaiting(at(10)), Requirement::lsn(120)), // same instant is not after
        (Requirement::awaiting(at(12)), Requirement::lsn(120)), // not the latest (900)
        (Requirement::awaiting(at(61)), Requirement::awaiting(at(61))),
        (Requirement::lsn(7), Requirement::lsn(7)),
        (Requirement::NONE, Requirement::NONE),
    ];
    for (req, want) in cases {
        assert_eq!(req.resolve(&samples), want, "{req:?}");
    }
    assert_eq!(
        Requirement::awaiting(at(1)).resolve(&[]),
        Requirement::awaiting(at(1))
    );
}

#[test]
fn window_is_lag_times_factor_clamped() {
    let policy = Routing::default(); // min 50ms, max 5s, factor 2
    let cases = [(0, 50), (10, 50), (100, 200), (1000, 2000), (4000, 5000)];
    for (lag, want) in cases {
        assert_eq!(
            window_after_write(&policy, Duration::from_millis(lag)),
            Duration::from_millis(want),
            "lag {lag}"
        );
    }
}

#[test]
fn great_circle_distances_match_known_city_pairs() {
    // Reference great-circle distances (km).
    let cases = [
        ((40.7128, -74.0060), (51.5074, -0.1278), 5570.0), // New York - London
        ((35.6762, 139.6503), (-33.8688, 151.2093), 7820.0), // Tokyo - Sydney
        ((48.8566, 2.3522), (52.5200, 13.4050), 878.0),    // Paris - Berlin
        ((1.3521, 103.8198), (22.3193, 114.1694), 2590.0), // Singapore - Hong Kong
    ];
    for ((la1, lo1), (la2, lo2), want) in cases {
        let d = distance_km(Region { lat: la1, lon: lo1 }, Region { lat: la2, lon: lo2 });
        assert!((d - want).abs() / want < 0.01, "{d} vs {want}");
    }
    assert_eq!(distance_km(EU, EU), 0.0);
}

mod ranking;

mod waiting;

#[test]
fn every_reason_is_listed_once() {
    let names: std::collections::HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Reason::ALL.len());
}
