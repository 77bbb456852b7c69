//! The miner-facing Stratum server: thin mio event loops around [`Session`].
//!
//! One acceptor thread enforces the limits (total connections, connections per IP, bans) and
//! hands accepted sockets round-robin to N connector threads. Each connector owns its sockets and
//! their sessions outright — no locks on the share path — reads lines, lets the session answer,
//! and writes the answer back at once. Accepted shares leave through a crossbeam channel. New
//! work arrives as an immutable [`JobBook`] snapshot on each connector's channel.

use crate::jobs::{JobBook, JobEntry};
use crate::pacer::{Pacer, Turn, Wait, TURN_EVENTS};
use crate::sched_slice::SliceOutcome;
use crate::session::{CloseReason, Session, SessionConfig};
use crate::share::{ShareEvent, ShareSink};
use crate::slots::SlotAllocator;
use crate::spool::{LaneDiskWork, LaneSyncer, LaneWriter};
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use relay::stratum::LineFramer;
use relay::work::{Extranonce, ExtranonceLayout};
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A real-time connector's gather time. Served in one turn at ~13 µs a submit, what arrives in
/// 250 µs at 25,000 submits/s per connector takes under 100 µs: answers leave within ~0.4 ms,
/// at ~3,000 wake-ups a second per connector.
pub const DEFAULT_REALTIME_GATHER: Duration = Duration::from_micros(250);

/// Settings of one Stratum port.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connector threads; 0 means one per core.
    pub threads: usize,
    /// The scheduler slice connector threads ask for (see [`crate::sched_slice`]); `None`
    /// keeps the kernel's default.
    pub sched_slice: Option<Duration>,
    /// `SCHED_FIFO` priority for connector threads (see [`crate::realtime`]); `None` keeps them
    /// fair-scheduled. Refused by the kernel, they fall back to [`Self::sched_slice`].
    pub realtime_priority: Option<u8>,
    /// How long a real-time connector gathers submits between turns (see [`crate::pacer`]).
    pub realtime_gather: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_line_bytes: usize,
    /// How long an address stays banned after an invalid-share flood.
    pub ban_duration: Duration,
    /// A miner that does not read its answers is dropped past this many unsent bytes.
    pub max_pending_output: usize,
    pub session: SessionConfig,
    pub layout: ExtranonceLayout,
    /// This port's extranonce prefix (shard ‖ lease).
    pub prefix: Extranonce,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let layout = ExtranonceLayout::default();
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3333)),
            threads: 0,
            sched_slice: None,
            realtime_priority: None,
            realtime_gather: DEFAULT_REALTIME_GATHER,
            max_connections: 15_000,
            max_connections_per_ip: 20_000,
            max_line_bytes: relay::stratum::DEFAULT_MAX_LINE,
            ban_duration: Duration::from_secs(600),
            max_pending_output: 1 << 20,
            session: SessionConfig::default(),
            prefix: layout
                .edge_prefix(0, 0)
                .expect("default layout has room for shard 0 lease 0"),
            layout,
        }
    }
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// State shared by the acceptor and connectors, touched only on connect and disconnect.
struct Admission {
    connected: AtomicUsize,
    /// Wakes the acceptor when a connection closes at full house, so it reopens at once.
    acceptor: Arc<Waker>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    banned: Mutex<HashMap<IpAddr, Instant>>,
    slots: Mutex<SlotAllocator>,
}

enum ConnectorMsg {
    Conn(TcpStream, SocketAddr, u32, Extranonce),
    Jobs(Arc<JobBook>),
    /// A durable batch covers this lane through the index: its records may go.
    TrimLane(u64),
    /// The extranonce prefix changed: every miner must reconnect to get a new extranonce1.
    DropAll,
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    connectors: Vec<(Sender<ConnectorMsg>, Arc<Waker>)>,
    acceptor_waker: Arc<Waker>,
    book: Mutex<Arc<JobBook>>,
    admission: Arc<Admission>,
    threads: Vec<JoinHandle<()>>,
    /// Runs the lanes' fsyncs and trims; joined after the connectors so their last work runs.
    syncer: Option<LaneSyncer>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn connected(&self) -> usize {
        self.admission.connected.load(Ordering::Relaxed)
    }

    /// The job book now in force.
    pub fn book(&self) -> Arc<JobBook> {
        self.book.lock().clone()
    }

