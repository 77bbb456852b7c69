//! A core shard with made-up work: the real edge gateway fed by a synthetic job source.
//!
//! Litecoind in regtest cannot drive the uplink hard: its network target is so easy that about
//! every other share is a block. To measure the edge → core path at thousands of shares per
//! second, this module runs the REAL [`core_pool::gateway::Gateway`] (QUIC with mutual TLS, the
//! shard journal with group commit, audits, acks, metrics) and replaces only the job manager
//! with [`SyntheticJobs`]: mainnet-shaped sha256d jobs ([`crate::synthetic_pool::synthetic_job`]:
//! 12-level merkle branch, coinbase halves of ~64 and ~95 bytes), nBits `0x1d00ffff` by
//! default (a share is a block about once in a billion at load-test difficulties), a new job
//! every 30 s.
//!
//! **This is a simulator.** [`SyntheticJobs::submit_block`] does not build or submit a block:
//! it records when the gateway called it (and which share it was, so the caller can look up
//! the share's `received_at_ms` at the edge in the journal) and answers "accepted". Choose an
//! easy nBits (e.g. `0x20020000`) to make a few per cent of shares block candidates and
//! measure how long a block takes from the edge to the submit call.

use crate::synthetic_pool::synthetic_job;
use anyhow::Context;
use core_pool::daemon::BlockTemplate;
use core_pool::gateway::{Gateway, GatewayConfig, JobSource};
use core_pool::jobs::{
    BlockCandidate, BlockOutcome, BlockVerdict, JobReason, PoolJob, SubmitError,
};
use core_pool::ledger::Ledger;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use relay::work::{BlockHeader, CompactTarget, JobId, Target};
use relay::{Hash256, PowAlgorithm};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Jobs the source remembers (the gateway audits shares only on jobs it still knows).
const JOBS_KEPT: usize = 16;
/// The edge identity the generated PKI issues a certificate for.
pub const EDGE_ID: &str = "farm-1";

/// One `submit_block` call, as written (a JSON line) to the blocks log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubmittedBlock {
    pub job_id: String,
    /// extranonce1 ‖ extranonce2, hex (the coinbase between coinb1 and coinb2).
    pub extranonce: String,
    /// As in `mining.submit`: 8 hex digits.
    pub ntime: String,
    pub nonce: String,
    /// When the gateway called `submit_block`, microseconds since the Unix epoch.
    pub submitted_at_us: u64,
}

impl SubmittedBlock {
    /// `job/extranonce1‖extranonce2/ntime/nonce`, the key that joins a submit with its share.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.job_id, self.extranonce, self.ntime, self.nonce
        )
    }
}

/// The job manager's stand-in: synthetic jobs on a timer, block submits recorded not sent.
pub struct SyntheticJobs {
    nbits: CompactTarget,
    jobs: Mutex<VecDeque<Arc<PoolJob>>>,
    subscribers: Mutex<Vec<Sender<Arc<PoolJob>>>>,
    next_seq: AtomicU64,
    /// Added to the job counter in job ids: a restarted synthetic core must not reuse the ids
    /// of its previous run (replayed shares would be judged against the wrong jobs), just as
    /// the real job manager's ids start from the clock.
    id_base: u64,
    template: Arc<BlockTemplate>,
    blocks_log: Option<Mutex<std::fs::File>>,
    pub submitted: AtomicU64,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn empty_template(nbits: CompactTarget, height: u64) -> BlockTemplate {
    BlockTemplate {
        height,
        previous_block_hash: Hash256([0; 32]),
        version: 0x2000_0000,
        bits: nbits,
        curtime: (unix_us() / 1_000_000) as u32,
        mintime: 0,
        coinbase_value: 312_500_000,
        transactions: Vec::new(),
        default_witness_commitment: None,
        mweb: None,
        longpoll_id: None,
    }
}

impl SyntheticJobs {
    /// A source whose jobs carry `nbits`; `blocks_log` gets one JSON line per submit.
    pub fn new(nbits: CompactTarget, blocks_log: Option<&Path>) -> anyhow::Result<Self> {
        Target::from_compact(nbits).map_err(|e| anyhow::anyhow!("nbits {:08x}: {e}", nbits.0))?;
        let blocks_log = match blocks_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening the blocks log {}", p.display()))?,
            )),
            None => None,
        };
        Ok(SyntheticJobs {
            nbits,
            jobs: Mutex::new(VecDeque::new()),
            subscribers: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(1),
            id_base: unix_us() / 1000,
            template: Arc::new(empty_template(nbits, 1_000_000)),
            blocks_log,
            submitted: AtomicU64::new(0),
        })
    }

    /// Makes the next job and hands it to every subscriber; every fourth is on a new block.
    pub fn publish(&self) -> Arc<PoolJob> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        // Jobs 1-4 are on one block, 5-8 on the next...: the first job of a block, and only
        // it, has a new prevhash and says clean_jobs, as a pool's do.
        let clean = seq % 4 == 1;
        let height = 1_000_000 + ((seq - 1) / 4) as u32;
        let ntime = (unix_us() / 1_000_000) as u32;
        let job = synthetic_job(seq, height, clean, ntime);
        let job = relay::work::Job::new(
            JobId::from_counter(self.id_base + seq),
            job.prev_hash,
            job.coinb1,
            job.coinb2,
            job.merkle_branch,
            job.version,
            self.nbits,
            job.ntime,
            job.clean_jobs,
        );
        let pool_job = Arc::new(PoolJob {
            network_target: Target::from_compact(self.nbits).unwrap_or(Target::MAX),
            job,
            template: Some(self.template.clone()),
            upstream_target: None,
            version_mask: None,
            height: u64::from(height),
            created_at: Instant::now(),
            reason: if seq == 1 {
                JobReason::First
            } else if clean {
                JobReason::NewBlock
            } else {
                JobReason::Refresh
            },
        });
        {
            let mut jobs = self.jobs.lock();
            jobs.push_back(pool_job.clone());
            while jobs.len() > JOBS_KEPT {
                jobs.pop_front();
            }
        }
        self.subscribers
            .lock()
            .retain(|s| s.send(pool_job.clone()).is_ok());
        pool_job
    }
}

