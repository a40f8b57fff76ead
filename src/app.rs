//! Wiring: builds the shared state from a config, binds the listener, runs the accept loop,
//! and maps signals (SIGTERM drain, SIGINT fast stop, SIGHUP reload) onto it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::config::{Config, Problem};
use crate::health::Health;
use crate::topology::Topology;
use crate::{server, tls};

/// State every session reads; the topology is swapped whole on reload.
pub struct Shared {
    pub topology: ArcSwap<Topology>,
    /// Observed state of every node, from the probes.
    pub health: ArcSwap<Health>,
    pub client_tls: Option<ClientTls>,
    /// SCRAM without channel binding, for clients on plain TCP.
    pub scram_plain: ScramServerAuth,
    pub cancels: Arc<CancelRegistry>,
    /// SIGTERM arrived: `/readyz` answers 503; `drain` follows after `limits.shutdown_delay`.
    pub leaving: CancellationToken,
    /// Stop accepting; sessions close once idle.
    pub drain: CancellationToken,
    /// Close every session now.
    pub hard_stop: CancellationToken,
    /// Client connections currently open.
    pub clients: AtomicUsize,
    /// Client connections in their startup phase, by address.
    pub handshakes: crate::server::Handshakes,
    /// SQL texts replicas refused as writes.
    pub learned_writes: crate::session::LearnedWrites,
    /// Required WAL positions shared by read-your-writes scopes.
    pub scopes: crate::causal::Scopes,
    /// Bumped when a session runs DDL: pooled statements are prepared afresh after it.
    pub schema_epoch: std::sync::atomic::AtomicU64,
    /// Each cluster's volatile functions, from its catalog.
    pub catalogs: crate::catalog::Catalogs,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What sessions tell the probe loops (positions waited for, failed connects).
    pub probe_hints: crate::health::hints::ProbeHints,
    /// Backend connection pools, shared by every session.
    pub pools: Arc<crate::pool::Pools>,
    /// Clusters with a running probe loop.
    pub probing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Serializes reloads (file watcher and SIGHUP) and remembers the last file applied.
    pub reload_state: tokio::sync::Mutex<crate::reload::ReloadState>,
    /// Client addresses to locations; follows the file and `geoip.database` on reload.
    pub geoip: crate::geo::geoip::GeoIp,
    /// Every client session now (the admin console's SHOW CLIENTS, and PAUSE).
    pub sessions: crate::clients::Clients,
    /// The operator's pauses, by cluster name (survive reloads).
    pub pauses: crate::control::Pauses,
    /// The configuration last applied (at start or by a reload), for SHOW CONFIG.
    pub config: ArcSwap<Config>,
    /// The configuration the proxy started with: its restart-only settings are in force.
    pub started_config: Arc<Config>,
    /// The file the configuration came from (`pgmeridian run`; the console's RELOAD reads it).
    pub config_file: std::sync::OnceLock<PathBuf>,
    /// The runtime the proxy was started on, where reloads run (sessions live on their own).
    pub runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// `admin_token` as loaded at start.
    pub admin_token: Option<crate::config::Secret>,
}

impl Shared {
    /// The few handles a session uses.
    pub fn session_handles(&self) -> crate::session::Handles<'_> {
        crate::session::Handles {
            topology: &self.topology,
            health: &self.health,
            metrics: &self.metrics,
            learned: &self.learned_writes,
            scopes: &self.scopes,
            schema_epoch: &self.schema_epoch,
            catalogs: &self.catalogs,
            pools: &self.pools,
            drain: &self.drain,
            hard_stop: &self.hard_stop,
            hints: &self.probe_hints,
            pauses: &self.pauses,
            sessions: &self.sessions,
        }
    }
}

pub struct ClientTls {
    pub acceptor: TlsAcceptor,
    pub required: bool,
    /// SCRAM that also offers SCRAM-SHA-256-PLUS bound to our certificate.
    pub scram: ScramServerAuth,
}

/// Passes the proxy's shutdown on to its sessions: a drain (SIGTERM), then the hard stop.
async fn tell_sessions_to_stop(shared: Arc<Shared>) {
    use crate::clients::Stop;
    tokio::select! {
        _ = shared.drain.cancelled() => shared.sessions.stop(Stop::Drain),
        _ = shared.hard_stop.cancelled() => {}
    }
    shared.hard_stop.cancelled().await;
    shared.sessions.stop(Stop::Now);
}

fn scram(iterations: u32) -> ScramServerAuth {
    let mut s = ScramServerAuth::new();
    s.set_iterations(iterations as usize);
    s
}

