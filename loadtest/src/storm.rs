//! The `storm` scenario: a connection storm against an edge's connection limit.
//!
//! A farm rebooting, or an attacker, opens tens of thousands of Stratum connections at once.
//! An edge limited to N connections must serve the first N fully (subscribe, authorize, a job)
//! and refuse the rest *cleanly and at once* — not leave them hanging in a backlog, not stall
//! the miners it already serves. One process cannot make the storm here (every process is
//! capped at 20,000 open files), so the scenario runner starts several `storm-worker` children
//! (hidden subcommand of `quarry-loadtest`), each with its own 127.0.0.x source addresses and a
//! share of the attempts, and merges the JSON each writes.
//!
//! Each attempt is an [`Attempt`]: a sans-IO classifier fed with the bytes, EOF, resets and the
//! clock, deciding whether the edge served it or how it refused it (reset, EOF, a Stratum
//! error line, a refused connect) and how long that took. [`run_worker`] is the thin mio loop
//! around the attempts.

use crate::miner::mio_runner::{connect_nonblocking, raise_open_files_limit};
use crate::miner::stats::new_latency_histogram;
use crate::miner::LatencySummary;
use anyhow::Context;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use relay::stratum::LineFramer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The `[storm]` section of a scenario.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StormSpec {
    /// Connection attempts over all worker processes.
    pub attempts: usize,
    /// Worker processes (each keeps at most attempts/processes sockets open).
    #[serde(default = "default_processes")]
    pub processes: usize,
    /// Seconds after the honest miners start when the storm begins.
    #[serde(default = "default_at")]
    pub at_secs: f64,
    /// Seconds each worker keeps its served connections open after its last attempt resolved.
    #[serde(default = "default_hold")]
    pub hold_secs: f64,
    /// An attempt neither served nor refused within this is counted as hung.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Source addresses per worker: worker i uses 127.0.0.(10 + i·k) .. +k-1.
    #[serde(default = "default_addrs")]
    pub addrs_per_process: usize,
    /// Niceness of the worker processes (0 = as the runner, up to 19). On a real farm the
    /// storm's clients run on other machines; here they share the edge's cores, and a run with
    /// the workers niced shows what the edge itself does to its served miners.
    #[serde(default)]
    pub nice: i32,
}

fn default_processes() -> usize {
    4
}
fn default_at() -> f64 {
    10.0
}
fn default_hold() -> f64 {
    10.0
}
fn default_timeout() -> f64 {
    5.0
}
fn default_addrs() -> usize {
    2
}

/// Per-process share of the open-file limit the storm may use (the rest: logs, pipes, polls).
pub const MAX_SOCKETS_PER_PROCESS: usize = 18_000;

impl StormSpec {
    pub fn check(&self) -> Result<(), String> {
        if self.attempts == 0 || self.processes == 0 {
            return Err("storm.attempts and storm.processes must be at least 1".into());
        }
        if self.attempts.div_ceil(self.processes) > MAX_SOCKETS_PER_PROCESS {
            return Err(format!(
                "storm.processes: {} attempts over {} processes is more than {MAX_SOCKETS_PER_PROCESS} sockets per process",
                self.attempts, self.processes
            ));
        }
        if self.addrs_per_process == 0 || 10 + self.processes * self.addrs_per_process > 250 {
            return Err(
                "storm.addrs_per_process: the workers' addresses must fit 127.0.0.10..250".into(),
            );
        }
        if !(0..=19).contains(&self.nice) {
            return Err(format!("storm.nice: {} is not in 0..=19", self.nice));
        }
        for (key, v) in [
            ("storm.at_secs", self.at_secs),
            ("storm.hold_secs", self.hold_secs),
            ("storm.timeout_secs", self.timeout_secs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key}: {v} is not a non-negative number"));
            }
        }
        Ok(())
    }

    /// Attempts and source addresses of worker `i`.
    pub fn worker_share(&self, i: usize) -> (usize, Vec<IpAddr>) {
        let base = self.attempts / self.processes;
        let n = base + usize::from(i < self.attempts % self.processes);
        let addrs = (0..self.addrs_per_process)
            .map(|k| {
                let last = 10 + i * self.addrs_per_process + k;
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8))
            })
            .collect();
        (n, addrs)
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Subscribed, authorized and sent a job.
    Served,
    /// The edge reset the connection (RST) before serving it.
    Reset,
    /// The edge closed the connection (FIN) before serving it.
    Eof,
    /// The edge answered with a Stratum error before closing.
    ErrorLine,
    /// The TCP connect itself was refused (nothing listening or backlog full with abort).
    ConnectRefused,
    /// Connecting failed locally (no port, no file descriptor...).
    ConnectError,
    /// Nothing decisive within the timeout: neither served nor refused.
    Hung,
}