impl JobSource for SyntheticJobs {
    fn subscribe(&self) -> Receiver<Arc<PoolJob>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        if let Some(cur) = self.jobs.lock().back() {
            let _ = tx.send(cur.clone());
        }
        self.subscribers.lock().push(tx);
        rx
    }

    fn job(&self, id: &JobId) -> Option<Arc<PoolJob>> {
        self.jobs.lock().iter().find(|j| &j.job.id == id).cloned()
    }

    /// Records the call (time and share identity) and answers "accepted": nothing is submitted.
    fn submit_block(&self, c: BlockCandidate) -> Result<BlockOutcome, SubmitError> {
        let submitted_at_us = unix_us();
        self.submitted.fetch_add(1, Ordering::Relaxed);
        let header = BlockHeader::from_bytes(&c.header);
        let extranonce = self
            .job(&c.job_id)
            .and_then(|j| {
                let (a, b) = (j.job.coinb1.len(), j.job.coinb2.len());
                c.coinbase
                    .get(a..c.coinbase.len().checked_sub(b)?)
                    .map(hex::encode)
            })
            .unwrap_or_default();
        let record = SubmittedBlock {
            job_id: c.job_id.as_str().to_string(),
            extranonce,
            ntime: format!("{:08x}", header.time),
            nonce: format!("{:08x}", header.nonce),
            submitted_at_us,
        };
        if let Some(log) = &self.blocks_log {
            if let Ok(line) = serde_json::to_string(&record) {
                let mut f = log.lock();
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
        }
        metrics::counter!("quarry_synthetic_blocks_submitted_total").increment(1);
        Ok(BlockOutcome {
            job_id: c.job_id,
            block_hash: header.block_hash(),
            height: 0,
            verdict: BlockVerdict::Accepted,
        })
    }
}

/// How `synthetic-core` runs.
#[derive(Clone, Debug)]
pub struct SyntheticCoreConfig {
    pub gateway: SocketAddr,
    pub pki: PathBuf,
    pub journal: PathBuf,
    pub algorithm: PowAlgorithm,
    pub metrics: Option<SocketAddr>,
    pub nbits: CompactTarget,
    pub job_interval: Duration,
    pub blocks_log: Option<PathBuf>,
    pub audit_per_mille: u16,
    pub max_batch_shares: u16,
    pub max_batch_delay_ms: u32,
}

impl SyntheticCoreConfig {
    pub fn new(gateway: SocketAddr, pki: PathBuf, journal: PathBuf) -> Self {
        SyntheticCoreConfig {
            gateway,
            pki,
            journal,
            algorithm: PowAlgorithm::Sha256d,
            metrics: None,
            nbits: crate::synthetic_pool::MAINNET_LIKE_NBITS,
            job_interval: Duration::from_secs(30),
            blocks_log: None,
            audit_per_mille: 20,
            max_batch_shares: 1000,
            max_batch_delay_ms: 200,
        }
    }
}

