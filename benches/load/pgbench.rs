//! Running one pgbench workload against one port and reading its summary: TPS, average
//! latency, transactions, failed transactions and aborted clients.

use pgmeridian::localpg::PgBin;

use crate::setup::{self, DATABASE};

/// The pgbench workloads compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// `-S`: one primary-key SELECT per transaction, simple protocol.
    Select,
    /// The default TPC-B-like script: BEGIN, 3 UPDATEs, a SELECT, an INSERT, END.
    Tpcb,
    /// `-S -C`: a new connection (and SCRAM login) for every transaction.
    Connect,
    /// `-S -C` with MD5 client logins through pgmeridian, against trusted direct logins.
    ConnectMd5,
    /// `-S -M extended`: extended protocol, unnamed statements.
    Extended,
    /// `-S -M prepared`: extended protocol with named prepared statements.
    Prepared,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::Select => "select-only (-S)",
            Workload::Tpcb => "TPC-B-like",
            Workload::Connect => "select-only, new conn (-S -C), SCRAM",
            Workload::ConnectMd5 => "select-only, new conn (-S -C), md5 vs trust",
            Workload::Extended => "select-only (-S -M extended)",
            Workload::Prepared => "select-only (-S -M prepared)",
        }
    }

    /// The target its ratios are taken against.
    pub fn reference(self) -> &'static str {
        match self {
            Workload::ConnectMd5 => "direct-trust",
            _ => "direct",
        }
    }

    /// Whether this workload runs against `target` (the md5 comparison has its own pair; the
    /// bare forwarder opens a server login per client, so it is no floor for `-C`).
    pub fn runs_against(self, target: &str) -> bool {
        if target == "forwarder" {
            return !matches!(self, Workload::Connect | Workload::ConnectMd5);
        }
        let md5_pair = matches!(target, "direct-trust" | "pgmeridian-md5");
        (self == Workload::ConnectMd5) == md5_pair
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Workload::Select => &["-S"],
            Workload::Tpcb => &[],
            Workload::Connect | Workload::ConnectMd5 => &["-S", "-C"],
            Workload::Extended => &["-S", "-M", "extended"],
            Workload::Prepared => &["-S", "-M", "prepared"],
        }
    }
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct RunResult {
    pub tps: f64,
    pub latency_ms: f64,
    pub transactions: u64,
    pub failed: u64,
    pub aborted_clients: u32,
    /// The first error pgbench printed, if any.
    pub error: Option<String>,
    /// CPU seconds the proxy used during the run (none for direct).
    pub proxy_cpu_s: Option<f64>,
}

impl RunResult {
    pub fn one_line(&self) -> String {
        let mut s = format!(
            "tps {:>9.1}  lat {:>6.3} ms  tx {:>8}  failed {}",
            self.tps, self.latency_ms, self.transactions, self.failed
        );
        if let Some(cpu) = self.proxy_cpu_s {
            s.push_str(&format!("  proxy cpu {cpu:.2} s"));
        }
        if self.aborted_clients > 0 {
            s.push_str(&format!("  ABORTED CLIENTS {}", self.aborted_clients));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("  error: {e}"));
        }
        s
    }

    /// Proxy CPU seconds per transaction, when both are known.
    pub fn cpu_per_tx(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_s?;
        (self.transactions > 0).then(|| cpu / self.transactions as f64)
    }
}

/// pgbench with fixed client count, threads and duration.
pub struct Pgbench {
    bin: PgBin,
    args: Vec<String>,
}

impl Pgbench {
    pub fn new(bin: &PgBin, clients: u32, threads: u32, duration_s: u32) -> Pgbench {
        let args = [
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &duration_s.to_string(),
        ]
        .map(String::from)
        .to_vec();
        Pgbench {
            bin: bin.clone(),
            args,
        }
    }

    /// Runs `workload` against 127.0.0.1:`port`. A run whose clients failed is still a result
    /// (with its errors); only failing to start pgbench at all is an `Err`.
    pub fn run(&self, port: u16, user: &str, workload: Workload) -> Result<RunResult, String> {
        let out = setup::client_as(&self.bin, "pgbench", port, user)
            .args(&self.args)
            .args(workload.args())
            .arg(DATABASE)
            .output()
            .map_err(|e| format!("cannot run pgbench: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut result = parse(&stdout, &stderr);
        if !out.status.success() && result.error.is_none() {
            result.error = Some(format!("pgbench exited with {}", out.status));
        }
        Ok(result)
    }
}

/// Reads pgbench's (version 14+) summary. `tps = X (without initial connection time)` and,
/// with `-C`, `tps = X (including reconnection times)` are both taken as X.
pub fn parse(stdout: &str, stderr: &str) -> RunResult {
    let mut r = RunResult::default();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("tps = ") {
            r.tps = first_number(v);
        } else if let Some(v) = line.strip_prefix("latency average = ") {
            r.latency_ms = first_number(v);
        } else if let Some(v) = line.strip_prefix("number of transactions actually processed: ") {
            r.transactions = first_number(v) as u64;
        } else if let Some(v) = line.strip_prefix("number of failed transactions: ") {
            r.failed = first_number(v) as u64;
        }
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("error:") || l.contains("ERROR:") || l.contains("FATAL:"))
        .collect();
    r.aborted_clients = errors.iter().filter(|l| l.contains("aborted")).count() as u32;
    r.error = errors.first().map(|l| l.trim().to_owned());
    r
}

/// The number a value starts with (`"1234.5 (without …)"`, `"0 (0.000%)"`, `"5/10"`).
fn first_number(text: &str) -> f64 {
    let end = text
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(text.len());
    text[..end].parse().unwrap_or(0.0)
}
