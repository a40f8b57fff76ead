//! `deploy/kubernetes` and the Grafana dashboard, checked without a cluster: every kustomization
//! renders (`kubectl kustomize`) and passes the Kubernetes API schemas and the
//! prometheus-operator CRD schema (`deploy/kubernetes/check/validate.py`); each Deployment agrees
//! with the proxy config it mounts (ports, probes, drain timing, `check-config`); a
//! kubelet-style ConfigMap update (symlink swap) is reloaded; the dashboard's two copies are
//! identical, its PromQL parses (`promtool check rules`) and names only real metrics.
//!
//! Needs kubectl, python3 with `deploy/kubernetes/check/requirements.txt`, and promtool:
//! tests/run.sh installs the last two. A missing tool fails the test, saying what to install.

#[path = "deploy/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The proxy's hard-stop grace after `shutdown_timeout` (`HARD_STOP_GRACE` in src/server.rs).
const HARD_STOP_GRACE_S: u64 = 5;

/// A manifest the validator must reject, one problem per resource.
const KNOWN_BAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: typo }
spec:
  selector: { matchLabels: { a: b } }
  template:
    metadata: { labels: { a: b } }
    spec: { containers: [ { name: c, image: i, readinesProbe: {} } ] }
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: { name: typo }
spec: { selector: {}, endpoints: [ { port: admin, scrapeTimout: 5s } ] }
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: { name: badinterval }
spec: { selector: {}, endpoints: [ { port: admin, interval: 15 seconds } ] }
---
apiVersion: example.com/v1
kind: Widget
metadata: { name: unknown }
"#;

#[test]
fn manifests_pass_the_kubernetes_and_crd_schemas() {
    let tmp = scratch("schemas");
    let mut files = Vec::new();
    for (name, dir) in kustomizations(&tmp) {
        let rendered = kustomize(&dir);
        let path = tmp.join(format!("{name}.yaml"));
        std::fs::write(&path, &rendered).unwrap();
        files.push((path, docs(&rendered).len()));
    }
    let bad = tmp.join("known-bad.yaml");
    std::fs::write(&bad, KNOWN_BAD).unwrap();
    let mut args: Vec<String> = ["--k8s", "1.29", "--k8s", "1.37"]
        .map(String::from)
        .to_vec();
    args.extend(files.iter().map(|(p, _)| p.display().to_string()));
    args.push(bad.display().to_string());
    let out = validator(&args);
    for (path, count) in &files {
        let p = path.display().to_string();
        let ok = out
            .lines()
            .filter(|l| l.starts_with("ok") && l.contains(&p))
            .count();
        let failed: Vec<_> = out
            .lines()
            .filter(|l| l.starts_with("FAIL") && l.contains(&p))
            .collect();
        assert!(
            failed.is_empty(),
            "{p} does not validate:\n{}",
            failed.join("\n")
        );
        assert_eq!(ok, *count, "{p}: {count} resources, {ok} validated:\n{out}");
    }
    // The validator itself: strict core schemas, unknown CRD fields, CRD patterns, unknown kinds.
    for expected in [
        "Deployment/typo: k8s 1.29: spec.template.spec.containers.0: Additional properties are not allowed ('readinesProbe'",
        "ServiceMonitor/typo: spec.endpoints[0].scrapeTimout: unknown field",
        "ServiceMonitor/badinterval: 1 validation error",
        "Widget/unknown: Couldn't find schema for kind Widget",
    ] {
        assert!(out.contains(expected), "the validator missed {expected:?}:\n{out}");
    }
}

