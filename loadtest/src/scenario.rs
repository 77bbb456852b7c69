//! `quarry-loadtest run SCENARIO.toml`: one command per scenario of the load-test plan.
//!
//! A scenario file says how many miners, how they behave (profile, share rate and difficulty,
//! a mix of bad shares, churn), how the link between the farm and the pool misbehaves (delay,
//! jitter, loss, bandwidth, blackouts, seed), optional hostile clients, and how long to run.
//! The runner starts what it needs as child processes — `quarry-loadtest synthetic-core` (the
//! real core gateway with simulated sha256d work) and a real `quarry-edge` — runs the mio miners
//! in this process, and writes `report.json`, `summary.txt` and `throughput.svg`.
//!
//! **Where the impaired link sits.**
//! - Edge mode (`baseline = false`): miners → edge on loopback (a farm's LAN), and the edge's
//!   QUIC uplink → UDP impairment proxy ([`crate::impair`]) → core. This is Quarry's claim:
//!   the bad link is behind the edge, miners keep local latency, the spool covers blackouts.
//! - Baseline (`baseline = true`): a farm without an edge. The miners' Stratum TCP itself
//!   crosses the impaired link ([`crate::tcp_impair`]) to the pool's Stratum port. The core has
//!   no Stratum port of its own (synthetic-core speaks only QUIC), so the pool's Stratum server
//!   is the real edge Stratum server in the core's position: edge and core side by side on an
//!   unimpaired loopback, the miners on the far side of the impaired TCP link. What the miners
//!   see is what they would see from any remote Stratum pool with the same server code.
//!
//! With a `[storm]` section the runner also starts `storm-worker` processes at `at_secs` (see
//! [`crate::storm`]) and reports how the edge served and refused their connections, and the
//! honest miners' figures before and during the storm.
//!
//! Every share the miners heard "accepted" is checked against the core's journal
//! ([`crate::exactly_once`]): none may be missing, none credited twice.

use crate::bench_stratum::{machine, Machine};
use crate::bench_uplink::{accepted_shares, free_udp_port, CHEAP_DIFFICULTY};
use crate::box_cpu::{BoxCpu, BoxCpuMeter, StackPids};
use crate::exactly_once::compare;
use crate::host_speed::HostSpeed;
use crate::hostile::{HostileClients, HostileReport, HostileSpec};
use crate::impair::{Impairment, UdpProxy};
use crate::miner::stats::new_latency_histogram;
use crate::miner::{
    mio_runner, LatencySummary, MinerStats, ProfileChoice, Progress, RunConfig, ShareMix,
    StratumUrl,
};
use crate::process::{find_binary, free_port, metric_sum, scrape, ManagedProcess};
use crate::stall_watch::{HostStallsDuringRun, StallWatch, Stalled};
use crate::storm::{read_worker_report, PhaseStats, StormReport, StormSpec, WorkerReport};
use crate::synthetic_core::EDGE_ID;
use crate::tcp_impair::{TcpImpairment, TcpProxy};
use crate::udp_meter::UdpMeter;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use relay::PowAlgorithm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Expected sha256d hashes per share at difficulty 1.
const SHA256D_HASHES_PER_DIFF1: f64 = 4_294_967_296.0;

/// A scenario file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Defaults to the file's stem.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seconds the miners run (after they start connecting).
    pub duration_secs: f64,
    /// Baseline: miners straight to the pool's Stratum port over the impaired link.
    #[serde(default)]
    pub baseline: bool,
    /// Seconds allowed after the run for the edge to deliver every share to the core.
    #[serde(default = "default_settle")]
    pub settle_secs: f64,
    pub miners: MinersSpec,
    #[serde(default)]
    pub link: LinkSpec,
    #[serde(default)]
    pub edge: EdgeSpec,
    #[serde(default)]
    pub hostile: HostileSpec,
    /// A connection storm from worker processes while the miners run (the `storm` scenario).
    #[serde(default)]
    pub storm: Option<StormSpec>,
}

fn default_settle() -> f64 {
    60.0
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MinersSpec {
    pub count: usize,
    /// asic, nicehash, cpuminer or mixed.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Shares per second of all miners together.
    pub shares_per_sec: f64,
    /// Share difficulty (the edge's fixed difficulty); the default 2^-30 is ~4 hashes a share.
    #[serde(default = "default_difficulty")]
    pub difficulty: f64,
    /// Seconds before each connection is closed and reopened; 0 = never.
    #[serde(default)]
    pub churn_secs: f64,
    /// New connections per second while they first connect.
    #[serde(default = "default_ramp")]
    pub ramp_per_sec: f64,
    #[serde(default)]
    pub mix: MixSpec,
    /// Local addresses to connect from (127.0.0.x), used in turn.
    #[serde(default)]
    pub source_addrs: Vec<IpAddr>,
    /// Event-loop threads; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_profile() -> String {
    "mixed".into()
}
fn default_difficulty() -> f64 {
    CHEAP_DIFFICULTY
}
fn default_ramp() -> f64 {
    1000.0
}
fn default_seed() -> u64 {
    1
}

/// Fractions of submissions that are deliberately bad.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub stale: f64,
    #[serde(default)]
    pub low_difficulty: f64,
    #[serde(default)]
    pub malformed: f64,
}

/// The impaired link (edge ↔ core, or miners ↔ pool in a baseline), per direction.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    #[serde(default)]
    pub delay_ms: f64,
    #[serde(default)]
    pub jitter_ms: f64,
    /// 0..1 per packet (UDP) or per chunk (TCP: an extra retransmission timeout).
    #[serde(default)]
    pub loss: f64,
    /// Bytes per second, 0 = unlimited (UDP only).
    #[serde(default)]
    pub bandwidth: u64,
    #[serde(default)]
    pub blackouts: Vec<Blackout>,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

impl LinkSpec {
    pub fn is_impaired(&self) -> bool {
        self.delay_ms > 0.0
            || self.jitter_ms > 0.0
            || self.loss > 0.0
            || self.bandwidth > 0
            || !self.blackouts.is_empty()
    }

    fn blacked_out_at(&self, t: f64) -> bool {
        self.blackouts
            .iter()
            .any(|b| t >= b.at_secs && t < b.at_secs + b.for_secs)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Blackout {
    pub at_secs: f64,
    pub for_secs: f64,
}

/// The edge's `[limits]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_ban_after_invalid")]
    pub ban_after_invalid: u32,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// The edge's connector threads (`stratum.threads`); 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    /// The connectors' scheduler slice (`stratum.sched_slice_us`); unset = the edge's default,
    /// 0 = the kernel's.
    #[serde(default)]
    pub sched_slice_us: Option<u64>,
    /// The connectors' real-time priority (`stratum.realtime_priority`); unset = the edge's
    /// default, 0 = fair-scheduled (for A/B runs).
    #[serde(default)]
    pub realtime_priority: Option<u8>,
    /// A real-time connector's gather time (`stratum.realtime_gather_us`); unset = the edge's.
    #[serde(default)]
    pub realtime_gather_us: Option<u64>,
}

fn default_max_connections() -> usize {
    15_000
}
fn default_ban_after_invalid() -> u32 {
    100
}
fn default_handshake_timeout() -> u64 {
    30
}

impl Default for EdgeSpec {
    fn default() -> Self {
        EdgeSpec {
            max_connections: default_max_connections(),
            ban_after_invalid: default_ban_after_invalid(),
            handshake_timeout_secs: default_handshake_timeout(),
            threads: 0,
            sched_slice_us: None,
            realtime_priority: None,
            realtime_gather_us: None,
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file; errors name the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the scenario {}", path.display()))?;
        let mut s =
            Scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map_or("scenario".into(), |n| n.to_string_lossy().into_owned());
        }
        Ok(s)
    }

