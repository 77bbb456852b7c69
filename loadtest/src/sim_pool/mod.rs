//! A simulated large upstream pool: a Stratum V1 server that issues jobs and verifies every
//! share it receives for real.
//!
//! Proxy mining can only be tested against a pool that judges our forwarded shares as a real one
//! would, so this one rebuilds each share's coinbase, merkle root and header and hashes it (see
//! [`session`]). It behaves like the big pools a farm proxies to: each connection gets its own
//! extranonce1 (default 4 bytes) and an extranonce2 size (default 8), version rolling is granted
//! by `mining.configure`, jobs come every `job_interval` (every `clean_every`-th on a new
//! prevhash, which makes older jobs stale), and the operator — here the test — can push
//! `mining.set_difficulty`, `mining.set_extranonce`, `mining.set_version_mask` and
//! `client.reconnect` to every connection, narrow the allowed version mask *without* telling
//! anyone (what a missed notification looks like from the client side), or shut the whole
//! pool down to simulate it dying.
//!
//! Threads: an acceptor, a job clock, one thread per connection (a proxy holds a handful).

pub mod session;

use relay::stratum::{ErrorCode, StratumError};
use relay::work::{
    CompactTarget, Difficulty, Extranonce, Job, JobId, PrevHash, Target, VersionMask,
};
use relay::{sha256d, Hash256, PowAlgorithm};
use serde::Serialize;
use session::{Judged, PoolView, SimSession};
use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// How the simulated pool behaves.
#[derive(Clone, Debug)]
pub struct SimPoolConfig {
    /// `127.0.0.1:0` for a free port.
    pub listen: SocketAddr,
    /// `stratum+ssl`: TLS with a self-signed certificate for `localhost` and `127.0.0.1`.
    pub tls: bool,
    pub algorithm: PowAlgorithm,
    pub extranonce1_size: usize,
    pub extranonce2_size: usize,
    /// The share difficulty of every connection.
    pub difficulty: Difficulty,
    /// The version-rolling mask granted (intersected with the client's request).
    pub version_mask: VersionMask,
    pub job_interval: Duration,
    /// Every this many jobs, one on a new prevhash (`clean_jobs`).
    pub clean_every: u64,
    /// The network target of the jobs; the default is mainnet-like, so no share is a block.
    pub nbits: CompactTarget,
    /// Shares on a superseded job (same prevhash) are accepted this long.
    pub stale_grace: Duration,
    pub seed: u64,
}

impl SimPoolConfig {
    pub fn new(listen: SocketAddr) -> Self {
        SimPoolConfig {
            listen,
            tls: false,
            algorithm: PowAlgorithm::Sha256d,
            extranonce1_size: 4,
            extranonce2_size: 8,
            difficulty: Difficulty::new(1.0).expect("1 is a difficulty"),
            version_mask: VersionMask::BIP320,
            job_interval: Duration::from_secs(30),
            clean_every: 4,
            nbits: CompactTarget(0x1d00_ffff),
            stale_grace: Duration::from_secs(30),
            seed: 1,
        }
    }
}

/// Why the pool refused a share (the keys of [`SimPoolStats::rejected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    Malformed,
    NotSubscribed,
    Unauthorized,
    JobNotFound,
    Stale,
    BadExtranonce2Size,
    BadNtime,
    BadVersionBits,
    Duplicate,
    LowDifficulty,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::NotSubscribed => "not-subscribed",
            Reject::Unauthorized => "unauthorized",
            Reject::JobNotFound => "job-not-found",
            Reject::Stale => "stale",
            Reject::BadExtranonce2Size => "bad-extranonce2-size",
            Reject::BadNtime => "bad-ntime",
            Reject::BadVersionBits => "bad-version-bits",
            Reject::Duplicate => "duplicate",
            Reject::LowDifficulty => "low-difficulty",
        }
    }

    /// The answer a pool sends (codes 20-25 of the original Stratum servers).
    pub fn to_stratum(self) -> StratumError {
        match self {
            Reject::Malformed => StratumError::new(ErrorCode::OTHER, "Malformed request"),
            Reject::NotSubscribed => StratumError::not_subscribed(),
            Reject::Unauthorized => StratumError::unauthorized(),
            Reject::JobNotFound => StratumError::job_not_found(),
            Reject::Stale => StratumError::stale(),
            Reject::BadExtranonce2Size => {
                StratumError::new(ErrorCode::OTHER, "Incorrect size of extranonce2")
            }
            Reject::BadNtime => StratumError::new(ErrorCode::OTHER, "ntime out of range"),
            Reject::BadVersionBits => {
                StratumError::new(ErrorCode::OTHER, "Version bits outside the allowed mask")
            }
            Reject::Duplicate => StratumError::duplicate(),
            Reject::LowDifficulty => StratumError::low_difficulty(),
        }
    }
}

