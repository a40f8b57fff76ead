//! The proxies under test as child processes: the pgmeridian release binary and, when
//! installed, PgBouncer (as the `postgres` user when we are root: it refuses root). Each gets its
//! config file in the cluster directory, is killed by pid when dropped, and has a watchdog that
//! kills it by pid if this process dies without dropping it. Also reads their CPU time.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgmeridian::localpg::{free_port, LocalCluster, PgBin, RunAs};

use crate::setup::{self, DATABASE, PASSWORD, USER};
use crate::Target;

/// A running proxy process.
pub struct Proxy {
    child: Child,
    port: u16,
    admin_port: Option<u16>,
}

impl Proxy {
    pub fn target(&self, name: &'static str) -> Target<'_> {
        Target {
            name,
            port: self.port,
            user: USER,
            proxy: Some(self),
        }
    }

    /// User + system CPU seconds the process has used so far (all its threads).
    pub fn cpu_seconds(&self) -> Result<f64, String> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let ticks = stat_field(&stat, 14)? + stat_field(&stat, 15)?;
        Ok(ticks as f64 / clock_ticks_per_second())
    }

    /// The admin listener's `/metrics` text, when there is one and it answers.
    pub fn admin_metrics(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port?)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pgmeridian run --config` in front of the cluster: reads to the replicas,
/// read-your-writes by LSN (the defaults), quiet logs. `name` names its files; `program` is
/// the binary (this build's unless given); `workers`, if given, sets its session threads.
pub fn start_pgmeridian(
    c: &LocalCluster,
    name: &str,
    program: Option<&Path>,
    workers: Option<u32>,
    client_auth: &str,
) -> Result<Proxy, String> {
    let (port, admin_port) = (free_port()?, free_port()?);
    let config = c.base.join(format!("{name}.yaml"));
    let mut yaml = pgmeridian_yaml(c, port, admin_port, client_auth);
    if let Some(n) = workers {
        yaml.push_str(&format!("workers: {n}\n"));
    }
    fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let this_build = Path::new(env!("CARGO_BIN_EXE_pgmeridian"));
    let mut cmd = Command::new(program.unwrap_or(this_build));
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("PGMERIDIAN_LOG", "warn");
    let log = c.base.join(format!("{name}.log"));
    let proxy = Proxy {
        child: spawn(&mut cmd, &log)?,
        port,
        admin_port: Some(admin_port),
    };
    wait_ready(&proxy, &log)?;
    // Let the probes see every replica up before anything is measured.
    std::thread::sleep(Duration::from_millis(500));
    Ok(proxy)
}

fn pgmeridian_yaml(c: &LocalCluster, port: u16, admin_port: u16, client_auth: &str) -> String {
    let replicas: String = c
        .replicas
        .iter()
        .map(|r| {
            format!(
                "      - {{ host: 127.0.0.1, port: {}, region: local, tls: disable }}\n",
                r.port
            )
        })
        .collect();
    format!(
        "listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
region: local
regions:
  local: {{ lat: 0.0, lon: 0.0 }}
users:
  - {{ name: {USER}, password: {PASSWORD}, auth: {client_auth} }}
clusters:
  {DATABASE}:
    primary: {{ host: 127.0.0.1, port: {}, region: local, tls: disable }}
    replicas:
{replicas}routing:
  read_your_writes: lsn
",
        c.primary.port
    )
}

/// Starts PgBouncer in transaction mode in front of the primary, or `None` when it is not
/// installed. Its userlist holds the role's SCRAM verifier from `pg_authid` (the production
/// setup: no plaintext, and PgBouncer logs in to the server with the client's SCRAM keys).
pub fn start_pgbouncer(c: &LocalCluster, clients: u32) -> Result<Option<Proxy>, String> {
    let Some(program) = find_program("pgbouncer") else {
        return Ok(None);
    };
    let run_as = RunAs::detect()?;
    let verifier = c.sql(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'"
    ))?;
    let users = c.base.join("pgbouncer-users.txt");
    write_owned(&users, &format!("\"{USER}\" \"{verifier}\"\n"), run_as)?;
    let port = free_port()?;
    let ini = c.base.join("pgbouncer.ini");
    let pool = clients.max(20);
    write_owned(&ini, &pgbouncer_ini(c, port, &users, pool), run_as)?;
    let mut cmd = Command::new(program);
    cmd.arg(&ini).current_dir(&c.base);
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    let log = c.base.join("pgbouncer.log");
    let proxy = Proxy {
        child: spawn(&mut cmd, &log)?,
        port,
        admin_port: None,
    };
    wait_ready(&proxy, &log)?;
    Ok(Some(proxy))
}

fn pgbouncer_ini(c: &LocalCluster, port: u16, users: &Path, pool: u32) -> String {
    format!(
        "[databases]
{DATABASE} = host=127.0.0.1 port={} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {}
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool}
log_connections = 0
log_disconnections = 0
",
        c.primary.port,
        users.display()
    )
}

/// Starts the floor reference (`forwarder.rs`): this bench binary again, as a bare byte
/// forwarder in front of the primary.
pub fn start_forwarder(c: &LocalCluster) -> Result<Proxy, String> {
    let port = free_port()?;
    let me = std::env::current_exe().map_err(|e| format!("this bench's own path: {e}"))?;
    let mut cmd = Command::new(me);
    cmd.arg(crate::forwarder::FLAG)
        .arg(port.to_string())
        .arg(c.primary.port.to_string());
    let log = c.base.join("forwarder.log");
    let proxy = Proxy {
        child: spawn(&mut cmd, &log)?,
        port,
        admin_port: None,
    };
    wait_ready(&proxy, &log)?;
    Ok(proxy)
}

/// Spawns with output to `log` and a watchdog that kills the child by pid (checking its
/// start time, so a reused pid is left alone) once this process is gone.
fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    let started = stat_field(&stat, 22)?;
    let script = format!(
        "while [ -d /proc/{me} ]; do sleep 0.5; done; \
         [ \"$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f20)\" = {started} ] && kill -KILL {pid}",
        me = std::process::id(),
        pid = child.id(),
    );
    Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the watchdog: {e}"))?;
    Ok(child)
}

/// Waits until `psql -c 'select 1'` works through the proxy (10 s at most).
fn wait_ready(proxy: &Proxy, log: &Path) -> Result<(), String> {
    let bin = PgBin::find()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = setup::client(&bin, "psql", proxy.port)
            .args(["-X", "-At", "-d", DATABASE, "-c", "select 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let text = fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "the proxy on port {} did not accept a login within 10 s; its log ({}):\n{text}",
                proxy.port,
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Field `n` (1-based, as in proc(5)) of a /proc/PID/stat line; the command name in
/// parentheses may hold spaces, so counting starts after its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> Result<u64, String> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc/PID/stat")?;
    rest.split_whitespace()
        .nth(n - 3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no field {n} in /proc/PID/stat"))
}

#[allow(unsafe_code)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Writes a file readable only by the account the child runs as.
fn write_owned(path: &Path, text: &str, run_as: Option<RunAs>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    if let Some(r) = run_as {
        std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}
