//! The live, validated desired state built from a [`Config`]: users with their SCRAM secrets,
//! clusters with their nodes and backend TLS settings. Immutable once built; published whole.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pgwire::api::auth::sasl::scram::gen_salted_password;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::classify::WriteFunctions;
use crate::config::{
    AuthMethod, BackendTls, Config, Health as HealthConfig, Limits, Node, Problem, Region, Routing,
};
use crate::tls;

pub struct Topology {
    /// 1 for the configuration loaded at start, +1 for each applied reload.
    pub generation: u64,
    pub users: HashMap<String, Arc<UserSpec>>,
    /// The same users in configuration order.
    pub users_in_order: Vec<Arc<UserSpec>>,
    pub clusters: HashMap<String, Arc<ClusterSpec>>,
    pub limits: Limits,
    pub routing: Routing,
    pub write_functions: WriteFunctions,
    pub health: HealthConfig,
    pub region: String,
    /// Coordinates of `region`: where clients are assumed to be when nothing says otherwise.
    pub location: Region,
    /// Every named region, for `pgmeridian.region` startup options.
    pub regions: BTreeMap<String, Region>,
    /// Peers whose connections start with a PROXY header; empty: PROXY protocol off.
    pub proxy_trusted: Vec<ipnet::IpNet>,
    pub geoip: Option<PathBuf>,
    /// The fleet's other instances, for CancelRequests their keys name (`peers`, without this
    /// instance's own entry).
    pub peers: Vec<crate::cancel::Peer>,
    /// Whose CancelRequests for a peer's key are forwarded, besides the peers' own addresses
    /// and `proxy_trusted` (`cancel_forward_from`).
    pub cancel_forward_from: Vec<ipnet::IpNet>,
    /// Iterations of the client SCRAM verifiers (fixed at start: the SCRAM state machines are).
    pub scram_iterations: u32,
}

pub struct UserSpec {
    pub name: String,
    pub password: String,
    pub auth: AuthMethod,
    /// May open the admin console.
    pub admin: bool,
    /// The SCRAM verifier (salt, iterations, stored and server keys), derived once per load,
    /// not per login.
    pub scram: crate::auth::ScramKeys,
    /// Backend logins: salted passwords by the node's salt, derived once each.
    pub backend_scram: crate::backend::scram::SaltedPasswords,
}

pub struct ClusterSpec {
    pub name: String,
    pub primary: Arc<NodeSpec>,
    pub replicas: Vec<Arc<NodeSpec>>,
    /// Residency: regions reads may be served from; empty means any.
    pub allowed_regions: Vec<String>,
    /// `clusters.NAME.pooling`, else the top-level `pooling`.
    pub pooling: crate::config::Pooling,
}

impl ClusterSpec {
    /// The primary, then the replicas in configuration order.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeSpec>> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// Whether residency rules let `node` serve this cluster's reads.
    pub fn allows(&self, node: &NodeSpec) -> bool {
        self.allowed_regions.is_empty() || self.allowed_regions.contains(&node.region)
    }
}

/// Whether a node was listed as the primary or a replica (its observed role comes with health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfiguredRole {
    Primary,
    Replica(usize),
}

pub struct NodeSpec {
    /// `host:port/database`: what health is tracked under, across reloads.
    pub key: Arc<str>,
    /// The configuration entry it was built from (a reload keeps the node if it is unchanged).
    pub configured: Node,
    pub cluster: String,
    /// Configured `name`, else `host:port`: the node's metric label.
    pub name: String,
    pub role: ConfiguredRole,
    pub host: String,
    pub port: u16,
    pub region: String,
    pub location: Region,
    /// Database name on the backend.
    pub database: String,
    pub tls: BackendTlsSpec,
    /// Server connections of this node leased to sessions right now (live, not configuration:
    /// the ranking's load tie-break).
    pub sessions: Arc<AtomicUsize>,
    /// Taken out of read routing by the operator (`DRAIN`, admin console). Live state, shared
    /// with the node of the same name in the next topology, so a reload keeps it.
    pub drained: Arc<AtomicBool>,
}