/// Counts per authorized worker name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerStats {
    pub accepted: u64,
    pub accepted_difficulty: f64,
    pub rejected: BTreeMap<String, u64>,
}

/// A snapshot of what the pool has seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimPoolStats {
    pub connections_total: u64,
    pub connected: u64,
    pub accepted: u64,
    /// Sum of the difficulty each accepted share was judged at.
    pub accepted_difficulty: f64,
    pub rejected: BTreeMap<String, u64>,
    /// Accepted shares that meet the jobs' nbits.
    pub blocks: u64,
    pub per_worker: BTreeMap<String, WorkerStats>,
    pub jobs_issued: u64,
    /// For each stale reject, how long after its job went stale the share arrived (ms). A
    /// share that crossed the new block's notification in flight arrives within a few
    /// round trips; one that arrives seconds late means a client kept mining old work.
    pub stale_late_ms: Vec<u64>,
}

/// A job as the pool keeps it.
#[derive(Debug)]
pub struct SimJob {
    pub job: Job,
    pub network_target: Target,
    pub notify_line: String,
    /// When the job went stale (superseded past the grace, or on an old prevhash); shares on
    /// it are refused from then on.
    pub stale_since: Option<Instant>,
    pub superseded_at: Option<Instant>,
}

/// A share as it arrived, for latency measurements (the nonce and extranonce2 identify it).
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub extranonce2: Extranonce,
    pub nonce: u32,
    pub accepted: bool,
}

enum Push {
    Job(Arc<SimJob>),
    Difficulty(Difficulty),
    Extranonce,
    VersionMask(VersionMask),
    Reconnect {
        host: Option<String>,
        port: Option<u16>,
        wait: u64,
    },
}

struct State {
    cfg: SimPoolConfig,
    jobs: Vec<Arc<SimJob>>,
    seq: u64,
    height: u32,
    next_extranonce1: u64,
    difficulty: Difficulty,
    /// What shares are judged against; may differ from what was announced.
    version_mask: VersionMask,
    stats: SimPoolStats,
    arrivals: Vec<Arrival>,
    record_arrivals: bool,
    conns: Vec<crossbeam_channel::Sender<Push>>,
    force_clean: bool,
    /// Hung: connections stay open but nothing is read or answered.
    frozen: bool,
}

impl State {
    fn new_extranonce1(&mut self) -> Extranonce {
        self.next_extranonce1 += 1;
        let v = self.next_extranonce1 ^ (self.cfg.seed << 24);
        Extranonce::from_counter(v, self.cfg.extranonce1_size)
            .unwrap_or_else(|_| Extranonce::default())
    }

