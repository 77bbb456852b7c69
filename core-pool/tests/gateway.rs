//! The edge gateway over real QUIC on loopback: an in-test edge says Hello, gets its lease and
//! jobs, sends batches of shares hashed for real, and the core journals, credits and acks them
//! exactly once; audits catch a lying edge; a restarted core keeps its marks and credits.
//!
//! The job manager is replaced by [`TestJobs`], a `JobSource` holding hand-made jobs, so no
//! daemon is needed (`gateway_regtest.rs` runs the real one against litecoind).

use core_pool::daemon::BlockTemplate;
use core_pool::gateway::{error_code, Gateway, GatewayConfig, JobSource};
use core_pool::jobs::{
    BlockCandidate, BlockOutcome, BlockVerdict, JobReason, PoolJob, SubmitError,
};
use core_pool::journal::JournalReader;
use core_pool::ledger::Ledger;
use crossbeam_channel::{Receiver, Sender};
use relay::quic::certs::{generate_ca, issue_core_cert, issue_edge_cert, CaBundle};
use relay::wire::{
    Batch, BatchContext, BlockFound, ControlFrame, EdgeId, Hello, ResumeState, ShareData, Welcome,
    PROTOCOL_VERSION,
};
use relay::work::{
    BlockHeader, CompactTarget, Difficulty, Extranonce, Job, JobId, PrevHash, ShareWork, Target,
};
use relay::{Hash256, PowAlgorithm};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every wait in these tests gives up after this.
const WAIT: Duration = Duration::from_secs(15);

/// A hard network target: ordinary shares are never blocks.
const HARD_BITS: CompactTarget = CompactTarget(0x1d00_ffff);
/// Regtest's: about every other hash is a block.
const EASY_BITS: CompactTarget = CompactTarget(0x207f_ffff);

/// About one sha256d hash in 64 meets it.
const SHARE_DIFFICULTY: f64 = 1.0 / 67_108_864.0;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// A job source without a daemon.

#[derive(Default)]
struct TestJobs {
    jobs: Mutex<Vec<Arc<PoolJob>>>,
    subscribers: Mutex<Vec<Sender<Arc<PoolJob>>>>,
    submitted: Mutex<Vec<BlockCandidate>>,
}

fn template() -> Arc<BlockTemplate> {
    let v = serde_json::from_str(include_str!("../testdata/gbt_regtest_mweb.json")).expect("json");
    Arc::new(BlockTemplate::from_json(v).expect("template"))
}

impl TestJobs {
    fn publish(&self, id: &str, nbits: CompactTarget) -> Arc<PoolJob> {
        let job = Job::new(
            JobId::new(id),
            PrevHash(Hash256([0x5a; 32])),
            b"\x01\x00\x00\x00coinb1-of-a-test-job".to_vec(),
            b"coinb2\xff\xff\xff\xff".to_vec(),
            vec![[0x11; 32], [0x22; 32]],
            0x2000_0000,
            nbits,
            1_700_000_000,
            true,
        );
        let pool_job = Arc::new(PoolJob {
            network_target: Target::from_compact(nbits).expect("bits"),
            job,
            template: Some(template()),
            upstream_target: None,
            version_mask: None,
            height: 1,
            created_at: Instant::now(),
            reason: JobReason::First,
        });
        self.jobs.lock().expect("lock").push(pool_job.clone());
        self.subscribers
            .lock()
            .expect("lock")
            .retain(|s| s.send(pool_job.clone()).is_ok());
        pool_job
    }

    fn submitted(&self) -> Vec<BlockCandidate> {
        self.submitted.lock().expect("lock").clone()
    }
}

