//! Proxy mining: the farms' hashrate goes to larger external pools instead of a coin daemon.
//!
//! When a shard has no daemon of its own, or too little hashrate to find blocks steadily, it
//! mines *for* an upstream pool: [`ProxyPool`] keeps one Stratum connection to each configured
//! upstream ([`relay::upstream`]), picks which one gets the work ([`selector`]), turns that
//! upstream's jobs into Quarry jobs ([`translate`]) for edges and direct miners, and forwards the
//! shares that meet the upstream's target. Every valid share is still credited locally (the
//! gateway and the share processor do that as in pool mode), so per-miner accounting and
//! stats work the same whoever pays the farm.
//!
//! [`ProxyPool`] is a [`JobSource`], like the daemon's job manager: the gateway and the
//! in-process Stratum server cannot tell them apart, except that a share flagged
//! `meets_upstream` is handed to [`JobSource::forward_share`], and a block candidate becomes an
//! upstream submit at once.
//!
//! Threads: one manager thread owns the upstream connections, the selector and the job
//! history's writes; each connection has its own thread (`relay::upstream::conn`). Forwarded
//! shares reach the manager over a channel and leave for the upstream within one wake-up.

pub mod alarm;
pub mod selector;
pub mod translate;

mod manager;

use crate::gateway::JobSource;
use crate::jobs::{BlockCandidate, BlockOutcome, BlockVerdict, PoolJob, SubmitError};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use relay::upstream::PoolUrl;
use relay::wire::ShareData;
use relay::work::{ExtranonceLayout, JobId, VersionMask};
use relay::{Hash256, PowAlgorithm};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use selector::SelectionMode;
pub use translate::JobOrigin;

/// One upstream pool as configured.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    /// Shown in logs and metric labels.
    pub name: String,
    pub url: PoolUrl,
    pub user: String,
    pub password: String,
    /// Share of the hashrate in split mode.
    pub weight: u32,
    /// PEM roots for `stratum+ssl://` (default: the system bundle).
    pub tls_ca: Option<PathBuf>,
}

/// Settings of a [`ProxyPool`] (the `[proxy]` config section).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// In priority order.
    pub upstreams: Vec<UpstreamSpec>,
    pub mode: SelectionMode,
    /// A higher-priority upstream must be up this long before work goes back to it.
    pub failback: Duration,
    /// Split mode: the period whose slices are shared out by weight.
    pub split_period: Duration,
    pub algorithm: PowAlgorithm,
    /// Our extranonce space (it must fit in every upstream's extranonce2).
    pub layout: ExtranonceLayout,
    /// The version-rolling mask to ask upstreams for (`None`: no rolling).
    pub version_rolling: Option<VersionMask>,
    /// Consecutive rejects of forwarded shares that raise the alarm.
    pub reject_alarm_after: u32,
    /// How long an upstream that keeps rejecting after a resubscribe gets no work.
    pub demote_for: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A forwarded share unanswered this long means the upstream is hung: it loses the work
    /// (failover) and is reconnected.
    pub answer_timeout: Duration,
    /// Nothing at all from an upstream for this long: the connection is dead.
    pub idle_timeout: Duration,
    /// Reconnect backoff after a failed or lost connection.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A block candidate's upstream verdict is awaited this long by `submit_block`.
    pub block_answer_timeout: Duration,
}

impl ProxyConfig {
    pub fn new(upstreams: Vec<UpstreamSpec>, algorithm: PowAlgorithm) -> Self {
        ProxyConfig {
            upstreams,
            mode: SelectionMode::Failover,
            failback: Duration::from_secs(30),
            split_period: Duration::from_secs(10),
            algorithm,
            layout: ExtranonceLayout::default(),
            version_rolling: Some(VersionMask::BIP320),
            reject_alarm_after: 5,
            demote_for: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            block_answer_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("[proxy] needs at least one upstream")]
    NoUpstreams,
    #[error("upstream {name}: TLS roots: {reason}")]
    TlsRoots { name: String, reason: String },
    #[error("cannot start the proxy manager thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Counters of one upstream, for tests, logs and the operator.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpstreamStats {
    pub name: String,
    pub connected: bool,
    pub active: bool,
    pub difficulty: Option<f64>,
    pub connections: u64,
    pub jobs: u64,
    pub forwarded: u64,
    pub accepted: u64,
    /// By the upstream's reason (`"23 Low difficulty share"`, `"timeout"`).
    pub rejected: BTreeMap<String, u64>,
    /// Sum of the upstream difficulty of accepted shares (what the upstream credits us for).
    pub accepted_difficulty: f64,
    pub alarms: u64,
    /// Times work moved to this upstream from another one.
    pub activations: u64,
    /// Mean answer time of forwarded shares, seconds.
    pub mean_answer_secs: f64,
}

/// Upstream verdicts per worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerUpstreamStats {
    pub forwarded: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
}

