//! A blocking runner: N simulated miners over TCP, one thread each.
//!
//! Each thread connects with a std `TcpStream`, drives a [`MinerSession`] with what it reads,
//! hashes at a capped rate (a token bucket of hashes per second, so a regtest daemon is not
//! flooded with blocks), reconnects with exponential backoff when the pool drops it, and closes
//! the connection now and then on purpose when churn is configured. At the end of the run each
//! miner stops hashing and waits a moment for the answers to its last submits, so the counts
//! on both sides agree. One thread per miner is fine for tens of miners; for thousands of
//! connections, [`super::mio_runner`] drives the same sessions from a few event loops.

use super::client::{Event, MinerSession, Profile, SessionConfig, SessionState, ShareMix, Verdict};
use super::stats::{new_latency_histogram, LatencySummary, MinerStats, SessionStats};
use hdrhistogram::Histogram;
use relay::stratum::{LineFramer, DEFAULT_MAX_LINE};
use relay::work::Difficulty;
use relay::PowAlgorithm;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A pool address: `stratum+tcp://host:port` (or plain `host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StratumUrl {
    pub host: String,
    pub port: u16,
}

impl FromStr for StratumUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = if let Some((scheme, rest)) = s.split_once("://") {
            match scheme {
                "stratum+tcp" | "tcp" => rest,
                other => {
                    return Err(format!(
                        "url '{s}': scheme '{other}' is not supported (use stratum+tcp://host:port)"
                    ))
                }
            }
        } else {
            s
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("url '{s}': missing :port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("url '{s}': missing host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("url '{s}': port '{port}' is not a number in 1..65535"))?;
        Ok(StratumUrl {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for StratumUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "stratum+tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "stratum+tcp://{}:{}", self.host, self.port)
        }
    }
}

/// The profile of each miner: one for all, or the three profiles in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileChoice {
    Fixed(Profile),
    /// Miner `i` gets `Profile::ALL[i % 3]`.
    Mixed,
}

impl ProfileChoice {
    pub fn for_miner(self, index: usize) -> Profile {
        match self {
            ProfileChoice::Fixed(p) => p,
            ProfileChoice::Mixed => Profile::ALL[index % Profile::ALL.len()],
        }
    }
}

impl FromStr for ProfileChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "mixed" {
            return Ok(ProfileChoice::Mixed);
        }
        s.parse().map(ProfileChoice::Fixed).map_err(|_| {
            format!("unknown miner profile '{s}' (known: asic, nicehash, cpuminer, mixed)")
        })
    }
}

/// Everything about a run of simulated miners.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub url: StratumUrl,
    pub miners: usize,
    pub algorithm: PowAlgorithm,
    /// Proof-of-work hashes per second per miner (0: connect and follow jobs without hashing).
    pub hashrate: f64,
    pub profile: ProfileChoice,
    /// `account` or `account.worker`; miner `i` authorizes as `account.worker{i}`
    /// (worker defaults to `miner`).
    pub user: String,
    pub password: String,
    pub suggest_difficulty: Option<Difficulty>,
    pub mix: ShareMix,
    /// Stop after this long (`None`: only when the stop flag is set).
    pub duration: Option<Duration>,
    /// Close each connection after this long, and reconnect at once.
    pub churn: Option<Duration>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// At the end, how long a miner waits for answers to its last submits.
    pub drain_timeout: Duration,
    pub progress_every: Duration,
    pub seed: u64,
    /// Local addresses the client sockets bind to before connecting, used in turn (miner `i`
    /// binds `source_addrs[i % len]`); empty lets the OS choose. Towards one pool address each
    /// source address has its own ~28k ephemeral ports, so storms beyond that need several
    /// (`127.0.0.x` all reach loopback). Mio engine only.
    pub source_addrs: Vec<IpAddr>,
    /// Event-loop threads of the mio engine; 0 means one per core.
    pub threads: usize,
    /// New connections per second while the miners first connect (mio engine); `None` opens
    /// them all at once.
    pub ramp: Option<f64>,
    /// Keep the identity of every accepted share (exactly-once checks).
    pub record_accepted: bool,
}

impl RunConfig {
    pub fn new(url: StratumUrl, miners: usize, algorithm: PowAlgorithm) -> Self {
        RunConfig {
            url,
            miners,
            algorithm,
            hashrate: 20.0,
            profile: ProfileChoice::Mixed,
            user: "loadtest".into(),
            password: "x".into(),
            suggest_difficulty: None,
            mix: ShareMix::ALL_VALID,
            duration: Some(Duration::from_secs(60)),
            churn: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(2),
            progress_every: Duration::from_secs(5),
            seed: 1,
            record_accepted: false,
            source_addrs: Vec::new(),
            threads: 0,
            ramp: None,
        }
    }

    /// The `account.worker` name of miner `index`.
    pub fn username(&self, index: usize) -> String {
        match self.user.split_once('.') {
            Some((account, worker)) => format!("{account}.{worker}{index}"),
            None => format!("{}.miner{index}", self.user),
        }
    }

    pub(super) fn validate(&self) -> Result<(), RunError> {
        if self.miners == 0 {
            return Err(RunError::Config("miner count must be at least 1".into()));
        }
        if !(self.hashrate.is_finite() && self.hashrate >= 0.0) {
            return Err(RunError::Config(format!(
                "hashrate {} is not a non-negative number of hashes per second",
                self.hashrate
            )));
        }
        self.mix.validate().map_err(RunError::Config)?;
        if let Some(r) = self.ramp {
            if !(r.is_finite() && r > 0.0) {
                return Err(RunError::Config(format!(
                    "ramp {r} is not a positive number of connections per second"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bad run configuration: {0}")]
    Config(String),
    #[error("could not start miner thread {index}: {source}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
}

/// Running totals for progress lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    pub connected: i64,
    /// Connections whose miner is authorized.
    pub authorized: i64,
    pub hashes: u64,
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub unexpected_rejects: u64,
    pub blocks: u64,
    /// Submit latencies (µs) of the answers that arrived since the previous progress report,
    /// so a caller can plot percentiles over time from real answers. Filled by the mio runner
    /// (flushed from its threads every [`LATENCY_FLUSH`]); the threaded runner leaves it empty.
    pub interval_latency_us: Option<Histogram<u64>>,
    /// The same answers, to their arrival in the socket (the kernel's stamp): a second whose
    /// read latency rose but whose arrival latency did not was slowed by the harness itself.
    pub interval_arrival_us: Option<Histogram<u64>>,
}

/// How often the mio runner's threads hand their interval latencies to [`Live`]: the
/// attribution of an answer to a progress interval is late by at most this much.
pub const LATENCY_FLUSH: Duration = Duration::from_millis(50);

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{:>6.1}s connected {} authorized {} hashes {} ({:.1} H/s) submitted {} accepted {} rejected {} unexpected {} blocks {}",
            self.elapsed.as_secs_f64(),
            self.connected,
            self.authorized,
            self.hashes,
            self.hashes as f64 / secs,
            self.submitted,
            self.accepted,
            self.rejected,
            self.unexpected_rejects,
            self.blocks
        )
    }
}

/// Live totals shared by the miners of a run, read for progress lines.
#[derive(Default)]
pub(super) struct Live {
    pub(super) connected: AtomicI64,
    pub(super) authorized: AtomicI64,
    hashes: AtomicU64,
    submitted: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    unexpected: AtomicU64,
    blocks: AtomicU64,
    /// Latencies answered since the last snapshot (touched every [`LATENCY_FLUSH`] per thread,
    /// not per answer).
    interval_latency: parking_lot::Mutex<Option<(Histogram<u64>, Histogram<u64>)>>,
}

impl Live {
    /// Adds a thread's interval latencies (to the read, and to the arrival); the caller resets
    /// its own histograms.
    pub(super) fn add_latencies(&self, read: &Histogram<u64>, arrival: &Histogram<u64>) {
        let mut interval = self.interval_latency.lock();
        let (r, a) =
            interval.get_or_insert_with(|| (new_latency_histogram(), new_latency_histogram()));
        // Same bounds on both sides (new_latency_histogram), so this cannot fail.
        let _ = r.add(read);
        let _ = a.add(arrival);
    }

    /// Totals now, and the latencies answered since the previous snapshot (taken away).
    pub(super) fn snapshot(&self, elapsed: Duration) -> Progress {
        let (read, arrival) = self
            .interval_latency
            .lock()
            .take()
            .unwrap_or_else(|| (new_latency_histogram(), new_latency_histogram()));
        Progress {
            interval_latency_us: Some(read),
            interval_arrival_us: Some(arrival),
            elapsed,
            connected: self.connected.load(Ordering::Relaxed),
            authorized: self.authorized.load(Ordering::Relaxed),
            hashes: self.hashes.load(Ordering::Relaxed),
            submitted: self.submitted.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            unexpected_rejects: self.unexpected.load(Ordering::Relaxed),
            blocks: self.blocks.load(Ordering::Relaxed),
        }
    }
}

/// What the miners of one thread counted.
pub(super) struct MinerTotals {
    pub(super) stats: SessionStats,
    /// Submit latency once every miner of the thread was up (see [`MinerStats::steady_latency_us`]).
    pub(super) steady_latency_us: Histogram<u64>,
    /// Submit to the answer's arrival in the socket (see [`MinerStats::arrival_latency_us`]).
    pub(super) arrival_latency_us: Histogram<u64>,
    pub(super) connects: u64,
    pub(super) connect_failures: u64,
    pub(super) disconnects: u64,
    pub(super) churn_disconnects: u64,
}

impl Default for MinerTotals {
    fn default() -> Self {
        MinerTotals {
            stats: SessionStats::default(),
            steady_latency_us: new_latency_histogram(),
            arrival_latency_us: new_latency_histogram(),
            connects: 0,
            connect_failures: 0,
            disconnects: 0,
            churn_disconnects: 0,
        }
    }
}

impl MinerTotals {
    pub(super) fn merge(&mut self, t: &MinerTotals) {
        self.stats.merge(&t.stats);
        for (into, from) in [
            (&mut self.steady_latency_us, &t.steady_latency_us),
            (&mut self.arrival_latency_us, &t.arrival_latency_us),
        ] {
            for v in from.iter_recorded() {
                into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.connects += t.connects;
        self.connect_failures += t.connect_failures;
        self.disconnects += t.disconnects;
        self.churn_disconnects += t.churn_disconnects;
    }

    pub(super) fn into_summary(self, miners: usize, elapsed: Duration) -> MinerStats {
        MinerStats {
            miners,
            elapsed_secs: elapsed.as_secs_f64(),
            connects: self.connects,
            connect_failures: self.connect_failures,
            disconnects: self.disconnects,
            churn_disconnects: self.churn_disconnects,
            latency_us: LatencySummary::of(&self.stats.latency_us),
            steady_latency_us: (!self.steady_latency_us.is_empty())
                .then(|| LatencySummary::of(&self.steady_latency_us)),
            arrival_latency_us: (!self.arrival_latency_us.is_empty())
                .then(|| LatencySummary::of(&self.arrival_latency_us)),
            shares: self.stats.counts,
            problems: self.stats.problems,
            accepted_ids: self.stats.accepted_ids,
        }
    }
}

/// Runs the miners until the duration elapses or `stop` is set, calling `progress` from the
/// calling thread every `progress_every`, and returns the summary.
pub fn run(
    config: &RunConfig,
    stop: Arc<AtomicBool>,
    mut progress: impl FnMut(&Progress),
) -> Result<MinerStats, RunError> {
    config.validate()?;
    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);
    let live = Arc::new(Live::default());
    let cfg = Arc::new(config.clone());
    let mut handles = Vec::with_capacity(config.miners);
    for index in 0..config.miners {
        let (thread_cfg, thread_stop, thread_live) = (cfg.clone(), stop.clone(), live.clone());
        let h = thread::Builder::new()
            .name(format!("miner-{index}"))
            .spawn(move || miner_thread(index, &thread_cfg, &thread_stop, deadline, &thread_live))
            .map_err(|source| {
                stop.store(true, Ordering::Relaxed);
                RunError::Spawn { index, source }
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    let mut next_progress = start + config.progress_every;
    while !handles.iter().all(|h| h.is_finished()) {
        let now = Instant::now();
        if now >= next_progress {
            progress(&live.snapshot(now - start));
            next_progress += config.progress_every;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut totals = MinerTotals::default();
    for (index, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(t) => totals.merge(&t),
            Err(_) => totals
                .stats
                .note_problem(format!("miner {index}: thread panicked")),
        }
    }
    let elapsed = start.elapsed();
    progress(&live.snapshot(elapsed));
    Ok(totals.into_summary(config.miners, elapsed))
}

/// Why a connection ended.
pub(super) enum End {
    /// The run is over (answers to the last submits drained).
    Stopped,
    Churn,
    /// The pool closed the connection, an I/O error, or a failed handshake.
    Lost(String),
    /// `client.reconnect`.
    Redirect {
        host: Option<String>,
        port: Option<u16>,
        wait: Duration,
    },
}

struct Clock<'a> {
    stop: &'a AtomicBool,
    deadline: Option<Instant>,
}

impl Clock<'_> {
    fn should_stop(&self, now: Instant) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| now >= d)
    }

    /// Sleeps up to `d`, waking early when the run ends. Returns false if it did.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            if self.should_stop(now) {
                return false;
            }
            if now >= until {
                return true;
            }
            thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

fn miner_thread(
    index: usize,
    cfg: &RunConfig,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    live: &Live,
) -> MinerTotals {
    let clock = Clock { stop, deadline };
    let mut totals = MinerTotals::default();
    let mut backoff = cfg.backoff_initial;
    let mut target = cfg.url.clone();
    let profile = cfg.profile.for_miner(index);
    let username = cfg.username(index);
    let mut attempt = 0u64;
    while !clock.should_stop(Instant::now()) {
        attempt += 1;
        let stream = match connect(&target, cfg.connect_timeout) {
            Ok(s) => s,
            Err(e) => {
                totals.connect_failures += 1;
                debug!(miner = index, url = %target, error = %e, "connect failed, retrying in {backoff:?}");
                clock.sleep(backoff);
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        totals.connects += 1;
        live.connected.fetch_add(1, Ordering::Relaxed);
        let mut session_cfg = SessionConfig::new(profile, cfg.algorithm, username.clone());
        session_cfg.password = cfg.password.clone();
        session_cfg.record_accepted = cfg.record_accepted;
        session_cfg.suggest_difficulty = cfg.suggest_difficulty;
        session_cfg.mix = cfg.mix;
        session_cfg.response_timeout = cfg.response_timeout;
        session_cfg.seed = cfg
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((index as u64) << 32 | attempt);
        let mut session = MinerSession::new(session_cfg);
        let (end, authorized) = drive(index, stream, &mut session, cfg, &clock, live);
        live.connected.fetch_sub(1, Ordering::Relaxed);
        if authorized {
            live.authorized.fetch_sub(1, Ordering::Relaxed);
        }
        totals.stats.merge(&session.into_stats());
        if authorized {
            backoff = cfg.backoff_initial;
        }
        match end {
            End::Stopped => break,
            End::Churn => {
                totals.churn_disconnects += 1;
                debug!(miner = index, "churn: reconnecting");
            }
            End::Lost(why) => {
                totals.disconnects += 1;
                info!(
                    miner = index,
                    "connection lost ({why}), reconnecting in {backoff:?}"
                );
                clock.sleep(backoff);
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
            End::Redirect { host, port, wait } => {
                totals.disconnects += 1;
                if let Some(h) = host.filter(|h| !h.is_empty()) {
                    target.host = h;
                }
                if let Some(p) = port {
                    target.port = p;
                }
                info!(miner = index, url = %target, "client.reconnect: reconnecting in {wait:?}");
                clock.sleep(wait);
            }
        }
    }
    totals
}

fn connect(url: &StratumUrl, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("{url}: no address"))))
}

/// Drives one connection; returns why it ended and whether the miner got authorized.
fn drive(
    index: usize,
    mut stream: TcpStream,
    session: &mut MinerSession,
    cfg: &RunConfig,
    clock: &Clock<'_>,
    live: &Live,
) -> (End, bool) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_write_timeout(Some(Duration::from_secs(10))) {
        return (End::Lost(format!("set_write_timeout: {e}")), false);
    }
    let mut framer = LineFramer::new(DEFAULT_MAX_LINE);
    let mut buf = vec![0u8; 16 * 1024];
    let connected_at = Instant::now();
    let mut authorized = false;
    let mut draining: Option<Instant> = None;
    let mut tokens = 0.0f64;
    let mut last_refill = connected_at;
    let rate = cfg.hashrate;
    let mut published = Published::default();
    let end = loop {
        let now = Instant::now();
        if draining.is_none() && clock.should_stop(now) {
            draining = Some(now);
        }
        if let Some(since) = draining {
            if session.pending_submits() == 0 || now - since >= cfg.drain_timeout {
                break End::Stopped;
            }
        }
        if draining.is_none() && cfg.churn.is_some_and(|c| now - connected_at >= c) {
            break End::Churn;
        }
        if let Some(e) = transmit(&mut stream, session) {
            break End::Lost(e);
        }
        let mut end = None;
        while let Some(ev) = session.poll_event() {
            if ev == Event::Authorized && !authorized {
                authorized = true;
                live.authorized.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(e) = log_event(index, ev) {
                end = Some(e);
            }
        }
        published.publish(session, live);
        if let Some(e) = end {
            break e;
        }
        if let SessionState::Failed(why) = session.state() {
            break End::Lost(why.clone());
        }
        session.handle_timeout(now);
        // Hashing, at the configured rate.
        let mut wait = Duration::from_millis(50);
        if draining.is_none() && rate > 0.0 && session.can_mine() {
            tokens = (tokens + (now - last_refill).as_secs_f64() * rate).min(rate.max(1.0));
            last_refill = now;
            if tokens >= 1.0 {
                let budget = tokens.min(256.0) as u32;
                let before = session.stats().counts.hashes;
                let found = session.next_share(budget).is_some();
                let used = session.stats().counts.hashes - before;
                let used = if found { used.max(1) } else { used };
                tokens -= used as f64;
                if found || tokens >= 1.0 {
                    // Send it (or keep hashing) before waiting on the socket.
                    continue;
                }
            }
            wait = Duration::from_secs_f64(((1.0 - tokens) / rate).max(0.001)).min(wait);
        } else {
            last_refill = now;
        }
        if let Some(since) = draining {
            wait = wait.min((since + cfg.drain_timeout).saturating_duration_since(now));
        }
        if let Err(e) = stream.set_read_timeout(Some(wait.max(Duration::from_millis(1)))) {
            break End::Lost(format!("set_read_timeout: {e}"));
        }
        match stream.read(&mut buf) {
            Ok(0) => break End::Lost("closed by the pool".into()),
            Ok(n) => {
                framer.push(&buf[..n]);
                let at = Instant::now();
                while let Some(line) = framer.next_line() {
                    match line {
                        Ok(line) => session.handle_line(&line, at),
                        Err(e) => session.note_protocol_error(format!("framing: {e}")),
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => break End::Lost(format!("read: {e}")),
        }
    };
    // Answers to pings and the like still queued are dropped with the connection.
    let _ = transmit(&mut stream, session);
    published.publish(session, live);
    (end, authorized)
}

/// Writes every queued line; returns the error that ends the connection, if any.
fn transmit(stream: &mut TcpStream, session: &mut MinerSession) -> Option<String> {
    while let Some(line) = session.poll_transmit(Instant::now()) {
        if let Err(e) = stream.write_all(line.as_bytes()) {
            return Some(format!("write: {e}"));
        }
    }
    None
}

/// What of a session's counters has been added to the live totals already.
#[derive(Default)]
pub(super) struct Published {
    hashes: u64,
    submitted: u64,
    accepted: u64,
    rejected: u64,
    unexpected: u64,
    blocks: u64,
}

impl Published {
    pub(super) fn publish(&mut self, session: &MinerSession, live: &Live) {
        let c = &session.stats().counts;
        let bump = |seen: &mut u64, now: u64, into: &AtomicU64| {
            if now > *seen {
                into.fetch_add(now - *seen, Ordering::Relaxed);
                *seen = now;
            }
        };
        bump(&mut self.hashes, c.hashes, &live.hashes);
        bump(&mut self.submitted, c.submitted, &live.submitted);
        bump(&mut self.accepted, c.accepted, &live.accepted);
        bump(&mut self.rejected, c.rejected, &live.rejected);
        bump(&mut self.unexpected, c.unexpected_rejects, &live.unexpected);
        bump(&mut self.blocks, c.blocks, &live.blocks);
    }
}

/// Logs an event; returns how the connection must end, if it must.
pub(super) fn log_event(index: usize, ev: Event) -> Option<End> {
    match ev {
        Event::Subscribed {
            extranonce1,
            extranonce2_size,
        } => debug!(miner = index, %extranonce1, extranonce2_size, "subscribed"),
        Event::Configured { version_mask } => {
            debug!(miner = index, ?version_mask, "configured")
        }
        Event::ExtranonceSubscribed { accepted } => {
            debug!(miner = index, accepted, "extranonce.subscribe answered")
        }
        Event::Authorized => debug!(miner = index, "authorized"),
        Event::HandshakeFailed(why) => warn!(miner = index, "handshake failed: {why}"),
        Event::NewJob {
            id,
            clean,
            difficulty,
        } => debug!(miner = index, job = %id, clean, %difficulty, "new job"),
        Event::DifficultyChanged(d) => debug!(miner = index, difficulty = %d, "set_difficulty"),
        Event::ExtranonceChanged {
            extranonce1,
            extranonce2_size,
        } => debug!(miner = index, %extranonce1, extranonce2_size, "set_extranonce"),
        Event::ShareAnswered {
            id,
            kind,
            job_id,
            error,
            verdict,
            latency,
        } => match verdict {
            Verdict::AsExpected | Verdict::StaleRace => {
                debug!(miner = index, id, ?kind, job = %job_id, ?error, ?verdict, ?latency, "share answered")
            }
            _ => {
                warn!(miner = index, id, ?kind, job = %job_id, ?error, ?verdict, "pool misjudged a share")
            }
        },
        Event::TimedOut { id, method } => warn!(miner = index, id, method, "no answer"),
        Event::ProtocolError(e) => warn!(miner = index, "protocol error: {e}"),
        Event::ReconnectRequested {
            host,
            port,
            wait_secs,
        } => {
            return Some(End::Redirect {
                host,
                port,
                wait: Duration::from_secs(wait_secs.unwrap_or(0).min(300)),
            })
        }
        Event::Message(m) => info!(miner = index, "pool says: {m}"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::stratum::{
        encode_bool_result, encode_error, encode_result, ClientRequest, Request, RequestId,
        ServerNotification, StratumError,
    };
    use relay::work::{
        CompactTarget, Extranonce, Job, JobId, PrevHash, ShareWork, Target, VersionMask,
    };
    use relay::Hash256;
    use serde_json::json;
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::net::TcpListener;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct PoolCounts {
        submits: u64,
        accepted: u64,
        rejected_by_code: BTreeMap<i64, u64>,
        connections: u64,
    }

    /// A tiny Stratum pool: relay's codec parses the requests, every share's hash is really
    /// verified, jobs change every 150 ms (every other one with clean_jobs), and miners that
    /// subscribed to extranonce changes get a new extranonce1 at their third job.
    fn spawn_pool(
        algo: PowAlgorithm,
        difficulty: Difficulty,
        stop: Arc<AtomicBool>,
    ) -> (
        std::net::SocketAddr,
        Arc<Mutex<PoolCounts>>,
        thread::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let counts = Arc::new(Mutex::new(PoolCounts::default()));
        let c = counts.clone();
        let h = thread::spawn(move || {
            let mut conns = vec![];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        n += 1;
                        c.lock().unwrap().connections += 1;
                        let (c, stop) = (c.clone(), stop.clone());
                        conns.push(thread::spawn(move || {
                            serve(stream, n, algo, difficulty, &c, &stop)
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for h in conns {
                h.join().unwrap();
            }
        });
        (addr, counts, h)
    }

    fn serve(
        mut stream: TcpStream,
        conn: u64,
        algo: PowAlgorithm,
        difficulty: Difficulty,
        counts: &Mutex<PoolCounts>,
        stop: &AtomicBool,
    ) {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let share_target = Target::from_difficulty(difficulty, algo.diff1());
        let mut framer = LineFramer::new(DEFAULT_MAX_LINE);
        let mut buf = [0u8; 4096];
        let mut e1 = Extranonce::from_counter(conn, 4).unwrap();
        let mut mask: Option<VersionMask> = None;
        let (mut authorized, mut xsub) = (false, false);
        let mut jobs: HashMap<String, (Job, Extranonce)> = HashMap::new();
        let mut seen = HashSet::new();
        let mut job_no = 0u64;
        let mut last_job = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut out = Vec::new();
            if authorized && (job_no == 0 || last_job.elapsed() >= Duration::from_millis(150)) {
                job_no += 1;
                last_job = Instant::now();
                let clean = job_no % 2 == 1;
                if clean {
                    jobs.clear();
                }
                if xsub && job_no == 3 {
                    e1 = Extranonce::from_counter(0xee00 + conn, 4).unwrap();
                    let n = ServerNotification::SetExtranonce {
                        extranonce1: e1,
                        extranonce2_size: 4,
                    };
                    out.extend_from_slice(n.encode(&RequestId::Null).as_bytes());
                }
                let job = Job::new(
                    JobId::from_counter(job_no),
                    PrevHash(Hash256([job_no as u8; 32])),
                    (0..50u8).collect(),
                    (0..30u8).collect(),
                    vec![[conn as u8; 32]],
                    0x2000_0000,
                    CompactTarget(0x1d00ffff),
                    0x6650_0000 + job_no as u32,
                    clean,
                );
                jobs.insert(job.id.to_string(), (job.clone(), e1));
                out.extend_from_slice(
                    ServerNotification::Notify(job)
                        .encode(&RequestId::Null)
                        .as_bytes(),
                );
            }
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => framer.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
            while let Some(Ok(line)) = framer.next_line() {
                let req = match Request::parse(&line) {
                    Ok(r) => r,
                    Err(f) => {
                        // Only submits are ever malformed in this test.
                        let mut c = counts.lock().unwrap();
                        c.submits += 1;
                        *c.rejected_by_code.entry(20).or_default() += 1;
                        encode_error(&f.id, &f.error.to_stratum(), &mut out);
                        continue;
                    }
                };
                match req.body {
                    ClientRequest::Configure(cfg) => {
                        let m = VersionMask::negotiate(
                            cfg.version_rolling.unwrap().mask,
                            VersionMask::BIP320,
                        );
                        mask = Some(m);
                        let r = json!({"version-rolling": true, "version-rolling.mask": format!("{:08x}", m.0)});
                        encode_result(&req.id, &r, &mut out);
                    }
                    ClientRequest::Subscribe { .. } => {
                        let r = json!([[["mining.notify", "1"]], e1.to_hex(), 4]);
                        encode_result(&req.id, &r, &mut out);
                    }
                    ClientRequest::ExtranonceSubscribe => {
                        xsub = true;
                        encode_bool_result(&req.id, true, &mut out);
                    }
                    ClientRequest::Authorize { .. } => {
                        authorized = true;
                        encode_bool_result(&req.id, true, &mut out);
                        let n = ServerNotification::SetDifficulty(difficulty);
                        out.extend_from_slice(n.encode(&RequestId::Null).as_bytes());
                    }
                    ClientRequest::SuggestDifficulty(_) => {
                        encode_bool_result(&req.id, true, &mut out)
                    }
                    ClientRequest::Submit(s) => {
                        let verdict = (|| {
                            let (job, job_e1) = jobs
                                .get(s.job_id.as_ref())
                                .ok_or_else(StratumError::stale)?;
                            if s.extranonce2.len() != 4 {
                                return Err(StratumError::other("extranonce2 size"));
                            }
                            let version = match (mask, s.version_bits) {
                                (Some(m), Some(b)) => m
                                    .apply(job.version, b)
                                    .map_err(|e| StratumError::other(e.to_string()))?,
                                (None, None) => job.version,
                                _ => return Err(StratumError::other("version bits")),
                            };
                            let work = ShareWork {
                                extranonce1: *job_e1,
                                extranonce2: s.extranonce2,
                                ntime: s.ntime,
                                nonce: s.nonce,
                                version,
                            };
                            if !seen.insert((
                                s.job_id.to_string(),
                                work.extranonce2,
                                work.ntime,
                                work.nonce,
                                work.version,
                            )) {
                                return Err(StratumError::duplicate());
                            }
                            let hash = algo.hash(&job.header(&work).to_bytes());
                            if !share_target.is_met_by(&hash) {
                                return Err(StratumError::low_difficulty());
                            }
                            Ok(())
                        })();
                        let mut c = counts.lock().unwrap();
                        c.submits += 1;
                        match verdict {
                            Ok(()) => {
                                c.accepted += 1;
                                encode_bool_result(&req.id, true, &mut out);
                            }
                            Err(e) => {
                                *c.rejected_by_code.entry(e.code.0).or_default() += 1;
                                encode_error(&req.id, &e, &mut out);
                            }
                        }
                    }
                    other => panic!("unexpected request {other:?}"),
                }
            }
            if !out.is_empty() && stream.write_all(&out).is_err() {
                return;
            }
        }
    }

    #[test]
    fn two_miners_against_a_verifying_pool_agree_with_it_on_every_count() {
        let pool_stop = Arc::new(AtomicBool::new(false));
        let diff = Difficulty::new(2f64.powi(-29)).unwrap();
        let (addr, pool, pool_thread) = spawn_pool(PowAlgorithm::Sha256d, diff, pool_stop.clone());
        let mut cfg = RunConfig::new(
            format!("stratum+tcp://{addr}").parse().unwrap(),
            2,
            PowAlgorithm::Sha256d,
        );
        cfg.hashrate = 400.0;
        cfg.profile = ProfileChoice::Mixed; // miner 0 ASIC, miner 1 NiceHash
        cfg.user = "acct".into();
        cfg.duration = Some(Duration::from_secs(1));
        cfg.mix = "duplicate=0.08,stale=0.08,low=0.08,malformed=0.08"
            .parse()
            .unwrap();
        cfg.suggest_difficulty = Some(Difficulty::new(1.0).unwrap());
        cfg.progress_every = Duration::from_millis(300);
        let mut progress_lines = 0;
        let stats = run(&cfg, Arc::new(AtomicBool::new(false)), |p| {
            progress_lines += 1;
            let _ = p.to_string();
        })
        .unwrap();
        pool_stop.store(true, Ordering::Relaxed);
        pool_thread.join().unwrap();
        let pool = pool.lock().unwrap();
        let s = &stats.shares;
        assert!(progress_lines >= 3, "{progress_lines}");
        assert_eq!(stats.connects, 2, "{stats}");
        assert_eq!(pool.connections, 2);
        assert!(s.accepted > 20, "{stats}");
        assert!(s.expected_rejects > 0, "{stats}");
        assert!(
            s.submitted_by_kind.valid > 0 && s.submitted_by_kind.malformed > 0,
            "{stats}"
        );
        assert!(s.pool_verdicts_correct(), "{stats}");
        assert_eq!(s.unanswered, 0, "{stats}");
        assert_eq!(s.submitted, pool.submits, "{stats}\n{pool:?}");
        assert_eq!(s.accepted, pool.accepted, "{stats}\n{pool:?}");
        assert_eq!(
            s.rejected_by_code, pool.rejected_by_code,
            "{stats}\n{pool:?}"
        );
        assert_eq!(stats.latency_us.count, s.submitted);
        assert!(stats.latency_us.max >= stats.latency_us.p50);
        // The rate cap holds: 2 miners × 400 H/s × ~1 s, with one second of burst allowance.
        assert!(s.hashes <= 2 * 400 * 3, "{stats}");
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["accepted"], s.accepted);
    }

    #[test]
    fn miners_reconnect_with_backoff_when_the_pool_is_down_then_up() {
        // Reserve a port, close it, start the pool on it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = RunConfig::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            1,
            PowAlgorithm::Sha256d,
        );
        cfg.hashrate = 200.0;
        cfg.profile = ProfileChoice::Fixed(Profile::Cpuminer);
        cfg.duration = Some(Duration::from_millis(1200));
        cfg.backoff_initial = Duration::from_millis(20);
        cfg.churn = Some(Duration::from_millis(300));
        // Nothing listens on the port for the first 200 ms.
        let pool_stop = Arc::new(AtomicBool::new(false));
        let listener_stop = pool_stop.clone();
        let counts = Arc::new(Mutex::new(PoolCounts::default()));
        let c2 = counts.clone();
        let server = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let mut n = 0;
            let mut conns = vec![];
            while !listener_stop.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    n += 1;
                    c2.lock().unwrap().connections += 1;
                    let (c, st) = (c2.clone(), listener_stop.clone());
                    conns.push(thread::spawn(move || {
                        serve(
                            s,
                            n,
                            PowAlgorithm::Sha256d,
                            Difficulty::new(2f64.powi(-29)).unwrap(),
                            &c,
                            &st,
                        )
                    }));
                } else {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            for h in conns {
                h.join().unwrap();
            }
        });
        let stats = run(&cfg, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
        pool_stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert!(stats.connect_failures >= 1, "{stats}");
        assert!(stats.churn_disconnects >= 1, "{stats}");
        assert!(stats.connects >= 2, "{stats}");
        assert_eq!(stats.connects, counts.lock().unwrap().connections);
        assert!(stats.shares.accepted > 0, "{stats}");
        assert!(stats.shares.pool_verdicts_correct(), "{stats}");
    }
}