impl Shared {
    pub fn new(config: &Config) -> Result<Shared, Vec<Problem>> {
        let topology = Topology::build(config)?;
        let client_tls = match &config.tls {
            None => None,
            Some(t) => {
                let (server_config, cert_pem) = tls::server_config(&t.cert, &t.key)
                    .map_err(|e| vec![Problem::new("tls", e)])?;
                let mut scram = scram(config.scram_iterations);
                scram.configure_certificate(&cert_pem).map_err(|e| {
                    vec![Problem::new(
                        "tls.cert",
                        format!("cannot use for channel binding: {e}"),
                    )]
                })?;
                Some(ClientTls {
                    acceptor: TlsAcceptor::from(server_config),
                    required: t.required,
                    scram,
                })
            }
        };
        let geoip = crate::geo::geoip::GeoIp::open(topology.geoip.as_deref())
            .map_err(|e| vec![Problem::new("geoip.database", e)])?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.config_generation.set(topology.generation as i64);
        Ok(Shared {
            pools: Arc::new(crate::pool::Pools::new(metrics.clone())),
            geoip,
            probing: Default::default(),
            reload_state: Default::default(),
            topology: ArcSwap::from_pointee(topology),
            health: ArcSwap::from_pointee(Health::default()),
            client_tls,
            scram_plain: scram(config.scram_iterations),
            cancels: Arc::new(CancelRegistry::new(config.instance_id())),
            leaving: CancellationToken::new(),
            drain: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            clients: AtomicUsize::new(0),
            handshakes: Default::default(),
            learned_writes: Default::default(),
            schema_epoch: Default::default(),
            catalogs: Default::default(),
            scopes: Default::default(),
            probe_hints: Default::default(),
            admin_token: config.admin_token.clone(),
            metrics,
            sessions: Default::default(),
            pauses: Default::default(),
            config: ArcSwap::from_pointee(config.clone()),
            started_config: Arc::new(config.clone()),
            config_file: Default::default(),
            runtime: Default::default(),
        })
    }
}

/// A running proxy: its listening address and a way to stop it.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The admin HTTP listener's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    /// The accept loop; taken by `shutdown` and `wait`.
    task: Option<JoinHandle<()>>,
}

/// Dropping a running proxy closes its sessions at once (they live on the session threads,
/// not on the caller's runtime); `shutdown` is the graceful way.
impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.drain.cancel();
        self.shared.hard_stop.cancel();
    }
}