    /// Parses and checks scenario text; errors name the key.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        let bad = |key: &str, why: String| Err(format!("{key}: {why}"));
        if !(self.duration_secs.is_finite() && self.duration_secs > 0.0) {
            return bad(
                "duration_secs",
                format!("{} is not a positive number", self.duration_secs),
            );
        }
        if self.miners.count == 0 {
            return bad("miners.count", "must be at least 1".into());
        }
        if !(self.miners.shares_per_sec.is_finite() && self.miners.shares_per_sec >= 0.0) {
            return bad(
                "miners.shares_per_sec",
                format!(
                    "{} is not a non-negative number",
                    self.miners.shares_per_sec
                ),
            );
        }
        if !(self.miners.difficulty.is_finite() && self.miners.difficulty > 0.0) {
            return bad(
                "miners.difficulty",
                format!("{} is not a positive number", self.miners.difficulty),
            );
        }
        if self.miners.ramp_per_sec.is_nan() || self.miners.ramp_per_sec <= 0.0 {
            return bad("miners.ramp_per_sec", "must be positive".into());
        }
        self.miners
            .profile
            .parse::<ProfileChoice>()
            .map_err(|e| format!("miners.profile: {e}"))?;
        self.share_mix()
            .validate()
            .map_err(|e| format!("miners.mix: {e}"))?;
        if !(0.0..1.0).contains(&self.link.loss) {
            return bad("link.loss", format!("{} is not in 0..1", self.link.loss));
        }
        if self.link.delay_ms < 0.0 || self.link.jitter_ms < 0.0 {
            return bad("link.delay_ms", "delays cannot be negative".into());
        }
        for (i, b) in self.link.blackouts.iter().enumerate() {
            if b.at_secs < 0.0 || b.for_secs <= 0.0 {
                return bad(
                    &format!("link.blackouts[{i}]"),
                    "needs at_secs >= 0 and for_secs > 0".into(),
                );
            }
        }
        if let Some(st) = &self.storm {
            st.check()?;
            if self.baseline {
                return bad("storm", "not supported with baseline = true".into());
            }
        }
        if self.baseline && self.link.bandwidth > 0 {
            return bad(
                "link.bandwidth",
                "not supported by the TCP (baseline) link".into(),
            );
        }
        Ok(())
    }

    fn share_mix(&self) -> ShareMix {
        let m = &self.miners.mix;
        ShareMix {
            duplicate: m.duplicate,
            stale: m.stale,
            low_difficulty: m.low_difficulty,
            malformed: m.malformed,
        }
    }

    fn udp_impairment(&self) -> Impairment {
        Impairment {
            delay: Duration::from_secs_f64(self.link.delay_ms / 1000.0),
            jitter: Duration::from_secs_f64(self.link.jitter_ms / 1000.0),
            loss: self.link.loss,
            bandwidth: self.link.bandwidth,
            seed: self.link.seed,
        }
    }

    fn tcp_impairment(&self) -> TcpImpairment {
        TcpImpairment {
            delay: Duration::from_secs_f64(self.link.delay_ms / 1000.0),
            jitter: Duration::from_secs_f64(self.link.jitter_ms / 1000.0),
            loss: self.link.loss,
            seed: self.link.seed,
        }
    }
}

/// The processes and proxies of one run. Fields drop in order: proxy in front of the miners,
/// edge, meter, link proxy, core.
struct Rig {
    tcp_link: Option<TcpProxy>,
    edge: ManagedProcess,
    meter: UdpMeter,
    udp_link: Option<UdpProxy>,
    core: ManagedProcess,
    edge_stratum: SocketAddr,
    edge_metrics: SocketAddr,
    core_metrics: SocketAddr,
    journal: PathBuf,
}

