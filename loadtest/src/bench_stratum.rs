//! `bench-stratum`: the edge's Stratum server measured alone, from outside its process.
//!
//! The server under test is `quarry-loadtest synthetic-pool` (the real [`edge::server`] with
//! synthetic jobs, see [`crate::synthetic_pool`]) started as a child process, so its memory is
//! its own: the figures come from `/proc/PID/status` (VmRSS) and `/proc/PID/stat` (CPU time).
//! The miners are the [`crate::miner::mio_runner`] in this process. Two phases:
//!
//! 1. **Memory.** RSS with no connection, then with N idle miners (subscribed, authorized, one
//!    job received, not submitting); the difference over N is the cost of an idle connection
//!    in user space (kernel socket buffers are not in RSS).
//! 2. **Round trip.** M miners each submitting valid shares, together at a set rate; the
//!    latency of every `mining.submit` (written → answer read) goes into an HDR histogram. The
//!    server's own count of accepted shares is read back from its status line and must match.
//!
//! Client and server share the machine's cores, so the client's CPU use is reported too.

use crate::miner::{mio_runner, MinerStats, ProfileChoice, Progress, RunConfig, StratumUrl};
use crate::miner::{MinerSession, Profile, SessionConfig as MinerConfig};
use crate::process::{find_binary, free_port, ManagedProcess};
use crate::synthetic_pool::{last_accepted, last_status_value, synthetic_job, SyntheticPoolConfig};
use anyhow::{bail, Context};
use edge::jobs::{JobBook, JobEntry};
use edge::session::Session;
use relay::work::{Difficulty, Extranonce};
use relay::PowAlgorithm;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Expected sha256d hashes per share at difficulty 1 (the difficulty-1 target is ~2^224).
const SHA256D_HASHES_PER_DIFF1: f64 = 4_294_967_296.0;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Miners submitting shares in the round-trip phase.
    pub connections: usize,
    /// Idle miners in the memory phase (0 skips it).
    pub idle_connections: usize,
    /// Length of the round-trip phase.
    pub duration: Duration,
    /// Shares per second of all miners together in the round-trip phase.
    pub rate: f64,
    /// Share difficulty (sha256d); low, so hashing costs the client little.
    pub difficulty: f64,
    /// Connector threads of the server (0: one per core).
    pub server_threads: usize,
    /// Event-loop threads of the client (0: one per core).
    pub client_threads: usize,
    pub source_addrs: Vec<IpAddr>,
    /// Connections opened per second.
    pub ramp: f64,
    pub profile: ProfileChoice,
    /// Where the server's log goes (default: a file in the temp dir).
    pub server_log: Option<PathBuf>,
    /// Seconds between the server's new jobs (every job is broadcast to every connection).
    pub job_interval: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub idle_connections: usize,
    /// Idle miners the client saw authorized when RSS was read.
    pub authorized: i64,
    /// Connections the server counted when RSS was read.
    pub server_connected: Option<u64>,
    pub connect_secs: f64,
    pub rss_empty_bytes: u64,
    pub rss_idle_bytes: u64,
    pub bytes_per_idle_connection: f64,
    pub rss_after_disconnect_bytes: u64,
    /// glibc heap in use (mallinfo2, from the server's status line), before and with the idle
    /// connections: what was allocated, without the allocator's free space.
    pub heap_empty_bytes: Option<u64>,
    pub heap_idle_bytes: Option<u64>,
    pub heap_bytes_per_idle_connection: Option<f64>,
    pub model: EdgeMemoryModel,
}

/// Where an idle connection's memory goes in the edge server, from the types' sizes and a replay
/// of each profile's handshake through the real `edge::session::Session`.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeMemoryModel {
    pub session_struct_bytes: usize,
    pub line_framer_struct_bytes: usize,
    /// `server::Conn` is private: mio TcpStream + SocketAddr + slot + LineFramer + Session +
    /// output Vec, with alignment.
    pub conn_struct_bytes_estimate: usize,
    /// The `mining.notify` line of a synthetic job, which every session copies into its
    /// output buffer.
    pub notify_line_bytes: usize,
    /// Per profile: capacity of the connection's output buffer once everything was written
    /// (the server keeps up to 4096 bytes of it).
    pub out_capacity_after_handshake: Vec<(String, usize)>,
}

