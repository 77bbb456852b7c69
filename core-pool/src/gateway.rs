//! The edge gateway: where remote edges hand the shard their shares.
//!
//! An edge runs on a mining farm, validates its miners' shares itself and sends the accepted
//! ones here in batches over QUIC with mutual TLS (`relay::quic`, protocol `relay::wire`). The
//! gateway owns those connections. Per connection:
//!
//! 1. The edge's identity comes from its client certificate (`peer_edge_id`), verified against
//!    the operator CA during the handshake; the `Hello` on the control stream must name the
//!    same edge and speak [`PROTOCOL_VERSION`].
//! 2. `Welcome` gives it its extranonce lease (`shard ‖ lease`, the lease stable per edge across
//!    restarts, [`crate::leases`]), the epoch to stamp on batches (the one it resumes, or a new
//!    one) and the journal's high-water mark for that epoch, so it can trim what is already
//!    durable and replay the rest. Then come the current job and every new one.
//! 3. Every unidirectional stream is one batch or one block candidate. Already journaled → acked
//!    again, not credited. Otherwise it is audited (below), journaled with group commit (one
//!    fsync for everything that arrived meanwhile) and credited, and only then acked with the
//!    journal's high-water mark for its epoch.
//!
//! **Trust, but verify.** An edge could claim shares it never checked, or a difficulty its hash
//! does not reach. The core re-validates, with the edge's own code path
//! (`edge::validator::validate_share`), every block candidate and a keyed-random sample of
//! ordinary shares (`audit_per_mille`). A share that fails is not credited; its edge goes to
//! full validation for the rest of this process's life and is logged at ERROR; a second failing
//! message in one session closes the connection with an Error frame and refuses the edge for
//! `ban`. Shares on jobs the core no longer remembers cannot be checked: they are credited and
//! counted as skipped.
//!
//! **Blocks** are checked against their job at once and submitted from their own thread before
//! the journal is even touched: a block is worth more than anything on the link, and every
//! second of delay raises its odds of going stale.
//!
//! Threads: a tokio runtime of two workers runs the QUIC endpoint and the connections (audits
//! run on its blocking pool); one thread owns the journal and does the group commits; one
//! forwards jobs from the job manager.

use crate::jobs::{BlockCandidate, BlockOutcome, JobManager, PoolJob, SubmitError};
use crate::journal::{Appended, Journal, JournalError, JournalIndex, JournalRecord, RecordKind};
use crate::leases::Leases;
use crate::ledger::Ledger;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use edge::jobs::JobEntry;
use edge::validator::{validate_share, PowReject};
use parking_lot::{Mutex, RwLock};
use relay::pow::PowAlgorithm;
use relay::seglog::SegLogConfig;
use relay::wire::{
    Ack, BatchContext, ControlFrame, EdgeId, ErrorFrame, JobMsg, Policies, ShareData, UniMessage,
    Welcome, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use relay::work::{Extranonce, ExtranonceLayout, JobId, ShareWork, Target};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Codes of the Error frames (and QUIC close codes) the gateway sends before closing; they are
/// part of the wire protocol, so both ends share them.
pub use relay::wire::close_code as error_code;

/// What the gateway needs from the job manager; a trait so tests can stand in for the daemon.
pub trait JobSource: Send + Sync + 'static {
    /// New jobs as they are made, starting with the current one.
    fn subscribe(&self) -> Receiver<Arc<PoolJob>>;
    /// A recent job by id (`None`: too old or never issued).
    fn job(&self, id: &JobId) -> Option<Arc<PoolJob>>;
    /// Rebuilds and submits a block. Blocks the calling thread for the RPC.
    fn submit_block(&self, candidate: BlockCandidate) -> Result<BlockOutcome, SubmitError>;
    /// A share its edge found to meet the job's upstream target (proxy mining): pass it on to
    /// the upstream pool. Must not block; sources without an upstream ignore it.
    fn forward_share(&self, _share: &ShareData) {}
}

impl JobSource for JobManager {
    fn subscribe(&self) -> Receiver<Arc<PoolJob>> {
        JobManager::subscribe(self)
    }
    fn job(&self, id: &JobId) -> Option<Arc<PoolJob>> {
        JobManager::job(self, id)
    }
    fn submit_block(&self, candidate: BlockCandidate) -> Result<BlockOutcome, SubmitError> {
        JobManager::submit_block(self, candidate)
    }
}

/// Settings of the gateway (the `[gateway]` config section plus what it needs from `[pool]`).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The core's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The core's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The operator CA certificate(s) edge certificates must chain to (PEM).
    pub ca: PathBuf,
    /// The shard journal and the lease map live here.
    pub journal_dir: PathBuf,
    /// Sent to edges in `Welcome`; `audit_per_mille` is also the core's own sampling rate.
    pub policies: Policies,
    /// How long an edge caught lying twice is refused.
    pub ban: Duration,
    pub shard_id: u8,
    pub layout: ExtranonceLayout,
    pub algorithm: PowAlgorithm,
    /// The journal's segment log settings.
    pub journal_log: SegLogConfig,
    /// How long a new connection may take to open its control stream and say Hello.
    pub hello_timeout: Duration,
}

