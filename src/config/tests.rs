//! Table tests for parsing, env expansion and validation of the YAML configuration.

use super::*;

const VALID: &str = r#"
listen: 127.0.0.1:6432
region: us-east
regions:
  us-east: { lat: 39.0, lon: -77.5 }
  eu-west: { lat: 53.3, lon: -6.3 }
users:
  - { name: app, password: "${APP_PASSWORD}" }
  - { name: legacy, password: secret, auth: md5 }
clusters:
  app:
    primary: { host: 127.0.0.1, port: 5432, region: us-east }
    replicas:
      - { host: 127.0.0.1, port: 5433, region: eu-west, database: app_eu, tls: disable }
limits: { startup_timeout: 3s, client_idle_timeout: 10m }
routing: { read_your_writes: lsn, max_replica_lag: 10s, write_functions: [billing.bump_counter] }
health: { interval: 50ms }
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "APP_PASSWORD" => Some("s3cret".into()),
        "EMPTY" => Some(String::new()),
        "POD_REGION" => Some("eu-west".into()),
        "POD_ORDINAL" => Some("3".into()),
        "PEER_HOST" => Some("pgmeridian-1.pgmeridian".into()),
        _ => None,
    }
}

fn problems(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml, &env) {
        Ok(_) => vec![],
        Err(ps) => ps.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn valid_file_parses_with_defaults_and_expansion() {
    let c = Config::from_yaml(VALID, &env).unwrap();
    assert_eq!(c.users[0].password, "s3cret");
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.users[1].auth, AuthMethod::Md5);
    assert!(!c.users[0].admin, "admin defaults to false");
    let app = &c.clusters["app"];
    assert_eq!(app.primary.tls, BackendTls::Prefer);
    assert_eq!(app.replicas[0].database.as_deref(), Some("app_eu"));
    assert_eq!(c.limits.startup_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.client_idle_timeout, Duration::from_secs(600));
    assert_eq!(c.limits.connect_timeout, Limits::default().connect_timeout);
    assert_eq!(c.pooling, Pooling::default());
    assert_eq!(c.pooling.mode, PoolMode::Transaction);
    assert_eq!(c.scram_iterations, 4096);
}

