//! Backend connection pools: one per node and user (the node fixes the database), shared by
//! every session whatever session thread it runs on. Owns server connections from login to
//! close and their protocol-level state between leases; decides nothing about routing.
//!
//! Counting: a lease holds a permit of the pool's semaphore (`size` permits), an idle connection
//! holds none. A new connection is opened only by a permit holder that found nothing idle, so
//! open connections never exceed `size` (leased ≤ permits, and idle ones were leased before).

pub mod conn;
mod maintain;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use conn::{ServerConn, ServerInfo, ServerState};
pub use maintain::maintain;

use crate::backend::ConnectError;
use crate::config::Pooling;
use crate::error::{sqlstate, ClientError, ErrorKind};
use crate::metrics::Metrics;
use crate::topology::{NodeSpec, UserSpec};

/// Why a server connection was closed: the `reason` label of `pool_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    Lifetime,
    /// It failed, answered something unexpected while idle, or failed its liveness check.
    Broken,
    /// The session could not hand it back clean (ended mid-transaction, pinned state, a cancel).
    Discarded,
    /// Its node or user left the configuration, or changed.
    Reload,
    /// The pool shrank below the idle connections it had.
    Shrink,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::IdleTimeout,
        CloseReason::Lifetime,
        CloseReason::Broken,
        CloseReason::Discarded,
        CloseReason::Reload,
        CloseReason::Shrink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Broken => "broken",
            CloseReason::Discarded => "discarded",
            CloseReason::Reload => "reload",
            CloseReason::Shrink => "shrink",
        }
    }
}

/// A node's ParameterStatus values (name, value), in the order it reported them.
pub type Params = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

/// Idle connections unused this long are checked with an empty query before a lease.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("no server connection to {node} became free within {after:?} (pool size {size})")]
    Timeout {
        node: String,
        after: Duration,
        size: usize,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the pool for {0} was closed by a reload")]
    Closed(String),
}

impl AcquireError {
    /// What the client is told.
    pub fn to_client(&self) -> ClientError {
        match self {
            AcquireError::Timeout { .. } => {
                ClientError::error(sqlstate::TOO_MANY_CONNECTIONS, self.to_string())
                    .with_hint("every server connection of the pool stayed busy; raise pooling.size or pooling.wait_timeout, or shorten transactions")
                    .with_kind(ErrorKind::PoolTimeout)
            }
            AcquireError::Connect(e) => e.to_client(),
            AcquireError::Closed(_) => {
                ClientError::error(sqlstate::CONNECTION_FAILURE, self.to_string())
                    .with_kind(ErrorKind::BackendConnect)
            }
        }
    }
}

struct Inner {
    idle: Vec<ServerConn>,
    /// Connections open: idle, leased and being opened.
    open: usize,
    /// Permits to forget as leases come back (the pool shrank while they were out).
    owed: usize,
    size: usize,
    config: Pooling,
    /// The node's ParameterStatus values at its last login (for logins without a backend).
    params: Option<Params>,
    user: Arc<UserSpec>,
    /// Every connection opened, for the admin console (dead ones are pruned as it grows).
    opened: Vec<Weak<ServerInfo>>,
}

/// One node's pool for one user.
pub struct Pool {
    pub node: Arc<NodeSpec>,
    pub user_name: String,
    inner: Mutex<Inner>,
    permits: Arc<Semaphore>,
    /// Sessions waiting for a permit now.
    waiting: AtomicUsize,
    /// Set when a reload removed the node or user: leases come back to be closed.
    retired: AtomicBool,
    metrics: PoolMetrics,
}

/// Metric handles of one pool, resolved once.
struct PoolMetrics {
    active: prometheus::IntGauge,
    idle: prometheus::IntGauge,
    pinned: prometheus::IntGauge,
    waiting: prometheus::IntGauge,
    wait: prometheus::Histogram,
    leases: prometheus::IntCounter,
    logins: prometheus::IntCounter,
    closes: [prometheus::IntCounter; 6],
}

