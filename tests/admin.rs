//! The operator's view against a real primary and one replica: `/status` follows a replica that
//! is stopped and started, `/metrics` after real traffic passes `promtool check metrics`, and
//! `--log-format json` writes JSON lines carrying the session span.
//!
//! The tests share the cluster and one of them stops its replica: they take `SERIAL` so the
//! others' reads are not moved by it.

mod common;

/// One replica that replays at once.
pub const REPLICA_DELAYS_MS: &[u64] = &[0];

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use common::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn status(admin: SocketAddr) -> Value {
    let (head, body) = http_get(admin, "/status").await;
    assert!(head.contains("200"), "{head}\n{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}):\n{body}"))
}

/// Polls `/status` until `check` holds; panics after `limit`. Returns how long it took.
async fn until_status(
    admin: SocketAddr,
    what: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = status(admin).await;
        if check(&s) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not seen within {limit:?}; last /status:\n{s:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn replica(s: &Value) -> &Value {
    &s["clusters"]["app"]["nodes"][1]
}

#[tokio::test(flavor = "multi_thread")]
async fn status_follows_a_replica_that_stops_and_starts() {
    let _serial = SERIAL.lock().await;
    let probe_interval = Duration::from_millis(100);
    let proxy =
        proxy("admin_listen: 127.0.0.1:0\nhealth: { interval: 100ms, fall: 1, rise: 2 }\n").await;
    let admin = proxy.admin_addr.expect("admin listener");
    until_status(admin, "replica up", Duration::from_secs(10), |s| {
        replica(s)["up"] == true
    })
    .await;

    let reader = connect(proxy.addr).await;
    reader.simple_query("select 1").await.unwrap();
    let s = status(admin).await;
    let c = cluster();
    let app = &s["clusters"]["app"];
    assert_eq!(s["generation"], 1, "{s:#}");
    assert_eq!(s["region"], "us-east", "{s:#}");
    assert_eq!(app["primary_view"], "ok", "{s:#}");
    let primary = &app["nodes"][0];
    assert_eq!(primary["name"], format!("127.0.0.1:{}", c.primary.port));
    assert_eq!(primary["port"], c.primary.port);
    assert_eq!(primary["region"], "us-east");
    assert_eq!(primary["configured_role"], "primary");
    assert_eq!(primary["observed_role"], "primary");
    assert_eq!(primary["up"], true);
    assert!(primary["rtt_ms"].is_f64(), "{s:#}");
    let r = replica(&s);
    assert_eq!(r["configured_role"], "replica");
    assert_eq!(r["observed_role"], "replica");
    assert_eq!(r["region"], "eu-west");
    assert!(
        r["lag_seconds"].is_f64() && r["lag_bytes"].is_u64(),
        "{s:#}"
    );
    assert_eq!(app["pool_mode"], "transaction", "{s:#}");
    assert_eq!(r["leases"], 0, "the read's lease ended with it: {s:#}");
    let pool = &r["pools"][0];
    assert_eq!(pool["user"], "app", "{s:#}");
    assert_eq!(
        (pool["open"].as_u64(), pool["idle"].as_u64()),
        (Some(1), Some(1)),
        "the read's server connection waits in the pool: {s:#}"
    );
    // The login itself was greeted from the primary's pool (one connection, now idle).
    assert_eq!(primary["pools"][0]["open"], 1, "{s:#}");

    let node = &c.replicas[0];
    // The server dies somewhere inside `pg_ctl stop`: timing from its start bounds the
    // detection delay from above, timing from its return from below.
    let stopping = Instant::now();
    pg_ctl("stop_immediate node", || node.stop_immediate());
    let stop_took = stopping.elapsed();
    let after_return = until_status(admin, "replica down", Duration::from_secs(10), |s| {
        replica(s)["up"] == false
    })
    .await;
    let down = stopping.elapsed();
    eprintln!(
        "/status showed the stopped replica down {down:?} after pg_ctl stop started ({stop_took:?} in pg_ctl, {after_return:?} after it returned; probe interval {probe_interval:?}, fall 1)"
    );
    let s = status(admin).await;
    assert_eq!(replica(&s)["observed_role"], "unknown", "{s:#}");
    assert_eq!(s["clusters"]["app"]["primary_view"], "ok", "{s:#}");
    // Two probe intervals plus one failed probe (fall 1), with ample slack for a busy machine.
    assert!(down < Duration::from_secs(2), "took {down:?} to show down");

    pg_ctl("start node", || node.start());
    let up = until_status(admin, "replica up again", Duration::from_secs(30), |s| {
        replica(s)["up"] == true && replica(s)["observed_role"] == "replica"
    })
    .await;
    eprintln!("/status showed the replica up again {up:?} after pg_ctl start returned (rise 2)");
    drop(reader);
    proxy.shutdown().await;
}

/// The value of the sample line starting with `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `promtool check metrics` on `text`; panics with its complaints, or if it is missing.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs promtool and could not run it ({e}); install it (Debian: apt-get install prometheus); tests/run.sh does"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nexposition:\n{text}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_traffic_pass_promtool() {
    let _serial = SERIAL.lock().await;
    let t = table("promtool");
    setup(&format!(
        "create table {t} (x int); grant all on {t} to app;"
    ))
    .await;

    // With the replica: a write, a read pinned after it, a read on the replica later, a
    // session pinned by a temporary table, a failed login and an unknown database.
    let proxy = proxy_ready("admin_listen: 127.0.0.1:0\n").await;
    let admin = proxy.admin_addr.expect("admin listener");
    let c = connect(proxy.addr).await;
    c.simple_query(&format!("insert into {t} values (1)"))
        .await
        .unwrap();
    c.simple_query(&format!("select count(*) from {t}"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.simple_query(&format!("select count(*) from {t}"))
        .await
        .unwrap();
    let sticky = connect(proxy.addr).await;
    sticky
        .simple_query("create temp table scratch (x int)")
        .await
        .unwrap();
    refused(
        connect_as(proxy.addr, "app", "wrong").await,
        "wrong password",
    );
    let unknown_db = tokio_postgres::connect(
        &conn_string(proxy.addr, "app", APP_PASSWORD, "nope"),
        tokio_postgres::NoTls,
    )
    .await;
    refused(unknown_db, "unknown database");
    let (head, text) = http_get(admin, "/metrics").await;
    assert!(head.contains("200"), "{head}");
    let expect = |series: &str, check: &dyn Fn(f64) -> bool| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
        assert!(check(v), "{series} = {v}:\n{text}");
    };
    expect(
        "pgmeridian_batch_duration_seconds_count{target=\"primary\"}",
        &|v| v >= 2.0,
    );
    expect(
        "pgmeridian_batch_duration_seconds_count{target=\"replica\"}",
        &|v| v >= 1.0,
    );
    expect("pgmeridian_pin_after_write_seconds_count", &|v| v == 1.0);
    expect(
        "pgmeridian_pinned_sessions{cluster=\"app\",kind=\"sticky_feature\"}",
        &|v| v == 1.0,
    );
    let primary = format!("127.0.0.1:{}", cluster().primary.port);
    let replica = format!("127.0.0.1:{}", cluster().replicas[0].port);
    let pool = |node: &str, state: &str| {
        format!("pgmeridian_pool_server_connections{{cluster=\"app\",node=\"{node}\",state=\"{state}\"}}")
    };
    // The sticky session keeps its primary connection for life; the others went back.
    expect(&pool(&primary, "pinned"), &|v| v == 1.0);
    expect(&pool(&primary, "active"), &|v| v == 0.0);
    expect(&pool(&replica, "idle"), &|v| v == 1.0);
    expect(
        &format!("pgmeridian_backend_logins_total{{cluster=\"app\",node=\"{replica}\"}}"),
        &|v| v == 1.0,
    );
    expect(
        &format!("pgmeridian_pool_leases_total{{cluster=\"app\",node=\"{replica}\"}}"),
        &|v| v == 1.0,
    );
    expect("pgmeridian_errors_total{kind=\"auth_failed\"}", &|v| {
        v == 1.0
    });
    expect("pgmeridian_errors_total{kind=\"unknown_database\"}", &|v| {
        v == 1.0
    });
    expect("pgmeridian_errors_total{kind=\"backend_lost\"}", &|v| {
        v == 0.0
    });
    expect("pgmeridian_config_generation", &|v| v == 1.0);
    expect(
        "pgmeridian_config_reloads_total{result=\"applied\"}",
        &|v| v == 0.0,
    );
    assert!(!text.contains(&t), "no SQL text in metrics");
    promtool_check(&text);
    drop(sticky);
    drop(c);
    proxy.shutdown().await;

    // Without replicas and with `no_eligible_replica: error`: a read is refused.
    let yaml = without_replicas(&config_yaml(
        cluster(),
        "admin_listen: 127.0.0.1:0\nrouting: { no_eligible_replica: error }\n",
    ));
    let config = pgmeridian::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let proxy = pgmeridian::app::Proxy::start(&config).await.unwrap();
    let admin = proxy.admin_addr.expect("admin listener");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c = connect(proxy.addr).await;
    let e = c.simple_query("select 1").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e}");
    c.simple_query(&format!("insert into {t} values (2)"))
        .await
        .unwrap();
    let (_, text) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "pgmeridian_errors_total{kind=\"refused_no_replica\"}"
        ),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_session_span() {
    let _serial = SERIAL.lock().await;
    let file = cluster()
        .base
        .join(format!("json-logs-{}.yaml", std::process::id()));
    std::fs::write(&file, config_yaml(cluster(), "")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgmeridian"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .args(["--log-format", "json"])
        .env("PGMERIDIAN_LOG", "info,pgmeridian=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the pgmeridian binary");
    let pid = child.id().expect("child pid");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen: Vec<String> = Vec::new();
    // The proxy listens on a free port and logs it.
    let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(listen) = v["fields"]["listen"].as_str() {
                return listen.parse().unwrap();
            }
        }
        panic!("pgmeridian exited before listening:\n{}", seen.join("\n"));
    })
    .await
    .unwrap_or_else(|_| panic!("no listen address logged:\n{}", seen.join("\n")));

    let c = connect(addr).await;
    c.simple_query("select 1").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -TERM {pid}");
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("pgmeridian stopped after SIGTERM");
    seen.extend(rest);
    let status = child.wait().await.unwrap();
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        out.read_to_string(&mut stdout).await.unwrap();
    }
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "exit status {status}");
    assert!(
        stdout.trim().is_empty(),
        "logs go to stderr; stdout:\n{stdout}"
    );

    let all = seen.join("\n");
    let events: Vec<Value> = seen
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{all}")))
        .collect();
    let in_session = events
        .iter()
        .filter(|e| e["span"]["name"] == "session" && e["span"]["cluster"] == "app")
        .count();
    assert!(
        in_session > 0,
        "no event inside a session span with its cluster:\n{all}"
    );
    let routed = events
        .iter()
        .find(|e| e["fields"]["message"] == "routed batch")
        .unwrap_or_else(|| panic!("no routed-batch event at debug:\n{all}"));
    for field in ["target", "node", "reason"] {
        assert!(routed["fields"][field].is_string(), "{field}: {routed}");
    }
    assert!(!all.contains("select 1"), "no SQL text in logs");
}