impl JobSource for TestJobs {
    fn subscribe(&self) -> Receiver<Arc<PoolJob>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        if let Some(cur) = self.jobs.lock().expect("lock").last() {
            let _ = tx.send(cur.clone());
        }
        self.subscribers.lock().expect("lock").push(tx);
        rx
    }

    fn job(&self, id: &JobId) -> Option<Arc<PoolJob>> {
        self.jobs
            .lock()
            .expect("lock")
            .iter()
            .find(|j| &j.job.id == id)
            .cloned()
    }

    fn submit_block(&self, c: BlockCandidate) -> Result<BlockOutcome, SubmitError> {
        let hash = BlockHeader::from_bytes(&c.header).block_hash();
        let job_id = c.job_id.clone();
        self.submitted.lock().expect("lock").push(c);
        Ok(BlockOutcome {
            job_id,
            block_hash: hash,
            height: 1,
            verdict: BlockVerdict::Accepted,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// PKI and the gateway under test.

struct Pki {
    dir: tempfile::TempDir,
    ca: CaBundle,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca(name).expect("CA");
        ca.write(dir.path()).expect("write CA");
        let core = issue_core_cert(&ca, &["localhost".into(), "127.0.0.1".into()]).expect("core");
        core.write(dir.path(), "core").expect("write core");
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A QUIC client presenting an edge certificate of this CA, trusting `core_ca`.
    fn edge_endpoint(&self, edge_id: &str, core_ca: &Pki) -> quinn::Endpoint {
        let cert = issue_edge_cert(&self.ca, edge_id).expect("edge cert");
        let config = relay::quic::endpoint::client_config(
            &[core_ca.ca.cert_der().expect("CA der")],
            cert.cert_chain().expect("chain"),
            cert.private_key().expect("key"),
        )
        .expect("client config");
        relay::quic::endpoint::client_endpoint("127.0.0.1:0".parse().expect("addr"), config)
            .expect("client endpoint")
    }
}

fn gateway_config(pki: &Pki, journal: &Path, audit_per_mille: u16) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        pki.path("core.crt"),
        pki.path("core.key"),
        pki.path("ca.crt"),
        journal.to_path_buf(),
    );
    cfg.policies.audit_per_mille = audit_per_mille;
    cfg.algorithm = PowAlgorithm::Sha256d;
    cfg.shard_id = 3;
    cfg.ban = Duration::from_secs(600);
    cfg
}

fn start(
    pki: &Pki,
    journal: &Path,
    audit_per_mille: u16,
    jobs: &Arc<TestJobs>,
) -> (Gateway, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let source: Arc<dyn JobSource> = jobs.clone();
    let gw = Gateway::start(
        gateway_config(pki, journal, audit_per_mille),
        source,
        ledger.clone(),
    )
    .expect("gateway");
    (gw, ledger)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `f` until it holds or [`WAIT`] passes (yielding, so the client's QUIC keeps going).
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The in-test edge.

struct TestEdge {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: bytes::BytesMut,
    welcome: Option<Welcome>,
}

impl TestEdge {
    async fn connect(pki: &Pki, core_ca: &Pki, edge_id: &str, addr: SocketAddr) -> TestEdge {
        let endpoint = pki.edge_endpoint(edge_id, core_ca);
        let conn = endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("control stream");
        TestEdge {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            buf: bytes::BytesMut::new(),
            welcome: None,
        }
    }

    async fn send_frame(&mut self, f: ControlFrame) {
        let bytes = f.to_bytes().expect("encode");
        self.send.write_all(&bytes).await.expect("write");
    }

    async fn hello_as(&mut self, edge_id: &str, version: u16, resume: Option<ResumeState>) {
        self.send_frame(ControlFrame::Hello(Hello {
            protocol_version: version,
            edge_id: EdgeId::new(edge_id).expect("edge id"),
            software: "test-edge/0".into(),
            resume,
        }))
        .await;
    }

    /// The next control frame; `None` when the stream or the connection ended.
    async fn frame(&mut self) -> Option<ControlFrame> {
        let read = async {
            loop {
                if let Some(f) = ControlFrame::take_from(&mut self.buf).expect("frame") {
                    return Some(f);
                }
                match self.recv.read_chunk(65536, true).await {
                    Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                    Ok(None) | Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("a frame in time")
    }

    /// Hello, then Welcome and the current job.
    async fn handshake(&mut self, edge_id: &str, resume: Option<ResumeState>) -> (Welcome, Job) {
        self.hello_as(edge_id, PROTOCOL_VERSION, resume).await;
        let welcome = match self.frame().await {
            Some(ControlFrame::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        self.welcome = Some(welcome.clone());
        let job = match self.frame().await {
            Some(ControlFrame::Job(j)) => j.job,
            other => panic!("expected a Job, got {other:?}"),
        };
        (welcome, job)
    }

    fn ctx(&self) -> BatchContext {
        let w = self.welcome.as_ref().expect("welcomed");
        BatchContext {
            lease_prefix: w.lease_prefix,
            extranonce2_size: w.extranonce2_size,
        }
    }

    async fn send_uni(&self, bytes: &[u8]) {
        let mut s = self.conn.open_uni().await.expect("open uni");
        s.write_all(bytes).await.expect("write uni");
        s.finish().expect("finish");
    }

    async fn send_batch(&self, epoch: u64, seq: u64, shares: &[ShareData]) {
        let ctx = self.ctx();
        let batch = Batch::from_shares(epoch, seq, shares, &ctx, |_| None).expect("batch");
        self.send_uni(&batch.to_bytes(&ctx).expect("encode")).await;
    }

    /// Reads frames until an Ack; jobs and pongs are skipped.
    async fn ack(&mut self) -> (u64, u64) {
        loop {
            match self.frame().await {
                Some(ControlFrame::Ack(a)) => return (a.epoch, a.through_seq),
                Some(ControlFrame::Job(_)) | Some(ControlFrame::Pong { .. }) => {}
                other => panic!("expected an Ack, got {other:?}"),
            }
        }
    }

    /// Reads frames until an Error frame, which it returns.
    async fn error(&mut self) -> (u16, String) {
        loop {
            match self.frame().await {
                Some(ControlFrame::Error(e)) => return (e.code, e.message),
                Some(ControlFrame::Job(_)) | Some(ControlFrame::Ack(_)) => {}
                other => panic!("expected an Error frame, got {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mining for real.

fn extranonce1(ctx: &BatchContext, slot: u16) -> Extranonce {
    ctx.lease_prefix
        .concat(&Extranonce::from_counter(u64::from(slot), 2).expect("slot"))
        .expect("e1")
}

/// The first nonce from `from` whose hash meets `difficulty` (and the network target if
/// `block`), or misses it if `!meets`.
fn find_nonce(job: &Job, work: ShareWork, difficulty: f64, meets: bool, block: bool) -> u32 {
    let algo = PowAlgorithm::Sha256d;
    let target = Target::from_difficulty(Difficulty::new(difficulty).expect("d"), algo.diff1());
    let network = Target::from_compact(job.nbits).expect("bits");
    (work.nonce..u32::MAX)
        .find(|&nonce| {
            let h = algo.hash(&job.header(&ShareWork { nonce, ..work }).to_bytes());
            let ok = target.is_met_by(&h) && (!block || network.is_met_by(&h));
            ok == meets
        })
        .expect("a nonce")
}

/// `n` valid shares of `worker` on `job`, distinct extranonce2s from `first`.
fn shares(job: &Job, ctx: &BatchContext, worker: &str, first: u64, n: u64) -> Vec<ShareData> {
    (first..first + n)
        .map(|i| share(job, ctx, worker, i, true))
        .collect()
}

fn share(job: &Job, ctx: &BatchContext, worker: &str, e2: u64, valid: bool) -> ShareData {
    let work = ShareWork {
        extranonce1: extranonce1(ctx, 1),
        extranonce2: Extranonce::from_counter(e2, 4).expect("e2"),
        ntime: job.ntime,
        nonce: 0,
        version: job.version,
    };
    let nonce = find_nonce(job, work, SHARE_DIFFICULTY, valid, false);
    ShareData {
        worker: Arc::from(worker),
        job_id: job.id.clone(),
        extranonce1: work.extranonce1,
        extranonce2: work.extranonce2,
        ntime: work.ntime,
        nonce,
        version: work.version,
        difficulty: Difficulty::new(SHARE_DIFFICULTY).expect("d"),
        received_at_ms: 1_700_000_000_000 + e2,
        meets_upstream: false,
    }
}

fn credited(ledger: &Ledger, worker: &str) -> u64 {
    ledger
        .snapshot()
        .get(&Arc::<str>::from(worker))
        .map_or(0, |t| t.shares)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn batches_are_acked_after_journaling_credited_once_and_replays_are_acked_again() {
    init_tracing();
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-a", HARD_BITS);
    let (gw, ledger) = start(&pki, journal.path(), 20, &jobs);
    let addr = gw.local_addr();
    let edge_id = EdgeId::new("farm-1").expect("id");

    rt().block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-1", addr).await;
        let (welcome, job) = edge.handshake("farm-1", None).await;
        assert_eq!(welcome.shard_id, 3);
        // shard 3, lease 1: the first remote edge of this shard.
        assert_eq!(welcome.lease_prefix.as_bytes(), &[3, 1]);
        assert_eq!(welcome.extranonce2_size, 4);
        assert_eq!(welcome.acked_through, None);
        assert_eq!(welcome.policies.audit_per_mille, 20);
        assert_eq!(welcome.policies.max_batch_shares, 1000);
        assert_eq!(job.id.as_str(), "job-a");
        let epoch = welcome.epoch;
        let ctx = edge.ctx();

        // Liveness.
        edge.send_frame(ControlFrame::Ping { nonce: 77 }).await;
        assert_eq!(edge.frame().await, Some(ControlFrame::Pong { nonce: 77 }));

        let batch1 = shares(&job, &ctx, "alice.rig1", 0, 10);
        edge.send_batch(epoch, 1, &batch1).await;
        assert_eq!(edge.ack().await, (epoch, 1));
        assert_eq!(credited(&ledger, "alice.rig1"), 10);

        // The same batch again: acked again, not credited again.
        edge.send_batch(epoch, 1, &batch1).await;
        assert_eq!(edge.ack().await, (epoch, 1));
        assert_eq!(credited(&ledger, "alice.rig1"), 10);
        let stats = gw.stats();
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.shares_credited, 10);

        // A new job reaches the edge.
        jobs.publish("job-b", HARD_BITS);
        match edge.frame().await {
            Some(ControlFrame::Job(j)) => assert_eq!(j.job.id.as_str(), "job-b"),
            other => panic!("expected job-b, got {other:?}"),
        }

        // Out of order: seq 3 first (no ack possible: 2 is missing), then 2 acks through 3.
        edge.send_batch(epoch, 3, &shares(&job, &ctx, "bob.rig", 100, 3))
            .await;
        wait_until("seq 3 journaled", || credited(&ledger, "bob.rig") == 3).await;
        assert_eq!(gw.high_water(&edge_id, epoch), Some(1));
        edge.send_batch(epoch, 2, &shares(&job, &ctx, "bob.rig", 200, 2))
            .await;
        assert_eq!(edge.ack().await, (epoch, 3));
        assert_eq!(credited(&ledger, "bob.rig"), 5);
        assert_eq!(gw.high_water(&edge_id, epoch), Some(3));
        assert_eq!(gw.connected_edges(), vec![edge_id.clone()]);
    });
    let stats = gw.stats();
    assert_eq!((stats.batches, stats.shares_credited), (4, 15));
    gw.shutdown();

    // What journal-dump prints: every credited share once, with its identity.
    let mut reader = JournalReader::open(journal.path()).expect("reader");
    let dumped: Vec<_> = reader
        .shares()
        .expect("iter")
        .collect::<Result<_, _>>()
        .expect("decode");
    assert_eq!(dumped.len(), 15);
    let first = dumped[0].to_json();
    assert_eq!(first["worker"], "alice.rig1");
    assert_eq!(first["edge"], "farm-1");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["extranonce1"], "03010001");
    assert_eq!(first["extranonce2"], "00000000");
    assert_eq!(first["job_id"], "job-a");
    assert_eq!(first["kind"], "batch");
}

#[test]
fn a_restarted_core_keeps_high_water_marks_credits_and_leases() {
    init_tracing();
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-a", HARD_BITS);
    let edge_id = EdgeId::new("farm-2").expect("id");

    // A first edge takes lease 1, so farm-2's lease (2) is not the default one.
    let (gw, ledger) = start(&pki, journal.path(), 20, &jobs);
    let addr = gw.local_addr();
    let (epoch, prefix, job) = rt().block_on(async {
        let mut other = TestEdge::connect(&pki, &pki, "farm-x", addr).await;
        other.handshake("farm-x", None).await;
        let mut edge = TestEdge::connect(&pki, &pki, "farm-2", addr).await;
        let (welcome, job) = edge.handshake("farm-2", None).await;
        let ctx = edge.ctx();
        for seq in 1..=3 {
            edge.send_batch(
                welcome.epoch,
                seq,
                &shares(&job, &ctx, "carol.w", seq * 10, 4),
            )
            .await;
        }
        // Acks are cumulative: wait for the one through 3.
        while edge.ack().await != (welcome.epoch, 3) {}
        // Seq 5 is journaled but cannot be acked (4 is missing).
        edge.send_batch(welcome.epoch, 5, &shares(&job, &ctx, "carol.w", 50, 4))
            .await;
        wait_until("seq 5", || credited(&ledger, "carol.w") == 16).await;
        (welcome.epoch, welcome.lease_prefix, job)
    });
    let before = ledger.snapshot();
    gw.shutdown();

    let (gw, ledger) = start(&pki, journal.path(), 20, &jobs);
    assert_eq!(
        ledger.snapshot(),
        before,
        "credits rebuilt from the journal"
    );
    assert_eq!(gw.high_water(&edge_id, epoch), Some(3));
    let addr = gw.local_addr();
    rt().block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-2", addr).await;
        let resume = ResumeState { epoch, next_seq: 6 };
        let (welcome, _) = edge.handshake("farm-2", Some(resume)).await;
        assert_eq!(welcome.epoch, epoch, "the resumed epoch is kept");
        assert_eq!(welcome.acked_through, Some(3));
        assert_eq!(welcome.lease_prefix, prefix, "same lease after a restart");
        assert_eq!(prefix.as_bytes(), &[3, 2]);
        let ctx = edge.ctx();
        // The edge replays 5 (already journaled) and sends 4: ack through 5, 5 credited once.
        edge.send_batch(epoch, 5, &shares(&job, &ctx, "carol.w", 50, 4))
            .await;
        edge.send_batch(epoch, 4, &shares(&job, &ctx, "carol.w", 40, 4))
            .await;
        while edge.ack().await != (epoch, 5) {}
        assert_eq!(credited(&ledger, "carol.w"), 20);
        wait_until("the replay counted", || gw.stats().duplicates == 1).await;

        // A fresh session (no resume) gets a new, later epoch with nothing acked.
        let mut again = TestEdge::connect(&pki, &pki, "farm-2", addr).await;
        let (fresh, _) = again.handshake("farm-2", None).await;
        assert!(fresh.epoch > epoch);
        assert_eq!(fresh.acked_through, None);
        // ... and the older connection of the same edge is told it was replaced.
        let (code, _) = edge.error().await;
        assert_eq!(code, error_code::REPLACED);
    });
    assert_eq!(gw.stats().duplicates, 1);
    assert_eq!(credited(&ledger, "carol.w"), 20);
    gw.shutdown();
}

#[test]
fn a_share_failing_the_audit_is_not_credited_then_a_repeat_cuts_the_edge_off() {
    init_tracing();
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-a", HARD_BITS);
    let (gw, ledger) = start(&pki, journal.path(), 1000, &jobs);
    let addr = gw.local_addr();
    let edge_id = EdgeId::new("farm-liar").expect("id");

    rt().block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-liar", addr).await;
        let (welcome, job) = edge.handshake("farm-liar", None).await;
        let ctx = edge.ctx();
        let epoch = welcome.epoch;

        // Honest first: audited in full, credited.
        edge.send_batch(epoch, 1, &shares(&job, &ctx, "dave.w", 0, 5))
            .await;
        assert_eq!(edge.ack().await, (epoch, 1));
        assert_eq!(gw.stats().shares_audited, 5);

        // A batch with a share whose hash misses its claimed difficulty.
        let mut batch = shares(&job, &ctx, "dave.w", 10, 4);
        batch.insert(2, share(&job, &ctx, "dave.w", 99, false));
        edge.send_batch(epoch, 2, &batch).await;
        // Journaled and acked (the edge must not resend it), the forged share not credited.
        assert_eq!(edge.ack().await, (epoch, 2));
        assert_eq!(credited(&ledger, "dave.w"), 9);
        assert_eq!(gw.stats().audit_failures, 1);
        assert!(gw.is_fully_validated(&edge_id));

        // Shares on a job the core no longer knows cannot be audited: credited, counted.
        let mut unknown = shares(&job, &ctx, "dave.w", 20, 1);
        unknown[0].job_id = JobId::new("forgotten");
        edge.send_batch(epoch, 3, &unknown).await;
        assert_eq!(edge.ack().await, (epoch, 3));
        assert_eq!(gw.stats().audit_skipped, 1);
        assert_eq!(credited(&ledger, "dave.w"), 10);

        // Caught again: Error frame, connection closed, nothing of this batch credited.
        let mut batch = shares(&job, &ctx, "dave.w", 30, 2);
        batch.push(share(&job, &ctx, "dave.w", 98, false));
        edge.send_batch(epoch, 4, &batch).await;
        let (code, message) = edge.error().await;
        assert_eq!(code, error_code::AUDIT_FAILED);
        assert!(message.contains("failed the core's audit"), "{message}");
        let closed = tokio::time::timeout(WAIT, edge.conn.closed()).await;
        assert!(closed.is_ok(), "the core closed the connection");
        assert_eq!(credited(&ledger, "dave.w"), 10);
        assert_eq!(gw.high_water(&edge_id, epoch), Some(3));

        // Refused while banned.
        let mut back = TestEdge::connect(&pki, &pki, "farm-liar", addr).await;
        back.hello_as("farm-liar", PROTOCOL_VERSION, None).await;
        let (code, message) = back.error().await;
        assert_eq!(code, error_code::BANNED);
        assert!(message.contains("refused"), "{message}");
    });
    // Only the honest shares of the first offending batch made it into the journal's credits.
    let mut reader = JournalReader::open(journal.path()).expect("reader");
    let dumped: Vec<_> = reader
        .shares()
        .expect("iter")
        .collect::<Result<_, _>>()
        .expect("decode");
    assert_eq!(dumped.len(), 10);
    assert!(dumped
        .iter()
        .all(|s| s.share.extranonce2.as_bytes() != [0, 0, 0, 99]));
    drop(reader);
    gw.shutdown();
}

#[test]
fn a_block_candidate_is_revalidated_submitted_at_once_journaled_and_credited() {
    init_tracing();
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-easy", EASY_BITS);
    let (gw, ledger) = start(&pki, journal.path(), 0, &jobs);
    let addr = gw.local_addr();

    rt().block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-3", addr).await;
        let (welcome, job) = edge.handshake("farm-3", None).await;
        let ctx = edge.ctx();
        let mut s = share(&job, &ctx, "erin.w", 7, true);
        let work = ShareWork {
            extranonce1: s.extranonce1,
            extranonce2: s.extranonce2,
            ntime: s.ntime,
            nonce: 0,
            version: s.version,
        };
        s.nonce = find_nonce(&job, work, SHARE_DIFFICULTY, true, true);
        let header = job
            .header(&ShareWork {
                nonce: s.nonce,
                ..work
            })
            .to_bytes();
        let block = BlockFound {
            epoch: welcome.epoch,
            seq: 1,
            share: s.clone(),
            header,
            coinbase: job.coinbase(&s.extranonce1, &s.extranonce2),
        };
        edge.send_uni(&block.to_bytes().expect("encode")).await;
        assert_eq!(edge.ack().await, (welcome.epoch, 1));
        // Submitted from its own thread, not waited for by the journal or the ack.
        wait_until("the block submission", || !jobs.submitted().is_empty()).await;
        let submitted = jobs.submitted();
        assert_eq!(submitted.len(), 1);
        assert_eq!(submitted[0].header, header);
        assert_eq!(submitted[0].job_id.as_str(), "job-easy");
        let tally = &ledger.snapshot()[&Arc::<str>::from("erin.w")];
        assert_eq!((tally.shares, tally.blocks), (1, 1));

        // A "block" whose hash misses even its share difficulty: never submitted, not
        // credited, and the edge goes to full validation.
        let mut fake = block.clone();
        fake.seq = 2;
        let bad = share(&job, &ctx, "erin.w", 8, false);
        fake.share = bad;
        edge.send_uni(&fake.to_bytes().expect("encode")).await;
        assert_eq!(edge.ack().await, (welcome.epoch, 2));
        assert_eq!(jobs.submitted().len(), 1);
        assert_eq!(ledger.snapshot()[&Arc::<str>::from("erin.w")].shares, 1);
        assert!(gw.is_fully_validated(&EdgeId::new("farm-3").expect("id")));
    });
    assert_eq!(gw.stats().blocks, 2);
    assert_eq!(gw.stats().blocks_submitted, 1);
    gw.shutdown();
}

#[test]
fn an_edge_from_another_ca_a_wrong_version_and_a_wrong_name_are_refused() {
    init_tracing();
    let operator = Pki::new("Quarry operator CA");
    let rogue = Pki::new("Rogue CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-a", HARD_BITS);
    let (gw, _) = start(&operator, journal.path(), 20, &jobs);
    let addr = gw.local_addr();

    rt().block_on(async {
        // A certificate of another CA never gets a connection, let alone a Welcome.
        let endpoint = rogue.edge_endpoint("farm-1", &operator);
        let refused = match endpoint.connect(addr, "localhost").expect("connect").await {
            Err(_) => true,
            Ok(conn) => {
                let attempt = async {
                    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    let hello = ControlFrame::Hello(Hello {
                        protocol_version: PROTOCOL_VERSION,
                        edge_id: EdgeId::new("farm-1").map_err(|e| e.to_string())?,
                        software: "rogue".into(),
                        resume: None,
                    });
                    let bytes = hello.to_bytes().map_err(|e| e.to_string())?;
                    send.write_all(&bytes).await.map_err(|e| e.to_string())?;
                    let mut b = [0u8; 1];
                    recv.read_exact(&mut b).await.map_err(|e| e.to_string())
                };
                tokio::time::timeout(WAIT, attempt)
                    .await
                    .expect("refused in time")
                    .is_err()
            }
        };
        assert!(refused);

        let mut old = TestEdge::connect(&operator, &operator, "farm-1", addr).await;
        old.hello_as("farm-1", PROTOCOL_VERSION + 1, None).await;
        let (code, message) = old.error().await;
        assert_eq!(code, error_code::UNSUPPORTED_VERSION);
        assert!(message.contains("version"), "{message}");

        let mut liar = TestEdge::connect(&operator, &operator, "farm-1", addr).await;
        liar.hello_as("farm-9", PROTOCOL_VERSION, None).await;
        let (code, _) = liar.error().await;
        assert_eq!(code, error_code::IDENTITY_MISMATCH);

        let mut zero = TestEdge::connect(&operator, &operator, "farm-1", addr).await;
        let (welcome, job) = zero.handshake("farm-1", None).await;
        let ctx = zero.ctx();
        zero.send_batch(welcome.epoch, 0, &shares(&job, &ctx, "f.w", 0, 1))
            .await;
        let (code, message) = zero.error().await;
        assert_eq!(code, error_code::PROTOCOL_VIOLATION);
        assert!(message.contains("start at 1"), "{message}");
    });
    let stats = gw.stats();
    assert!(stats.refused >= 3, "{stats:?}");
    assert_eq!(stats.shares_credited, 0);
    gw.shutdown();
}

/// The whole path against litecoind: the real job manager's job reaches the edge through the
/// gateway, the edge's shares are audited with scrypt against it, and a block candidate the
/// edge mined becomes a block on the regtest chain.
#[test]
fn with_the_real_job_manager_an_edge_block_lands_on_the_regtest_chain() {
    use core_pool::jobs::{JobManager, JobManagerConfig};
    use core_pool::regtest::RegtestNet;
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = RegtestNet::start(dir.path()).expect("regtest network (needs litecoind)");
    let rpc = net.rpc_client();
    let mut config = JobManagerConfig::new(net.payout_address(), "/quarry-gw-test/");
    config.poll_interval = Duration::from_millis(200);
    let manager = Arc::new(JobManager::start(net.daemon_pool(), config).expect("job manager"));
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let mut cfg = gateway_config(&pki, journal.path(), 1000);
    cfg.algorithm = PowAlgorithm::Scrypt;
    let ledger = Arc::new(Ledger::default());
    let source: Arc<dyn JobSource> = manager.clone();
    let gw = Gateway::start(cfg, source, ledger.clone()).expect("gateway");
    let addr = gw.local_addr();
    let height_before: u64 = rpc.call("getblockcount", &[]).expect("count");

    rt().block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-rt", addr).await;
        let (welcome, job) = edge.handshake("farm-rt", None).await;
        let pool_job = manager
            .job(&job.id)
            .expect("the edge got the manager's job");
        assert_eq!(pool_job.job, job);
        let ctx = edge.ctx();
        let algo = PowAlgorithm::Scrypt;
        // Difficulty 2^-16 under scrypt's diff1 saturates to the largest target: every hash is
        // a share, about every other one a regtest block.
        let difficulty = Difficulty::new(1.0 / 65_536.0).expect("d");
        let network = Target::from_compact(job.nbits).expect("bits");
        let mine = |e2: u64, block: bool| {
            let work = ShareWork {
                extranonce1: extranonce1(&ctx, 9),
                extranonce2: Extranonce::from_counter(e2, 4).expect("e2"),
                ntime: job.ntime,
                nonce: 0,
                version: job.version,
            };
            let nonce = (0..10_000u32)
                .find(|&nonce| {
                    let h = algo.hash(&job.header(&ShareWork { nonce, ..work }).to_bytes());
                    network.is_met_by(&h) == block
                })
                .expect("a nonce");
            let work = ShareWork { nonce, ..work };
            let share = ShareData {
                worker: Arc::from("rt.worker"),
                job_id: job.id.clone(),
                extranonce1: work.extranonce1,
                extranonce2: work.extranonce2,
                ntime: work.ntime,
                nonce,
                version: work.version,
                difficulty,
                received_at_ms: 1,
                meets_upstream: false,
            };
            (share, job.header(&work).to_bytes())
        };
        let batch: Vec<ShareData> = (0..3).map(|i| mine(i, false).0).collect();
        edge.send_batch(welcome.epoch, 1, &batch).await;
        assert_eq!(edge.ack().await, (welcome.epoch, 1));
        assert_eq!(gw.stats().shares_audited, 3);
        assert_eq!(gw.stats().audit_failures, 0);

        let (share, header) = mine(100, true);
        let block = BlockFound {
            epoch: welcome.epoch,
            seq: 2,
            coinbase: job.coinbase(&share.extranonce1, &share.extranonce2),
            share,
            header,
        };
        edge.send_uni(&block.to_bytes().expect("encode")).await;
        assert_eq!(edge.ack().await, (welcome.epoch, 2));
        let hash = BlockHeader::from_bytes(&header)
            .block_hash()
            .to_display_hex();
        let deadline = Instant::now() + WAIT;
        loop {
            let best: String = rpc.call("getbestblockhash", &[]).expect("best");
            if best == hash {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "block {hash} never became the tip"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let count: u64 = rpc.call("getblockcount", &[]).expect("count");
    assert_eq!(count, height_before + 1);
    let tally = &ledger.snapshot()[&Arc::<str>::from("rt.worker")];
    assert_eq!((tally.shares, tally.blocks), (4, 1));
    gw.shutdown();
    drop(manager);
}

#[test]
fn many_batches_in_flight_at_once_are_credited_once_and_acks_never_go_back() {
    init_tracing();
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-a", HARD_BITS);
    let (gw, ledger) = start(&pki, journal.path(), 20, &jobs);
    let addr = gw.local_addr();
    const BATCHES: u64 = 60;
    rt().block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-busy", addr).await;
        let (welcome, job) = edge.handshake("farm-busy", None).await;
        let ctx = edge.ctx();
        let epoch = welcome.epoch;
        let batches: Vec<Vec<ShareData>> = (1..=BATCHES)
            .map(|seq| shares(&job, &ctx, "frank.w", seq * 10, 5))
            .collect();
        // All streams open at once, in reverse order, each batch sent twice.
        let mut sends = Vec::new();
        for (i, b) in batches.iter().enumerate().rev() {
            let seq = i as u64 + 1;
            let batch = Batch::from_shares(epoch, seq, b, &ctx, |_| None).expect("batch");
            let bytes = batch.to_bytes(&ctx).expect("encode");
            for _ in 0..2 {
                let conn = edge.conn.clone();
                let bytes = bytes.clone();
                sends.push(tokio::spawn(async move {
                    let mut s = conn.open_uni().await.expect("open");
                    s.write_all(&bytes).await.expect("write");
                    s.finish().expect("finish");
                }));
            }
        }
        for s in sends {
            s.await.expect("send task");
        }
        let mut last = 0;
        while last < BATCHES {
            let (e, through) = edge.ack().await;
            assert_eq!(e, epoch);
            assert!(through >= last, "ack went back from {last} to {through}");
            last = through;
        }
        wait_until("every replay counted", || gw.stats().duplicates == BATCHES).await;
        // The ledger is credited in the journal thread before any ack; the stats counter is
        // bumped by each batch's own task after its answer, which may run after a later
        // batch's cumulative ack went out: let it catch up.
        wait_until("the credited-shares counter", || {
            gw.stats().shares_credited >= BATCHES * 5
        })
        .await;
    });
    assert_eq!(credited(&ledger, "frank.w"), BATCHES * 5);
    assert_eq!(gw.stats().shares_credited, BATCHES * 5);
    gw.shutdown();
}

/// A stopping core tells its edges: they see the connection closed with SHUTDOWN at once, not
/// after the 20 s idle timeout (an edge's fallback to its backup pool counts from that moment).
#[test]
fn a_stopping_core_closes_its_edges_connections_at_once() {
    init_tracing();
    let pki = Pki::new("Quarry test CA");
    let journal = tempfile::tempdir().expect("journal dir");
    let jobs = Arc::new(TestJobs::default());
    jobs.publish("job-a", HARD_BITS);
    let (gw, _ledger) = start(&pki, journal.path(), 20, &jobs);
    let addr = gw.local_addr();
    let runtime = rt();
    let edge = runtime.block_on(async {
        let mut edge = TestEdge::connect(&pki, &pki, "farm-1", addr).await;
        edge.handshake("farm-1", None).await;
        edge
    });
    let stopped = Instant::now();
    gw.shutdown();
    let reason = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), edge.conn.closed())
            .await
            .expect("the edge hears of the shutdown within 5 s")
    });
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                quinn::VarInt::from_u32(u32::from(error_code::SHUTDOWN))
            );
        }
        other => panic!("closed by {other:?}, not by the core's shutdown"),
    }
    eprintln!("edge saw the shutdown {:?} after stop", stopped.elapsed());
}