    /// Publishes a new job to every connection.
    pub fn publish(&self, entry: Arc<JobEntry>) {
        let mut guard = self.book.lock();
        let next = Arc::new(guard.with_job(entry, Instant::now()));
        *guard = next.clone();
        drop(guard);
        for (tx, waker) in &self.connectors {
            let _ = tx.send(ConnectorMsg::Jobs(next.clone()));
            let _ = waker.wake();
        }
    }

    /// Lets connector `lane` trim its spool lane through `index`.
    pub fn trim_lane(&self, lane: u16, index: u64) {
        if let Some((tx, waker)) = self.connectors.get(lane as usize) {
            let _ = tx.send(ConnectorMsg::TrimLane(index));
            let _ = waker.wake();
        }
    }

    /// Moves to a new extranonce prefix (the core gave this edge a different lease): new
    /// connections get it, current ones are closed so their miners reconnect and get it too.
    pub fn change_prefix(&self, prefix: Extranonce) {
        self.admission.slots.lock().set_prefix(prefix);
        for (tx, waker) in &self.connectors {
            let _ = tx.send(ConnectorMsg::DropAll);
            let _ = waker.wake();
        }
    }

    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _ = self.acceptor_waker.wake();
        for (_, w) in &self.connectors {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(s) = self.syncer.take() {
            s.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the server without a spool (the core's own port: shares go straight to the ledger).
pub fn start(cfg: ServerConfig, shares: impl ShareSink + 'static) -> io::Result<ServerHandle> {
    start_with_spool(cfg, shares, Vec::new())
}

/// Connector threads a configuration asks for.
pub fn thread_count(cfg: &ServerConfig) -> usize {
    if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.threads
    }
}

/// Starts the server; accepted shares and block candidates go to `shares`. With `lanes` (one
/// per connector thread, see [`thread_count`]), every accepted share is written to its
/// connector's spool lane before the miner hears "accepted".
pub fn start_with_spool(
    cfg: ServerConfig,
    shares: impl ShareSink + 'static,
    lanes: Vec<LaneWriter>,
) -> io::Result<ServerHandle> {
    let shares: Arc<dyn ShareSink> = Arc::new(shares);
    let threads = thread_count(&cfg);
    if !lanes.is_empty() && lanes.len() != threads {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} spool lanes for {threads} connector threads",
                lanes.len()
            ),
        ));
    }
    let syncer = if lanes.is_empty() {
        None
    } else {
        Some(LaneSyncer::start()?)
    };
    let mut lanes = lanes.into_iter();
    let std_listener = bind_listener(cfg.listen)?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let mut listener = TcpListener::from_std(std_listener);
    let shutdown = Arc::new(AtomicBool::new(false));
    let apoll = Poll::new()?;
    let acceptor_waker = Arc::new(Waker::new(apoll.registry(), WAKER)?);
    let admission = Arc::new(Admission {
        connected: AtomicUsize::new(0),
        acceptor: acceptor_waker.clone(),
        per_ip: Mutex::new(HashMap::new()),
        banned: Mutex::new(HashMap::new()),
        slots: Mutex::new(SlotAllocator::new(cfg.layout, cfg.prefix)),
    });
    let cfg = Arc::new(cfg);
    let session_cfg = Arc::new(cfg.session.clone());
    let mut connectors = Vec::new();
    let mut handles = Vec::new();
    for i in 0..threads {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        connectors.push((tx, waker));
        let mut c = Connector {
            poll,
            rx,
            conns: slab::Slab::new(),
            book: Arc::new(JobBook::default()),
            cfg: cfg.clone(),
            session_cfg: session_cfg.clone(),
            admission: admission.clone(),
            shares: shares.clone(),
            shutdown: shutdown.clone(),
            events: Vec::new(),
            dirty: Vec::new(),
            broadcast: Vec::new(),
            closing: std::collections::VecDeque::new(),
            lane: lanes.next().zip(syncer.as_ref()).map(|(writer, s)| Lane {
                writer,
                disk: s.sender(),
            }),
            last_sync: Instant::now(),
            pending_trim: None,
            last_trim: Instant::now(),
            usage_alerted: false,
            pacer: Pacer::fair(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("stratum-conn-{i}"))
                .spawn(move || {
                    c.configure_scheduling(i);
                    c.run()
                })?,
        );
    }
    apoll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let acc = Acceptor {
        poll: apoll,
        listener,
        targets: connectors.clone_senders(),
        next: 0,
        cfg: cfg.clone(),
        admission: admission.clone(),
        shutdown: shutdown.clone(),
        refused_logged: 0,
        open: true,
    };
    handles.push(
        std::thread::Builder::new()
            .name("stratum-accept".into())
            .spawn(move || acc.run())?,
    );
    tracing::info!(%local_addr, threads, max_connections = cfg.max_connections, "stratum server listening");
    Ok(ServerHandle {
        local_addr,
        shutdown,
        connectors,
        acceptor_waker,
        book: Mutex::new(Arc::new(JobBook::default())),
        admission,
        threads: handles,
        syncer,
    })
}

