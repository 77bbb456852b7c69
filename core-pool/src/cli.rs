//! Command line of `quarry-core`.

use crate::config::CoreConfig;
use crate::service::CoreService;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
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
    /// Operator PKI for edge links: a CA, the core's certificate, edge certificates.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Prints every credited share of a shard journal as one JSON object per line.
    ///
    /// Fields: worker, job_id, extranonce1, extranonce2 (hex), ntime, nonce, version (8 hex
    /// digits as in mining.submit), difficulty, edge, epoch, seq, kind (batch|block), index,
    /// received_at_ms. Each (edge, epoch, seq) once; shares refused by the audit are left out.
    /// Safe on the journal of a running core (it then reads a snapshot copy).
    JournalDump {
        /// The journal folder (`gateway.journal_dir`).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum CertsAction {
    /// Creates the operator CA (ca.crt, ca.key) in DIR. Keep ca.key offline.
    InitCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "Quarry operator CA")]
        name: String,
    },
    /// Issues the core's certificate (core.crt, core.key) for the names edges dial.
    Core {
        /// Folder holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write core.crt and core.key.
        #[arg(long)]
        out: PathBuf,
        /// DNS names and IP addresses edges use to reach the core (repeat the flag).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// Issues an edge certificate (EDGE_ID.crt, EDGE_ID.key); the id is the edge's identity.
    Edge {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Lowercase letters, digits and '-', at most 63 characters.
        #[arg(long)]
        id: String,
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
        Command::Certs { action } => certs(action),
        Command::JournalDump { dir } => journal_dump(&dir),
        Command::Run { config } => {
            let cfg = CoreConfig::load(&config)?;
            edge::telemetry::init_logging(cfg.log_format);
            let metrics = edge::telemetry::serve_metrics(cfg.metrics_listen)?;
            let service = CoreService::start(&cfg)?;
            tracing::info!(
                stratum = %format!("stratum+tcp://{}", service.stratum_addr()),
                gateway = %service
                    .gateway_addr()
                    .map_or_else(|| "off".to_string(), |a| format!("quic://{a}")),
                metrics = %format!("http://{metrics}/metrics"),
                "quarry-core running"
            );
            let stop = edge::telemetry::stop_on_signals()?;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!("shutting down");
            service.shutdown();
            Ok(())
        }
    }
}

fn journal_dump(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut reader = crate::journal::JournalReader::open(dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for share in reader.shares()? {
        writeln!(out, "{}", share?.to_json())?;
    }
    out.flush()?;
    Ok(())
}

fn certs(action: CertsAction) -> anyhow::Result<()> {
    use relay::quic::certs;
    match action {
        CertsAction::InitCa { dir, name } => {
            let ca = certs::generate_ca(&name)?;
            let paths = ca.write(&dir)?;
            println!("wrote {} and {}", paths.cert.display(), paths.key.display());
        }
        CertsAction::Core { ca_dir, out, names } => {
            let ca = certs::CaBundle::load_dir(&ca_dir)?;
            let cert = certs::issue_core_cert(&ca, &names)?;
            let paths = cert.write(&out, "core")?;
            println!("wrote {} and {}", paths.cert.display(), paths.key.display());
        }
        CertsAction::Edge { ca_dir, out, id } => {
            let ca = certs::CaBundle::load_dir(&ca_dir)?;
            let cert = certs::issue_edge_cert(&ca, &id)?;
            let paths = cert.write(&out, &id)?;
            println!("wrote {} and {}", paths.cert.display(), paths.key.display());
        }
    }
    Ok(())
}
