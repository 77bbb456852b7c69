//! An event-loop runner: thousands of simulated miners on a few threads.
//!
//! The threaded runner ([`super::runner`]) gives every miner a thread, which is fine for tens of
//! miners and hopeless for the connection counts a pool must survive. This runner drives the
//! same sans-IO [`MinerSession`]s from one mio event loop per thread (one thread per core by
//! default; miner `i` lives on thread `i % threads`), so 10,000 connections cost 10,000 small
//! state records and sockets, not 10,000 stacks.
//!
//! Per connection it keeps only what the wire needs: a line framer that gives its memory back
//! when idle, a write buffer that exists only while the kernel refuses bytes, and a token bucket
//! of hashes so each miner hashes at the configured rate. Time is a min-heap of wake-ups (next
//! connect attempt, connect timeout, next hash, the session's [`MinerSession::poll_timeout`],
//! churn), so a thread sleeps in `epoll_wait` until the earliest one; stale heap entries are
//! skipped by comparing them with the connection's current wake-up.
//!
//! Sockets are opened non-blocking with socket2 so they can be bound to a chosen source address
//! first ([`RunConfig::source_addrs`]): with `IP_BIND_ADDRESS_NO_PORT` the kernel picks the source
//! port at `connect`, per destination, so every `127.0.0.x` adds a full ephemeral port range.
//! Submit latency is measured exactly as in the threaded runner (the line is handed to the
//! kernel → the answer is read), but recorded in one histogram per thread from
//! [`Event::ShareAnswered`], because a histogram per session would cost ~190 KiB each. On a
//! loaded machine the figure includes the time the answer waited for this loop to get to it.

use super::client::{Event, MinerSession, SessionConfig, SessionState};
use super::runner::{
    log_event, End, Live, MinerTotals, Progress, Published, RunConfig, RunError, LATENCY_FLUSH,
};
use super::stats::{micros, new_latency_histogram, MinerStats};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use relay::stratum::{LineFramer, DEFAULT_MAX_LINE};
use socket2::{Domain, Protocol, Socket, Type};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info};

/// The shortest wait between two hashing rounds of one miner, so wake-ups stay below 100 per
/// second per connection however fast it hashes.
const MIN_HASH_TICK: Duration = Duration::from_millis(10);
/// Hashes one miner may spend (or borrow) per round before the loop moves on to the others.
const MAX_HASHES_PER_ROUND: u64 = 1024;
/// How much earlier than asked a miner's existing wake-up may be and still stand.
const WAKE_SLACK: Duration = Duration::from_millis(1);
/// How far ahead of its rate a miner may hash in one round (see `Worker::pump`).
const MAX_HASH_DEBT: Duration = Duration::from_secs(1);
/// A pool that leaves this many of our bytes unread is not reading: the connection is dropped.
const MAX_PENDING_WRITE: usize = 1 << 20;
/// Write buffers larger than this are given back once empty.
const KEEP_WRITE_CAPACITY: usize = 4096;
/// The longest a loop sleeps without looking at the stop flag.
const MAX_POLL_WAIT: Duration = Duration::from_millis(50);
/// Read buffer shared by all connections of a thread.
const READ_BUF: usize = 64 * 1024;

/// Runs the miners until the duration elapses or `stop` is set, calling `progress` from the
/// calling thread every `progress_every`, and returns the summary (same contract as
/// [`super::run`]).
pub fn run(
    config: &RunConfig,
    stop: Arc<AtomicBool>,
    mut progress: impl FnMut(&Progress),
) -> Result<MinerStats, RunError> {
    config.validate()?;
    let target = resolve(&config.url.host, config.url.port).map_err(RunError::Config)?;
    if let Some(bad) = config
        .source_addrs
        .iter()
        .find(|a| a.is_ipv4() != target.is_ipv4())
    {
        return Err(RunError::Config(format!(
            "source address {bad} is not of the same family as the pool address {target}"
        )));
    }
    let threads = match config.threads {
        0 => thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
    .min(config.miners);
    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);
    let live = Arc::new(Live::default());
    let cfg = Arc::new(config.clone());
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let (thread_cfg, thread_stop, thread_live) = (cfg.clone(), stop.clone(), live.clone());
        let spawned = thread::Builder::new().name(format!("miners-{t}")).spawn(
            move || -> io::Result<MinerTotals> {
                let (cfg, stop, live) = (&*thread_cfg, &*thread_stop, &*thread_live);
                let miners: Vec<usize> = (t..cfg.miners).step_by(threads).collect();
                Worker::new(cfg, target, miners, start, deadline, stop, live)?.run()
            },
        );
        match spawned {
            Ok(h) => handles.push(h),
            Err(source) => {
                stop.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(RunError::Spawn { index: t, source });
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
    for (t, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(w)) => totals.merge(&w),
            Ok(Err(e)) => totals.stats.note_problem(format!(
                "miner thread {t}: could not start its event loop: {e}"
            )),
            Err(_) => totals
                .stats
                .note_problem(format!("miner thread {t}: panicked")),
        }
    }
    let elapsed = start.elapsed();
    progress(&live.snapshot(elapsed));
    Ok(totals.into_summary(config.miners, elapsed))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to no address"))
}

