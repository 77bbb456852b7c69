//! `quarry-loadtest stack`: the README's main command.

use crate::cli::StackArgs;
use crate::miner::{self, ProfileChoice, RunConfig, StratumUrl};
use crate::process::metric_sum;
use crate::process::scrape;
use crate::stack::{fresh_dir, remove_dir, Stack, StackOptions};
use anyhow::Context;
use relay::PowAlgorithm;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn run(args: &StackArgs) -> anyhow::Result<ExitCode> {
    let duration = Duration::try_from_secs_f64(args.duration)
        .map_err(|_| anyhow::anyhow!("--duration {}: not a number of seconds", args.duration))?;
    let stop = edge::telemetry::stop_on_signals()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| fresh_dir("quarry-stack"));
    let stack = Stack::start(&StackOptions {
        edge: !args.no_edge,
        ..StackOptions::new(dir.clone())
    })?;
    // Miners use the edge when there is one, as a farm would.
    let (mine_at, stratum_metrics) = match &stack.edge {
        Some(e) => (e.stratum, e.metrics),
        None => (stack.core_stratum, stack.core_metrics),
    };
    println!("stack folder: {}", dir.display());
    for line in stack.service_lines() {
        println!("{line}");
    }
    let start_height = stack.block_count()?;
    let started = Instant::now();
    let miners = if args.miners > 0 {
        let mut cfg = RunConfig::new(
            StratumUrl {
                host: mine_at.ip().to_string(),
                port: mine_at.port(),
            },
            args.miners,
            PowAlgorithm::Scrypt,
        );
        cfg.hashrate = args.hashrate;
        cfg.profile = ProfileChoice::Mixed;
        cfg.user = "farm.rig".into();
        cfg.duration = None;
        cfg.progress_every = Duration::from_secs(3600);
        let stop = stop.clone();
        Some(std::thread::spawn(move || miner::run(&cfg, stop, |_| {})))
    } else {
        println!("no miners started: point yours at stratum+tcp://{mine_at}");
        None
    };
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            progress(&stack, stratum_metrics, start_height, started);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let stats = match miners {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("miner thread panicked"))?
                .context("miners")?,
        ),
        None => None,
    };
    // Let the last block submissions land before reading the chain.
    std::thread::sleep(Duration::from_millis(1500));
    progress(&stack, stratum_metrics, start_height, started);
    let height = stack.block_count()?;
    let body = scrape(stack.core_metrics).unwrap_or_default();
    println!("--- summary ---");
    if let Some(s) = &stats {
        println!("{s}");
    }
    println!(
        "blocks accepted by litecoind: {} (height {} -> {}); core credited {} shares, submitted {} blocks, {} accepted",
        height.saturating_sub(start_height),
        start_height,
        height,
        metric_sum(&body, "quarry_core_shares_credited_total"),
        metric_sum(&body, "quarry_core_blocks_found_total"),
        metric_sum(&body, "quarry_core_blocks_accepted_total"),
    );
    let ok = stats
        .as_ref()
        .is_none_or(|s| s.shares.pool_verdicts_correct());
    stack.stop();
    if args.keep {
        println!("kept {}", dir.display());
    } else {
        remove_dir(&dir);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn progress(
    stack: &Stack,
    stratum_metrics: std::net::SocketAddr,
    start_height: u64,
    started: Instant,
) {
    let height = stack.block_count().unwrap_or(start_height);
    let core = scrape(stack.core_metrics).unwrap_or_default();
    let body = scrape(stratum_metrics).unwrap_or_default();
    println!(
        "[{:>4}s] miners {:>3}  shares accepted {:>6}  rejected {:>4}  credited at core {:>6}  blocks found {:>4}  accepted by litecoind {:>4}  height {}",
        started.elapsed().as_secs(),
        metric_sum(&body, "quarry_edge_miners_connected"),
        metric_sum_labeled(&body, "quarry_edge_shares_total", "accepted"),
        metric_sum(&body, "quarry_edge_shares_total") - metric_sum_labeled(&body, "quarry_edge_shares_total", "accepted"),
        metric_sum(&core, "quarry_core_shares_credited_total"),
        metric_sum(&core, "quarry_core_blocks_found_total"),
        height.saturating_sub(start_height),
        height
    );
}

fn metric_sum_labeled(body: &str, name: &str, result: &str) -> f64 {
    let needle = format!("result=\"{result}\"");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(&needle))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
