//! `bench-uplink`: the edge → core path measured end to end with real processes.
//!
//! The rig ([`UplinkRig`]) is `quarry-loadtest synthetic-core` (the real gateway with synthetic
//! jobs, [`crate::synthetic_core`]) as a child process, a counting UDP relay
//! ([`crate::udp_meter`]) in front of its QUIC port, and a real `quarry-edge` child process
//! connected through the relay; the mio miners ([`crate::miner::mio_runner`]) run in this
//! process against the edge. Two phases, each on a fresh rig:
//!
//! 1. **Bytes per share.** Miners at a steady rate (default 3,000 shares/s) on a hard network
//!    target (no blocks). Edge → core UDP payload bytes the relay forwarded, plus 28 bytes of
//!    IPv4 and UDP header per datagram, over the shares the core credited
//!    (`quarry_core_shares_credited_total`). QUIC's own overhead (packet headers, AEAD tags,
//!    ACK frames for the core's acks and jobs) is all included.
//! 2. **Block latency.** A low share rate on an easy nBits, so a few per cent of shares are
//!    block candidates. For each, the time the gateway called `submit_block` (recorded by the
//!    synthetic job source) minus the share's `received_at_ms` at the edge (from the journal).
//!    `received_at_ms` has millisecond resolution, so each figure may read up to 1 ms high.
//!
//! Both phases also report the miners' `mining.submit` round trip at the edge.

use crate::miner::{mio_runner, MinerStats, ProfileChoice, RunConfig, StratumUrl};
use crate::process::{find_binary, free_port, metric_sum, scrape, ManagedProcess};
use crate::synthetic_core::{read_blocks_log, EDGE_ID};
use crate::udp_meter::{DirectionSnapshot, UdpMeter};
use anyhow::{bail, Context};
use core_pool::journal::{JournalReader, RecordKind};
use relay::PowAlgorithm;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Expected sha256d hashes per share at difficulty 1.
const SHA256D_HASHES_PER_DIFF1: f64 = 4_294_967_296.0;
/// 2^-30: about four sha256d hashes per share.
pub const CHEAP_DIFFICULTY: f64 = 9.313225746154785e-10;
/// Mainnet's difficulty-1 nBits: at [`CHEAP_DIFFICULTY`] no share is a block.
pub const HARD_NBITS: u32 = 0x1d00_ffff;
/// Target 2^249 (difficulty 2^-25): one share in 32 at [`CHEAP_DIFFICULTY`] is a block.
/// (Regtest's `0x207fffff` is easier than any share at that difficulty: every share would be.)
pub const BLOCK_TEST_NBITS: u32 = 0x2002_0000;

/// What a rig runs.
#[derive(Clone, Debug)]
pub struct RigOptions {
    /// A fresh folder for the rig's files (PKI, journal, spool, configs, logs).
    pub dir: PathBuf,
    pub nbits: u32,
    /// The edge's fixed share difficulty (vardiff floor = ceiling).
    pub difficulty: f64,
    pub job_interval_secs: f64,
}

/// synthetic-core → UDP meter → quarry-edge, all running.
pub struct UplinkRig {
    // Dropped first: the edge, then the relay, then the core.
    pub edge: ManagedProcess,
    pub meter: UdpMeter,
    pub core: ManagedProcess,
    pub gateway: SocketAddr,
    pub core_metrics: SocketAddr,
    pub edge_stratum: SocketAddr,
    pub edge_metrics: SocketAddr,
    pub journal: PathBuf,
    pub blocks_log: PathBuf,
    pub dir: PathBuf,
}

