//! The load bench's output: medians per workload and target, ratio to direct, proxy CPU per
//! transaction, the machine it ran on, the project's targets (met or missed), and where
//! pgmeridian routed the batches.

use std::collections::BTreeMap;
use std::process::Command;

use pgmeridian::localpg::PgBin;

use crate::pgbench::{RunResult, Workload};

/// One pgbench run against one target.
pub struct Sample {
    pub round: u32,
    pub workload: Workload,
    pub target: &'static str,
    pub result: RunResult,
}

/// One line of the table: the runs of one workload against one target, summarised.
struct Row {
    workload: Workload,
    target: &'static str,
    tps: f64,
    latency_ms: f64,
    /// TPS over direct's in the same round, median over rounds (runs next to each other in
    /// time share the machine's state, so this drifts less than a ratio of medians).
    ratio: Option<f64>,
    cpu_per_tx: Option<f64>,
    failed: u64,
    aborted: u32,
    /// The first error any of its runs printed.
    error: Option<String>,
    per_round: Vec<f64>,
}

pub struct Machine {
    nproc: usize,
    cpu: String,
    postgres: String,
    pgbouncer: String,
    commit: String,
    /// /proc/loadavg when the bench started and when it ended: other work on the machine.
    load: (String, String),
}

/// The 1/5/15-minute load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    pub fn detect(bin: &PgBin, load_before: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let manifest = env!("CARGO_MANIFEST_DIR");
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            postgres: first_line(bin.program("postgres").as_os_str(), &["--version"]),
            pgbouncer: first_line("pgbouncer".as_ref(), &["--version"]),
            commit: first_line(
                "git".as_ref(),
                &["-C", manifest, "rev-parse", "--short", "HEAD"],
            ),
            load: (load_before, loadavg()),
        }
    }

    fn line(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {}, {}, pgmeridian {}; load average {} at start, {} at end",
            self.nproc,
            self.cpu,
            self.postgres,
            self.pgbouncer,
            self.commit,
            self.load.0,
            self.load.1
        )
    }
}

fn first_line(program: &std::ffi::OsStr, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{} not available", program.to_string_lossy()))
}

pub fn print(samples: &[Sample], machine: &Machine, opts_line: String) {
    let rows = rows(samples);
    println!();
    println!("{}", machine.line());
    println!("{opts_line}; medians over rounds");
    println!();
    println!("| workload | target | TPS (median) | avg latency ms (median) | ratio to direct TPS (per round, median) | proxy CPU s /10k tx | proxy CPU µs/tx | failed tx / aborted clients | TPS per round |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!("{}", table_line(r));
    }
    println!();
    for r in rows.iter().filter(|r| r.error.is_some()) {
        println!(
            "(!) {} via {}: pgbench reported errors; the numbers cover what completed. First: {}",
            r.workload.label(),
            r.target,
            r.error.as_deref().unwrap_or_default()
        );
    }
    println!();
    print_targets(&rows, samples);
}

fn table_line(r: &Row) -> String {
    let per_round: Vec<String> = r.per_round.iter().map(|t| format!("{t:.0}")).collect();
    let mark = if r.error.is_some() { " (!)" } else { "" };
    format!(
        "| {} | {} | {:.0}{mark} | {:.3} | {} | {} | {} | {} / {} | {} |",
        r.workload.label(),
        r.target,
        r.tps,
        r.latency_ms,
        r.ratio.map_or("".into(), |x| format!("{x:.2}")),
        r.cpu_per_tx
            .map_or("".into(), |c| format!("{:.2}", c * 1e4)),
        r.cpu_per_tx
            .map_or("".into(), |c| format!("{:.1}", c * 1e6)),
        r.failed,
        r.aborted,
        per_round.join(", ")
    )
}

/// Rows in the order workloads and targets were first run.
fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut keys: Vec<(Workload, &'static str)> = Vec::new();
    for s in samples {
        if !keys.contains(&(s.workload, s.target)) {
            keys.push((s.workload, s.target));
        }
    }
    keys.iter().map(|&(w, t)| row(samples, w, t)).collect()
}

/// Median over rounds of `target`'s TPS divided by `reference`'s TPS in the same round.
fn paired_ratio(
    samples: &[Sample],
    workload: Workload,
    target: &str,
    reference: &str,
) -> Option<f64> {
    let tps = |round: u32, name: &str| {
        samples
            .iter()
            .find(|s| s.round == round && s.workload == workload && s.target == name)
            .map(|s| s.result.tps)
    };
    let ratios = samples
        .iter()
        .filter(|s| s.workload == workload && s.target == target)
        .filter_map(|s| {
            let r = tps(s.round, reference)?;
            (r > 0.0).then(|| s.result.tps / r)
        })
        .collect();
    median(ratios)
}

