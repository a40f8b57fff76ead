//! The `pgmeridian` binary: parses the command line and hands off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    },
    /// Validate a configuration file; print every problem with its YAML path.
    CheckConfig { file: PathBuf },
    /// Start a local primary and replicas in named regions behind the proxy, for trying it out.
    Demo {
        /// Port for the proxy (a free one is used if this is busy).
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGMERIDIAN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
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
        Command::Run { config } => block_on(pgmeridian::app::run(&config)),
        Command::Demo { port } => block_on(pgmeridian::demo::run(pgmeridian::demo::DemoOptions {
            port,
        })),
    }
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
