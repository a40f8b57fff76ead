//! `pgmeridian demo`: starts a real local primary ("us-east") and streaming replicas
//! ("eu-west", "ap-southeast", with real apply lag) from the PostgreSQL binaries on this
//! machine, puts a [`DelayRelay`] in front of each replica to simulate the round trip from the
//! proxy's region (us-east) to theirs, starts the proxy and its admin listener on them, prints
//! how to connect and what to try, and removes everything on Ctrl-C.
//!
//! It installs nothing and touches nothing outside its own temporary directory; when the
//! PostgreSQL binaries are missing, `localpg` says what to install.

use std::net::SocketAddr;
use std::time::Duration;

use crate::app::Proxy;
use crate::config::Config;
use crate::delay::DelayRelay;
use crate::health::PrimaryView;
use crate::localpg::{LocalCluster, ReplicaOptions};

const DEMO_PASSWORD: &str = "demo";
const PRIMARY_NAME: &str = "us-east-primary";

/// A replica of the demo: where it is and how far it is from the proxy (which runs in us-east).
struct DemoReplica {
    region: &'static str,
    /// `cluster_name` of the server, so `current_setting('cluster_name')` shows who answered.
    cluster_name: &'static str,
    /// `recovery_min_apply_delay`: real replication lag.
    apply_delay_ms: u64,
    /// Simulated one-way network delay between the proxy and the replica.
    one_way_ms: u64,
}

const REPLICAS: [DemoReplica; 2] = [
    DemoReplica {
        region: "eu-west",
        cluster_name: "eu-west-replica",
        apply_delay_ms: 300,
        one_way_ms: 40,
    },
    DemoReplica {
        region: "ap-southeast",
        cluster_name: "ap-southeast-replica",
        apply_delay_ms: 700,
        one_way_ms: 90,
    },
];

pub struct DemoOptions {
    /// Port for the proxy; 0 picks a free one.
    pub port: u16,
    /// Port for the admin HTTP listener; 0 picks a free one.
    pub admin_port: u16,
}

/// Runs until Ctrl-C (or SIGTERM); everything it started is stopped and removed on the way out.
pub async fn run(opts: DemoOptions) -> Result<(), String> {
    println!("pgmeridian demo: starting a primary and two streaming replicas (this takes a few seconds)…");
    let cluster = tokio::task::spawn_blocking(build_cluster)
        .await
        .map_err(|e| e.to_string())??;
    let served = serve(&cluster, &opts).await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| e.to_string())?;
    if served.is_ok() {
        println!("demo stopped; its files are removed.");
    }
    served
}

/// Relays, proxy, banner, and waiting for Ctrl-C; stops the proxy and the relays on return.
async fn serve(cluster: &LocalCluster, opts: &DemoOptions) -> Result<(), String> {
    let mut relays = Vec::new();
    for (spec, node) in REPLICAS.iter().zip(&cluster.replicas) {
        let target = SocketAddr::from(([127, 0, 0, 1], node.port));
        let relay = DelayRelay::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            target,
            Duration::from_millis(spec.one_way_ms),
        )
        .await
        .map_err(|e| format!("cannot start the latency relay for {}: {e}", spec.region))?;
        relays.push(relay);
    }
    let proxy = start_proxy(cluster, &relays, opts).await?;
    let ready = wait_until_routable(&proxy).await;
    print_banner(cluster, &relays, &proxy, ready);
    wait_for_stop().await;
    println!("\nstopping the proxy, the relays and the PostgreSQL servers…");
    proxy.shared.hard_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), proxy.shutdown()).await;
    drop(relays);
    Ok(())
}

fn build_cluster() -> Result<LocalCluster, String> {
    let mut c =
        LocalCluster::start_primary_with_conf("demo", &format!("cluster_name = '{PRIMARY_NAME}'"))?;
    c.sql(&format!("CREATE ROLE app LOGIN PASSWORD '{DEMO_PASSWORD}'"))?;
    c.sql("CREATE DATABASE app OWNER app")?;
    c.primary.psql(
        "app",
        "SET ROLE app;
         CREATE TABLE visits (id bigserial PRIMARY KEY, city text NOT NULL, at timestamptz NOT NULL DEFAULT now());
         INSERT INTO visits (city) VALUES ('Ashburn'), ('Dublin'), ('Singapore');",
    )?;
    for spec in &REPLICAS {
        c.add_replica_with_conf(
            spec.region,
            &ReplicaOptions {
                apply_delay_ms: spec.apply_delay_ms,
            },
            &format!("cluster_name = '{}'", spec.cluster_name),
        )?;
    }
    Ok(c)
}

/// Starts the proxy on `opts`' ports; a busy port is replaced by a free one.
async fn start_proxy(
    cluster: &LocalCluster,
    relays: &[DelayRelay],
    opts: &DemoOptions,
) -> Result<Proxy, String> {
    let (mut port, mut admin_port) = (opts.port, opts.admin_port);
    loop {
        let yaml = demo_config(cluster, relays, port, admin_port);
        let config =
            Config::from_yaml(&yaml, &|_| None).map_err(|ps| format!("demo config: {ps:?}"))?;
        let problems = match Proxy::start(&config).await {
            Ok(p) => return Ok(p),
            Err(ps) => ps,
        };
        let mut retry = false;
        for p in &problems {
            if p.path == "listen" && port != 0 {
                println!("port {port} is busy; using a free port for the proxy instead");
                (port, retry) = (0, true);
            } else if p.path == "admin_listen" && admin_port != 0 {
                println!(
                    "port {admin_port} is busy; using a free port for the admin listener instead"
                );
                (admin_port, retry) = (0, true);
            }
        }
        if !retry {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(format!("cannot start the proxy: {}", text.join("; ")));
        }
    }
}