fn row(samples: &[Sample], workload: Workload, target: &'static str) -> Row {
    let runs: Vec<&RunResult> = samples
        .iter()
        .filter(|s| s.workload == workload && s.target == target)
        .map(|s| &s.result)
        .collect();
    let per_round: Vec<f64> = runs.iter().map(|r| r.tps).collect();
    Row {
        workload,
        target,
        tps: median(per_round.clone()).unwrap_or(0.0),
        latency_ms: median(runs.iter().map(|r| r.latency_ms).collect()).unwrap_or(0.0),
        ratio: paired_ratio(samples, workload, target, workload.reference()),
        cpu_per_tx: median(runs.iter().filter_map(|r| r.cpu_per_tx()).collect()),
        failed: runs.iter().map(|r| r.failed).sum(),
        aborted: runs.iter().map(|r| r.aborted_clients).sum(),
        error: runs.iter().find_map(|r| r.error.clone()),
        per_round,
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The project's targets (the pooling issue's): select-only and `-M extended` TPS ≥ PgBouncer's;
/// `-M prepared` ≥ 0.6 × direct; `-S -C` with SCRAM ≥ PgBouncer's and ≥ 2 × direct; `-S -C`
/// with MD5 clients ≥ 8 × a trusted direct login. Proxy CPU per transaction is printed beside
/// PgBouncer's (and the bare forwarder's, when measured).
fn print_targets(rows: &[Row], samples: &[Sample]) {
    let find = |w: Workload, t: &str| rows.iter().find(|r| r.workload == w && r.target == t);
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    println!("targets:");
    if !rows.iter().any(|r| r.target == "pgbouncer") {
        println!("- the PgBouncer comparisons: not measured (PgBouncer is not installed)");
    }
    for w in [Workload::Select, Workload::Extended, Workload::Connect] {
        if let Some(paired) = paired_ratio(samples, w, "pgmeridian", "pgbouncer") {
            println!(
                "- {} TPS pgmeridian >= PgBouncer: {} (per-round ratio {paired:.2})",
                w.label(),
                verdict(paired >= 1.0)
            );
        }
    }
    let vs_reference = |w: Workload, target: &str, goal: f64| {
        if let Some(m) = find(w, target) {
            let ratio = m.ratio.unwrap_or(0.0);
            println!(
                "- {} through {target} >= {goal} x {}: {} (per-round ratio {ratio:.2})",
                w.label(),
                w.reference(),
                verdict(ratio >= goal)
            );
        }
    };
    vs_reference(Workload::Prepared, "pgmeridian", 0.6);
    vs_reference(Workload::Connect, "pgmeridian", 2.0);
    vs_reference(Workload::ConnectMd5, "pgmeridian-md5", 8.0);
    for m in rows.iter().filter(|r| r.target == "pgmeridian") {
        let b = find(m.workload, "pgbouncer").filter(|b| b.aborted == 0);
        if let (Some(mc), Some(bc)) = (m.cpu_per_tx, b.and_then(|b| b.cpu_per_tx)) {
            let floor = find(m.workload, "forwarder")
                .and_then(|f| f.cpu_per_tx)
                .map_or(String::new(), |fc| {
                    format!(", bare forwarder {:.1} µs/tx", fc * 1e6)
                });
            println!(
                "- proxy CPU per tx, {}: pgmeridian {:.1} vs PgBouncer {:.1} µs/tx ({:.2}x){floor}",
                m.workload.label(),
                mc * 1e6,
                bc * 1e6,
                mc / bc
            );
        }
    }
}

/// Sums `pgmeridian_routed_batches_total` by target and reason, to show where reads went.
pub fn print_routing(metrics: Option<&str>) {
    let Some(metrics) = metrics else {
        println!("pgmeridian routing: admin /metrics did not answer");
        return;
    };
    let mut by: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("pgmeridian_routed_batches_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        *by.entry((label("target"), label("reason"))).or_default() +=
            value.trim().parse::<f64>().unwrap_or(0.0);
    }
    let parts: Vec<String> = by
        .iter()
        .map(|((t, r), n)| format!("{t}/{r} {n:.0}"))
        .collect();
    let logins: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("pgmeridian_backend_logins_total{"))
        .filter_map(|l| l.split_once("} "))
        .map(|(labels, n)| format!("{labels} {}", n.trim()))
        .collect();
    println!(
        "pgmeridian backend logins over the whole run: {}",
        logins.join(", ")
    );
    println!(
        "pgmeridian routed batches over the whole run (target/reason): {}",
        parts.join(", ")
    );
}