impl Outcome {
    /// The edge (or the kernel for it) turned the attempt away: what `refused` counts.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Outcome::Reset | Outcome::Eof | Outcome::ErrorLine | Outcome::ConnectRefused
        )
    }
}

/// What the worker sends on connecting: subscribe and authorize, pipelined as miners do.
pub const HELLO: &[u8] = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"storm/1.0\"]}\n\
{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"storm.w\",\"x\"]}\n";

/// One connection attempt's classifier. Feed it what the socket did; it ends at most once.
#[derive(Debug)]
pub struct Attempt {
    started: Instant,
    framer: LineFramer,
    subscribed: bool,
    authorized: bool,
    notified: bool,
    error_line: Option<String>,
    ended: Option<(Outcome, Duration)>,
}

impl Attempt {
    pub fn new(started: Instant) -> Self {
        Attempt {
            started,
            framer: LineFramer::new(16 * 1024),
            subscribed: false,
            authorized: false,
            notified: false,
            error_line: None,
            ended: None,
        }
    }

    pub fn outcome(&self) -> Option<&(Outcome, Duration)> {
        self.ended.as_ref()
    }

    /// The first Stratum error the edge sent, if any.
    pub fn error_line(&self) -> Option<&str> {
        self.error_line.as_deref()
    }

    fn end(&mut self, o: Outcome, now: Instant) {
        if self.ended.is_none() {
            self.ended = Some((o, now.saturating_duration_since(self.started)));
        }
    }

    /// Bytes the edge sent.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) {
        self.framer.push(bytes);
        while let Some(line) = self.framer.next_line() {
            let Ok(line) = line else { continue };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let error = v.get("error").filter(|e| !e.is_null());
            if let Some(e) = error {
                self.error_line.get_or_insert_with(|| e.to_string());
                continue;
            }
            match (v.get("id").and_then(|i| i.as_u64()), v.get("method")) {
                (Some(1), _) if v.get("result").is_some_and(|r| r.is_array()) => {
                    self.subscribed = true
                }
                (Some(2), _) if v.get("result") == Some(&serde_json::Value::Bool(true)) => {
                    self.authorized = true
                }
                (_, Some(m)) if m == "mining.notify" => self.notified = true,
                _ => {}
            }
        }
        if self.subscribed && self.authorized && self.notified {
            self.end(Outcome::Served, now);
        }
    }

    /// The edge closed (read returned 0).
    pub fn on_eof(&mut self, now: Instant) {
        let o = if self.error_line.is_some() {
            Outcome::ErrorLine
        } else {
            Outcome::Eof
        };
        self.end(o, now);
    }

    /// The socket failed: a reset, or a connect that did not complete.
    pub fn on_error(&mut self, kind: ErrorKind, connected: bool, now: Instant) {
        let o = match kind {
            _ if self.error_line.is_some() => Outcome::ErrorLine,
            ErrorKind::ConnectionRefused if !connected => Outcome::ConnectRefused,
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                Outcome::Reset
            }
            _ => Outcome::ConnectError,
        };
        self.end(o, now);
    }

    /// Marks it hung when nothing decided it within `timeout`; true if it is now ended.
    pub fn on_tick(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.ended.is_none() && now.saturating_duration_since(self.started) >= timeout {
            self.end(Outcome::Hung, now);
        }
        self.ended.is_some()
    }
}

/// What one worker process measured (written as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub attempts: usize,
    pub sources: Vec<IpAddr>,
    /// Microseconds from connect() to the outcome, per outcome.
    pub times_us: BTreeMap<Outcome, Vec<u64>>,
    /// Served connections the edge closed while they were held.
    pub served_dropped: u64,
    /// Distinct Stratum error texts seen (at most a few).
    pub error_lines: Vec<String>,
    /// Seconds from the first to the last connect().
    pub connect_secs: f64,
    pub peak_open_sockets: usize,
}

