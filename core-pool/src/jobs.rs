//! The job manager: templates in, Stratum jobs out, blocks back to the daemon.
//!
//! A *job* is one block template dressed for miners (see `relay::work::job`). The manager makes a
//! new one when:
//!
//! - the previous block changed (someone found a block): `clean_jobs = true`, because every
//!   share on the old tip is now worthless and miners should drop their work at once;
//! - the template's transactions changed (new fees to collect), at most every
//!   `tx_update_interval`, with `clean_jobs = false`: old shares are still valid blocks;
//! - `refresh_interval` passed, to keep ntime and the mempool fresh, also `clean_jobs = false`.
//!
//! The decision is made by [`JobPlanner`], which does no I/O and takes the time as an argument;
//! [`JobManager`] is the shell around it. New blocks are noticed by BIP22 longpoll on a dedicated
//! thread (the daemon holds the request until its tip or mempool changes), with plain polling on
//! the manager thread as a fallback for daemons that drop longpolls. When a share meets the
//! network target, [`JobManager::submit_block`] rebuilds the block from the job's template and
//! submits it at once.

use crate::daemon::rpc::{CallOptions, DaemonPool, RpcError};
use crate::daemon::template::{
    assemble_block, build_job, BlockAssemblyError, BlockTemplate, CoinbaseConfig, CoinbaseError,
    TemplateError,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};
use relay::work::header::merkle_root;
use relay::work::{BlockHeader, Job, JobId, Target, TargetError};
use relay::{sha256d, Hash256};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Why a job was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobReason {
    /// The manager's first job.
    First,
    /// The previous block changed.
    NewBlock,
    /// Same previous block, different transactions.
    TransactionsChanged,
    /// The refresh timer fired.
    Refresh,
}

impl JobReason {
    pub fn as_str(self) -> &'static str {
        match self {
            JobReason::First => "first",
            JobReason::NewBlock => "new_block",
            JobReason::TransactionsChanged => "transactions_changed",
            JobReason::Refresh => "refresh",
        }
    }
}

/// A job as the pool keeps it: the Stratum job and what is needed to turn a solution into a
/// block. Shared as `Arc<PoolJob>` between the manager, the gateway and block submission.
#[derive(Debug)]
pub struct PoolJob {
    pub job: Job,
    /// The daemon's template the job was built from (`None`: an upstream pool's job in proxy
    /// mining, which we cannot turn into a block ourselves).
    pub template: Option<Arc<BlockTemplate>>,
    /// A header whose PoW hash meets this target is a block.
    pub network_target: Target,
    /// In proxy mining, the upstream pool's share target: shares meeting it are forwarded.
    pub upstream_target: Option<Target>,
    /// In proxy mining, the version-rolling mask the upstream allows: miners must not roll
    /// outside it (`None`: no constraint beyond the Stratum server's own mask).
    pub version_mask: Option<relay::work::VersionMask>,
    pub height: u64,
    pub created_at: Instant,
    pub reason: JobReason,
}

