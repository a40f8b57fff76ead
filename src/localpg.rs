//! Local PostgreSQL servers for the test suite and `pgmeridian demo`: finds the server
//! binaries, runs initdb / pg_basebackup -R / pg_ctl on loopback ports, and (when we are root)
//! runs them as the unprivileged `postgres` user. Knows nothing about the proxy.
//!
//! Every server gets a watchdog process that stops it and removes its files once the process
//! that started it is gone, so a crashed test run leaves nothing behind.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where the PostgreSQL server programs live.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// `$PGMERIDIAN_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` with `initdb`.
    pub fn find() -> Result<PgBin, String> {
        if let Ok(dir) = std::env::var("PGMERIDIAN_PG_BIN") {
            let dir = PathBuf::from(dir);
            return if dir.join("initdb").is_file() {
                Ok(PgBin { dir })
            } else {
                Err(format!(
                    "PGMERIDIAN_PG_BIN={} has no initdb: point it at the directory holding initdb, \
                     pg_ctl and pg_basebackup, or unset it to use /usr/lib/postgresql/*/bin \
                     (Debian/Ubuntu: `apt-get install postgresql`)",
                    dir.display()
                ))
            };
        }
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        found.sort();
        match found.pop() {
            Some((_, dir)) => Ok(PgBin { dir }),
            None => Err("PostgreSQL server binaries not found: no /usr/lib/postgresql/*/bin/initdb. \
                 Install them (Debian/Ubuntu: `apt-get install postgresql`) or set PGMERIDIAN_PG_BIN \
                 to the directory holding initdb, pg_ctl and pg_basebackup."
                .into()),
        }
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The account servers run under: ourselves, or `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    pub fn detect() -> Result<Option<RunAs>, String> {
        let status = fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or("cannot read our user id from /proc/self/status")?;
        if euid != 0 {
            return Ok(None);
        }
        let passwd = fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
        passwd_entry(&passwd, "postgres").map(Some).ok_or_else(|| {
            "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user \
             to run it as (create one: `useradd --system postgres`)"
                .into()
        })
    }
}

/// Finds `user`'s uid and gid in /etc/passwd text.
pub fn passwd_entry(passwd: &str, user: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        let uid = f.nth(1)?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some(RunAs { uid, gid })
    })
}

/// A loopback port nobody is listening on right now.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// One PostgreSQL server on a loopback port.
#[derive(Debug)]
pub struct LocalNode {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    bin: PgBin,
    run_as: Option<RunAs>,
}

/// Options for a replica.
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    /// `recovery_min_apply_delay`, for real replication lag.
    pub apply_delay_ms: u64,
}

/// A primary and its streaming replicas, all under one directory.
#[derive(Debug)]
pub struct LocalCluster {
    pub base: PathBuf,
    pub primary: LocalNode,
    pub replicas: Vec<LocalNode>,
    bin: PgBin,
    run_as: Option<RunAs>,
}

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

const PRIMARY_CONF: &str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
wal_level = replica
max_wal_senders = 10
hot_standby = on
hot_standby_feedback = on
fsync = off
full_page_writes = off
synchronous_commit = on
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
log_min_messages = warning
";

/// Host-based authentication: trust for the superuser and replication on loopback (the
/// harness's own access), md5 and scram for everyone else, as real deployments have.
const PG_HBA: &str = "
host replication all 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all pgm_trust 127.0.0.1/32 trust
host all pgm_md5 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
";

impl LocalCluster {
    /// Creates and starts a primary (initdb) under a fresh directory named after `label`.
    pub fn start_primary(label: &str) -> Result<LocalCluster, String> {
        Self::start_primary_with_conf(label, "")
    }

    /// Like [`LocalCluster::start_primary`], with `extra_conf` appended to postgresql.conf
    /// before the first start (replicas copy it; their own settings come later and win).
    pub fn start_primary_with_conf(label: &str, extra_conf: &str) -> Result<LocalCluster, String> {
        let bin = PgBin::find()?;
        let run_as = RunAs::detect()?;
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("pgmeridian-{label}-{}-{n}", std::process::id()));
        if base.exists() {
            fs::remove_dir_all(&base)
                .map_err(|e| format!("cannot clear {}: {e}", base.display()))?;
        }
        fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        if let Some(r) = run_as {
            std::os::unix::fs::chown(&base, Some(r.uid), Some(r.gid))
                .map_err(|e| format!("chown {}: {e}", base.display()))?;
        }
        let primary = LocalNode {
            name: "primary".into(),
            port: free_port()?,
            data: base.join("primary"),
            log: base.join("primary.log"),
            bin: bin.clone(),
            run_as,
        };
        run(primary
            .command("initdb")
            .args(["-D"])
            .arg(&primary.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ]))?;
        let conf = format!("{PRIMARY_CONF}port = {}\n{extra_conf}\n", primary.port);
        append(&primary.data.join("postgresql.conf"), &conf)?;
        fs::write(primary.data.join("pg_hba.conf"), PG_HBA).map_err(|e| e.to_string())?;
        let cluster = LocalCluster {
            base,
            primary,
            replicas: Vec::new(),
            bin,
            run_as,
        };
        cluster.spawn_watchdog()?;
        cluster.primary.start()?;
        Ok(cluster)
    }

    /// Adds a streaming replica of the primary (pg_basebackup -R) and starts it.
    pub fn add_replica(&mut self, name: &str, opts: &ReplicaOptions) -> Result<&LocalNode, String> {
        self.add_replica_with_conf(name, opts, "")
    }

    /// Like [`LocalCluster::add_replica`], with `extra_conf` appended to the replica's
    /// postgresql.conf before it starts (for example `cluster_name = 'eu-west-replica'`).
    pub fn add_replica_with_conf(
        &mut self,
        name: &str,
        opts: &ReplicaOptions,
        extra_conf: &str,
    ) -> Result<&LocalNode, String> {
        let node = LocalNode {
            name: name.into(),
            port: free_port()?,
            data: self.base.join(name),
            log: self.base.join(format!("{name}.log")),
            bin: self.bin.clone(),
            run_as: self.run_as,
        };
        run(node
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(&node.data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]))?;
        let mut conf = format!("port = {}\n", node.port);
        if opts.apply_delay_ms > 0 {
            conf.push_str(&format!(
                "recovery_min_apply_delay = '{}ms'\n",
                opts.apply_delay_ms
            ));
        }
        conf.push_str(extra_conf);
        conf.push('\n');
        append(&node.data.join("postgresql.conf"), &conf)?;
        node.start()?;
        self.replicas.push(node);
        Ok(self.replicas.last().expect("just pushed"))
    }

    /// Turns on TLS on the primary with the given PEM certificate and key (replicas added
    /// later inherit the files through pg_basebackup).
    pub fn enable_ssl(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let data = &self.primary.data;
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            if let Some(r) = self.run_as {
                std::os::unix::fs::chown(&path, Some(r.uid), Some(r.gid))
                    .map_err(|e| e.to_string())?;
            }
        }
        append(&data.join("postgresql.conf"), "ssl = on\n")?;
        run(self
            .primary
            .command("pg_ctl")
            .args(["-D"])
            .arg(data)
            .args(["reload"])
            .stdout(Stdio::null()))?;
        Ok(())
    }

    /// Runs SQL on the primary as the superuser (psql, stops on the first error).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        self.primary.psql("postgres", sql)
    }

    /// A shell watchdog that stops every server and deletes the directory once our process
    /// has exited, however it exited.
    fn spawn_watchdog(&self) -> Result<(), String> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; \
             for d in {base}/*/; do [ -f \"$d/postmaster.pid\" ] && {pg_ctl} -D \"$d\" -m immediate stop >/dev/null 2>&1; done; \
             rm -rf {base}",
            pid = std::process::id(),
            base = self.base.display(),
            pg_ctl = self.bin.program("pg_ctl").display(),
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.process_group(0);
        if let Some(r) = self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start the cleanup watchdog: {e}"))?;
        Ok(())
    }

    /// Stops every server now and removes the files.
    pub fn destroy(&mut self) {
        for node in self.replicas.iter().chain(std::iter::once(&self.primary)) {
            let _ = node.stop_mode("immediate");
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.destroy();
    }
}

impl LocalNode {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.program(program));
        cmd.env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd.current_dir("/");
        if let Some(r) = self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        cmd
    }

    /// pg_ctl start, waiting until the server accepts connections.
    pub fn start(&self) -> Result<(), String> {
        run(self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-l"])
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .stdout(Stdio::null()))
        .map_err(|e| {
            format!(
                "{e}\nserver log ({}):\n{}",
                self.log.display(),
                tail(&self.log)
            )
        })
        .map(drop)
    }

    /// pg_ctl stop -m fast.
    pub fn stop(&self) -> Result<(), String> {
        self.stop_mode("fast")
    }

    /// pg_ctl stop -m immediate: like a crash (no goodbye to connected clients).
    pub fn stop_immediate(&self) -> Result<(), String> {
        self.stop_mode("immediate")
    }

    fn stop_mode(&self, mode: &str) -> Result<(), String> {
        if !self.data.join("postmaster.pid").exists() {
            return Ok(());
        }
        run(self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null()))
        .map(drop)
    }

    /// pg_ctl promote (for a replica).
    pub fn promote(&self) -> Result<(), String> {
        run(self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-w", "promote"])
            .stdout(Stdio::null()))
        .map(drop)
    }

    /// pg_ctl reload: the server re-reads its configuration files.
    pub fn reload(&self) -> Result<(), String> {
        run(self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["reload"])
            .stdout(Stdio::null()))
        .map(drop)
    }

    /// Sets (`Some`) or resets (`None`) server parameters with `ALTER SYSTEM`, one statement
    /// each (it refuses to run in a transaction block), then reloads. Works on standbys too.
    pub fn set_params(&self, params: &[(&str, Option<&str>)]) -> Result<(), String> {
        for (name, value) in params {
            let sql = match value {
                Some(v) => format!("ALTER SYSTEM SET {name} = '{}'", v.replace('\'', "''")),
                None => format!("ALTER SYSTEM RESET {name}"),
            };
            self.psql("postgres", &sql)?;
        }
        self.reload()
    }

    /// Re-points this streaming replica at `upstream` (what Patroni or repmgr do after a
    /// promotion): a new `primary_conninfo`, applied on reload by PostgreSQL 13 and later. With
    /// `recovery_target_timeline = latest` (the default) it follows a promoted upstream onto
    /// its new timeline, provided it has not replayed past the point where that timeline forked.
    pub fn follow(&self, upstream: &LocalNode) -> Result<(), String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres application_name={}",
            upstream.port, self.name
        );
        self.set_params(&[("primary_conninfo", Some(&conninfo))])
    }

    /// Runs SQL through psql as `postgres` on `database`; returns unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = run(self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let shown = format!("{:?}", cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\nbad:x:zz:1::/:/bin/sh\n";
        let pg = passwd_entry(passwd, "postgres").unwrap();
        assert_eq!((pg.uid, pg.gid), (101, 104));
        assert!(passwd_entry(passwd, "post").is_none());
        assert!(passwd_entry(passwd, "bad").is_none());
    }
}