#[test]
fn each_mistake_is_reported_at_its_yaml_path() {
    // (replace this, with that, expect a problem starting with)
    let cases: &[(&str, &str, &str)] = &[
        (
            "listen: 127.0.0.1:6432",
            "listen: nowhere",
            "listen: \"nowhere\" is not an IP:port",
        ),
        (
            "region: us-east",
            "region: mars",
            "region: region \"mars\" is not defined",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\nworkers: 0",
            "workers: at least one session thread",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\nworkers: 100000",
            "workers: 100000 session threads is more than the limit of 1024",
        ),
        (
            "lat: 53.3",
            "lat: 153.3",
            "regions.eu-west.lat: latitude 153.3",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\nscram_iterations: 0",
            "scram_iterations: must be between 1 and 1000000",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\npooling: { size: 0 }",
            "pooling.size: must be at least 1",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\npooling: { size: 2, min_idle: 3 }",
            "pooling.min_idle: 3 is more than pooling.size (2)",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\npooling: { wait_timeout: 0s }",
            "pooling.wait_timeout: must be greater than 0s",
        ),
        (
            "listen: 127.0.0.1:6432",
            "listen: 127.0.0.1:6432\npooling: { mode: statement }",
            "pooling.mode: unknown variant `statement`",
        ),
        (
            "    replicas:",
            "    pooling: { size: 0 }\n    replicas:",
            "clusters.app.pooling.size: must be at least 1",
        ),
        (
            "port: 5433",
            "port: 5432",
            "clusters.app.replicas[0]: 127.0.0.1:5432 appears twice",
        ),
        (
            "port: 5433",
            "port: 0",
            "clusters.app.replicas[0].port: must be 1-65535",
        ),
        (
            "region: eu-west, database",
            "region: ap-south, database",
            "clusters.app.replicas[0].region: region \"ap-south\"",
        ),
        (
            "name: legacy",
            "name: app",
            "users[1].name: user \"app\" is listed twice",
        ),
        (
            "auth: md5 }",
            "auth: md5, admin: yes-please }",
            "users[1].admin: invalid type",
        ),
        (
            "clusters:\n  app:",
            "clusters:\n  pgmeridian:",
            "clusters.pgmeridian: \"pgmeridian\" is the admin console's database name",
        ),
        (
            "${APP_PASSWORD}",
            "${NOPE}",
            "users[0].password: environment variable NOPE is not set",
        ),
        (
            "${APP_PASSWORD}",
            "${EMPTY}",
            "users[0].password: must not be empty",
        ),
        (
            "${APP_PASSWORD}",
            "${APP",
            "users[0].password: unterminated ${ (the value is not shown",
        ),
        (
            "tls: disable",
            "tls: verify-full",
            "clusters.app.replicas[0].tls_ca: tls: verify-full needs a CA file",
        ),
        (
            "tls: disable",
            "tls: sometimes",
            "clusters.app.replicas[0].tls: unknown variant `sometimes`",
        ),
        (
            "auth: md5",
            "auth: plain",
            "users[1].auth: unknown variant `plain`",
        ),
        (
            "database: app_eu",
            "databse: app_eu",
            "clusters.app.replicas[0]: unknown field `databse`",
        ),
        ("limits: {", "limitz: {", "unknown field `limitz`"),
        (
            "startup_timeout: 3s",
            "startup_timeout: 0s",
            "limits.startup_timeout: must be greater than 0s",
        ),
        (
            "startup_timeout: 3s",
            "startup_timeout: soon",
            "limits.startup_timeout: invalid",
        ),
        (
            "port: 5433",
            "port: 70000",
            "clusters.app.replicas[0].port: invalid value",
        ),
        (
            "  app:\n",
            "  app:\n    allowed_regions: [us-east]\n",
            "clusters.app.replicas[0].region: \"eu-west\" is outside clusters.app.allowed_regions",
        ),
        (
            "  app:\n",
            "  app:\n    allowed_regions: [us-east, eu-west, moon]\n",
            "clusters.app.allowed_regions[2]: region \"moon\" is not defined",
        ),
        (
            "health: { interval: 50ms }",
            "proxy_protocol: { trusted: [10.0.0.0/8, 10.0.0.300] }",
            "proxy_protocol.trusted[1]: \"10.0.0.300\" is not an IP address or CIDR range",
        ),
        (
            "health: { interval: 50ms }",
            "proxy_protocol: { trusted: [] }",
            "proxy_protocol.trusted: list at least one",
        ),
        (
            "{ host: 127.0.0.1, port: 5433,",
            "{ name: \"127.0.0.1:5432\", host: 127.0.0.1, port: 5433,",
            "clusters.app.replicas[0].name: node name \"127.0.0.1:5432\" is used twice",
        ),
        (
            "max_replica_lag: 10s",
            "max_replica_lag: 10s, rtt_granularity: 0s",
            "routing.rtt_granularity: must be greater than 0s",
        ),
    ];
    for (from, to, want) in cases {
        assert!(VALID.contains(from), "fixture lacks {from:?}");
        let got = problems(&VALID.replacen(from, to, 1));
        assert!(
            got.iter().any(|p| p.starts_with(want)),
            "replacing {from:?} with {to:?}: wanted a problem starting {want:?}, got {got:?}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let yaml = VALID
        .replacen("region: us-east", "region: mars", 1)
        .replacen("port: 5433", "port: 0", 1)
        .replacen("name: legacy", "name: app", 1);
    assert_eq!(problems(&yaml).len(), 3, "{:?}", problems(&yaml));
}

#[test]
fn missing_sections_are_errors() {
    assert!(problems("listen: 127.0.0.1:1\nregion: x\n")
        .iter()
        .any(|p| p.contains("missing field `users`")));
    let empty =
        "listen: 127.0.0.1:1\nregion: x\nregions: {x: {lat: 0, lon: 0}}\nusers: []\nclusters: {}\n";
    assert_eq!(
        problems(empty),
        vec![
            "users: at least one user is required",
            "clusters: at least one cluster is required"
        ]
    );
}

#[test]
fn region_is_expanded_before_it_is_checked() {
    let c = Config::from_yaml(
        &VALID.replacen("region: us-east", "region: ${POD_REGION}", 1),
        &env,
    )
    .unwrap();
    assert_eq!(c.region, "eu-west");
    let unset = VALID.replacen("region: us-east", "region: ${NO_REGION}", 1);
    assert!(
        problems(&unset).contains(&"region: environment variable NO_REGION is not set".into()),
        "{:?}",
        problems(&unset)
    );
}

#[test]
fn env_expansion_table() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("plain", Ok("plain")),
        ("${APP_PASSWORD}", Ok("s3cret")),
        ("pre-${APP_PASSWORD}-post", Ok("pre-s3cret-post")),
        ("$${APP_PASSWORD}", Ok("${APP_PASSWORD}")),
        ("cost $5", Ok("cost $5")),
        ("${}", Err("invalid environment variable name \"\"")),
        ("${A-B}", Err("invalid environment variable name \"A-B\"")),
        ("${MISSING}", Err("environment variable MISSING is not set")),
        ("x${OPEN", Err("unterminated ${ in \"x${OPEN\"")),
    ];
    for (input, want) in cases {
        let got = expand(input, &env).map_err(|e| e.describe(input));
        assert_eq!(got.as_deref().map_err(String::as_str), *want, "{input}");
    }
}