fn demo_config(c: &LocalCluster, relays: &[DelayRelay], port: u16, admin_port: u16) -> String {
    let replicas: String = REPLICAS
        .iter()
        .zip(relays)
        .map(|(spec, relay)| {
            format!(
                "      - {{ name: {}, host: 127.0.0.1, port: {}, region: {}, tls: disable }}\n",
                spec.cluster_name,
                relay.addr().port(),
                spec.region
            )
        })
        .collect();
    format!(
        "listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
region: us-east
regions:
  us-east:      {{ lat: 39.0, lon: -77.5 }}
  eu-west:      {{ lat: 53.3, lon: -6.3 }}
  ap-southeast: {{ lat: 1.35, lon: 103.8 }}
users:
  - {{ name: app, password: {DEMO_PASSWORD} }}
clusters:
  app:
    primary: {{ name: {PRIMARY_NAME}, host: 127.0.0.1, port: {}, region: us-east, tls: disable }}
    replicas:
{replicas}",
        c.primary.port
    )
}

/// Waits (up to 15 s) until the probes see the primary and every replica serving reads, so
/// the first things the user tries behave as the banner says.
async fn wait_until_routable(proxy: &Proxy) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let health = proxy.shared.health.load();
        let ready = health.clusters.get("app").is_some_and(|c| {
            c.primary_view() == PrimaryView::One(0)
                && c.replicas.len() == REPLICAS.len()
                && c.replicas
                    .iter()
                    .all(|r| r.serves_reads(Duration::from_secs(10)))
        });
        if ready {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_banner(c: &LocalCluster, relays: &[DelayRelay], proxy: &Proxy, ready: bool) {
    let url = format!(
        "postgres://app:{DEMO_PASSWORD}@127.0.0.1:{}/app",
        proxy.addr.port()
    );
    let admin = proxy
        .admin_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let who = "select current_setting('cluster_name') as served_by, count(*) as visits from visits";
    println!();
    println!("pgmeridian is running in us-east, in front of real PostgreSQL servers:");
    println!(
        "  {:<22} {:<13} {:<16} as seen from the proxy",
        "server (cluster_name)", "region", "listens on"
    );
    println!(
        "  {:<22} {:<13} {:<16} the primary; same region, no added delay",
        PRIMARY_NAME,
        "us-east",
        format!("127.0.0.1:{}", c.primary.port)
    );
    for ((spec, node), relay) in REPLICAS.iter().zip(&c.replicas).zip(relays) {
        println!(
            "  {:<22} {:<13} {:<16} via relay {} (+{} ms each way, {} ms RTT); replays WAL {} ms behind",
            spec.cluster_name,
            spec.region,
            format!("127.0.0.1:{}", node.port),
            relay.addr(),
            spec.one_way_ms,
            2 * spec.one_way_ms,
            spec.apply_delay_ms
        );
    }
    if !ready {
        println!("  (the probes do not see every server serving yet; give it a few seconds)");
    }
    println!();
    println!("Connect through the proxy (user app, password {DEMO_PASSWORD}, database app):");
    println!("  {url}");
    println!("  psql '{url}'");
    println!();
    println!("Admin listener:");
    println!("  {admin}/metrics    Prometheus metrics");
    println!("  {admin}/status     JSON: nodes, roles, lag, probe round trips");
    println!();
    println!("Things to try:");
    println!(
        "  1. Read your own writes. In one session: a write; a read right after it is served by"
    );
    println!(
        "     the primary (no replica has replayed the write yet); a second later the same read"
    );
    println!("     is served by the nearest replica, eu-west, and sees the new row:");
    println!("     psql '{url}' \\");
    println!("       -c \"insert into visits (city) values ('Lisbon')\" \\");
    println!("       -c \"{who}\" \\");
    println!("       -c \"select pg_sleep(1)\" \\");
    println!("       -c \"{who}\"");
    println!(
        "  2. A client in another region: this session says it is in ap-southeast, so its reads"
    );
    println!(
        "     go to the ap-southeast replica (the first one also pays its login round trips):"
    );
    println!("     psql '{url}?options=-c%20pgmeridian.region%3Dap-southeast' -c \"{who}\"");
    println!("  3. Watch replication lag and probe round trips while you write:");
    println!("     curl -s {admin}/status");
    println!("     curl -s {admin}/metrics | grep -E '^pgmeridian_(replica_lag_seconds|probe_rtt_seconds|routed_batches_total)'");
    println!();
    println!("More: SET pgmeridian.route = primary (or replica, auto); a leading /* pgmeridian:primary */");
    println!(
        "comment; BEGIN READ ONLY runs on a replica. PGMERIDIAN_LOG=pgmeridian=debug logs every"
    );
    println!("routing decision and its reason.");
    println!();
    println!("Press Ctrl-C to stop and remove everything.");
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
