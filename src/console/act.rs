//! What each console command does to the proxy: SHOW reads a snapshot, RELOAD runs the same
//! reload as SIGHUP, PAUSE/RESUME set a cluster's pause (PAUSE then waits until no session of
//! it has work in flight), DRAIN/UNDRAIN set a node's drain. Names given by the operator are
//! resolved here, with errors that list what exists. Never touches a backend.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::parse::Command;
use super::show::{show, Snapshot};
use super::table::Table;
use crate::app::Shared;
use crate::error::{sqlstate, ClientError};
use crate::health::PrimaryView;
use crate::reload::Outcome;
use crate::stream::Stream;
use crate::topology::{NodeSpec, Topology};
use crate::wire::MessageIo;

/// How often PAUSE looks at the sessions while it waits for them.
const PAUSE_POLL: Duration = Duration::from_millis(5);

/// A command's answer: a result set (or just its tag) and notices before it.
pub struct Done {
    pub table: Option<Table>,
    pub notices: Vec<String>,
}

pub enum Failed {
    /// Reported to the client; the console goes on.
    Client(ClientError),
    /// The client left, or the proxy stops, while the command waited.
    Gone,
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Failed {
        Failed::Client(e)
    }
}

fn done(notices: Vec<String>) -> Result<Done, Failed> {
    Ok(Done {
        table: None,
        notices,
    })
}

pub async fn run(
    command: &Command,
    shared: &Arc<Shared>,
    io: &mut MessageIo<Stream>,
) -> Result<Done, Failed> {
    match command {
        Command::Show(what) => {
            let (topology, health, config) = (
                shared.topology.load_full(),
                shared.health.load_full(),
                shared.config.load_full(),
            );
            let (pools, clients) = (shared.pools.all(), shared.sessions.all());
            let snapshot = Snapshot {
                topology: &topology,
                health: &health,
                pools: &pools,
                clients: &clients,
                pauses: &shared.pauses,
                metrics: &shared.metrics,
                config: &config,
                started: &shared.started_config,
            };
            Ok(Done {
                table: Some(show(*what, &snapshot)),
                notices: Vec::new(),
            })
        }
        Command::Set(name) => done(vec![format!(
            "SET {name} ignored: the admin console has no settings"
        )]),
        Command::Reload => reload(shared).await,
        Command::Pause(cluster) => pause(shared, cluster.as_deref(), io).await,
        Command::Resume(cluster) => {
            let names = match cluster {
                Some(c) if shared.pauses.is_paused(c) => vec![c.clone()],
                Some(c) => vec![cluster_name(&shared.topology.load(), c)?],
                None => shared.pauses.resume_all(),
            };
            for name in &names {
                shared.pauses.of(name).set(false);
            }
            tracing::info!(clusters = ?names, "resumed");
            done(Vec::new())
        }
        Command::Drain { cluster, node } => drain(shared, cluster.as_deref(), node, true),
        Command::Undrain { cluster, node } => drain(shared, cluster.as_deref(), node, false),
    }
}

async fn reload(shared: &Arc<Shared>) -> Result<Done, Failed> {
    let Some(path) = shared.config_file.get().cloned() else {
        return Err(ClientError::error(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "this pgmeridian was not started from a configuration file; there is nothing to reload",
        )
        .into());
    };
    // On the proxy's main runtime, as SIGHUP does (the probe loops a reload starts live there).
    let job = {
        let shared = shared.clone();
        async move { crate::reload::reload(&shared, &path).await }
    };
    let outcome = match shared.runtime.get() {
        Some(rt) => rt.spawn(job).await.map_err(|e| {
            ClientError::error(sqlstate::CONFIG_FILE_ERROR, format!("reload failed: {e}"))
        })?,
        None => job.await,
    };
    match outcome {
        Outcome::Applied { generation } => done(vec![format!(
            "configuration generation {generation} applied"
        )]),
        Outcome::Unchanged => done(vec!["the configuration file is unchanged".into()]),
        Outcome::Rejected(problems) => {
            let detail: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Err(ClientError::error(
                sqlstate::CONFIG_FILE_ERROR,
                "configuration reload rejected; the running configuration stays in force",
            )
            .with_detail(detail.join("\n"))
            .into())
        }
    }
}

async fn pause(
    shared: &Arc<Shared>,
    cluster: Option<&str>,
    io: &mut MessageIo<Stream>,
) -> Result<Done, Failed> {
    let names = {
        let topology = shared.topology.load();
        match cluster {
            Some(c) => vec![cluster_name(&topology, c)?],
            None => {
                let mut all: Vec<String> = topology.clusters.keys().cloned().collect();
                all.sort();
                all
            }
        }
    };
    for name in &names {
        shared.pauses.of(name).set(true);
    }
    tracing::info!(clusters = ?names, "paused; waiting for running transactions");
    let started = Instant::now();
    loop {
        let busy: usize = names.iter().map(|n| shared.sessions.busy(n)).sum();
        if busy == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE_POLL) => {}
            alive = super::client_still_there(io) => if !alive {
                tracing::info!(clusters = ?names, "the console left while PAUSE waited; the pause stays");
                return Err(Failed::Gone);
            },
            _ = shared.hard_stop.cancelled() => return Err(Failed::Gone),
        }
    }
    let waited = started.elapsed();
    tracing::info!(clusters = ?names, ?waited, "paused: no session has work in flight");
    done(vec![format!(
        "paused {} after {} ms: new batches wait until RESUME",
        names.join(", "),
        waited.as_millis()
    )])
}