/// A password that cannot be expanded is described, never quoted: not by `check-config`, not
/// by a failed reload (both print these problems).
#[test]
fn password_expansion_problems_do_not_quote_the_password() {
    // (password as written in the YAML, a fragment that must not be printed, expected problem)
    let cases = [
        (
            "'hunter2${oops'",
            "hunter2",
            "users[0].password: unterminated ${ (the value is not shown; write $${ for a literal ${)",
        ),
        (
            "'pa${ss word}rd'",
            "ss word",
            "users[0].password: ${…} around something that is not an environment variable name",
        ),
        (
            "'abc${NOPE}def'",
            "abc",
            "users[0].password: refers to an environment variable that is not set",
        ),
    ];
    for (written, secret, want) in cases {
        let yaml = VALID.replace("\"${APP_PASSWORD}\"", written);
        let found = problems(&yaml);
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "{written}: {found:?}"
        );
        assert!(
            found.iter().all(|p| !p.contains(secret)),
            "{written}: printed {secret:?}: {found:?}"
        );
    }
}

/// An unquoted scalar is taken as the text written (YAML's plain scalars), not as a number.
#[test]
fn unquoted_passwords_are_kept_as_written() {
    for written in ["12345", "0123", "true", "4.50"] {
        let c = Config::from_yaml(&VALID.replace("\"${APP_PASSWORD}\"", written), &env).unwrap();
        assert_eq!(c.users[0].password, written);
    }
}

#[test]
fn debug_output_redacts_passwords() {
    let c = Config::from_yaml(VALID, &env).unwrap();
    let printed = format!("{c:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(!printed.contains("\"secret\""), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");
}

#[test]
fn example_config_in_repo_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/pgmeridian.example.yaml"
    ))
    .unwrap();
    let got = Config::from_yaml(&text, &|_| Some("example".into()));
    assert!(got.is_ok(), "{:?}", got.err());
}

#[test]
fn backend_authentication_is_scram_or_none_unless_a_node_lists_more() {
    let c = Config::from_yaml(VALID, &env).unwrap();
    let app = &c.clusters["app"];
    assert_eq!(
        app.primary.require_auth(),
        [BackendAuth::ScramSha256, BackendAuth::None]
    );
    assert_eq!(app.primary.max_scram_iterations(), 100_000);
    let yaml = VALID.replace(
        "{ host: 127.0.0.1, port: 5432, region: us-east }",
        "{ host: 127.0.0.1, port: 5432, region: us-east, require_auth: [scram-sha-256, md5, password], max_scram_iterations: 600000 }",
    );
    let c = Config::from_yaml(&yaml, &env).unwrap();
    let primary = &c.clusters["app"].primary;
    assert_eq!(
        primary.require_auth(),
        [
            BackendAuth::ScramSha256,
            BackendAuth::Md5,
            BackendAuth::Password
        ]
    );
    assert_eq!(primary.max_scram_iterations(), 600_000);
    // (node keys, expected problem)
    for (keys, want) in [
        (
            "require_auth: []",
            "clusters.app.primary.require_auth: list at least one method",
        ),
        (
            "require_auth: [kerberos]",
            "clusters.app.primary.require_auth",
        ),
        (
            "max_scram_iterations: 0",
            "clusters.app.primary.max_scram_iterations: must be between 1 and 10000000",
        ),
        (
            "max_scram_iterations: 10000001",
            "clusters.app.primary.max_scram_iterations: must be between 1 and 10000000",
        ),
    ] {
        let yaml = VALID.replace(
            "{ host: 127.0.0.1, port: 5432, region: us-east }",
            &format!("{{ host: 127.0.0.1, port: 5432, region: us-east, {keys} }}"),
        );
        let found = problems(&yaml);
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "{keys}: {found:?}"
        );
    }
}