/// Failures of the job manager outside block submission.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("payout address '{address}': {reason}")]
    PayoutAddress { address: String, reason: String },
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("building the coinbase: {0}")]
    Coinbase(#[from] CoinbaseError),
    #[error("template bits: {0}")]
    Target(#[from] TargetError),
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Decides when a template becomes a new job. No I/O, no clock: `now` is passed in.
///
/// Job ids count up from the planner's creation time in Unix milliseconds, so they are unique
/// across core restarts too: an edge may replay shares for jobs issued before a restart, and
/// they must never be mistaken for shares of a new job that reused the id. (A restart would have
/// to come sooner than one millisecond per job made before it for ids to collide.)
pub struct JobPlanner {
    coinbase: CoinbaseConfig,
    refresh_interval: Duration,
    tx_update_interval: Duration,
    next_id: u64,
    current: Option<Arc<PoolJob>>,
}

impl JobPlanner {
    pub fn new(
        coinbase: CoinbaseConfig,
        refresh_interval: Duration,
        tx_update_interval: Duration,
    ) -> Self {
        JobPlanner {
            coinbase,
            refresh_interval,
            tx_update_interval,
            next_id: first_job_id(),
            current: None,
        }
    }

    /// Starts the id counter at `id` instead of the current time (tests).
    pub fn with_first_id(mut self, id: u64) -> Self {
        self.next_id = id;
        self
    }

    pub fn current(&self) -> Option<&Arc<PoolJob>> {
        self.current.as_ref()
    }

    /// Offers a freshly fetched template; returns the new job when one is due.
    ///
    /// A template for a lower height than the current job's is a late answer to a request made
    /// before the last block (a poll racing the longpoll) and is ignored, so miners are never
    /// sent back to an old tip.
    pub fn on_template(
        &mut self,
        template: BlockTemplate,
        now: Instant,
    ) -> Result<Option<Arc<PoolJob>>, JobError> {
        let reason = match &self.current {
            None => JobReason::First,
            Some(cur)
                if cur.template.as_ref().map(|t| t.previous_block_hash)
                    != Some(template.previous_block_hash) =>
            {
                if template.height < cur.height {
                    debug!(
                        height = template.height,
                        current = cur.height,
                        "ignoring a template for an older tip"
                    );
                    return Ok(None);
                }
                JobReason::NewBlock
            }
            Some(cur) => {
                let age = now.saturating_duration_since(cur.created_at);
                let same_txs = cur.template.as_ref().is_some_and(|t| {
                    t.transactions.len() == template.transactions.len()
                        && t.transactions
                            .iter()
                            .zip(&template.transactions)
                            .all(|(a, b)| a.txid == b.txid)
                });
                if age >= self.refresh_interval {
                    JobReason::Refresh
                } else if !same_txs && age >= self.tx_update_interval {
                    JobReason::TransactionsChanged
                } else {
                    return Ok(None);
                }
            }
        };
        let clean = matches!(reason, JobReason::First | JobReason::NewBlock);
        let network_target = template.network_target()?;
        let id = JobId::from_counter(self.next_id);
        let job = build_job(&template, &self.coinbase, id, clean)?;
        self.next_id += 1;
        let pool_job = Arc::new(PoolJob {
            job,
            height: template.height,
            template: Some(Arc::new(template)),
            network_target,
            upstream_target: None,
            version_mask: None,
            created_at: now,
            reason,
        });
        self.current = Some(pool_job.clone());
        Ok(Some(pool_job))
    }
}

/// The first job id of a new planner: the Unix time in milliseconds (1 if the clock is before
/// 1970).
pub(crate) fn first_job_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        .max(1)
}

/// Settings of a [`JobManager`].
#[derive(Clone, Debug)]
pub struct JobManagerConfig {
    /// Where block rewards go; any address type the daemon can give a scriptPubKey for.
    pub payout_address: String,
    /// Written into every coinbase scriptSig (e.g. `/quarry/`).
    pub pool_tag: String,
    /// Bytes between coinb1 and coinb2 (`ExtranonceLayout::total_len()`).
    pub extranonce_len: usize,
    pub refresh_interval: Duration,
    /// Minimum age of the current job before a mempool change makes a new one.
    pub tx_update_interval: Duration,
    /// Plain `getblocktemplate` polling, the fallback for longpoll.
    pub poll_interval: Duration,
    pub longpoll: bool,
    /// How long one longpoll request may be held before it is reissued.
    pub longpoll_timeout: Duration,
    /// How many recent jobs stay valid for block submission.
    pub history: usize,
}

impl JobManagerConfig {
    pub fn new(payout_address: impl Into<String>, pool_tag: impl Into<String>) -> Self {
        JobManagerConfig {
            payout_address: payout_address.into(),
            pool_tag: pool_tag.into(),
            extranonce_len: relay::work::ExtranonceLayout::default().total_len(),
            refresh_interval: Duration::from_secs(30),
            tx_update_interval: Duration::from_secs(5),
            poll_interval: Duration::from_millis(1000),
            longpoll: true,
            longpoll_timeout: Duration::from_secs(120),
            history: 16,
        }
    }
}

/// A solution that meets (or claims to meet) the network target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCandidate {
    pub job_id: JobId,
    /// Non-witness coinbase as the miner's extranonces made it (`Job::coinbase`).
    pub coinbase: Vec<u8>,
    pub header: [u8; 80],
}

