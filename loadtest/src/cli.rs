//! Command-line interface of `quarry-loadtest`.
//!
//! Exit status: 0 when the run completed and the pool judged every share as expected, 2 when it
//! completed but the pool misjudged shares or broke the protocol (see [`ShareCounts`]), 1 when
//! the run could not start or no miner ever connected.
//!
//! [`ShareCounts`]: crate::miner::ShareCounts

use crate::miner::mio_runner::SourceAddrs;
use crate::miner::{Engine, ProfileChoice, RunConfig, ShareMix, StratumUrl};
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
    /// Serve synthetic mainnet-shaped jobs with the real edge Stratum server, counting the
    /// shares it accepts (a harness for measuring the server alone).
    SyntheticPool(SyntheticPoolArgs),
    /// Measure the edge Stratum server: memory per idle connection and share round trip, with
    /// `synthetic-pool` as a child process.
    BenchStratum(BenchStratumArgs),
    /// Run the real core gateway (QUIC, mTLS, journal, audits) with synthetic sha256d jobs and
    /// SIMULATED block submits (recorded, answered "accepted"), for measuring the uplink.
    SyntheticCore(SyntheticCoreArgs),
    /// Measure the edge's uplink: bytes per share on the wire and block-candidate latency, with
    /// synthetic-core and quarry-edge as child processes and a counting UDP relay between them.
    BenchUplink(BenchUplinkArgs),
    /// Run a scenario file (loadtest/scenarios/*.toml): start the stack it needs, run it, and
    /// write report.json, summary.txt and throughput.svg.
    Run(RunArgs),
    /// A simulated large upstream pool (Stratum V1) that verifies every share it receives.
    SimPool(SimPoolArgs),
    /// Measure proxy mining: the latency Quarry adds forwarding a share upstream, and the
    /// failover time, with sim pools in this process and quarry-core (proxy mode) as a child.
    BenchProxy(BenchProxyArgs),
    /// One process of the `storm` scenario's connection storm (started by `run`).
    #[command(hide = true)]
    StormWorker(StormWorkerArgs),
}

#[derive(Debug, Args)]
pub struct SimPoolArgs {
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub listen: std::net::SocketAddr,
    /// stratum+ssl with a self-signed certificate (printed at start, PEM).
    #[arg(long)]
    pub tls: bool,
    #[arg(long, default_value = "sha256d")]
    pub algorithm: PowAlgorithm,
    #[arg(long, default_value_t = 1.0)]
    pub difficulty: f64,
    #[arg(long, default_value_t = 4)]
    pub extranonce1_size: usize,
    #[arg(long, default_value_t = 8)]
    pub extranonce2_size: usize,
    /// Seconds between jobs.
    #[arg(long, default_value_t = 30.0)]
    pub job_interval: f64,
    /// Prometheus metrics (quarry_simpool_*) on this address.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Seconds between stats lines (JSON).
    #[arg(long, default_value_t = 5.0)]
    pub stats_every: f64,
}