/// Shares not forwarded, by reason (see [`translate::ForwardError`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyStats {
    pub upstreams: Vec<UpstreamStats>,
    /// By (upstream name, worker).
    pub workers: BTreeMap<String, BTreeMap<String, WorkerUpstreamStats>>,
    pub not_forwarded: BTreeMap<String, u64>,
    pub failovers: u64,
}

/// Jobs kept for late shares and block candidates.
const JOB_HISTORY: usize = 64;

#[derive(Default)]
struct History {
    order: VecDeque<JobId>,
    jobs: HashMap<JobId, (Arc<PoolJob>, JobOrigin)>,
}

pub(crate) struct Shared {
    config: ProxyConfig,
    history: RwLock<History>,
    current: Mutex<Option<Arc<PoolJob>>>,
    subscribers: Mutex<Vec<Sender<Arc<PoolJob>>>>,
    stats: Mutex<ProxyStats>,
}

impl Shared {
    fn publish(&self, job: Arc<PoolJob>, origin: JobOrigin) {
        {
            let mut h = self.history.write();
            h.order.push_back(job.job.id.clone());
            h.jobs.insert(job.job.id.clone(), (job.clone(), origin));
            while h.order.len() > JOB_HISTORY {
                if let Some(old) = h.order.pop_front() {
                    h.jobs.remove(&old);
                }
            }
        }
        let mut subs = self.subscribers.lock();
        *self.current.lock() = Some(job.clone());
        subs.retain(|s| s.send(job.clone()).is_ok());
    }

    fn lookup(&self, id: &JobId) -> Option<(Arc<PoolJob>, JobOrigin)> {
        self.history.read().jobs.get(id).cloned()
    }
}

pub(crate) enum Command {
    Forward {
        share: ShareData,
        /// Block candidates: the upstream's verdict is wanted back.
        reply: Option<Sender<Result<(), String>>>,
    },
    Stop,
}

/// The proxy's work source (see the module docs).
pub struct ProxyPool {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    waker: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ProxyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyPool")
            .field("upstreams", &self.shared.config.upstreams.len())
            .finish()
    }
}

