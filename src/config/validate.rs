//! Semantic checks of a parsed configuration; every problem is reported with its YAML path.
//! Pure: reads no files (TLS material is loaded, and checked, by `topology.rs`).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

use super::{BackendTls, Config, Node, Problem};

/// Deriving each user's verifier takes this many HMACs at every load: beyond it, a typo.
const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

/// More session threads than this is a typo, not a plan.
const MAX_WORKERS: usize = 1024;

/// Pool sizes must leave room for at least one connection and not ask for more idle ones than
/// the pool may hold; a client must be able to wait at all.
fn check_pooling(pooling: &super::Pooling, path: &str, p: &mut Vec<Problem>) {
    if pooling.size == 0 {
        p.push(Problem::new(format!("{path}.size"), "must be at least 1"));
    }
    if pooling.min_idle > pooling.size {
        p.push(Problem::new(
            format!("{path}.min_idle"),
            format!(
                "{} is more than {path}.size ({})",
                pooling.min_idle, pooling.size
            ),
        ));
    }
    if pooling.wait_timeout.is_zero() {
        p.push(Problem::new(
            format!("{path}.wait_timeout"),
            "must be greater than 0s",
        ));
    }
    if pooling.max_prepared_statements == 0 {
        p.push(Problem::new(
            format!("{path}.max_prepared_statements"),
            "must be at least 1",
        ));
    }
}

