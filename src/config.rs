//! The YAML configuration file: its typed shape, `${ENV}` expansion and loading. Validation
//! lives in `config/validate.rs`; turning a valid config into live state is `topology.rs`.

mod env;
mod fleet;
mod nesting;
mod validate;
mod yaml_error;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use env::{expand, ExpandError};
pub use fleet::{split_address, InstanceId, Peer};
pub use validate::{parse_cidr, validate};

/// The database name of the admin console (`psql … pgmeridian`): reserved, no cluster may
/// take it.
pub const CONSOLE_DATABASE: &str = "pgmeridian";

/// One thing wrong with a configuration file, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted YAML path such as `clusters.app.replicas[1].port`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where applications connect (restart to change).
    pub listen: String,
    /// Admin HTTP listener (`/metrics`, `/status`, `/healthz`, `/readyz`); none when unset.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// When set, `/metrics` and `/status` answer only requests with `Authorization: Bearer
    /// TOKEN` (`/healthz` and `/readyz` stay open for orchestrators' probes). `${VAR}` is
    /// expanded as in passwords. Restart to change.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Where this proxy runs: the fallback client location (`${VAR}` is expanded).
    pub region: String,
    /// Named places with coordinates, for distance ranking.
    #[serde(default)]
    pub regions: BTreeMap<String, Region>,
    /// TLS toward clients; without it SSLRequest is answered 'N'.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    pub users: Vec<User>,
    /// Keyed by the database name clients connect with.
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub health: Health,
    /// Client location by IP address (a MaxMind City database).
    #[serde(default)]
    pub geoip: Option<GeoIp>,
    /// PROXY protocol (v1/v2) from L4 load balancers.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// How log lines are written (`--log-format` overrides; restart to change).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Session threads, each with its own single-threaded runtime (default: one per two CPUs;
    /// restart to change).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Backend connection pools (a cluster may override them with `clusters.NAME.pooling`).
    #[serde(default)]
    pub pooling: Pooling,
    /// PBKDF2 iterations of the SCRAM verifiers the proxy derives for its clients (restart to
    /// change). Each client login costs the client this many HMACs.
    #[serde(default = "default_scram_iterations")]
    pub scram_iterations: u32,
    /// Which instance of a fleet this is (1..=1023, `${VAR}` is expanded); the cancel keys it
    /// mints carry it. Restart to change.
    #[serde(default)]
    pub instance_id: Option<InstanceId>,
    /// The fleet's other instances: a CancelRequest with a key one of them minted is forwarded
    /// to it. An entry with this instance's own id is ignored (one list for the whole fleet).
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Addresses (`10.0.0.0/8`, `192.0.2.7`) besides the peers' own and
    /// `proxy_protocol.trusted` whose CancelRequests for a peer's key are forwarded: clients
    /// that reach the instances directly (a Kubernetes Service without PROXY protocol).
    #[serde(default)]
    pub cancel_forward_from: Vec<String>,
}

fn default_scram_iterations() -> u32 {
    4096
}

impl Config {
    /// How many session threads to run: `workers`, else one per two CPUs. A thread with more
    /// sessions takes more events per wakeup; the kernel's share of forwarding (loopback and
    /// NIC receive work runs in the sending thread) needs CPUs of its own.
    pub fn session_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            cpus.div_ceil(2)
        })
    }
}