impl GatewayConfig {
    /// Defaults for everything but the paths and the shard.
    pub fn new(
        listen: SocketAddr,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        journal_dir: PathBuf,
    ) -> Self {
        GatewayConfig {
            listen,
            cert,
            key,
            ca,
            journal_dir,
            policies: Policies {
                audit_per_mille: 20,
                max_batch_shares: 1000,
                max_batch_delay_ms: 200,
            },
            ban: Duration::from_secs(600),
            shard_id: 0,
            layout: ExtranonceLayout::default(),
            algorithm: PowAlgorithm::Scrypt,
            journal_log: crate::journal::default_log_config(),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway.{key} {}: {source}", path.display())]
    Pki {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: relay::quic::QuicError,
    },
    #[error("gateway: {0}")]
    Quic(#[source] relay::quic::QuicError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Leases(#[from] crate::leases::LeaseError),
    #[error("gateway: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the gateway since start (the same events as its Prometheus metrics).
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub batches: AtomicU64,
    pub blocks: AtomicU64,
    pub duplicates: AtomicU64,
    pub shares_credited: AtomicU64,
    pub shares_audited: AtomicU64,
    pub audit_failures: AtomicU64,
    pub audit_skipped: AtomicU64,
    pub blocks_submitted: AtomicU64,
}

/// A copy of [`GatewayStats`] at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub refused: u64,
    pub batches: u64,
    pub blocks: u64,
    pub duplicates: u64,
    pub shares_credited: u64,
    pub shares_audited: u64,
    pub audit_failures: u64,
    pub audit_skipped: u64,
    pub blocks_submitted: u64,
}

impl GatewayStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StatsSnapshot {
            connections: g(&self.connections),
            refused: g(&self.refused),
            batches: g(&self.batches),
            blocks: g(&self.blocks),
            duplicates: g(&self.duplicates),
            shares_credited: g(&self.shares_credited),
            shares_audited: g(&self.shares_audited),
            audit_failures: g(&self.audit_failures),
            audit_skipped: g(&self.audit_skipped),
            blocks_submitted: g(&self.blocks_submitted),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::SeqCst);
}

fn register_metrics() {
    metrics::describe_gauge!(
        "quarry_core_edges_connected",
        "Edges with a live session on this shard's gateway."
    );
    metrics::describe_counter!(
        "quarry_core_batches_total",
        "Share batches and block candidates received from edges (duplicates included)."
    );
    metrics::describe_counter!(
        "quarry_core_batches_duplicate_total",
        "Batches or blocks received again after being journaled: acked, not credited."
    );
    metrics::describe_counter!(
        "quarry_core_shares_credited_total",
        "Shares credited to workers (own Stratum port and edges)."
    );
    metrics::describe_counter!(
        "quarry_core_edge_shares_credited_total",
        "Shares credited from each edge, by edge id."
    );
    metrics::describe_counter!(
        "quarry_core_audit_failures_total",
        "Edge shares that failed the core's re-validation, by edge id."
    );
    metrics::describe_counter!(
        "quarry_core_audit_skipped_total",
        "Sampled edge shares that could not be re-validated (their job is no longer known)."
    );
    metrics::describe_counter!(
        "quarry_core_shares_audited_total",
        "Edge shares the core re-validated."
    );
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A job as sent to every edge: encoded once.
#[derive(Clone, Debug)]
struct Published {
    n: u64,
    frame: Bytes,
}

/// Who is connected, who is refused, who is under full validation.
#[derive(Default)]
struct Registry {
    sessions: HashMap<EdgeId, Arc<Session>>,
    bans: HashMap<EdgeId, Instant>,
    full_validation: HashSet<EdgeId>,
}

/// A request to the journal thread.
struct WriteRequest {
    record: JournalRecord,
    reply: oneshot::Sender<WriteOutcome>,
}

#[derive(Debug)]
enum WriteOutcome {
    /// Durable and credited now.
    Journaled {
        high_water: Option<u64>,
        shares: u64,
    },
    /// Was journaled before: not credited again.
    Duplicate {
        high_water: Option<u64>,
    },
    Failed(String),
}

struct Shared {
    cfg: GatewayConfig,
    jobs: Arc<dyn JobSource>,
    index: Arc<RwLock<JournalIndex>>,
    journal_tx: Sender<WriteRequest>,
    leases: Mutex<Leases>,
    stats: Arc<GatewayStats>,
    registry: Mutex<Registry>,
    feed: broadcast::Sender<Published>,
    current: Mutex<Option<Published>>,
    entries: Mutex<HashMap<JobId, Arc<JobEntry>>>,
    sample_key: RandomState,
    stop: AtomicBool,
    next_session: AtomicU64,
}

/// The running gateway. Dropping it shuts it down.
pub struct Gateway {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    runtime: Option<tokio::runtime::Runtime>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Gateway {
    /// Opens the journal (replaying it into `ledger`), loads the certificates, binds the QUIC
    /// endpoint and starts serving edges.
    pub fn start(
        cfg: GatewayConfig,
        jobs: Arc<dyn JobSource>,
        ledger: Arc<Ledger>,
    ) -> Result<Gateway, GatewayError> {
        use relay::quic::certs::{load_cert_chain, load_private_key};
        register_metrics();
        let pki = |key: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |source| GatewayError::Pki { key, path, source }
        };
        let cert = load_cert_chain(&cfg.cert).map_err(pki("cert", &cfg.cert))?;
        let key = load_private_key(&cfg.key).map_err(pki("key", &cfg.key))?;
        let ca = load_cert_chain(&cfg.ca).map_err(pki("ca", &cfg.ca))?;
        let server =
            relay::quic::endpoint::server_config(cert, key, &ca).map_err(GatewayError::Quic)?;

        let (journal, recovery) =
            Journal::open_with(&cfg.journal_dir, cfg.journal_log, ledger.clone())?;
        info!(
            dir = %cfg.journal_dir.display(),
            records = recovery.records,
            credited_shares = recovery.credited_shares,
            duplicates = recovery.duplicates,
            undecodable = recovery.undecodable,
            log = %recovery.log,
            "journal replayed"
        );
        let max_lease = cfg.layout.leases_per_shard().saturating_sub(1).min(255) as u8;
        let leases = Leases::open(&cfg.journal_dir, max_lease)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .thread_name("quarry-gateway")
            .enable_all()
            .build()
            .map_err(|source| GatewayError::Io {
                what: "tokio runtime",
                source,
            })?;
        let endpoint = {
            let _guard = runtime.enter();
            relay::quic::endpoint::server_endpoint(cfg.listen, server)
                .map_err(GatewayError::Quic)?
        };
        let local_addr = endpoint.local_addr().map_err(|source| GatewayError::Io {
            what: "endpoint address",
            source,
        })?;

        let (journal_tx, journal_rx) = crossbeam_channel::unbounded();
        let (feed, _) = broadcast::channel(64);
        let stats = Arc::new(GatewayStats::default());
        let shared = Arc::new(Shared {
            index: journal.index(),
            cfg,
            jobs,
            journal_tx,
            leases: Mutex::new(leases),
            stats,
            registry: Mutex::new(Registry::default()),
            feed,
            current: Mutex::new(None),
            entries: Mutex::new(HashMap::new()),
            sample_key: RandomState::new(),
            stop: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
        });
        let mut threads = Vec::new();
        {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("quarry-journal".into())
                    .spawn(move || journal_loop(journal, journal_rx, shared))
                    .map_err(|source| GatewayError::Io {
                        what: "journal thread",
                        source,
                    })?,
            );
        }
        {
            let shared = shared.clone();
            let rx = shared.jobs.subscribe();
            threads.push(
                std::thread::Builder::new()
                    .name("quarry-gw-jobs".into())
                    .spawn(move || job_loop(shared, rx))
                    .map_err(|source| GatewayError::Io {
                        what: "job thread",
                        source,
                    })?,
            );
        }
        runtime.spawn(accept_loop(shared.clone(), endpoint.clone()));
        info!(listen = %local_addr, shard = shared.cfg.shard_id, "edge gateway listening");
        Ok(Gateway {
            local_addr,
            shared,
            endpoint,
            runtime: Some(runtime),
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The durable high-water mark of an edge's epoch.
    pub fn high_water(&self, edge: &EdgeId, epoch: u64) -> Option<u64> {
        self.shared.index.read().high_water(edge, epoch)
    }

    /// Edges with a live session.
    pub fn connected_edges(&self) -> Vec<EdgeId> {
        self.shared
            .registry
            .lock()
            .sessions
            .keys()
            .cloned()
            .collect()
    }

    /// Whether an edge is under full validation (caught failing the audit).
    pub fn is_fully_validated(&self, edge: &EdgeId) -> bool {
        self.shared.registry.lock().full_validation.contains(edge)
    }

    /// Closes every connection, finishes what the journal holds and stops.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        self.endpoint.close(
            quinn::VarInt::from_u32(u32::from(error_code::SHUTDOWN)),
            b"core shutting down",
        );
        // The CONNECTION_CLOSE frames are sent by the endpoint's driver task: let it run until
        // every connection is drained (bounded), or a shut-down runtime may drop them and the
        // edges learn of the stop only from their idle timeout, 20 s later.
        if tokio::runtime::Handle::try_current().is_err() {
            let endpoint = self.endpoint.clone();
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            });
        }
        runtime.shutdown_timeout(Duration::from_secs(2));
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                error!("a gateway thread panicked");
            }
        }
        metrics::gauge!("quarry_core_edges_connected").set(0.0);
        info!("edge gateway stopped");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The journal thread: appends everything that arrived, syncs once, answers everyone.
