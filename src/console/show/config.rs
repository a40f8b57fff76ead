//! `SHOW CONFIG`: a configuration as `key = value` rows by YAML path, passwords masked, and
//! whether a key changes live or needs a restart. Pure.

use super::super::table::{text, Table, Type};
use crate::config::Config;

/// Settings that only a restart changes: their value in force is the one the proxy started with.
const RESTART_ONLY: &[&str] = &[
    "listen",
    "admin_listen",
    "tls",
    "workers",
    "scram_iterations",
    "log_format",
    "instance_id",
];

fn restart_only(key: &str) -> bool {
    RESTART_ONLY.iter().any(|r| {
        key == *r
            || key
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// `key = value` pairs of a configuration (YAML paths); passwords are masked.
fn flatten(config: &Config) -> Vec<(String, Option<String>)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, Option<String>)>) {
        use serde_json::Value;
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            _ if prefix.ends_with("password") => out.push((prefix.to_owned(), text("********"))),
            Value::Null => out.push((prefix.to_owned(), None)),
            Value::String(s) => out.push((prefix.to_owned(), text(s.as_str()))),
            other => out.push((prefix.to_owned(), text(other.to_string()))),
        }
    }
    let mut out = Vec::new();
    match serde_json::to_value(config) {
        Ok(v) => walk("", &v, &mut out),
        Err(e) => out.push(("error".into(), text(e.to_string()))),
    }
    out
}

/// `SHOW CONFIG`: the live configuration, with the restart-only settings the proxy started
/// with, one key per row, sorted.
pub fn table(live: &Config, started: &Config) -> Table {
    let mut t = Table::new(&[
        ("key", Type::Text),
        ("value", Type::Text),
        ("changeable", Type::Text),
    ]);
    let mut rows: Vec<(String, Option<String>, &str)> = flatten(started)
        .into_iter()
        .filter(|(key, _)| restart_only(key))
        .map(|(key, value)| (key, value, "restart"))
        .chain(
            flatten(live)
                .into_iter()
                .filter(|(key, _)| !restart_only(key))
                .map(|(key, value)| (key, value, "live")),
        )
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value, changeable) in rows {
        t.push(vec![text(key), value, text(changeable)]);
    }
    t
}