/// Replays each profile's handshake (the miner's own lines) through an edge `Session` whose
/// output is written out in full after each line, as the server's flush does, and reports the
/// output buffer's capacity afterwards.
pub fn edge_memory_model(difficulty: Difficulty) -> EdgeMemoryModel {
    let pool = SyntheticPoolConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        PowAlgorithm::Sha256d,
        difficulty,
    );
    let session_cfg = Arc::new(pool.server_config().session);
    let entry = Arc::new(JobEntry::new(
        synthetic_job(1, 840_001, true, 1_700_000_000),
        None,
        Instant::now(),
    ));
    let notify_line_bytes = entry.notify_line.len();
    let book = JobBook::default().with_job(entry, Instant::now());
    let mut out_capacity_after_handshake = Vec::new();
    for profile in Profile::ALL {
        let now = Instant::now();
        let e1 = Extranonce::from_hex("00000001").unwrap_or_default();
        let mut server = Session::new(session_cfg.clone(), e1, now);
        let mut miner = MinerSession::new(MinerConfig::new(
            profile,
            PowAlgorithm::Sha256d,
            "bench.rig0",
        ));
        let mut out = Vec::new();
        let mut events = Vec::new();
        // A few rounds: each of the miner's lines gets its answer before the next round.
        for _ in 0..4 {
            while let Some(line) = miner.poll_transmit(now) {
                server.handle_line(
                    line.trim_end().as_bytes(),
                    &book,
                    now,
                    SystemTime::now(),
                    &mut out,
                    &mut events,
                );
                for l in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    miner.handle_line(l, now);
                }
                out.clear();
            }
        }
        out_capacity_after_handshake.push((profile.to_string(), out.capacity()));
    }
    let session_struct_bytes = std::mem::size_of::<Session>();
    let line_framer_struct_bytes = std::mem::size_of::<relay::stratum::LineFramer>();
    let parts = std::mem::size_of::<mio::net::TcpStream>()
        + std::mem::size_of::<SocketAddr>()
        + std::mem::size_of::<u32>()
        + line_framer_struct_bytes
        + session_struct_bytes
        + std::mem::size_of::<Vec<u8>>();
    EdgeMemoryModel {
        session_struct_bytes,
        line_framer_struct_bytes,
        conn_struct_bytes_estimate: parts.next_multiple_of(8),
        notify_line_bytes,
        out_capacity_after_handshake,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RoundTripReport {
    pub connections: usize,
    pub duration_secs: f64,
    pub target_shares_per_sec: f64,
    pub difficulty: f64,
    pub hashrate_per_miner: f64,
    pub accepted: u64,
    pub rejected: u64,
    pub unexpected_rejects: u64,
    pub unanswered: u64,
    pub accepted_per_sec: f64,
    /// Accepted shares the server handed on (from its last status line).
    pub server_accepted: Option<u64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// CPU used over the phase, in percent of one core.
    pub server_cpu_percent: f64,
    pub client_cpu_percent: f64,
    pub rss_under_load_bytes: u64,
    pub miners: MinerStats,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub unix_time: u64,
    pub machine: Machine,
    pub server_threads: usize,
    pub client_threads: usize,
    pub source_addrs: Vec<IpAddr>,
    pub job_interval_secs: f64,
    /// `/proc/loadavg` before and after: the machine is shared.
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub memory: Option<MemoryReport>,
    pub round_trip: RoundTripReport,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.machine;
        writeln!(
            f,
            "machine: {} cores, {}, {}; load average {} -> {}",
            m.nproc, m.cpu_model, m.kernel, self.loadavg_before, self.loadavg_after
        )?;
        if let Some(mem) = &self.memory {
            writeln!(
                f,
                "memory: {} idle connections ({} authorized, server counted {}) in {:.1}s: RSS {:.1} MiB -> {:.1} MiB = {:.0} bytes ({:.2} KiB) per idle connection; {:.1} MiB after they left",
                mem.idle_connections,
                mem.authorized,
                mem.server_connected.map_or("?".into(), |n| n.to_string()),
                mem.connect_secs,
                mib(mem.rss_empty_bytes),
                mib(mem.rss_idle_bytes),
                mem.bytes_per_idle_connection,
                mem.bytes_per_idle_connection / 1024.0,
                mib(mem.rss_after_disconnect_bytes),
            )?;
            if let Some(h) = mem.heap_bytes_per_idle_connection {
                writeln!(
                    f,
                    "  heap in use (mallinfo2): {h:.0} bytes per idle connection"
                )?;
            }
            let m = &mem.model;
            writeln!(
                f,
                "  model: Session {} B, LineFramer {} B, Conn ~{} B; notify line {} B; output buffer kept after handshake {:?}",
                m.session_struct_bytes,
                m.line_framer_struct_bytes,
                m.conn_struct_bytes_estimate,
                m.notify_line_bytes,
                m.out_capacity_after_handshake
            )?;
        }
        let r = &self.round_trip;
        writeln!(
            f,
            "round trip: {} connections, {:.0}s, target {:.0} shares/s at difficulty {:e} ({:.1} H/s per miner)",
            r.connections, r.duration_secs, r.target_shares_per_sec, r.difficulty, r.hashrate_per_miner
        )?;
        writeln!(
            f,
            "  accepted {} ({:.0}/s; server counted {}), rejected {}, unexpected rejects {}, unanswered {}",
            r.accepted,
            r.accepted_per_sec,
            r.server_accepted.map_or("?".into(), |n| n.to_string()),
            r.rejected,
            r.unexpected_rejects,
            r.unanswered
        )?;
        writeln!(
            f,
            "  submit round trip (us): p50 {} p99 {} p99.9 {} max {} mean {:.0}",
            r.p50_us, r.p99_us, r.p999_us, r.max_us, r.mean_us
        )?;
        write!(
            f,
            "  CPU: server {:.0}% of a core, client {:.0}%; server RSS under load {:.1} MiB",
            r.server_cpu_percent,
            r.client_cpu_percent,
            mib(r.rss_under_load_bytes)
        )
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// `VmRSS` of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("/proc/{pid}/status has no VmRSS line"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/{pid}/status: unreadable line '{line}'"))?;
    Ok(kb * 1024)
}

/// User + system CPU time of a process (`self` for this one).
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start with the state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {} unreadable", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(total * 1000 / hz))
}