fn journal_loop(mut journal: Journal, rx: Receiver<WriteRequest>, shared: Arc<Shared>) {
    const MAX_GROUP: usize = 4096;
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if shared.stop.load(Ordering::SeqCst) => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let appended: Vec<Result<Appended, JournalError>> =
            group.iter().map(|r| journal.append(&r.record)).collect();
        let synced = journal.sync();
        if let Err(e) = &synced {
            error!(
                error = %e,
                records = group.len(),
                "journal write failed: nothing acked; reopening"
            );
            match journal.recover(shared.cfg.journal_log) {
                Ok(r) => warn!(
                    records = r.records,
                    credited = r.credited_shares,
                    "journal reopened"
                ),
                Err(e) => error!(error = %e, "journal cannot be reopened"),
            }
        }
        for (req, result) in group.into_iter().zip(appended) {
            let r = &req.record;
            let high_water = journal.high_water(&r.edge, r.epoch);
            let outcome = match (result, &synced) {
                (Ok(Appended::New { shares }), Ok(_)) => WriteOutcome::Journaled {
                    high_water,
                    shares: shares as u64,
                },
                (Ok(Appended::Duplicate), Ok(_)) => WriteOutcome::Duplicate { high_water },
                // After a failed fsync nothing of the group is known to be durable (the kernel
                // may have dropped the pages): no ack. The edge replays after reconnecting.
                (Ok(_), Err(e)) => WriteOutcome::Failed(e.to_string()),
                (Err(e), _) => WriteOutcome::Failed(e.to_string()),
            };
            let _ = req.reply.send(outcome);
        }
    }
    debug!("journal thread stopped");
}