/// What the daemon said about a submitted block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockVerdict {
    /// `submitblock` answered null.
    Accepted,
    /// `submitblock` answered with a reason (`high-hash`, `bad-txnmrklroot`, `duplicate`,
    /// `inconclusive`, ...).
    Rejected { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOutcome {
    pub job_id: JobId,
    pub block_hash: Hash256,
    pub height: u64,
    pub verdict: BlockVerdict,
}

impl BlockOutcome {
    pub fn is_accepted(&self) -> bool {
        self.verdict == BlockVerdict::Accepted
    }
}

/// A block candidate that could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("block candidate for unknown job {job_id} (only the last {kept} jobs are kept)")]
    UnknownJob { job_id: JobId, kept: usize },
    #[error("block candidate for job {job_id}: header builds on {got}, the job on {expected}")]
    PrevHashMismatch {
        job_id: JobId,
        got: Hash256,
        expected: Hash256,
    },
    #[error(
        "block candidate for job {job_id}: the job has no block template (an upstream pool's job)"
    )]
    NoTemplate { job_id: JobId },
    #[error("block candidate for job {job_id}: the coinbase and merkle branch give root {computed}, the header has {header}")]
    MerkleMismatch {
        job_id: JobId,
        computed: Hash256,
        header: Hash256,
    },
    #[error("block candidate for job {job_id}: {source}")]
    Assembly {
        job_id: JobId,
        #[source]
        source: BlockAssemblyError,
    },
    #[error("block {hash} at height {height}: submitblock failed: {source}")]
    Rpc {
        hash: Hash256,
        height: u64,
        #[source]
        source: Box<RpcError>,
    },
}

enum Control {
    Template(Box<BlockTemplate>),
    PollNow,
    Stop,
}

struct Shared {
    pool: DaemonPool,
    config: JobManagerConfig,
    history: RwLock<VecDeque<Arc<PoolJob>>>,
    subscribers: Mutex<Vec<Sender<Arc<PoolJob>>>>,
    stop: AtomicBool,
}

/// Owns the daemons, keeps the current job and the recent ones, and submits blocks.
pub struct JobManager {
    shared: Arc<Shared>,
    control: Sender<Control>,
    manager: Option<JoinHandle<()>>,
}

impl fmt::Debug for JobManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobManager")
            .field("daemon", &self.shared.pool.active_url())
            .field("current", &self.current_job().map(|j| j.job.id.clone()))
            .finish()
    }
}

fn register_metrics() {
    metrics::describe_counter!(
        "quarry_core_blocks_found_total",
        "Block candidates (shares meeting the network target) handed to the job manager."
    );
    metrics::describe_counter!(
        "quarry_core_blocks_accepted_total",
        "Blocks the daemon accepted (submitblock answered null)."
    );
    metrics::describe_counter!(
        "quarry_core_blocks_rejected_total",
        "Blocks not accepted, by the daemon's reason (or submit_error / invalid_candidate)."
    );
    metrics::describe_counter!("quarry_core_jobs_total", "Jobs made, by reason.");
    metrics::describe_counter!(
        "quarry_core_blocks_orphaned_total",
        "Valid blocks the daemon did not put on its best chain (another block at that height won)."
    );
}

/// The scriptPubKey the daemon derives from `address`. Asking the daemon (`validateaddress`,
/// which needs no wallet) means any address type it knows works, with its network's prefixes.
pub fn resolve_payout_script(pool: &DaemonPool, address: &str) -> Result<Vec<u8>, JobError> {
    let bad = |reason: String| JobError::PayoutAddress {
        address: address.to_string(),
        reason,
    };
    let info: Value = pool.call("validateaddress", &[Value::String(address.to_string())])?;
    if info.get("isvalid").and_then(Value::as_bool) != Some(true) {
        return Err(bad(
            "the daemon says it is not a valid address on its chain".into(),
        ));
    }
    let script = info
        .get("scriptPubKey")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("validateaddress gave no scriptPubKey".into()))?;
    if script.is_empty() {
        return Err(bad(
            "it has no scriptPubKey (an MWEB address cannot receive a coinbase output)".into(),
        ));
    }
    hex::decode(script).map_err(|e| bad(format!("scriptPubKey '{script}' is not hex: {e}")))
}

