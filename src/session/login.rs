//! Logins without backend logins: a client's startup settings become session settings, and the
//! ParameterStatus values it is greeted with come from its pool's cache for the node it would
//! log in to. A server connection is leased at login only to fill that cache (once per node
//! and user) or to check settings the proxy cannot vouch for itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::settings::Settings;
use super::Handles;
use crate::error::{sqlstate, ClientError, ErrorKind};
use crate::health::PrimaryView;
use crate::protocol::backend::{parameter_status, ErrorFields};
use crate::protocol::frame;
use crate::topology::{ClusterSpec, NodeSpec, UserSpec};

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// The settings a startup packet asks for: its parameters (besides user, database, …) and the
/// `-c name=value` / `--name=value` entries of `options`. Other `options` switches are refused,
/// as the proxy cannot carry them from one server connection to the next.
pub fn startup_settings(params: &[(String, String)]) -> Result<Settings, String> {
    let mut s = Settings::default();
    // As in PostgreSQL, `options` is applied first and a parameter of its own wins.
    if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
        let tokens = crate::geo::split_options(options);
        let mut it = tokens.iter();
        while let Some(t) = it.next() {
            let setting = if t == "-c" {
                it.next().map(String::as_str)
            } else {
                t.strip_prefix("--").or_else(|| t.strip_prefix("-c"))
            };
            match setting.and_then(|x| x.split_once('=')) {
                Some((name, value)) if !name.is_empty() => {
                    s.apply_startup(&name.replace('-', "_"), value)
                }
                _ => {
                    return Err(format!(
                        "unsupported startup option {t:?}: only `-c name=value` and `--name=value` can be passed through pgmeridian"
                    ))
                }
            }
        }
    }
    for (k, v) in params {
        if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("pgmeridian.") {
            s.apply_startup(k, v);
        }
    }
    Ok(s)
}

/// What PostgreSQL reports for `application_name`: printable ASCII only, at most 63 bytes.
fn clean_application_name(v: &str) -> Vec<u8> {
    let mut out: Vec<u8> = v
        .chars()
        .map(|c| {
            if (' '..='~').contains(&c) {
                c as u8
            } else {
                b'?'
            }
        })
        .collect();
    out.truncate(63);
    out
}

/// The node a login is greeted from: the observed primary, else the first replica seen up.
pub fn login_node(h: &Handles, cluster: &ClusterSpec) -> Arc<NodeSpec> {
    let health = h.health.load();
    let Some(ch) = health.clusters.get(&cluster.name) else {
        return cluster.primary.clone();
    };
    let ch = ch.aligned_to(cluster);
    match ch.primary_view() {
        PrimaryView::One(i) if i > 0 => cluster
            .replicas
            .get(i - 1)
            .cloned()
            .unwrap_or_else(|| cluster.primary.clone()),
        PrimaryView::None | PrimaryView::Conflict => ch
            .replicas
            .iter()
            .position(|r| r.up && r.in_recovery == Some(true))
            .and_then(|i| cluster.replicas.get(i).cloned())
            .unwrap_or_else(|| cluster.primary.clone()),
        _ => cluster.primary.clone(),
    }
}