    fn next_job(&mut self) -> Arc<SimJob> {
        self.seq += 1;
        let clean = self.seq == 1
            || self.seq.is_multiple_of(self.cfg.clean_every.max(1))
            || std::mem::take(&mut self.force_clean);
        if clean {
            self.height += 1;
        }
        let now = Instant::now();
        for j in &mut self.jobs {
            let mut nj = SimJob {
                job: j.job.clone(),
                network_target: j.network_target,
                notify_line: j.notify_line.clone(),
                stale_since: j.stale_since.or(clean.then_some(now)),
                superseded_at: j.superseded_at.or(Some(now)),
            };
            if nj.stale_since.is_none()
                && nj
                    .superseded_at
                    .is_some_and(|t| now.saturating_duration_since(t) > self.cfg.stale_grace)
            {
                nj.stale_since = Some(now);
            }
            *j = Arc::new(nj);
        }
        let ntime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let job = build_job(&self.cfg, self.seq, self.height, clean, ntime);
        let notify_line = relay::stratum::ServerNotification::Notify(job.clone())
            .encode(&relay::stratum::RequestId::Null);
        let sj = Arc::new(SimJob {
            network_target: Target::from_compact(job.nbits).unwrap_or(Target::ZERO),
            job,
            notify_line,
            stale_since: None,
            superseded_at: None,
        });
        self.jobs.push(sj.clone());
        if self.jobs.len() > 16 {
            self.jobs.remove(0);
        }
        self.stats.jobs_issued += 1;
        sj
    }

    fn broadcast(&mut self, p: impl Fn() -> Push) {
        self.conns.retain(|c| c.send(p()).is_ok());
    }
}

/// Starts pools.
pub struct SimPool;

/// A running simulated pool. Dropping it shuts it down.
pub struct SimPoolHandle {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    cert_pem: Option<String>,
}

impl SimPool {
    pub fn start(cfg: SimPoolConfig) -> io::Result<SimPoolHandle> {
        let listener = TcpListener::bind(cfg.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tls, cert_pem) = if cfg.tls {
            let (c, pem) = tls_config().map_err(io::Error::other)?;
            (Some(c), Some(pem))
        } else {
            (None, None)
        };
        let mut state = State {
            difficulty: cfg.difficulty,
            version_mask: cfg.version_mask,
            cfg,
            jobs: Vec::new(),
            seq: 0,
            height: 100_000,
            next_extranonce1: 0,
            stats: SimPoolStats::default(),
            arrivals: Vec::new(),
            record_arrivals: false,
            conns: Vec::new(),
            force_clean: false,
            frozen: false,
        };
        state.next_job();
        let interval = state.cfg.job_interval;
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (state, stop) = (state.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("simpool-accept".into())
                    .spawn(move || accept_loop(listener, state, stop, tls))?,
            );
        }
        {
            let (state, stop) = (state.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("simpool-jobs".into())
                    .spawn(move || {
                        let mut next = Instant::now() + interval;
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                            if Instant::now() >= next {
                                next += interval;
                                let mut s = state.lock();
                                let j = s.next_job();
                                s.broadcast(|| Push::Job(j.clone()));
                            }
                        }
                    })?,
            );
        }
        Ok(SimPoolHandle {
            addr,
            state,
            stop,
            threads,
            cert_pem,
        })
    }
}

