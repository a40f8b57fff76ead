//! The proxy as a separate `pgmeridian run` process (for what must be measured or signalled
//! apart from the test: resident memory, SIGTERM), started on a free loopback port.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

pub struct ProxyProcess {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
    config: std::path::PathBuf,
}

impl ProxyProcess {
    /// Runs the built binary on `yaml` (which should listen on port 0) and waits until it
    /// logs its listening address.
    pub async fn start(yaml: &str) -> ProxyProcess {
        let config = super::cluster().base.join(format!(
            "proxy-process-{}-{}.yaml",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&config, yaml).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgmeridian"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("PGMERIDIAN_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the pgmeridian binary");
        let pid = child.id().expect("child pid");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(listen) = v["fields"]["listen"].as_str() {
                    return listen.parse::<SocketAddr>().unwrap();
                }
                seen.push(line);
            }
            panic!("pgmeridian exited before listening:\n{}", seen.join("\n"));
        })
        .await
        .expect("pgmeridian logged its listen address within 30 s");
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ProxyProcess {
            child,
            pid,
            addr,
            config,
        }
    }

    /// Sends SIGTERM (the graceful drain).
    pub fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.pid);
    }

    /// Waits (`within` at most) until the process has exited; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("pgmeridian (pid {}) still runs after {within:?}", self.pid))
            .expect("wait for pgmeridian")
    }

    /// Resident memory of the proxy process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the proxy process is running");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