#[test]
fn tcp_keepalive_is_off_or_at_least_a_second() {
    let with = |l: &str| {
        VALID.replace(
            "limits: { startup_timeout: 3s",
            &format!("limits: {{ {l}, startup_timeout: 3s"),
        )
    };
    let c = Config::from_yaml(VALID, &env).unwrap();
    assert_eq!(c.limits.tcp_keepalive, Duration::from_secs(30));
    assert_eq!(c.limits.tcp_user_timeout, Duration::from_secs(60));
    for ok in [
        "tcp_keepalive: 0s",
        "tcp_keepalive: 1s",
        "tcp_user_timeout: 0s",
    ] {
        assert_eq!(problems(&with(ok)), Vec::<String>::new(), "{ok}");
    }
    assert_eq!(
        problems(&with("tcp_keepalive: 500ms")),
        vec!["limits.tcp_keepalive: must be 0s (off) or at least 1s"]
    );
}

#[test]
fn the_admin_token_is_expanded_checked_and_never_printed() {
    let with = |t: &str| format!("{VALID}admin_token: {t}\n");
    let c = Config::from_yaml(&with("\"${APP_PASSWORD}\""), &env).unwrap();
    assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("s3cret"));
    assert!(!format!("{c:?}").contains("s3cret"));
    assert_eq!(Config::from_yaml(VALID, &env).unwrap().admin_token, None);
    for (token, want) in [
        ("''", "admin_token: must not be empty when given"),
        (
            "\"${NOPE}\"",
            "admin_token: environment variable NOPE is not set",
        ),
        (
            "'tok3n${oops'",
            "admin_token: unterminated ${ (the value is not shown",
        ),
    ] {
        let found = problems(&with(token));
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "{token}: {found:?}"
        );
        assert!(found.iter().all(|p| !p.contains("tok3n")), "{found:?}");
    }
}

#[test]
fn descriptors_needed_counts_clients_pools_probes_and_admin() {
    // VALID: 2 users; cluster `app` with a primary and one replica (2 nodes).
    let base = Config::from_yaml(VALID, &env).unwrap();
    let reserve = 64;
    // (extra YAML, expected)
    let cases: &[(&str, u64)] = &[
        // 10000 clients + 2 nodes × 2 users × 20 + 2 probes + 64 admin + reserve.
        ("", 10_000 + 80 + 2 + 64 + reserve),
        (
            "limits: { max_client_connections: 100, max_admin_connections: 4 }\n",
            100 + 80 + 2 + 4 + reserve,
        ),
        ("pooling: { size: 5 }\n", 10_000 + 20 + 2 + 64 + reserve),
    ];
    for (extra, want) in cases {
        let yaml = format!(
            "{}{extra}",
            VALID.replace(
                "limits: { startup_timeout: 3s, client_idle_timeout: 10m }\n",
                ""
            )
        );
        let c = Config::from_yaml(&yaml, &env).unwrap_or_else(|p| panic!("{extra}: {p:?}"));
        assert_eq!(c.descriptors_needed(), *want, "{extra}");
    }
    // A cluster's own pooling wins over the top-level one; clusters add up.
    let mut c = base.clone();
    let mut other = c.clusters["app"].clone();
    other.replicas.clear();
    other.pooling = Some(Pooling {
        size: 50,
        ..Pooling::default()
    });
    c.clusters.insert("other".into(), other);
    assert_eq!(
        c.descriptors_needed(),
        base.descriptors_needed() + 2 * 50 + 1
    );
}