impl Rig {
    fn start(s: &Scenario, dir: &Path) -> anyhow::Result<Rig> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::process::clear_run_state(dir, &["journal", "spool"])?;
        let pki = dir.join("pki");
        crate::synthetic_core::ensure_pki(&pki)?;
        let gateway: SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
        let core_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let journal = dir.join("journal");
        let me = find_binary("quarry-loadtest")?;
        let args = [
            "synthetic-core".to_string(),
            "--gateway".into(),
            gateway.to_string(),
            "--pki".into(),
            pki.display().to_string(),
            "--journal".into(),
            journal.display().to_string(),
            "--algo".into(),
            "sha256d".into(),
            "--metrics".into(),
            core_metrics.to_string(),
            "--nbits".into(),
            format!("{:08x}", crate::bench_uplink::HARD_NBITS),
            "--job-interval".into(),
            "30".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut core = ManagedProcess::spawn("synthetic-core", &me, &args, &dir.join("core.log"))?;
        core.wait_for_port(core_metrics, Duration::from_secs(30))?;
        let udp_link = if !s.baseline && s.link.is_impaired() {
            Some(
                UdpProxy::start("127.0.0.1:0".parse()?, gateway, s.udp_impairment())
                    .context("starting the UDP impairment proxy")?,
            )
        } else {
            None
        };
        let core_side = udp_link.as_ref().map_or(gateway, |p| p.listen);
        let meter =
            UdpMeter::start("127.0.0.1:0".parse()?, core_side).context("starting the UDP meter")?;
        let edge_stratum: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let edge_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = dir.join("edge.toml");
        std::fs::write(
            &config,
            edge_config(s, dir, meter.listen, edge_stratum, edge_metrics),
        )?;
        let bin = find_binary("quarry-edge")?;
        let config_arg = config.display().to_string();
        let mut edge = ManagedProcess::spawn(
            "quarry-edge",
            &bin,
            &["run", "--config", &config_arg],
            &dir.join("edge.log"),
        )?;
        edge.wait_for_port(edge_stratum, Duration::from_secs(60))?;
        let tcp_link = if s.baseline {
            Some(
                TcpProxy::start("127.0.0.1:0".parse()?, edge_stratum, s.tcp_impairment())
                    .context("starting the TCP impairment proxy")?,
            )
        } else {
            None
        };
        let rig = Rig {
            tcp_link,
            edge,
            meter,
            udp_link,
            core,
            edge_stratum,
            edge_metrics,
            core_metrics,
            journal,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while rig
            .edge_metric("quarry_edge_uplink_connected")
            .unwrap_or(0.0)
            < 1.0
        {
            if Instant::now() > deadline {
                bail!("the edge did not connect to the core within 30 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(rig)
    }

    /// Where the miners connect.
    fn miners_target(&self) -> SocketAddr {
        self.tcp_link
            .as_ref()
            .map_or(self.edge_stratum, |p| p.listen)
    }

    fn set_blackout(&self, on: bool) {
        if let Some(p) = &self.udp_link {
            p.set_blackout(on);
        }
        if let Some(p) = &self.tcp_link {
            p.set_blackout(on);
        }
    }

    fn edge_metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&scrape(self.edge_metrics)?, name))
    }

    /// One label set of a metric (`label` as it appears in the exposition, e.g. `reason="x"`).
    fn edge_metric_labelled(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let body = scrape(self.edge_metrics)?;
        Ok(body
            .lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }

    fn core_metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&scrape(self.core_metrics)?, name))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.core.check_alive()?;
        self.edge.check_alive()
    }

    /// Waits until the core acknowledged every share the edge accepted.
    fn settle(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let accepted = accepted_shares(&scrape(self.edge_metrics)?);
            let acked = self.edge_metric("quarry_edge_shares_acked_total")?;
            let pending = self.edge_metric("quarry_edge_spool_pending_shares")?;
            if acked >= accepted && pending == 0.0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not settled after {limit:?}: edge accepted {accepted}, acked {acked}, {pending} pending");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every share the core credited, from its journal (after the core stopped).
    fn credited_shares(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let bin = find_binary("quarry-core")?;
        let out = std::process::Command::new(bin)
            .args(["journal-dump", "--dir"])
            .arg(&self.journal)
            .output()?;
        if !out.status.success() {
            bail!(
                "journal-dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("journal-dump line"))
            .collect()
    }
}

fn edge_config(
    s: &Scenario,
    dir: &Path,
    core: SocketAddr,
    stratum: SocketAddr,
    metrics: SocketAddr,
) -> String {
    let pki = dir.join("pki");
    let d = s.miners.difficulty;
    format!(
        r#"# Written by quarry-loadtest run ({name}).
[edge]
id = "{EDGE_ID}"
algorithm = "sha256d"
spool_dir = "{spool}"

[core]
endpoints = ["{core}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[stratum]
listen = "{stratum}"
start_difficulty = {d:e}
min_difficulty = {d:e}
max_difficulty = {d:e}
threads = {threads}
sched_slice_us = {slice}
realtime_priority = {rt}
realtime_gather_us = {gather}

[limits]
max_connections = {maxc}
ban_after_invalid = {ban}
handshake_timeout_secs = {hs}

[metrics]
listen = "{metrics}"
"#,
        name = s.name,
        spool = dir.join("spool").display(),
        ca = pki.join("ca.crt").display(),
        cert = pki.join(format!("{EDGE_ID}.crt")).display(),
        key = pki.join(format!("{EDGE_ID}.key")).display(),
        maxc = s.edge.max_connections,
        ban = s.edge.ban_after_invalid,
        hs = s.edge.handshake_timeout_secs,
        threads = s.edge.threads,
        slice = s
            .edge
            .sched_slice_us
            .unwrap_or(edge::config::DEFAULT_SCHED_SLICE_US),
        rt = s
            .edge
            .realtime_priority
            .unwrap_or(edge::config::DEFAULT_REALTIME_PRIORITY),
        gather = s
            .edge
            .realtime_gather_us
            .unwrap_or(edge::config::DEFAULT_REALTIME_GATHER_US),
    )
}

/// Accepted shares a second over the samples in which all `miners` were connected, weighted by
/// each sample's length. The last sample is left out: it holds the drain.
pub fn sustained_rate(samples: &[Sample], miners: usize) -> Option<f64> {
    let body = samples.split_last().map_or(&[][..], |(_, rest)| rest);
    let mut prev_t = 0.0;
    let (mut accepted, mut secs) = (0.0, 0.0);
    for s in body {
        let dt = s.t_secs - prev_t;
        prev_t = s.t_secs;
        if miners > 0 && s.connected >= miners as i64 && dt > 0.0 {
            accepted += s.accepted_per_sec * dt;
            secs += dt;
        }
    }
    (secs >= 1.0).then(|| accepted / secs)
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub t_secs: f64,
    pub connected: i64,
    pub submitted_per_sec: f64,
    pub accepted_per_sec: f64,
    pub rejected_per_sec: f64,
    /// The link was cut during (part of) this second.
    pub blackout: bool,
    /// Percentiles of the submit answers that arrived in this second (µs; 0 with no answer).
    #[serde(default)]
    pub answers: u64,
    #[serde(default)]
    pub submit_p50_us: u64,
    #[serde(default)]
    pub submit_p99_us: u64,
    /// p99 of the same answers at their arrival in the socket (kernel stamp): where it stays low
    /// while `submit_p99_us` rises, the harness was slow to read, not the edge to answer.
    #[serde(default)]
    pub arrival_p99_us: u64,
    /// The host's stalls in this second (see [`crate::stall_watch`]): late wake-ups of a
    /// thread that asked to be woken every millisecond.
    #[serde(default)]
    pub host_stalls: Stalled,
    /// Where the machine's CPU went in this second (see [`crate::box_cpu`]).
    #[serde(default)]
    pub box_cpu: Option<BoxCpu>,
}

/// The edge process's resources (from /proc).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EdgeResources {
    pub cpu_secs: f64,
    /// Mean CPU over the run, per cent of one core.
    pub cpu_percent: f64,
    pub rss_kib_idle: u64,
    pub rss_kib_peak: u64,
    pub vm_hwm_kib: u64,
    /// (peak RSS − idle RSS) / peak connections.
    pub rss_bytes_per_connection: f64,
    /// How the kernel schedules the edge's connector threads, read from `/proc` after the run,
    /// e.g. "real-time SCHED_FIFO 10 (2 threads)" or "fair (2 threads)": unprivileged runs are
    /// fair-scheduled and their tails are not comparable.
    #[serde(default)]
    pub connector_scheduling: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Uplink {
    /// Edge → core UDP datagrams, payload + 28 bytes of IPv4/UDP header each (QUIC overhead
    /// and retransmissions included).
    pub edge_to_core_wire_bytes: u64,
    pub core_to_edge_wire_bytes: u64,
    pub edge_to_core_bytes_per_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub description: String,
    pub baseline: bool,
    pub machine: Machine,
    /// The host's speed just before the run (loopback round trip, hash rate).
    pub host_speed: Option<HostSpeed>,
    /// The host's stalls while the miners ran.
    pub host_stalls_during_run: Option<HostStallsDuringRun>,
    /// Where the machine's CPU went while the miners ran: stack processes, softirq, steal.
    pub box_cpu: Option<BoxCpu>,
    pub started_unix_secs: u64,
    pub elapsed_secs: f64,
    pub miners: usize,
    pub peak_connected: i64,
    pub spec: Scenario,
    pub shares_sent: u64,
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    /// "code reason" → count.
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub unexpected_rejects: u64,
    pub accepted_per_sec: f64,
    /// Accepted shares a second while every miner was connected: the rate the stack sustained,
    /// without the ramp-up and the drain that `accepted_per_sec` averages in. `None` if the
    /// miners were never all connected for a whole second.
    pub sustained_accepted_per_sec: Option<f64>,
    /// `mining.submit` → answer, as the miners measured it (HDR histogram), microseconds.
    pub submit_latency_us: LatencySummary,
    pub throughput: Vec<Sample>,
    pub core_credited: u64,
    /// Accepted (as the miners heard) but not credited when the run ended (after the settle
    /// window). When `settled` is false these may still sit in the edge's spool on disk
    /// (`edge_spool_pending_at_end`): undelivered rather than destroyed.
    pub lost: usize,
    pub edge_spool_pending_at_end: u64,
    pub double_credited: usize,
    pub credited_unacknowledged: usize,
    pub settled: bool,
    pub uplink: Uplink,
    pub edge: EdgeResources,
    pub hostile: Option<HostileReport>,
    pub storm: Option<StormReport>,
    pub miner_stats: MinerStats,
    pub problems: Vec<String>,
}

/// What a run is asked to do besides the file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Where the report goes (and the rig's files under `rig/`).
    pub out: PathBuf,
    pub miners: Option<usize>,
    pub duration_secs: Option<f64>,
}

fn reject_reason(code: i64) -> &'static str {
    // Stratum V1 error codes as pools use them (slush/ckpool convention).
    match code {
        20 => "other",
        21 => "job not found (stale)",
        22 => "duplicate",
        23 => "low difficulty",
        24 => "unauthorized",
        25 => "not subscribed",
        _ => "unknown",
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, seconds.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// (policy, real-time priority) from a `/proc/.../stat` line: fields 41 and 40 of proc(5).
pub fn stat_policy(stat: &str) -> Option<(u32, u32)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some((f.get(38)?.parse().ok()?, f.get(37)?.parse().ok()?))
}

/// How the threads of `pid` named `prefix…` are scheduled, in words; `None` if it has none.
pub fn thread_scheduling(pid: u32, prefix: &str) -> Option<String> {
    let mut seen: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        if let Some(p) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_policy)
        {
            *seen.entry(p).or_default() += 1;
        }
    }
    let words: Vec<String> = seen
        .into_iter()
        .map(|((policy, prio), n)| {
            let what = match policy {
                1 => format!("real-time SCHED_FIFO {prio}"),
                2 => format!("real-time SCHED_RR {prio}"),
                0 | 3 => "fair".to_string(),
                5 => "idle".to_string(),
                6 => "deadline".to_string(),
                other => format!("policy {other}"),
            };
            format!("{what} ({n} thread{})", if n == 1 { "" } else { "s" })
        })
        .collect();
    (!words.is_empty()).then(|| words.join(", "))
}