fn fetch_template(pool: &DaemonPool) -> Result<BlockTemplate, JobError> {
    let v: Value = pool.call("getblocktemplate", &BlockTemplate::request_params(None))?;
    Ok(BlockTemplate::from_json(v)?)
}

impl Shared {
    fn publish(&self, job: Arc<PoolJob>) {
        let mut subs = self.subscribers.lock();
        {
            let mut history = self.history.write();
            history.push_back(job.clone());
            while history.len() > self.config.history.max(1) {
                history.pop_front();
            }
        }
        subs.retain(|s| s.send(job.clone()).is_ok());
        metrics::counter!("quarry_core_jobs_total", "reason" => job.reason.as_str()).increment(1);
        info!(
            job_id = %job.job.id,
            height = job.height,
            clean_jobs = job.job.clean_jobs,
            reason = job.reason.as_str(),
            transactions = job.template.as_ref().map_or(0, |t| t.transactions.len()),
            mweb = job.template.as_ref().is_some_and(|t| t.mweb.is_some()),
            "new job"
        );
    }

    fn offer(&self, planner: &mut JobPlanner, template: BlockTemplate) {
        match planner.on_template(template, Instant::now()) {
            Ok(Some(job)) => self.publish(job),
            Ok(None) => {}
            Err(e) => error!(error = %e, "cannot make a job from the template"),
        }
    }
}

impl JobManager {
    /// Resolves the payout address, fetches the first template and makes the first job (so a
    /// bad address or an unreachable daemon fails here, at start), then starts the threads.
    pub fn start(pool: DaemonPool, config: JobManagerConfig) -> Result<Self, JobError> {
        register_metrics();
        let payout_script = resolve_payout_script(&pool, &config.payout_address)?;
        let coinbase = CoinbaseConfig {
            payout_script,
            pool_tag: config.pool_tag.as_bytes().to_vec(),
            extranonce_len: config.extranonce_len,
        };
        let mut planner =
            JobPlanner::new(coinbase, config.refresh_interval, config.tx_update_interval);
        let template = fetch_template(&pool)?;
        let longpoll_id = template.longpoll_id.clone();
        let first = planner.on_template(template, Instant::now())?;
        let (control, control_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            pool,
            config,
            history: RwLock::new(VecDeque::new()),
            subscribers: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        if let Some(first) = first {
            shared.publish(first);
        }
        let s = shared.clone();
        let manager = std::thread::Builder::new()
            .name("quarry-jobs".into())
            .spawn(move || manager_loop(s, control_rx, planner))
            .map_err(|source| JobError::Thread {
                name: "job manager",
                source,
            })?;
        let mgr = JobManager {
            shared: shared.clone(),
            control: control.clone(),
            manager: Some(manager),
        };
        match (shared.config.longpoll, longpoll_id) {
            (true, Some(id)) => {
                // Detached: it may sit in a request for up to longpoll_timeout; it exits on its
                // next wake-up once the stop flag is set or the manager is gone.
                std::thread::Builder::new()
                    .name("quarry-longpoll".into())
                    .spawn(move || longpoll_loop(shared, control, id))
                    .map_err(|source| JobError::Thread {
                        name: "longpoll",
                        source,
                    })?;
            }
            (true, None) => info!("the daemon offers no longpollid; polling only"),
            (false, _) => {}
        }
        Ok(mgr)
    }

    /// A channel of new jobs, starting with the current one.
    pub fn subscribe(&self) -> Receiver<Arc<PoolJob>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut subs = self.shared.subscribers.lock();
        if let Some(cur) = self.current_job() {
            // The receiver is in hand; this send cannot fail.
            let _ = tx.send(cur);
        }
        subs.push(tx);
        rx
    }