impl SimPoolHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The self-signed certificate TLS clients must trust (PEM), when TLS is on.
    pub fn cert_pem(&self) -> Option<String> {
        self.cert_pem.clone()
    }

    pub fn stats(&self) -> SimPoolStats {
        self.state.lock().stats.clone()
    }

    /// Keep every share's arrival time (for latency benches); off by default.
    pub fn record_arrivals(&self, on: bool) {
        self.state.lock().record_arrivals = on;
    }

    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut self.state.lock().arrivals)
    }

    /// A new job now (on a new prevhash when `clean`).
    pub fn new_job(&self, clean: bool) {
        let mut s = self.state.lock();
        s.force_clean |= clean;
        let j = s.next_job();
        s.broadcast(|| Push::Job(j.clone()));
    }

    pub fn set_difficulty(&self, d: Difficulty) {
        let mut s = self.state.lock();
        s.difficulty = d;
        s.broadcast(|| Push::Difficulty(d));
    }

    /// A new extranonce1 for every session that subscribed to extranonce changes, followed by a
    /// clean job; shares hashed with the old one fail from now on.
    pub fn set_extranonce_all(&self) {
        let mut s = self.state.lock();
        s.broadcast(|| Push::Extranonce);
        s.force_clean = true;
        let j = s.next_job();
        s.broadcast(|| Push::Job(j.clone()));
    }

    pub fn reconnect_all(&self, host: Option<String>, port: Option<u16>, wait_secs: u64) {
        let mut s = self.state.lock();
        s.broadcast(|| Push::Reconnect {
            host: host.clone(),
            port,
            wait: wait_secs,
        });
    }

    /// Narrows the mask and tells every session (`mining.set_version_mask`).
    pub fn set_version_mask(&self, m: VersionMask) {
        let mut s = self.state.lock();
        s.version_mask = m;
        s.cfg.version_mask = m;
        s.broadcast(|| Push::VersionMask(m));
    }

    /// Narrows the mask shares are judged against without telling anyone: clients that roll
    /// the other bits are rejected wholesale until they resubscribe (new connections are
    /// granted only the new mask).
    pub fn set_version_mask_silently(&self, m: VersionMask) {
        let mut s = self.state.lock();
        s.version_mask = m;
        s.cfg.version_mask = m;
    }

    /// Hangs the pool (`true`) or wakes it: while hung its sockets stay open, but nothing is
    /// read, answered or sent — a pool process stuck, or a path that black-holes packets.
    pub fn freeze(&self, on: bool) {
        self.state.lock().frozen = on;
    }

    /// Closes the listener and every connection; the port is free when this returns.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SimPoolHandle {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, _)) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let (e1, d) = {
                    let mut s = state.lock();
                    s.conns.push(tx);
                    s.stats.connections_total += 1;
                    s.stats.connected += 1;
                    (s.new_extranonce1(), s.difficulty)
                };
                let (state, stop, tls) = (state.clone(), stop.clone(), tls.clone());
                if let Ok(h) = std::thread::Builder::new()
                    .name("simpool-conn".into())
                    .spawn(move || {
                        let _ = serve(sock, e1, d, &state, &stop, &rx, tls);
                        state.lock().stats.connected -= 1;
                    })
                {
                    conns.push(h);
                }
                conns.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    drop(listener);
    for h in conns {
        let _ = h.join();
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn serve(
    sock: TcpStream,
    extranonce1: Extranonce,
    difficulty: Difficulty,
    state: &Mutex<State>,
    stop: &AtomicBool,
    pushes: &crossbeam_channel::Receiver<Push>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    sock.set_nodelay(true)?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut stream = match tls {
        None => Stream::Plain(sock),
        Some(cfg) => Stream::Tls(Box::new(rustls::StreamOwned::new(
            rustls::ServerConnection::new(cfg).map_err(io::Error::other)?,
            sock,
        ))),
    };
    let mut session = SimSession::new(extranonce1, difficulty);
    let mut framer = relay::stratum::LineFramer::new(64 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut sent_first_job = false;
    while !stop.load(Ordering::Relaxed) {
        if state.lock().frozen {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => framer.push(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        while let Some(line) = framer.next_line() {
            let Ok(line) = line else {
                out.extend_from_slice(
                    b"{\"id\":null,\"result\":null,\"error\":[20,\"Line too long\",null]}\n",
                );
                continue;
            };
            let at = Instant::now();
            let mut s = state.lock();
            let view = PoolView {
                algorithm: s.cfg.algorithm,
                jobs: &s.jobs,
                version_mask: s.version_mask,
                extranonce2_size: s.cfg.extranonce2_size,
            };
            let judged = session.handle_line(&line, &view, &mut out);
            record(&mut s, judged, at, &line);
            if session.is_subscribed() && !sent_first_job {
                sent_first_job = true;
                if let Some(j) = s.jobs.last().cloned() {
                    let d = s.difficulty;
                    session.notify(&j, d, &mut out);
                }
            }
        }
        while let Ok(p) = pushes.try_recv() {
            if !session.is_subscribed() {
                continue;
            }
            match p {
                Push::Job(j) => {
                    let d = state.lock().difficulty;
                    session.notify(&j, d, &mut out);
                }
                Push::Difficulty(d) => {
                    session.difficulty = d;
                    out.extend_from_slice(
                        relay::stratum::ServerNotification::SetDifficulty(d)
                            .encode(&relay::stratum::RequestId::Null)
                            .as_bytes(),
                    );
                }
                Push::Extranonce => {
                    if session.extranonce_subscribed {
                        let (e1, size) = {
                            let mut s = state.lock();
                            (s.new_extranonce1(), s.cfg.extranonce2_size)
                        };
                        session.extranonce1 = e1;
                        out.extend_from_slice(
                            relay::stratum::ServerNotification::SetExtranonce {
                                extranonce1: e1,
                                extranonce2_size: size,
                            }
                            .encode(&relay::stratum::RequestId::Null)
                            .as_bytes(),
                        );
                    }
                }
                Push::VersionMask(m) => out.extend_from_slice(
                    relay::stratum::ServerNotification::SetVersionMask(m)
                        .encode(&relay::stratum::RequestId::Null)
                        .as_bytes(),
                ),
                Push::Reconnect { host, port, wait } => out.extend_from_slice(
                    relay::stratum::ServerNotification::Reconnect {
                        host,
                        port,
                        wait_secs: Some(wait),
                    }
                    .encode(&relay::stratum::RequestId::Null)
                    .as_bytes(),
                ),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            stream.flush()?;
            out.clear();
        }
    }
    Ok(())
}

fn record(s: &mut State, judged: Judged, at: Instant, line: &[u8]) {
    let (worker, result) = match judged {
        Judged::Other => return,
        Judged::Accepted {
            worker,
            difficulty,
            block,
        } => {
            s.stats.accepted += 1;
            s.stats.accepted_difficulty += difficulty;
            if block {
                s.stats.blocks += 1;
            }
            let w = s.stats.per_worker.entry(worker.clone()).or_default();
            w.accepted += 1;
            w.accepted_difficulty += difficulty;
            (worker, None)
        }
        Judged::Rejected { worker, reason } => {
            *s.stats.rejected.entry(reason.as_str().into()).or_default() += 1;
            if reason == Reject::Stale {
                if let Some(since) = submitted_job(line)
                    .and_then(|id| s.jobs.iter().find(|j| j.job.id.as_str() == id))
                    .and_then(|j| j.stale_since)
                {
                    let late = at.saturating_duration_since(since).as_millis() as u64;
                    s.stats.stale_late_ms.push(late);
                }
            }
            if !worker.is_empty() {
                *s.stats
                    .per_worker
                    .entry(worker.clone())
                    .or_default()
                    .rejected
                    .entry(reason.as_str().into())
                    .or_default() += 1;
            }
            (worker, Some(reason))
        }
    };
    let _ = worker;
    metrics::counter!("quarry_simpool_shares_total",
        "result" => result.map_or("accepted", Reject::as_str))
    .increment(1);
    if s.record_arrivals {
        if let Ok(relay::stratum::Request {
            body: relay::stratum::ClientRequest::Submit(sub),
            ..
        }) = relay::stratum::Request::parse(line)
        {
            s.arrivals.push(Arrival {
                at,
                extranonce2: sub.extranonce2,
                nonce: sub.nonce,
                accepted: result.is_none(),
            });
        }
    }
}

/// The job id of a submit line.
fn submitted_job(line: &[u8]) -> Option<String> {
    match relay::stratum::Request::parse(line).ok()?.body {
        relay::stratum::ClientRequest::Submit(sub) => Some(sub.job_id.to_string()),
        _ => None,
    }
}

/// Job `seq` on block `height`: a coinbase with BIP34 height and a tag around the extranonce
/// space, a 4-level merkle branch of real hashes, version 0x20000000.
pub(crate) fn build_job(
    cfg: &SimPoolConfig,
    seq: u64,
    height: u32,
    clean: bool,
    ntime: u32,
) -> Job {
    const TAG: &[u8] = b"/sim-pool/";
    let mut coinb1 = Vec::with_capacity(64);
    coinb1.extend_from_slice(&1u32.to_le_bytes());
    coinb1.push(1);
    coinb1.extend_from_slice(&[0; 32]);
    coinb1.extend_from_slice(&u32::MAX.to_le_bytes());
    let script_len = 4 + TAG.len() + cfg.extranonce1_size + cfg.extranonce2_size + 8;
    coinb1.push(script_len as u8);
    coinb1.push(3);
    coinb1.extend_from_slice(&height.to_le_bytes()[..3]);
    coinb1.extend_from_slice(TAG);
    let mut coinb2 = Vec::with_capacity(64);
    coinb2.extend_from_slice(&(seq ^ cfg.seed).to_le_bytes());
    coinb2.extend_from_slice(&u32::MAX.to_le_bytes());
    coinb2.push(1);
    coinb2.extend_from_slice(&625_000_000u64.to_le_bytes());
    coinb2.push(22);
    coinb2.extend_from_slice(&[0x00, 0x14]);
    coinb2.extend_from_slice(&sha256d(&cfg.seed.to_le_bytes())[..20]);
    coinb2.extend_from_slice(&0u32.to_le_bytes());
    let branch = (0..4u64)
        .map(|i| sha256d(&[seq.to_le_bytes(), i.to_le_bytes(), cfg.seed.to_le_bytes()].concat()))
        .collect();
    Job::new(
        JobId::new(&format!("sim{:x}", seq)),
        PrevHash(Hash256(sha256d(
            &[height.to_le_bytes(), (cfg.seed as u32).to_le_bytes()].concat(),
        ))),
        coinb1,
        coinb2,
        branch,
        0x2000_0000,
        cfg.nbits,
        ntime,
        clean,
    )
}

fn tls_config() -> Result<(Arc<rustls::ServerConfig>, String), String> {
    let ca = relay::quic::certs::generate_ca("sim pool").map_err(|e| e.to_string())?;
    let cert = relay::quic::certs::issue_core_cert(&ca, &["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| e.to_string())?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(
        cert.cert_chain().map_err(|e| e.to_string())?,
        cert.private_key().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok((Arc::new(cfg), ca.cert_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn submit_on(job: &str) -> String {
        format!(
            "{{\"id\":9,\"method\":\"mining.submit\",\"params\":[\"w\",\"{job}\",\"0000000000000000\",\"00000000\",\"00000000\"]}}\n"
        )
    }

    /// A share on a job that a new block made stale is refused as stale, and the pool times
    /// how long after the block it came: what tells a race from a client left on old work.
    #[test]
    fn a_share_on_the_previous_block_is_stale_and_timed_from_the_block() {
        let mut cfg = SimPoolConfig::new("127.0.0.1:0".parse().unwrap());
        cfg.job_interval = Duration::from_secs(3_600);
        let pool = SimPool::start(cfg).unwrap();
        let mut conn = TcpStream::connect(pool.local_addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut lines = BufReader::new(conn.try_clone().unwrap()).lines();
        conn.write_all(
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n\
              {\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"w\",\"x\"]}\n",
        )
        .unwrap();
        let mut wait_for = |needle: &str| loop {
            let l = lines.next().expect("the pool answers").unwrap();
            if l.contains(needle) {
                return l;
            }
        };
        wait_for("sim1");
        pool.new_job(true);
        wait_for("sim2");
        std::thread::sleep(Duration::from_millis(60));
        conn.write_all(submit_on("sim1").as_bytes()).unwrap();
        let answer = wait_for("\"id\":9");
        assert!(answer.contains("\"error\":[21"), "{answer}");
        let stats = pool.stats();
        assert_eq!(stats.rejected.get("stale"), Some(&1), "{stats:?}");
        assert_eq!(stats.stale_late_ms.len(), 1);
        assert!(stats.stale_late_ms[0] >= 60, "{stats:?}");
        pool.shutdown();
    }
}