pub enum BackendTlsSpec {
    Disable,
    Prefer(Arc<ClientConfig>, ServerName<'static>),
    Require(Arc<ClientConfig>, ServerName<'static>),
}

impl NodeSpec {
    /// A node at `host:port` without TLS, named by its address, built in code rather than from
    /// a file (tests and benchmarks).
    pub fn plain(
        cluster: &str,
        role: ConfiguredRole,
        host: &str,
        port: u16,
        region: &str,
        location: Region,
    ) -> NodeSpec {
        NodeSpec {
            key: format!("{host}:{port}/{cluster}").into(),
            configured: Node {
                host: host.to_owned(),
                port,
                region: region.to_owned(),
                tls: BackendTls::Disable,
                ..Node::default()
            },
            cluster: cluster.to_owned(),
            name: format!("{host}:{port}"),
            role,
            host: host.to_owned(),
            port,
            region: region.to_owned(),
            location,
            database: cluster.to_owned(),
            tls: BackendTlsSpec::Disable,
            sessions: Arc::default(),
            drained: Arc::default(),
        }
    }

    /// The node's metric label: its configured `name`, else `host:port`.
    pub fn label(&self) -> &str {
        &self.name
    }

    /// Whether the operator drained it (no new reads are routed to it).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeSpec({})", self.key)
    }
}

impl fmt::Display for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            ConfiguredRole::Primary => "primary",
            ConfiguredRole::Replica(_) => "replica",
        };
        if self.name == format!("{}:{}", self.host, self.port) {
            write!(f, "{}/{role} ({})", self.cluster, self.name)
        } else {
            write!(
                f,
                "{}/{} ({role}, {}:{})",
                self.cluster, self.name, self.host, self.port
            )
        }
    }
}

impl Topology {
    /// Builds live state from a validated config; loads CA files (problems carry YAML paths).
    pub fn build(config: &Config) -> Result<Topology, Vec<Problem>> {
        Topology::build_after(config, None)
    }

    /// Like [`Topology::build`], for a reload: nodes configured exactly as before keep their
    /// `NodeSpec` (sessions' connections to them and their load counts stay valid) and the
    /// generation moves on.
    pub fn build_after(
        config: &Config,
        previous: Option<&Topology>,
    ) -> Result<Topology, Vec<Problem>> {
        let mut problems = Vec::new();
        let scram_iterations = previous.map_or(config.scram_iterations, |t| t.scram_iterations);
        let users_in_order: Vec<Arc<UserSpec>> = config
            .users
            .iter()
            .map(|u| {
                let salt: [u8; 16] = rand::random();
                let salted = gen_salted_password(&u.password, &salt, scram_iterations as usize);
                let spec = UserSpec {
                    name: u.name.clone(),
                    password: u.password.clone(),
                    auth: u.auth,
                    admin: u.admin,
                    scram: crate::auth::ScramKeys::from_salted(
                        salt.to_vec(),
                        salted,
                        scram_iterations as usize,
                    ),
                    backend_scram: Default::default(),
                };
                Arc::new(spec)
            })
            .collect();
        let users = users_in_order
            .iter()
            .map(|u| (u.name.clone(), u.clone()))
            .collect();
        let location_of = |region: &str| {
            config
                .regions
                .get(region)
                .copied()
                .unwrap_or(Region { lat: 0.0, lon: 0.0 })
        };
        let unverified = tls::unverified_client_config();
        let mut clusters = HashMap::new();
        for (name, c) in &config.clusters {
            let mut node = |n: &Node, role: ConfiguredRole, path: String| {
                let tls = match backend_tls(n, &unverified) {
                    Ok(t) => t,
                    Err(message) => {
                        problems.push(Problem::new(path, message));
                        BackendTlsSpec::Disable
                    }
                };
                let same = |old: &&Arc<NodeSpec>| {
                    old.configured == *n
                        && old.location == location_of(&n.region)
                        && matches!(
                            (old.role, role),
                            (ConfiguredRole::Primary, ConfiguredRole::Primary)
                                | (ConfiguredRole::Replica(_), ConfiguredRole::Replica(_))
                        )
                };
                if let Some(old) = previous
                    .and_then(|t| t.clusters.get(name))
                    .and_then(|c| c.nodes().find(same))
                {
                    return old.clone();
                }
                let label = n
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", n.host, n.port));
                // A node changed in place keeps its drain (the operator's handle is its name).
                let drained = previous
                    .and_then(|t| t.clusters.get(name))
                    .and_then(|c| c.nodes().find(|o| o.name == label))
                    .map_or_else(Arc::default, |o| o.drained.clone());
                Arc::new(NodeSpec {
                    configured: n.clone(),
                    key: format!(
                        "{}:{}/{}",
                        n.host,
                        n.port,
                        n.database.as_deref().unwrap_or(name)
                    )
                    .into(),
                    cluster: name.clone(),
                    name: label,
                    role,
                    host: n.host.clone(),
                    port: n.port,
                    region: n.region.clone(),
                    location: location_of(&n.region),
                    database: n.database.clone().unwrap_or_else(|| name.clone()),
                    tls,
                    sessions: Arc::default(),
                    drained,
                })
            };
            let primary = node(
                &c.primary,
                ConfiguredRole::Primary,
                format!("clusters.{name}.primary"),
            );
            let replicas = c
                .replicas
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    node(
                        n,
                        ConfiguredRole::Replica(i),
                        format!("clusters.{name}.replicas[{i}]"),
                    )
                })
                .collect();
            let spec = ClusterSpec {
                name: name.clone(),
                primary,
                replicas,
                allowed_regions: c.allowed_regions.clone(),
                pooling: c.pooling.clone().unwrap_or_else(|| config.pooling.clone()),
            };
            clusters.insert(name.clone(), Arc::new(spec));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Topology {
            generation: previous.map_or(1, |t| t.generation + 1),
            users,
            users_in_order,
            clusters,
            limits: config.limits.clone(),
            routing: config.routing.clone(),
            write_functions: WriteFunctions::new(&config.routing.write_functions)
                .with_reads(&config.routing.read_functions),
            health: config.health.clone(),
            region: config.region.clone(),
            location: location_of(&config.region),
            regions: config.regions.clone(),
            proxy_trusted: config
                .proxy_protocol
                .iter()
                .flat_map(|p| &p.trusted)
                .filter_map(|t| crate::config::parse_cidr(t).ok())
                .collect(),
            geoip: config.geoip.as_ref().map(|g| g.database.clone()),
            peers: config.other_peers(),
            cancel_forward_from: config
                .cancel_forward_from
                .iter()
                .filter_map(|t| crate::config::parse_cidr(t).ok())
                .collect(),
            scram_iterations,
        })
    }
}