    pub fn current_job(&self) -> Option<Arc<PoolJob>> {
        self.shared.history.read().back().cloned()
    }

    /// A recent job by id, for share validation and block submission.
    pub fn job(&self, id: &JobId) -> Option<Arc<PoolJob>> {
        self.shared
            .history
            .read()
            .iter()
            .rev()
            .find(|j| &j.job.id == id)
            .cloned()
    }

    /// Asks for a template now instead of at the next poll.
    pub fn refresh_now(&self) {
        let _ = self.control.send(Control::PollNow);
    }

    /// Rebuilds the block of a candidate and submits it at once.
    ///
    /// The candidate is checked against its job first (previous block, merkle root), so that a
    /// bad candidate is reported as such rather than as a daemon reject. Proof of work is the
    /// caller's check (it knows the algorithm); the daemon checks it again anyway.
    pub fn submit_block(&self, candidate: BlockCandidate) -> Result<BlockOutcome, SubmitError> {
        metrics::counter!("quarry_core_blocks_found_total").increment(1);
        let result = self.submit_inner(candidate);
        match &result {
            Ok(o) => match &o.verdict {
                BlockVerdict::Accepted => {
                    metrics::counter!("quarry_core_blocks_accepted_total").increment(1);
                    info!(hash = %o.block_hash, height = o.height, job_id = %o.job_id, "block accepted");
                    self.refresh_now();
                }
                // "inconclusive": valid, but another block at this height got there first (an
                // orphan race, not a fault of ours).
                BlockVerdict::Rejected { reason } if reason == "inconclusive" => {
                    metrics::counter!("quarry_core_blocks_orphaned_total").increment(1);
                    info!(hash = %o.block_hash, height = o.height, job_id = %o.job_id, "block valid but not on the best chain (orphan race)");
                }
                BlockVerdict::Rejected { reason } => {
                    metrics::counter!("quarry_core_blocks_rejected_total", "reason" => reason.clone())
                        .increment(1);
                    warn!(hash = %o.block_hash, height = o.height, job_id = %o.job_id, reason, "block rejected");
                }
            },
            Err(e) => {
                let reason = match e {
                    SubmitError::Rpc { .. } => "submit_error",
                    _ => "invalid_candidate",
                };
                metrics::counter!("quarry_core_blocks_rejected_total", "reason" => reason)
                    .increment(1);
                error!(error = %e, "block not submitted");
            }
        }
        result
    }

    fn submit_inner(&self, c: BlockCandidate) -> Result<BlockOutcome, SubmitError> {
        let job = self.job(&c.job_id).ok_or_else(|| SubmitError::UnknownJob {
            job_id: c.job_id.clone(),
            kept: self.shared.config.history,
        })?;
        let Some(template) = job.template.clone() else {
            return Err(SubmitError::NoTemplate { job_id: c.job_id });
        };
        let header = BlockHeader::from_bytes(&c.header);
        if header.prev_hash != template.previous_block_hash {
            return Err(SubmitError::PrevHashMismatch {
                job_id: c.job_id,
                got: header.prev_hash,
                expected: template.previous_block_hash,
            });
        }
        let computed = Hash256(merkle_root(sha256d(&c.coinbase), &job.job.merkle_branch));
        if computed != header.merkle_root {
            return Err(SubmitError::MerkleMismatch {
                job_id: c.job_id,
                computed,
                header: header.merkle_root,
            });
        }
        let block = assemble_block(&template, &c.coinbase, &c.header).map_err(|source| {
            SubmitError::Assembly {
                job_id: c.job_id.clone(),
                source,
            }
        })?;
        let hash = header.block_hash();
        info!(%hash, height = job.height, bytes = block.len(), "submitting block");
        let answer: Value = self
            .shared
            .pool
            .call("submitblock", &[Value::String(hex::encode(&block))])
            .map_err(|source| SubmitError::Rpc {
                hash,
                height: job.height,
                source: Box::new(source),
            })?;
        let verdict = match answer {
            Value::Null => BlockVerdict::Accepted,
            Value::String(reason) => BlockVerdict::Rejected { reason },
            other => BlockVerdict::Rejected {
                reason: format!("unexpected answer {other}"),
            },
        };
        Ok(BlockOutcome {
            job_id: c.job_id,
            block_hash: hash,
            height: job.height,
            verdict,
        })
    }