trait CloneSenders {
    fn clone_senders(&self) -> Vec<(Sender<ConnectorMsg>, Arc<Waker>)>;
}
impl CloneSenders for Vec<(Sender<ConnectorMsg>, Arc<Waker>)> {
    fn clone_senders(&self) -> Vec<(Sender<ConnectorMsg>, Arc<Waker>)> {
        self.iter().map(|(s, w)| (s.clone(), w.clone())).collect()
    }
}

struct Acceptor {
    poll: Poll,
    listener: TcpListener,
    targets: Vec<(Sender<ConnectorMsg>, Arc<Waker>)>,
    next: usize,
    cfg: Arc<ServerConfig>,
    admission: Arc<Admission>,
    shutdown: Arc<AtomicBool>,
    refused_logged: u64,
    /// Whether the listener is listening. At full house it is not: see [`Acceptor::close_door`].
    open: bool,
}

/// How often a closed door checks for room, should a wake-up from a closing connection be missed.
const DOOR_RECHECK: Duration = Duration::from_millis(20);

impl Acceptor {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        while !self.shutdown.load(Ordering::Relaxed) {
            let timeout = if self.open {
                Duration::from_millis(500)
            } else {
                DOOR_RECHECK
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "acceptor poll failed");
                    return;
                }
            }
            if !self.open
                && self.admission.connected.load(Ordering::Relaxed) < self.cfg.max_connections
            {
                self.open_door();
            }
            if self.open {
                // Also after a reopen: connections may have queued while the door closed.
                self.accept_all();
            }
        }
    }

    /// Stops listening at full house. The kernel then answers every SYN with a reset (the
    /// miner's connect fails with "connection refused" within microseconds, and its firmware
    /// moves on to its next pool) and resets whatever was still queued. Accepting each extra
    /// connection just to reset it cost this thread ~30 µs apiece; in a storm the queue filled
    /// and the kernel dropped SYNs that clients retried only after 1–3 s. The socket keeps its
    /// port while closed (it was bound to an explicit port), so no one else can take it.
    fn close_door(&mut self) {
        match socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Read) {
            Ok(()) => {
                self.open = false;
                metrics::counter!("quarry_edge_listener_closed_total").increment(1);
                metrics::gauge!("quarry_edge_listener_open").set(0.0);
                tracing::info!(
                    max_connections = self.cfg.max_connections,
                    "full house: not listening until a miner leaves (new connections are refused by the kernel)"
                );
            }
            // Left open: the over-limit connections are then accepted and reset one by one.
            Err(e) => tracing::warn!(error = %e, "could not stop listening at full house"),
        }
    }

    fn open_door(&mut self) {
        let before = self.listener.local_addr().ok();
        if let Err(e) = socket2::SockRef::from(&self.listener).listen(LISTEN_BACKLOG) {
            tracing::error!(error = %e, "could not listen again after a full house; retrying");
            return;
        }
        let after = self.listener.local_addr().ok();
        if before != after {
            tracing::error!(
                ?before,
                ?after,
                "the Stratum port changed when listening again"
            );
        }
        // A fresh listen: make sure readiness is reported again for the same socket.
        if let Err(e) =
            self.poll
                .registry()
                .reregister(&mut self.listener, LISTENER, Interest::READABLE)
        {
            tracing::error!(error = %e, "could not re-register the listener");
        }
        self.open = true;
        metrics::gauge!("quarry_edge_listener_open").set(1.0);
        tracing::info!("room again: listening");
    }

    fn refuse(&mut self, stream: TcpStream, peer: SocketAddr, reason: &'static str) {
        metrics::counter!("quarry_edge_connections_refused_total", "reason" => reason).increment(1);
        // Log the first few and then every 1000th, so a storm does not flood the log.
        self.refused_logged += 1;
        if self.refused_logged <= 5 || self.refused_logged.is_multiple_of(1000) {
            tracing::warn!(%peer, reason, refused_so_far = self.refused_logged, "connection refused");
        }
        let _ = stream.set_linger_zero();
        drop(stream);
    }

    fn accept_all(&mut self) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // The door was closed under us (or the socket is not listening): wait.
                Err(e) if e.kind() == ErrorKind::InvalidInput => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    metrics::counter!("quarry_edge_connections_refused_total", "reason" => "accept_error").increment(1);
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            let ip = peer.ip();
            let now = Instant::now();
            {
                let mut banned = self.admission.banned.lock();
                if let Some(until) = banned.get(&ip).copied() {
                    if until > now {
                        drop(banned);
                        self.refuse(stream, peer, "banned");
                        continue;
                    }
                    banned.remove(&ip);
                }
            }
            if self.admission.connected.load(Ordering::Relaxed) >= self.cfg.max_connections {
                self.refuse(stream, peer, "max_connections");
                self.close_door();
                return;
            }
            {
                let mut per_ip = self.admission.per_ip.lock();
                let n = per_ip.entry(ip).or_insert(0);
                if *n >= self.cfg.max_connections_per_ip {
                    drop(per_ip);
                    self.refuse(stream, peer, "per_ip_limit");
                    continue;
                }
                *n += 1;
            }
            let Some((slot, e1)) = self.admission.slots.lock().allocate() else {
                release_ip(&self.admission, ip);
                self.refuse(stream, peer, "no_extranonce_slot");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let n = self.admission.connected.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::gauge!("quarry_edge_miners_connected").set(n as f64);
            let (tx, waker) = &self.targets[self.next % self.targets.len()];
            self.next += 1;
            if tx.send(ConnectorMsg::Conn(stream, peer, slot, e1)).is_ok() {
                let _ = waker.wake();
            }
            if n >= self.cfg.max_connections {
                self.close_door();
                return;
            }
        }
    }
}