struct Slot {
    stream: Option<TcpStream>,
    attempt: Attempt,
    connected: bool,
    hello_sent: usize,
}

/// Makes `attempts` connections to `target` as fast as one event loop can, classifies each,
/// holds the served ones `hold` after the last outcome, and reports.
pub fn run_worker(
    target: SocketAddr,
    attempts: usize,
    sources: &[IpAddr],
    timeout: Duration,
    hold: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<WorkerReport> {
    raise_open_files_limit().context("raising the open files limit")?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut slots: Vec<Slot> = Vec::with_capacity(attempts);
    let mut buf = vec![0u8; 16 * 1024];
    let mut report = WorkerReport {
        attempts,
        sources: sources.to_vec(),
        ..WorkerReport::default()
    };
    let first = Instant::now();
    let mut last_connect = first;
    let mut open = 0usize;
    let mut unresolved = 0usize;
    let mut all_resolved_at: Option<Instant> = None;
    let mut last_tick = first;
    const BATCH: usize = 200;
    loop {
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("interrupted");
        }
        // Open the next batch: as fast as possible, but between batches serve the sockets, so
        // served connections are classified by their real answer time.
        for _ in 0..BATCH {
            if slots.len() >= attempts {
                break;
            }
            let i = slots.len();
            let now = Instant::now();
            let from = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            let mut slot = Slot {
                stream: None,
                attempt: Attempt::new(now),
                connected: false,
                hello_sent: 0,
            };
            match connect_nonblocking(target, from) {
                Ok(mut s) => {
                    poll.registry().register(
                        &mut s,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    slot.stream = Some(s);
                    open += 1;
                    unresolved += 1;
                }
                Err(e) => slot.attempt.on_error(e.kind(), false, now),
            }
            last_connect = now;
            slots.push(slot);
        }
        report.peak_open_sockets = report.peak_open_sockets.max(open);
        let wait = if slots.len() < attempts {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            let was_ended = slot.attempt.outcome().is_some();
            let served = matches!(slot.attempt.outcome(), Some((Outcome::Served, _)));
            let mut close = false;
            let now = Instant::now();
            let Some(stream) = slot.stream.as_mut() else {
                continue;
            };
            if !slot.connected && (ev.is_writable() || ev.is_error()) {
                match stream.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        slot.attempt.on_error(e.kind(), false, now);
                        close = true;
                    }
                    Ok(None) => match stream.peer_addr() {
                        Ok(_) => slot.connected = true,
                        Err(e) if e.kind() == ErrorKind::NotConnected => {}
                        Err(e) => {
                            slot.attempt.on_error(e.kind(), false, now);
                            close = true;
                        }
                    },
                }
            }
            if slot.connected && !close && slot.hello_sent < HELLO.len() {
                match stream.write(&HELLO[slot.hello_sent..]) {
                    Ok(n) => slot.hello_sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => {
                        slot.attempt.on_error(e.kind(), true, now);
                        close = true;
                    }
                }
            }
            if slot.connected && !close && (ev.is_readable() || ev.is_read_closed()) {
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            slot.attempt.on_eof(now);
                            close = true;
                            break;
                        }
                        Ok(n) => slot.attempt.on_bytes(&buf[..n], now),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            slot.attempt.on_error(e.kind(), true, now);
                            close = true;
                            break;
                        }
                    }
                }
            }
            if close && served {
                report.served_dropped += 1;
            }
            let ended = slot.attempt.outcome();
            if !was_ended && ended.is_some() {
                unresolved -= 1;
            }
            // Refused ones are closed at once; served ones stay open for the hold.
            if close || ended.is_some_and(|(o, _)| *o != Outcome::Served) {
                if let Some(mut s) = slot.stream.take() {
                    let _ = poll.registry().deregister(&mut s);
                    open -= 1;
                }
            }
        }
        let now = Instant::now();
        if now >= last_tick + Duration::from_millis(100) {
            last_tick = now;
            for slot in slots.iter_mut() {
                if slot.attempt.outcome().is_none() && slot.attempt.on_tick(now, timeout) {
                    unresolved -= 1;
                    if let Some(mut s) = slot.stream.take() {
                        let _ = poll.registry().deregister(&mut s);
                        open -= 1;
                    }
                }
            }
        }
        if slots.len() >= attempts && unresolved == 0 {
            let at = *all_resolved_at.get_or_insert(now);
            if now >= at + hold {
                break;
            }
        }
    }
    report.connect_secs = last_connect.duration_since(first).as_secs_f64();
    for slot in &slots {
        if let Some((o, d)) = slot.attempt.outcome() {
            report
                .times_us
                .entry(o.clone())
                .or_default()
                .push(d.as_micros() as u64);
        }
        if let Some(e) = slot.attempt.error_line() {
            if report.error_lines.len() < 5 && !report.error_lines.iter().any(|x| x == e) {
                report.error_lines.push(e.to_string());
            }
        }
    }
    Ok(report)
}