    /// Stops the manager thread and waits for it (the longpoll thread ends on its own).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.control.send(Control::Stop);
        if let Some(h) = self.manager.take() {
            if h.join().is_err() {
                error!("the job manager thread panicked");
            }
        }
    }
}

impl Drop for JobManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn manager_loop(shared: Arc<Shared>, rx: Receiver<Control>, mut planner: JobPlanner) {
    let interval = shared.config.poll_interval;
    let mut next_poll = Instant::now() + interval;
    let mut daemon_ok = true;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        let poll = match rx.recv_timeout(wait) {
            Ok(Control::Template(t)) => {
                shared.offer(&mut planner, *t);
                false
            }
            Ok(Control::PollNow) | Err(RecvTimeoutError::Timeout) => true,
            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => break,
        };
        if poll {
            next_poll = Instant::now() + interval;
            match fetch_template(&shared.pool) {
                Ok(t) => {
                    if !daemon_ok {
                        info!(daemon = shared.pool.active_url(), "templates flow again");
                        daemon_ok = true;
                    }
                    shared.offer(&mut planner, t);
                }
                // One warning per outage, not one per poll.
                Err(e) if daemon_ok => {
                    warn!(error = %e, "cannot fetch a block template");
                    daemon_ok = false;
                }
                Err(e) => debug!(error = %e, "cannot fetch a block template"),
            }
        }
    }
    debug!("job manager stopped");
}