/// Every problem found, in file order; empty means valid.
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    check_addr(&config.listen, "listen", &mut p);
    if let Some(admin) = &config.admin_listen {
        check_addr(admin, "admin_listen", &mut p);
    }
    if matches!(&config.admin_token, Some(t) if t.expose().trim().is_empty()) {
        p.push(Problem::new("admin_token", "must not be empty when given"));
    }
    match config.workers {
        Some(0) => p.push(Problem::new(
            "workers",
            "at least one session thread is needed",
        )),
        Some(n) if n > MAX_WORKERS => p.push(Problem::new(
            "workers",
            format!("{n} session threads is more than the limit of {MAX_WORKERS}"),
        )),
        _ => {}
    }
    if !config.regions.contains_key(&config.region) {
        p.push(Problem::new(
            "region",
            unknown_region(&config.region, config),
        ));
    }
    for (name, r) in &config.regions {
        if !(-90.0..=90.0).contains(&r.lat) {
            p.push(Problem::new(
                format!("regions.{name}.lat"),
                format!("latitude {} is outside -90..90", r.lat),
            ));
        }
        if !(-180.0..=180.0).contains(&r.lon) {
            p.push(Problem::new(
                format!("regions.{name}.lon"),
                format!("longitude {} is outside -180..180", r.lon),
            ));
        }
    }
    if config.users.is_empty() {
        p.push(Problem::new("users", "at least one user is required"));
    }
    let mut seen = HashSet::new();
    for (i, u) in config.users.iter().enumerate() {
        if u.name.is_empty() {
            p.push(Problem::new(
                format!("users[{i}].name"),
                "must not be empty",
            ));
        } else if !seen.insert(u.name.as_str()) {
            p.push(Problem::new(
                format!("users[{i}].name"),
                format!("user {:?} is listed twice", u.name),
            ));
        }
        if u.password.is_empty() {
            p.push(Problem::new(
                format!("users[{i}].password"),
                "must not be empty",
            ));
        }
    }
    if config.clusters.is_empty() {
        p.push(Problem::new("clusters", "at least one cluster is required"));
    }
    for (name, cluster) in &config.clusters {
        if name.is_empty() {
            p.push(Problem::new("clusters", "a cluster name must not be empty"));
        }
        if name == super::CONSOLE_DATABASE {
            p.push(Problem::new(
                format!("clusters.{name}"),
                format!(
                    "{name:?} is the admin console's database name; give the cluster another name"
                ),
            ));
        }
        let mut addrs = BTreeSet::new();
        let mut names = BTreeSet::new();
        let nodes = std::iter::once((format!("clusters.{name}.primary"), &cluster.primary)).chain(
            cluster
                .replicas
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("clusters.{name}.replicas[{i}]"), n)),
        );
        for (i, r) in cluster.allowed_regions.iter().enumerate() {
            if !config.regions.contains_key(r) {
                p.push(Problem::new(
                    format!("clusters.{name}.allowed_regions[{i}]"),
                    unknown_region(r, config),
                ));
            }
        }
        for (path, node) in nodes {
            check_node(node, &path, config, &mut p);
            if !cluster.allowed_regions.is_empty()
                && !cluster.allowed_regions.contains(&node.region)
            {
                p.push(Problem::new(
                    format!("{path}.region"),
                    format!(
                        "{:?} is outside clusters.{name}.allowed_regions ({})",
                        node.region,
                        cluster.allowed_regions.join(", ")
                    ),
                ));
            }
            let label = node
                .name
                .clone()
                .unwrap_or_else(|| format!("{}:{}", node.host, node.port));
            if matches!(&node.name, Some(n) if n.trim().is_empty()) {
                p.push(Problem::new(
                    format!("{path}.name"),
                    "must not be empty when given",
                ));
            } else if !names.insert(label.clone()) {
                p.push(Problem::new(
                    format!("{path}.name"),
                    format!("node name {label:?} is used twice in this cluster"),
                ));
            }
            if !addrs.insert((node.host.as_str(), node.port)) {
                p.push(Problem::new(
                    path,
                    format!("{}:{} appears twice in this cluster", node.host, node.port),
                ));
            }
        }
    }
    let l = &config.limits;
    if l.max_message_bytes < 1024 {
        p.push(Problem::new(
            "limits.max_message_bytes",
            "must be at least 1024",
        ));
    }
    for (field, n) in [
        ("max_client_connections", l.max_client_connections),
        ("max_handshakes", l.max_handshakes),
        ("max_handshakes_per_address", l.max_handshakes_per_address),
    ] {
        if n == 0 {
            p.push(Problem::new(
                format!("limits.{field}"),
                "must be at least 1",
            ));
        }
    }
    // The kernel counts keepalive times in whole seconds.
    if !l.tcp_keepalive.is_zero() && l.tcp_keepalive < std::time::Duration::from_secs(1) {
        p.push(Problem::new(
            "limits.tcp_keepalive",
            "must be 0s (off) or at least 1s",
        ));
    }
    if l.max_admin_connections == 0 {
        p.push(Problem::new(
            "limits.max_admin_connections",
            "must be at least 1",
        ));
    }
    for (field, d) in [
        ("startup_timeout", l.startup_timeout),
        ("connect_timeout", l.connect_timeout),
        ("admin_header_timeout", l.admin_header_timeout),
    ] {
        if d.is_zero() {
            p.push(Problem::new(
                format!("limits.{field}"),
                "must be greater than 0s",
            ));
        }
    }
    if !(1..=MAX_SCRAM_ITERATIONS).contains(&config.scram_iterations) {
        p.push(Problem::new(
            "scram_iterations",
            format!("must be between 1 and {MAX_SCRAM_ITERATIONS}"),
        ));
    }
    super::fleet::check(config, &mut p);
    check_pooling(&config.pooling, "pooling", &mut p);
    for (name, c) in &config.clusters {
        if let Some(pooling) = &c.pooling {
            check_pooling(pooling, &format!("clusters.{name}.pooling"), &mut p);
        }
    }
    let r = &config.routing;
    let w = &r.window;
    if w.min > w.max {
        p.push(Problem::new(
            "routing.window.min",
            "must not exceed routing.window.max",
        ));
    }
    if !(w.lag_factor.is_finite() && w.lag_factor >= 0.0) {
        p.push(Problem::new(
            "routing.window.lag_factor",
            "must be a non-negative number",
        ));
    }
    if r.max_replica_lag.is_zero() {
        p.push(Problem::new(
            "routing.max_replica_lag",
            "must be greater than 0s",
        ));
    }
    let lists = [
        ("write_functions", &r.write_functions),
        ("read_functions", &r.read_functions),
    ];
    for (key, list) in lists {
        for (i, f) in list.iter().enumerate() {
            let ok = !f.is_empty()
                && f.split('.').count() <= 2
                && f.split('.').all(|part| !part.is_empty());
            if !ok {
                p.push(Problem::new(
                    format!("routing.{key}[{i}]"),
                    format!("{f:?} is not a function name or schema.name"),
                ));
            }
        }
    }
    if r.rtt_granularity.is_zero() {
        p.push(Problem::new(
            "routing.rtt_granularity",
            "must be greater than 0s",
        ));
    }
    if let Some(pp) = &config.proxy_protocol {
        if pp.trusted.is_empty() {
            p.push(Problem::new(
                "proxy_protocol.trusted",
                "list at least one address or CIDR, or remove proxy_protocol",
            ));
        }
        for (i, t) in pp.trusted.iter().enumerate() {
            if let Err(e) = parse_cidr(t) {
                p.push(Problem::new(format!("proxy_protocol.trusted[{i}]"), e));
            }
        }
    }
    if let Some(g) = &config.geoip {
        if g.database.as_os_str().is_empty() {
            p.push(Problem::new("geoip.database", "must not be empty"));
        }
    }
    let h = &config.health;
    if h.interval.is_zero() || h.timeout.is_zero() {
        p.push(Problem::new(
            "health",
            "interval and timeout must be greater than 0s",
        ));
    }
    if h.fall == 0 || h.rise == 0 {
        p.push(Problem::new("health", "fall and rise must be at least 1"));
    }
    if let Some(u) = &h.user {
        if !config.users.iter().any(|x| &x.name == u) {
            p.push(Problem::new(
                "health.user",
                format!("{u:?} is not one of `users`"),
            ));
        }
    }
    p
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    t.parse::<ipnet::IpNet>()
        .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))
}

