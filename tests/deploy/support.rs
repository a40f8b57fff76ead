//! Tools for tests/deploy.rs: rendering, the validators, a proxy process, a kubelet-style
//! ConfigMap volume.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command, what: &str, install: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("this test needs {what} and could not run it ({e}); {install}"))
}

/// Every kustomization to validate, by name: the whole tree, each region, monitoring, and each
/// component applied to the first region (through a kustomization written under `tmp`).
pub fn kustomizations(tmp: &Path) -> Vec<(String, PathBuf)> {
    let root = deploy_dir();
    let mut out = vec![("all".to_owned(), root.clone())];
    let mut regions: Vec<_> = std::fs::read_dir(root.join("regions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    regions.sort();
    for r in &regions {
        out.push((
            r.file_name().unwrap().to_str().unwrap().to_owned(),
            r.clone(),
        ));
    }
    out.push(("monitoring".to_owned(), root.join("monitoring")));
    for c in std::fs::read_dir(root.join("components")).unwrap() {
        let c = c.unwrap().path();
        let name = format!("with-{}", c.file_name().unwrap().to_str().unwrap());
        let dir = tmp.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        // kustomize takes only relative paths to other kustomizations.
        let text = format!(
            "resources: [{}]\ncomponents: [{}]\n",
            relative(&dir, &regions[0]),
            relative(&dir, &c)
        );
        std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
        out.push((name, dir));
    }
    out
}

fn relative(from: &Path, to: &Path) -> String {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let up = from.components().count() - common;
    let mut parts: Vec<String> = vec!["..".into(); up];
    parts.extend(
        to.components()
            .skip(common)
            .map(|c| c.as_os_str().to_str().unwrap().to_owned()),
    );
    parts.join("/")
}

/// `kubectl kustomize DIR` (kubectl's built-in kustomize; no cluster is contacted).
pub fn kustomize(dir: &Path) -> String {
    let out = run(
        Command::new("kubectl").arg("kustomize").arg(dir),
        "kubectl (for `kubectl kustomize`)",
        "install kubectl, or a standalone kustomize as `kubectl kustomize` is called here",
    );
    assert!(
        out.status.success(),
        "kustomize {dir:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a multi-document YAML text.
pub fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Runs deploy/kubernetes/check/validate.py; its output. It must have found problems (exit 1:
/// the caller passes a known-bad file) and nothing worse.
pub fn validator(args: &[String]) -> String {
    let install = "install the validators: python3 -m pip install -r deploy/kubernetes/check/requirements.txt (tests/run.sh does)";
    let out = run(
        Command::new("python3")
            .arg(deploy_dir().join("check/validate.py"))
            .args(args),
        "python3",
        install,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the schema validators are missing; {install}:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "validate.py failed:\n{stdout}\n{stderr}"
    );
    stdout.into_owned()
}

/// `pgmeridian check-config` on `text` (written to `path`) with exactly `envs`.
pub fn check_config(path: &Path, text: &str, envs: &[(String, String)]) {
    std::fs::write(path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgmeridian"))
        .arg("check-config")
        .arg(path)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config {path:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What kubelet does to a ConfigMap volume: the files go to a new timestamped directory, a
/// `..data_tmp` symlink to it is renamed over `..data`, and the old directory is removed. The
/// file itself is a symlink through `..data`.
pub fn configmap_swap(dir: &Path, text: &str) {
    use std::os::unix::fs::symlink;
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    std::fs::create_dir(dir.join(&stamp)).unwrap();
    std::fs::write(dir.join(&stamp).join("pgmeridian.yaml"), text).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("pgmeridian.yaml").exists() {
        symlink("..data/pgmeridian.yaml", dir.join("pgmeridian.yaml")).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// `pgmeridian run` as a child process, killed when dropped.
pub struct Running(Child);

impl Running {
    pub fn start(config: &Path) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_pgmeridian"))
            .args(["run", "--config"])
            .arg(config)
            .env("PGMERIDIAN_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Running(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of one series (`name{labels}` as exposed) on the admin listener's `/metrics`,
/// waiting up to `limit` for the listener to come up.
pub fn wait_for_metric(admin: u16, series: &str, limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            let line = body
                .lines()
                .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')));
            return line
                .unwrap_or_else(|| panic!("no {series} in /metrics"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
        assert!(
            start.elapsed() < limit,
            "the admin listener on {admin} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check rules` on one recording rule per expression (Grafana's variables replaced).
pub fn promtool_rules(exprs: &[String]) -> Result<(), String> {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$cluster", ".*")
            .replace("$region", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let path = scratch("promtool").join("rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = run(
        Command::new("promtool").args(["check", "rules"]).arg(&path),
        "promtool",
        "install it (Debian: apt-get install prometheus); tests/run.sh does",
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every metric family the proxy exports, with its `pgmeridian_` prefix.
pub fn metric_families() -> BTreeSet<String> {
    use prometheus::core::Collector;
    let m = pgmeridian::metrics::Metrics::new();
    let collectors: Vec<&dyn Collector> = vec![
        &m.routed,
        &m.refused,
        &m.client_connections,
        &m.node_up,
        &m.node_primary,
        &m.replica_lag_seconds,
        &m.replica_lag_bytes,
        &m.probe_rtt_seconds,
        &m.primary_conflict,
        &m.geoip_lookups,
        &m.batch_duration,
        &m.pool_server_connections,
        &m.pool_clients_waiting,
        &m.pool_wait_seconds,
        &m.pool_leases,
        &m.pool_closes,
        &m.backend_logins,
        &m.pinned_sessions,
        &m.pin_after_write,
        &m.errors,
        &m.config_reloads,
        &m.config_generation,
    ];
    collectors
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| format!("pgmeridian_{}", d.fq_name))
        .collect()
}

/// The `pgmeridian_*` metric names an expression mentions.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pgmeridian_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}