fn longpoll_loop(shared: Arc<Shared>, control: Sender<Control>, mut id: String) {
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    let timeout = shared.config.longpoll_timeout;
    let mut backoff = Duration::from_millis(250);
    while !shared.stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let result: Result<Value, RpcError> = shared.pool.call_with(
            "getblocktemplate",
            &BlockTemplate::request_params(Some(&id)),
            CallOptions::new(timeout).without_retry(),
        );
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let template = match result
            .map_err(JobError::from)
            .and_then(|v| BlockTemplate::from_json(v).map_err(JobError::from))
        {
            Ok(t) => t,
            Err(_) if started.elapsed() + Duration::from_secs(1) >= timeout => {
                debug!("longpoll held for its whole timeout; reissuing");
                continue;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "longpoll failed");
                sleep_unless_stopped(&shared.stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        match &template.longpoll_id {
            Some(next) => id = next.clone(),
            None => {
                info!("the daemon stopped giving longpoll ids; polling only");
                return;
            }
        }
        debug!(height = template.height, "longpoll returned");
        if control.send(Control::Template(Box::new(template))).is_err() {
            return;
        }
    }
    debug!("longpoll stopped");
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(step));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::work::CompactTarget;

    const FIXTURE: &str = include_str!("../testdata/gbt_regtest_mweb.json");

    fn template() -> BlockTemplate {
        BlockTemplate::from_json(serde_json::from_str(FIXTURE).expect("json")).expect("template")
    }

    fn planner() -> JobPlanner {
        JobPlanner::new(
            CoinbaseConfig {
                payout_script: vec![0x51],
                pool_tag: b"/t/".to_vec(),
                extranonce_len: 8,
            },
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
    }

    fn next_block(t: &BlockTemplate) -> BlockTemplate {
        let mut n = t.clone();
        n.previous_block_hash = Hash256([0x42; 32]);
        n.height += 1;
        n
    }

    #[test]
    fn first_template_makes_a_clean_job_with_the_network_target() {
        let mut p = planner();
        let t0 = Instant::now();
        let job = p.on_template(template(), t0).expect("ok").expect("job");
        assert!(job.job.clean_jobs);
        assert_eq!(job.reason, JobReason::First);
        assert_eq!(job.height, 437);
        assert_eq!(job.job.nbits, CompactTarget(0x207fffff));
        assert_eq!(
            job.network_target,
            Target::from_compact(CompactTarget(0x207fffff)).expect("bits")
        );
    }

    #[test]
    fn same_template_makes_no_job_until_the_refresh_timer() {
        let mut p = planner();
        let t0 = Instant::now();
        let first = p.on_template(template(), t0).expect("ok").expect("job");
        assert!(p
            .on_template(template(), t0 + Duration::from_secs(29))
            .expect("ok")
            .is_none());
        let job = p
            .on_template(template(), t0 + Duration::from_secs(30))
            .expect("ok")
            .expect("refresh");
        assert!(!job.job.clean_jobs);
        assert_eq!(job.reason, JobReason::Refresh);
        assert_ne!(job.job.id, first.job.id);
    }

    #[test]
    fn new_previous_block_makes_a_clean_job_at_once() {
        let mut p = planner();
        let t0 = Instant::now();
        p.on_template(template(), t0).expect("ok");
        let job = p
            .on_template(next_block(&template()), t0 + Duration::from_millis(1))
            .expect("ok")
            .expect("new block");
        assert!(job.job.clean_jobs);
        assert_eq!(job.reason, JobReason::NewBlock);
        assert_eq!(job.height, 438);
    }

    #[test]
    fn late_template_for_the_old_tip_is_ignored() {
        let mut p = planner();
        let t0 = Instant::now();
        let new = next_block(&template());
        p.on_template(new, t0).expect("ok");
        assert!(p
            .on_template(template(), t0 + Duration::from_secs(60))
            .expect("ok")
            .is_none());
        assert_eq!(p.current().expect("current").height, 438);
    }

    #[test]
    fn changed_transactions_make_an_unclean_job_after_the_minimum_interval() {
        let mut p = planner();
        let t0 = Instant::now();
        p.on_template(template(), t0).expect("ok");
        let mut fewer = template();
        fewer.transactions.remove(0);
        assert!(p
            .on_template(fewer.clone(), t0 + Duration::from_secs(1))
            .expect("ok")
            .is_none());
        let job = p
            .on_template(fewer, t0 + Duration::from_secs(5))
            .expect("ok")
            .expect("tx change");
        assert!(!job.job.clean_jobs);
        assert_eq!(job.reason, JobReason::TransactionsChanged);
        assert_eq!(job.template.as_ref().unwrap().transactions.len(), 1);
    }

    #[test]
    fn job_ids_start_from_the_clock_so_a_restarted_core_never_reuses_one() {
        let t0 = Instant::now();
        let mut before = planner();
        let old = before
            .on_template(template(), t0)
            .expect("ok")
            .expect("job");
        let mut t = template();
        for i in 0..3 {
            t = next_block(&t);
            t.previous_block_hash = Hash256([i + 1; 32]);
            before.on_template(t.clone(), t0).expect("ok");
        }
        let last_old = before.current().expect("current").job.id.clone();
        std::thread::sleep(Duration::from_millis(5));
        let mut after = planner();
        let new = after.on_template(template(), t0).expect("ok").expect("job");
        let n = |id: &JobId| u64::from_str_radix(id.as_str(), 16).expect("hex id");
        assert!(n(&old.job.id) > 1_600_000_000_000, "{}", old.job.id);
        assert!(
            n(&new.job.id) > n(&last_old),
            "{} vs {}",
            new.job.id,
            last_old
        );
    }

    #[test]
    fn job_ids_are_distinct_and_increasing() {
        let mut p = planner().with_first_id(1);
        let t0 = Instant::now();
        let mut t = template();
        let mut ids = Vec::new();
        for i in 0..5 {
            t = next_block(&t);
            t.previous_block_hash = Hash256([i; 32]);
            ids.push(
                p.on_template(t.clone(), t0)
                    .expect("ok")
                    .expect("job")
                    .job
                    .id
                    .clone(),
            );
        }
        let mut dedup = ids.clone();
        dedup.dedup();
        assert_eq!(ids, dedup);
        assert_eq!(ids[0], JobId::from_counter(1));
    }
}
