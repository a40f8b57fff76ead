//! HAProxy (Debian package `haproxy`) as a real L4 balancer in front of proxy instances: TCP
//! mode, `send-proxy-v2`, round robin, health checks of each instance's `/readyz` on its admin
//! port. Runs in the foreground as a child of the test; its stats socket tells server states.
//! A test that needs it FAILS when it is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One instance behind the balancer: its name, client port and admin port.
pub struct Backend {
    pub name: &'static str,
    pub port: u16,
    pub admin_port: u16,
}

pub struct Haproxy {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// Where HAProxy is: `$PGMERIDIAN_HAPROXY`, else `haproxy` on PATH or in /usr/sbin.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("PGMERIDIAN_HAPROXY") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs HAProxy and could not find it (not on PATH, not in /usr/sbin); \
                 install it (Debian/Ubuntu: apt-get install haproxy; tests/run.sh does) or set \
                 PGMERIDIAN_HAPROXY"
            )
        })
}

impl Haproxy {
    /// Listens on `addr` and balances over `backends`; returns once every one of them is UP.
    pub async fn start(addr: SocketAddr, backends: &[Backend]) -> Haproxy {
        let dir = super::cluster()
            .base
            .join(format!("haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = backends
            .iter()
            .map(|b| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    b.name, b.port, b.admin_port
                )
            })
            .collect();
        // Health checks every 100 ms, two to change state; a connection refused by an instance
        // that is gone is retried on another one (`redispatch` on every retry).
        let cfg = format!(
            "global
    maxconn 500
    stats socket {sock} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
listen pg
    bind {addr}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server inter 100ms fall 2 rise 2 send-proxy-v2
{servers}",
            sock = dir.join("stats.sock").display(),
        );
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let check = std::process::Command::new(binary())
            .args(["-c", "-f"])
            .arg(&cfg_path)
            .output()
            .unwrap_or_else(|e| panic!("this test needs HAProxy and could not run it: {e}"));
        assert!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = tokio::process::Command::new(binary())
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        let h = Haproxy { child, addr, dir };
        for b in backends {
            h.wait_for(b.name, "UP").await;
        }
        h
    }

    /// `show stat` from the stats socket: (server name, status) of the `pg` proxy's servers.
    pub async fn statuses(&self) -> Vec<(String, String)> {
        let Ok(mut s) = tokio::net::UnixStream::connect(self.dir.join("stats.sock")).await else {
            return Vec::new();
        };
        s.write_all(b"show stat\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px] == "pg" && !matches!(f[sv], "FRONTEND" | "BACKEND"))
            .map(|f| (f[sv].to_owned(), f[st].to_owned()))
            .collect()
    }

    /// Waits (20 s at most) until HAProxy reports `server` in state `status` (`UP`, `DOWN`).
    pub async fn wait_for(&self, server: &str, status: &str) -> Duration {
        let start = Instant::now();
        loop {
            let now = self.statuses().await;
            if now.iter().any(|(n, s)| n == server && s == status) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "HAProxy did not report {server} {status} within 20 s: {now:?}\nlog:\n{}",
                std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