/// (VmRSS, VmHWM) of a process, KiB.
pub fn proc_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs a scenario. `stop` ends it early (Ctrl-C); every process it started is stopped on
/// every path out.
pub fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    mut say: impl FnMut(&str),
) -> anyhow::Result<ScenarioReport> {
    let mut s = scenario.clone();
    if let Some(m) = opts.miners {
        s.miners.count = m;
    }
    if let Some(d) = opts.duration_secs {
        s.duration_secs = d;
    }
    s.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    mio_runner::raise_open_files_limit().context("raising the open files limit")?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Before anything of the run competes for the CPUs. Dirty pages (say, from the build that
    // just finished) are written back first: the kernel would otherwise flush them mid-run, at
    // hundreds of MB a second.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let host_speed = match crate::host_speed::measure() {
        Ok(h) => {
            say(&format!("host speed: {h}"));
            Some(h)
        }
        Err(e) => {
            say(&format!("host speed not measured: {e}"));
            None
        }
    };
    let mut rig = Rig::start(&s, &opts.out.join("rig"))?;
    say(&format!(
        "{}: core up, edge {} connected{}; {} miners → {} for {} s",
        s.name,
        rig.edge_stratum,
        if s.baseline {
            " (baseline: miners cross the impaired TCP link)"
        } else if s.link.is_impaired() {
            " through the impaired UDP link"
        } else {
            ""
        },
        s.miners.count,
        rig.miners_target(),
        s.duration_secs
    ));
    let edge_pid = rig.edge.pid().unwrap_or(0);
    let cpu0 = proc_cpu_secs(edge_pid).unwrap_or(0.0);
    let (rss_idle, _) = proc_rss_kib(edge_pid).unwrap_or((0, 0));
    let hostile = if s.hostile.any() {
        Some(HostileClients::start(
            &s.hostile,
            rig.miners_target(),
            s.miners.difficulty,
        )?)
    } else {
        None
    };

    let miners = s.miners.count;
    let mut rc = RunConfig::new(
        StratumUrl {
            host: rig.miners_target().ip().to_string(),
            port: rig.miners_target().port(),
        },
        miners,
        PowAlgorithm::Sha256d,
    );
    rc.hashrate =
        s.miners.shares_per_sec / miners as f64 * s.miners.difficulty * SHA256D_HASHES_PER_DIFF1;
    rc.profile = s
        .miners
        .profile
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    rc.user = format!("{}.rig", s.name.replace(['.', ' '], "-"));
    rc.mix = s.share_mix();
    rc.duration = Some(Duration::from_secs_f64(s.duration_secs));
    rc.churn = (s.miners.churn_secs > 0.0).then(|| Duration::from_secs_f64(s.miners.churn_secs));
    rc.ramp = Some(s.miners.ramp_per_sec);
    rc.progress_every = Duration::from_millis(250);
    rc.drain_timeout = Duration::from_secs(
        (5.0 + 4.0 * (s.link.delay_ms + s.link.jitter_ms) / 1000.0
            + if s.baseline {
                s.link
                    .blackouts
                    .iter()
                    .map(|b| b.for_secs)
                    .fold(0.0, f64::max)
            } else {
                0.0
            })
        .ceil() as u64,
    );
    rc.response_timeout = Duration::from_secs(120);
    rc.backoff_max = Duration::from_millis(1000);
    rc.seed = s.miners.seed;
    rc.source_addrs = s.miners.source_addrs.clone();
    rc.threads = s.miners.threads;
    rc.record_accepted = true;

    let mut samples: Vec<Sample> = Vec::new();
    let mut last = Progress::default();
    let mut last_line = Instant::now();
    let mut last_check = Instant::now();
    let mut blackout_now = false;
    let mut blackout_in_second = false;
    let mut peak_rss = rss_idle;
    let mut peak_connected = 0i64;
    let mut failure: Option<anyhow::Error> = None;
    let mut second_latency = new_latency_histogram();
    let mut second_arrival = new_latency_histogram();
    let mut stall_watch = match StallWatch::start() {
        Ok(w) => Some(w),
        Err(e) => {
            say(&format!("host stalls not watched: {e}"));
            None
        }
    };
    let mut box_cpu = BoxCpuMeter::start(StackPids {
        edge: rig.edge.pid(),
        core: rig.core.pid(),
        harness: Some(std::process::id()),
    });
    let mut storm = s.storm.as_ref().map(|spec| {
        StormRun::new(
            spec,
            rig.edge_stratum,
            &opts.out.join("rig"),
            s.edge.max_connections,
        )
    });
    let miner_stop = stop.clone();
    let result = mio_runner::run(&rc, miner_stop.clone(), |p| {
        let t = p.elapsed.as_secs_f64();
        let want = s.link.blacked_out_at(t);
        peak_connected = peak_connected.max(p.connected);
        if let Some(h) = &p.interval_latency_us {
            let _ = second_latency.add(h);
        }
        if let Some(h) = &p.interval_arrival_us {
            let _ = second_arrival.add(h);
        }
        if let Some(st) = storm.as_mut() {
            if let Err(e) = st.on_progress(p, miners, &rig, &mut say) {
                failure.get_or_insert(e);
                miner_stop.store(true, Ordering::Relaxed);
            }
        }
        if p.elapsed.as_secs() > last.elapsed.as_secs() {
            let dt = (p.elapsed - last.elapsed).as_secs_f64().max(1e-3);
            let lat = LatencySummary::of(&second_latency);
            second_latency.reset();
            let arrival = LatencySummary::of(&second_arrival);
            second_arrival.reset();
            samples.push(Sample {
                t_secs: (t * 10.0).round() / 10.0,
                connected: p.connected,
                submitted_per_sec: (p.submitted - last.submitted) as f64 / dt,
                accepted_per_sec: (p.accepted - last.accepted) as f64 / dt,
                rejected_per_sec: (p.rejected - last.rejected) as f64 / dt,
                blackout: blackout_in_second,
                answers: lat.count,
                submit_p50_us: lat.p50,
                submit_p99_us: lat.p99,
                arrival_p99_us: arrival.p99,
                host_stalls: stall_watch
                    .as_mut()
                    .map(StallWatch::take_interval)
                    .unwrap_or_default(),
                box_cpu: box_cpu.as_mut().and_then(BoxCpuMeter::take_interval),
            });
            blackout_in_second = blackout_now;
            last = p.clone();
        }
        if want != blackout_now {
            rig.set_blackout(want);
            blackout_now = want;
            say(&format!(
                "  {t:6.1}s link {}",
                if want { "CUT" } else { "restored" }
            ));
        }
        blackout_in_second |= want;
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if let Some((rss, _)) = proc_rss_kib(edge_pid) {
                peak_rss = peak_rss.max(rss);
            }
            if failure.is_none() {
                if let Err(e) = rig.check_alive() {
                    failure = Some(e);
                    miner_stop.store(true, Ordering::Relaxed);
                }
            }
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            say(&format!("  {p}"));
        }
    });
    rig.set_blackout(false);
    let host_stalls_during_run = stall_watch.map(StallWatch::finish);
    let box_cpu = box_cpu.and_then(BoxCpuMeter::finish);
    let mut hostile_report = hostile.map(HostileClients::finish);
    if let Some(e) = failure {
        return Err(e.context("a process of the stack died during the run"));
    }
    let mut stats = result?;
    let storm_report = match storm {
        Some(st) => Some(st.finish(&rig, &stop, &mut say)?),
        None => None,
    };
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    say(&format!(
        "  miners done: {} accepted; settling",
        stats.shares.accepted
    ));
    let mut problems = stats.problems.clone();
    let settled = match rig.settle(Duration::from_secs_f64(s.settle_secs)) {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!("{e:#}"));
            false
        }
    };
    let elapsed_secs = stats.elapsed_secs;
    let cpu_secs = proc_cpu_secs(edge_pid).unwrap_or(cpu0) - cpu0;
    let connector_scheduling = thread_scheduling(edge_pid, "stratum-conn");
    let (rss_end, hwm) = proc_rss_kib(edge_pid).unwrap_or((0, 0));
    peak_rss = peak_rss.max(rss_end);
    let core_credited = rig.core_metric("quarry_core_shares_credited_total")? as u64;
    let spool_pending = rig
        .edge_metric("quarry_edge_spool_pending_shares")
        .unwrap_or(0.0) as u64;
    let up = rig.meter.stats.to_target.snapshot();
    let down = rig.meter.stats.to_client.snapshot();
    rig.tcp_link = None;
    rig.edge.stop(Duration::from_secs(10));
    rig.core.stop(Duration::from_secs(10));
    let credited = rig.credited_shares()?;
    // The flood miners' valid shares are credited like anyone's.
    if let Some(flood) = hostile_report.as_mut().and_then(|h| h.flood.as_mut()) {
        stats.accepted_ids.append(&mut flood.accepted_ids);
    }
    let credit = compare(&stats.accepted_ids, &credited);
    for m in credit.missing.iter().take(5) {
        problems.push(format!("lost: {m}"));
    }
    for d in credit.doubled.iter().take(5) {
        problems.push(format!("credited twice: {d}"));
    }
    let rejected_by_reason = stats
        .shares
        .rejected_by_code
        .iter()
        .map(|(c, n)| (format!("{c} {}", reject_reason(*c)), *n))
        .collect();
    stats.accepted_ids.clear();
    Ok(ScenarioReport {
        scenario: s.name.clone(),
        description: s.description.clone(),
        baseline: s.baseline,
        machine: machine(),
        host_speed,
        host_stalls_during_run,
        box_cpu,
        started_unix_secs,
        elapsed_secs,
        miners,
        peak_connected,
        shares_sent: stats.shares.submitted,
        shares_accepted: stats.shares.accepted,
        shares_rejected: stats.shares.rejected,
        rejected_by_reason,
        unexpected_rejects: stats.shares.unexpected_rejects,
        accepted_per_sec: stats.accepted_per_sec(),
        sustained_accepted_per_sec: sustained_rate(&samples, miners),
        submit_latency_us: stats.latency_us.clone(),
        throughput: samples,
        core_credited,
        lost: credit.missing.len(),
        edge_spool_pending_at_end: spool_pending,
        double_credited: credit.doubled.len(),
        credited_unacknowledged: credit.credited_unacknowledged,
        settled,
        uplink: Uplink {
            edge_to_core_wire_bytes: up.wire_bytes(),
            core_to_edge_wire_bytes: down.wire_bytes(),
            edge_to_core_bytes_per_share: up.wire_bytes() as f64 / core_credited.max(1) as f64,
        },
        edge: EdgeResources {
            cpu_secs,
            cpu_percent: 100.0 * cpu_secs / elapsed_secs.max(1e-9),
            rss_kib_idle: rss_idle,
            rss_kib_peak: peak_rss,
            vm_hwm_kib: hwm,
            rss_bytes_per_connection: (peak_rss.saturating_sub(rss_idle) * 1024) as f64
                / peak_connected.max(1) as f64,
            connector_scheduling,
        },
        hostile: hostile_report,
        storm: storm_report,
        miner_stats: stats,
        problems,
        spec: s,
    })
}

