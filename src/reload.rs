//! Live configuration reload, on a change to the file (notify) or SIGHUP: read, validate, build,
//! log what changed and what needs a restart, then publish the new topology whole. A file that
//! fails changes nothing. Sessions are not touched here: each moves to the new topology at its
//! next batch outside a transaction, and probe loops pick it up on their next round.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::app::{render_problems, Shared};
use crate::config::{Config, Problem, ServerTls};
use crate::topology::Topology;

/// Events closer together than this are one edit (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Settings that only take effect at start.
#[derive(Debug, Clone, PartialEq, Default)]
struct StartOnly {
    listen: String,
    admin_listen: Option<String>,
    tls: Option<(PathBuf, PathBuf, bool)>,
    workers: Option<usize>,
    scram_iterations: u32,
    admin_token: Option<crate::config::Secret>,
    instance_id: u16,
}

impl StartOnly {
    fn of(c: &Config) -> StartOnly {
        StartOnly {
            listen: c.listen.clone(),
            admin_listen: c.admin_listen.clone(),
            tls: c.tls.as_ref().map(
                |ServerTls {
                     cert,
                     key,
                     required,
                 }| (cert.clone(), key.clone(), *required),
            ),
            workers: c.workers,
            scram_iterations: c.scram_iterations,
            admin_token: c.admin_token.clone(),
            instance_id: c.instance_id(),
        }
    }
}

#[derive(Default)]
pub struct ReloadState {
    /// Hash of the file text last applied (or found unchanged).
    last_text: Option<u64>,
    started: Option<StartOnly>,
}

impl ReloadState {
    /// Remembers what the proxy started with.
    pub fn started_with(&mut self, config: &Config, text: Option<&str>) {
        self.started = Some(StartOnly::of(config));
        self.last_text = text.map(hash);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        generation: u64,
    },
    Unchanged,
    /// The file was not applied, for these reasons (also logged).
    Rejected(Vec<Problem>),
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Re-reads `path` and applies it if it is valid and different.
pub async fn reload(shared: &Arc<Shared>, path: &Path) -> Outcome {
    let mut state = shared.reload_state.lock().await;
    let outcome = match std::fs::read_to_string(path) {
        Err(e) => Err(vec![Problem::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]),
        Ok(text) if state.last_text == Some(hash(&text)) => Ok(None),
        Ok(text) => apply(shared, &text, &mut state).await.map(Some),
    };
    let result = match outcome {
        Ok(Some(generation)) => Outcome::Applied { generation },
        Ok(None) => Outcome::Unchanged,
        Err(problems) => {
            tracing::error!(
                "configuration reload rejected; the running configuration stays in force. {}",
                render_problems(path, &problems)
            );
            Outcome::Rejected(problems)
        }
    };
    let label = match result {
        Outcome::Applied { .. } => "applied",
        Outcome::Unchanged => "unchanged",
        Outcome::Rejected(_) => "rejected",
    };
    shared
        .metrics
        .config_reloads
        .with_label_values(&[label])
        .inc();
    result
}

async fn apply(
    shared: &Arc<Shared>,
    text: &str,
    state: &mut ReloadState,
) -> Result<u64, Vec<Problem>> {
    let config = Config::from_yaml(text, &|name| std::env::var(name).ok())?;
    let previous = shared.topology.load_full();
    let built = {
        let (config, previous) = (config.clone(), previous.clone());
        tokio::task::spawn_blocking(move || Topology::build_after(&config, Some(&previous)))
            .await
            .map_err(|e| vec![Problem::new("", e.to_string())])??
    };
    // A new GeoIP file must open now: a bad file changes nothing.
    if built.geoip != previous.geoip {
        if let Some(p) = built.geoip.clone() {
            tokio::task::spawn_blocking(move || crate::geo::geoip::GeoIp::open(Some(&p)).map(drop))
                .await
                .map_err(|e| vec![Problem::new("geoip.database", e.to_string())])?
                .map_err(|e| vec![Problem::new("geoip.database", e)])?;
        }
    }
    // Loaded only to check them: the running TLS setup needs a restart to change.
    if let Some(t) = &config.tls {
        crate::tls::server_config(&t.cert, &t.key).map_err(|e| vec![Problem::new("tls", e)])?;
    }
    if let Some(started) = &state.started {
        let now = StartOnly::of(&config);
        for (key, changed) in [
            ("listen", started.listen != now.listen),
            ("admin_listen", started.admin_listen != now.admin_listen),
            ("tls", started.tls != now.tls),
            ("workers", started.workers != now.workers),
            (
                "scram_iterations",
                started.scram_iterations != now.scram_iterations,
            ),
            ("admin_token", started.admin_token != now.admin_token),
            ("instance_id", started.instance_id != now.instance_id),
        ] {
            if changed {
                tracing::warn!(
                    setting = key,
                    "`{key}` changed in the file; it needs a restart, and the old value stays in effect until then"
                );
            }
        }
    }
    let summary = describe_changes(&previous, &built);
    let generation = built.generation;
    let built = Arc::new(built);
    shared.topology.store(built.clone());
    shared.config.store(Arc::new(config));
    shared.pools.follow(&built);
    shared.metrics.config_generation.set(generation as i64);
    crate::health::probe::spawn_missing(shared);
    state.last_text = Some(hash(text));
    tracing::info!(generation, changes = %summary, "configuration reloaded");
    Ok(generation)
}

/// A one-line account of what a reload changes: clusters and nodes added, removed or changed.
pub fn describe_changes(old: &Topology, new: &Topology) -> String {
    let mut parts = Vec::new();
    for name in new.clusters.keys() {
        if !old.clusters.contains_key(name) {
            parts.push(format!("cluster {name} added"));
        }
    }
    for (name, oc) in &old.clusters {
        let Some(nc) = new.clusters.get(name) else {
            parts.push(format!("cluster {name} removed"));
            continue;
        };
        for n in nc.nodes() {
            match oc.nodes().find(|o| o.key == n.key) {
                None => parts.push(format!("{name}: node {} added", n.label())),
                Some(o) if !Arc::ptr_eq(o, n) => {
                    parts.push(format!("{name}: node {} changed", n.label()))
                }
                Some(_) => {}
            }
        }
        for o in oc.nodes() {
            if !nc.nodes().any(|n| n.key == o.key) {
                parts.push(format!("{name}: node {} removed", o.label()));
            }
        }
        if oc.allowed_regions != nc.allowed_regions {
            parts.push(format!("{name}: allowed_regions changed"));
        }
    }
    if old.peers != new.peers {
        parts.push("peers changed".to_owned());
    }
    if parts.is_empty() {
        "no topology change (policies, users or limits may have changed)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Watches the file's directory (editors and Kubernetes replace files rather than write them)
/// and reloads after each burst of changes, until the proxy drains.
pub fn watch(shared: Arc<Shared>, path: PathBuf) -> Result<(), String> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the file raises Access events: reacting to them would loop forever.
        if let Ok(e) = event {
            if !matches!(e.kind, EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = shared.drain.cancelled() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reload(&shared, &path).await;
        }
    });
    Ok(())
}