/// Opens a non-blocking TCP connection to `to`, bound first to `from` when given. The connect is
/// in progress when this returns; the socket becomes writable when it completes.
pub fn connect_nonblocking(to: SocketAddr, from: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    enable_receive_stamps(&socket);
    if let Some(ip) = from {
        bind_address_no_port(&socket);
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Linux `IP_BIND_ADDRESS_NO_PORT`: a socket bound to an address with port 0 gets its port at
/// `connect`, where only the whole 4-tuple must be unique, instead of at `bind`, where the port
/// must be free for every destination. Best effort: without it the bind still works, with fewer
/// ports.
fn bind_address_no_port(socket: &Socket) {
    #[cfg(target_os = "linux")]
    let _ = set_socket_flag(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT);
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Asks the kernel to stamp when data reaches this socket (`SO_TIMESTAMPNS`), so that an
/// answer's arrival can be told apart from when this busy thread got round to reading it. On a
/// box shared with the pool under test the two differ, and only the first is the pool's doing.
/// Best effort: without stamps, arrival is taken to be the read.
fn enable_receive_stamps(socket: &impl std::os::fd::AsRawFd) {
    if let Err(e) = set_socket_flag(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS) {
        debug!(error = %e, "no receive timestamps on this socket");
    }
}

/// Turns on an int-valued socket option (`setsockopt` to 1).
fn set_socket_flag(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a socket descriptor the caller holds, and a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where one miner's connection is.
enum Phase {
    /// Not connected; the next attempt is at the connection's wake-up.
    Waiting,
    /// Non-blocking connect in progress since `since`.
    Connecting { stream: TcpStream, since: Instant },
    /// Connected, with its session.
    Up(Box<Link>),
    /// The run is over for this miner.
    Done,
}

/// A live connection and its session.
struct Link {
    stream: TcpStream,
    session: MinerSession,
    framer: LineFramer,
    /// Bytes the kernel has not taken yet (empty almost always).
    unsent: Vec<u8>,
    /// Hashes this miner may still compute now (token bucket).
    tokens: f64,
    last_refill: Instant,
    connected_at: Instant,
    authorized: bool,
    published: Published,
    /// How long the last answers read sat in the socket before this thread read them (from the
    /// kernel's receive stamp): the harness's own delay, not the pool's.
    read_lag: Duration,
}

/// One simulated miner: a slot that lives for the whole run and reconnects as needed.
struct Miner {
    index: usize,
    phase: Phase,
    /// When this miner next needs the loop's attention (matches one heap entry).
    wake: Option<Instant>,
    backoff: Duration,
    attempt: u64,
    source: Option<IpAddr>,
    /// Where `client.reconnect` sent it, if anywhere.
    redirect: Option<SocketAddr>,
}

struct Worker<'a> {
    cfg: &'a RunConfig,
    target: SocketAddr,
    poll: Poll,
    miners: Vec<Miner>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    stop: &'a AtomicBool,
    deadline: Option<Instant>,
    /// When the run ended for this thread: no more hashing or connecting, only answers.
    draining: Option<Instant>,
    live: &'a Live,
    totals: MinerTotals,
    buf: Vec<u8>,
    /// Miners of this thread authorized so far, and from when latency counts as steady.
    authorized_here: usize,
    steady_from: Option<Instant>,
    miners_len: usize,
    /// Latencies answered since the last hand-over to `live` (for per-interval percentiles).
    interval_latency: Histogram<u64>,
    /// The same answers' latencies to their arrival in the socket.
    interval_arrival: Histogram<u64>,
    last_flush: Instant,
}

/// How long after the last miner of a thread was authorized its latency counts as steady
/// (the last jobs of the ramp are still being sent).
const STEADY_AFTER: Duration = Duration::from_secs(1);

impl<'a> Worker<'a> {
    fn new(
        cfg: &'a RunConfig,
        target: SocketAddr,
        indexes: Vec<usize>,
        start: Instant,
        deadline: Option<Instant>,
        stop: &'a AtomicBool,
        live: &'a Live,
    ) -> io::Result<Self> {
        let mut w = Worker {
            cfg,
            target,
            poll: Poll::new()?,
            miners: Vec::with_capacity(indexes.len()),
            timers: BinaryHeap::with_capacity(indexes.len() * 2),
            stop,
            deadline,
            draining: None,
            live,
            totals: MinerTotals::default(),
            buf: vec![0; READ_BUF],
            authorized_here: 0,
            steady_from: None,
            miners_len: indexes.len(),
            interval_latency: new_latency_histogram(),
            interval_arrival: new_latency_histogram(),
            last_flush: start,
        };
        for (slot, index) in indexes.into_iter().enumerate() {
            let first = match cfg.ramp {
                Some(r) => start + Duration::from_secs_f64(index as f64 / r),
                None => start,
            };
            let source = match cfg.source_addrs.len() {
                0 => None,
                n => Some(cfg.source_addrs[index % n]),
            };
            w.miners.push(Miner {
                index,
                phase: Phase::Waiting,
                wake: None,
                backoff: cfg.backoff_initial,
                attempt: 0,
                source,
                redirect: None,
            });
            w.schedule(slot, first);
        }
        Ok(w)
    }

    fn run(mut self) -> io::Result<MinerTotals> {
        let mut events = Events::with_capacity(1024);
        let mut due = Vec::new();
        loop {
            let now = Instant::now();
            if self.draining.is_none() && self.should_stop(now) {
                self.begin_drain(now);
            }
            if let Some(since) = self.draining {
                if !self.awaiting_answers() || now >= since + self.cfg.drain_timeout {
                    break;
                }
            }
            let wait = match self.timers.peek() {
                Some(Reverse((t, _))) => t.saturating_duration_since(now).min(MAX_POLL_WAIT),
                None => MAX_POLL_WAIT,
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for ev in events.iter() {
                let slot = ev.token().0;
                if ev.is_writable() || ev.is_error() || ev.is_write_closed() {
                    self.on_writable(slot);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(slot, ev.is_read_closed() || ev.is_error());
                }
            }
            // Wake-ups that are due; ones scheduled while serving them wait for the next turn.
            let now = Instant::now();
            due.clear();
            while let Some(&Reverse((t, slot))) = self.timers.peek() {
                if t > now {
                    break;
                }
                self.timers.pop();
                if self.miners[slot].wake == Some(t) {
                    self.miners[slot].wake = None;
                    due.push(slot);
                }
            }
            for &slot in &due {
                self.on_wake(slot, now);
            }
            if self.timers.len() > 4 * self.miners.len() + 1024 {
                self.compact_timers();
            }
            if now >= self.last_flush + LATENCY_FLUSH {
                self.flush_latencies(now);
            }
        }
        for slot in 0..self.miners.len() {
            self.close(slot, End::Stopped);
        }
        self.flush_latencies(Instant::now());
        Ok(self.totals)
    }

    fn flush_latencies(&mut self, now: Instant) {
        self.last_flush = now;
        if !self.interval_latency.is_empty() {
            self.live
                .add_latencies(&self.interval_latency, &self.interval_arrival);
            self.interval_latency.reset();
            self.interval_arrival.reset();
        }
    }

    fn should_stop(&self, now: Instant) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| now >= d)
    }

    /// Stops connecting and hashing; connections wait for the answers to their last submits.
    /// None is closed before every answer of this thread is in (or the drain times out): a
    /// thread closing its 5,000 idle connections at once read nothing for up to half a second,
    /// and the answers to the last submits of the run were measured that late (the p99.9 and
    /// max of every run).
    fn begin_drain(&mut self, now: Instant) {
        self.draining = Some(now);
        for slot in 0..self.miners.len() {
            match &self.miners[slot].phase {
                Phase::Up(_) => self.pump(slot, now),
                _ => self.close(slot, End::Stopped),
            }
        }
    }

    /// True while a connection of this thread still waits for the answer to a submit.
    fn awaiting_answers(&self) -> bool {
        self.miners.iter().any(|m| match &m.phase {
            Phase::Up(link) => link.session.pending_submits() > 0,
            _ => false,
        })
    }

    /// Sets the miner's next wake-up (replacing the previous one). One already due at most
    /// [`WAKE_SLACK`] earlier is kept: waking early is harmless (the pump looks at the clock),
    /// and recomputing the same hashing deadline after every answer pushed a new heap entry
    /// per share.
    fn schedule(&mut self, slot: usize, at: Instant) {
        let m = &mut self.miners[slot];
        if m.wake.is_some_and(|w| w <= at && at - w <= WAKE_SLACK) {
            return;
        }
        if m.wake != Some(at) {
            m.wake = Some(at);
            self.timers.push(Reverse((at, slot)));
        }
    }

    fn compact_timers(&mut self) {
        self.timers = self
            .miners
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| m.wake.map(|t| Reverse((t, slot))))
            .collect();
    }

    fn on_wake(&mut self, slot: usize, now: Instant) {
        match &self.miners[slot].phase {
            Phase::Waiting => {
                if self.draining.is_none() {
                    self.start_connect(slot, now);
                }
            }
            Phase::Connecting { since, .. } => {
                if now.saturating_duration_since(*since) >= self.cfg.connect_timeout {
                    let timeout = self.cfg.connect_timeout;
                    self.connect_failed(slot, now, &format!("no answer within {timeout:?}"));
                } else {
                    let at = *since + self.cfg.connect_timeout;
                    self.schedule(slot, at);
                }
            }
            Phase::Up(_) => self.pump(slot, now),
            Phase::Done => {}
        }
    }

    fn start_connect(&mut self, slot: usize, now: Instant) {
        let m = &mut self.miners[slot];
        m.attempt += 1;
        let to = m.redirect.unwrap_or(self.target);
        let attempt = connect_nonblocking(to, m.source).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match attempt {
            Ok(stream) => {
                m.phase = Phase::Connecting { stream, since: now };
                let at = now + self.cfg.connect_timeout;
                self.schedule(slot, at);
            }
            Err(e) => self.connect_failed(slot, now, &e.to_string()),
        }
    }

    fn connect_failed(&mut self, slot: usize, now: Instant, why: &str) {
        self.totals.connect_failures += 1;
        let m = &mut self.miners[slot];
        if let Phase::Connecting { mut stream, .. } =
            std::mem::replace(&mut m.phase, Phase::Waiting)
        {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        let wait = m.backoff;
        m.backoff = (m.backoff * 2).min(self.cfg.backoff_max);
        debug!(
            miner = m.index,
            error = why,
            "connect failed, retrying in {wait:?}"
        );
        self.schedule(slot, now + wait);
    }

    fn on_writable(&mut self, slot: usize) {
        let now = Instant::now();
        let Some(m) = self.miners.get_mut(slot) else {
            return;
        };
        match &mut m.phase {
            Phase::Connecting { stream, .. } => {
                let result = match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => match stream.peer_addr() {
                        Ok(_) => Ok(true),
                        // Not finished yet (a spurious wake-up).
                        Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(true) => self.connected(slot, now),
                    Ok(false) => {}
                    Err(e) => self.connect_failed(slot, now, &e.to_string()),
                }
            }
            Phase::Up(link) => {
                if let Err(e) = flush(link) {
                    self.close(slot, End::Lost(format!("write: {e}")));
                }
            }
            Phase::Waiting | Phase::Done => {}
        }
    }

    fn connected(&mut self, slot: usize, now: Instant) {
        let cfg = self.cfg;
        let m = &mut self.miners[slot];
        let Phase::Connecting { stream, .. } = std::mem::replace(&mut m.phase, Phase::Waiting)
        else {
            return;
        };
        let mut session_cfg = SessionConfig::new(
            cfg.profile.for_miner(m.index),
            cfg.algorithm,
            cfg.username(m.index),
        );
        session_cfg.password = cfg.password.clone();
        session_cfg.record_accepted = cfg.record_accepted;
        session_cfg.suggest_difficulty = cfg.suggest_difficulty;
        session_cfg.mix = cfg.mix;
        session_cfg.response_timeout = cfg.response_timeout;
        session_cfg.latency_histogram = false;
        session_cfg.seed = cfg
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((m.index as u64) << 32 | m.attempt);
        m.phase = Phase::Up(Box::new(Link {
            stream,
            session: MinerSession::new(session_cfg),
            framer: LineFramer::new(DEFAULT_MAX_LINE),
            unsent: Vec::new(),
            tokens: 0.0,
            last_refill: now,
            connected_at: now,
            authorized: false,
            published: Published::default(),
            read_lag: Duration::ZERO,
        }));
        self.totals.connects += 1;
        self.live.connected.fetch_add(1, Ordering::Relaxed);
        self.pump(slot, now);
    }

    /// Reads what the pool sent. Without `drain` a read shorter than the buffer ends it (the
    /// socket was empty then; later data raises a new edge), saving a `WouldBlock` read per
    /// answer.
    fn on_readable(&mut self, slot: usize, drain: bool) {
        let Some(Miner {
            phase: Phase::Up(link),
            ..
        }) = self.miners.get_mut(slot)
        else {
            return;
        };
        let end = loop {
            match recv_stamped(&link.stream, &mut self.buf) {
                Ok((0, _)) => break Some(End::Lost("closed by the pool".into())),
                Ok((n, stamp)) => {
                    let at = Instant::now();
                    link.read_lag = stamp
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .unwrap_or_default();
                    let session = &mut link.session;
                    let _ = link.framer.feed(&self.buf[..n], |line| {
                        match line {
                            Ok(line) => session.handle_line(line, at),
                            Err(e) => session.note_protocol_error(format!("framing: {e}")),
                        }
                        ControlFlow::Continue(())
                    });
                    if n < self.buf.len() && !drain {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Some(End::Lost(format!("read: {e}"))),
            }
        };
        link.framer.shrink_if_empty();
        match end {
            // Answers already read still count before the connection goes.
            Some(end) => {
                self.pump(slot, Instant::now());
                self.close(slot, end);
            }
            None => self.pump(slot, Instant::now()),
        }
    }

    /// Lets the session act: time out requests, hash, send, handle its events; then schedules
    /// its next wake-up or ends the connection.
    fn pump(&mut self, slot: usize, now: Instant) {
        let cfg = self.cfg;
        let draining = self.draining;
        let Some(Miner {
            phase: Phase::Up(link),
            index,
            ..
        }) = self.miners.get_mut(slot)
        else {
            return;
        };
        let index = *index;
        let miner_count = self.miners_len;
        let mut end = None;
        if draining.is_none() && cfg.churn.is_some_and(|c| now - link.connected_at >= c) {
            end = Some(End::Churn);
        }
        link.session.handle_timeout(now);
        // Hashing, at the configured rate.
        let rate = cfg.hashrate;
        let mut next_hash = None;
        if end.is_none() && draining.is_none() && rate > 0.0 && link.session.can_mine() {
            let elapsed = now
                .saturating_duration_since(link.last_refill)
                .as_secs_f64();
            link.tokens = (link.tokens + elapsed * rate).min(rate.max(1.0));
            link.last_refill = now;
            // A round hashes until it finds a share (or spends its cap), borrowing the hashes
            // from the future; the miner then sleeps until it has paid them back. Shares come
            // at the same rate, with the gaps of real hardware (the time their hashes take),
            // but a miner wakes once per share instead of once per hash.
            let floor = -(rate * MAX_HASH_DEBT.as_secs_f64()).max(16.0);
            let mut spent = 0u64;
            while link.tokens >= 1.0 && spent < MAX_HASHES_PER_ROUND {
                let budget = ((link.tokens - floor) as u64)
                    .min(256)
                    .min(MAX_HASHES_PER_ROUND - spent) as u32;
                let before = link.session.stats().counts.hashes;
                let found = link.session.next_share(budget).is_some();
                let mut used = link.session.stats().counts.hashes - before;
                if found {
                    used = used.max(1);
                }
                if used == 0 {
                    break;
                }
                link.tokens -= used as f64;
                spent += used;
            }
            next_hash = Some(if link.tokens >= 1.0 {
                now
            } else {
                now + Duration::from_secs_f64((1.0 - link.tokens) / rate).max(MIN_HASH_TICK)
            });
        } else {
            link.last_refill = now;
        }
        if end.is_none() {
            if let Err(e) = transmit(link) {
                end = Some(End::Lost(format!("write: {e}")));
            }
        }
        while let Some(ev) = link.session.poll_event() {
            match &ev {
                Event::Authorized if !link.authorized => {
                    link.authorized = true;
                    self.live.authorized.fetch_add(1, Ordering::Relaxed);
                    self.authorized_here += 1;
                    if self.authorized_here == miner_count && self.steady_from.is_none() {
                        self.steady_from = Some(now + STEADY_AFTER);
                    }
                }
                Event::ShareAnswered {
                    latency: Some(l), ..
                } => {
                    let us = micros(*l);
                    self.totals.stats.latency_us.saturating_record(us);
                    let arrival_us = micros(l.saturating_sub(link.read_lag));
                    self.totals.arrival_latency_us.saturating_record(arrival_us);
                    self.interval_arrival.saturating_record(arrival_us);
                    // Sent after the ramp settled and before hashing stopped.
                    let sent = now.checked_sub(*l);
                    let steady = match (self.steady_from, sent) {
                        (Some(from), Some(sent)) => {
                            sent >= from && draining.is_none_or(|d| sent < d)
                        }
                        _ => false,
                    };
                    if steady {
                        self.totals.steady_latency_us.saturating_record(us);
                    }
                    self.interval_latency.saturating_record(us);
                }
                _ => {}
            }
            if let Some(e) = log_event(index, ev) {
                end.get_or_insert(e);
            }
        }
        link.published.publish(&link.session, self.live);
        if let SessionState::Failed(why) = link.session.state() {
            end.get_or_insert(End::Lost(why.clone()));
        }
        if let Some(end) = end {
            return self.close(slot, end);
        }
        let mut wake = [
            next_hash,
            link.session.poll_timeout(),
            cfg.churn
                .filter(|_| draining.is_none())
                .map(|c| link.connected_at + c),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(since) = draining {
            let d = since + cfg.drain_timeout;
            wake = Some(wake.map_or(d, |w| w.min(d)));
        }
        if let Some(at) = wake {
            self.schedule(slot, at);
        }
    }

    /// Ends the miner's connection (if any) and decides what comes next.
    fn close(&mut self, slot: usize, end: End) {
        let now = Instant::now();
        let draining = self.draining.is_some();
        let cfg = self.cfg;
        let m = &mut self.miners[slot];
        match m.phase {
            Phase::Done => return,
            // Already closed, its next attempt scheduled: only the end of the run changes that.
            Phase::Waiting if !draining => return,
            _ => {}
        }
        let phase = std::mem::replace(&mut m.phase, Phase::Waiting);
        let authorized = match phase {
            Phase::Up(mut link) => {
                let _ = transmit(&mut link);
                let _ = self.poll.registry().deregister(&mut link.stream);
                link.published.publish(&link.session, self.live);
                self.live.connected.fetch_sub(1, Ordering::Relaxed);
                if link.authorized {
                    self.live.authorized.fetch_sub(1, Ordering::Relaxed);
                }
                self.totals.stats.merge(&link.session.into_stats());
                link.authorized
            }
            Phase::Connecting { mut stream, .. } => {
                let _ = self.poll.registry().deregister(&mut stream);
                false
            }
            Phase::Waiting | Phase::Done => false,
        };
        if authorized {
            m.backoff = cfg.backoff_initial;
        }
        if draining {
            m.phase = Phase::Done;
            m.wake = None;
            return;
        }
        let wait = match end {
            End::Stopped => {
                m.phase = Phase::Done;
                m.wake = None;
                return;
            }
            End::Churn => {
                self.totals.churn_disconnects += 1;
                debug!(miner = m.index, "churn: reconnecting");
                Duration::ZERO
            }
            End::Lost(why) => {
                self.totals.disconnects += 1;
                let wait = m.backoff;
                m.backoff = (m.backoff * 2).min(cfg.backoff_max);
                info!(
                    miner = m.index,
                    "connection lost ({why}), reconnecting in {wait:?}"
                );
                wait
            }
            End::Redirect { host, port, wait } => {
                self.totals.disconnects += 1;
                let current = m.redirect.unwrap_or(self.target);
                let host = host
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| current.ip().to_string());
                match resolve(&host, port.unwrap_or(current.port())) {
                    Ok(a) => m.redirect = Some(a),
                    Err(e) => info!(miner = m.index, "client.reconnect ignored: {e}"),
                }
                info!(miner = m.index, to = %m.redirect.unwrap_or(current), "client.reconnect: reconnecting in {wait:?}");
                wait
            }
        };
        self.schedule(slot, now + wait);
    }
}

/// `read`, plus the kernel's receive stamp of the data read, if it gave one. (For TCP the stamp
/// is that of the last segment read, so for several answers in one read it is the latest
/// arrival: their harness delay is, if anything, under-counted.)
fn recv_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timespec control message, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at a live iovec over `buf` and at `control`, both outliving the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen`; the CMSG_* walk stays in
    // it, and a SCM_TIMESTAMPNS message carries a timespec (read unaligned to be safe).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                if let (Ok(secs), Ok(nanos)) = (u64::try_from(t.tv_sec), u32::try_from(t.tv_nsec)) {
                    stamp = std::time::UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

/// Hands the session's queued lines to the kernel, keeping what it refuses for later.
fn transmit(link: &mut Link) -> io::Result<()> {
    loop {
        let now = Instant::now();
        let Some(line) = link.session.poll_transmit(now) else {
            break;
        };
        if link.unsent.is_empty() {
            let n = write_some(&mut link.stream, line.as_bytes())?;
            link.unsent.extend_from_slice(&line.as_bytes()[n..]);
        } else {
            link.unsent.extend_from_slice(line.as_bytes());
        }
    }
    if link.unsent.len() > MAX_PENDING_WRITE {
        return Err(io::Error::other(format!(
            "the pool left {} bytes unread",
            link.unsent.len()
        )));
    }
    Ok(())
}

/// Writes what was refused earlier.
fn flush(link: &mut Link) -> io::Result<()> {
    if link.unsent.is_empty() {
        return Ok(());
    }
    let n = write_some(&mut link.stream, &link.unsent)?;
    link.unsent.drain(..n);
    if link.unsent.is_empty() && link.unsent.capacity() > KEEP_WRITE_CAPACITY {
        link.unsent = Vec::new();
    }
    Ok(())
}

/// Writes as much of `data` as the kernel takes now.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "connection closed")),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Raises this process's soft limit on open files to its hard limit (each connection is a file)
/// and returns the new soft limit.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// A list of source addresses: `127.0.0.1,127.0.0.2` or a range of the last IPv4 octet,
/// `127.0.0.1-16` (both forms may be mixed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceAddrs(pub Vec<IpAddr>);

impl std::str::FromStr for SourceAddrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(ip) = part.parse::<IpAddr>() {
                out.push(ip);
                continue;
            }
            let bad = || {
                format!("source address '{part}' is not an IP address or a range like 127.0.0.1-16")
            };
            let (first, last) = part.rsplit_once('-').ok_or_else(bad)?;
            let first: std::net::Ipv4Addr = first.parse().map_err(|_| bad())?;
            let last: u8 = last.parse().map_err(|_| bad())?;
            let [a, b, c, d] = first.octets();
            if last < d {
                return Err(format!(
                    "source address range '{part}' ends before it starts"
                ));
            }
            out.extend((d..=last).map(|x| IpAddr::from([a, b, c, x])));
        }
        Ok(SourceAddrs(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::{Profile, ProfileChoice, StratumUrl};
    use crate::synthetic_pool::{ShareTally, SyntheticPool, SyntheticPoolConfig};
    use relay::work::Difficulty;
    use relay::PowAlgorithm;
    use std::net::TcpListener;

    /// 2^-30: about 4 sha256d hashes per share, so tests spend little time hashing.
    fn easy() -> Difficulty {
        Difficulty::new(2f64.powi(-30)).unwrap()
    }

    fn pool_on(listen: SocketAddr) -> SyntheticPool {
        let mut cfg = SyntheticPoolConfig::new(listen, PowAlgorithm::Sha256d, easy());
        cfg.threads = 2;
        SyntheticPool::start(cfg).unwrap()
    }

    fn url(addr: SocketAddr) -> StratumUrl {
        format!("stratum+tcp://{addr}").parse().unwrap()
    }

    fn drain_tally(pool: &SyntheticPool) -> ShareTally {
        let mut t = ShareTally::default();
        while let Ok(ev) = pool.shares().try_recv() {
            t.count(&ev);
        }
        t
    }

    #[test]
    fn two_hundred_miners_on_two_threads_agree_with_the_edge_server_on_every_share() {
        let mut pool = pool_on("127.0.0.1:0".parse().unwrap());
        let mut cfg = RunConfig::new(url(pool.local_addr()), 200, PowAlgorithm::Sha256d);
        cfg.threads = 2;
        // ~5 shares/s per miner, ~1,000/s in all.
        cfg.hashrate = 20.0;
        cfg.profile = ProfileChoice::Mixed;
        cfg.duration = Some(Duration::from_secs(2));
        cfg.ramp = Some(1000.0);
        cfg.source_addrs = "127.0.0.1-4".parse::<SourceAddrs>().unwrap().0;
        cfg.progress_every = Duration::from_millis(300);
        let mut peak_authorized = 0;
        let stop = Arc::new(AtomicBool::new(false));
        // A new non-clean job halfway: shares on the old one stay valid.
        let publisher = {
            let stop = stop.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(1000));
                pool.publish(false);
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                }
                pool
            })
        };
        let stats = run(&cfg, Arc::new(AtomicBool::new(false)), |p| {
            peak_authorized = peak_authorized.max(p.authorized);
        })
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        let pool = publisher.join().unwrap();
        let server = drain_tally(&pool);
        let s = &stats.shares;
        assert_eq!(stats.connects, 200, "{stats}");
        assert_eq!(stats.connect_failures + stats.disconnects, 0, "{stats}");
        assert_eq!(peak_authorized, 200);
        assert!(s.accepted > 500, "{stats}");
        assert_eq!(s.rejected, 0, "{stats}");
        assert!(s.pool_verdicts_correct(), "{stats}");
        assert_eq!(s.unanswered, 0, "{stats}");
        assert_eq!(s.submitted, s.accepted, "{stats}");
        assert_eq!(server.accepted + server.blocks, s.accepted, "{stats}");
        assert_eq!(stats.latency_us.count, s.accepted);
        assert!(stats.latency_us.p50 > 0 && stats.latency_us.max >= stats.latency_us.p99);
        // Every answer's arrival is at or before its read, so every percentile is too.
        let arrival = stats.arrival_latency_us.as_ref().expect("arrival latency");
        assert_eq!(arrival.count, stats.latency_us.count);
        assert!(arrival.p50 <= stats.latency_us.p50 && arrival.p99 <= stats.latency_us.p99);
        assert!(arrival.max <= stats.latency_us.max);
        // The token bucket holds: 200 miners × 20 H/s × ~2 s, plus one second of burst each.
        assert!(s.hashes <= 200 * 20 * 4, "{stats}");
    }

    #[test]
    fn deliberately_bad_shares_get_the_codes_the_miners_expect_from_the_edge_server() {
        let pool = pool_on("127.0.0.1:0".parse().unwrap());
        let mut cfg = RunConfig::new(url(pool.local_addr()), 12, PowAlgorithm::Sha256d);
        cfg.hashrate = 40.0;
        cfg.duration = Some(Duration::from_millis(1500));
        cfg.mix = "duplicate=0.05,stale=0.05,low=0.05,malformed=0.05"
            .parse()
            .unwrap();
        let stats = run(&cfg, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
        let server = drain_tally(&pool);
        let s = &stats.shares;
        assert!(s.expected_rejects > 0, "{stats}");
        assert!(s.pool_verdicts_correct(), "{stats}");
        assert_eq!(s.unanswered, 0, "{stats}");
        assert_eq!(s.accepted + s.rejected, s.submitted, "{stats}");
        assert_eq!(server.accepted + server.blocks, s.accepted, "{stats}");
    }

    #[test]
    fn idle_miners_stay_connected_without_hashing() {
        let pool = pool_on("127.0.0.1:0".parse().unwrap());
        let mut cfg = RunConfig::new(url(pool.local_addr()), 300, PowAlgorithm::Sha256d);
        cfg.hashrate = 0.0;
        cfg.threads = 1;
        cfg.profile = ProfileChoice::Fixed(Profile::Cpuminer);
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, watcher_pool) = (stop.clone(), &pool);
        let stats = thread::scope(|scope| {
            scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while watcher_pool.connected() < 300 && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                thread::sleep(Duration::from_millis(200));
                s2.store(true, Ordering::Relaxed);
            });
            cfg.duration = None;
            run(&cfg, stop.clone(), |_| {}).unwrap()
        });
        assert_eq!(stats.connects, 300, "{stats}");
        assert_eq!(stats.shares.hashes, 0);
        assert_eq!(stats.shares.submitted, 0);
        assert!(stats.shares.pool_verdicts_correct(), "{stats}");
    }

    #[test]
    fn miners_retry_with_backoff_until_the_pool_is_up_and_churn_reconnects() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cfg = RunConfig::new(url(addr), 3, PowAlgorithm::Sha256d);
        cfg.hashrate = 40.0;
        cfg.duration = Some(Duration::from_millis(1500));
        cfg.backoff_initial = Duration::from_millis(20);
        cfg.churn = Some(Duration::from_millis(300));
        let starter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(250));
            pool_on(addr)
        });
        let stats = run(&cfg, Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
        let pool = starter.join().unwrap();
        let server = drain_tally(&pool);
        assert!(stats.connect_failures >= 3, "{stats}");
        assert!(stats.churn_disconnects >= 3, "{stats}");
        assert!(stats.connects >= 6, "{stats}");
        assert!(stats.shares.accepted > 0, "{stats}");
        assert!(stats.shares.pool_verdicts_correct(), "{stats}");
        assert_eq!(server.accepted + server.blocks, stats.shares.accepted);
    }

    #[test]
    fn sockets_connect_from_the_source_address_they_were_bound_to() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        for last in [2u8, 3] {
            let from = IpAddr::from([127, 0, 0, last]);
            let _client = connect_nonblocking(to, Some(from)).unwrap();
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), from);
        }
    }

    #[test]
    fn source_address_lists_and_ranges_parse() {
        let a: SourceAddrs = "127.0.0.1-3, 10.0.0.7".parse().unwrap();
        let want: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(a.0, want);
        assert!("".parse::<SourceAddrs>().unwrap().0.is_empty());
        assert!("127.0.0.5-2".parse::<SourceAddrs>().is_err());
        assert!("localhost".parse::<SourceAddrs>().is_err());
    }

    #[test]
    fn a_source_address_of_another_family_is_refused_before_connecting() {
        let mut cfg = RunConfig::new("127.0.0.1:1".parse().unwrap(), 1, PowAlgorithm::Sha256d);
        cfg.source_addrs = vec!["::1".parse().unwrap()];
        let err = run(&cfg, Arc::new(AtomicBool::new(false)), |_| {}).unwrap_err();
        assert!(err.to_string().contains("same family"), "{err}");
    }

    #[test]
    fn a_read_carries_the_kernel_stamp_of_the_data_s_arrival() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (rx, _) = listener.accept().unwrap();
        enable_receive_stamps(&rx);
        // The first socket to ask turns the kernel's receive stamping on from a work queue,
        // a moment later; a run's first answers may come unstamped (read time stands in).
        thread::sleep(Duration::from_millis(200));
        let rx = TcpStream::from_std(rx);
        let before = SystemTime::now();
        tx.write_all(b"{\"id\":1,\"result\":true,\"error\":null}\n")
            .unwrap();
        // The answer waits in the socket while the "harness" is busy elsewhere.
        thread::sleep(Duration::from_millis(30));
        let mut buf = [0u8; 128];
        let (n, stamp) = recv_stamped(&rx, &mut buf).unwrap();
        let read_at = SystemTime::now();
        assert_eq!(&buf[..n], b"{\"id\":1,\"result\":true,\"error\":null}\n");
        let stamp = stamp.expect("the kernel stamps what it receives");
        assert!(stamp >= before - Duration::from_millis(1) && stamp <= read_at);
        assert!(
            read_at.duration_since(stamp).unwrap() >= Duration::from_millis(29),
            "the stamp is the arrival, not the read"
        );
        // Without stamps asked for, a read still works and says so.
        let listener2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx2 = std::net::TcpStream::connect(listener2.local_addr().unwrap()).unwrap();
        let rx2 = TcpStream::from_std(listener2.accept().unwrap().0);
        tx2.write_all(b"x\n").unwrap();
        thread::sleep(Duration::from_millis(5));
        let (n, stamp) = recv_stamped(&rx2, &mut buf).unwrap();
        assert_eq!((n, stamp), (2, None));
    }
}