/// The storm's worker processes and the honest miners' figures around it.
struct StormRun {
    spec: StormSpec,
    target: SocketAddr,
    dir: PathBuf,
    workers: Vec<(ManagedProcess, PathBuf)>,
    started: Option<(Instant, Progress)>,
    /// Set once every worker exited (or the miners' run ended first).
    ended: Option<Progress>,
    /// The first progress with every honest miner authorized: the "before" phase starts here.
    ready: Option<Progress>,
    latest: Progress,
    before: Histogram<u64>,
    during: Histogram<u64>,
    peak_connected: i64,
    honest_at_start: i64,
    last_scrape: Instant,
    edge_limit: usize,
}

impl StormRun {
    fn new(spec: &StormSpec, target: SocketAddr, dir: &Path, edge_limit: usize) -> StormRun {
        StormRun {
            edge_limit,
            spec: spec.clone(),
            target,
            dir: dir.to_path_buf(),
            workers: Vec::new(),
            started: None,
            ended: None,
            ready: None,
            latest: Progress::default(),
            before: new_latency_histogram(),
            during: new_latency_histogram(),
            peak_connected: 0,
            honest_at_start: 0,
            last_scrape: Instant::now(),
        }
    }

    fn spawn_workers(&mut self) -> anyhow::Result<()> {
        let me = find_binary("quarry-loadtest")?;
        for i in 0..self.spec.processes {
            let (attempts, addrs) = self.spec.worker_share(i);
            let out = self.dir.join(format!("storm-worker-{i}.json"));
            let _ = std::fs::remove_file(&out);
            let first = addrs.first().map(ToString::to_string).unwrap_or_default();
            let last_octet = match addrs.last() {
                Some(IpAddr::V4(a)) => a.octets()[3].to_string(),
                _ => String::new(),
            };
            let args = [
                "storm-worker".to_string(),
                "--target".into(),
                self.target.to_string(),
                "--attempts".into(),
                attempts.to_string(),
                "--sources".into(),
                format!("{first}-{last_octet}"),
                "--timeout".into(),
                self.spec.timeout_secs.to_string(),
                "--hold".into(),
                self.spec.hold_secs.to_string(),
                "--out".into(),
                out.display().to_string(),
                "--nice".into(),
                self.spec.nice.to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let log = self.dir.join(format!("storm-worker-{i}.log"));
            let p = ManagedProcess::spawn(&format!("storm-worker-{i}"), &me, &args, &log)?;
            self.workers.push((p, out));
        }
        Ok(())
    }

    fn all_exited(&mut self) -> bool {
        self.workers
            .iter_mut()
            .all(|(p, _)| p.check_alive().is_err())
    }

    fn scrape_peak(&mut self, rig: &Rig) {
        if let Ok(n) = rig.edge_metric("quarry_edge_miners_connected") {
            self.peak_connected = self.peak_connected.max(n as i64);
        }
        self.last_scrape = Instant::now();
    }

    /// Called with every progress report of the honest miners.
    fn on_progress(
        &mut self,
        p: &Progress,
        honest: usize,
        rig: &Rig,
        say: &mut dyn FnMut(&str),
    ) -> anyhow::Result<()> {
        self.latest = p.clone();
        let h = p.interval_latency_us.as_ref();
        match (&self.started, &self.ended) {
            (None, _) => {
                if self.ready.is_none() && p.authorized >= honest as i64 {
                    self.ready = Some(p.clone());
                } else if let (Some(_), Some(h)) = (&self.ready, h) {
                    let _ = self.before.add(h);
                }
                if p.elapsed.as_secs_f64() >= self.spec.at_secs {
                    if self.ready.is_none() {
                        bail!(
                            "storm: only {} of {honest} honest miners authorized at {} s",
                            p.authorized,
                            self.spec.at_secs
                        );
                    }
                    self.honest_at_start = p.connected;
                    say(&format!(
                        "  {:6.1}s storm: {} attempts from {} processes",
                        p.elapsed.as_secs_f64(),
                        self.spec.attempts,
                        self.spec.processes
                    ));
                    self.spawn_workers()?;
                    self.started = Some((Instant::now(), p.clone()));
                }
            }
            (Some(_), None) => {
                if let Some(h) = h {
                    let _ = self.during.add(h);
                }
                if self.last_scrape.elapsed() >= Duration::from_millis(250) {
                    self.scrape_peak(rig);
                    if self.all_exited() {
                        self.ended = Some(p.clone());
                        say(&format!(
                            "  {:6.1}s storm over (edge peak {} connected)",
                            p.elapsed.as_secs_f64(),
                            self.peak_connected
                        ));
                    }
                }
            }
            (Some(_), Some(_)) => {}
        }
        Ok(())
    }

    /// Waits for the workers (bounded), merges their reports, and adds the honest phases.
    fn finish(
        mut self,
        rig: &Rig,
        stop: &AtomicBool,
        say: &mut dyn FnMut(&str),
    ) -> anyhow::Result<StormReport> {
        let Some((t_start, p_start)) = self.started.clone() else {
            bail!(
                "storm: the miners' run ended before the storm was due at {} s",
                self.spec.at_secs
            );
        };
        let p_end = self.ended.clone().unwrap_or_else(|| self.latest.clone());
        let limit = Duration::from_secs_f64(self.spec.timeout_secs + self.spec.hold_secs + 120.0);
        while !self.all_exited() {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            if t_start.elapsed() > limit {
                for (p, _) in &mut self.workers {
                    p.kill();
                }
                bail!("storm: the workers did not finish within {limit:?}");
            }
            self.scrape_peak(rig);
            thread::sleep(Duration::from_millis(250));
        }
        let mut reports: Vec<WorkerReport> = Vec::new();
        for (p, out) in &mut self.workers {
            match read_worker_report(out) {
                Ok(r) => reports.push(r),
                Err(e) => {
                    let why = p
                        .check_alive()
                        .err()
                        .map_or(String::new(), |e| format!("{e:#}"));
                    bail!("storm: {e:#}; {why}");
                }
            }
        }
        let mut r = StormReport::merge(&self.spec, &reports);
        r.edge_limit = self.edge_limit;
        r.edge_peak_connected = self.peak_connected;
        r.honest_connected_at_start = self.honest_at_start;
        r.edge_refused_max_connections = rig
            .edge_metric_labelled(
                "quarry_edge_connections_refused_total",
                "reason=\"max_connections\"",
            )
            .unwrap_or(0.0) as u64;
        r.edge_listener_closed = rig
            .edge_metric("quarry_edge_listener_closed_total")
            .unwrap_or(0.0) as u64;
        let phase = |a: &Progress, b: &Progress, h: &Histogram<u64>| PhaseStats {
            secs: (b.elapsed.saturating_sub(a.elapsed)).as_secs_f64(),
            submitted: b.submitted.saturating_sub(a.submitted),
            accepted: b.accepted.saturating_sub(a.accepted),
            rejected: b.rejected.saturating_sub(a.rejected),
            submit_latency_us: LatencySummary::of(h),
        };
        let ready = self.ready.clone().unwrap_or_default();
        r.honest_before = phase(&ready, &p_start, &self.before);
        r.honest_during = phase(&p_start, &p_end, &self.during);
        say(&format!(
            "  storm: {} attempts, {} served, {} refused, {} hung",
            r.attempts, r.served, r.refused, r.hung
        ));
        Ok(r)
    }
}

/// Writes report.json, summary.txt and throughput.svg into `out`.
pub fn write_outputs(r: &ScenarioReport, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("summary.txt"), summary(r))?;
    std::fs::write(out.join("throughput.svg"), svg(r))?;
    Ok(())
}