fn drain(
    shared: &Arc<Shared>,
    cluster: Option<&str>,
    node: &str,
    drained: bool,
) -> Result<Done, Failed> {
    let topology = shared.topology.load_full();
    let health = shared.health.load_full();
    let found = find_nodes(&topology, cluster, node)?;
    let mut notices = Vec::new();
    for (cluster, i, n) in found {
        n.drained.store(drained, Ordering::Relaxed);
        tracing::info!(node = %n, drained, "node drain changed by the admin console");
        let spec = &topology.clusters[&cluster];
        let view = health
            .clusters
            .get(&cluster)
            .map(|h| h.aligned_to(spec).primary_view());
        let acting_primary = match view {
            Some(PrimaryView::One(p)) => p == i,
            _ => i == 0,
        };
        let mut text = if drained {
            format!(
                "node {} of cluster {cluster} is drained: it gets no new reads; reads running there finish",
                n.label()
            )
        } else {
            format!("node {} of cluster {cluster} serves reads again", n.label())
        };
        if drained && acting_primary {
            text.push_str("; it acts as the primary, so writes still go to it");
        }
        notices.push(text);
    }
    done(notices)
}

/// `name` as a configured cluster: exactly, else the one cluster that matches it ignoring case.
fn cluster_name(topology: &Topology, name: &str) -> Result<String, ClientError> {
    if topology.clusters.contains_key(name) {
        return Ok(name.to_owned());
    }
    let folded: Vec<&String> = topology
        .clusters
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(name))
        .collect();
    if let [one] = folded[..] {
        return Ok(one.clone());
    }
    let mut known: Vec<&str> = topology.clusters.keys().map(String::as_str).collect();
    known.sort();
    Err(ClientError::error(
        sqlstate::INVALID_CATALOG_NAME,
        format!("cluster \"{name}\" does not exist"),
    )
    .with_hint(format!("configured clusters: {}", known.join(", "))))
}

/// The nodes called `node` (by name or `host:port`), in `cluster` or in every cluster, with
/// their cluster and index (0: the configured primary).
fn find_nodes(
    topology: &Topology,
    cluster: Option<&str>,
    node: &str,
) -> Result<Vec<(String, usize, Arc<NodeSpec>)>, ClientError> {
    let clusters: Vec<String> = match cluster {
        Some(c) => vec![cluster_name(topology, c)?],
        None => {
            let mut all: Vec<String> = topology.clusters.keys().cloned().collect();
            all.sort();
            all
        }
    };
    let mut found = Vec::new();
    let mut known = Vec::new();
    for c in &clusters {
        for (i, n) in topology.clusters[c].nodes().enumerate() {
            if n.label() == node || format!("{}:{}", n.host, n.port) == node {
                found.push((c.clone(), i, n.clone()));
            }
            known.push(format!("{c} {}", n.label()));
        }
    }
    if found.is_empty() {
        return Err(ClientError::error(
            sqlstate::UNDEFINED_OBJECT,
            format!("node \"{node}\" does not exist"),
        )
        .with_hint(format!("nodes (cluster node): {}", known.join(", "))));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const YAML: &str = "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: { lat: 39.0, lon: -77.5 }
users:
  - { name: app, password: x }
clusters:
  app:
    primary: { host: 127.0.0.1, port: 5432, region: us-east, tls: disable }
    replicas:
      - { name: r1, host: 127.0.0.1, port: 5433, region: us-east, tls: disable }
  Reports:
    primary: { host: 127.0.0.1, port: 6432, region: us-east, tls: disable }
    replicas:
      - { name: r1, host: 127.0.0.1, port: 6433, region: us-east, tls: disable }
";

    fn topology() -> Topology {
        let config = Config::from_yaml(YAML, &|_| None).unwrap();
        Topology::build(&config).unwrap_or_else(|_| panic!("topology"))
    }

    #[test]
    fn cluster_names_resolve_exactly_then_ignoring_case() {
        let t = topology();
        assert_eq!(cluster_name(&t, "app").unwrap(), "app");
        assert_eq!(cluster_name(&t, "reports").unwrap(), "Reports");
        let e = cluster_name(&t, "nope").unwrap_err();
        assert_eq!(e.code, "3D000");
        assert_eq!(e.hint.as_deref(), Some("configured clusters: Reports, app"));
    }

    #[test]
    fn nodes_resolve_by_name_or_address_in_one_or_every_cluster() {
        let t = topology();
        let names = |r: Vec<(String, usize, Arc<NodeSpec>)>| -> Vec<(String, usize)> {
            r.into_iter().map(|(c, i, _)| (c, i)).collect()
        };
        assert_eq!(
            names(find_nodes(&t, None, "r1").unwrap()),
            [("Reports".to_owned(), 1), ("app".to_owned(), 1)]
        );
        assert_eq!(
            names(find_nodes(&t, Some("app"), "r1").unwrap()),
            [("app".to_owned(), 1)]
        );
        assert_eq!(
            names(find_nodes(&t, None, "127.0.0.1:5432").unwrap()),
            [("app".to_owned(), 0)]
        );
        assert_eq!(
            names(find_nodes(&t, None, "127.0.0.1:6433").unwrap()),
            [("Reports".to_owned(), 1)]
        );
        let e = find_nodes(&t, Some("app"), "r9").unwrap_err();
        assert_eq!(e.code, "42704");
        assert!(e.hint.unwrap().contains("app r1"));
        assert_eq!(find_nodes(&t, Some("x"), "r1").unwrap_err().code, "3D000");
    }
}
