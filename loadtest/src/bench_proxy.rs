//! `quarry-loadtest bench-proxy`: what proxy mining costs in time.
//!
//! Two figures, both measured against the simulated upstream pool ([`crate::sim_pool`]) in this
//! process, with a real `quarry-core` in proxy mode as a child process:
//!
//! - **Forwarding latency.** A probe miner (the loadtest's sans-IO [`MinerSession`] over a
//!   blocking socket) submits shares at a steady pace, each one hard enough for the upstream,
//!   and notes when each line left. The pool notes when each arrived (same clock: same
//!   process). Run once straight to the pool and once through Quarry; the difference of the two
//!   latency distributions is what Quarry adds: its Stratum server and validation, the share
//!   processor, the proxy's re-check and the upstream connection's write.
//! - **Failover time.** Two upstreams in failover mode; the primary is shut down (its
//!   connections close, as when a pool process dies) while the probe submits; the time from the
//!   shutdown to the first share arriving at the backup. Repeated, with a failback between.

use crate::bench_stratum::{machine, Machine};
use crate::miner::client::{MinerSession, Profile, SessionConfig};
use crate::proxy_rig::{ProxyCore, ProxyCoreOptions, UpstreamEntry};
use crate::sim_pool::{SimPool, SimPoolConfig, SimPoolHandle};
use crate::stack::{fresh_dir, remove_dir};
use anyhow::Context;
use hdrhistogram::Histogram;
use relay::stratum::LineFramer;
use relay::work::{Difficulty, Extranonce};
use relay::PowAlgorithm;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Every hash is a share at this difficulty (sha256d, 2 hashes a share on average), so the
/// probe's pace, not hashing, sets the rate.
const PROBE_DIFFICULTY: f64 = 1.0 / (1u64 << 31) as f64;

