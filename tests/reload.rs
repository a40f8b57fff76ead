//! Live reload under load: 20 edits of the YAML file (replicas removed, added, reordered, lag
//! limits changed) while clients write and read without pause. No client statement may fail,
//! each edit must be live within a second, and a broken edit must change nothing, be logged
//! with its YAML path and be counted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pgmeridian::app::Proxy;
use pgmeridian::config::Config;
use pgmeridian::localpg::LocalCluster;

const REPLICA_DELAYS_MS: &[u64] = &[0, 0];

/// Collects log output so the test can read what an operator would.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// One version of the file: which replicas (by index into the cluster), in what order.
fn yaml(c: &LocalCluster, replicas: &[usize], max_lag: &str, listen: &str) -> String {
    let nodes: String = replicas
        .iter()
        .map(|&i| {
            format!(
                "      - {{ name: r{i}, host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}\n",
                c.replicas[i].port
            )
        })
        .collect();
    let nodes = if nodes.is_empty() {
        "      []\n".to_owned()
    } else {
        nodes
    };
    format!(
        "listen: {listen}
region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  eu-west: {{ lat: 53.3, lon: -6.3 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
routing: {{ max_replica_lag: {max_lag} }}
health: {{ interval: 50ms }}
clusters:
  app:
    primary: {{ name: primary, host: 127.0.0.1, port: {}, region: us-east }}
    replicas:
{nodes}",
        c.primary.port
    )
}

/// Writes like an editor (in place) or like a deploy tool (temp file renamed over).
fn write(path: &Path, text: &str, atomic: bool) {
    if atomic {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    } else {
        std::fs::write(path, text).unwrap();
    }
}

fn routed_to(p: &Proxy, node: &str) -> u64 {
    let text = String::from_utf8(p.shared.metrics.render()).unwrap();
    let label = format!("node=\"{node}\"");
    text.lines()
        .filter(|l| l.starts_with("pgmeridian_routed_batches_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn metric_line(p: &Proxy, prefix: &str) -> u64 {
    let text = String::from_utf8(p.shared.metrics.render()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Clients that write and read without pause, some in transactions, some reconnecting.
fn load(
    addr: std::net::SocketAddr,
    table: &str,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = (0..6i32)
        .map(|n| {
            let (ok, failed, stop, t) = (ok.clone(), failed.clone(), stop.clone(), table.to_owned());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let c = match connect_as(addr, "app", APP_PASSWORD).await {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("client {n}: login failed: {e:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    for _ in 0..40 {
                        i += 1;
                        let r = match i % 4 {
                            0 => c.batch_execute(&format!("insert into {t} values ({n})")).await,
                            1 => c
                                .batch_execute(&format!(
                                    "begin; insert into {t} values ({n}); select count(*) from {t}; commit"
                                ))
                                .await,
                            _ => c
                                .query_one(&format!("select count(*) from {t} where c = $1"), &[&n])
                                .await
                                .map(drop),
                        };
                        match r {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("client {n}: statement failed: {e:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }
            })
        })
        .collect();
    (ok, failed, tasks)
}

async fn wait_generation(p: &Proxy, above: u64) -> Duration {
    let start = Instant::now();
    while p.shared.topology.load().generation <= above {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the edit was not applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_live_edits_under_load_fail_no_statement() {
    let logs = LogBuf::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init()
        .ok();
    let c = cluster();
    let t = table("reload");
    setup(&format!(
        "create table {t} (c int); grant all on {t} to app;"
    ))
    .await;
    let dir: PathBuf = c.base.join("reload-config");
    std::fs::create_dir_all(&dir).unwrap();
    // Owned like the cluster directory, so its cleanup (run as that user) can remove it.
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&c.base).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let path = dir.join("pgmeridian.yaml");
    let first = yaml(c, &[0, 1], "10s", "127.0.0.1:0");
    write(&path, &first, false);
    let config = Config::from_yaml(&first, &|_| None).unwrap();
    let p = Proxy::start(&config).await.unwrap();
    p.shared
        .reload_state
        .lock()
        .await
        .started_with(&config, Some(&first));
    pgmeridian::reload::watch(p.shared.clone(), path.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A session opened before an edit follows it: with only r0 configured it reads from r0;
    // once the file names only r1, its next read comes from r1 (not the primary).
    write(&path, &yaml(c, &[0], "10s", "127.0.0.1:0"), true);
    wait_generation(&p, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let long_lived = connect(p.addr).await;
    assert_eq!(served_port(&long_lived).await, c.replicas[0].port);
    write(&path, &yaml(c, &[1], "10s", "127.0.0.1:0"), true);
    wait_generation(&p, 2).await;
    let start = Instant::now();
    while served_port(&long_lived).await != c.replicas[1].port {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the open session did not move to the replica the reload added"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write(&path, &first, true);
    wait_generation(&p, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(p.addr, &t, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let variants: [(&[usize], &str); 5] = [
        (&[0], "10s"),    // remove r1
        (&[0, 1], "10s"), // add r1 back
        (&[1, 0], "2s"),  // reorder, tighter lag limit
        (&[1], "2s"),     // remove r0
        (&[0, 1], "5s"),  // both again
    ];
    let mut took = Vec::new();
    for edit in 0..20 {
        let (replicas, lag) = variants[edit % variants.len()];
        let before = p.shared.topology.load().generation;
        write(&path, &yaml(c, replicas, lag, "127.0.0.1:0"), edit % 2 == 0);
        took.push(wait_generation(&p, before).await);
        let live = p.shared.topology.load();
        let names: Vec<&str> = live.clusters["app"]
            .replicas
            .iter()
            .map(|n| n.label())
            .collect();
        let want: Vec<String> = replicas.iter().map(|i| format!("r{i}")).collect();
        assert_eq!(names, want, "edit {edit}");
        assert_eq!(
            live.routing.max_replica_lag,
            humantime_parse(lag),
            "edit {edit}"
        );
        // Sessions move at their next statement; after that a removed replica gets nothing.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let removed: Vec<String> = (0..2)
            .filter(|i| !replicas.contains(i))
            .map(|i| format!("r{i}"))
            .collect();
        let counts: Vec<u64> = removed.iter().map(|n| routed_to(&p, n)).collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        for (n, before) in removed.iter().zip(counts) {
            assert_eq!(
                routed_to(&p, n),
                before,
                "edit {edit}: {n} was removed but still got reads"
            );
        }
    }
    took.sort();
    println!(
        "20 edits live after: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(
        took[took.len() - 1] < Duration::from_secs(1),
        "an edit took {:?} to take effect",
        took[took.len() - 1]
    );

    // A broken edit: nothing changes, the log names the YAML path, the counter moves.
    let generation = p.shared.topology.load().generation;
    let rejected = metric_line(&p, "pgmeridian_config_reloads_total{result=\"rejected\"} ");
    let broken = yaml(c, &[0, 1], "5s", "127.0.0.1:0").replace("region: eu-west", "region: mars");
    write(&path, &broken, true);
    let start = Instant::now();
    while metric_line(&p, "pgmeridian_config_reloads_total{result=\"rejected\"} ") == rejected {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "rejection not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        p.shared.topology.load().generation,
        generation,
        "old topology keeps serving"
    );
    let log = logs.text();
    assert!(
        log.contains("reload rejected") && log.contains("clusters.app.replicas[0].region"),
        "{log}"
    );
    // A restart-only setting is reported, the rest applies.
    write(&path, &yaml(c, &[0, 1], "5s", "127.0.0.1:1"), false);
    wait_generation(&p, generation).await;
    assert!(logs.text().contains("needs a restart"), "{}", logs.text());

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("statements under reloads: {ok} ok, {failed} failed");
    assert!(ok > 500, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0, "client statements failed during reloads");
    assert!(rows_on_primary(&t).await > 0);
}

fn humantime_parse(s: &str) -> Duration {
    Duration::from_secs(s.trim_end_matches('s').parse().unwrap())
}
