//! What the simulated miners counted, and the summary a run reports.
//!
//! The load tester is also a judge of the pool: every share a miner submits has a known right
//! answer (it hashed the share itself, or broke it on purpose), so a run reports not only how many
//! shares went through but how many verdicts were *wrong*. A healthy pool run has zero
//! `unexpected_rejects`, `bad_shares_accepted`, `wrong_reject_codes` and `protocol_errors`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Largest latency the histograms track: one hour, in microseconds (larger values saturate).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Problems kept verbatim for the report (the counters keep counting past this).
pub const MAX_PROBLEMS: usize = 32;

/// A duration in whole microseconds, as the latency histograms record it (saturating).
pub fn micros(d: std::time::Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// A new latency histogram: microseconds, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("1..1h with 3 significant digits is a valid histogram range")
}

/// How many shares of each kind were sent (see [`super::client::ShareKind`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    pub valid: u64,
    pub duplicate: u64,
    pub stale: u64,
    pub low_difficulty: u64,
    pub malformed: u64,
}

impl KindCounts {
    fn merge(&mut self, o: &KindCounts) {
        self.valid += o.valid;
        self.duplicate += o.duplicate;
        self.stale += o.stale;
        self.low_difficulty += o.low_difficulty;
        self.malformed += o.malformed;
    }
}

/// Share and protocol counters of one session, one miner or a whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareCounts {
    /// Proof-of-work hashes computed.
    pub hashes: u64,
    /// `mining.submit` lines handed to the transport.
    pub submitted: u64,
    pub submitted_by_kind: KindCounts,
    pub accepted: u64,
    pub rejected: u64,
    /// Rejections by Stratum error code; `0` counts `"result": false` answers without an error.
    pub rejected_by_code: BTreeMap<i64, u64>,
    /// Deliberately bad shares rejected with the code they deserve.
    pub expected_rejects: u64,
    /// Shares rejected as stale (21) whose job a `clean_jobs` notify had dropped before the
    /// answer arrived: the share crossed the new job on the wire, which is normal.
    pub stale_races: u64,
    /// Shares the miner knows are valid that the pool rejected anyway.
    pub unexpected_rejects: u64,
    pub unexpected_rejects_by_code: BTreeMap<i64, u64>,
    /// Deliberately bad shares the pool accepted.
    pub bad_shares_accepted: u64,
    /// Deliberately bad shares rejected with another code than the one they deserve.
    pub wrong_reject_codes: u64,
    /// Shares whose hash meets the job's network target (`nbits`).
    pub blocks: u64,
    /// Lines from the pool that break the protocol: unparseable, answers to ids never sent,
    /// version masks outside what was asked, …
    pub protocol_errors: u64,
    /// Submits without an answer when their connection closed or their response timed out.
    pub unanswered: u64,
    pub authorize_failures: u64,
}

impl ShareCounts {
    pub fn merge(&mut self, o: &ShareCounts) {
        self.hashes += o.hashes;
        self.submitted += o.submitted;
        self.submitted_by_kind.merge(&o.submitted_by_kind);
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        for (code, n) in &o.rejected_by_code {
            *self.rejected_by_code.entry(*code).or_default() += n;
        }
        self.expected_rejects += o.expected_rejects;
        self.stale_races += o.stale_races;
        self.unexpected_rejects += o.unexpected_rejects;
        for (code, n) in &o.unexpected_rejects_by_code {
            *self.unexpected_rejects_by_code.entry(*code).or_default() += n;
        }
        self.bad_shares_accepted += o.bad_shares_accepted;
        self.wrong_reject_codes += o.wrong_reject_codes;
        self.blocks += o.blocks;
        self.protocol_errors += o.protocol_errors;
        self.unanswered += o.unanswered;
        self.authorize_failures += o.authorize_failures;
    }

    /// True when the pool judged every share as the miner expected and spoke the protocol.
    pub fn pool_verdicts_correct(&self) -> bool {
        self.unexpected_rejects == 0
            && self.bad_shares_accepted == 0
            && self.wrong_reject_codes == 0
            && self.protocol_errors == 0
    }
}

/// Counters, submit latency and notable problems of one session (or several merged).
#[derive(Clone, Debug)]
pub struct SessionStats {
    pub counts: ShareCounts,
    /// `mining.submit` sent → response received, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The first [`MAX_PROBLEMS`] problems, worded for a human.
    pub problems: Vec<String>,
    /// Identities of accepted valid shares, when the session was asked to record them.
    pub accepted_ids: Vec<String>,
}

impl Default for SessionStats {
    fn default() -> Self {
        SessionStats {
            counts: ShareCounts::default(),
            latency_us: new_latency_histogram(),
            problems: Vec::new(),
            accepted_ids: Vec::new(),
        }
    }
}