#[derive(Clone, Debug)]
pub struct BenchProxyOptions {
    pub shares: usize,
    /// Shares per second the probe submits.
    pub rate: f64,
    pub failovers: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyFigures {
    pub samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchProxyReport {
    pub machine: Machine,
    pub shares: usize,
    pub rate: f64,
    /// Probe → pool, no Quarry in between.
    pub direct: LatencyFigures,
    /// Probe → quarry-core (proxy mode) → pool.
    pub via_quarry: LatencyFigures,
    /// `via_quarry − direct` at each percentile.
    pub added_p50_us: i64,
    pub added_p99_us: i64,
    /// Shutdown of the primary → first share at the backup, milliseconds, per repetition.
    pub failover_ms: Vec<f64>,
    /// Primary back → first share at it again (includes `failback_secs` = 1 s), milliseconds.
    pub failback_ms: Vec<f64>,
    pub upstream_rejects: u64,
}

fn figures(h: &Histogram<u64>) -> LatencyFigures {
    LatencyFigures {
        samples: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

fn pool(listen: SocketAddr) -> anyhow::Result<SimPoolHandle> {
    let mut cfg = SimPoolConfig::new(listen);
    cfg.algorithm = PowAlgorithm::Sha256d;
    cfg.difficulty = Difficulty::new(PROBE_DIFFICULTY)?;
    cfg.extranonce2_size = 8;
    cfg.job_interval = Duration::from_secs(30);
    let p = SimPool::start(cfg).with_context(|| format!("sim pool on {listen}"))?;
    p.record_arrivals(true);
    Ok(p)
}

/// A probe miner on a blocking socket.
struct Probe {
    sock: TcpStream,
    session: MinerSession,
    framer: LineFramer,
    buf: Vec<u8>,
    /// (extranonce2, nonce) → when the submit line was written.
    sent: HashMap<(Extranonce, u32), Instant>,
}

impl Probe {
    fn connect(addr: SocketAddr) -> anyhow::Result<Probe> {
        let sock = TcpStream::connect(addr).with_context(|| format!("probe to {addr}"))?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_millis(1)))?;
        let mut cfg = SessionConfig::new(Profile::Cpuminer, PowAlgorithm::Sha256d, "probe.w1");
        cfg.latency_histogram = false;
        let mut p = Probe {
            sock,
            session: MinerSession::new(cfg),
            framer: LineFramer::new(64 * 1024),
            buf: vec![0; 16 * 1024],
            sent: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.session.can_mine() {
            anyhow::ensure!(Instant::now() < deadline, "probe got no job from {addr}");
            p.pump()?;
        }
        Ok(p)
    }

    /// Writes what the session queued and reads what arrived.
    fn pump(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        while let Some(line) = self.session.poll_transmit(now) {
            self.sock.write_all(line.as_bytes())?;
        }
        match self.sock.read(&mut self.buf) {
            Ok(0) => anyhow::bail!("the pool closed the probe's connection"),
            Ok(n) => self.framer.push(&self.buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        while let Some(Ok(line)) = self.framer.next_line() {
            self.session.handle_line(&line, now);
        }
        while self.session.poll_event().is_some() {}
        Ok(())
    }

    /// Mines and sends one share.
    fn submit_one(&mut self) -> anyhow::Result<()> {
        let Some(sub) = self.session.next_share(1 << 16) else {
            return self.pump();
        };
        let now = Instant::now();
        while let Some(line) = self.session.poll_transmit(now) {
            self.sock.write_all(line.as_bytes())?;
        }
        self.sent
            .insert((sub.work.extranonce2, sub.work.nonce), Instant::now());
        Ok(())
    }

    /// Submits at `rate` per second for `count` shares, or until `stop` says so.
    fn run(
        &mut self,
        count: usize,
        rate: f64,
        mut stop: impl FnMut(usize) -> bool,
    ) -> anyhow::Result<()> {
        let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let mut next = Instant::now();
        let mut n = 0;
        while n < count && !stop(n) {
            if Instant::now() >= next {
                self.submit_one()?;
                n += 1;
                next += gap;
            } else {
                self.pump()?;
            }
        }
        let end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < end {
            self.pump()?;
        }
        Ok(())
    }
}

/// Matches a pool's arrivals with the probe's sends; the upstream extranonce2 of a forwarded
/// share ends with the miner's.
fn latencies(
    probe: &Probe,
    pool: &SimPoolHandle,
    since: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for a in pool.take_arrivals() {
        let e2 = a.extranonce2.as_bytes();
        let key_len = probe.session.extranonce2_size();
        if e2.len() < key_len {
            continue;
        }
        let Ok(miner_e2) = Extranonce::from_slice(&e2[e2.len() - key_len..]) else {
            continue;
        };
        if let Some(&t) = probe.sent.get(&(miner_e2, a.nonce)) {
            if t >= since {
                h.record(a.at.saturating_duration_since(t).as_micros().max(1) as u64)?;
            }
        }
    }
    Ok(h)
}

pub fn run(o: &BenchProxyOptions) -> anyhow::Result<BenchProxyReport> {
    let dir = fresh_dir("quarry-bench-proxy");
    let primary = pool("127.0.0.1:0".parse()?)?;
    let primary_addr = primary.local_addr();
    let backup = pool("127.0.0.1:0".parse()?)?;

    // Straight to the pool.
    let mut probe = Probe::connect(primary_addr)?;
    let t0 = Instant::now();
    probe.run(o.shares, o.rate, |_| false)?;
    let direct = latencies(&probe, &primary, t0)?;
    drop(probe);

    let mut opts = ProxyCoreOptions::new(
        dir.clone(),
        vec![
            UpstreamEntry::tcp("primary", primary_addr, "farm.proxy"),
            UpstreamEntry::tcp("backup", backup.local_addr(), "farm.proxy"),
        ],
    );
    opts.algorithm = "sha256d".into();
    opts.start_difficulty = PROBE_DIFFICULTY;
    opts.fixed_difficulty = true;
    opts.failback_secs = 1.0;
    let proxy = ProxyCore::start(&opts)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary.stats().connections_total < 2 || backup.stats().connected < 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the proxy did not connect to both pools"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut probe = Probe::connect(proxy.stratum)?;
    primary.take_arrivals();
    let t1 = Instant::now();
    probe.run(o.shares, o.rate, |_| false)?;
    let via = latencies(&probe, &primary, t1)?;

    // Failover and failback, repeated.
    let mut primary = Some(primary);
    let mut failover_ms = Vec::new();
    let mut failback_ms = Vec::new();
    for _ in 0..o.failovers {
        backup.take_arrivals();
        let killed = Instant::now();
        if let Some(p) = primary.take() {
            p.shutdown();
        }
        let mut first: Option<Instant> = None;
        probe.run(usize::MAX, o.rate, |_| {
            if first.is_none() {
                first = backup.take_arrivals().first().map(|a| a.at);
            }
            first.is_some() || killed.elapsed() > Duration::from_secs(30)
        })?;
        let first = first.context("no share reached the backup within 30 s of the failover")?;
        failover_ms.push(first.saturating_duration_since(killed).as_secs_f64() * 1000.0);
        let p = pool(primary_addr)?;
        let back = Instant::now();
        let mut first_back: Option<Instant> = None;
        probe.run(usize::MAX, o.rate, |_| {
            if first_back.is_none() {
                first_back = p.take_arrivals().first().map(|a| a.at);
            }
            first_back.is_some() || back.elapsed() > Duration::from_secs(30)
        })?;
        let first_back = first_back.context("work did not return to the primary within 30 s")?;
        failback_ms.push(first_back.saturating_duration_since(back).as_secs_f64() * 1000.0);
        primary = Some(p);
    }
    let upstream_rejects: u64 = backup.stats().rejected.values().sum::<u64>()
        + primary
            .as_ref()
            .map_or(0, |p| p.stats().rejected.values().sum::<u64>());
    drop(probe);
    proxy.stop();
    remove_dir(&dir);
    let (d, v) = (figures(&direct), figures(&via));
    Ok(BenchProxyReport {
        machine: machine(),
        shares: o.shares,
        rate: o.rate,
        added_p50_us: v.p50_us as i64 - d.p50_us as i64,
        added_p99_us: v.p99_us as i64 - d.p99_us as i64,
        direct: d,
        via_quarry: v,
        failover_ms,
        failback_ms,
        upstream_rejects,
    })
}