/// Writes the operator PKI into `dir` unless its CA is already there: CA, core certificate for
/// 127.0.0.1/localhost, edge certificate [`EDGE_ID`].
pub fn ensure_pki(dir: &Path) -> anyhow::Result<()> {
    use relay::quic::certs;
    if dir.join("ca.crt").is_file() && dir.join("core.crt").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = certs::generate_ca("Quarry synthetic-core CA")?;
    ca.write(dir)?;
    certs::issue_core_cert(&ca, &["localhost".into(), "127.0.0.1".into()])?.write(dir, "core")?;
    certs::issue_edge_cert(&ca, EDGE_ID)?.write(dir, EDGE_ID)?;
    Ok(())
}

/// Runs the gateway until `stop`; prints a status line every `report_every`.
pub fn run(
    cfg: &SyntheticCoreConfig,
    stop: &AtomicBool,
    report_every: Duration,
    mut say: impl FnMut(&str),
) -> anyhow::Result<()> {
    if let Some(m) = cfg.metrics {
        let bound = edge::telemetry::serve_metrics(m)?;
        say(&format!("metrics on http://{bound}/metrics"));
    }
    ensure_pki(&cfg.pki)?;
    std::fs::create_dir_all(&cfg.journal)
        .with_context(|| format!("creating {}", cfg.journal.display()))?;
    let jobs = Arc::new(SyntheticJobs::new(cfg.nbits, cfg.blocks_log.as_deref())?);
    jobs.publish();
    let mut gcfg = GatewayConfig::new(
        cfg.gateway,
        cfg.pki.join("core.crt"),
        cfg.pki.join("core.key"),
        cfg.pki.join("ca.crt"),
        cfg.journal.clone(),
    );
    gcfg.algorithm = cfg.algorithm;
    gcfg.policies.audit_per_mille = cfg.audit_per_mille;
    gcfg.policies.max_batch_shares = cfg.max_batch_shares;
    gcfg.policies.max_batch_delay_ms = cfg.max_batch_delay_ms;
    let source: Arc<dyn JobSource> = jobs.clone();
    let gateway = Gateway::start(gcfg, source, Arc::new(Ledger::default()))
        .context("starting the edge gateway")?;
    say(&format!(
        "synthetic-core gateway on {} ({}, nbits {:08x}, a job every {:?}); SIMULATED block submits",
        gateway.local_addr(),
        cfg.algorithm,
        cfg.nbits.0,
        cfg.job_interval
    ));
    let mut last_job = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last_job.elapsed() >= cfg.job_interval {
            jobs.publish();
            last_job = Instant::now();
        }
        if last_report.elapsed() >= report_every {
            let s = gateway.stats();
            say(&format!(
                "status edges={} batches={} credited={} audited={} audit_failures={} blocks_submitted={}",
                gateway.connected_edges().len(),
                s.batches,
                s.shares_credited,
                s.shares_audited,
                s.audit_failures,
                jobs.submitted.load(Ordering::Relaxed)
            ));
            last_report = Instant::now();
        }
    }
    gateway.shutdown();
    Ok(())
}

/// Every line of a blocks log (unreadable lines are skipped).
pub fn read_blocks_log(path: &Path) -> Vec<SubmittedBlock> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_carry_the_chosen_nbits_and_old_ones_are_forgotten() {
        let jobs = SyntheticJobs::new(CompactTarget(0x2002_0000), None).expect("source");
        let rx = jobs.subscribe();
        let first = jobs.publish();
        assert_eq!(first.job.nbits, CompactTarget(0x2002_0000));
        assert_eq!(first.job.merkle_branch.len(), 12);
        assert!(rx.try_recv().is_ok());
        for _ in 0..JOBS_KEPT {
            jobs.publish();
        }
        assert!(jobs.job(&first.job.id).is_none());
    }

    /// A job on a new prevhash without clean_jobs would leave miners on work the pool has
    /// already dropped: their shares come back "stale" while they still hold the job current.
    #[test]
    fn a_job_is_clean_exactly_when_its_prevhash_is_new() {
        let jobs = SyntheticJobs::new(CompactTarget(0x1d00_ffff), None).expect("source");
        let mut prev = jobs.publish();
        assert!(prev.job.clean_jobs);
        for _ in 0..12 {
            let next = jobs.publish();
            assert_eq!(
                next.job.clean_jobs,
                next.job.prev_hash != prev.job.prev_hash,
                "job {}",
                next.job.id
            );
            prev = next;
        }
    }
}
