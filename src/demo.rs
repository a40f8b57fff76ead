//! `pgmeridian demo`: starts a real local primary ("us-east") and streaming replicas
//! ("eu-west", "ap-southeast", with real apply lag) from the PostgreSQL binaries on this
//! machine, puts the proxy in front of them, prints how to connect, and cleans up on Ctrl-C.

use std::time::Duration;

use crate::app::Proxy;
use crate::config::Config;
use crate::localpg::{LocalCluster, ReplicaOptions};

const DEMO_PASSWORD: &str = "demo";

pub struct DemoOptions {
    /// Port for the proxy; 0 picks a free one.
    pub port: u16,
}

/// Runs until Ctrl-C (or SIGTERM); everything it started is stopped and removed on the way out.
pub async fn run(opts: DemoOptions) -> Result<(), String> {
    println!("pgmeridian demo: starting a primary and two streaming replicas (this takes a few seconds)…");
    let cluster = tokio::task::spawn_blocking(build_cluster)
        .await
        .map_err(|e| e.to_string())??;
    let yaml = demo_config(&cluster, opts.port);
    let config =
        Config::from_yaml(&yaml, &|_| None).map_err(|ps| format!("demo config: {ps:?}"))?;
    let proxy = match Proxy::start(&config).await {
        Ok(p) => p,
        Err(_) if opts.port != 0 => {
            println!("port {} is busy; using a free port instead", opts.port);
            let config = Config::from_yaml(&demo_config(&cluster, 0), &|_| None)
                .map_err(|ps| format!("{ps:?}"))?;
            Proxy::start(&config)
                .await
                .map_err(|ps| format!("{ps:?}"))?
        }
        Err(ps) => return Err(format!("{ps:?}")),
    };
    print_banner(&cluster, &proxy);
    wait_for_stop().await;
    println!("\nstopping the proxy and the PostgreSQL servers…");
    proxy.shared.hard_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), proxy.shutdown()).await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| e.to_string())?;
    println!("demo stopped; its files are removed.");
    Ok(())
}

fn build_cluster() -> Result<LocalCluster, String> {
    let mut c = LocalCluster::start_primary("demo")?;
    c.sql(&format!("CREATE ROLE app LOGIN PASSWORD '{DEMO_PASSWORD}'"))?;
    c.sql("CREATE DATABASE app OWNER app")?;
    c.primary.psql(
        "app",
        "SET ROLE app;
         CREATE TABLE visits (id bigserial PRIMARY KEY, city text NOT NULL, at timestamptz NOT NULL DEFAULT now());
         INSERT INTO visits (city) VALUES ('Ashburn'), ('Dublin'), ('Singapore');",
    )?;
    c.add_replica(
        "eu-west",
        &ReplicaOptions {
            apply_delay_ms: 300,
        },
    )?;
    c.add_replica(
        "ap-southeast",
        &ReplicaOptions {
            apply_delay_ms: 700,
        },
    )?;
    Ok(c)
}

fn demo_config(c: &LocalCluster, port: u16) -> String {
    format!(
        "listen: 127.0.0.1:{port}
region: us-east
regions:
  us-east:      {{ lat: 39.0, lon: -77.5 }}
  eu-west:      {{ lat: 53.3, lon: -6.3 }}
  ap-southeast: {{ lat: 1.35, lon: 103.8 }}
users:
  - {{ name: app, password: {DEMO_PASSWORD} }}
clusters:
  app:
    primary: {{ host: 127.0.0.1, port: {}, region: us-east, tls: disable }}
    replicas:
      - {{ host: 127.0.0.1, port: {}, region: eu-west, tls: disable }}
      - {{ host: 127.0.0.1, port: {}, region: ap-southeast, tls: disable }}
",
        c.primary.port, c.replicas[0].port, c.replicas[1].port
    )
}

fn print_banner(c: &LocalCluster, proxy: &Proxy) {
    let port = proxy.addr.port();
    println!();
    println!("pgmeridian is running in front of real PostgreSQL servers:");
    println!("  primary       us-east       127.0.0.1:{}", c.primary.port);
    println!(
        "  replica       eu-west       127.0.0.1:{}  (replays WAL 300 ms behind)",
        c.replicas[0].port
    );
    println!(
        "  replica       ap-southeast  127.0.0.1:{}  (replays WAL 700 ms behind)",
        c.replicas[1].port
    );
    println!();
    println!("Connect through the proxy:");
    println!("  postgres://app:{DEMO_PASSWORD}@127.0.0.1:{port}/app?sslmode=disable");
    println!("  psql 'postgres://app:{DEMO_PASSWORD}@127.0.0.1:{port}/app?sslmode=disable'");
    println!();
    println!("Things to try:");
    println!(
        "  1. a write, then reads of it: the read right after the write is served by the primary"
    );
    println!("     (the replicas have not replayed it yet), a read a second later by a replica:");
    println!("     psql 'postgres://app:{DEMO_PASSWORD}@127.0.0.1:{port}/app?sslmode=disable' \\");
    println!("       -c \"insert into visits (city) values ('Lisbon')\" \\");
    println!(
        "       -c 'select count(*), inet_server_port() from visits' -c 'select pg_sleep(1)' \\"
    );
    println!("       -c 'select count(*), inet_server_port() from visits'");
    println!("  2. steer a session: SET pgmeridian.route = primary (or replica, auto), or start a");
    println!("     statement with /* pgmeridian:primary */; BEGIN READ ONLY runs on a replica.");
    println!("  3. watch every routing decision and its reason: run the demo with PGMERIDIAN_LOG=pgmeridian=debug");
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