impl ProxyPool {
    /// Connects to the upstreams (in the background) and starts choosing among them.
    pub fn start(config: ProxyConfig) -> Result<ProxyPool, ProxyError> {
        if config.upstreams.is_empty() {
            return Err(ProxyError::NoUpstreams);
        }
        let mut roots = Vec::new();
        for u in &config.upstreams {
            roots.push(if u.url.tls {
                Some(Arc::new(
                    relay::upstream::load_tls_roots(u.tls_ca.as_deref()).map_err(|reason| {
                        ProxyError::TlsRoots {
                            name: u.name.clone(),
                            reason,
                        }
                    })?,
                ))
            } else {
                None
            });
        }
        manager::register_metrics();
        let stats = ProxyStats {
            upstreams: config
                .upstreams
                .iter()
                .map(|u| UpstreamStats {
                    name: u.name.clone(),
                    ..UpstreamStats::default()
                })
                .collect(),
            ..ProxyStats::default()
        };
        let shared = Arc::new(Shared {
            config,
            history: RwLock::new(History::default()),
            current: Mutex::new(None),
            subscribers: Mutex::new(Vec::new()),
            stats: Mutex::new(stats),
        });
        let (tx, rx): (Sender<Command>, Receiver<Command>) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("proxy-manager".into())
                .spawn(move || manager::run(shared, roots, rx, wake_rx))?
        };
        Ok(ProxyPool {
            shared,
            commands: tx,
            waker: wake_tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> ProxyStats {
        self.shared.stats.lock().clone()
    }

    /// The job miners should work on now, if any upstream is usable.
    pub fn current_job(&self) -> Option<Arc<PoolJob>> {
        self.shared.current.lock().clone()
    }

    fn send(&self, c: Command) -> bool {
        let ok = self.commands.send(c).is_ok();
        let _ = self.waker.try_send(());
        ok
    }

    pub fn shutdown(&self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl JobSource for ProxyPool {
    fn subscribe(&self) -> Receiver<Arc<PoolJob>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut subs = self.shared.subscribers.lock();
        if let Some(j) = self.shared.current.lock().clone() {
            let _ = tx.send(j);
        }
        subs.push(tx);
        rx
    }

    fn job(&self, id: &JobId) -> Option<Arc<PoolJob>> {
        self.shared.lookup(id).map(|(j, _)| j)
    }

    fn submit_block(&self, c: BlockCandidate) -> Result<BlockOutcome, SubmitError> {
        let Some((job, _)) = self.shared.lookup(&c.job_id) else {
            return Err(SubmitError::UnknownJob {
                job_id: c.job_id,
                kept: JOB_HISTORY,
            });
        };
        let header = relay::work::BlockHeader::from_bytes(&c.header);
        let block_hash = header.block_hash();
        let verdict = match share_of_block(&job, &c, self.shared.config.layout) {
            Err(reason) => BlockVerdict::Rejected { reason },
            Ok(share) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                self.send(Command::Forward {
                    share,
                    reply: Some(tx),
                });
                match rx.recv_timeout(self.shared.config.block_answer_timeout) {
                    Ok(Ok(())) => BlockVerdict::Accepted,
                    Ok(Err(reason)) => BlockVerdict::Rejected { reason },
                    Err(_) => BlockVerdict::Rejected {
                        reason: "no answer from the upstream pool in time".into(),
                    },
                }
            }
        };
        Ok(BlockOutcome {
            job_id: c.job_id,
            block_hash,
            height: job.height,
            verdict,
        })
    }

    fn forward_share(&self, share: &ShareData) {
        self.send(Command::Forward {
            share: share.clone(),
            reply: None,
        });
    }
}

/// The share a block candidate is, read back from its header and coinbase.
fn share_of_block(
    job: &PoolJob,
    c: &BlockCandidate,
    layout: ExtranonceLayout,
) -> Result<ShareData, String> {
    let h = relay::work::BlockHeader::from_bytes(&c.header);
    let start = job.job.coinb1.len();
    let (e1_len, e2_len) = (layout.extranonce1_len(), layout.extranonce2_len);
    let end = start + e1_len + e2_len;
    if c.coinbase.len() < end + job.job.coinb2.len() || !c.coinbase.starts_with(&job.job.coinb1) {
        return Err("block candidate's coinbase does not match its job".into());
    }
    let e1 = relay::work::Extranonce::from_slice(&c.coinbase[start..start + e1_len])
        .map_err(|e| e.to_string())?;
    let e2 = relay::work::Extranonce::from_slice(&c.coinbase[start + e1_len..end])
        .map_err(|e| e.to_string())?;
    Ok(ShareData {
        worker: "block".into(),
        job_id: c.job_id.clone(),
        extranonce1: e1,
        extranonce2: e2,
        ntime: h.time,
        nonce: h.nonce,
        version: h.version,
        difficulty: relay::work::Difficulty::new(1.0).map_err(|e| e.to_string())?,
        received_at_ms: 0,
        meets_upstream: true,
    })
}

/// The PoW hash of a share on a Quarry job (the proxy re-checks every share it forwards).
pub(crate) fn share_hash(job: &PoolJob, share: &ShareData, algorithm: PowAlgorithm) -> Hash256 {
    let header = job.job.header(&relay::work::ShareWork {
        extranonce1: share.extranonce1,
        extranonce2: share.extranonce2,
        ntime: share.ntime,
        nonce: share.nonce,
        version: share.version,
    });
    algorithm.hash(&header.to_bytes())
}