/// The human summary.
pub fn summary(r: &ScenarioReport) -> String {
    let mut o = String::new();
    let l = &r.spec.link;
    let _ = writeln!(
        o,
        "scenario {} ({}){}",
        r.scenario,
        match (r.baseline, r.spec.link.is_impaired()) {
            (true, _) => "baseline: miners → impaired TCP → pool Stratum",
            (false, true) => "edge: miners → edge → impaired QUIC → core",
            (false, false) => "edge: miners → edge → QUIC → core",
        },
        if r.description.is_empty() {
            String::new()
        } else {
            format!(": {}", r.description)
        }
    );
    let _ = writeln!(
        o,
        "machine: {} cores; run {:.1} s, {} miners (peak {} connected)",
        r.machine.nproc, r.elapsed_secs, r.miners, r.peak_connected
    );
    if let Some(h) = &r.host_speed {
        let _ = writeln!(o, "host speed before the run: {h}");
    }
    if let Some(h) = &r.host_stalls_during_run {
        let _ = writeln!(o, "host stalls during the run: {h}");
    }
    if let Some(c) = &r.box_cpu {
        let _ = writeln!(o, "CPU during the run: {c}");
    }
    let _ = writeln!(
        o,
        "link: delay {} ms, jitter {} ms, loss {}, bandwidth {} B/s, blackouts {:?}",
        l.delay_ms,
        l.jitter_ms,
        l.loss,
        l.bandwidth,
        l.blackouts
            .iter()
            .map(|b| (b.at_secs, b.for_secs))
            .collect::<Vec<_>>()
    );
    let _ = writeln!(
        o,
        "shares: sent {} accepted {} rejected {} ({:.0} accepted/s); unexpected rejects {}",
        r.shares_sent,
        r.shares_accepted,
        r.shares_rejected,
        r.accepted_per_sec,
        r.unexpected_rejects
    );
    if let Some(rate) = r.sustained_accepted_per_sec {
        let _ = writeln!(
            o,
            "  sustained with all {} miners connected: {rate:.0} accepted/s",
            r.miners
        );
    }
    for (reason, n) in &r.rejected_by_reason {
        let _ = writeln!(o, "  rejected {reason}: {n}");
    }
    let lat = &r.submit_latency_us;
    let _ = writeln!(
        o,
        "submit latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} samples)",
        lat.p50 as f64 / 1000.0,
        lat.p99 as f64 / 1000.0,
        lat.p999 as f64 / 1000.0,
        lat.max as f64 / 1000.0,
        lat.count
    );
    if let Some(a) = &r.miner_stats.arrival_latency_us {
        let _ = writeln!(
            o,
            "  at arrival in the miners' sockets (kernel stamp, without the harness's own read delay): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            a.p50 as f64 / 1000.0,
            a.p99 as f64 / 1000.0,
            a.p999 as f64 / 1000.0,
            a.max as f64 / 1000.0
        );
    }
    let _ = writeln!(
        o,
        "core credited {}; lost {}; double-credited {}; credited but unacknowledged {}; settled {}",
        r.core_credited, r.lost, r.double_credited, r.credited_unacknowledged, r.settled
    );
    if !r.settled {
        let _ = writeln!(
            o,
            "NOT SETTLED: {} shares still in the edge spool when the settle window ({} s) ended",
            r.edge_spool_pending_at_end, r.spec.settle_secs
        );
    }
    let _ = writeln!(
        o,
        "uplink: {:.1} B/share edge→core on the wire ({} B up, {} B down)",
        r.uplink.edge_to_core_bytes_per_share,
        r.uplink.edge_to_core_wire_bytes,
        r.uplink.core_to_edge_wire_bytes
    );
    let e = &r.edge;
    let _ = writeln!(
        o,
        "edge: CPU {:.1} s ({:.0}% of a core), RSS idle {} KiB, peak {} KiB, {:.0} B per connection",
        e.cpu_secs, e.cpu_percent, e.rss_kib_idle, e.rss_kib_peak, e.rss_bytes_per_connection
    );
    if let Some(how) = &e.connector_scheduling {
        let _ = writeln!(o, "  edge connectors scheduled: {how}");
    }
    if let Some(h) = &r.hostile {
        let _ = writeln!(o, "hostile: {h}");
    }
    if let Some(st) = &r.storm {
        storm_summary(&mut o, st);
    }
    for p in r.problems.iter().take(10) {
        let _ = writeln!(o, "problem: {p}");
    }
    let verdict = if r.lost == 0 && r.double_credited == 0 && r.settled {
        "PASS: every accepted share credited exactly once"
    } else {
        "FAIL: shares lost or credited twice (see above)"
    };
    let _ = writeln!(o, "{verdict}");
    o
}