/// What the figures were measured on.
pub fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown".into());
    Machine {
        nproc: thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel,
    }
}

/// Miners running in a background thread, with their latest progress.
struct Background {
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<Progress>>,
    handle: thread::JoinHandle<Result<MinerStats, crate::miner::RunError>>,
}

impl Background {
    fn start(cfg: RunConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (s, p) = (stop.clone(), progress.clone());
        let handle = thread::spawn(move || {
            mio_runner::run(&cfg, s, |now| {
                if let Ok(mut g) = p.lock() {
                    *g = now.clone();
                }
            })
        });
        Background {
            stop,
            progress,
            handle,
        }
    }

    fn progress(&self) -> Progress {
        self.progress.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn finish(self) -> anyhow::Result<MinerStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(r) => Ok(r?),
            Err(_) => bail!("the miner runner panicked"),
        }
    }
}

fn miner_config(
    cfg: &BenchConfig,
    url: &StratumUrl,
    miners: usize,
    hashrate: f64,
    duration: Option<Duration>,
) -> RunConfig {
    let mut rc = RunConfig::new(url.clone(), miners, PowAlgorithm::Sha256d);
    rc.hashrate = hashrate;
    rc.profile = cfg.profile;
    rc.user = "bench.rig".into();
    rc.duration = duration;
    rc.source_addrs = cfg.source_addrs.clone();
    rc.threads = cfg.client_threads;
    rc.ramp = Some(cfg.ramp);
    rc.progress_every = Duration::from_millis(250);
    rc.drain_timeout = Duration::from_secs(5);
    rc
}

/// `key=` from the server's newest status line.
fn server_status(log: &std::path::Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    last_status_value(&text, key)
}