impl SessionStats {
    /// Stats whose latency histogram stays empty and nearly free (for sessions that do not
    /// record latency themselves, see [`super::SessionConfig::latency_histogram`]).
    pub fn without_latency() -> Self {
        SessionStats {
            counts: ShareCounts::default(),
            latency_us: Histogram::new_with_bounds(1, 2, 0)
                .expect("1..2 with 0 significant digits is a valid histogram range"),
            problems: Vec::new(),
            accepted_ids: Vec::new(),
        }
    }

    pub fn merge(&mut self, o: &SessionStats) {
        self.counts.merge(&o.counts);
        // Both histograms share bounds, so adding cannot fail; saturate rather than panic anyway.
        if self.latency_us.add(&o.latency_us).is_err() {
            for v in o.latency_us.iter_recorded() {
                self.latency_us
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        for p in &o.problems {
            self.note_problem(p.clone());
        }
        self.accepted_ids.extend(o.accepted_ids.iter().cloned());
    }

    pub(crate) fn note_problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The summary of a run of simulated miners.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MinerStats {
    pub miners: usize,
    pub elapsed_secs: f64,
    /// TCP connections established (first connects and reconnects).
    pub connects: u64,
    pub connect_failures: u64,
    /// Connections lost or refused by the pool (not counting churn or the end of the run).
    pub disconnects: u64,
    /// Connections closed on purpose by the churn knob.
    pub churn_disconnects: u64,
    #[serde(flatten)]
    pub shares: ShareCounts,
    /// `mining.submit` → response, microseconds.
    pub latency_us: LatencySummary,
    /// The same after the connect ramp: only answers to shares submitted once every miner of
    /// its event-loop thread had been authorized for a second, up to the end of hashing. The
    /// ramp (thousands of handshakes, each followed by a 1.3 KB job) is not what a steady farm
    /// sees; `None` when the run never got there (or the runner does not measure it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_latency_us: Option<LatencySummary>,
    /// `mining.submit` → the answer's arrival in the miner's socket (the kernel's receive
    /// stamp), microseconds. `latency_us` ends when the miner's thread read the answer; on a
    /// box shared with the pool under test the difference is the harness's own delay, which
    /// 10,000 separate devices would not have. `None` where the runner does not measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_latency_us: Option<LatencySummary>,
    pub problems: Vec<String>,
    /// Identities of accepted valid shares (only when `RunConfig::record_accepted`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted_ids: Vec<String>,
}

impl MinerStats {
    /// Accepted shares per second over the run.
    pub fn accepted_per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.shares.accepted as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

fn fmt_codes(m: &BTreeMap<i64, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for MinerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shares;
        let k = &s.submitted_by_kind;
        let l = &self.latency_us;
        writeln!(
            f,
            "miners {} for {:.1}s: {} connects, {} connect failures, {} disconnects, {} churn",
            self.miners,
            self.elapsed_secs,
            self.connects,
            self.connect_failures,
            self.disconnects,
            self.churn_disconnects
        )?;
        writeln!(
            f,
            "hashes {}  submitted {} (valid {}, duplicate {}, stale {}, low-difficulty {}, malformed {})",
            s.hashes, s.submitted, k.valid, k.duplicate, k.stale, k.low_difficulty, k.malformed
        )?;
        writeln!(
            f,
            "accepted {} ({:.2}/s)  rejected {} by code [{}]  unanswered {}  blocks {}",
            s.accepted,
            self.accepted_per_sec(),
            s.rejected,
            fmt_codes(&s.rejected_by_code),
            s.unanswered,
            s.blocks
        )?;
        writeln!(
            f,
            "verdicts: expected rejects {}, stale races {}, UNEXPECTED rejects {} [{}], bad shares accepted {}, wrong codes {}, protocol errors {}",
            s.expected_rejects,
            s.stale_races,
            s.unexpected_rejects,
            fmt_codes(&s.unexpected_rejects_by_code),
            s.bad_shares_accepted,
            s.wrong_reject_codes,
            s.protocol_errors
        )?;
        write!(
            f,
            "submit latency (us): n={} p50={} p99={} p99.9={} max={} mean={:.0}",
            l.count, l.p50, l.p99, l.p999, l.max, l.mean
        )?;
        if let Some(l) = &self.steady_latency_us {
            write!(
                f,
                "\nsteady submit latency (us, after the ramp): n={} p50={} p99={} p99.9={} max={} mean={:.0}",
                l.count, l.p50, l.p99, l.p999, l.max, l.mean
            )?;
        }
        if let Some(l) = &self.arrival_latency_us {
            write!(
                f,
                "\nsubmit to the answer's arrival in the socket (us): n={} p50={} p99={} p99.9={} max={} mean={:.0}",
                l.count, l.p50, l.p99, l.p999, l.max, l.mean
            )?;
        }
        for p in &self.problems {
            write!(f, "\n  problem: {p}")?;
        }
        Ok(())
    }
}
