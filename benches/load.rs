//! Whole-proxy load benchmark: pgbench against the primary directly, through PgBouncer and
//! through pgmeridian (release binary, child process), interleaved per round, on a real local
//! primary with two streaming replicas. Owns the run plan; the pieces live in `load/`.
//!
//! `cargo bench --bench load -- --help` lists the knobs (duration, clients, rounds, …).

#[path = "load/children.rs"]
mod children;
#[path = "load/forwarder.rs"]
mod forwarder;
#[path = "load/pgbench.rs"]
mod pgbench;
#[path = "load/report.rs"]
mod report;
#[path = "load/setup.rs"]
mod setup;

use clap::Parser;
use pgmeridian::localpg::PgBin;

use children::Proxy;
use pgbench::{Pgbench, Workload};
use report::Sample;

#[derive(Parser, Debug)]
#[command(about = "pgbench: direct vs PgBouncer vs pgmeridian")]
struct Options {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// pgbench -c.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// pgbench -j.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds; each round runs every workload against every target.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// pgbench -i -s.
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Comma-separated subset of: select, tpcb, connect, connect-md5, extended, prepared.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "select,extended,prepared,tpcb,connect,connect-md5"
    )]
    workloads: Vec<Workload>,
    /// Also measure a second pgmeridian with one session thread (`workers: 1`), as target
    /// `pgmeridian-1w`.
    #[arg(long)]
    one_worker_variant: bool,
    /// Also measure the floor: a bare byte forwarder to the primary (one server connection per
    /// client, no pooling or parsing, one tokio thread), as target `forwarder` (not for `-C`).
    #[arg(long)]
    forwarder: bool,
    /// Also measure another pgmeridian binary (say, a build of the previous commit) as target
    /// `baseline`, interleaved with this build: an A/B comparison on the same machine state.
    #[arg(long, value_name = "PATH")]
    baseline: Option<std::path::PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// A `cargo bench -- FILTER` meant for the criterion benches: the load bench runs only
    /// when FILTER is part of "load".
    #[arg(hide = true)]
    filter: Option<String>,
}

/// Where pgbench connects: a name, a port, and the proxy process whose CPU is measured.
pub struct Target<'a> {
    pub name: &'static str,
    pub port: u16,
    /// The role pgbench logs in as.
    pub user: &'static str,
    pub proxy: Option<&'a Proxy>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(forwarder::FLAG) {
        let port = |i: usize| args.get(i).and_then(|p| p.parse::<u16>().ok());
        let served = match (port(2), port(3)) {
            (Some(listen), Some(backend)) => forwarder::serve(listen, backend),
            _ => Err(format!(
                "usage: {} LISTEN_PORT BACKEND_PORT",
                forwarder::FLAG
            )),
        };
        if let Err(e) = served {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let opts = Options::parse();
    if opts
        .filter
        .as_ref()
        .is_some_and(|f| !"load".contains(f.as_str()))
    {
        return;
    }
    if let Err(e) = run(&opts) {
        eprintln!("load bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(opts: &Options) -> Result<(), String> {
    let bin = PgBin::find()?;
    let load_before = report::loadavg();
    println!(
        "starting a primary and two streaming replicas, pgbench -i -s {}…",
        opts.scale
    );
    let cluster = setup::cluster(&bin, opts.scale)?;
    let scram = "scram-sha-256";
    let meridian = children::start_pgmeridian(&cluster, "pgmeridian", None, None, scram)?;
    let md5 = opts
        .workloads
        .contains(&Workload::ConnectMd5)
        .then(|| children::start_pgmeridian(&cluster, "pgmeridian-md5", None, None, "md5"))
        .transpose()?;
    let one_worker = opts
        .one_worker_variant
        .then(|| children::start_pgmeridian(&cluster, "pgmeridian-1w", None, Some(1), scram))
        .transpose()?;
    let baseline = opts
        .baseline
        .as_deref()
        .map(|bin| children::start_pgmeridian(&cluster, "baseline", Some(bin), None, scram))
        .transpose()?;
    let forwarder = opts
        .forwarder
        .then(|| children::start_forwarder(&cluster))
        .transpose()?;
    let bouncer = children::start_pgbouncer(&cluster, opts.clients)?;
    if bouncer.is_none() {
        println!("pgbouncer is not installed: the PgBouncer rows are skipped");
    }
    let mut targets = vec![
        Target {
            name: "direct",
            port: cluster.primary.port,
            user: setup::USER,
            proxy: None,
        },
        Target {
            name: "direct-trust",
            port: cluster.primary.port,
            user: setup::TRUST_USER,
            proxy: None,
        },
    ];
    if let Some(b) = &bouncer {
        targets.push(b.target("pgbouncer"));
    }
    targets.push(meridian.target("pgmeridian"));
    if let Some(f) = &forwarder {
        targets.push(f.target("forwarder"));
    }
    if let Some(m) = &md5 {
        targets.push(m.target("pgmeridian-md5"));
    }
    if let Some(m) = &one_worker {
        targets.push(m.target("pgmeridian-1w"));
    }
    if let Some(m) = &baseline {
        targets.push(m.target("baseline"));
    }
    let bench = Pgbench::new(&bin, opts.clients, opts.threads, opts.duration);
    let samples = run_rounds(opts, &bench, &cluster, &targets)?;
    let machine = report::Machine::detect(&bin, load_before);
    report::print(&samples, &machine, opts_line(opts));
    report::print_routing(meridian.admin_metrics().as_deref());
    Ok(())
}

/// Round r runs each workload against every target in turn, so slow drift (caches, table
/// bloat, a noisy neighbour) spreads over all targets instead of favouring one; the order of
/// the targets rotates by one each round, so that none always runs first or after another.
fn run_rounds(
    opts: &Options,
    bench: &Pgbench,
    cluster: &pgmeridian::localpg::LocalCluster,
    targets: &[Target],
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for round in 1..=opts.rounds {
        let first = (round as usize - 1) % targets.len().max(1);
        let order: Vec<&Target> = targets[first..].iter().chain(&targets[..first]).collect();
        for &workload in &opts.workloads {
            for target in order.iter().filter(|t| workload.runs_against(t.name)) {
                setup::reset_tables(cluster)?;
                let sample = measure(bench, round, workload, target)?;
                println!(
                    "round {round}/{} {:<28} {:<10} {}",
                    opts.rounds,
                    workload.label(),
                    target.name,
                    sample.result.one_line()
                );
                samples.push(sample);
            }
        }
    }
    Ok(samples)
}

/// One pgbench run with the proxy's CPU time read before and after.
fn measure(
    bench: &Pgbench,
    round: u32,
    workload: Workload,
    target: &Target,
) -> Result<Sample, String> {
    let before = target.proxy.map(|p| p.cpu_seconds()).transpose()?;
    let mut result = bench.run(target.port, target.user, workload)?;
    if let (Some(p), Some(before)) = (target.proxy, before) {
        result.proxy_cpu_s = Some(p.cpu_seconds()? - before);
    }
    Ok(Sample {
        round,
        workload,
        target: target.name,
        result,
    })
}

fn opts_line(opts: &Options) -> String {
    format!(
        "pgbench -c {} -j {} -T {}, {} rounds, scale {}",
        opts.clients, opts.threads, opts.duration, opts.rounds, opts.scale
    )
}