/// A UDP port on 127.0.0.1 free right now.
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl UplinkRig {
    pub fn start(opts: &RigOptions) -> anyhow::Result<UplinkRig> {
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::process::clear_run_state(dir, &["journal", "spool", "blocks.jsonl"])?;
        let pki = dir.join("pki");
        crate::synthetic_core::ensure_pki(&pki)?;
        let gateway: SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
        let core_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let journal = dir.join("journal");
        let blocks_log = dir.join("blocks.jsonl");
        let me = find_binary("quarry-loadtest")?;
        let args = [
            "synthetic-core".to_string(),
            "--gateway".into(),
            gateway.to_string(),
            "--pki".into(),
            pki.display().to_string(),
            "--journal".into(),
            journal.display().to_string(),
            "--algo".into(),
            "sha256d".into(),
            "--metrics".into(),
            core_metrics.to_string(),
            "--nbits".into(),
            format!("{:08x}", opts.nbits),
            "--job-interval".into(),
            opts.job_interval_secs.to_string(),
            "--blocks-log".into(),
            blocks_log.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut core = ManagedProcess::spawn(
            "synthetic-core",
            &me,
            &args,
            &dir.join(format!("core-{}.log", now_ms())),
        )?;
        core.wait_for_port(core_metrics, Duration::from_secs(30))?;
        let meter =
            UdpMeter::start("127.0.0.1:0".parse()?, gateway).context("starting the UDP meter")?;
        let edge_stratum: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let edge_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = dir.join("edge.toml");
        std::fs::write(
            &config,
            edge_config_text(
                dir,
                meter.listen,
                edge_stratum,
                edge_metrics,
                opts.difficulty,
            ),
        )?;
        let bin = find_binary("quarry-edge")?;
        let config_arg = config.display().to_string();
        let mut edge = ManagedProcess::spawn(
            "quarry-edge",
            &bin,
            &["run", "--config", &config_arg],
            &dir.join(format!("edge-{}.log", now_ms())),
        )?;
        edge.wait_for_port(edge_stratum, Duration::from_secs(60))?;
        let rig = UplinkRig {
            edge,
            meter,
            core,
            gateway,
            core_metrics,
            edge_stratum,
            edge_metrics,
            journal,
            blocks_log,
            dir: dir.clone(),
        };
        rig.wait_connected(Duration::from_secs(30))?;
        Ok(rig)
    }

    /// Waits until the edge's `quarry_edge_uplink_connected` gauge reads 1.
    pub fn wait_connected(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self
            .edge_metric("quarry_edge_uplink_connected")
            .unwrap_or(0.0)
            < 1.0
        {
            if Instant::now() > deadline {
                bail!("the edge did not connect to the core within {limit:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn edge_metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&scrape(self.edge_metrics)?, name))
    }

    pub fn core_metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&scrape(self.core_metrics)?, name))
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.core.check_alive()?;
        self.edge.check_alive()
    }

    /// Waits (up to `limit`) until the core has credited every share the edge accepted.
    pub fn settle(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let accepted = accepted_shares(&scrape(self.edge_metrics)?);
            let acked = self.edge_metric("quarry_edge_shares_acked_total")?;
            let pending = self.edge_metric("quarry_edge_spool_pending_shares")?;
            if acked >= accepted && pending == 0.0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not settled after {limit:?}: edge accepted {accepted}, acked {acked}, {pending} pending");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the edge and the core (SIGTERM), so the journal can be read.
    pub fn stop(&mut self) {
        self.edge.stop(Duration::from_secs(10));
        self.core.stop(Duration::from_secs(10));
    }
}

/// `quarry_edge_shares_total{result="accepted"}`.
pub fn accepted_shares(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("quarry_edge_shares_total{") && l.contains("result=\"accepted\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn edge_config_text(
    dir: &Path,
    core: SocketAddr,
    stratum: SocketAddr,
    metrics: SocketAddr,
    difficulty: f64,
) -> String {
    let pki = dir.join("pki");
    format!(
        r#"# Written by quarry-loadtest (uplink rig).
[edge]
id = "{EDGE_ID}"
algorithm = "sha256d"
spool_dir = "{spool}"

[core]
endpoints = ["{core}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[stratum]
listen = "{stratum}"
start_difficulty = {difficulty:e}
min_difficulty = {difficulty:e}
max_difficulty = {difficulty:e}

[limits]
max_connections = 15000

[metrics]
listen = "{metrics}"
"#,
        spool = dir.join("spool").display(),
        ca = pki.join("ca.crt").display(),
        cert = pki.join(format!("{EDGE_ID}.crt")).display(),
        key = pki.join(format!("{EDGE_ID}.key")).display(),
    )
}

/// Miners against the rig's edge at `rate` shares/s together, in a background thread.
pub struct Miners {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<MinerStats, crate::miner::RunError>>,
}

impl Miners {
    pub fn start(cfg: RunConfig) -> Miners {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || mio_runner::run(&cfg, s, |_| {}));
        Miners { stop, handle }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub fn finish(self) -> anyhow::Result<MinerStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(r) => Ok(r?),
            Err(_) => bail!("the miner runner panicked"),
        }
    }
}

/// A miner configuration for `miners` connections submitting `rate` shares/s together.
pub fn miner_config(
    edge: SocketAddr,
    miners: usize,
    rate: f64,
    difficulty: f64,
    duration: Option<Duration>,
) -> RunConfig {
    let mut rc = RunConfig::new(
        StratumUrl {
            host: edge.ip().to_string(),
            port: edge.port(),
        },
        miners,
        PowAlgorithm::Sha256d,
    );
    rc.hashrate = rate / miners.max(1) as f64 * difficulty * SHA256D_HASHES_PER_DIFF1;
    rc.profile = ProfileChoice::Mixed;
    rc.user = "bench.rig".into();
    rc.duration = duration;
    rc.ramp = Some(500.0);
    rc.progress_every = Duration::from_millis(500);
    rc.drain_timeout = Duration::from_secs(5);
    rc.backoff_max = Duration::from_millis(500);
    rc
}

/// What to run.
#[derive(Clone, Debug)]
pub struct UplinkBenchConfig {
    pub dir: PathBuf,
    pub miners: usize,
    /// Shares per second in the bytes phase.
    pub rate: f64,
    pub duration: Duration,
    pub difficulty: f64,
    /// Shares per second in the block phase.
    pub block_rate: f64,
    pub block_duration: Duration,
    pub block_nbits: u32,
    /// Skip the block phase.
    pub no_blocks: bool,
}

pub use crate::bench_stratum::{machine, Machine};

#[derive(Clone, Debug, Serialize)]
pub struct MinerLatency {
    pub accepted: u64,
    pub rejected: u64,
    pub accepted_per_sec: f64,
    pub submit_p50_us: u64,
    pub submit_p99_us: u64,
    pub submit_max_us: u64,
}

impl MinerLatency {
    fn of(s: &MinerStats) -> Self {
        MinerLatency {
            accepted: s.shares.accepted,
            rejected: s.shares.rejected,
            accepted_per_sec: s.accepted_per_sec(),
            submit_p50_us: s.latency_us.p50,
            submit_p99_us: s.latency_us.p99,
            submit_max_us: s.latency_us.max,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BytesReport {
    pub miners: usize,
    pub target_shares_per_sec: f64,
    pub difficulty: f64,
    pub duration_secs: f64,
    pub credited: u64,
    pub edge_shares_sent: u64,
    pub edge_batches_sent: u64,
    pub mean_batch_shares: f64,
    /// Stream bytes the edge wrote (`quarry_edge_wire_bytes_total`): relay::wire payload alone.
    pub edge_stream_bytes: u64,
    pub edge_to_core: DirectionSnapshot,
    pub core_to_edge: DirectionSnapshot,
    pub stream_bytes_per_share: f64,
    pub udp_payload_bytes_per_share: f64,
    /// UDP payload + 28 bytes per datagram (IPv4 + UDP headers).
    pub wire_bytes_per_share: f64,
    pub core_to_edge_wire_bytes_per_share: f64,
    pub miners_report: MinerLatency,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    pub nbits: String,
    pub target_shares_per_sec: f64,
    pub duration_secs: f64,
    pub shares_credited: u64,
    pub blocks_submitted: usize,
    /// Submits matched with their share in the journal.
    pub blocks_measured: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub latency_ms_mean: f64,
    pub miners_report: MinerLatency,
}

#[derive(Clone, Debug, Serialize)]
pub struct UplinkReport {
    pub machine: Machine,
    pub bytes: BytesReport,
    pub blocks: Option<BlockReport>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run_miners(
    rig: &mut UplinkRig,
    cfg: RunConfig,
    say: &mut impl FnMut(&str),
) -> anyhow::Result<MinerStats> {
    let miners = Miners::start(cfg);
    let mut last = Instant::now();
    while !miners.is_finished() {
        rig.check_alive()?;
        if last.elapsed() >= Duration::from_secs(5) {
            let credited = rig.core_metric("quarry_core_shares_credited_total")?;
            say(&format!("  core credited {credited}"));
            last = Instant::now();
        }
        thread::sleep(Duration::from_millis(200));
    }
    miners.finish()
}

/// Phase 1: bytes per share.
pub fn bytes_phase(
    cfg: &UplinkBenchConfig,
    mut say: impl FnMut(&str),
) -> anyhow::Result<BytesReport> {
    let mut rig = UplinkRig::start(&RigOptions {
        dir: cfg.dir.join("bytes"),
        nbits: HARD_NBITS,
        difficulty: cfg.difficulty,
        job_interval_secs: 30.0,
    })?;
    say(&format!(
        "bytes: rig up (gateway {}, relay {}, edge {}); {} miners at {} shares/s for {:?}",
        rig.gateway, rig.meter.listen, rig.edge_stratum, cfg.miners, cfg.rate, cfg.duration
    ));
    let up0 = rig.meter.stats.to_target.snapshot();
    let down0 = rig.meter.stats.to_client.snapshot();
    let credited0 = rig.core_metric("quarry_core_shares_credited_total")?;
    let sent0 = rig.edge_metric("quarry_edge_shares_sent_total")?;
    let batches0 = rig.edge_metric("quarry_edge_batches_sent_total")?;
    let stream0 = rig.edge_metric("quarry_edge_wire_bytes_total")?;
    let t0 = Instant::now();
    let ramp = Duration::from_secs_f64(cfg.miners as f64 / 500.0);
    let edge = rig.edge_stratum;
    let stats = run_miners(
        &mut rig,
        miner_config(
            edge,
            cfg.miners,
            cfg.rate,
            cfg.difficulty,
            Some(cfg.duration + ramp),
        ),
        &mut say,
    )?;
    rig.settle(Duration::from_secs(30))?;
    // The last acks' ACKs.
    thread::sleep(Duration::from_millis(500));
    let duration_secs = t0.elapsed().as_secs_f64();
    let up = rig.meter.stats.to_target.snapshot().since(&up0);
    let down = rig.meter.stats.to_client.snapshot().since(&down0);
    let credited = (rig.core_metric("quarry_core_shares_credited_total")? - credited0) as u64;
    let sent = (rig.edge_metric("quarry_edge_shares_sent_total")? - sent0) as u64;
    let batches = (rig.edge_metric("quarry_edge_batches_sent_total")? - batches0) as u64;
    let stream = (rig.edge_metric("quarry_edge_wire_bytes_total")? - stream0) as u64;
    rig.stop();
    let per = |b: u64| b as f64 / credited.max(1) as f64;
    Ok(BytesReport {
        miners: cfg.miners,
        target_shares_per_sec: cfg.rate,
        difficulty: cfg.difficulty,
        duration_secs,
        credited,
        edge_shares_sent: sent,
        edge_batches_sent: batches,
        mean_batch_shares: sent as f64 / batches.max(1) as f64,
        edge_stream_bytes: stream,
        edge_to_core: up,
        core_to_edge: down,
        stream_bytes_per_share: per(stream),
        udp_payload_bytes_per_share: per(up.payload_bytes),
        wire_bytes_per_share: per(up.wire_bytes()),
        core_to_edge_wire_bytes_per_share: per(down.wire_bytes()),
        miners_report: MinerLatency::of(&stats),
    })
}

/// `job/extranonce1‖extranonce2/ntime/nonce` → `received_at_ms` of every block record.
pub fn journal_blocks(journal: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let mut reader = JournalReader::open(journal)
        .with_context(|| format!("opening the journal {}", journal.display()))?;
    let mut out = HashMap::new();
    for share in reader.shares()? {
        let j = share?;
        if j.kind != RecordKind::Block {
            continue;
        }
        let s = &j.share;
        out.insert(
            format!(
                "{}/{}{}/{:08x}/{:08x}",
                s.job_id.as_str(),
                s.extranonce1.to_hex(),
                s.extranonce2.to_hex(),
                s.ntime,
                s.nonce
            ),
            s.received_at_ms,
        );
    }
    Ok(out)
}

/// Phase 2: block candidate latency, edge receipt → `submit_block` at the core.
pub fn block_phase(
    cfg: &UplinkBenchConfig,
    mut say: impl FnMut(&str),
) -> anyhow::Result<BlockReport> {
    let mut rig = UplinkRig::start(&RigOptions {
        dir: cfg.dir.join("blocks"),
        nbits: cfg.block_nbits,
        difficulty: cfg.difficulty,
        job_interval_secs: 30.0,
    })?;
    let miners = cfg.miners.min(100);
    say(&format!(
        "blocks: nbits {:08x}, {miners} miners at {} shares/s for {:?}",
        cfg.block_nbits, cfg.block_rate, cfg.block_duration
    ));
    let t0 = Instant::now();
    let edge = rig.edge_stratum;
    let stats = run_miners(
        &mut rig,
        miner_config(
            edge,
            miners,
            cfg.block_rate,
            cfg.difficulty,
            Some(cfg.block_duration),
        ),
        &mut say,
    )?;
    rig.settle(Duration::from_secs(30))?;
    let duration_secs = t0.elapsed().as_secs_f64();
    let credited = rig.core_metric("quarry_core_shares_credited_total")? as u64;
    rig.stop();
    let submits = read_blocks_log(&rig.blocks_log);
    let received = journal_blocks(&rig.journal)?;
    let mut lat: Vec<f64> = submits
        .iter()
        .filter_map(|b| {
            let at = *received.get(&b.key())?;
            Some(b.submitted_at_us as f64 / 1000.0 - at as f64)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    Ok(BlockReport {
        nbits: format!("{:08x}", cfg.block_nbits),
        target_shares_per_sec: cfg.block_rate,
        duration_secs,
        shares_credited: credited,
        blocks_submitted: submits.len(),
        blocks_measured: lat.len(),
        latency_ms_p50: percentile(&lat, 50.0),
        latency_ms_p99: percentile(&lat, 99.0),
        latency_ms_max: lat.last().copied().unwrap_or(0.0),
        latency_ms_mean: mean,
        miners_report: MinerLatency::of(&stats),
    })
}

/// Both phases.
pub fn run(cfg: &UplinkBenchConfig, mut say: impl FnMut(&str)) -> anyhow::Result<UplinkReport> {
    mio_runner::raise_open_files_limit().context("raising the open files limit")?;
    let bytes = bytes_phase(cfg, &mut say)?;
    say(&format!(
        "bytes: {:.2} B/share on the wire edge→core ({:.2} UDP payload, {:.2} stream), mean batch {:.1}",
        bytes.wire_bytes_per_share,
        bytes.udp_payload_bytes_per_share,
        bytes.stream_bytes_per_share,
        bytes.mean_batch_shares
    ));
    let blocks = if cfg.no_blocks {
        None
    } else {
        let b = block_phase(cfg, &mut say)?;
        say(&format!(
            "blocks: {} measured of {} submitted: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            b.blocks_measured,
            b.blocks_submitted,
            b.latency_ms_p50,
            b.latency_ms_p99,
            b.latency_ms_max
        ));
        Some(b)
    };
    Ok(UplinkReport {
        machine: machine(),
        bytes,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn block_test_nbits_make_about_one_share_in_32_a_block() {
        use relay::work::{CompactTarget, Target};
        let net = Target::from_compact(CompactTarget(BLOCK_TEST_NBITS)).expect("nbits");
        // A share's target is about 2^224 / difficulty; P(block | share) = network / share target.
        let share_target = 2.0f64.powi(224) / CHEAP_DIFFICULTY;
        let ratio = net.to_f64() / share_target;
        assert!((ratio - 1.0 / 32.0).abs() < 1e-3, "{ratio}");
    }
}
