//! Table tests for replica ranking: client location, health and lag, RTT steps, load,
//! stickiness and residency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// One replica for the ranking table: where it is, how it is, and sessions on it.
struct R {
    at: Region,
    region: &'static str,
    health: NodeHealth,
    load: usize,
}

fn r(at: Region, region: &'static str, rtt_ms: u64) -> R {
    R {
        at,
        region,
        health: NodeHealth {
            rtt: Some(Duration::from_millis(rtt_ms)),
            ..replica(1000, 10)
        },
        load: 0,
    }
}

struct RankCase {
    name: &'static str,
    client: Region,
    replicas: Vec<R>,
    allowed: &'static [&'static str],
    session: SessionRoute,
    want: Decision,
}

#[test]
fn ranking_table() {
    let down = |mut x: R| {
        x.health.up = false;
        x
    };
    let lagging = |mut x: R| {
        x.health.lag = Some(Duration::from_secs(60));
        x
    };
    let load = |mut x: R, n: usize| {
        x.load = n;
        x
    };
    let behind = |mut x: R| {
        x.health.lsn = Some(10);
        x
    };
    let s = SessionRoute::default();
    let cases = vec![
        RankCase {
            name: "a client in Europe reads in Europe",
            client: EU,
            replicas: vec![r(AP, "ap", 1), r(EU, "eu", 1), r(US, "us", 1)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "a client in Asia reads in Asia",
            client: AP,
            replicas: vec![r(EU, "eu", 1), r(US, "us", 1), r(AP, "ap", 1)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(2), Reason::ReadNearest),
        },
        RankCase {
            name: "distance beats RTT across regions",
            client: EU,
            replicas: vec![r(US, "us", 1), r(EU, "eu", 90)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "nearest down: the next nearest serves, and says why",
            client: EU,
            replicas: vec![r(AP, "ap", 1), down(r(EU, "eu", 1)), r(US, "us", 1)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(2), Reason::UnhealthyExcluded),
        },
        RankCase {
            name: "nearest lagging: the next nearest serves, and says why",
            client: EU,
            replicas: vec![r(AP, "ap", 1), lagging(r(EU, "eu", 1)), r(US, "us", 1)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(2), Reason::LagExcluded),
        },
        RankCase {
            name: "a farther replica down changes nothing",
            client: EU,
            replicas: vec![down(r(AP, "ap", 1)), r(EU, "eu", 1)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "every replica down: the primary, and why",
            client: EU,
            replicas: vec![down(r(AP, "ap", 1)), down(r(EU, "eu", 1))],
            allowed: &[],
            session: s,
            want: route(Target::Primary, Reason::UnhealthyExcluded),
        },
        RankCase {
            name: "same region: lower RTT wins",
            client: EU,
            replicas: vec![r(EU, "eu", 40), r(EU, "eu", 2)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "same region, RTTs within one step: fewer sessions wins",
            client: EU,
            replicas: vec![load(r(EU, "eu", 1), 5), load(r(EU, "eu", 3), 2)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "full tie: configuration order",
            client: EU,
            replicas: vec![load(r(EU, "eu", 1), 2), load(r(EU, "eu", 1), 2)],
            allowed: &[],
            session: s,
            want: route(Target::Replica(0), Reason::ReadNearest),
        },
        RankCase {
            name: "full tie: a session keeps the replica it has (its own session not counted)",
            client: EU,
            replicas: vec![load(r(EU, "eu", 1), 2), load(r(EU, "eu", 1), 3)],
            allowed: &[],
            session: SessionRoute {
                current_replica: Some(1),
                ..s
            },
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "a session keeps its replica over an equal one with fewer sessions",
            client: EU,
            replicas: vec![load(r(EU, "eu", 1), 7), load(r(EU, "eu", 1), 0)],
            allowed: &[],
            session: SessionRoute {
                current_replica: Some(0),
                ..s
            },
            want: route(Target::Replica(0), Reason::ReadNearest),
        },
        RankCase {
            name: "RTT jitter across a step boundary does not move a session",
            client: EU,
            replicas: vec![r(EU, "eu", 4), r(EU, "eu", 6)],
            allowed: &[],
            session: SessionRoute {
                current_replica: Some(1),
                ..s
            },
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "a replica two RTT steps lower takes the session",
            client: EU,
            replicas: vec![r(EU, "eu", 2), r(EU, "eu", 11)],
            allowed: &[],
            session: SessionRoute {
                current_replica: Some(1),
                ..s
            },
            want: route(Target::Replica(0), Reason::ReadNearest),
        },
        RankCase {
            name: "a nearer replica takes the session whatever its load",
            client: EU,
            replicas: vec![load(r(US, "us", 1), 0), load(r(EU, "eu", 1), 50)],
            allowed: &[],
            session: SessionRoute {
                current_replica: Some(0),
                ..s
            },
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "unmeasured RTT ranks after measured",
            client: EU,
            replicas: vec![
                R {
                    health: replica(1000, 10),
                    ..r(EU, "eu", 0)
                },
                r(EU, "eu", 30),
            ],
            allowed: &[],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "residency: never outside allowed regions",
            client: EU,
            replicas: vec![r(EU, "eu", 1), r(AP, "ap", 1)],
            allowed: &["ap", "us"],
            session: s,
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
        RankCase {
            name: "residency: no allowed replica means the primary",
            client: EU,
            replicas: vec![r(EU, "eu", 1)],
            allowed: &["us"],
            session: s,
            want: route(Target::Primary, Reason::NoReplicaFallback),
        },
        RankCase {
            name: "a nearer replica behind the session's write is passed over quietly",
            client: EU,
            replicas: vec![behind(r(EU, "eu", 1)), r(US, "us", 1)],
            allowed: &[],
            session: SessionRoute {
                requirement: Requirement::lsn(500),
                ..s
            },
            want: route(Target::Replica(1), Reason::ReadNearest),
        },
    ];
    for case in cases {
        let nodes: Vec<Arc<NodeSpec>> = case
            .replicas
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let n = node_in(ConfiguredRole::Replica(i), x.at, x.region);
                n.sessions
                    .store(x.load, std::sync::atomic::Ordering::Relaxed);
                Arc::new(n)
            })
            .collect();
        let c = ClusterSpec {
            name: "app".into(),
            primary: node(ConfiguredRole::Primary, US),
            replicas: nodes,
            allowed_regions: case.allowed.iter().map(|s| s.to_string()).collect(),
            pooling: Default::default(),
        };
        let h = health(case.replicas.into_iter().map(|x| x.health).collect());
        let policy = Routing::default();
        let input = RouteInput {
            class: &Class::Read,
            hint: None,
            session: &case.session,
            cluster: &c,
            health: Some(&h),
            policy: &policy,
            location: case.client,
            replica_km: &[],
            now: Instant::now(),
        };
        assert_eq!(decide(&input), case.want, "{}", case.name);
        // A session's kept distances decide the same.
        let km = replica_distances(&c, case.client);
        let kept = RouteInput {
            replica_km: &km,
            ..input
        };
        assert_eq!(decide(&kept), case.want, "{} (kept distances)", case.name);
    }
}

#[test]
fn rank_keys_order_by_distance_then_rtt_step_then_load() {
    let g = Duration::from_millis(5);
    let ms = |n| Some(Duration::from_millis(n));
    let k = |d, rtt, load, i| RankKey::new(d, rtt, load, false, i, g);
    assert!(k(100.4, ms(50), 9, 3) < k(101.0, ms(1), 0, 0));
    assert_eq!(
        k(100.4, ms(1), 0, 0).distance_km,
        k(99.6, ms(1), 0, 0).distance_km
    );
    assert!(k(0.0, ms(4), 9, 3) > k(0.0, ms(4), 1, 3));
    assert!(k(0.0, ms(4), 0, 3) < k(0.0, ms(6), 0, 0));
    assert!(k(0.0, ms(4), 0, 3) < k(0.0, None, 0, 0));
    // The current replica: one step of RTT in hand, and ahead of less loaded equals.
    let own = |rtt, load| RankKey::new(0.0, rtt, load, true, 1, g);
    assert!(own(ms(6), 9) < k(0.0, ms(4), 0, 0));
    assert!(own(ms(11), 0) > k(0.0, ms(4), 0, 0));
    assert!(own(None, 0) > k(0.0, ms(400), 0, 0));
}