fn storm_summary(o: &mut String, st: &StormReport) {
    let ms = |us: u64| us as f64 / 1000.0;
    let _ = writeln!(
        o,
        "storm: {} attempts from {} processes in {:.2} s ({:.0}/s, at most {} sockets per process)",
        st.attempts,
        st.processes,
        st.connect_secs,
        st.attempts_per_sec,
        st.max_open_sockets_per_process
    );
    // How the refusals that `refused` counts came.
    let refusals: Vec<String> = st
        .outcomes
        .iter()
        .filter(|(k, _)| k.is_refusal())
        .map(|(k, n)| format!("{k:?} {n}"))
        .collect();
    let _ = writeln!(
        o,
        "  served {} (+ {} honest = {} of the limit {}); edge peak connected {}; refused {} ({}); hung {}; served then dropped {}",
        st.served,
        st.honest_connected_at_start,
        st.served as i64 + st.honest_connected_at_start,
        st.edge_limit,
        st.edge_peak_connected,
        st.refused,
        refusals.join(", "),
        st.hung,
        st.served_dropped_while_held
    );
    let (a, b) = (&st.time_to_served_us, &st.time_to_refusal_us);
    let _ = writeln!(
        o,
        "  connect → served p50 {:.1} ms p99 {:.1} ms max {:.1} ms; connect → refused p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms max {:.1} ms; edge reset {} after accepting them (max_connections) and stopped listening {} times at full house",
        ms(a.p50), ms(a.p99), ms(a.max), ms(b.p50), ms(b.p99), ms(b.p999), ms(b.max),
        st.edge_refused_max_connections, st.edge_listener_closed
    );
    if !st.error_lines.is_empty() {
        let _ = writeln!(o, "  Stratum errors seen: {:?}", st.error_lines);
    }
    for (name, p) in [("before", &st.honest_before), ("during", &st.honest_during)] {
        let l = &p.submit_latency_us;
        let _ = writeln!(
            o,
            "  honest miners {name} the storm ({:.1} s): submitted {} accepted {} rejected {}; submit p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms",
            p.secs, p.submitted, p.accepted, p.rejected, ms(l.p50), ms(l.p99), ms(l.p999), ms(l.max)
        );
    }
}