impl Proxy {
    /// Binds `config.listen` (port 0 picks a free port) and starts accepting.
    pub async fn start(config: &Config) -> Result<Proxy, Vec<Problem>> {
        let shared = Arc::new(Shared::new(config)?);
        let _ = shared.runtime.set(tokio::runtime::Handle::current());
        let lanes = server::Lanes::start(config.session_threads()).map_err(|e| {
            vec![Problem::new(
                "workers",
                format!("cannot start session threads: {e}"),
            )]
        })?;
        shared.reload_state.lock().await.started_with(config, None);
        shared.metrics.config_generation.set(1);
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            vec![Problem::new(
                "listen",
                format!("cannot listen on {}: {e}", config.listen),
            )]
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| vec![Problem::new("listen", e.to_string())])?;
        let admin_addr = match &config.admin_listen {
            None => None,
            Some(a) => {
                let admin = TcpListener::bind(a).await.map_err(|e| {
                    vec![Problem::new(
                        "admin_listen",
                        format!("cannot listen on {a}: {e}"),
                    )]
                })?;
                let admin_addr = admin
                    .local_addr()
                    .map_err(|e| vec![Problem::new("admin_listen", e.to_string())])?;
                tokio::spawn(crate::admin::run(admin, shared.clone()));
                Some(admin_addr)
            }
        };
        crate::health::probe::spawn_missing(&shared);
        tokio::spawn(crate::catalog::run(shared.clone()));
        tokio::spawn(crate::geo::geoip::watch(shared.clone()));
        let for_pools = shared.clone();
        tokio::spawn(crate::pool::maintain(
            shared.pools.clone(),
            move || for_pools.topology.load_full(),
            shared.drain.clone(),
        ));
        tokio::spawn(crate::memory::trim_when_asked(shared.hard_stop.clone()));
        tokio::spawn(tell_sessions_to_stop(shared.clone()));
        let task = tokio::spawn(server::run(listener, shared.clone(), lanes));
        Ok(Proxy {
            addr,
            admin_addr,
            shared,
            task: Some(task),
        })
    }

    /// Graceful stop: no new clients, sessions finish their transaction, then close.
    pub async fn shutdown(mut self) {
        self.shared.drain.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the accept loop has ended (after a drain).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// `pgmeridian run`: serve until SIGTERM/SIGINT; SIGHUP re-reads the topology.
pub async fn run(config_path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let config = Config::from_yaml(&text, &|name| std::env::var(name).ok())
        .map_err(|ps| render_problems(config_path, &ps))?;
    check_open_files(&config);
    let proxy = Proxy::start(&config)
        .await
        .map_err(|ps| render_problems(config_path, &ps))?;
    tracing::info!(listen = %proxy.addr, clusters = config.clusters.len(), "pgmeridian is accepting connections");
    let _ = proxy.shared.config_file.set(config_path.to_owned());
    // The text actually parsed: an edit made meanwhile differs from it and is applied.
    proxy
        .shared
        .reload_state
        .lock()
        .await
        .started_with(&config, Some(&text));
    if let Err(e) = crate::reload::watch(proxy.shared.clone(), config_path.to_owned()) {
        tracing::warn!(error = %e, "file changes will not be picked up; SIGHUP still reloads");
    }
    tokio::spawn(signals(proxy.shared.clone(), config_path.to_owned()));
    proxy.wait().await;
    tracing::info!("pgmeridian stopped");
    Ok(())
}

/// Raises the open files limit to the hard limit, and warns when it is below what the
/// configuration may need: past it, accepts and backend connects fail (and a client could
/// exhaust it on purpose).
fn check_open_files(config: &Config) {
    let need = config.descriptors_needed();
    match raise_open_files_limit() {
        Ok((before, now)) => {
            if now > before {
                tracing::info!(
                    from = before,
                    to = now,
                    "raised the open files limit (RLIMIT_NOFILE)"
                );
            }
            if now < need {
                tracing::warn!(
                    limit = now,
                    need,
                    "the open files limit (RLIMIT_NOFILE) is below what limits.max_client_connections and the pools may need; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=) or lower the limits"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, need, "could not read or raise the open files limit"),
    }
}

/// Sets the soft RLIMIT_NOFILE to the hard limit (capped at the kernel's `fs.nr_open` when the
/// hard limit is unlimited); returns the soft limit before and after.
#[allow(unsafe_code)] // two syscalls on a local struct, see the SAFETY notes
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every platform
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let mut target = limit.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if before != libc::RLIM_INFINITY && before < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit`; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok((before as u64, target as u64));
    }
    Ok((before as u64, before as u64))
}

/// `pgmeridian check-config`: everything `run` would check before serving, without serving
/// (parse, validation, and loading the TLS and CA files).
pub fn check(path: &Path) -> Result<(), Vec<Problem>> {
    let config = Config::load(path)?;
    Shared::new(&config).map(drop)
}

pub fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!("{} has {} problem(s):", path.display(), problems.len());
    for p in problems {
        out.push_str(&format!("\n  {p}"));
    }
    out
}

async fn signals(shared: Arc<Shared>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => terminate(&shared),
            _ = int.recv() => {
                tracing::info!("SIGINT: closing all sessions now");
                shared.drain.cancel();
                shared.hard_stop.cancel();
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                crate::reload::reload(&shared, &path).await;
            }
        }
    }
}

/// SIGTERM: `/readyz` turns 503 at once, so that balancers stop sending clients here; after
/// `limits.shutdown_delay` (still accepting meanwhile) the drain starts: no new clients,
/// sessions finish their transaction, then close. A second SIGTERM drains at once.
fn terminate(shared: &Arc<Shared>) {
    if shared.leaving.is_cancelled() {
        tracing::info!("SIGTERM again: draining now");
        shared.drain.cancel();
        return;
    }
    shared.leaving.cancel();
    let delay = shared.topology.load().limits.shutdown_delay;
    if delay.is_zero() {
        tracing::info!("SIGTERM: draining (sessions finish their transaction, then close)");
        shared.drain.cancel();
        return;
    }
    tracing::info!(
        ?delay,
        "SIGTERM: /readyz answers 503; accepting for limits.shutdown_delay, then draining"
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.drain.cancelled() => return,
        }
        tracing::info!("draining (sessions finish their transaction, then close)");
        shared.drain.cancel();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (before, now) = super::raise_open_files_limit().unwrap();
        assert!(now >= before);
        let (again, after) = super::raise_open_files_limit().unwrap();
        assert_eq!((again, after), (now, now), "already at the hard limit");
    }
}