impl Config {
    /// File descriptors this configuration may hold at once, roughly: every client connection
    /// (`limits.max_client_connections`), every pool full (per cluster: nodes × users ×
    /// `pooling.size`), a probe connection per node, the admin connections, and a reserve for
    /// the listeners, the configuration and GeoIP files and the runtime.
    pub fn descriptors_needed(&self) -> u64 {
        const RESERVE: u64 = 64;
        let users = self.users.len() as u64;
        let (pools, probes) = self
            .clusters
            .values()
            .fold((0u64, 0u64), |(pools, probes), c| {
                let nodes = 1 + c.replicas.len() as u64;
                let size = c.pooling.as_ref().unwrap_or(&self.pooling).size as u64;
                (
                    pools.saturating_add(nodes.saturating_mul(users).saturating_mul(size)),
                    probes + nodes,
                )
            });
        (self.limits.max_client_connections as u64)
            .saturating_add(pools)
            .saturating_add(probes)
            .saturating_add(self.limits.max_admin_connections as u64)
            .saturating_add(RESERVE)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans it happened in.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeoIp {
    /// A MaxMind City-format `.mmdb` file; reopened when it changes on disk.
    pub database: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Addresses (`10.0.0.0/8`, `192.0.2.7`) whose connections must start with a PROXY
    /// header; a PROXY header from any other address is refused.
    pub trusted: Vec<String>,
}

/// How statements are spread over the primary and replicas.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    pub read_your_writes: ReadYourWrites,
    pub window: Window,
    /// Replicas further behind than this serve no reads.
    #[serde(with = "humantime_serde")]
    pub max_replica_lag: Duration,
    pub no_eligible_replica: NoEligibleReplica,
    /// Functions (`name` or `schema.name`) whose call makes a statement a write.
    pub write_functions: Vec<String>,
    /// Volatile functions (`name` or `schema.name`) that are safe on a replica all the same.
    pub read_functions: Vec<String>,
    /// How often each cluster's catalog of volatile functions is read again (also after a
    /// reload and after DDL); a call of a volatile function is a write. 0s: built-in lists only.
    #[serde(with = "humantime_serde")]
    pub volatile_functions_refresh: Duration,
    /// Replicas at the same distance are compared by probe RTT in steps of this size
    /// (so that jitter does not flip the choice), then by sessions on them.
    #[serde(with = "humantime_serde")]
    pub rtt_granularity: Duration,
    /// Who shares a required WAL position: the session alone, every connection from one
    /// client address, or every connection of one user.
    pub read_your_writes_scope: RywScope,
    /// A read that needs a position the nearest replica has not replayed yet may wait for it
    /// this long, when waiting is expected to be faster than the primary; 0s: never wait.
    #[serde(with = "humantime_serde")]
    pub causal_wait_max: Duration,
}

/// Who shares read-your-writes positions.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RywScope {
    #[default]
    Session,
    ClientAddress,
    User,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing {
            read_your_writes: ReadYourWrites::Lsn,
            window: Window::default(),
            max_replica_lag: Duration::from_secs(10),
            no_eligible_replica: NoEligibleReplica::Primary,
            write_functions: Vec::new(),
            read_functions: Vec::new(),
            volatile_functions_refresh: Duration::from_secs(60),
            rtt_granularity: Duration::from_millis(5),
            read_your_writes_scope: RywScope::Session,
            causal_wait_max: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ReadYourWrites {
    /// Reads after a write go only to replicas that replayed the primary's WAL up to it.
    Lsn,
    /// Reads after a write stay on the primary for a window sized by measured lag.
    Window,
    /// No read-your-writes guarantee; reads are stale up to `max_replica_lag`.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Window {
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    pub lag_factor: f64,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            min: Duration::from_millis(50),
            max: Duration::from_secs(5),
            lag_factor: 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NoEligibleReplica {
    Primary,
    Error,
}

/// How nodes are probed for role, WAL position and lag.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Time between probes of each node (also how often the primary's WAL position is sampled).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The configured user the probes log in as; default: the first of `users`.
    pub user: Option<String>,
    /// Consecutive failed probes that mark a node down.
    pub fall: u32,
    /// Consecutive good probes that mark a down node up again.
    pub rise: u32,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
            user: None,
            fall: 3,
            rise: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse clients that do not negotiate TLS.
    #[serde(default)]
    pub required: bool,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Used to authenticate the client and, as the same user, to log in to backends.
    pub password: String,
    #[serde(default)]
    pub auth: AuthMethod,
    /// May open the admin console (`psql … pgmeridian`); the login itself is the same as
    /// any user's.
    #[serde(default)]
    pub admin: bool,
}

/// A string that is never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that compares or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Shown as `<redacted>` wherever the configuration is serialized (SHOW CONFIG).
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The password is never printed.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("auth", &self.auth)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub primary: Node,
    #[serde(default)]
    pub replicas: Vec<Node>,
    /// Data residency: every node must sit in one of these regions, and reads are never
    /// routed outside them. Empty: no restriction.
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// This cluster's pools, instead of the top-level `pooling`.
    #[serde(default)]
    pub pooling: Option<Pooling>,
}

/// How a session holds backend connections.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A session leases a server connection per transaction (or per autocommit statement).
    #[default]
    Transaction,
    /// A session keeps the server connections it leased until it ends.
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// Backend connection pools: one per node, user and database, shared by every session.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Pooling {
    pub mode: PoolMode,
    /// Most server connections per node, user and database.
    pub size: usize,
    /// Server connections kept open and idle, ready for the next lease.
    pub min_idle: usize,
    /// Server connections idle this long are closed (0s: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Server connections this old are closed once idle (0s: never).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// A client waiting longer than this for a server connection gets 53300.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Prepared statements a server connection keeps; past this, the least recently used
    /// are closed before the next transaction.
    pub max_prepared_statements: usize,
}

