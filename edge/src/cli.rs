//! Command line of `quarry-edge`.

use crate::edge_config::EdgeConfig;
use crate::spool::{existing_lanes, BatchSpool, LaneWriter};
use crate::uplink::{read_lease, ServerSlot, Uplink, UplinkConfig};
use clap::{Parser, Subcommand};
use relay::seglog::SegLogConfig;
use relay::wire::BatchContext;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "quarry-edge",
    version,
    about = "Quarry edge relay: local Stratum, validated shares, QUIC uplink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the edge with a configuration file.
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quarry-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            EdgeConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let cfg = EdgeConfig::load(&config)?;
            crate::telemetry::init_logging(cfg.log_format);
            serve(cfg)
        }
    }
}

fn serve(cfg: EdgeConfig) -> anyhow::Result<()> {
    let metrics = crate::telemetry::serve_metrics(cfg.metrics_listen)?;
    let seg = SegLogConfig {
        segment_bytes: 64 << 20,
        max_total_bytes: cfg.spool_max_bytes,
        fsync: true,
    };
    std::fs::create_dir_all(&cfg.spool_dir)?;
    let spool = BatchSpool::open(&cfg.spool_dir, seg)?;
    // One lane per connector thread; never fewer than lanes already on disk.
    let probe = cfg.server_config(relay::work::Extranonce::default(), 4)?;
    let on_disk = existing_lanes(&cfg.spool_dir);
    let threads = crate::server::thread_count(&probe)
        .max(on_disk.iter().map(|l| *l as usize + 1).max().unwrap_or(0));
    let mut lanes = Vec::new();
    let mut recovered = Vec::new();
    for lane in 0..threads as u16 {
        let mut w = LaneWriter::open(&cfg.spool_dir, lane, seg)?;
        for (idx, mut ev) in w.pending_after(spool.marks.get(&lane).copied())? {
            match &mut ev {
                crate::share::ShareEvent::Accepted(s) => s.spool_ref = Some((lane, idx)),
                crate::share::ShareEvent::Block(b) => b.share.spool_ref = Some((lane, idx)),
            }
            recovered.push(ev);
        }
        lanes.push(w);
    }
    if !recovered.is_empty() {
        tracing::info!(
            shares = recovered.len(),
            "recovered shares from the spool that no batch covered yet"
        );
    }
    let stop = crate::telemetry::stop_on_signals()?;
    let lease = read_lease(&cfg.spool_dir).map(|(p, s)| BatchContext {
        lease_prefix: p,
        extranonce2_size: s,
    });
    let slot = ServerSlot::default();
    let (lease_tx, lease_rx) = crossbeam_channel::unbounded();
    let uplink = Uplink::new(
        UplinkConfig {
            edge_id: cfg.edge_id.clone(),
            endpoints: cfg.endpoints.clone(),
            client: cfg.client.clone(),
            spool_dir: cfg.spool_dir.clone(),
            default_max_batch_shares: cfg.max_batch_shares,
            default_max_batch_delay: cfg.max_batch_delay,
            max_job_age: cfg.max_job_age,
            algorithm: cfg.algorithm,
            fallback: cfg.fallback.clone(),
        },
        spool,
        slot.clone(),
        lease,
        Some(lease_tx),
    );
    let share_sink = uplink.share_sink();
    let uplink_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || uplink.run(recovered, stop))?
    };
    let ctx = match lease {
        Some(c) => c,
        None => {
            tracing::info!("new edge: waiting for the core to assign an extranonce lease");
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if let Ok(c) = lease_rx.recv_timeout(Duration::from_millis(200)) {
                    break c;
                }
            }
        }
    };
    let mut server_cfg = cfg.server_config(ctx.lease_prefix, ctx.extranonce2_size)?;
    server_cfg.threads = threads;
    let server = Arc::new(crate::server::start_with_spool(
        server_cfg, share_sink, lanes,
    )?);
    slot.set(server.clone());
    println!(
        "edge stratum: stratum+tcp://{}  metrics: http://{metrics}/metrics",
        server.local_addr()
    );
    tracing::info!(edge = %cfg.edge_id.as_str(), stratum = %server.local_addr(), "quarry-edge running");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("shutting down");
    drop(slot);
    if let Ok(Err(e)) = uplink_thread.join() {
        tracing::error!(error = %format!("{e:#}"), "uplink stopped with an error");
    }
    Ok(())
}