impl PoolMetrics {
    fn new(m: &Metrics, node: &NodeSpec) -> PoolMetrics {
        let (cluster, label) = (node.cluster.as_str(), node.label());
        let state = |s: &str| {
            m.pool_server_connections
                .with_label_values(&[cluster, label, s])
        };
        PoolMetrics {
            active: state("active"),
            idle: state("idle"),
            pinned: state("pinned"),
            waiting: m.pool_clients_waiting.with_label_values(&[cluster, label]),
            wait: m.pool_wait_seconds.with_label_values(&[cluster, label]),
            leases: m.pool_leases.with_label_values(&[cluster, label]),
            logins: m.backend_logins.with_label_values(&[cluster, label]),
            closes: CloseReason::ALL.map(|r| {
                m.pool_closes
                    .with_label_values(&[cluster, label, r.as_str()])
            }),
        }
    }
}

/// A leased server connection. Give it back with [`Pool::release`]; dropping it closes it.
pub struct Lease {
    pub conn: ServerConn,
    pub pool: Arc<Pool>,
    permit: Option<OwnedSemaphorePermit>,
    pinned: bool,
    /// Counts the lease in the node's load (ranking's tie-break) while it lives.
    _load: crate::occupancy::Occupied,
}

impl Lease {
    /// The session made this connection its own for life (a feature that cannot move).
    pub fn set_pinned(&mut self) {
        if !self.pinned {
            self.pinned = true;
            if let Some(info) = &self.conn.info {
                info.pinned.store(true, Ordering::Relaxed);
            }
            self.pool.metrics.active.dec();
            self.pool.metrics.pinned.inc();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not released through the pool (a session task ended abruptly): the slot is freed and
        // the connection closed, since its state is unknown.
        if let Some(permit) = self.permit.take() {
            self.pool.lease_ended(self.pinned);
            self.pool.lock().open -= 1;
            self.pool.give_back_permit(permit);
            self.pool.closed(CloseReason::Discarded);
        }
    }
}

/// A session waiting for a permit, counted while the wait lasts (also when the waiting future
/// is dropped because its client went away).
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn new(pool: &'a Pool) -> Waiting<'a> {
        pool.waiting.fetch_add(1, Ordering::Relaxed);
        pool.metrics.waiting.inc();
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.waiting.dec();
    }
}

/// A connection counted in `open` while it is being opened or checked, not yet leased: if it
/// does not become a lease (it failed, or the acquiring future was dropped), dropping this
/// uncounts it. [`Opening::keep`] once it is leased.
struct Opening<'a>(Option<&'a Pool>);

impl<'a> Opening<'a> {
    /// For a connection already counted in `open` (taken from the idle ones).
    fn counted(pool: &'a Pool) -> Opening<'a> {
        Opening(Some(pool))
    }

    /// For a connection about to be opened: counts it in `open` now (`inner` is `pool`'s).
    fn count(pool: &'a Pool, inner: &mut Inner) -> Opening<'a> {
        inner.open += 1;
        Opening(Some(pool))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            pool.lock().open -= 1;
        }
    }
}

impl Pool {
    fn new(node: Arc<NodeSpec>, user: Arc<UserSpec>, config: Pooling, m: &Metrics) -> Pool {
        let metrics = PoolMetrics::new(m, &node);
        Pool {
            user_name: user.name.clone(),
            permits: Arc::new(Semaphore::new(config.size)),
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                open: 0,
                owed: 0,
                size: config.size,
                config,
                params: None,
                user,
                opened: Vec::new(),
            }),
            node,
            waiting: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's ParameterStatus values from its last login, if any connection was made yet.
    pub fn params(&self) -> Option<Params> {
        self.lock().params.clone()
    }

    /// A snapshot for `/status` and the admin console.
    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        PoolStats {
            size: inner.size,
            open: inner.open,
            idle: inner.idle.len(),
            waiting: self.waiting.load(Ordering::Relaxed),
            mode: inner.config.mode,
        }
    }

