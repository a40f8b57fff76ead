//! The PostgreSQL side of the load bench: a primary holding pgbench's tables and two
//! streaming replicas without apply delay, all from `pgmeridian::localpg` (with its watchdog).

use std::process::{Command, Stdio};

use pgmeridian::localpg::{LocalCluster, PgBin, ReplicaOptions};

/// The role and database every target is reached with.
pub const USER: &str = "app";
pub const PASSWORD: &str = "bench-secret";
pub const DATABASE: &str = "app";

/// Starts the primary, loads `pgbench -i -s scale` as `app`, then clones two replicas (a base
/// backup taken after the load starts them with the data already there).
pub fn cluster(bin: &PgBin, scale: u32) -> Result<LocalCluster, String> {
    let mut c = LocalCluster::start_primary("load")?;
    c.sql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))?;
    c.sql(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))?;
    pgbench_init(bin, c.primary.port, scale)?;
    c.sql(&format!("CREATE ROLE {TRUST_USER} LOGIN"))?;
    c.primary.psql(
        DATABASE,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {TRUST_USER}"),
    )?;
    for name in ["replica0", "replica1"] {
        c.add_replica(name, &ReplicaOptions::default())?;
    }
    Ok(c)
}

/// What pgbench itself does before a run (unless `-n`), done directly on the primary so it
/// stays out of the proxies' CPU time and is identical for every target.
pub fn reset_tables(c: &LocalCluster) -> Result<(), String> {
    for sql in [
        "VACUUM pgbench_branches",
        "VACUUM pgbench_tellers",
        "TRUNCATE pgbench_history",
    ] {
        c.primary.psql(DATABASE, sql)?;
    }
    Ok(())
}

/// A role that logs in to the primary without a password (`trust` in the harness's
/// pg_hba.conf): the cheapest direct login, for the MD5 comparison.
pub const TRUST_USER: &str = "pgm_trust";

/// A client program (pgbench, psql) aimed at 127.0.0.1:`port` as `app`, without TLS.
pub fn client(bin: &PgBin, program: &str, port: u16) -> Command {
    client_as(bin, program, port, USER)
}

/// The same, as `user`.
pub fn client_as(bin: &PgBin, program: &str, port: u16, user: &str) -> Command {
    let mut cmd = Command::new(bin.program(program));
    cmd.env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("LC_ALL", "C")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .stdin(Stdio::null());
    cmd
}

fn pgbench_init(bin: &PgBin, port: u16, scale: u32) -> Result<(), String> {
    let out = client(bin, "pgbench", port)
        .args(["-i", "-q", "-s", &scale.to_string(), DATABASE])
        .output()
        .map_err(|e| format!("cannot run pgbench -i: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pgbench -i failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
