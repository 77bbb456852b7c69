//! Command line of `quarry-core`.

use crate::config::CoreConfig;
use crate::service::CoreService;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "quarry-core",
    version,
    about = "Quarry core pool: work, validation, blocks, credit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the core pool with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Checks a configuration file and exits.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quarry-core: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            CoreConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let cfg = CoreConfig::load(&config)?;
            edge::telemetry::init_logging(cfg.log_format);
            let metrics = edge::telemetry::serve_metrics(cfg.metrics_listen)?;
            let service = CoreService::start(&cfg)?;
            tracing::info!(
                stratum = %format!("stratum+tcp://{}", service.stratum_addr()),
                metrics = %format!("http://{metrics}/metrics"),
                "quarry-core running"
            );
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!("shutting down");
            service.shutdown();
            Ok(())
        }
    }
}
