//! Command-line interface of `quarry-loadtest`.
//!
//! Exit status: 0 when the run completed and the pool judged every share as expected, 2 when it
//! completed but the pool misjudged shares or broke the protocol (see [`ShareCounts`]), 1 when
//! the run could not start or no miner ever connected.
//!
//! [`ShareCounts`]: crate::miner::ShareCounts

use crate::miner::{self, ProfileChoice, RunConfig, ShareMix, StratumUrl};
use clap::{Args, Parser, Subcommand};
use relay::work::Difficulty;
use relay::PowAlgorithm;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "quarry-loadtest", version, about = "Quarry load tester")]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text (filter with RUST_LOG).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run simulated Stratum V1 miners against a pool and report what it answered.
    Miners(MinersArgs),
    /// Run the whole local stack: litecoind (regtest), quarry-core and CPU miners.
    Stack(StackArgs),
}

#[derive(Debug, Args)]
pub struct StackArgs {
    /// Run time in seconds (Ctrl-C stops earlier).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// CPU miners to run against the pool; 0 leaves the port to miners you bring.
    #[arg(long, default_value_t = 4)]
    pub miners: usize,
    /// Scrypt hashes per second per miner. Regtest blocks are so easy that about half of all
    /// hashes are blocks: keep this low.
    #[arg(long, default_value_t = 2.0)]
    pub hashrate: f64,
    /// Folder for the stack's files (default: a fresh folder under the temp dir).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the folder (daemon data, configs, logs) after the run.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct MinersArgs {
    /// Pool address.
    #[arg(long, default_value = "stratum+tcp://127.0.0.1:3333")]
    pub url: StratumUrl,
    /// Number of miners (one connection each).
    #[arg(long, default_value_t = 4)]
    pub count: usize,
    /// Proof-of-work algorithm: scrypt or sha256d.
    #[arg(long, default_value = "scrypt")]
    pub algo: PowAlgorithm,
    /// Hashes per second per miner (0: connect and follow jobs only).
    #[arg(long, default_value_t = 20.0)]
    pub hashrate: f64,
    /// asic, nicehash, cpuminer, or mixed (the three in turn).
    #[arg(long, default_value = "mixed")]
    pub profile: ProfileChoice,
    /// `account` or `account.worker`; miner i authorizes as account.worker{i}.
    #[arg(long, default_value = "loadtest")]
    pub user: String,
    #[arg(long, default_value = "x")]
    pub password: String,
    /// Run time in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Difficulty the ASIC profile suggests with mining.suggest_difficulty.
    #[arg(long)]
    pub suggest_difficulty: Option<f64>,
    /// Fractions of deliberately bad shares, e.g. `duplicate=0.02,stale=0.01,low=0.01,malformed=0.01`.
    #[arg(long, default_value = "")]
    pub mix: ShareMix,
    /// Close each connection after this many seconds and reconnect (connection churn).
    #[arg(long)]
    pub churn: Option<f64>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5.0)]
    pub progress: f64,
    /// Seed for nonce starts and share-mix draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} {v}: not a number of seconds"))
}

impl MinersArgs {
    /// The run configuration these arguments describe.
    pub fn to_config(&self) -> Result<RunConfig, String> {
        let mut c = RunConfig::new(self.url.clone(), self.count, self.algo);
        c.hashrate = self.hashrate;
        c.profile = self.profile;
        c.user = self.user.clone();
        c.password = self.password.clone();
        c.duration = Some(secs("duration", self.duration)?);
        c.suggest_difficulty = self
            .suggest_difficulty
            .map(|d| Difficulty::new(d).map_err(|e| format!("--suggest-difficulty: {e}")))
            .transpose()?;
        c.mix = self.mix;
        c.churn = self.churn.map(|s| secs("churn", s)).transpose()?;
        c.progress_every = secs("progress", self.progress)?.max(Duration::from_millis(100));
        c.seed = self.seed;
        Ok(c)
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command line; see the module documentation for the exit status.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log_json);
    match cli.command {
        Command::Miners(args) => miners(&args),
        Command::Stack(args) => match crate::stack_cmd::run(&args) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn miners(args: &MinersArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    info!(
        url = %config.url, miners = config.miners, algo = %config.algorithm,
        hashrate = config.hashrate, profile = ?config.profile, "starting miners"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stats = match miner::run(&config, stop, |p| info!("{p}")) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&stats) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                tracing::error!("cannot encode the summary as JSON: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        println!("{stats}");
    }
    if stats.connects == 0 {
        tracing::error!(url = %config.url, "no miner could connect to the pool");
        return ExitCode::from(1);
    }
    if stats.shares.pool_verdicts_correct() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::Profile;

    #[test]
    fn miners_subcommand_parses_into_a_run_config() {
        let cli = Cli::try_parse_from([
            "quarry-loadtest",
            "miners",
            "--url",
            "stratum+tcp://10.0.0.2:3334",
            "--count",
            "7",
            "--algo",
            "sha256d",
            "--hashrate",
            "50",
            "--profile",
            "asic",
            "--user",
            "acct.rig",
            "--duration",
            "2.5",
            "--mix",
            "duplicate=0.1,low=0.05",
            "--churn",
            "30",
            "--json",
        ])
        .unwrap();
        let Command::Miners(args) = cli.command else {
            panic!("expected the miners subcommand")
        };
        assert!(args.json);
        let c = args.to_config().unwrap();
        assert_eq!(c.url.host, "10.0.0.2");
        assert_eq!(c.url.port, 3334);
        assert_eq!(c.miners, 7);
        assert_eq!(c.algorithm, PowAlgorithm::Sha256d);
        assert_eq!(c.profile, ProfileChoice::Fixed(Profile::Asic));
        assert_eq!(c.username(3), "acct.rig3");
        assert_eq!(c.duration, Some(Duration::from_millis(2500)));
        assert_eq!(c.mix.duplicate, 0.1);
        assert_eq!(c.mix.low_difficulty, 0.05);
        assert_eq!(c.churn, Some(Duration::from_secs(30)));
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let err = Cli::try_parse_from(["quarry-loadtest", "miners", "--url", "stratum+ssl://h:1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
        let err = Cli::try_parse_from(["quarry-loadtest", "miners", "--mix", "dup=0.1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind 'dup'"), "{err}");
        let err = Cli::try_parse_from(["quarry-loadtest", "miners", "--profile", "gpu"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mixed"), "{err}");
    }
}