fn backend_tls(n: &Node, unverified: &Arc<ClientConfig>) -> Result<BackendTlsSpec, String> {
    let name = || {
        ServerName::try_from(n.host.clone())
            .map_err(|e| format!("host {:?} is not a valid TLS server name: {e}", n.host))
    };
    Ok(match n.tls {
        BackendTls::Disable => BackendTlsSpec::Disable,
        BackendTls::Prefer => BackendTlsSpec::Prefer(unverified.clone(), name()?),
        BackendTls::Require => BackendTlsSpec::Require(unverified.clone(), name()?),
        BackendTls::VerifyFull => {
            let ca = n.tls_ca.as_deref().ok_or("tls: verify-full needs tls_ca")?;
            BackendTlsSpec::Require(tls::verifying_client_config(ca)?, name()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(r1: &str) -> Config {
        let text = format!(
            "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
users:
  - {{ name: app, password: x }}
  - {{ name: ops, password: y, admin: true }}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: 5432, region: us-east, tls: disable }}
    replicas:
      - {{ name: r0, host: 127.0.0.1, port: 5433, region: us-east, tls: disable }}
      - {{ {r1}, host: 127.0.0.1, region: us-east, tls: disable }}
"
        );
        Config::from_yaml(&text, &|_| None).unwrap()
    }

    #[test]
    fn a_drain_follows_the_node_name_across_reloads() {
        let build = |c: &Config, prev: Option<&Topology>| {
            Topology::build_after(c, prev).unwrap_or_else(|_| panic!("topology"))
        };
        let t1 = build(&yaml("name: r1, port: 5434"), None);
        assert!(!t1.users["app"].admin && t1.users["ops"].admin);
        let app = &t1.clusters["app"];
        app.replicas[0].drained.store(true, Ordering::Relaxed);
        app.replicas[1].drained.store(true, Ordering::Relaxed);
        // r0 unchanged (the same spec), r1 moved to another port (a new spec, the same name).
        let t2 = build(&yaml("name: r1, port: 5435"), Some(&t1));
        let app2 = &t2.clusters["app"];
        assert!(Arc::ptr_eq(&app2.replicas[0], &app.replicas[0]));
        assert!(!Arc::ptr_eq(&app2.replicas[1], &app.replicas[1]));
        assert!(app2.replicas[0].is_drained() && app2.replicas[1].is_drained());
        assert!(!app2.primary.is_drained());
        // Renamed: another node as far as the operator is concerned.
        let t3 = build(&yaml("name: r2, port: 5435"), Some(&t2));
        assert!(!t3.clusters["app"].replicas[1].is_drained());
        app2.replicas[1].drained.store(false, Ordering::Relaxed);
        assert!(t3.clusters["app"].replicas[0].is_drained());
    }
}
