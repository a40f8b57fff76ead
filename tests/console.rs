//! The admin console against a running proxy over a real primary and two replicas, driven by
//! real `psql` (and tokio-postgres where a test needs SQLSTATEs or timing): every SHOW answers
//! with its columns and real rows, RELOAD applies the file (and keeps a drain), a non-admin
//! gets 42501, PAUSE holds a new batch until RESUME while a running transaction finishes, and
//! DRAIN sends reads elsewhere.

mod common;

/// Two replicas that replay at once.
pub const REPLICA_DELAYS_MS: &[u64] = &[0, 0];

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use pgmeridian::app::Proxy;
use pgmeridian::config::Config;
use pgmeridian::localpg::{LocalCluster, PgBin};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const OPS_PASSWORD: &str = "ops-secret";
const OPS_MD5_PASSWORD: &str = "ops-md5-secret";

/// The proxy's file: users `app` and two admins (SCRAM and MD5), replicas `r0` and `r1`.
fn yaml(c: &LocalCluster, max_lag: &str, r0_extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
region: us-east
regions:
  us-east: {{ lat: 39.0, lon: -77.5 }}
  eu-west: {{ lat: 53.3, lon: -6.3 }}
users:
  - {{ name: app, password: {APP_PASSWORD} }}
  - {{ name: ops, password: {OPS_PASSWORD}, admin: true }}
  - {{ name: opsmd5, password: {OPS_MD5_PASSWORD}, auth: md5, admin: true }}
routing: {{ max_replica_lag: {max_lag} }}
health: {{ interval: 50ms }}
clusters:
  app:
    primary: {{ name: primary, host: 127.0.0.1, port: {}, region: us-east }}
    replicas:
      - {{ name: r0, host: 127.0.0.1, port: {}, region: eu-west, tls: disable{r0_extra} }}
      - {{ name: r1, host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
",
        c.primary.port, c.replicas[0].port, c.replicas[1].port
    )
}

/// A proxy started from a file (so RELOAD has one to read), with every node probed up.
struct Running {
    proxy: Proxy,
    file: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

async fn start(label: &str) -> Running {
    let c = cluster();
    let text = yaml(c, "10s", "");
    let file = std::env::temp_dir().join(format!(
        "pgmeridian-console-{label}-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, &text).unwrap();
    let config = Config::from_yaml(&text, &|_| None).unwrap();
    let proxy = Proxy::start(&config).await.unwrap();
    proxy
        .shared
        .reload_state
        .lock()
        .await
        .started_with(&config, Some(&text));
    proxy.shared.config_file.set(file.clone()).unwrap();
    let r = Running { proxy, file };
    until(&r, "every node up", |rows| {
        rows.len() == 3 && rows.iter().all(|n| n["up"] == "t")
    })
    .await;
    r
}

/// One psql result set as rows of (column → value); `\N`… is psql's CSV for NULL: empty.
type Rows = Vec<std::collections::BTreeMap<String, String>>;

fn csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn rows_of(csv: &str) -> Rows {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names = csv_line(header);
    lines
        .map(|l| names.iter().cloned().zip(csv_line(l)).collect())
        .collect()
}

struct Psql {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `psql --csv -c SQL` against the console as `user`.
async fn psql_as(addr: std::net::SocketAddr, user: &str, password: &str, sql: &str) -> Psql {
    let bin = PgBin::find().unwrap_or_else(|e| panic!("psql is needed: {e}"));
    let out = tokio::process::Command::new(bin.program("psql"))
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "--csv",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=pgmeridian sslmode=disable",
            addr.port()
        ))
        .args(["-c", sql])
        .output()
        .await
        .expect("run psql");
    Psql {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `SHOW what` through psql as the SCRAM admin: the rows, which must come.
async fn show(r: &Running, what: &str) -> Rows {
    let out = psql_as(r.proxy.addr, "ops", OPS_PASSWORD, &format!("SHOW {what}")).await;
    assert!(out.ok, "SHOW {what} failed: {}", out.stderr);
    rows_of(&out.stdout)
}

fn columns(csv: &str) -> Vec<String> {
    csv.lines().next().map(csv_line).unwrap_or_default()
}

/// Polls SHOW NODES until `check` holds (10 s at most).
async fn until(r: &Running, what: &str, check: impl Fn(&Rows) -> bool) -> Rows {
    let start = Instant::now();
    loop {
        let rows = show(r, "NODES").await;
        if check(&rows) {
            return rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not seen; SHOW NODES: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tokio-postgres connection to the console (simple query protocol only).
async fn console(addr: std::net::SocketAddr) -> Client {
    let (client, conn) =
        tokio_postgres::connect(&conn_string(addr, "ops", OPS_PASSWORD, "pgmeridian"), NoTls)
            .await
            .expect("console login");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The rows of the first result of a simple query, as (column → value).
fn simple_rows(msgs: &[SimpleQueryMessage]) -> Rows {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_answers_with_its_columns_and_real_rows() {
    let r = start("show").await;
    let addr = r.proxy.addr;
    let app = connect(addr).await;
    app.simple_query("select 1").await.unwrap();
    let t = table("console_show");
    app.batch_execute(&format!(
        "create table {t} (x int); insert into {t} values (1)"
    ))
    .await
    .unwrap();

    let out = psql_as(addr, "ops", OPS_PASSWORD, "show clusters;").await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        columns(&out.stdout),
        [
            "cluster",
            "primary_view",
            "acting_primary",
            "pool_mode",
            "nodes",
            "replicas_up",
            "paused",
            "clients",
            "allowed_regions"
        ]
    );
    let clusters = rows_of(&out.stdout);
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    let app_row = &clusters[0];
    assert_eq!(
        (
            &app_row["cluster"][..],
            &app_row["primary_view"][..],
            &app_row["acting_primary"][..],
            &app_row["nodes"][..],
            &app_row["replicas_up"][..],
            &app_row["paused"][..],
            &app_row["clients"][..]
        ),
        ("app", "ok", "primary", "3", "2", "f", "1")
    );

    let nodes = show(&r, "NODES").await;
    let c = cluster();
    let by_name = |n: &str| nodes.iter().find(|r| r["node"] == n).unwrap().clone();
    assert_eq!(by_name("primary")["role"], "primary");
    assert_eq!(by_name("primary")["port"], c.primary.port.to_string());
    for (i, name) in ["r0", "r1"].iter().enumerate() {
        let n = by_name(name);
        assert_eq!(n["role"], "replica", "{n:?}");
        assert_eq!(n["configured_role"], "replica");
        assert_eq!(n["port"], c.replicas[i].port.to_string());
        assert_eq!(n["region"], "eu-west");
        assert_eq!(n["drained"], "f");
        assert!(n["lag_seconds"].parse::<f64>().is_ok(), "{n:?}");
        assert!(n["rtt_ms"].parse::<f64>().unwrap() > 0.0, "{n:?}");
    }

    let pools = show(&r, "POOLS").await;
    let primary_pool = pools
        .iter()
        .find(|p| p["node"] == "primary" && p["user"] == "app")
        .unwrap_or_else(|| panic!("no pool for app on the primary: {pools:?}"));
    assert_eq!(primary_pool["size"], "20");
    assert_eq!(primary_pool["pool_mode"], "transaction");
    let open: i64 = primary_pool["open"].parse().unwrap();
    let idle: i64 = primary_pool["idle"].parse().unwrap();
    assert!(open >= 1 && idle >= 1, "{primary_pool:?}");
    assert_eq!(primary_pool["in_use"], (open - idle).to_string());
    assert_eq!(primary_pool["waiting"], "0");

    let clients = show(&r, "CLIENTS").await;
    let mine: Vec<_> = clients.iter().filter(|c| c["cluster"] == "app").collect();
    assert_eq!(mine.len(), 1, "{clients:?}");
    assert_eq!(mine[0]["user"], "app");
    assert_eq!(mine[0]["state"], "idle");
    assert!(mine[0]["address"].starts_with("127.0.0.1:"));
    assert!(mine[0]["connected_since"].ends_with("+00"));
    assert!(
        clients
            .iter()
            .any(|c| c["cluster"] == "pgmeridian" && c["user"] == "ops"),
        "the console's own session is listed: {clients:?}"
    );

    let servers = show(&r, "SERVERS").await;
    assert!(!servers.is_empty());
    let db = superuser("app").await;
    for s in &servers {
        let pid: i32 = s["backend_pid"].parse().unwrap();
        let found = db
            .query_opt(
                "select usename::text from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        // Servers on the primary are in its pg_stat_activity; replicas have their own.
        if s["node"] == "primary" {
            let user: String = found
                .unwrap_or_else(|| panic!("backend {pid} not on the primary"))
                .get(0);
            assert_eq!(user, s["user"]);
        }
        assert!(["idle", "active", "pinned"].contains(&&s["state"][..]));
    }

    let stats = show(&r, "STATS").await;
    assert_eq!(stats.len(), 1);
    assert!(stats[0]["write"].parse::<i64>().unwrap() >= 1, "{stats:?}");
    assert!(stats[0]["read_nearest"].parse::<i64>().unwrap() >= 1);
    let batches: i64 = stats[0]["batches"].parse().unwrap();
    let split: i64 = stats[0]["to_primary"].parse::<i64>().unwrap()
        + stats[0]["to_replica"].parse::<i64>().unwrap();
    assert_eq!(batches, split, "{stats:?}");
    for col in ["readonly_retry", "read_retry", "refused", "pinned_sessions"] {
        assert!(stats[0].contains_key(col), "{col}: {stats:?}");
    }

    let config = psql_as(addr, "ops", OPS_PASSWORD, "SHOW CONFIG").await;
    assert!(config.ok, "{}", config.stderr);
    assert!(!config.stdout.contains(APP_PASSWORD) && !config.stdout.contains(OPS_PASSWORD));
    let config = rows_of(&config.stdout);
    let get = |k: &str| config.iter().find(|r| r["key"] == k).cloned();
    assert_eq!(get("users[1].password").unwrap()["value"], "********");
    assert_eq!(get("users[1].admin").unwrap()["value"], "true");
    assert_eq!(get("listen").unwrap()["changeable"], "restart");
    assert_eq!(get("routing.max_replica_lag").unwrap()["value"], "10s");

    let help = show(&r, "HELP").await;
    assert!(help.iter().any(|h| h["command"] == "DRAIN [cluster] node"));

    // Several commands in one query, each answered, in order (psql 15 prints every result).
    let both = psql_as(addr, "ops", OPS_PASSWORD, "SHOW VERSION; show help").await;
    assert!(both.ok, "{}", both.stderr);
    assert!(
        both.stdout.starts_with("version\npgmeridian "),
        "{}",
        both.stdout
    );
    assert!(
        both.stdout.contains("command,description"),
        "{}",
        both.stdout
    );

    // The MD5 admin logs in through the same code path as any MD5 user.
    let md5 = psql_as(addr, "opsmd5", OPS_MD5_PASSWORD, "SHOW VERSION").await;
    assert!(md5.ok, "{}", md5.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_get_in_and_mistakes_have_sqlstates() {
    let r = start("errors").await;
    let addr = r.proxy.addr;
    let denied = refused(
        tokio_postgres::connect(&conn_string(addr, "app", APP_PASSWORD, "pgmeridian"), NoTls).await,
        "non-admin on the console",
    );
    assert_eq!(code(&denied), "42501", "{denied:?}");
    for (user, password) in [("ops", "wrong"), ("nobody", "x")] {
        let e = refused(
            tokio_postgres::connect(&conn_string(addr, user, password, "pgmeridian"), NoTls).await,
            "bad credentials",
        );
        assert_eq!(code(&e), "28P01", "{user}: {e:?}");
    }
    let out = psql_as(addr, "app", APP_PASSWORD, "SHOW NODES").await;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("may not use the pgmeridian admin console"),
        "{}",
        out.stderr
    );

    let ops = console(addr).await;
    for (sql, want) in [
        ("SELECT 1", "42601"),
        ("SHOW EVERYTHING", "42601"),
        ("PAUSE nosuch", "3D000"),
        ("DRAIN nosuch", "42704"),
        ("DRAIN app nosuch", "42704"),
    ] {
        let e = ops.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), want, "{sql}: {e:?}");
    }
    // A syntax error anywhere runs nothing; an error while running stops the rest.
    let e = ops.simple_query("PAUSE app; FROB").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    assert!(!r.proxy.shared.pauses.is_paused("app"));
    let e = ops
        .simple_query("DRAIN r0; DRAIN nosuch; DRAIN r1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42704");
    let nodes = simple_rows(&ops.simple_query("SHOW NODES").await.unwrap());
    let drained: Vec<&str> = nodes
        .iter()
        .filter(|n| n["drained"] == "t")
        .map(|n| &n["node"][..])
        .collect();
    assert_eq!(drained, ["r0"]);
    ops.simple_query("UNDRAIN r0").await.unwrap();

    // The extended protocol is refused with 0A000 and the session goes on.
    let e = ops.query("SHOW NODES", &[]).await.unwrap_err();
    assert_eq!(code(&e), SqlState::FEATURE_NOT_SUPPORTED.code(), "{e:?}");
    let v = simple_rows(&ops.simple_query("show version").await.unwrap());
    assert!(v[0]["version"].starts_with("pgmeridian "));
    // An empty query is answered as PostgreSQL does.
    let empty = ops.simple_query(" ; ").await.unwrap();
    assert!(simple_rows(&empty).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_file_and_a_drain_survives_it() {
    let r = start("reload").await;
    let addr = r.proxy.addr;
    let c = cluster();
    let drain = psql_as(addr, "ops", OPS_PASSWORD, "DRAIN r0").await;
    assert!(drain.ok, "{}", drain.stderr);
    assert!(
        drain.stderr.contains("node r0 of cluster app is drained"),
        "{}",
        drain.stderr
    );

    let same = psql_as(addr, "ops", OPS_PASSWORD, "RELOAD").await;
    assert!(same.ok, "{}", same.stderr);
    assert!(same.stderr.contains("unchanged"), "{}", same.stderr);
    assert_eq!(r.proxy.shared.topology.load().generation, 1);

    // r0 changes in place (its database named explicitly: a new node spec, the same name).
    std::fs::write(&r.file, yaml(c, "7s", ", database: app")).unwrap();
    let applied = psql_as(addr, "ops", OPS_PASSWORD, "RELOAD").await;
    assert!(applied.ok, "{}", applied.stderr);
    assert!(
        applied
            .stderr
            .contains("configuration generation 2 applied"),
        "{}",
        applied.stderr
    );
    assert_eq!(r.proxy.shared.topology.load().generation, 2);
    let config = show(&r, "CONFIG").await;
    let lag = config
        .iter()
        .find(|row| row["key"] == "routing.max_replica_lag")
        .unwrap();
    assert_eq!(lag["value"], "7s");
    let nodes = until(&r, "r0 drained and up after the reload", |rows| {
        rows.iter()
            .any(|n| n["node"] == "r0" && n["drained"] == "t" && n["up"] == "t")
    })
    .await;
    assert!(nodes
        .iter()
        .any(|n| n["node"] == "r1" && n["drained"] == "f"));

    // A broken file changes nothing and says why, with the YAML path.
    std::fs::write(&r.file, yaml(c, "soon", "")).unwrap();
    let broken = psql_as(addr, "ops", OPS_PASSWORD, "RELOAD").await;
    assert!(!broken.ok);
    assert!(broken.stderr.contains("F0000"), "{}", broken.stderr);
    assert!(
        broken.stderr.contains("routing.max_replica_lag"),
        "{}",
        broken.stderr
    );
    assert_eq!(r.proxy.shared.topology.load().generation, 2);
}

/// Whether `task` is still running after `wait`.
async fn still_running<T>(task: &tokio::task::JoinHandle<T>, wait: Duration) -> bool {
    tokio::time::sleep(wait).await;
    !task.is_finished()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_batches_until_resume_and_lets_a_transaction_finish() {
    let r = start("pause").await;
    let addr = r.proxy.addr;
    let t = table("console_pause");
    let writer = connect(addr).await;
    writer
        .batch_execute(&format!("create table {t} (x int)"))
        .await
        .unwrap();
    let waiter = connect(addr).await;
    waiter.simple_query("select 1").await.unwrap();
    // A session with its own server connection (LISTEN), which hears from it while idle.
    let listener = connect(addr).await;
    listener
        .batch_execute("LISTEN console_pause")
        .await
        .unwrap();

    // A transaction is open when PAUSE comes.
    writer
        .batch_execute(&format!("begin; insert into {t} values (1)"))
        .await
        .unwrap();
    let ops = console(addr).await;
    let pause = tokio::spawn(async move {
        let started = Instant::now();
        let r = ops.simple_query("PAUSE app").await;
        (r.map(|_| ()), started.elapsed(), ops)
    });
    assert!(
        still_running(&pause, Duration::from_millis(300)).await,
        "PAUSE must wait for the open transaction"
    );
    // A new batch of an idle session is held.
    let held = {
        let waiter_q = format!("select count(*) from {t}");
        tokio::spawn(async move {
            let rows = waiter.simple_query(&waiter_q).await.unwrap();
            (Instant::now(), rows.len(), waiter)
        })
    };
    assert!(still_running(&held, Duration::from_millis(200)).await);
    let clients = show(&r, "CLIENTS").await;
    let states: Vec<&str> = clients
        .iter()
        .filter(|c| c["cluster"] == "app")
        .map(|c| &c["state"][..])
        .collect();
    assert!(states.contains(&"paused"), "{states:?}");
    assert!(states.contains(&"idle in transaction"), "{states:?}");

    // The transaction goes on and finishes; then PAUSE returns.
    writer
        .batch_execute(&format!("insert into {t} values (2); commit"))
        .await
        .expect("a transaction that was open at PAUSE finishes");
    let (paused, waited, ops) = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the transaction is done")
        .unwrap();
    paused.unwrap();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let clusters = simple_rows(&ops.simple_query("SHOW CLUSTERS").await.unwrap());
    assert_eq!(clusters[0]["paused"], "t");
    let (head, body) = http_get(r.proxy.admin_addr.unwrap(), "/status").await;
    assert!(head.contains("200"));
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["clusters"]["app"]["paused"], true, "{status:#}");

    // Still held after PAUSE returned, until RESUME; also when the server speaks first.
    let held_listener = tokio::spawn(async move {
        listener.simple_query("select 2").await.unwrap();
        listener
    });
    assert!(still_running(&held_listener, Duration::from_millis(100)).await);
    superuser("app")
        .await
        .batch_execute("NOTIFY console_pause")
        .await
        .unwrap();
    assert!(still_running(&held, Duration::from_millis(300)).await);
    assert!(
        !held_listener.is_finished(),
        "a notification does not let a held batch through"
    );
    let resumed_at = Instant::now();
    ops.simple_query("RESUME app").await.unwrap();
    let (answered_at, rows, _waiter) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held batch runs after RESUME")
        .unwrap();
    assert!(answered_at >= resumed_at);
    assert!(rows >= 1);
    tokio::time::timeout(Duration::from_secs(5), held_listener)
        .await
        .expect("the LISTEN session's batch runs after RESUME")
        .unwrap();
    let n: i64 = writer
        .query_one(&format!("select count(*) from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let clusters = simple_rows(&ops.simple_query("SHOW CLUSTERS").await.unwrap());
    assert_eq!(clusters[0]["paused"], "f");

    // PAUSE of an idle cluster returns at once; RESUME without a name lifts every pause.
    let started = Instant::now();
    ops.simple_query("PAUSE").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    ops.simple_query("RESUME").await.unwrap();
    writer.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_reads_elsewhere_until_undrain() {
    let r = start("drain").await;
    let addr = r.proxy.addr;
    let c = cluster();
    let (p0, p1) = (c.replicas[0].port, c.replicas[1].port);
    let reader = connect(addr).await;
    let first = served_port(&reader).await;
    assert!([p0, p1].contains(&first), "reads start on a replica");
    let (name, other) = if first == p0 { ("r0", p1) } else { ("r1", p0) };

    let out = psql_as(addr, "ops", OPS_PASSWORD, &format!("DRAIN {name}")).await;
    assert!(out.ok, "{}", out.stderr);
    for _ in 0..5 {
        assert_eq!(
            served_port(&reader).await,
            other,
            "reads leave drained {name}"
        );
    }
    let fresh = connect(addr).await;
    assert_eq!(served_port(&fresh).await, other);

    // Both drained: reads go to the primary.
    let out = psql_as(addr, "ops", OPS_PASSWORD, "DRAIN app r0; DRAIN app r1").await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(served_port(&reader).await, c.primary.port);
    let nodes = show(&r, "NODES").await;
    for n in &nodes {
        assert_eq!(n["drained"], if n["node"] == "primary" { "f" } else { "t" });
    }
    let (_, body) = http_get(r.proxy.admin_addr.unwrap(), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["clusters"]["app"]["nodes"][1]["drained"], true);
    let metrics = String::from_utf8(r.proxy.shared.metrics.render()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgmeridian_routed_batches_total")
                && l.contains("reason=\"no_replica_fallback\"")
                && !l.ends_with(" 0")),
        "reads with every replica drained are counted as no_replica_fallback"
    );

    // Writes are not affected; UNDRAIN brings reads back.
    let t = table("console_drain");
    reader
        .batch_execute(&format!(
            "create table {t} (x int); insert into {t} values (1)"
        ))
        .await
        .unwrap();
    let out = psql_as(addr, "ops", OPS_PASSWORD, "UNDRAIN r0; UNDRAIN r1").await;
    assert!(out.ok, "{}", out.stderr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!([p0, p1].contains(&served_port(&fresh).await));
}