/// Forwards the job manager's jobs to every session, encoded once.
fn job_loop(shared: Arc<Shared>, rx: Receiver<Arc<PoolJob>>) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let job = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let frame = ControlFrame::Job(Box::new(JobMsg {
            job: job.job.clone(),
            upstream_target: job.upstream_target,
            version_mask: job.version_mask,
        }));
        let frame = match frame.to_bytes() {
            Ok(f) => f,
            Err(e) => {
                error!(job_id = %job.job.id, error = %e, "job cannot be encoded for edges");
                continue;
            }
        };
        n += 1;
        let published = Published { n, frame };
        {
            let mut current = shared.current.lock();
            *current = Some(published.clone());
            // No receivers is fine: no edge connected.
            let _ = shared.feed.send(published);
        }
        let jobs = &shared.jobs;
        shared.entries.lock().retain(|id, _| jobs.job(id).is_some());
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(handle_incoming(shared.clone(), incoming));
    }
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            bump(&shared.stats.refused, 1);
            warn!(%remote, error = %e, "edge handshake failed");
            return;
        }
    };
    let edge = relay::quic::peer_edge_id(&conn)
        .map_err(|e| e.to_string())
        .and_then(|id| EdgeId::new(id).map_err(|e| e.to_string()));
    let edge = match edge {
        Ok(e) => e,
        Err(reason) => {
            bump(&shared.stats.refused, 1);
            warn!(%remote, reason, "edge certificate names no usable edge id");
            conn.close(
                quinn::VarInt::from_u32(u32::from(error_code::IDENTITY_MISMATCH)),
                reason.as_bytes(),
            );
            return;
        }
    };
    bump(&shared.stats.connections, 1);
    serve_edge(shared, conn, edge, remote).await;
}

/// What the control-stream writer is asked to send.
enum Outbound {
    Frame(Bytes),
    /// `again`: send it even if it does not advance (the answer to a replay).
    Ack {
        epoch: u64,
        through_seq: u64,
        again: bool,
    },
    /// Send an Error frame, finish the stream and close the connection.
    Close {
        code: u16,
        message: String,
    },
}

/// One edge connection after its Hello.
struct Session {
    id: u64,
    edge: EdgeId,
    ctx: BatchContext,
    audit_per_mille: AtomicU16,
    offences: AtomicU32,
    ctl: mpsc::UnboundedSender<Outbound>,
    conn: quinn::Connection,
}

impl Session {
    fn send(&self, o: Outbound) {
        if self.ctl.send(o).is_err() {
            // The writer is gone: the control stream is dead, so is the session.
            self.conn.close(
                quinn::VarInt::from_u32(u32::from(error_code::INTERNAL)),
                b"control stream closed",
            );
        }
    }

    fn close(&self, code: u16, message: String) {
        self.send(Outbound::Close { code, message });
    }

    /// Acks the epoch's high-water mark, if it has one, when it advanced — or, with `again`,
    /// even if it did not: a replay is always answered, as the edge may have missed the ack.
    fn ack(&self, epoch: u64, high_water: Option<u64>, again: bool) {
        if let Some(through_seq) = high_water {
            self.send(Outbound::Ack {
                epoch,
                through_seq,
                again,
            });
        }
    }
}