    /// Its open server connections, for the admin console.
    pub fn servers(&self) -> Vec<ServerRow> {
        let inner = self.lock();
        let idle: Vec<(u64, Instant)> = inner
            .idle
            .iter()
            .filter_map(|c| c.info.as_ref().map(|i| (i.id, c.last_used)))
            .collect();
        inner
            .opened
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|i| !i.closing.load(Ordering::Relaxed))
            .map(|info| {
                let idle_since = idle.iter().find(|(id, _)| *id == info.id).map(|(_, t)| {
                    SystemTime::now()
                        .checked_sub(t.elapsed())
                        .unwrap_or(SystemTime::UNIX_EPOCH)
                });
                let state = match idle_since {
                    Some(_) => "idle",
                    None if info.pinned.load(Ordering::Relaxed) => "pinned",
                    None => "active",
                };
                ServerRow {
                    info,
                    state,
                    idle_since,
                }
            })
            .collect()
    }

    pub fn config(&self) -> Pooling {
        self.lock().config.clone()
    }

    /// Whether a reload removed this pool (sessions then ask `Pools::get` for the new one).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// A lease without waiting, for the common case: a free place and an idle connection on
    /// this thread, used recently and quiet since. `None`: take [`Pool::acquire`].
    /// `now`: the caller's recent clock reading (a connection released since counts as fresh).
    pub fn try_acquire_now(self: &Arc<Self>, now: Instant) -> Option<Lease> {
        if self.is_retired() {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let here = crate::server::current_lane();
        let found = {
            let mut inner = self.lock();
            let fresh = inner.idle.iter().rposition(|c| {
                c.home == here && now.saturating_duration_since(c.last_used) < CHECK_AFTER_IDLE
            });
            fresh.map(|i| inner.idle.remove(i))
        };
        let Some(mut conn) = found else {
            self.give_back_permit(permit);
            return None;
        };
        self.metrics.idle.dec();
        match conn.drain_unsolicited() {
            Ok(()) => Some(self.leased(conn, permit)),
            Err(reason) => {
                tracing::debug!(node = %self.node, %reason, "idle server connection is gone; closing it");
                self.lock().open -= 1;
                self.closed(CloseReason::Broken);
                self.give_back_permit(permit);
                None
            }
        }
    }

    /// Leases a server connection: an idle one (checked first), else a new login, waiting up to
    /// `wait_timeout` for a free place.
    pub async fn acquire(
        self: &Arc<Self>,
        connect: crate::backend::ConnectOptions,
    ) -> Result<Lease, AcquireError> {
        if self.is_retired() {
            return Err(AcquireError::Closed(self.node.to_string()));
        }
        let wait_timeout = self.lock().config.wait_timeout;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let started = Instant::now();
                let waiting = Waiting::new(self);
                let got =
                    tokio::time::timeout(wait_timeout, self.permits.clone().acquire_owned()).await;
                drop(waiting);
                self.metrics.wait.observe(started.elapsed().as_secs_f64());
                match got {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(AcquireError::Timeout {
                            node: self.node.to_string(),
                            after: wait_timeout,
                            size: self.lock().size,
                        })
                    }
                }
            }
        };
        // A reload may have retired the pool while this waited: no login with its old
        // credentials or to a node no longer configured.
        if self.is_retired() {
            return Err(AcquireError::Closed(self.node.to_string()));
        }
        loop {
            let candidate = {
                let mut inner = self.lock();
                let here = crate::server::current_lane();
                // Prefer a connection whose socket lives on this thread (no migration).
                match inner.idle.iter().rposition(|c| c.home == here) {
                    Some(i) => Some(inner.idle.remove(i)),
                    None => inner.idle.pop(),
                }
            };
            let Some(conn) = candidate else { break };
            self.metrics.idle.dec();
            // Counted open until it is leased; closed and uncounted if this future is dropped.
            let checking = Opening::counted(self);
            match conn
                .ready_for_lease(CHECK_AFTER_IDLE, connect.timeout)
                .await
            {
                Ok(conn) => {
                    checking.keep();
                    return Ok(self.leased(conn, permit));
                }
                Err(reason) => {
                    tracing::debug!(node = %self.node, %reason, "idle server connection is gone; closing it");
                    drop(checking);
                    self.closed(CloseReason::Broken);
                }
            }
        }
        let (user, opening) = {
            let mut inner = self.lock();
            (inner.user.clone(), Opening::count(self, &mut inner))
        };
        match ServerConn::open(&self.node, &user, &connect).await {
            Ok((conn, params)) => {
                opening.keep();
                self.metrics.logins.inc();
                let mut inner = self.lock();
                inner.params = Some(Arc::new(params));
                if inner.opened.len() >= 2 * inner.size + 8 {
                    inner.opened.retain(|w| w.strong_count() > 0);
                }
                if let Some(info) = &conn.info {
                    inner.opened.push(Arc::downgrade(info));
                }
                drop(inner);
                Ok(self.leased(conn, permit))
            }
            Err(e) => {
                drop(opening);
                Err(e.into())
            }
        }
    }

    fn leased(self: &Arc<Self>, conn: ServerConn, permit: OwnedSemaphorePermit) -> Lease {
        self.metrics.active.inc();
        self.metrics.leases.inc();
        Lease {
            _load: crate::occupancy::Occupied::new(&self.node.sessions),
            conn,
            pool: self.clone(),
            permit: Some(permit),
            pinned: false,
        }
    }

    /// Takes a lease back: kept idle for the next one if `reuse` and the connection is still
    /// wanted, else closed. `now`: the caller's recent clock reading (its last use).
    pub fn release(&self, mut lease: Lease, reuse: bool, now: Instant) {
        let Some(permit) = lease.permit.take() else {
            return;
        };
        self.lease_ended(lease.pinned);
        let conn = std::mem::replace(&mut lease.conn, ServerConn::placeholder(now));
        drop(lease);
        let mut inner = self.lock();
        let lifetime = inner.config.lifetime;
        let reason = if !reuse {
            Some(CloseReason::Discarded)
        } else if self.retired.load(Ordering::Relaxed) {
            Some(CloseReason::Reload)
        } else if !lifetime.is_zero() && now.saturating_duration_since(conn.created) >= lifetime {
            Some(CloseReason::Lifetime)
        } else {
            None
        };
        if inner.owed > 0 {
            inner.owed -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        match reason {
            Some(reason) => {
                inner.open -= 1;
                drop(inner);
                self.closed(reason);
                conn.close();
            }
            None => {
                let mut conn = conn;
                conn.last_used = now;
                inner.idle.push(conn);
                drop(inner);
                self.metrics.idle.inc();
            }
        }
    }

    fn lease_ended(&self, pinned: bool) {
        if pinned {
            self.metrics.pinned.dec();
        } else {
            self.metrics.active.dec();
        }
    }

    fn give_back_permit(&self, permit: OwnedSemaphorePermit) {
        let mut inner = self.lock();
        if inner.owed > 0 {
            inner.owed -= 1;
            permit.forget();
        }
    }

    fn closed(&self, reason: CloseReason) {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.metrics.closes[i].inc();
    }

    /// Applies a reloaded configuration: size and timeouts at once, the user's password for
    /// the next logins. Surplus idle connections are closed.
    fn reconfigure(&self, config: &Pooling, user: &Arc<UserSpec>) {
        let surplus = {
            let mut inner = self.lock();
            inner.user = user.clone();
            let old = inner.size;
            let new = config.size;
            if new > old {
                let grow = new - old;
                let repaid = grow.min(inner.owed);
                inner.owed -= repaid;
                self.permits.add_permits(grow - repaid);
            } else if new < old {
                let shrink = old - new;
                let now = self.permits.forget_permits(shrink);
                inner.owed += shrink - now;
            }
            inner.size = new;
            inner.config = config.clone();
            let keep = new.saturating_sub(inner.open - inner.idle.len());
            let excess = inner.idle.len().saturating_sub(keep);
            let surplus: Vec<ServerConn> = inner.idle.drain(..excess).collect();
            inner.open -= surplus.len();
            surplus
        };
        for c in surplus {
            self.metrics.idle.dec();
            self.closed(CloseReason::Shrink);
            c.close();
        }
    }

    /// The node or user left the configuration: idle connections close now, leased ones when
    /// they come back, and no new lease is given.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let idle: Vec<ServerConn> = {
            let mut inner = self.lock();
            let idle: Vec<ServerConn> = inner.idle.drain(..).collect();
            inner.open -= idle.len();
            idle
        };
        for c in idle {
            self.metrics.idle.dec();
            self.closed(CloseReason::Reload);
            c.close();
        }
    }
}