#[test]
fn fleet_keys_table() {
    let with = |extra: &str| format!("{VALID}{extra}");
    // (extra YAML, the problems expected: each the start of one problem)
    let cases: &[(&str, &[&str])] = &[
        ("", &[]),
        ("instance_id: 1\n", &[]),
        ("instance_id: \"${POD_ORDINAL}\"\n", &[]),
        (
            "instance_id: 2\npeers:\n  - { id: 1, address: 10.0.0.11:6432 }\n  - { id: 2, address: 10.0.0.12:6432 }\n  - { id: 3, address: \"${PEER_HOST}:6432\", proxy_protocol: true }\n  - { id: 4, address: \"[2001:db8::4]:6432\" }\n",
            &[],
        ),
        ("cancel_forward_from: [10.0.0.0/8, 192.0.2.7, \"::1\"]\n", &[]),
        ("cancel_forward_from: [10.0.0.0/33, nowhere]\n", &["cancel_forward_from[0]:", "cancel_forward_from[1]:"]),
        ("instance_id: 0\n", &["instance_id: must be a number from 1 to 1023, not \"0\""]),
        ("instance_id: 1024\n", &["instance_id: must be a number from 1 to 1023"]),
        ("instance_id: -1\n", &["instance_id: must be a number from 1 to 1023"]),
        ("instance_id: one\n", &["instance_id: must be a number from 1 to 1023, not \"one\""]),
        ("instance_id: \"${NO_ORDINAL}\"\n", &["instance_id: environment variable NO_ORDINAL is not set", "instance_id: must be a number from 1 to 1023, not \"${NO_ORDINAL}\""]),
        (
            "peers:\n  - { id: 2, address: 10.0.0.12:6432 }\n",
            &["instance_id: is required with `peers`"],
        ),
        (
            "instance_id: 1\npeers:\n  - { id: 2, address: 10.0.0.12:6432 }\n  - { id: 2, address: 10.0.0.13:6432 }\n",
            &["peers[1].id: instance 2 is listed twice (also peers[0])"],
        ),
        (
            "instance_id: 1\npeers:\n  - { id: 2, address: 10.0.0.12:6432 }\n  - { id: 3, address: 10.0.0.12:6432 }\n",
            &["peers[1].address: \"10.0.0.12:6432\" is also the address of peers[0]"],
        ),
        (
            "instance_id: 1\npeers:\n  - { id: 0, address: 10.0.0.12:6432 }\n  - { id: 2000, address: 10.0.0.13:6432 }\n",
            &["peers[0].id: must be a number from 1 to 1023", "peers[1].id: must be a number from 1 to 1023"],
        ),
        (
            "instance_id: 1\npeers:\n  - { id: 2, address: 10.0.0.12 }\n  - { id: 3, address: \"2001:db8::4:6432\" }\n  - { id: 4, address: \"a b:6432\" }\n  - { id: 5, address: \"host:0\" }\n  - { id: 6, address: \"${NOPE}:6432\" }\n",
            &[
                "peers[0].address: \"10.0.0.12\" is not host:port",
                "peers[1].address: \"2001:db8::4:6432\" is not host:port",
                "peers[2].address: \"a b:6432\" is not host:port",
                "peers[3].address: \"host:0\": the port must be 1-65535",
                "peers[4].address: environment variable NOPE is not set",
                "peers[4].address: \"${NOPE}:6432\" is not host:port",
            ],
        ),
        (
            "instance_id: 1\npeers:\n  - { id: 2, addr: 10.0.0.12:6432 }\n",
            &["peers[0]: unknown field `addr`"],
        ),
    ];
    for (extra, want) in cases {
        let got = problems(&with(extra));
        assert_eq!(got.len(), want.len(), "{extra}\n{got:#?}");
        for w in *want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "{extra}\nwant: {w}\n got: {got:#?}"
            );
        }
    }
    let c = Config::from_yaml(&with(cases[3].0), &env).unwrap();
    assert_eq!(c.instance_id(), 2);
    let peers = c.other_peers();
    let summary: Vec<(u16, &str, u16, bool)> = peers
        .iter()
        .map(|p| (p.id, p.host.as_str(), p.port, p.proxy_protocol))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "10.0.0.11", 6432, false),
            (3, "pgmeridian-1.pgmeridian", 6432, true),
            (4, "2001:db8::4", 6432, false),
        ],
        "its own entry (id 2) is left out"
    );
    let ordinal = Config::from_yaml(&with(cases[2].0), &env).unwrap();
    assert_eq!(ordinal.instance_id(), 3);
    assert_eq!(Config::from_yaml(VALID, &env).unwrap().instance_id(), 0);
}