#[derive(Debug, Args)]
pub struct BenchProxyArgs {
    /// Shares in each latency phase.
    #[arg(long, default_value_t = 3000)]
    pub shares: usize,
    /// Shares per second the probe submits.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Failovers (each followed by a failback).
    #[arg(long, default_value_t = 5)]
    pub failovers: usize,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct StormWorkerArgs {
    /// The edge's Stratum address.
    #[arg(long)]
    pub target: std::net::SocketAddr,
    #[arg(long)]
    pub attempts: usize,
    /// Source addresses, e.g. `127.0.0.10-11`.
    #[arg(long)]
    pub sources: SourceAddrs,
    /// Seconds after which an undecided attempt counts as hung.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Seconds the served connections stay open after the last attempt resolved.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Where the JSON report goes.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Scheduling niceness for this worker (0–19), see the scenario's `storm.nice`.
    #[arg(long, default_value_t = 0)]
    pub nice: i32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file.
    pub scenario: std::path::PathBuf,
    /// Folder for the report and the rig's files (default: target/scenarios/<name>).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Override the scenario's miner count (CI-sized runs).
    #[arg(long)]
    pub miners: Option<usize>,
    /// Override the scenario's duration, seconds.
    #[arg(long)]
    pub duration: Option<f64>,
}

#[derive(Debug, Args)]
pub struct SyntheticCoreArgs {
    /// UDP address of the QUIC gateway.
    #[arg(long, default_value = "127.0.0.1:4444")]
    pub gateway: std::net::SocketAddr,
    /// PKI folder (ca.crt, core.crt/key, farm-1.crt/key); generated if missing.
    #[arg(long)]
    pub pki: std::path::PathBuf,
    /// Journal folder.
    #[arg(long)]
    pub journal: std::path::PathBuf,
    /// Proof-of-work algorithm: scrypt or sha256d.
    #[arg(long, default_value = "sha256d")]
    pub algo: PowAlgorithm,
    /// Prometheus metrics address.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// nBits of every job, hex (0x1d00ffff: blocks practically never; 0x20020000: one share in
    /// 32 at difficulty 2^-30).
    #[arg(long, default_value = "1d00ffff", value_parser = parse_nbits)]
    pub nbits: u32,
    /// Seconds between new jobs.
    #[arg(long, default_value_t = 30.0)]
    pub job_interval: f64,
    /// Append one JSON line per submit_block call here.
    #[arg(long)]
    pub blocks_log: Option<std::path::PathBuf>,
    /// Shares per thousand the gateway audits.
    #[arg(long, default_value_t = 20)]
    pub audit_per_mille: u16,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 5.0)]
    pub report_every: f64,
}

fn parse_nbits(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("nbits '{s}': {e}"))
}

#[derive(Debug, Args)]
pub struct BenchUplinkArgs {
    /// Miners in the bytes phase.
    #[arg(long, default_value_t = 300)]
    pub miners: usize,
    /// Shares per second of all miners together in the bytes phase.
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Seconds of the bytes phase (after the miners connected).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Share difficulty (sha256d, fixed at the edge); the default 2^-30 is ~4 hashes a share.
    #[arg(long, default_value_t = crate::bench_uplink::CHEAP_DIFFICULTY)]
    pub difficulty: f64,
    /// Shares per second in the block phase.
    #[arg(long, default_value_t = 100.0)]
    pub block_rate: f64,
    /// Seconds of the block phase.
    #[arg(long, default_value_t = 30.0)]
    pub block_duration: f64,
    /// nBits of the block phase, hex.
    #[arg(long, default_value = "20020000", value_parser = parse_nbits)]
    pub block_nbits: u32,
    /// Skip the block phase.
    #[arg(long)]
    pub no_blocks: bool,
    /// Folder for the rigs' files (default: a fresh folder under the temp dir, removed after).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct SyntheticPoolArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub listen: std::net::SocketAddr,
    /// Proof-of-work algorithm: scrypt or sha256d.
    #[arg(long, default_value = "sha256d")]
    pub algo: PowAlgorithm,
    /// Share difficulty, fixed for every connection (e.g. 9.3e-10 ≈ 2^-30).
    #[arg(long, default_value_t = 1.0)]
    pub difficulty: f64,
    /// Connector threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 19_000)]
    pub max_connections: usize,
    /// Seconds between new jobs (every fourth one is clean).
    #[arg(long, default_value_t = 30.0)]
    pub job_interval: f64,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 5.0)]
    pub report_every: f64,
}