/// Length of the kernel's accept queue (capped by `net.core.somaxconn`). In a connection storm
/// the acceptor cannot keep up with every SYN at once; when the queue is full the kernel drops
/// the SYN and the client retries a second later, so an over-limit miner would be refused a
/// second late instead of at once. std's `TcpListener::bind` asks for only 128.
const LISTEN_BACKLOG: i32 = 65_535;

/// Binds to an explicit port even when `addr` asks for any (port 0): Linux lets a socket bound
/// to port 0 lose its port when it stops listening, and the full-house door
/// ([`Acceptor::close_door`]) must get the same port back. The probe holding the kernel's pick
/// is dropped only once the real listener has the port.
fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let new_socket = || -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        Ok(socket)
    };
    let mut explicit = addr;
    let _probe = if addr.port() == 0 {
        let probe = new_socket()?;
        probe.bind(&addr.into())?;
        let picked = probe.local_addr()?.as_socket().ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidData, "the probe socket has no address")
        })?;
        explicit.set_port(picked.port());
        Some(probe)
    } else {
        None
    };
    let socket = new_socket()?;
    socket.bind(&explicit.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

trait LingerZero {
    fn set_linger_zero(&self) -> io::Result<()>;
}
impl LingerZero for TcpStream {
    /// Refused connections are reset at once rather than lingering in TIME_WAIT.
    fn set_linger_zero(&self) -> io::Result<()> {
        socket2::SockRef::from(self).set_linger(Some(Duration::ZERO))
    }
}

fn release_ip(adm: &Admission, ip: IpAddr) {
    let mut per_ip = adm.per_ip.lock();
    if let Some(n) = per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    slot: u32,
    framer: LineFramer,
    session: Session,
    out: Vec<u8>,
    /// Answers were added this loop turn; they go out once the turn's shares are in the lane.
    dirty: bool,
    /// The peer closed its side (or the socket failed); closed at the end of the turn.
    eof: bool,
    /// Waiting in [`Connector::closing`] to be closed; nothing more is read or sent.
    closing: bool,
}

struct Connector {
    poll: Poll,
    rx: Receiver<ConnectorMsg>,
    conns: slab::Slab<Conn>,
    book: Arc<JobBook>,
    cfg: Arc<ServerConfig>,
    session_cfg: Arc<SessionConfig>,
    admission: Arc<Admission>,
    shares: Arc<dyn ShareSink>,
    shutdown: Arc<AtomicBool>,
    events: Vec<ShareEvent>,
    /// Connections with answers waiting for this turn's lane write.
    dirty: Vec<usize>,
    /// Connections still to be sent the current job book, a slice per loop turn.
    broadcast: Vec<usize>,
    /// Finished connections still to be closed, a slice per loop turn.
    closing: std::collections::VecDeque<(usize, Option<CloseReason>)>,
    lane: Option<Lane>,
    last_sync: Instant,
    /// Highest lane index a durable batch covers, not trimmed yet.
    pending_trim: Option<u64>,
    last_trim: Instant,
    usage_alerted: bool,
    /// How this connector waits between turns; set by [`Connector::configure_scheduling`].
    pacer: Pacer,
}

/// A connector's spool lane, and the [`LaneSyncer`] its fsyncs and trims go to: they never
/// run on the connector's thread.
struct Lane {
    writer: LaneWriter,
    disk: Sender<LaneDiskWork>,
}

impl Lane {
    /// Hands disk work to the syncer; should its thread be gone, runs it here rather than not
    /// at all.
    fn hand_over(&self, work: LaneDiskWork) {
        if let Err(e) = self.disk.send(work) {
            e.into_inner().run();
        }
    }
}

/// Group commit interval of the spool lanes.
const LANE_SYNC_EVERY: Duration = Duration::from_millis(50);
/// How often a lane is trimmed. A trim only gives disk space back (what a durable batch covers
/// is never batched again, trimmed or not), and its file work costs two fsyncs (on the
/// syncer), so the uplink's one trim request per batch (hundreds a second) is folded into one a
/// second.
const LANE_TRIM_EVERY: Duration = Duration::from_secs(1);
/// Connections sent a new job per loop turn. A job is a 1.3 KB notify per connection, ~20 µs
/// each with its loopback delivery: sent to all 5,000 of a thread's connections in one pass it
/// held their answers for hundreds of ms, and in slices of 256 still ~5 ms a slice (the
/// broadcast's second had a p99 of 40 ms at 50,000 shares/s). Slices of 32 keep it under 1 ms
/// and cost one more `epoll_wait` per 32 notifies; the broadcast takes as long as before.
const BROADCAST_SLICE: usize = 32;
/// Ready sockets served before their answers leave (after one lane write for their shares). An
/// answer waits for every socket served before it in its chunk: a connector that fell behind
/// (preempted, or after a broadcast) finds a full turn of 256 ready sockets, and when a turn's
/// answers all left at its end the first miner read waited the whole turn, ~4 ms at ~15 µs a
/// submit. In chunks of 32 that wait is under 0.5 ms, for one more lane write per 32 shares in
/// such turns (ordinary turns hold a handful of sockets and pay nothing).
const ANSWER_CHUNK: usize = 32;
/// Connections closed per loop turn when many hang up at once.
const CLOSE_SLICE: usize = 256;

impl Connector {
    /// Runs this connector real-time if configured and permitted (gathering between turns),
    /// else fair-scheduled with the configured slice.
    fn configure_scheduling(&mut self, index: usize) {
        let Some(priority) = self.cfg.realtime_priority else {
            return self.request_sched_slice(index);
        };
        match crate::realtime::request_fifo(priority) {
            Ok(()) => {
                self.pacer = Pacer::real_time(self.cfg.realtime_gather);
                if index == 0 {
                    tracing::info!(
                        priority,
                        gather_us = self.cfg.realtime_gather.as_micros() as u64,
                        "connector threads run real-time (SCHED_FIFO), gathering submits between turns"
                    );
                }
            }
            Err(e) => {
                if index == 0 {
                    tracing::info!(
                        error = %e,
                        "connector threads may not run real-time (grant CAP_SYS_NICE or LimitRTPRIO={priority}); they stay fair-scheduled"
                    );
                }
                self.request_sched_slice(index);
            }
        }
    }

    fn request_sched_slice(&self, index: usize) {
        let Some(slice) = self.cfg.sched_slice else {
            return;
        };
        let outcome = crate::sched_slice::request_slice(slice);
        // The first connector speaks for all: they ask for the same thing of the same kernel.
        if index != 0 {
            return;
        }
        match outcome {
            Ok(SliceOutcome::Granted(s)) => {
                tracing::info!(
                    slice_us = s.as_micros() as u64,
                    "connector threads run with a short scheduler slice"
                );
            }
            Ok(SliceOutcome::Ignored) => {
                tracing::info!("this kernel ignores scheduler slice requests (Linux 6.12+ honours them); connectors use its default")
            }
            Ok(SliceOutcome::NotFair) => {
                tracing::info!(
                    "connector threads run under a policy other than the fair one (real-time, deadline or idle): scheduler slice left alone"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduler slice request refused; connectors use the kernel's default")
            }
        }
    }

    /// Writes this turn's accepted shares to the lane and hands them to the kernel in one write.
    /// Runs before their answers reach the sockets, so a killed edge never forgets a share it
    /// acknowledged.
    fn spool_events(&mut self) {
        let Some(Lane { writer: lane, .. }) = self.lane.as_mut() else {
            return;
        };
        for ev in self.events.iter_mut() {
            match lane.append(ev) {
                Ok(idx) => {
                    let rec = match ev {
                        ShareEvent::Accepted(s) => s,
                        ShareEvent::Block(b) => &mut b.share,
                    };
                    rec.spool_ref = Some((lane.lane, idx));
                }
                Err(e) => {
                    metrics::counter!("quarry_edge_spool_errors_total").increment(1);
                    tracing::error!(lane = lane.lane, error = %e, "SPOOL WRITE FAILED: this share is only in memory until the core acks it");
                }
            }
        }
        if let Err(e) = lane.flush() {
            tracing::error!(lane = lane.lane, error = %e, "spool flush failed");
        }
        let (used, max) = lane.usage();
        let high = used as f64 >= 0.8 * max as f64;
        if high && !self.usage_alerted {
            tracing::error!(lane = lane.lane, used, max, "SPOOL ALMOST FULL (80%): the uplink has been down long; shares will be refused when it is full");
            metrics::counter!("quarry_edge_spool_full_alerts_total").increment(1);
        }
        self.usage_alerted = high;
        metrics::gauge!("quarry_edge_spool_bytes", "lane" => lane.lane.to_string())
            .set(used as f64);
    }

    fn trim_lane(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_trim) < LANE_TRIM_EVERY {
            return;
        }
        self.last_trim = now;
        let (Some(lane), Some(index)) = (self.lane.as_mut(), self.pending_trim.take()) else {
            return;
        };
        match lane.writer.detach_trim(index) {
            Ok(Some(work)) => lane.hand_over(work),
            Ok(None) => {}
            Err(e) => tracing::error!(lane = lane.writer.lane, error = %e, "spool trim failed"),
        }
    }

    /// Ends a loop turn: this turn's accepted shares go to the lane in one write and to the
    /// uplink, then every connection that got answers is flushed (lanes before answers), and
    /// the ones whose peer left are closed.
    fn finish_turn(&mut self) {
        if !self.events.is_empty() {
            self.spool_events();
            for ev in &self.events {
                if let ShareEvent::Block(b) = ev {
                    metrics::counter!("quarry_edge_blocks_found_total").increment(1);
                    tracing::info!(worker = %b.share.worker, job = %b.share.job_id, "block candidate found");
                }
            }
            if !self.shares.take(&mut self.events) {
                tracing::error!("share channel closed: shares can no longer be forwarded");
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            let eof = c.eof;
            self.flush(key);
            let reason = self
                .conns
                .get(key)
                .and_then(|c| c.session.close_reason().cloned());
            if eof || reason.is_some() {
                self.close_later(key, reason);
            }
        }
        // Keep the allocation for the next turn.
        self.dirty = dirty;
    }

    fn sync_lane(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_sync) < LANE_SYNC_EVERY {
            return;
        }
        self.last_sync = now;
        if let Some(lane) = self.lane.as_mut() {
            match lane.writer.detach_sync() {
                Ok(Some(work)) => lane.hand_over(work),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(lane = lane.writer.lane, error = %e, "spool fsync failed")
                }
            }
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(TURN_EVENTS);
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_tick = Instant::now();
        let mut last = Turn::default();
        let mut last_end = Instant::now();
        while !self.shutdown.load(Ordering::Relaxed) {
            let wait = match self.pacer.next(last) {
                Wait::Block(d) => d,
                Wait::Poll => Duration::ZERO,
                Wait::Gather(d) => {
                    std::thread::sleep(d);
                    Duration::ZERO
                }
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "connector poll failed");
                    return;
                }
            }
            let mut served = 0usize;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.drain_messages(),
                    Token(key) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // A peer that closed (or failed) is read to the end.
                            let drain = ev.is_read_closed() || ev.is_error();
                            self.on_readable(key, &mut buf, drain);
                            served += 1;
                            if served.is_multiple_of(ANSWER_CHUNK) {
                                self.finish_turn();
                            }
                        }
                        // A dirty connection is flushed when the turn ends.
                        if ev.is_writable() && self.conns.get(key).is_some_and(|c| !c.dirty) {
                            self.flush(key);
                        }
                    }
                }
            }
            self.finish_turn();
            self.broadcast_slice();
            self.close_slice();
            let now = Instant::now();
            last = Turn {
                ready: events.iter().count(),
                backlog: !self.broadcast.is_empty() || !self.closing.is_empty(),
                span: now.duration_since(last_end),
            };
            last_end = now;
            self.sync_lane(now, false);
            self.trim_lane(now, false);
            if now.duration_since(last_tick) >= Duration::from_secs(1) {
                last_tick = now;
                let mut to_close = Vec::new();
                for (key, c) in self.conns.iter_mut() {
                    if let Some(reason) = c.session.on_tick(&self.book, now) {
                        to_close.push((key, reason.clone()));
                    }
                }
                for (key, reason) in to_close {
                    self.close(key, Some(reason));
                }
            }
        }
        self.finish_turn();
        self.sync_lane(Instant::now(), true);
        self.trim_lane(Instant::now(), true);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(k, None);
        }
    }

    fn drain_messages(&mut self) {
        // Answers read earlier in this turn must not reach a socket (below) before their
        // shares reach the lane.
        self.finish_turn();
        let mut new_book = None;
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ConnectorMsg::Conn(stream, peer, slot, e1) => self.add(stream, peer, slot, e1),
                ConnectorMsg::Jobs(book) => new_book = Some(book),
                ConnectorMsg::TrimLane(index) => {
                    self.pending_trim = Some(self.pending_trim.map_or(index, |t| t.max(index)));
                }
                ConnectorMsg::DropAll => {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for k in keys {
                        self.close(k, None);
                    }
                }
            }
        }
        if let Some(book) = new_book {
            // Connections that missed an earlier book get this one: a session sends only the
            // newest job. One added later gets it when it authorizes.
            self.book = book;
            self.broadcast.clear();
            self.broadcast.extend(self.conns.iter().map(|(k, _)| k));
        }
    }

    /// Sends the current job to the next [`BROADCAST_SLICE`] connections. Runs after
    /// [`Connector::finish_turn`], so no unspooled answer is flushed with it. A key reused by a
    /// new connection meanwhile is harmless: a session sends a job it already has only once.
    fn broadcast_slice(&mut self) {
        if self.broadcast.is_empty() {
            return;
        }
        let now = Instant::now();
        let from = self.broadcast.len().saturating_sub(BROADCAST_SLICE);
        let keys: Vec<usize> = self.broadcast.drain(from..).collect();
        for key in keys {
            match self.conns.get_mut(key) {
                Some(c) if !c.closing => c.session.on_jobs(&self.book, now, &mut c.out),
                _ => continue,
            }
            self.flush(key);
        }
    }

    fn add(&mut self, mut stream: TcpStream, peer: SocketAddr, slot: u32, e1: Extranonce) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "could not register connection");
            self.forget(peer, slot);
            return;
        }
        tracing::debug!(%peer, extranonce1 = %e1, "miner connected");
        entry.insert(Conn {
            stream,
            peer,
            slot,
            framer: LineFramer::new(self.cfg.max_line_bytes),
            session: Session::new(self.session_cfg.clone(), e1, Instant::now()),
            out: Vec::new(),
            dirty: false,
            eof: false,
            closing: false,
        });
    }

    /// Reads and handles what the miner sent; the answers wait in `out` for [`finish_turn`].
    /// Without `drain`, a read shorter than `buf` ends it: the socket was empty then, and
    /// anything arriving later raises a new edge, so the `WouldBlock` read is saved.
    fn on_readable(&mut self, key: usize, buf: &mut [u8], drain: bool) {
        {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.closing {
                return;
            }
            loop {
                match c.stream.read(buf) {
                    Ok(0) => {
                        c.eof = true;
                        break;
                    }
                    Ok(n) => {
                        let started = Instant::now();
                        let wall = SystemTime::now();
                        let Conn {
                            framer,
                            session,
                            out,
                            peer,
                            ..
                        } = c;
                        let _ = framer.feed(&buf[..n], |line| {
                            match line {
                                Ok(line) => session.handle_line(
                                    line,
                                    &self.book,
                                    started,
                                    wall,
                                    out,
                                    &mut self.events,
                                ),
                                Err(e) => {
                                    tracing::warn!(peer = %peer, error = %e, "oversized line dropped");
                                    session.on_frame_error(&e, out);
                                }
                            }
                            if session.close_reason().is_some() {
                                ControlFlow::Break(())
                            } else {
                                ControlFlow::Continue(())
                            }
                        });
                        if c.session.close_reason().is_some() || (n < buf.len() && !drain) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.eof = true;
                        break;
                    }
                }
            }
            c.framer.shrink_if_empty();
            let counters = std::mem::take(&mut c.session.counters);
            if counters.accepted > 0 {
                metrics::counter!("quarry_edge_shares_total", "result" => "accepted")
                    .increment(counters.accepted);
            }
            for label in counters.rejected {
                metrics::counter!("quarry_edge_shares_total", "result" => label).increment(1);
            }
            if counters.version_rolling_unnegotiated > 0 {
                metrics::counter!("quarry_edge_version_rolling_unnegotiated_total")
                    .increment(counters.version_rolling_unnegotiated);
            }
            if counters.malformed_lines > 0 {
                metrics::counter!("quarry_edge_malformed_lines_total")
                    .increment(counters.malformed_lines);
            }
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < c.out.len() {
            match c.stream.write(&c.out[written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        c.out.drain(..written);
        if c.out.is_empty() && c.out.capacity() > 512 {
            c.out = Vec::new();
        }
        let too_slow = c.out.len() > self.cfg.max_pending_output;
        if failed || too_slow {
            if too_slow {
                tracing::warn!(peer = %c.peer, pending = c.out.len(), "miner not reading its answers: closing");
            }
            self.close(key, None);
        }
    }

    /// Queues a finished connection for [`Connector::close_slice`]. Closing is the expensive
    /// part of a disconnect (deregister, and a close that runs the peer's loopback TCP stack
    /// too): when a storm's 15,000 connections hung up at once, closing them inline held the
    /// served miners' answers for 270 ms at p99.
    fn close_later(&mut self, key: usize, reason: Option<CloseReason>) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.closing {
                c.closing = true;
                self.closing.push_back((key, reason));
            }
        }
    }

    /// Closes up to [`CLOSE_SLICE`] queued connections; the loop serves ready sockets between
    /// slices.
    fn close_slice(&mut self) {
        for _ in 0..CLOSE_SLICE {
            let Some((key, reason)) = self.closing.pop_front() else {
                return;
            };
            // A key is only reused after its close, so a queued key still names its connection.
            if self.conns.get(key).is_some_and(|c| c.closing) {
                self.close(key, reason);
            }
        }
    }

    fn close(&mut self, key: usize, reason: Option<CloseReason>) {
        if !self.conns.contains(key) {
            return;
        }
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.stream);
        match &reason {
            Some(CloseReason::Banned { invalid, shares }) => {
                tracing::warn!(peer = %c.peer, invalid, of_recent_shares = shares, ban_secs = self.cfg.ban_duration.as_secs(), "banning address after invalid-share flood");
                self.admission
                    .banned
                    .lock()
                    .insert(c.peer.ip(), Instant::now() + self.cfg.ban_duration);
                metrics::counter!("quarry_edge_bans_total").increment(1);
            }
            Some(r) => tracing::info!(peer = %c.peer, reason = ?r, "closing connection"),
            None => tracing::debug!(peer = %c.peer, "connection closed"),
        }
        self.forget(c.peer, c.slot);
    }

    fn forget(&self, peer: SocketAddr, slot: u32) {
        release_ip(&self.admission, peer.ip());
        self.admission.slots.lock().release(slot);
        let n = self.admission.connected.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("quarry_edge_miners_connected").set(n as f64);
        if n + 1 == self.cfg.max_connections {
            let _ = self.admission.acceptor.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storm must find room in the accept queue: 600 connections complete their handshake
    /// against a listener that accepts none of them (std's backlog of 128 would leave all but
    /// ~129 waiting for SYN retransmissions).
    #[test]
    fn the_listener_queues_a_storm_of_connections() {
        let listener = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut held = Vec::new();
        for i in 0..600 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => held.push(s),
                Err(e) => panic!("connection {i} did not complete: {e}"),
            }
        }
        assert_eq!(held.len(), 600);
    }
}
