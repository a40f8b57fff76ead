//! The `pgmeridian` binary: parses the command line and hands off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgmeridian::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "pgmeridian",
    version,
    about = "PostgreSQL proxy: writes to the primary, reads to the nearest caught-up replica"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Log lines as `text` or `json` (overrides the file's `log_format`).
        #[arg(long, value_name = "text|json")]
        log_format: Option<LogFormat>,
    },
    /// Validate a configuration file; print every problem with its YAML path.
    CheckConfig { file: PathBuf },
    /// Start a local primary and replicas in named regions behind the proxy, for trying it out.
    Demo {
        /// Port for the proxy (a free one is used if this is busy).
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port for the admin HTTP listener (/metrics, /status; a free one is used if busy).
        #[arg(long, default_value_t = 9930)]
        admin_port: u16,
    },
    /// Relay TCP connections to another address, adding a fixed delay in each direction
    /// (simulated distance, for demos and tests).
    Delay {
        /// Address to accept connections on, e.g. 0.0.0.0:5432.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where to relay them: IP:port or host:port (resolved for each connection).
        #[arg(long)]
        to: String,
        /// One-way delay: 40ms, 0.09s, or a number of milliseconds.
        #[arg(long, value_parser = pgmeridian::delay::parse_delay)]
        delay: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        // The flag wins; else the file's `log_format` (a file that does not load is reported
        // by `run` itself, in text).
        Command::Run {
            log_format: Some(format),
            ..
        } => *format,
        Command::Run { config, .. } => pgmeridian::config::Config::load(config)
            .map(|c| c.log_format)
            .unwrap_or_default(),
        _ => LogFormat::Text,
    };
    pgmeridian::telemetry::init(log_format);
    match cli.command {
        Command::CheckConfig { file } => match pgmeridian::app::check(&file) {
            Ok(()) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{}", pgmeridian::app::render_problems(&file, &problems));
                ExitCode::FAILURE
            }
        },
        Command::Run { config, .. } => block_on(pgmeridian::app::run(&config)),
        Command::Demo { port, admin_port } => {
            block_on(pgmeridian::demo::run(pgmeridian::demo::DemoOptions {
                port,
                admin_port,
            }))
        }
        Command::Delay { listen, to, delay } => block_on(relay(listen, to, delay)),
    }
}

/// `pgmeridian delay`: relays until SIGINT or SIGTERM.
async fn relay(
    listen: std::net::SocketAddr,
    to: String,
    delay: std::time::Duration,
) -> Result<(), String> {
    let relay = pgmeridian::delay::DelayRelay::start_to_host(listen, to.clone(), delay)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(listen = %relay.addr(), to = %to, one_way = ?delay, "relaying with delay");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping the relay");
    Ok(())
}

fn block_on(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