impl Default for Pooling {
    fn default() -> Pooling {
        Pooling {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            wait_timeout: Duration::from_secs(5),
            max_prepared_statements: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// How metrics, logs and /status name the node; default `host:port`.
    #[serde(default)]
    pub name: Option<String>,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub region: String,
    /// Database name on the backend; defaults to the cluster's name.
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub tls: BackendTls,
    /// CA bundle (PEM) for `tls: verify-full`.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Authentication methods the proxy goes along with when this node asks for them, named as
    /// libpq's `require_auth`; default `[scram-sha-256, none]` (see [`BackendAuth`]).
    #[serde(default)]
    pub require_auth: Option<Vec<BackendAuth>>,
    /// SCRAM iteration counts above this are refused; default 100000 (PostgreSQL uses 4096).
    #[serde(default)]
    pub max_scram_iterations: Option<u32>,
}

impl Node {
    /// `require_auth`, or its default: SCRAM, and servers that ask for nothing (`trust`).
    pub fn require_auth(&self) -> &[BackendAuth] {
        self.require_auth
            .as_deref()
            .unwrap_or(&[BackendAuth::ScramSha256, BackendAuth::None])
    }

    /// `max_scram_iterations`, or its default.
    pub fn max_scram_iterations(&self) -> u32 {
        self.max_scram_iterations
            .unwrap_or(crate::backend::scram::DEFAULT_MAX_ITERATIONS)
    }
}

/// How a backend may authenticate the proxy. Anything on the path to a node that is not
/// `tls: verify-full` can answer the SSLRequest with `N` and ask for the password: in clear
/// text (`password`) it is handed over; as `md5` it can be brute-forced offline from the
/// challenge. SCRAM never reveals it, so only SCRAM is answered unless the node lists more.
/// `none` (the server asks for nothing, `trust` in pg_hba.conf) reveals nothing either: allowed
/// by default, since whoever can answer for the server can relay the whole session anyway
/// (only `verify-full` prevents that); list methods without it to refuse such servers.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum BackendAuth {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// Cleartext password (AuthenticationCleartextPassword).
    #[serde(rename = "password")]
    Password,
    /// No authentication at all (AuthenticationOk straight away).
    #[serde(rename = "none")]
    None,
}

impl BackendAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendAuth::ScramSha256 => "scram-sha-256",
            BackendAuth::Md5 => "md5",
            BackendAuth::Password => "password",
            BackendAuth::None => "none",
        }
    }
}

/// TLS toward a backend, named as libpq's sslmode.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTls {
    Disable,
    /// Try TLS, fall back to plain text if the server declines.
    #[default]
    Prefer,
    /// TLS without certificate verification.
    Require,
    /// TLS with the certificate checked against `tls_ca` and the host name.
    VerifyFull,
}

fn default_pg_port() -> u16 {
    5432
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest Query, Parse, Bind, FunctionCall or CopyData message accepted (bytes); larger
    /// ones end the session with 54000. Each is held whole to be classified, so this bounds a
    /// session's memory. Other message types have PostgreSQL's own limit of 10,000 bytes.
    pub max_message_bytes: usize,
    /// Client sessions beyond this are refused with 53300.
    pub max_client_connections: usize,
    /// Time a client has from TCP accept to authenticated.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Connections still in their startup phase (accepted, not yet authenticated and greeted)
    /// beyond this are refused with 53300, so that sockets that never log in cannot hold every
    /// client slot. They count toward `max_client_connections` as well.
    pub max_handshakes: usize,
    /// The same, per client address (the PROXY protocol's address when the peer is trusted).
    /// Behind a load balancer without PROXY protocol every client shares its address.
    pub max_handshakes_per_address: usize,
    /// Time to establish and authenticate a backend connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Close sessions idle (outside a transaction) this long; 0s disables.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// Admin HTTP connections open at once; more are closed as soon as they are accepted.
    pub max_admin_connections: usize,
    /// An admin HTTP connection must deliver each request's headers within this time (an idle
    /// keep-alive connection is closed after it too).
    #[serde(with = "humantime_serde")]
    pub admin_header_timeout: Duration,
    /// On SIGTERM, sessions get this long to finish their transaction before being closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On SIGTERM, `/readyz` answers 503 at once but the proxy keeps accepting this long before
    /// it drains, so that load balancers' health checks take it out of rotation first and no
    /// new client meets a closed port (Kubernetes' preStop sleep does the same). 0s: drain at
    /// once.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// TCP keepalive on client and backend sockets: after this long without traffic the kernel
    /// probes the peer, then every third of it (at least 1s); three unanswered probes close the
    /// connection (so a vanished peer is noticed after about twice this). 0s disables.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// `TCP_USER_TIMEOUT` (Linux) on client and backend sockets: data the peer has not
    /// acknowledged for this long closes the connection, also while keepalive probes go
    /// unanswered. 0s disables (the kernel's retransmission limits apply, about 15 minutes).
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 16 * 1024 * 1024,
            max_client_connections: 10_000,
            startup_timeout: Duration::from_secs(10),
            max_handshakes: 1000,
            max_handshakes_per_address: 100,
            connect_timeout: Duration::from_secs(5),
            client_idle_timeout: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            max_admin_connections: 64,
            admin_header_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Parses YAML text, expands `${VAR}` references through `env`, and validates.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Problem>> {
        if nesting::flow_depth(text) > nesting::MAX_FLOW_DEPTH {
            let limit = nesting::MAX_FLOW_DEPTH;
            let message = format!("[ and {{ nested deeper than {limit} levels");
            return Err(vec![Problem::new("", message)]);
        }
        let mut config: Config =
            serde_norway::from_str(text).map_err(|e| vec![yaml_error::problem(&e)])?;
        let mut problems = Vec::new();
        config.expand_env(env, &mut problems);
        problems.extend(validate(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Reads and checks a file, with the process environment for `${VAR}`.
    pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )]
        })?;
        Config::from_yaml(&text, &|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests;