#[derive(Debug, Args)]
pub struct BenchStratumArgs {
    /// Miners submitting shares in the round-trip phase.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Idle miners in the memory phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Seconds of the round-trip phase (after the connections opened).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Shares per second of all miners together.
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Share difficulty (sha256d); the default 2^-30 costs ~4 hashes per share.
    #[arg(long, default_value_t = 9.313225746154785e-10)]
    pub difficulty: f64,
    /// Connector threads of the server; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub server_threads: usize,
    /// Event-loop threads of the miners; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub client_threads: usize,
    /// Source addresses of the miners' sockets, e.g. `127.0.0.1-4`.
    #[arg(long, default_value = "127.0.0.1-4")]
    pub source_addrs: SourceAddrs,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// asic, nicehash, cpuminer, or mixed (the three in turn).
    #[arg(long, default_value = "mixed")]
    pub profile: ProfileChoice,
    /// Write the report as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// The server's log file (default: in the temp dir).
    #[arg(long)]
    pub server_log: Option<std::path::PathBuf>,
    /// Seconds between the server's new jobs (each is broadcast to every connection).
    #[arg(long, default_value_t = 30.0)]
    pub job_interval: f64,
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
    /// Run without an edge: miners connect to the core's own Stratum port.
    #[arg(long)]
    pub no_edge: bool,
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
    /// mio (event loops, for many miners) or threads (one per miner); default mio above 64.
    #[arg(long)]
    pub engine: Option<Engine>,
    /// Event-loop threads of the mio engine; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Source addresses to bind the miners' sockets to, in turn: `127.0.0.1,127.0.0.2` or
    /// `127.0.0.1-16` (mio engine).
    #[arg(long, default_value = "")]
    pub source_addrs: SourceAddrs,
    /// Connections opened per second at the start (mio engine; default all at once).
    #[arg(long)]
    pub ramp: Option<f64>,
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
        c.threads = self.threads;
        c.source_addrs = self.source_addrs.0.clone();
        c.ramp = self.ramp;
        Ok(c)
    }

    /// The engine asked for, or the default for the miner count.
    pub fn engine(&self) -> Engine {
        self.engine.unwrap_or(Engine::for_count(self.count))
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
        Command::SyntheticPool(args) => match synthetic_pool(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::BenchStratum(args) => match bench_stratum(&args) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::SyntheticCore(args) => match synthetic_core(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => match run_scenario(&args) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::StormWorker(args) => match storm_worker(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::BenchUplink(args) => match bench_uplink(&args) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::SimPool(args) => match sim_pool(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
        Command::BenchProxy(args) => match bench_proxy(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn sim_pool(args: &SimPoolArgs) -> anyhow::Result<()> {
    use crate::sim_pool::{SimPool, SimPoolConfig};
    use anyhow::Context;
    let mut cfg = SimPoolConfig::new(args.listen);
    cfg.tls = args.tls;
    cfg.algorithm = args.algorithm;
    cfg.difficulty =
        Difficulty::new(args.difficulty).map_err(|e| anyhow::anyhow!("--difficulty: {e}"))?;
    if !(1..=8).contains(&args.extranonce1_size) {
        anyhow::bail!(
            "--extranonce1-size {} is outside 1..=8",
            args.extranonce1_size
        );
    }
    if !(2..=16).contains(&args.extranonce2_size) {
        anyhow::bail!(
            "--extranonce2-size {} is outside 2..=16",
            args.extranonce2_size
        );
    }
    cfg.extranonce1_size = args.extranonce1_size;
    cfg.extranonce2_size = args.extranonce2_size;
    cfg.job_interval = secs("job-interval", args.job_interval).map_err(anyhow::Error::msg)?;
    let every = secs("stats-every", args.stats_every).map_err(anyhow::Error::msg)?;
    if let Some(m) = args.metrics {
        edge::telemetry::serve_metrics(m)?;
    }
    let stop = edge::telemetry::stop_on_signals().context("installing signal handlers")?;
    let pool = SimPool::start(cfg).with_context(|| format!("listening on {}", args.listen))?;
    let scheme = if args.tls {
        "stratum+ssl"
    } else {
        "stratum+tcp"
    };
    println!("sim-pool listening on {scheme}://{}", pool.local_addr());
    if let Some(pem) = pool.cert_pem() {
        println!("{pem}");
    }
    let mut next = std::time::Instant::now() + every;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if std::time::Instant::now() >= next {
            next += every.max(Duration::from_millis(100));
            println!("{}", serde_json::to_string(&pool.stats())?);
        }
    }
    println!("{}", serde_json::to_string(&pool.stats())?);
    pool.shutdown();
    Ok(())
}

fn bench_proxy(args: &BenchProxyArgs) -> anyhow::Result<()> {
    let report = crate::bench_proxy::run(&crate::bench_proxy::BenchProxyOptions {
        shares: args.shares.max(10),
        rate: args.rate,
        failovers: args.failovers,
    })?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, json.clone() + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    }
    println!("{json}");
    Ok(())
}

fn synthetic_pool(args: &SyntheticPoolArgs) -> anyhow::Result<()> {
    use crate::synthetic_pool::{SyntheticPool, SyntheticPoolConfig};
    use anyhow::Context;
    let limit = crate::miner::mio_runner::raise_open_files_limit()
        .context("raising the open files limit")?;
    let difficulty =
        Difficulty::new(args.difficulty).map_err(|e| anyhow::anyhow!("--difficulty: {e}"))?;
    let mut cfg = SyntheticPoolConfig::new(args.listen, args.algo, difficulty);
    cfg.threads = args.threads;
    cfg.max_connections = args.max_connections;
    cfg.job_interval = secs("job-interval", args.job_interval).map_err(anyhow::Error::msg)?;
    let report_every = secs("report-every", args.report_every).map_err(anyhow::Error::msg)?;
    let stop = edge::telemetry::stop_on_signals().context("installing signal handlers")?;
    let mut pool = SyntheticPool::start(cfg.clone())
        .with_context(|| format!("starting the edge server on {}", args.listen))?;
    println!(
        "synthetic-pool listening on {} ({}, difficulty {}, {} connector threads, open files limit {limit})",
        pool.local_addr(),
        cfg.algorithm,
        args.difficulty,
        if cfg.threads == 0 { "one per core".to_string() } else { cfg.threads.to_string() }
    );
    let start = std::time::Instant::now();
    let tally = pool.serve(
        &stop,
        report_every.max(Duration::from_millis(100)),
        |line| println!("{line}"),
    );
    println!("{}", pool.status(start.elapsed(), tally, 0.0));
    Ok(())
}

fn synthetic_core(args: &SyntheticCoreArgs) -> anyhow::Result<()> {
    use crate::synthetic_core::SyntheticCoreConfig;
    use anyhow::Context;
    let mut cfg = SyntheticCoreConfig::new(args.gateway, args.pki.clone(), args.journal.clone());
    cfg.algorithm = args.algo;
    cfg.metrics = args.metrics;
    cfg.nbits = relay::work::CompactTarget(args.nbits);
    cfg.job_interval = secs("job-interval", args.job_interval).map_err(anyhow::Error::msg)?;
    cfg.blocks_log = args.blocks_log.clone();
    cfg.audit_per_mille = args.audit_per_mille;
    let report_every = secs("report-every", args.report_every).map_err(anyhow::Error::msg)?;
    let stop = edge::telemetry::stop_on_signals().context("installing signal handlers")?;
    crate::synthetic_core::run(&cfg, &stop, report_every, |line| info!("{line}"))
}

fn bench_uplink(args: &BenchUplinkArgs) -> anyhow::Result<ExitCode> {
    use crate::bench_uplink::UplinkBenchConfig;
    let (dir, keep) = match &args.dir {
        Some(d) => (d.clone(), true),
        None => (crate::stack::fresh_dir("quarry-bench-uplink"), false),
    };
    let cfg = UplinkBenchConfig {
        dir: dir.clone(),
        miners: args.miners,
        rate: args.rate,
        duration: secs("duration", args.duration).map_err(anyhow::Error::msg)?,
        difficulty: args.difficulty,
        block_rate: args.block_rate,
        block_duration: secs("block-duration", args.block_duration).map_err(anyhow::Error::msg)?,
        block_nbits: args.block_nbits,
        no_blocks: args.no_blocks,
    };
    let result = crate::bench_uplink::run(&cfg, |line| info!("{line}"));
    if !keep {
        crate::stack::remove_dir(&dir);
    }
    let report = result?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, json.clone() + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    }
    println!("{json}");
    let b = &report.bytes;
    if b.miners_report.rejected > 0 || b.credited < b.miners_report.accepted {
        tracing::error!(
            accepted = b.miners_report.accepted,
            credited = b.credited,
            rejected = b.miners_report.rejected,
            "the core credited fewer shares than the edge accepted, or shares were rejected"
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_stratum(args: &BenchStratumArgs) -> anyhow::Result<ExitCode> {
    use crate::bench_stratum::BenchConfig;
    let cfg = BenchConfig {
        connections: args.connections,
        idle_connections: args.idle_connections,
        duration: secs("duration", args.duration).map_err(anyhow::Error::msg)?,
        rate: args.rate,
        difficulty: args.difficulty,
        server_threads: args.server_threads,
        client_threads: args.client_threads,
        source_addrs: args.source_addrs.0.clone(),
        ramp: args.ramp,
        profile: args.profile,
        server_log: args.server_log.clone(),
        job_interval: args.job_interval,
    };
    let report = crate::bench_stratum::run(&cfg, |line| info!("{line}"))?;
    if let Some(out) = &args.out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(out, json + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    }
    println!("{report}");
    let r = &report.round_trip;
    let agree = r.server_accepted.is_none_or(|n| n == r.accepted);
    if r.miners.shares.pool_verdicts_correct() && agree {
        Ok(ExitCode::SUCCESS)
    } else {
        if !agree {
            tracing::error!(client = r.accepted, server = ?r.server_accepted, "accepted share counts disagree");
        }
        Ok(ExitCode::from(2))
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
    let engine = args.engine();
    if engine == Engine::Mio {
        if let Err(e) = crate::miner::mio_runner::raise_open_files_limit() {
            tracing::warn!("cannot raise the open files limit: {e}");
        }
    }
    info!(
        url = %config.url, miners = config.miners, algo = %config.algorithm,
        hashrate = config.hashrate, profile = ?config.profile, %engine, "starting miners"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stats = match engine.run(&config, stop, |p| info!("{p}")) {
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

fn storm_worker(a: &StormWorkerArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let stop = edge::telemetry::stop_on_signals().context("installing signal handlers")?;
    if a.nice != 0 {
        // SAFETY: setpriority only reads its integer arguments; 0 means this process.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, a.nice) };
        if rc != 0 {
            anyhow::bail!(
                "setpriority({}): {}",
                a.nice,
                std::io::Error::last_os_error()
            );
        }
    }
    let r = crate::storm::run_worker(
        a.target,
        a.attempts,
        &a.sources.0,
        Duration::from_secs_f64(a.timeout),
        Duration::from_secs_f64(a.hold),
        &stop,
    )?;
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&r)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}

fn run_scenario(args: &RunArgs) -> anyhow::Result<ExitCode> {
    use crate::scenario::{run, summary, write_outputs, RunOptions, Scenario};
    use anyhow::Context;
    let scenario = Scenario::load(&args.scenario)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::path::Path::new("target/scenarios").join(&scenario.name));
    let stop = edge::telemetry::stop_on_signals().context("installing signal handlers")?;
    let opts = RunOptions {
        out: out.clone(),
        miners: args.miners,
        duration_secs: args.duration,
    };
    let report = run(&scenario, &opts, stop, |line| info!("{line}"))?;
    write_outputs(&report, &out)?;
    print!("{}", summary(&report));
    println!("report: {}", out.join("report.json").display());
    Ok(
        if report.lost == 0 && report.double_credited == 0 && report.settled {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        },
    )
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
    fn engine_defaults_to_mio_above_64_miners_and_new_knobs_reach_the_run_config() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["quarry-loadtest", "miners"];
            argv.extend_from_slice(extra);
            let Command::Miners(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("expected the miners subcommand")
            };
            args
        };
        assert_eq!(parse(&["--count", "64"]).engine(), Engine::Threads);
        assert_eq!(parse(&["--count", "65"]).engine(), Engine::Mio);
        assert_eq!(
            parse(&["--count", "9", "--engine", "mio"]).engine(),
            Engine::Mio
        );
        let c = parse(&[
            "--source-addrs",
            "127.0.0.1-3",
            "--ramp",
            "500",
            "--threads",
            "3",
        ])
        .to_config()
        .unwrap();
        assert_eq!(c.source_addrs.len(), 3);
        assert_eq!(c.ramp, Some(500.0));
        assert_eq!(c.threads, 3);
        let cli = Cli::try_parse_from([
            "quarry-loadtest",
            "bench-stratum",
            "--connections",
            "10",
            "--out",
            "r.json",
        ])
        .unwrap();
        let Command::BenchStratum(b) = cli.command else {
            panic!("expected bench-stratum")
        };
        assert_eq!((b.connections, b.idle_connections), (10, 10_000));
        assert_eq!(b.source_addrs.0.len(), 4);
        let cli = Cli::try_parse_from([
            "quarry-loadtest",
            "synthetic-pool",
            "--listen",
            "127.0.0.1:4000",
            "--difficulty",
            "9.3e-10",
        ])
        .unwrap();
        let Command::SyntheticPool(p) = cli.command else {
            panic!("expected synthetic-pool")
        };
        assert_eq!(p.difficulty, 9.3e-10);
        assert_eq!(p.algo, PowAlgorithm::Sha256d);
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