#[test]
fn each_deployment_agrees_with_the_config_it_mounts() {
    let tmp = scratch("agree");
    let all = docs(&kustomize(&deploy_dir()));
    let deployments: Vec<&Value> = all.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2, "one Deployment per region");
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let region = d["metadata"]["labels"]["pgmeridian.io/region"]
            .as_str()
            .unwrap();
        // The container's environment, with placeholders for values from Secrets.
        let envs: Vec<(String, String)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = e["value"].as_str().unwrap_or("from-a-secret");
                (e["name"].as_str().unwrap().to_owned(), value.to_owned())
            })
            .collect();
        let env_of = |n: &str| envs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(
            env_of("PGMERIDIAN_REGION").as_deref(),
            Some(region),
            "{name}: region env"
        );

        // The mounted file: a whole ConfigMap volume (no subPath, or updates never arrive).
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config_path = Path::new(args[args.iter().position(|a| *a == "--config").unwrap() + 1]);
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == config_path.parent().unwrap())
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {config_path:?}'s directory"));
        assert!(
            mount.get("subPath").is_none(),
            "{name}: subPath mounts are never updated"
        );
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let cm = volume["configMap"]["name"].as_str().unwrap();
        let cm = all
            .iter()
            .find(|x| x["kind"] == "ConfigMap" && x["metadata"]["name"] == cm)
            .unwrap();
        let key = config_path.file_name().unwrap().to_str().unwrap();
        let text = cm["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no {key} in the ConfigMap"));

        check_config(&tmp.join(format!("{name}.yaml")), text, &envs);
        let config = pgmeridian::config::Config::from_yaml(text, &env_of).unwrap();
        assert_eq!(config.region, region);

        let port = |n: &str| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == n)
                .unwrap()["containerPort"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(port("postgres"), port_of(&config.listen), "{name}: listen");
        let admin = config
            .admin_listen
            .as_deref()
            .expect("admin_listen for the probes");
        assert_eq!(port("admin"), port_of(admin), "{name}: admin_listen");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{name}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "admin", "{name}: {probe}");
        }

        // Drain: preStop sleep, then SIGTERM, shutdown_timeout, the hard stop's grace.
        let sleep: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let needed = sleep + config.limits.shutdown_timeout.as_secs() + HARD_STOP_GRACE_S;
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(grace > needed, "{name}: terminationGracePeriodSeconds {grace} <= {needed}: the kubelet would kill the drain");

        let sc = &c["securityContext"];
        assert_eq!(
            (
                sc["readOnlyRootFilesystem"].as_bool(),
                sc["allowPrivilegeEscalation"].as_bool()
            ),
            (Some(true), Some(false))
        );
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

        // The Services and the PDB select exactly these pods.
        let selector = &d["spec"]["selector"]["matchLabels"];
        let selecting = |kind: &str| {
            all.iter()
                .filter(|x| {
                    x["kind"] == kind
                        && (x["spec"]["selector"] == *selector
                            || x["spec"]["selector"]["matchLabels"] == *selector)
                })
                .count()
        };
        assert_eq!(
            selecting("Service"),
            2,
            "{name}: clients' and admin Services"
        );
        assert_eq!(selecting("PodDisruptionBudget"), 1, "{name}: PDB");
    }
    let sm = all.iter().find(|x| x["kind"] == "ServiceMonitor").unwrap();
    let scraped: Vec<_> = all
        .iter()
        .filter(|x| {
            x["kind"] == "Service"
                && matches(
                    &sm["spec"]["selector"]["matchLabels"],
                    &x["metadata"]["labels"],
                )
        })
        .collect();
    assert_eq!(
        scraped.len(),
        2,
        "the ServiceMonitor scrapes each region's admin Service"
    );
    for s in scraped {
        assert_eq!(
            s["spec"]["clusterIP"], "None",
            "headless: one target per pod"
        );
        assert!(s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == sm["spec"]["endpoints"][0]["port"]));
    }
}

#[test]
fn a_kubelet_style_configmap_update_is_reloaded() {
    let dir = scratch("configmap");
    let admin = free_port();
    let text = |lag: &str| {
        format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:{admin}\nregion: here\nregions: {{here: {{lat: 0, lon: 0}}}}\n\
         users: [{{name: app, password: x}}]\n\
         clusters: {{app: {{primary: {{host: 127.0.0.1, port: 1, region: here}}}}}}\nrouting: {{max_replica_lag: {lag}}}\n")
    };
    configmap_swap(&dir, &text("10s"));
    let _proxy = Running::start(&dir.join("pgmeridian.yaml"));
    let metric = |name: &str| wait_for_metric(admin, name, Duration::from_secs(10));
    assert_eq!(metric("pgmeridian_config_generation"), 1.0);
    for (i, lag) in ["11s", "12s", "13s"].iter().enumerate() {
        let start = Instant::now();
        configmap_swap(&dir, &text(lag));
        let want = i as f64 + 2.0;
        while metric("pgmeridian_config_generation") != want {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "swap {} not reloaded in 5 s",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    configmap_swap(&dir, "listen: [broken");
    let start = Instant::now();
    while metric("pgmeridian_config_reloads_total{result=\"rejected\"}") < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a broken swap was not noticed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric("pgmeridian_config_generation"),
        4.0,
        "a broken file changes nothing"
    );
}

#[test]
fn dashboard_is_one_copy_with_valid_queries_of_real_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docker =
        std::fs::read(root.join("docker/grafana/provisioning/dashboards/pgmeridian.json")).unwrap();
    let k8s = std::fs::read(deploy_dir().join("monitoring/pgmeridian.json")).unwrap();
    assert!(docker == k8s, "deploy/kubernetes/monitoring/pgmeridian.json differs from docker/grafana/provisioning/dashboards/pgmeridian.json: copy the docker one over it");
    let dash: Value = serde_json::from_slice(&docker).unwrap();
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"instance"),
        "a per-instance variable: {vars:?}"
    );

    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        // label_values(SELECTOR, label): the selector is PromQL.
        if let Some(q) = v["definition"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
        {
            exprs.push(q.rsplit_once(',').unwrap().0.to_owned());
        }
    }
    assert!(exprs.len() > 30, "{} queries", exprs.len());
    promtool_rules(&exprs).unwrap_or_else(|e| panic!("dashboard PromQL does not parse:\n{e}"));
    assert!(
        promtool_rules(&["sum by (x) (rate(m[5m])".to_owned()]).is_err(),
        "promtool accepts broken PromQL"
    );

    let known = metric_families();
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| known.contains(*f)))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                known.contains(&family),
                "the dashboard queries {name}, which pgmeridian does not export (known: {known:?})"
            );
            used.insert(family);
        }
    }
    for family in [
        "pool_server_connections",
        "pool_clients_waiting",
        "pool_wait_seconds",
        "pool_leases_total",
        "pool_closes_total",
        "backend_logins_total",
    ] {
        assert!(
            used.contains(&format!("pgmeridian_{family}")),
            "the dashboard does not show pgmeridian_{family}"
        );
    }
}

/// Whether every label of `selector` is in `labels`.
fn matches(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}