/// Reads control frames into `buf` until one is complete. `Ok(None)`: the stream ended.
async fn next_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<Option<ControlFrame>, String> {
    loop {
        if let Some(frame) = ControlFrame::take_from(buf).map_err(|e| e.to_string())? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(64 << 10, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => return Ok(None),
            Ok(None) => return Err(format!("stream ended inside a frame ({} bytes)", buf.len())),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sends an Error frame on a control stream, finishes it, and closes the connection.
async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, code: u16, message: &str) {
    let frame = ControlFrame::Error(ErrorFrame {
        code,
        message: message.to_owned(),
    });
    if let Ok(bytes) = frame.to_bytes() {
        let _ = send.write_all(&bytes).await;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    conn.close(quinn::VarInt::from_u32(u32::from(code)), message.as_bytes());
}

async fn serve_edge(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    edge: EdgeId,
    remote: SocketAddr,
) {
    let timeout = shared.cfg.hello_timeout;
    let opened = tokio::time::timeout(timeout, conn.accept_bi()).await;
    let (mut send, mut recv) = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%edge, error = %e, "edge left before opening its control stream");
            return;
        }
        Err(_) => {
            warn!(%edge, %remote, "edge opened no control stream in time");
            conn.close(
                quinn::VarInt::from_u32(u32::from(error_code::PROTOCOL_VIOLATION)),
                b"no control stream",
            );
            return;
        }
    };
    let mut buf = BytesMut::new();
    let hello = match tokio::time::timeout(timeout, next_frame(&mut recv, &mut buf)).await {
        Ok(Ok(Some(ControlFrame::Hello(h)))) => h,
        Ok(Ok(Some(other))) => {
            let msg = format!("expected Hello first, got {}", frame_name(&other));
            refuse(&conn, &mut send, error_code::PROTOCOL_VIOLATION, &msg).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let msg = format!("control stream: {e}");
            refuse(&conn, &mut send, error_code::PROTOCOL_VIOLATION, &msg).await;
            return;
        }
        Err(_) => {
            refuse(
                &conn,
                &mut send,
                error_code::PROTOCOL_VIOLATION,
                "no Hello in time",
            )
            .await;
            return;
        }
    };

    let banned_for = {
        let mut reg = shared.registry.lock();
        let now = Instant::now();
        reg.bans.retain(|_, until| *until > now);
        reg.bans
            .get(&edge)
            .map(|until| until.saturating_duration_since(now))
    };
    let refusal = if let Some(left) = banned_for {
        Some((
            error_code::BANNED,
            format!(
                "edge {edge} failed the core's audit twice and is refused for another {} s",
                left.as_secs().max(1)
            ),
        ))
    } else if hello.protocol_version != PROTOCOL_VERSION {
        Some((
            error_code::UNSUPPORTED_VERSION,
            format!(
                "protocol version {} is not supported; this core speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        ))
    } else if hello.edge_id != edge {
        Some((
            error_code::IDENTITY_MISMATCH,
            format!(
                "Hello names edge {} but the certificate is edge {edge}",
                hello.edge_id
            ),
        ))
    } else {
        None
    };
    if let Some((code, msg)) = refusal {
        bump(&shared.stats.refused, 1);
        warn!(%edge, %remote, code, reason = %msg, "edge refused");
        refuse(&conn, &mut send, code, &msg).await;
        return;
    }

    let cfg = &shared.cfg;
    // A new edge's lease is fsynced here: rare, and short.
    let lease = shared.leases.lock().lease_for(&edge);
    let lease = match lease {
        Ok(l) => l,
        Err(e) => {
            bump(&shared.stats.refused, 1);
            error!(%edge, error = %e, "edge refused");
            refuse(&conn, &mut send, error_code::NO_LEASE, &e.to_string()).await;
            return;
        }
    };
    let lease_prefix = match cfg
        .layout
        .edge_prefix(u64::from(cfg.shard_id), u64::from(lease))
    {
        Ok(p) => p,
        Err(e) => {
            error!(%edge, error = %e, "no extranonce prefix for the edge's lease");
            refuse(&conn, &mut send, error_code::NO_LEASE, &e.to_string()).await;
            return;
        }
    };
    let (epoch, acked_through) = {
        let index = shared.index.read();
        let epoch = match hello.resume {
            Some(r) => r.epoch,
            None => unix_ms().max(index.latest_epoch(&edge).map_or(0, |e| e + 1)),
        };
        (epoch, index.high_water(&edge, epoch))
    };
    if let Some(r) = hello.resume {
        if acked_through.is_some_and(|h| h >= r.next_seq) {
            warn!(%edge, epoch, next_seq = r.next_seq, ?acked_through,
                "the core has journaled seqs the edge says it has not used yet");
        }
    }
    let full = shared.registry.lock().full_validation.contains(&edge);
    let audit_per_mille = if full {
        1000
    } else {
        cfg.policies.audit_per_mille
    };
    let ctx = BatchContext {
        lease_prefix,
        extranonce2_size: cfg.layout.extranonce2_len as u8,
    };
    let welcome = ControlFrame::Welcome(Welcome {
        shard_id: cfg.shard_id,
        lease_prefix,
        extranonce2_size: ctx.extranonce2_size,
        epoch,
        acked_through,
        policies: Policies {
            audit_per_mille,
            ..cfg.policies
        },
    });
    let welcome = match welcome.to_bytes() {
        Ok(b) => b,
        Err(e) => {
            error!(%edge, error = %e, "Welcome cannot be encoded");
            refuse(&conn, &mut send, error_code::INTERNAL, &e.to_string()).await;
            return;
        }
    };
    if let Err(e) = send.write_all(&welcome).await {
        debug!(%edge, error = %e, "edge left before Welcome");
        return;
    }

    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let session = Arc::new(Session {
        id: shared.next_session.fetch_add(1, Ordering::SeqCst),
        edge: edge.clone(),
        ctx,
        audit_per_mille: AtomicU16::new(audit_per_mille),
        offences: AtomicU32::new(0),
        ctl,
        conn: conn.clone(),
    });
    tokio::spawn(control_writer(send, ctl_rx, conn.clone()));
    let replaced = {
        let mut reg = shared.registry.lock();
        let old = reg.sessions.insert(edge.clone(), session.clone());
        metrics::gauge!("quarry_core_edges_connected").set(reg.sessions.len() as f64);
        old
    };
    if let Some(old) = replaced {
        info!(%edge, "a new connection of the edge replaces the old one");
        old.close(
            error_code::REPLACED,
            "replaced by a newer connection of the same edge".into(),
        );
    }
    info!(
        %edge, %remote, software = %hello.software, lease, prefix = %lease_prefix, epoch,
        ?acked_through, audit_per_mille, resumed = hello.resume.is_some(),
        "edge connected"
    );

    let reason = tokio::select! {
        r = control_reader(&session, recv, buf) => r,
        r = uni_acceptor(&shared, &session) => r,
        r = forward_jobs(&shared, &session) => r,
    };
    {
        let mut reg = shared.registry.lock();
        if reg.sessions.get(&edge).is_some_and(|s| s.id == session.id) {
            reg.sessions.remove(&edge);
        }
        metrics::gauge!("quarry_core_edges_connected").set(reg.sessions.len() as f64);
    }
    if conn.close_reason().is_none() {
        conn.close(quinn::VarInt::from_u32(0), b"session ended");
    }
    info!(%edge, reason, close = ?conn.close_reason(), "edge disconnected");
}

fn frame_name(f: &ControlFrame) -> &'static str {
    match f {
        ControlFrame::Hello(_) => "Hello",
        ControlFrame::Welcome(_) => "Welcome",
        ControlFrame::Job(_) => "Job",
        ControlFrame::Ack(_) => "Ack",
        ControlFrame::Ping { .. } => "Ping",
        ControlFrame::Pong { .. } => "Pong",
        ControlFrame::Error(_) => "Error",
    }
}

/// Owns the control stream's send half. Acks are cumulative, so it never sends one below what
/// it already sent for that epoch (acks computed concurrently may reach it out of order).
async fn control_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    conn: quinn::Connection,
) {
    let mut acked: HashMap<u64, u64> = HashMap::new();
    while let Some(out) = rx.recv().await {
        let bytes = match out {
            Outbound::Frame(b) => b,
            Outbound::Ack {
                epoch,
                through_seq,
                again,
            } => {
                let last = acked.entry(epoch).or_insert(0);
                if through_seq < *last || (through_seq == *last && !again) {
                    continue;
                }
                *last = through_seq;
                match ControlFrame::Ack(Ack { epoch, through_seq }).to_bytes() {
                    Ok(b) => b,
                    Err(e) => {
                        error!(error = %e, "ack cannot be encoded");
                        continue;
                    }
                }
            }
            Outbound::Close { code, message } => {
                refuse(&conn, &mut send, code, &message).await;
                return;
            }
        };
        if let Err(e) = send.write_all(&bytes).await {
            debug!(error = %e, "control stream write failed");
            conn.close(
                quinn::VarInt::from_u32(u32::from(error_code::INTERNAL)),
                b"control stream write failed",
            );
            return;
        }
    }
}

/// Answers pings; anything but Ping, Pong and Error from an edge is a protocol violation.
async fn control_reader(
    session: &Session,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
) -> String {
    loop {
        match next_frame(&mut recv, &mut buf).await {
            Ok(Some(ControlFrame::Ping { nonce })) => {
                match (ControlFrame::Pong { nonce }).to_bytes() {
                    Ok(b) => session.send(Outbound::Frame(b)),
                    Err(e) => error!(error = %e, "pong cannot be encoded"),
                }
            }
            Ok(Some(ControlFrame::Pong { .. })) => {}
            Ok(Some(ControlFrame::Error(e))) => {
                session
                    .conn
                    .close(quinn::VarInt::from_u32(0), b"edge sent an error");
                return format!("edge sent error {}: {}", e.code, e.message);
            }
            Ok(Some(other)) => {
                let msg = format!("{} is not allowed from an edge", frame_name(&other));
                session.close(error_code::PROTOCOL_VIOLATION, msg.clone());
                // Give the writer a moment to deliver the Error frame before the select ends.
                session.conn.closed().await;
                return msg;
            }
            Ok(None) => return "control stream finished".into(),
            Err(e) => {
                if session.conn.close_reason().is_some() {
                    return format!("connection closed: {e}");
                }
                let msg = format!("control stream: {e}");
                session.close(error_code::PROTOCOL_VIOLATION, msg.clone());
                session.conn.closed().await;
                return msg;
            }
        }
    }
}

async fn uni_acceptor(shared: &Arc<Shared>, session: &Arc<Session>) -> String {
    loop {
        match session.conn.accept_uni().await {
            Ok(recv) => {
                tokio::spawn(handle_uni(shared.clone(), session.clone(), recv));
            }
            Err(e) => return format!("connection closed: {e}"),
        }
    }
}

async fn forward_jobs(shared: &Shared, session: &Session) -> String {
    let mut rx = shared.feed.subscribe();
    let mut last = 0u64;
    let current = shared.current.lock().clone();
    if let Some(p) = current {
        last = p.n;
        session.send(Outbound::Frame(p.frame));
    }
    loop {
        match rx.recv().await {
            Ok(p) if p.n > last => {
                last = p.n;
                session.send(Outbound::Frame(p.frame));
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let current = shared.current.lock().clone();
                if let Some(p) = current.filter(|p| p.n > last) {
                    last = p.n;
                    session.send(Outbound::Frame(p.frame));
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                session.conn.closed().await;
                return "gateway stopping".into();
            }
        }
    }
}

async fn handle_uni(shared: Arc<Shared>, session: Arc<Session>, mut recv: quinn::RecvStream) {
    let bytes = match recv.read_to_end(MAX_FRAME_LEN).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => {
            session.close(
                error_code::PROTOCOL_VIOLATION,
                format!("a unidirectional stream is over {MAX_FRAME_LEN} bytes"),
            );
            return;
        }
        Err(e) => {
            debug!(edge = %session.edge, error = %e, "stream lost");
            return;
        }
    };
    let message = match UniMessage::decode(&bytes, &session.ctx) {
        Ok(m) => m,
        Err(e) => {
            session.close(
                error_code::PROTOCOL_VIOLATION,
                format!("unidirectional stream: {e}"),
            );
            return;
        }
    };
    let (kind, epoch, seq) = match &message {
        UniMessage::Batch(b) => (RecordKind::Batch, b.epoch, b.seq),
        UniMessage::Block(b) => (RecordKind::Block, b.epoch, b.seq),
    };
    metrics::counter!("quarry_core_batches_total").increment(1);
    bump(
        if kind == RecordKind::Block {
            &shared.stats.blocks
        } else {
            &shared.stats.batches
        },
        1,
    );
    if seq == 0 {
        session.close(
            error_code::PROTOCOL_VIOLATION,
            format!(
                "{} with seq 0: sequence numbers start at 1 in every epoch",
                kind.as_str()
            ),
        );
        return;
    }
    let known = {
        let index = shared.index.read();
        index
            .contains(&session.edge, epoch, seq)
            .then(|| index.high_water(&session.edge, epoch))
    };
    if let Some(high_water) = known {
        duplicate(&shared, &session, epoch, seq, high_water);
        return;
    }
    let bytes = Bytes::from(bytes);
    let rejected = match message {
        UniMessage::Batch(batch) => {
            let shares = match batch.shares(&session.ctx) {
                Ok(s) => s,
                Err(e) => {
                    session.close(error_code::PROTOCOL_VIOLATION, format!("batch: {e}"));
                    return;
                }
            };
            // Upstream work first: it races the upstream's next job, the journal does not.
            for s in shares.iter().filter(|s| s.meets_upstream) {
                shared.jobs.forward_share(s);
            }
            let per_mille = session.audit_per_mille.load(Ordering::SeqCst);
            let auditor = shared.clone();
            let prefix = session.ctx.lease_prefix;
            let audit = tokio::task::spawn_blocking(move || {
                auditor.audit(&shares, &prefix, (epoch, seq), per_mille)
            })
            .await;
            match audit {
                Ok(a) => a,
                Err(e) => {
                    error!(error = %e, "audit task failed");
                    session.close(error_code::INTERNAL, "audit failed".into());
                    return;
                }
            }
        }
        UniMessage::Block(block) => shared.check_block(&session, &block),
    };
    if !rejected.is_empty() && !offence(&shared, &session, epoch, seq, &rejected) {
        return;
    }
    let record = JournalRecord {
        edge: session.edge.clone(),
        epoch,
        seq,
        kind,
        lease_prefix: session.ctx.lease_prefix,
        extranonce2_size: session.ctx.extranonce2_size,
        rejected: rejected.iter().map(|(i, _)| *i).collect(),
        journaled_at_ms: unix_ms(),
        message: bytes,
    };
    let (reply, answer) = oneshot::channel();
    if shared
        .journal_tx
        .send(WriteRequest { record, reply })
        .is_err()
    {
        return;
    }
    match answer.await {
        Ok(WriteOutcome::Journaled { high_water, shares }) => {
            bump(&shared.stats.shares_credited, shares);
            metrics::counter!("quarry_core_shares_credited_total").increment(shares);
            let edge = session.edge.to_string();
            metrics::counter!("quarry_core_edge_shares_credited_total", "edge" => edge)
                .increment(shares);
            debug!(edge = %session.edge, epoch, seq, shares, ?high_water, "journaled");
            session.ack(epoch, high_water, false);
        }
        Ok(WriteOutcome::Duplicate { high_water }) => {
            duplicate(&shared, &session, epoch, seq, high_water)
        }
        Ok(WriteOutcome::Failed(e)) => {
            error!(
                edge = %session.edge, epoch, seq, error = %e,
                "cannot journal; closing the connection so the edge replays"
            );
            session.close(error_code::INTERNAL, format!("journal write failed: {e}"));
        }
        Err(_) => {}
    }
}

fn duplicate(shared: &Shared, session: &Session, epoch: u64, seq: u64, high_water: Option<u64>) {
    bump(&shared.stats.duplicates, 1);
    metrics::counter!("quarry_core_batches_duplicate_total").increment(1);
    debug!(
        edge = %session.edge, epoch, seq, ?high_water,
        "replay of a journaled message; acked, not credited"
    );
    session.ack(epoch, high_water, true);
}

/// Records an audit failure; returns whether the message may still be journaled (first
/// offence) or the edge has been cut off (second).
fn offence(
    shared: &Shared,
    session: &Session,
    epoch: u64,
    seq: u64,
    rejected: &[(u32, String)],
) -> bool {
    let edge = &session.edge;
    bump(&shared.stats.audit_failures, rejected.len() as u64);
    metrics::counter!("quarry_core_audit_failures_total", "edge" => edge.to_string())
        .increment(rejected.len() as u64);
    let Some((index, reason)) = rejected.first() else {
        return true;
    };
    let n = session.offences.fetch_add(1, Ordering::SeqCst) + 1;
    session.audit_per_mille.store(1000, Ordering::SeqCst);
    let mut reg = shared.registry.lock();
    reg.full_validation.insert(edge.clone());
    if n == 1 {
        error!(
            %edge, epoch, seq, share = index, reason, failed = rejected.len(),
            "edge failed the audit: its failing shares are not credited and every share it \
             sends is now re-validated"
        );
        return true;
    }
    let ban = shared.cfg.ban;
    reg.bans.insert(edge.clone(), Instant::now() + ban);
    drop(reg);
    error!(
        %edge, epoch, seq, share = index, reason, failed = rejected.len(), ban_secs = ban.as_secs(),
        "edge failed the audit again: disconnected and refused"
    );
    session.close(
        error_code::AUDIT_FAILED,
        format!(
            "share {index} of epoch {epoch} seq {seq} failed the core's audit ({reason}) after \
             an earlier failure; refused for {} s",
            ban.as_secs()
        ),
    );
    false
}

impl Shared {
    /// Whether share `index` of a message is re-validated at `per_mille`: keyed by a secret
    /// random per process, so an edge cannot tell which shares will be checked.
    fn sampled(&self, epoch: u64, seq: u64, index: usize, per_mille: u16) -> bool {
        if per_mille >= 1000 {
            return true;
        }
        if per_mille == 0 {
            return false;
        }
        self.sample_key.hash_one((epoch, seq, index)) % 1000 < u64::from(per_mille)
    }

    /// The validator's view of a job the core still knows.
    fn job_entry(&self, id: &JobId) -> Option<(Arc<PoolJob>, Arc<JobEntry>)> {
        let pool_job = self.jobs.job(id)?;
        let mut entries = self.entries.lock();
        let entry = entries
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(JobEntry::new(
                    pool_job.job.clone(),
                    pool_job.upstream_target,
                    Instant::now(),
                ))
            })
            .clone();
        Some((pool_job, entry))
    }

    /// Sizes every share must have under this shard's layout.
    fn check_sizes(&self, s: &ShareData, session_prefix: &[u8]) -> Result<(), String> {
        let layout = &self.cfg.layout;
        if s.extranonce1.len() != layout.extranonce1_len() {
            return Err(format!(
                "extranonce1 has {} bytes, expected {}",
                s.extranonce1.len(),
                layout.extranonce1_len()
            ));
        }
        if !s.extranonce1.as_bytes().starts_with(session_prefix) {
            return Err(format!(
                "extranonce1 {} is not under the edge's lease prefix {}",
                s.extranonce1,
                hex::encode(session_prefix)
            ));
        }
        if s.extranonce2.len() != layout.extranonce2_len {
            return Err(format!(
                "extranonce2 has {} bytes, expected {}",
                s.extranonce2.len(),
                layout.extranonce2_len
            ));
        }
        Ok(())
    }

    /// Re-validates one share against its job; `Ok(None)`: the job is unknown (not checkable).
    fn validate(
        &self,
        s: &ShareData,
    ) -> Result<Option<(Arc<PoolJob>, edge::validator::Validated)>, PowReject> {
        let Some((pool_job, entry)) = self.job_entry(&s.job_id) else {
            return Ok(None);
        };
        let algo = self.cfg.algorithm;
        let target = Target::from_difficulty(s.difficulty, algo.diff1());
        let work = ShareWork {
            extranonce1: s.extranonce1,
            extranonce2: s.extranonce2,
            ntime: s.ntime,
            nonce: s.nonce,
            version: s.version,
        };
        validate_share(
            algo,
            &entry,
            &work,
            self.cfg.layout.extranonce2_len,
            &target,
        )
        .map(|v| Some((pool_job, v)))
    }

    /// Audits a batch's shares: sizes always, proof of work for a sample. On the first
    /// failure the whole batch is re-validated, so every failing share is found. Returns the
    /// failing shares' indexes and reasons.
    fn audit(
        &self,
        shares: &[ShareData],
        prefix: &Extranonce,
        (epoch, seq): (u64, u64),
        per_mille: u16,
    ) -> Vec<(u32, String)> {
        let mut rejected = Vec::new();
        let mut audited = 0u64;
        let mut skipped = 0u64;
        let mut pm = per_mille;
        let mut i = 0;
        while i < shares.len() {
            let s = &shares[i];
            let verdict = match self.check_sizes(s, prefix.as_bytes()) {
                Err(reason) => Some(reason),
                Ok(()) if self.sampled(epoch, seq, i, pm) => {
                    audited += 1;
                    match self.validate(s) {
                        Ok(Some(_)) => None,
                        Ok(None) => {
                            skipped += 1;
                            None
                        }
                        Err(e) => Some(e.to_string()),
                    }
                }
                Ok(()) => None,
            };
            if let Some(reason) = verdict {
                if pm < 1000 {
                    // Caught: look at every share of this batch, from the start.
                    pm = 1000;
                    rejected.clear();
                    audited = 0;
                    skipped = 0;
                    i = 0;
                    continue;
                }
                rejected.push((i as u32, reason));
            }
            i += 1;
        }
        bump(&self.stats.shares_audited, audited);
        metrics::counter!("quarry_core_shares_audited_total").increment(audited);
        if skipped > 0 {
            bump(&self.stats.audit_skipped, skipped);
            metrics::counter!("quarry_core_audit_skipped_total").increment(skipped);
        }
        rejected
    }

    /// Checks a block candidate against its job and, if it is one, submits it at once from its
    /// own thread. Returns the failure (share 0) if the candidate fails the audit.
    fn check_block(
        self: &Arc<Self>,
        session: &Session,
        block: &relay::wire::BlockFound,
    ) -> Vec<(u32, String)> {
        let s = &block.share;
        let edge = &session.edge;
        if let Err(reason) = self.check_sizes(s, session.ctx.lease_prefix.as_bytes()) {
            return vec![(0, reason)];
        }
        bump(&self.stats.shares_audited, 1);
        metrics::counter!("quarry_core_shares_audited_total").increment(1);
        let (pool_job, validated) = match self.validate(s) {
            Err(e) => return vec![(0, e.to_string())],
            Ok(None) => {
                bump(&self.stats.audit_skipped, 1);
                metrics::counter!("quarry_core_audit_skipped_total").increment(1);
                warn!(
                    %edge, job_id = %s.job_id,
                    "block candidate for a job the core no longer knows: not submitted; credited"
                );
                return Vec::new();
            }
            Ok(Some(v)) => v,
        };
        if !validated.is_block {
            warn!(%edge, job_id = %s.job_id, achieved = validated.achieved,
                "block candidate does not meet the network target; credited as a share");
            return Vec::new();
        }
        let header = validated.header.to_bytes();
        let coinbase = pool_job.job.coinbase(&s.extranonce1, &s.extranonce2);
        if header != block.header || coinbase != block.coinbase {
            warn!(%edge, job_id = %s.job_id,
                "the edge's header or coinbase differ from the core's; submitting the core's");
        }
        let candidate = BlockCandidate {
            job_id: s.job_id.clone(),
            coinbase,
            header,
        };
        info!(%edge, job_id = %s.job_id, worker = %s.worker, hash = %validated.header.block_hash(),
            "block candidate from an edge: submitting");
        bump(&self.stats.blocks_submitted, 1);
        let jobs = self.jobs.clone();
        let submit = move || {
            let job_id = candidate.job_id.clone();
            if let Err(e) = jobs.submit_block(candidate) {
                error!(job = %job_id, error = %e, "block candidate could not be submitted");
            }
        };
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let spawned = std::thread::Builder::new()
            .name("quarry-block".into())
            .spawn(move || {
                if let Ok(f) = rx.recv() {
                    f();
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(Box::new(submit));
            }
            Err(e) => {
                error!(error = %e, "no thread for the block; submitting on the blocking pool");
                tokio::task::spawn_blocking(submit);
            }
        }
        Vec::new()
    }
}