/// The storm's merged figures for the scenario report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StormReport {
    pub processes: usize,
    pub attempts: usize,
    /// Subscribed, authorized and got a job.
    pub served: u64,
    /// Refused by the edge, by how (reset, eof, error_line, connect_refused).
    pub refused: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    /// connect() → served, µs.
    pub time_to_served_us: LatencySummary,
    /// connect() → refusal seen (RST/EOF/error), µs.
    pub time_to_refusal_us: LatencySummary,
    /// Neither served nor refused within the timeout.
    pub hung: u64,
    pub served_dropped_while_held: u64,
    pub error_lines: Vec<String>,
    /// Slowest worker's time from its first to its last connect(), s.
    pub connect_secs: f64,
    pub attempts_per_sec: f64,
    pub max_open_sockets_per_process: usize,
    /// The edge's limit and the peak of `quarry_edge_miners_connected` during the storm.
    pub edge_limit: usize,
    pub edge_peak_connected: i64,
    /// `quarry_edge_connections_refused_total{reason="max_connections"}` after the storm.
    pub edge_refused_max_connections: u64,
    /// `quarry_edge_listener_closed_total`: how often the edge stopped listening at full house
    /// (while closed, the kernel refuses connects and the edge counts nothing).
    #[serde(default)]
    pub edge_listener_closed: u64,
    /// Honest miners connected when the storm began (they count against the limit).
    pub honest_connected_at_start: i64,
    pub honest_before: PhaseStats,
    pub honest_during: PhaseStats,
}

/// The honest miners in one phase of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    pub secs: f64,
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub submit_latency_us: LatencySummary,
}

impl StormReport {
    pub fn merge(spec: &StormSpec, workers: &[WorkerReport]) -> StormReport {
        let mut r = StormReport {
            processes: workers.len(),
            ..StormReport::default()
        };
        let mut served = new_latency_histogram();
        let mut refused = new_latency_histogram();
        for w in workers {
            r.attempts += w.attempts;
            r.served_dropped_while_held += w.served_dropped;
            r.connect_secs = r.connect_secs.max(w.connect_secs);
            r.max_open_sockets_per_process =
                r.max_open_sockets_per_process.max(w.peak_open_sockets);
            for e in &w.error_lines {
                if r.error_lines.len() < 5 && !r.error_lines.contains(e) {
                    r.error_lines.push(e.clone());
                }
            }
            for (o, times) in &w.times_us {
                *r.outcomes.entry(o.clone()).or_default() += times.len() as u64;
                let h = match o {
                    Outcome::Served => &mut served,
                    o if o.is_refusal() => &mut refused,
                    _ => continue,
                };
                for &t in times {
                    h.saturating_record(t.max(1));
                }
            }
        }
        let count = |o: &Outcome| r.outcomes.get(o).copied().unwrap_or(0);
        r.served = count(&Outcome::Served);
        r.hung = count(&Outcome::Hung);
        r.refused = r
            .outcomes
            .iter()
            .filter(|(o, _)| o.is_refusal())
            .map(|(_, n)| n)
            .sum();
        r.time_to_served_us = LatencySummary::of(&served);
        r.time_to_refusal_us = LatencySummary::of(&refused);
        r.attempts_per_sec = r.attempts as f64 / r.connect_secs.max(1e-3);
        let _ = spec;
        r
    }
}