/// A hand-written SVG plot in two panels over the same time axis: accepted and rejected
/// shares/s, and below it the submit latency p50 and p99 of each second (from the answers that
/// arrived in that second), blackouts shaded in both.
pub fn svg(r: &ScenarioReport) -> String {
    let (w, h, ml, mr, mt, mb) = (800.0, 360.0, 60.0, 20.0, 40.0, 40.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let tmax = r.throughput.last().map_or(1.0, |s| s.t_secs).max(1.0);
    let ymax = r
        .throughput
        .iter()
        .map(|s| s.accepted_per_sec.max(s.rejected_per_sec))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: f64| ml + pw * t / tmax;
    let y = |v: f64| mt + ph * (1.0 - v / ymax);
    let mut o = String::new();
    // The latency panel sits under the throughput panel.
    let (lt, lh) = (h + 10.0, 170.0);
    let total = lt + lh + 40.0;
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{total}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{total}" fill="white"/>"#);
    let mut prev_t = 0.0;
    for s in &r.throughput {
        if s.blackout {
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{mt}" width="{:.1}" height="{ph}" fill="#ddd"/><rect x="{:.1}" y="{lt}" width="{:.1}" height="{lh}" fill="#ddd"/>"##,
                x(prev_t),
                (x(s.t_secs) - x(prev_t)).max(1.0),
                x(prev_t),
                (x(s.t_secs) - x(prev_t)).max(1.0)
            );
        }
        prev_t = s.t_secs;
    }
    let _ = writeln!(
        o,
        r#"<text x="{ml}" y="20">{} — accepted (blue) and rejected (red) shares/s; submit p50 {:.2} ms, p99 {:.2} ms; grey = link cut</text>"#,
        xml_escape(&r.scenario),
        r.submit_latency_us.p50 as f64 / 1000.0,
        r.submit_latency_us.p99 as f64 / 1000.0
    );
    let _ = writeln!(
        o,
        r#"<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{ml}" y1="{mt}" x2="{ml}" y2="{}" stroke="black"/>"#,
        mt + ph,
        ml + pw,
        mt + ph,
        mt + ph
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
            ml - 4.0,
            y(v) + 4.0,
            v
        );
        let t = tmax * f64::from(i) / 4.0;
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0} s</text>"#,
            x(t),
            h - 15.0,
            t
        );
    }
    for (colour, f) in [
        (
            "blue",
            (|s: &Sample| s.accepted_per_sec) as fn(&Sample) -> f64,
        ),
        ("red", |s: &Sample| s.rejected_per_sec),
    ] {
        let points: Vec<String> = r
            .throughput
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t_secs), y(f(s))))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
    }
    // The machine's busy CPU on the same panel, the top of the axis standing for all its cores.
    let busy: Vec<String> = r
        .throughput
        .iter()
        .filter_map(|s| {
            let c = s.box_cpu.as_ref()?;
            let share = c.busy_cores / c.cpus.max(1) as f64;
            Some(format!("{:.1},{:.1}", x(s.t_secs), y(share * ymax)))
        })
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="black" stroke-dasharray="4 3" stroke-width="1" points="{}"/>"#,
            busy.join(" ")
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}">dashed: machine CPU busy (top of the axis = every core)</text>"#,
            ml + 10.0,
            mt + 14.0
        );
    }
    let lmax = r
        .throughput
        .iter()
        .map(|s| (s.submit_p99_us as f64 / 1000.0).max(s.host_stalls.late_ms))
        .fold(0.1, f64::max)
        * 1.1;
    let ly = |ms: f64| lt + lh * (1.0 - ms / lmax);
    let _ = writeln!(
        o,
        r#"<line x1="{ml}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{ml}" y1="{lt}" x2="{ml}" y2="{}" stroke="black"/>"#,
        lt + lh,
        ml + pw,
        lt + lh,
        lt + lh
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}">submit latency per second, ms: p99 (purple), p99 at arrival (orange), p50 (green); host stalls, ms lost (red)</text>"#,
        ml + 10.0,
        lt + 14.0
    );
    for i in 0..=4 {
        let v = lmax * f64::from(i) / 4.0;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.2}</text>"#,
            ml - 4.0,
            ly(v) + 4.0,
            v
        );
        let t = tmax * f64::from(i) / 4.0;
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0} s</text>"#,
            x(t),
            lt + lh + 20.0,
            t
        );
    }
    for (colour, f) in [
        (
            "purple",
            (|s: &Sample| s.submit_p99_us) as fn(&Sample) -> u64,
        ),
        ("orange", |s: &Sample| s.arrival_p99_us),
        ("green", |s: &Sample| s.submit_p50_us),
        ("red", |s: &Sample| (s.host_stalls.late_ms * 1000.0) as u64),
    ] {
        // Seconds without answers (a blackout in a baseline) are gaps, not zeros.
        let points: Vec<String> = r
            .throughput
            .iter()
            .filter(|s| s.answers > 0)
            .map(|s| format!("{:.1},{:.1}", x(s.t_secs), ly(f(s) as f64 / 1000.0)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
    }
    o.push_str("</svg>\n");
    o
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_thread_s_scheduling_is_read_from_proc() {
        let me = std::process::id();
        std::thread::Builder::new()
            .name("sched-probe".into())
            .spawn(move || {
                let words = super::thread_scheduling(me, "sched-probe").expect("found");
                assert_eq!(words, "fair (1 thread)");
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(super::thread_scheduling(me, "no-such-thread"), None);
        // A command name with spaces and parentheses does not shift the fields.
        let stat = "7 (a (b) c) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 1 1 1 1 1 1 1 1 \
                    1 0 0 0 0 0 0 0 17 1 10 1 0 0 0";
        assert_eq!(super::stat_policy(stat), Some((1, 10)));
    }

    #[test]
    fn the_sustained_rate_covers_only_the_seconds_with_every_miner_connected() {
        let at = |t_secs: f64, connected: i64, accepted_per_sec: f64| super::Sample {
            t_secs,
            connected,
            accepted_per_sec,
            ..Default::default()
        };
        // Ramp, two full seconds (one of them 2 s long), then the drain.
        let samples = [
            at(1.0, 50, 1_000.0),
            at(2.0, 100, 9_000.0),
            at(4.0, 100, 12_000.0),
            at(5.0, 0, 100.0),
        ];
        let rate = super::sustained_rate(&samples, 100).expect("two full samples");
        assert!(
            (rate - (9_000.0 + 2.0 * 12_000.0) / 3.0).abs() < 1e-6,
            "{rate}"
        );
        assert_eq!(super::sustained_rate(&samples[..2], 100), None);
        assert_eq!(super::sustained_rate(&samples, 101), None);
    }

    use super::*;

    const TINY: &str = r#"
duration_secs = 5
[miners]
count = 20
shares_per_sec = 200
[link]
delay_ms = 20
blackouts = [{ at_secs = 2, for_secs = 1 }]
"#;

    #[test]
    fn parses_a_scenario_with_defaults() {
        let s = Scenario::parse(TINY).expect("parse");
        assert_eq!(s.miners.count, 20);
        assert_eq!(s.miners.profile, "mixed");
        assert!(!s.baseline);
        assert!(s.link.blacked_out_at(2.5));
        assert!(!s.link.blacked_out_at(3.0));
        assert_eq!(s.edge.max_connections, 15_000);
        assert_eq!(
            s.edge.threads, 0,
            "one connector thread per core unless asked"
        );
    }

    #[test]
    fn the_edge_config_carries_the_scenarios_edge_settings() {
        let mut s = Scenario::parse(TINY).expect("parse");
        s.edge.threads = 1;
        s.edge.max_connections = 123;
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let text = edge_config(&s, Path::new("/tmp/x"), a, a, a);
        let cfg: toml::Value = toml::from_str(&text).expect("the written config is TOML");
        assert_eq!(cfg["stratum"]["threads"].as_integer(), Some(1));
        assert_eq!(cfg["limits"]["max_connections"].as_integer(), Some(123));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Scenario::parse(&format!("{TINY}\nbogus = 1\n")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = Scenario::parse(&TINY.replace("count = 20", "count = 20\ncolour = 1")).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Scenario::parse(&TINY.replace("delay_ms = 20", "loss = 1.5")).unwrap_err();
        assert!(e.starts_with("link.loss"), "{e}");
        let e = Scenario::parse(&TINY.replace("count = 20", "count = 0")).unwrap_err();
        assert!(e.starts_with("miners.count"), "{e}");
        let e = Scenario::parse(&format!(
            "{TINY}\n[miners.mix]\nstale = 0.7\nduplicate = 0.7\n"
        ))
        .unwrap_err();
        assert!(e.starts_with("miners.mix"), "{e}");
    }

    #[test]
    fn the_bundled_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for entry in std::fs::read_dir(&dir).expect("scenarios folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
    }

    #[test]
    fn reads_this_process_from_proc() {
        let pid = std::process::id();
        assert!(proc_cpu_secs(pid).is_some());
        let (rss, hwm) = proc_rss_kib(pid).expect("status");
        assert!(rss > 0 && hwm >= rss);
    }
}