/// The ParameterStatus values to greet the client with. Leases a server connection only when
/// the pool has none cached yet, or when the client's settings go beyond `application_name`
/// (they are then applied there, so an invalid one refuses the login as PostgreSQL would, and
/// the values reported are the server's canonical ones).
pub async fn greeting(
    h: &Handles<'_>,
    cluster: &ClusterSpec,
    user: &Arc<UserSpec>,
    settings: &mut Settings,
    connect_timeout: Duration,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
    let node = login_node(h, cluster);
    let pool = h.pools.get(&node, user, &cluster.pooling);
    if let Some(defaults) = pool.params() {
        // A startup setting that only restates the server's default (client_encoding=UTF8,
        // say) needs neither a check nor a replay on each lease.
        let restated: Vec<String> = settings
            .list()
            .iter()
            .filter(|(name, _)| {
                startup_value(settings, name).is_some_and(|v| is_default(&defaults, name, &v))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in restated {
            settings.remove(&name);
        }
    }
    let needs_check = settings
        .list()
        .iter()
        .any(|(name, _)| name != "application_name");
    let app_name = settings
        .list()
        .iter()
        .find(|(n, _)| n == "application_name")
        .and_then(|_| startup_value(settings, "application_name"));
    let mut reported: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let cached = if needs_check { None } else { pool.params() };
    let base = match cached {
        Some(p) => p,
        None => {
            let options = crate::backend::ConnectOptions::from(&h.topology.load().limits);
            let mut lease = pool.acquire(options).await.map_err(|e| {
                if let crate::pool::AcquireError::Connect(c) = &e {
                    if c.suggests_node_failure() {
                        h.hints.cluster(&node.cluster).connect_failed();
                    }
                }
                tracing::warn!(error = %e, "backend login failed");
                let mut e = e.to_client();
                e.fatal = true;
                e
            })?;
            if needs_check {
                let result = apply(&mut lease, settings, connect_timeout).await;
                match result {
                    Ok(values) => reported = values,
                    Err(e) => {
                        let reuse = e.code != sqlstate::CONNECTION_FAILURE;
                        lease
                            .pool
                            .clone()
                            .release(lease, reuse, std::time::Instant::now());
                        return Err(e);
                    }
                }
            }
            let params = pool.params().unwrap_or_default();
            lease
                .pool
                .clone()
                .release(lease, true, std::time::Instant::now());
            params
        }
    };
    tracing::debug!(
        checked = needs_check,
        reported = reported.len(),
        "greeting from the pool's parameters"
    );
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = base.to_vec();
    for (k, v) in reported {
        match out.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    if let Some(name) = app_name {
        let v = clean_application_name(&name);
        match out.iter_mut().find(|(n, _)| n == b"application_name") {
            Some(slot) => slot.1 = v,
            None => out.push((b"application_name".to_vec(), v)),
        }
    }
    Ok(out)
}

/// Whether `name = value` is what the server reported at login (names and values compared as
/// PostgreSQL compares encoding names: case and punctuation aside).
fn is_default(defaults: &[(Vec<u8>, Vec<u8>)], name: &str, value: &str) -> bool {
    let norm = |b: &[u8]| -> Vec<u8> {
        b.iter()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(u8::to_ascii_lowercase)
            .collect()
    };
    defaults
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .is_some_and(|(_, v)| norm(v) == norm(value.as_bytes()))
}

/// The value a startup setting was given with (from its recorded `SET name = 'value'`).
fn startup_value(settings: &Settings, name: &str) -> Option<String> {
    let (_, sql) = settings.list().iter().find(|(n, _)| n == name)?;
    let literal = sql.split_once(" = ")?.1;
    let (escaped, inner) = match literal.strip_prefix("E'") {
        Some(rest) => (true, rest.strip_suffix('\'')?),
        None => (false, literal.strip_prefix('\'')?.strip_suffix('\'')?),
    };
    let mut v = inner.replace("''", "'");
    if escaped {
        v = v.replace("\\\\", "\\");
    }
    Some(v)
}

/// Applies the session's settings on the leased connection; returns the ParameterStatus
/// values the server reported, or the server's error (as a FATAL, as at a real login).
async fn apply(
    lease: &mut crate::pool::Lease,
    settings: &Settings,
    timeout: Duration,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
    let Some(state) = lease.conn.state.as_mut() else {
        return Ok(Vec::new());
    };
    // The server reports a parameter only when its value changed by the end of a query, and
    // this connection may hold the value a former session set: RESET ALL runs as a query of
    // its own (reporting what it changes back), then the client's settings (reporting theirs).
    let Some(sql) = settings.replay_sql(Some(&std::sync::Arc::from(Vec::new()))) else {
        return Ok(Vec::new());
    };
    let lost = |reason: String| {
        ClientError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("lost the connection to backend {}: {reason}", state.node),
        )
        .with_kind(ErrorKind::BackendLost)
    };
    let stream = std::mem::replace(&mut lease.conn.stream, crate::stream::Stream::Detached);
    let mut io = crate::wire::MessageIo::new(stream);
    let mut msgs = Vec::new();
    for step in ["RESET ALL", sql.as_str()] {
        let mut request = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(step, &mut request);
        match tokio::time::timeout(timeout, io.exchange(&request)).await {
            Ok(Ok(m)) => msgs.extend(m),
            Ok(Err(e)) => {
                lease.conn.stream = io.io;
                return Err(lost(e.to_string()));
            }
            Err(_) => {
                lease.conn.stream = io.io;
                return Err(lost("no answer".into()));
            }
        }
    }
    lease.conn.stream = io.io;
    state.unnamed = None;
    let mut values = Vec::new();
    for m in &msgs {
        match m[0] {
            b'E' => {
                let f = ErrorFields::parse(frame::body(m)).unwrap_or_default();
                return Err(ClientError::fatal(f.code.clone(), f.message)
                    .with_kind(ErrorKind::ClientProtocol));
            }
            b'S' => {
                if let Some((k, v)) = parameter_status(frame::body(m)) {
                    values.push((k.to_vec(), v.to_vec()));
                }
            }
            _ => {}
        }
    }
    state.settings = Some(settings.list().clone());
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_and_options_become_settings() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let s = startup_settings(&p(&[
            ("user", "app"),
            ("database", "app"),
            ("application_name", "psql"),
            (
                "options",
                "-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB",
            ),
        ]))
        .unwrap();
        let names: Vec<&str> = s.list().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "search_path",
                "statement_timeout",
                "work_mem",
                "application_name"
            ]
        );
        assert_eq!(startup_value(&s, "search_path").as_deref(), Some("a,b"));
        // A parameter of its own wins over `options`.
        let s = startup_settings(&p(&[
            ("options", "-c application_name=x"),
            ("application_name", "y"),
        ]))
        .unwrap();
        assert_eq!(startup_value(&s, "application_name").as_deref(), Some("y"));
        assert!(startup_settings(&p(&[("options", "-B 100")])).is_err());
        assert!(startup_settings(&p(&[("options", "-c")])).is_err());
    }

    #[test]
    fn settings_that_restate_defaults_are_recognised() {
        let defaults = vec![
            (b"client_encoding".to_vec(), b"UTF8".to_vec()),
            (b"DateStyle".to_vec(), b"ISO, MDY".to_vec()),
        ];
        assert!(is_default(&defaults, "client_encoding", "utf-8"));
        assert!(is_default(&defaults, "datestyle", "iso, mdy"));
        assert!(!is_default(&defaults, "client_encoding", "LATIN1"));
        assert!(!is_default(&defaults, "timezone", "UTC"));
    }

    #[test]
    fn application_names_are_reported_as_postgresql_does() {
        assert_eq!(clean_application_name("pgbench"), b"pgbench");
        assert_eq!(clean_application_name("café"), b"caf?");
        assert_eq!(clean_application_name(&"x".repeat(100)).len(), 63);
        let mut s = Settings::default();
        s.apply_startup("application_name", "it's \\x");
        assert_eq!(
            startup_value(&s, "application_name").as_deref(),
            Some("it's \\x")
        );
    }
}
