//! The PostgreSQL command-line tools through the proxy: psql over TLS (including SCRAM channel
//! binding), its auth and database errors, and pgbench in simple, extended and prepared modes.

mod common;

/// One replica, replaying without delay.
pub const REPLICA_DELAYS_MS: &[u64] = &[0];

use std::path::PathBuf;
use std::process::{Command, Output};

use pgmeridian::app::Proxy;
use pgmeridian::localpg::PgBin;

use common::*;

fn tool(name: &str) -> PathBuf {
    PgBin::find()
        .unwrap_or_else(|e| panic!("{e}"))
        .program(name)
}

/// Runs a client tool off the async runtime (the proxy runs on it in this process).
async fn run(mut cmd: Command) -> Output {
    cmd.env_remove("PGSSLMODE")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
    tokio::task::spawn_blocking(move || cmd.output().expect("tool runs"))
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A proxy with TLS from a fresh self-signed certificate.
async fn tls_proxy(required: bool) -> (Proxy, tempdir::Dir) {
    let dir = tempdir::Dir::new("tls");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.0.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.0.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    let extra = format!(
        "tls: {{ cert: {}, key: {}, required: {required} }}\n",
        dir.0.join("tls.crt").display(),
        dir.0.join("tls.key").display()
    );
    let proxy = Proxy::start(&config(cluster(), &extra)).await.unwrap();
    (proxy, dir)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(label: &str) -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("pgmeridian-{label}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn psql(addr: std::net::SocketAddr, conninfo: &str, password: &str, sql: &str) -> Command {
    let mut cmd = Command::new(tool("psql"));
    cmd.env("PGPASSWORD", password)
        .arg("-X")
        .arg("-At")
        .arg(format!("host=127.0.0.1 port={} {conninfo}", addr.port()))
        .args(["-c", sql]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_negotiates_tls_with_sslmode_require() {
    cluster();
    let (proxy, _dir) = tls_proxy(false).await;
    let out = run(psql(
        proxy.addr,
        "user=app dbname=app sslmode=require",
        APP_PASSWORD,
        "\\conninfo",
    ))
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("SSL connection (protocol: TLSv1.3"), "{t}");
    // SCRAM-SHA-256-PLUS: the client binds its login to our TLS certificate.
    let out = run(psql(
        proxy.addr,
        "user=app dbname=app sslmode=require channel_binding=require",
        APP_PASSWORD,
        "select 'bound'",
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bound");
    // Plain text is still allowed when TLS is not required.
    let out = run(psql(
        proxy.addr,
        "user=app dbname=app sslmode=disable",
        APP_PASSWORD,
        "select 1",
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_refuses_plain_text() {
    cluster();
    let (proxy, _dir) = tls_proxy(true).await;
    let out = run(psql(
        proxy.addr,
        "user=app dbname=app sslmode=disable",
        APP_PASSWORD,
        "select 1",
    ))
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("this proxy requires TLS"),
        "{}",
        text(&out)
    );
    let out = run(psql(
        proxy.addr,
        "user=app dbname=app sslmode=require",
        APP_PASSWORD,
        "select 1",
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_wrong_password_and_unknown_database() {
    let proxy = proxy("").await;
    let out = run(psql(
        proxy.addr,
        "user=app dbname=app sslmode=disable",
        "wrong",
        "select 1",
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("FATAL:  password authentication failed for user \"app\""),
        "{}",
        text(&out)
    );
    let out = run(psql(
        proxy.addr,
        "user=app dbname=nope sslmode=disable",
        APP_PASSWORD,
        "select 1",
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("FATAL:  database \"nope\" does not exist"),
        "{}",
        text(&out)
    );
}

fn pgbench(addr: std::net::SocketAddr, args: &[&str]) -> Command {
    let mut cmd = Command::new(tool("pgbench"));
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-U",
            "app",
        ])
        .args(args)
        .arg("app");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_all_query_modes() {
    let proxy = proxy("").await;
    let out = run(pgbench(proxy.addr, &["-i", "-s", "1", "-q"])).await;
    assert!(out.status.success(), "pgbench -i: {}", text(&out));
    for mode in ["simple", "extended", "prepared"] {
        let out = run(pgbench(
            proxy.addr,
            &["-M", mode, "-c", "4", "-j", "2", "-t", "150", "-n"],
        ))
        .await;
        let t = text(&out);
        assert!(out.status.success(), "pgbench -M {mode}: {t}");
        assert!(
            t.contains("number of transactions actually processed: 600/600"),
            "-M {mode}: {t}"
        );
        assert!(
            t.contains("number of failed transactions: 0 "),
            "-M {mode}: {t}"
        );
    }
    // The work landed on the primary.
    let n: i64 = rows_on_primary("pgbench_history").await;
    assert_eq!(n, 1800);
}