/// Reads a worker's JSON report.
pub fn read_worker_report(path: &Path) -> anyhow::Result<WorkerReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn served_needs_subscribe_authorize_and_a_job() {
        let start = t0();
        let mut a = Attempt::new(start);
        let later = start + Duration::from_millis(3);
        a.on_bytes(
            b"{\"id\":1,\"result\":[[],\"00\",4],\"error\":null}\n",
            later,
        );
        assert!(a.outcome().is_none());
        a.on_bytes(b"{\"id\":2,\"result\":true,\"error\":null}\n{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[1]}\n{\"id\":null,\"method\":\"mining.no", later);
        assert!(a.outcome().is_none(), "half a notify is not a job");
        a.on_bytes(b"tify\",\"params\":[]}\n", later);
        assert_eq!(
            a.outcome(),
            Some(&(Outcome::Served, Duration::from_millis(3)))
        );
        a.on_eof(later + Duration::from_secs(1));
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::Served));
    }

    #[test]
    fn refusals_are_told_apart() {
        let s = t0();
        let mut a = Attempt::new(s);
        a.on_error(ErrorKind::ConnectionReset, true, s);
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::Reset));
        let mut a = Attempt::new(s);
        a.on_bytes(b"{\"id\":1,\"result\":[[],\"00\",4],\"error\":null}\n", s);
        a.on_eof(s);
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::Eof));
        let mut a = Attempt::new(s);
        a.on_bytes(
            b"{\"id\":1,\"result\":null,\"error\":[20,\"too many connections\",null]}\n",
            s,
        );
        a.on_error(ErrorKind::ConnectionReset, true, s);
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::ErrorLine));
        assert!(a.error_line().is_some_and(|e| e.contains("too many")));
        let mut a = Attempt::new(s);
        a.on_error(ErrorKind::ConnectionRefused, false, s);
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::ConnectRefused));
        let mut a = Attempt::new(s);
        a.on_error(ErrorKind::AddrNotAvailable, false, s);
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::ConnectError));
    }

    #[test]
    fn an_undecided_attempt_is_hung_after_the_timeout_only() {
        let s = t0();
        let mut a = Attempt::new(s);
        assert!(!a.on_tick(s + Duration::from_secs(4), Duration::from_secs(5)));
        assert!(a.on_tick(s + Duration::from_secs(5), Duration::from_secs(5)));
        assert_eq!(a.outcome().map(|o| &o.0), Some(&Outcome::Hung));
    }

    #[test]
    fn workers_split_attempts_and_addresses() {
        let spec = StormSpec {
            attempts: 10,
            processes: 3,
            at_secs: 1.0,
            hold_secs: 1.0,
            timeout_secs: 5.0,
            addrs_per_process: 2,
            nice: 0,
        };
        let shares: Vec<_> = (0..3).map(|i| spec.worker_share(i)).collect();
        assert_eq!(shares.iter().map(|s| s.0).sum::<usize>(), 10);
        assert_eq!(
            shares[0].1,
            vec![IpAddr::from([127, 0, 0, 10]), IpAddr::from([127, 0, 0, 11])]
        );
        assert_eq!(shares[2].1[1], IpAddr::from([127, 0, 0, 15]));
        assert!(StormSpec {
            processes: 1,
            attempts: 40_000,
            ..spec.clone()
        }
        .check()
        .is_err());
    }

    #[test]
    fn merge_counts_and_separates_refusals_from_hangs() {
        let mut w = WorkerReport {
            attempts: 5,
            ..WorkerReport::default()
        };
        w.times_us.insert(Outcome::Served, vec![100, 200]);
        w.times_us.insert(Outcome::Reset, vec![50, 60]);
        w.times_us.insert(Outcome::Hung, vec![5_000_000]);
        let spec = StormSpec {
            attempts: 10,
            processes: 2,
            at_secs: 0.0,
            hold_secs: 0.0,
            timeout_secs: 5.0,
            addrs_per_process: 1,
            nice: 0,
        };
        let r = StormReport::merge(&spec, &[w.clone(), w]);
        assert_eq!((r.attempts, r.served, r.refused, r.hung), (10, 4, 4, 2));
        assert_eq!(r.time_to_refusal_us.count, 4);
        assert!(r.time_to_refusal_us.max < 100);
    }
}
