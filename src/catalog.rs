//! Owns each cluster's catalog of volatile functions: one task loads it from the cluster's
//! database (`pg_proc.provolatile = 'v'`) and publishes it through arc-swap; it never
//! classifies (that is `classify`, with the catalog as an input).
//!
//! Loaded at start, again after a reload changes the cluster, after any session ran DDL
//! (the schema epoch moved), and every `routing.volatile_functions_refresh`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use postgres_protocol::message::frontend;

use crate::app::Shared;
use crate::backend::{self, BackendConn};
use crate::classify::VolatileFunctions;
use crate::protocol::frame;
use crate::topology::{ClusterSpec, NodeSpec};

/// Most names read from one catalog (a database with more volatile functions than this is
/// classified by the first ones).
const MAX_NAMES: usize = 100_000;

const CATALOG_SQL: &str = "select distinct lower(proname) from pg_catalog.pg_proc \
     where provolatile = 'v' limit 100000";

/// The published catalogs, by cluster name, and a version bumped at every publication.
#[derive(Default)]
pub struct Catalogs {
    map: ArcSwap<HashMap<String, Arc<VolatileFunctions>>>,
    version: AtomicU64,
}

impl Catalogs {
    /// Changes whenever any catalog is published: sessions look up theirs again.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn get(&self, cluster: &str) -> Option<Arc<VolatileFunctions>> {
        self.map.load().get(cluster).cloned()
    }

    fn publish(&self, cluster: &str, functions: Option<Arc<VolatileFunctions>>) {
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            match &functions {
                Some(f) => map.insert(cluster.to_owned(), f.clone()),
                None => map.remove(cluster),
            };
            map
        });
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the loop knows about one cluster's catalog.
struct Loaded {
    spec: Arc<ClusterSpec>,
    at: Instant,
    epoch: u64,
    conn: Option<BackendConn>,
}

/// Keeps every cluster's catalog current until the drain.
pub async fn run(shared: Arc<Shared>) {
    let mut loaded: HashMap<String, Loaded> = HashMap::new();
    loop {
        let topology = shared.topology.load_full();
        let refresh = topology.routing.volatile_functions_refresh;
        let epoch = shared.schema_epoch.load(Ordering::Relaxed);
        loaded.retain(|name, _| topology.clusters.contains_key(name));
        for (name, spec) in &topology.clusters {
            if refresh.is_zero() {
                if loaded.remove(name).is_some() || shared.catalogs.get(name).is_some() {
                    shared.catalogs.publish(name, None);
                }
                continue;
            }
            let due = match loaded.get(name) {
                None => true,
                Some(l) => {
                    !Arc::ptr_eq(&l.spec, spec) || l.epoch != epoch || l.at.elapsed() >= refresh
                }
            };
            if !due {
                continue;
            }
            let conn = loaded.remove(name).and_then(|l| l.conn);
            let timeout = topology.limits.connect_timeout;
            match load(&shared, spec, conn, timeout).await {
                Ok((functions, conn)) => {
                    tracing::debug!(cluster = %name, volatile = functions.len(), "function catalog loaded");
                    if shared.catalogs.get(name).as_deref() != Some(&functions) {
                        shared.catalogs.publish(name, Some(Arc::new(functions)));
                    }
                    loaded.insert(
                        name.clone(),
                        Loaded {
                            spec: spec.clone(),
                            at: Instant::now(),
                            epoch,
                            conn: Some(conn),
                        },
                    );
                }
                Err(e) => {
                    // The last catalog stays in use; the next tick tries again.
                    tracing::debug!(cluster = %name, error = %e, "function catalog not loaded");
                }
            }
        }
        let interval = topology.health.interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.drain.cancelled() => return,
        }
    }
}

/// The node to read the catalog from: the primary if it is up, else an up replica (a
/// physical replica has the same catalog, at most a little behind).
fn source(shared: &Shared, spec: &ClusterSpec) -> Option<Arc<NodeSpec>> {
    let health = shared.health.load();
    let Some(h) = health.clusters.get(&spec.name) else {
        return Some(spec.primary.clone());
    };
    if h.primary.up {
        return Some(spec.primary.clone());
    }
    spec.replicas
        .iter()
        .zip(&h.replicas)
        .find(|(_, r)| r.up)
        .map(|(n, _)| n.clone())
}

async fn load(
    shared: &Shared,
    spec: &ClusterSpec,
    conn: Option<BackendConn>,
    timeout: Duration,
) -> Result<(VolatileFunctions, BackendConn), String> {
    let node = source(shared, spec).ok_or("no node of the cluster is up")?;
    let mut conn = match conn.filter(|c| Arc::ptr_eq(&c.node, &node)) {
        Some(c) => c,
        None => {
            let topology = shared.topology.load();
            let user = crate::health::probe::probe_user(&topology).ok_or("no users configured")?;
            let params = [(
                "application_name".to_owned(),
                "pgmeridian-catalog".to_owned(),
            )];
            backend::connect(&node, &user, &params, timeout)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let mut request = BytesMut::new();
    frontend::query(CATALOG_SQL, &mut request).map_err(|e| e.to_string())?;
    let messages = tokio::time::timeout(timeout, conn.exchange(&request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    if let Some(e) = messages.iter().find(|m| m[0] == b'E') {
        let fields = crate::protocol::backend::ErrorFields::parse(frame::body(e));
        return Err(format!("catalog query failed: {fields:?}"));
    }
    let names = messages
        .iter()
        .filter(|m| m[0] == b'D')
        .take(MAX_NAMES)
        .filter_map(|m| first_column(frame::body(m)));
    Ok((VolatileFunctions::new(names), conn))
}

/// The first column of a DataRow body, as text.
fn first_column(body: &[u8]) -> Option<String> {
    let (count, rest) = body.split_first_chunk::<2>()?;
    if u16::from_be_bytes(*count) == 0 {
        return None;
    }
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_be_bytes(*len)).ok()?;
    rest.get(..len)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::first_column;

    #[test]
    fn first_column_of_a_data_row() {
        let row = [&[0u8, 1][..], &3i32.to_be_bytes(), b"now"].concat();
        assert_eq!(first_column(&row).as_deref(), Some("now"));
        let null = [&[0u8, 1][..], &(-1i32).to_be_bytes()].concat();
        assert_eq!(first_column(&null), None);
        assert_eq!(first_column(&[0, 1, 0, 0, 0, 9, b'x']), None);
        assert_eq!(first_column(&[0, 0]), None);
        assert_eq!(first_column(&[]), None);
    }
}