/// Runs both phases and returns the report; `say` gets progress lines for a human.
pub fn run(cfg: &BenchConfig, mut say: impl FnMut(&str)) -> anyhow::Result<BenchReport> {
    if cfg.connections == 0
        || cfg.rate.is_nan()
        || cfg.rate <= 0.0
        || cfg.difficulty.is_nan()
        || cfg.difficulty <= 0.0
    {
        bail!("bench-stratum needs connections ≥ 1, a positive rate and a positive difficulty");
    }
    mio_runner::raise_open_files_limit().context("raising the open files limit")?;
    let loadavg_before = loadavg();
    let exe = find_binary("quarry-loadtest")?;
    let port = free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let log = cfg
        .server_log
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bench-stratum-server-{port}.log")));
    let (listen_s, diff_s, threads_s, jobs_s) = (
        listen.to_string(),
        format!("{:e}", cfg.difficulty),
        cfg.server_threads.to_string(),
        cfg.job_interval.to_string(),
    );
    let args = [
        "synthetic-pool",
        "--listen",
        &listen_s,
        "--algo",
        "sha256d",
        "--difficulty",
        &diff_s,
        "--threads",
        &threads_s,
        "--report-every",
        "1",
        "--job-interval",
        &jobs_s,
    ];
    say(&format!(
        "starting {} {} (log {})",
        exe.display(),
        args.join(" "),
        log.display()
    ));
    let mut server = ManagedProcess::spawn("synthetic-pool", &exe, &args, &log)?;
    server.wait_for_port(listen, Duration::from_secs(20))?;
    let pid = server.pid().context("synthetic-pool has no pid")?;
    let url: StratumUrl = format!("stratum+tcp://{listen}")
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    thread::sleep(Duration::from_secs(2));

    // Phase 1: memory per idle connection.
    let memory = if cfg.idle_connections > 0 {
        let rss_empty = rss_bytes(pid)?;
        let heap_empty = server_status(&log, "heap");
        say(&format!(
            "memory: RSS with no connection {:.1} MiB; opening {} idle connections at {}/s",
            mib(rss_empty),
            cfg.idle_connections,
            cfg.ramp
        ));
        let started = Instant::now();
        let bg = Background::start(miner_config(cfg, &url, cfg.idle_connections, 0.0, None));
        let limit = Duration::from_secs_f64(cfg.idle_connections as f64 / cfg.ramp + 60.0);
        let mut last_say = Instant::now();
        loop {
            server.check_alive()?;
            let p = bg.progress();
            if p.authorized as usize >= cfg.idle_connections {
                break;
            }
            if started.elapsed() > limit {
                say(&format!(
                    "memory: only {} of {} idle miners authorized after {limit:?}; measuring anyway",
                    p.authorized, cfg.idle_connections
                ));
                break;
            }
            if last_say.elapsed() >= Duration::from_secs(2) {
                say(&format!("memory: {p}"));
                last_say = Instant::now();
            }
            thread::sleep(Duration::from_millis(100));
        }
        let connect_secs = started.elapsed().as_secs_f64();
        // Let the server settle (answers flushed, buffers shrunk), then read RSS a few times.
        thread::sleep(Duration::from_secs(3));
        let mut rss_idle = 0;
        for _ in 0..5 {
            rss_idle = rss_idle.max(rss_bytes(pid)?);
            thread::sleep(Duration::from_millis(200));
        }
        let authorized = bg.progress().authorized;
        let server_connected = server_status(&log, "connected");
        let heap_idle = server_status(&log, "heap");
        let idle = bg.finish()?;
        say(&format!(
            "memory: idle miners done: {} connects",
            idle.connects
        ));
        thread::sleep(Duration::from_secs(3));
        let rss_after = rss_bytes(pid)?;
        let per_conn =
            |before: u64, after: u64| (after as f64 - before as f64) / (authorized.max(1) as f64);
        Some(MemoryReport {
            idle_connections: cfg.idle_connections,
            authorized,
            server_connected,
            connect_secs,
            rss_empty_bytes: rss_empty,
            rss_idle_bytes: rss_idle,
            bytes_per_idle_connection: per_conn(rss_empty, rss_idle),
            rss_after_disconnect_bytes: rss_after,
            heap_empty_bytes: heap_empty,
            heap_idle_bytes: heap_idle,
            heap_bytes_per_idle_connection: heap_empty.zip(heap_idle).map(|(a, b)| per_conn(a, b)),
            model: edge_memory_model(Difficulty::new(cfg.difficulty).unwrap_or_default()),
        })
    } else {
        None
    };

    // Phase 2: round trip under a steady share rate.
    let accepted_before = std::fs::read_to_string(&log)
        .ok()
        .and_then(|t| last_accepted(&t))
        .unwrap_or(0);
    let hashrate = cfg.rate / cfg.connections as f64 * cfg.difficulty * SHA256D_HASHES_PER_DIFF1;
    let ramp_time = Duration::from_secs_f64(cfg.connections as f64 / cfg.ramp);
    say(&format!(
        "round trip: {} miners at {hashrate:.1} H/s each for {:?} (+{ramp_time:?} ramp)",
        cfg.connections, cfg.duration
    ));
    let (server_cpu0, client_cpu0) = (cpu_time(&pid.to_string())?, cpu_time("self")?);
    let t0 = Instant::now();
    let bg = Background::start(miner_config(
        cfg,
        &url,
        cfg.connections,
        hashrate,
        Some(cfg.duration + ramp_time),
    ));
    let mut rss_load = 0;
    let mut last_say = Instant::now();
    while !bg.handle.is_finished() {
        server.check_alive()?;
        if t0.elapsed() > ramp_time {
            rss_load = rss_load.max(rss_bytes(pid)?);
        }
        if last_say.elapsed() >= Duration::from_secs(5) {
            say(&format!("round trip: {}", bg.progress()));
            last_say = Instant::now();
        }
        thread::sleep(Duration::from_millis(250));
    }
    let stats = bg.finish()?;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let (server_cpu1, client_cpu1) = (cpu_time(&pid.to_string())?, cpu_time("self")?);
    // The server's last status line after every answer was counted.
    thread::sleep(Duration::from_millis(1500));
    server.stop(Duration::from_secs(10));
    let server_accepted = std::fs::read_to_string(&log)
        .ok()
        .and_then(|t| last_accepted(&t))
        .map(|n| n.saturating_sub(accepted_before));
    let s = &stats.shares;
    let l = &stats.latency_us;
    let round_trip = RoundTripReport {
        connections: cfg.connections,
        duration_secs: stats.elapsed_secs,
        target_shares_per_sec: cfg.rate,
        difficulty: cfg.difficulty,
        hashrate_per_miner: hashrate,
        accepted: s.accepted,
        rejected: s.rejected,
        unexpected_rejects: s.unexpected_rejects,
        unanswered: s.unanswered,
        accepted_per_sec: stats.accepted_per_sec(),
        server_accepted,
        p50_us: l.p50,
        p99_us: l.p99,
        p999_us: l.p999,
        max_us: l.max,
        mean_us: l.mean,
        server_cpu_percent: (server_cpu1 - server_cpu0).as_secs_f64() / wall * 100.0,
        client_cpu_percent: (client_cpu1 - client_cpu0).as_secs_f64() / wall * 100.0,
        rss_under_load_bytes: rss_load,
        miners: stats,
    };
    Ok(BenchReport {
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: machine(),
        server_threads: cfg.server_threads,
        client_threads: cfg.client_threads,
        source_addrs: cfg.source_addrs.clone(),
        job_interval_secs: cfg.job_interval,
        loadavg_before,
        loadavg_after: loadavg(),
        memory,
        round_trip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_model_replays_each_profiles_handshake_through_the_edge_session() {
        let m = edge_memory_model(Difficulty::new(2f64.powi(-30)).unwrap());
        assert_eq!(m.out_capacity_after_handshake.len(), 3);
        // A 12-branch notify is well over a kilobyte, and each session's output buffer held it.
        assert!(m.notify_line_bytes > 1000, "{m:?}");
        for (profile, cap) in &m.out_capacity_after_handshake {
            assert!(*cap >= m.notify_line_bytes, "{profile}: {cap} ({m:?})");
        }
        assert!(m.conn_struct_bytes_estimate > m.session_struct_bytes);
        println!("{m:?}");
    }

    #[test]
    fn proc_readers_understand_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        let _ = cpu_time("self").unwrap();
    }
}