/// One server connection of a pool, as `SHOW SERVERS` lists it.
#[derive(Debug)]
pub struct ServerRow {
    pub info: Arc<ServerInfo>,
    /// `idle`, `active` (leased) or `pinned` (leased to one session for its life).
    pub state: &'static str,
    /// When it went back to the pool, if it is idle.
    pub idle_since: Option<SystemTime>,
}

/// What a pool holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: usize,
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
    pub mode: crate::config::PoolMode,
}

/// Every pool of the proxy, by node and user.
pub struct Pools {
    /// Keyed by the node's spec (a reload that changes a node makes a new spec, so a new pool)
    /// and the user's name.
    map: Mutex<HashMap<(usize, String), Arc<Pool>>>,
    metrics: Arc<Metrics>,
    /// Pools made so far (for ids of server connections in logs).
    pub made: AtomicU64,
}

impl Pools {
    pub fn new(metrics: Arc<Metrics>) -> Pools {
        Pools {
            map: Mutex::new(HashMap::new()),
            metrics,
            made: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, String), Arc<Pool>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool for `node` and `user`, made on first use with `config`.
    pub fn get(&self, node: &Arc<NodeSpec>, user: &Arc<UserSpec>, config: &Pooling) -> Arc<Pool> {
        let key = (Arc::as_ptr(node) as usize, user.name.clone());
        let mut map = self.lock();
        if let Some(p) = map.get(&key) {
            if !p.retired.load(Ordering::Relaxed) {
                return p.clone();
            }
        }
        self.made.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::new(Pool::new(
            node.clone(),
            user.clone(),
            config.clone(),
            &self.metrics,
        ));
        map.insert(key, pool.clone());
        pool
    }

    /// Every pool, for status pages.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.lock().values().cloned().collect()
    }

    /// Follows a reload: pools of nodes or users no longer configured (or whose node changed)
    /// retire; the others take the new sizes, timeouts and passwords.
    pub fn follow(&self, topology: &crate::topology::Topology) {
        let mut map = self.lock();
        let mut gone = Vec::new();
        for (key, pool) in map.iter() {
            let cluster = topology.clusters.get(&pool.node.cluster);
            let live = cluster.filter(|c| c.nodes().any(|n| Arc::ptr_eq(n, &pool.node)));
            let user = topology.users.get(&pool.user_name);
            match (live, user) {
                (Some(c), Some(u)) => {
                    let same_login = {
                        let inner = pool.lock();
                        inner.user.password == u.password
                    };
                    if same_login {
                        pool.reconfigure(&c.pooling, u);
                    } else {
                        // New credentials: connections made with the old ones close.
                        pool.retire();
                        gone.push(key.clone());
                    }
                }
                _ => {
                    pool.retire();
                    gone.push(key.clone());
                }
            }
        }
        for key in gone {
            map.remove(&key);
        }
    }
}