fn check_addr(value: &str, path: &str, p: &mut Vec<Problem>) {
    if value.parse::<SocketAddr>().is_err() {
        p.push(Problem::new(
            path,
            format!("{value:?} is not an IP:port address"),
        ));
    }
}

fn check_node(node: &Node, path: &str, config: &Config, p: &mut Vec<Problem>) {
    if node.host.trim().is_empty() {
        p.push(Problem::new(format!("{path}.host"), "must not be empty"));
    }
    if node.port == 0 {
        p.push(Problem::new(format!("{path}.port"), "must be 1-65535"));
    }
    if !config.regions.contains_key(&node.region) {
        p.push(Problem::new(
            format!("{path}.region"),
            unknown_region(&node.region, config),
        ));
    }
    if matches!(&node.database, Some(d) if d.is_empty()) {
        p.push(Problem::new(
            format!("{path}.database"),
            "must not be empty when given",
        ));
    }
    if matches!(&node.require_auth, Some(m) if m.is_empty()) {
        p.push(Problem::new(
            format!("{path}.require_auth"),
            "list at least one method (scram-sha-256, md5, password, none), or remove the key",
        ));
    }
    let most = crate::backend::scram::MAX_ITERATIONS;
    if matches!(node.max_scram_iterations, Some(n) if n == 0 || n > most) {
        p.push(Problem::new(
            format!("{path}.max_scram_iterations"),
            format!("must be between 1 and {most}"),
        ));
    }
    match (node.tls, &node.tls_ca) {
        (BackendTls::VerifyFull, None) => p.push(Problem::new(
            format!("{path}.tls_ca"),
            "tls: verify-full needs a CA file",
        )),
        (BackendTls::Disable | BackendTls::Prefer | BackendTls::Require, Some(_)) => {
            p.push(Problem::new(
                format!("{path}.tls_ca"),
                "only used with tls: verify-full; remove it or set tls: verify-full",
            ))
        }
        _ => {}
    }
}

fn unknown_region(name: &str, config: &Config) -> String {
    let known: Vec<&str> = config.regions.keys().map(String::as_str).collect();
    if known.is_empty() {
        format!("region {name:?} is not defined: add it under `regions:` with lat/lon")
    } else {
        format!(
            "region {name:?} is not defined in `regions` (known: {})",
            known.join(", ")
        )
    }
}
