//! One miner connection's Stratum state machine (sans-IO).
//!
//! A `Session` is driven by three inputs — a received line, a new job book, a clock tick — and
//! answers by appending bytes to an output buffer and pushing [`ShareEvent`]s. It never touches
//! a socket or reads a clock, so every behaviour below is tested with scripted lines and
//! hand-made `Instant`s.
//!
//! Rules a miner can rely on:
//! - A share is judged against the difficulty in force when its job was sent. Vardiff sends a new
//!   `mining.set_difficulty` just before the next `mining.notify`, and it applies to jobs sent
//!   after it; so a retarget never turns honest in-flight shares into rejects. (A share that
//!   misses the job's difficulty but meets a lower current one is accepted at the lower one.)
//! - Worker names are `account.worker`: the account is everything before the first `.`, the
//!   worker the rest (empty means `default`). Both use letters, digits and `_-:@+`; the account
//!   is 1-64 characters, the worker at most 64. Passwords are ignored unless the port sets one.
//! - Version rolling (BIP310): the mask granted is the miner's request AND the pool's mask. Some
//!   Antminer firmware sends version bits in `mining.submit` without ever sending
//!   `mining.configure`; such a session is treated as having been granted the pool mask (counted
//!   in `quarry_edge_version_rolling_unnegotiated_total`). Firmware that submits the whole rolled
//!   version instead of just the bits is understood too, as long as the bits outside the mask are
//!   the job's own.
//! - A job may carry the upstream pool's mask (proxy mining, the edge's backup pool). When it
//!   is narrower than what the miner was granted, `mining.set_version_mask` with the
//!   intersection goes out before the job's `mining.notify` (and the grant is restored the
//!   same way when a later job allows it again); shares rolling bits outside the mask in force
//!   when their job was sent are refused, so none reaches an upstream that would reject it.

use crate::jobs::{JobBook, JobEntry};
use crate::share::{BlockCandidate, ShareEvent, ShareRecord};
use crate::validator::{validate_share_with_root, PowReject};
use crate::vardiff::{Vardiff, VardiffConfig};
use relay::hash::Hash256;
use relay::pow::PowAlgorithm;
use relay::stratum::{
    encode_bool_result, encode_error, encode_result, ClientRequest, Configure, FrameError,
    ParseFailure, Request, RequestId, ServerNotification, StratumError, Submit,
};
use relay::work::{merkle_root, Difficulty, Extranonce, JobId, ShareWork, Target, VersionMask};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Settings shared by every session of a port.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub algorithm: PowAlgorithm,
    pub extranonce2_size: usize,
    /// Version bits the pool lets miners roll (BIP310), default 0x1fffe000.
    pub version_mask: VersionMask,
    pub start_difficulty: Difficulty,
    pub vardiff: VardiffConfig,
    /// How long a superseded job on the current prevhash still takes shares.
    pub stale_grace: Duration,
    /// Required password, if the operator set one.
    pub password: Option<String>,
    /// Rejected shares in a row (without an accepted one) before the connection is banned;
    /// also the least number of recent rejects before `ban_invalid_ratio` applies. 0 = never ban.
    pub ban_after_invalid: u32,
    /// Share of rejects among recent shares that bans a connection once it has made at least
    /// `ban_after_invalid` of them, even with valid shares mixed in (0 = only the run rule).
    pub ban_invalid_ratio: f64,
    /// Seconds without any line from the miner before the connection is closed.
    pub idle_timeout: Duration,
    /// A connection must subscribe and authorize within this time.
    pub handshake_timeout: Duration,
    pub max_workers_per_connection: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            algorithm: PowAlgorithm::Sha256d,
            extranonce2_size: 4,
            version_mask: VersionMask::BIP320,
            start_difficulty: Difficulty::new(1.0).expect("constant"),
            vardiff: VardiffConfig::default(),
            stale_grace: Duration::from_secs(30),
            password: None,
            ban_after_invalid: 100,
            ban_invalid_ratio: 0.5,
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(30),
            max_workers_per_connection: 64,
        }
    }
}

/// Why a share was refused; each maps to the Stratum error the miner receives and a metric label.
#[derive(Clone, Debug, PartialEq)]
pub enum Reject {
    JobNotFound,
    Stale,
    Duplicate,
    LowDifficulty,
    Unauthorized,
    NotSubscribed,
    Invalid(String),
}

impl Reject {
    pub fn to_stratum(&self) -> StratumError {
        match self {
            Reject::JobNotFound => StratumError::job_not_found(),
            Reject::Stale => StratumError::stale(),
            Reject::Duplicate => StratumError::duplicate(),
            Reject::LowDifficulty => StratumError::low_difficulty(),
            Reject::Unauthorized => StratumError::unauthorized(),
            Reject::NotSubscribed => StratumError::not_subscribed(),
            Reject::Invalid(why) => StratumError::other(format!("Invalid share: {why}")),
        }
    }

    /// The `result` label of `quarry_edge_shares_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::JobNotFound | Reject::Stale => "stale",
            Reject::Duplicate => "duplicate",
            Reject::LowDifficulty => "low_difficulty",
            Reject::Unauthorized | Reject::NotSubscribed => "unauthorized",
            Reject::Invalid(_) => "invalid",
        }
    }
}

/// Why the server should close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    HandshakeTimeout,
    /// An invalid-share flood (see [`InvalidShareGuard`]): the peer's address should be banned
    /// for a while. `invalid` of the connection's last `shares` judged shares were rejected.
    Banned {
        invalid: u32,
        shares: u32,
    },
}

/// How many times `ban_after_invalid` shares the ratio rule's window holds before it halves.
const GUARD_WINDOW_FACTOR: u32 = 4;

/// Tells a miner's bad luck from an invalid-share flood.
///
/// A real miner's rejects are rare (a misconfigured one is rejected on every share). A client
/// that only sends garbage makes the edge hash for nothing, so the connection is banned after
/// `ban_after_invalid` rejects in a row. A flood can defeat that rule by mixing in the odd
/// valid share (at a low difficulty, some of its "bad" hashes meet the target anyway), so a
/// second rule bans when at least `ban_after_invalid` of the recent shares were rejected and
/// they are at least `ban_invalid_ratio` of them. "Recent" is a window whose two counts halve
/// whenever it holds `GUARD_WINDOW_FACTOR × ban_after_invalid` shares, so old trouble fades.
/// Stale shares count on neither side: they are the network's doing, not the miner's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InvalidShareGuard {
    in_a_row: u32,
    recent_invalid: u32,
    recent_shares: u32,
}

impl InvalidShareGuard {
    /// A share was accepted.
    pub fn on_accepted(&mut self, cfg: &SessionConfig) {
        self.in_a_row = 0;
        self.count(false, cfg);
    }

    /// A share was rejected for a reason of the miner's making; `Some` when that bans it.
    pub fn on_invalid(&mut self, cfg: &SessionConfig) -> Option<CloseReason> {
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.count(true, cfg);
        let limit = cfg.ban_after_invalid;
        if limit == 0 {
            return None;
        }
        if self.in_a_row >= limit {
            return Some(CloseReason::Banned {
                invalid: self.in_a_row,
                shares: self.in_a_row,
            });
        }
        let ratio = f64::from(self.recent_invalid) / f64::from(self.recent_shares.max(1));
        (cfg.ban_invalid_ratio > 0.0
            && self.recent_invalid >= limit
            && ratio >= cfg.ban_invalid_ratio)
            .then_some(CloseReason::Banned {
                invalid: self.recent_invalid,
                shares: self.recent_shares,
            })
    }

    fn count(&mut self, invalid: bool, cfg: &SessionConfig) {
        self.recent_shares = self.recent_shares.saturating_add(1);
        self.recent_invalid = self.recent_invalid.saturating_add(u32::from(invalid));
        let window = cfg
            .ban_after_invalid
            .saturating_mul(GUARD_WINDOW_FACTOR)
            .max(1);
        if self.recent_shares >= window {
            self.recent_shares /= 2;
            self.recent_invalid /= 2;
        }
    }
}

/// Tallies a session reports to the server for metrics, drained by the caller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionCounters {
    pub accepted: u64,
    pub rejected: Vec<&'static str>,
    pub version_rolling_unnegotiated: u64,
    pub malformed_lines: u64,
}

/// A job as this session received it, with the difficulty it was sent under.
#[derive(Debug)]
struct SentJob {
    entry: Arc<JobEntry>,
    difficulty: Difficulty,
    target: Target,
    /// The version bits the miner may roll on this job.
    version_mask: VersionMask,
    /// Shares accepted on this job, as [`ShareFingerprint`]s, sorted.
    seen: Vec<ShareFingerprint>,
}

/// Identifies an accepted share within its job: the first 8 bytes of its proof-of-work hash.
///
/// The header hash is a function of everything a duplicate would repeat (the job, both
/// extranonces, ntime, nonce, version), and its low bytes are uniformly random even for a
/// share that meets a target. Two different shares on one job share a fingerprint with
/// probability about n²/2^65 (10^-14 at 1,000 shares on a job), so no honest share is refused
/// in practice, and 8 bytes per share instead of a 40-byte key in a hash set (10 KiB per busy
/// connection at 5 shares/s) keeps a connection's memory small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ShareFingerprint(u64);

impl ShareFingerprint {
    fn of(pow_hash: &Hash256) -> Self {
        let mut b = [0u8; 8];
        b.copy_from_slice(&pow_hash.0[..8]);
        ShareFingerprint(u64::from_le_bytes(b))
    }
}

/// The merkle root of the last extranonce2 this session's miner used, on one job: miners roll
/// nonce and version bits under one extranonce2 for many shares, and the root is most of the
/// hashing a share costs.
struct RootCache {
    entry: Arc<JobEntry>,
    extranonce2: Extranonce,
    root: Hash256,
}

impl SentJob {
    /// Records an accepted share; false if it was already accepted.
    fn remember(&mut self, fp: ShareFingerprint) -> bool {
        match self.seen.binary_search(&fp) {
            Ok(_) => false,
            Err(at) => {
                // Grown by a quarter rather than doubled: these records are most of a busy
                // connection's memory (8 bytes a share for up to two jobs' lifetimes).
                if self.seen.len() == self.seen.capacity() {
                    self.seen.reserve_exact(self.seen.len() / 4 + 16);
                }
                self.seen.insert(at, fp);
                true
            }
        }
    }
}

/// How many jobs a session remembers (a clean job empties the list).
const SESSION_JOBS: usize = 8;
/// How many dropped job ids are remembered, to tell "stale" from "unknown".
const DROPPED_JOBS: usize = 16;

pub struct Session {
    cfg: Arc<SessionConfig>,
    extranonce1: Extranonce,
    subscribed: bool,
    extranonce_subscribed: bool,
    workers: Vec<Arc<str>>,
    /// Granted by mining.configure.
    version_mask: Option<VersionMask>,
    /// The mask the miner was last told (the grant, or a job's narrower upstream mask).
    told_mask: Option<VersionMask>,
    vardiff: Vardiff,
    /// Floor asked for with BIP310 minimum-difficulty.
    miner_min_difficulty: Option<Difficulty>,
    /// Difficulty last sent to the miner.
    sent_difficulty: Option<Difficulty>,
    jobs: VecDeque<SentJob>,
    dropped: VecDeque<JobId>,
    root_cache: Option<RootCache>,
    guard: InvalidShareGuard,
    created: Instant,
    last_line: Instant,
    close: Option<CloseReason>,
    pub counters: SessionCounters,
}

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, extranonce1: Extranonce, now: Instant) -> Self {
        let vardiff = Vardiff::new(cfg.start_difficulty, now);
        Session {
            cfg,
            extranonce1,
            subscribed: false,
            extranonce_subscribed: false,
            workers: Vec::new(),
            version_mask: None,
            told_mask: None,
            vardiff,
            miner_min_difficulty: None,
            sent_difficulty: None,
            jobs: VecDeque::new(),
            dropped: VecDeque::new(),
            root_cache: None,
            guard: InvalidShareGuard::default(),
            created: now,
            last_line: now,
            close: None,
            counters: SessionCounters::default(),
        }
    }

    pub fn extranonce1(&self) -> Extranonce {
        self.extranonce1
    }

    pub fn is_ready(&self) -> bool {
        self.subscribed && !self.workers.is_empty()
    }

    pub fn difficulty(&self) -> Difficulty {
        self.vardiff.difficulty()
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close.as_ref()
    }

    /// Handles a line from the framer (without its newline).
    pub fn handle_line(
        &mut self,
        line: &[u8],
        book: &JobBook,
        now: Instant,
        wall: SystemTime,
        out: &mut Vec<u8>,
        events: &mut Vec<ShareEvent>,
    ) {
        self.last_line = now;
        let req = match Request::parse(line) {
            Ok(r) => r,
            Err(ParseFailure { id, error }) => {
                self.counters.malformed_lines += 1;
                self.note_invalid();
                encode_error(&id, &error.to_stratum(), out);
                return;
            }
        };
        let id = req.id;
        match req.body {
            ClientRequest::Submit(s) => self.on_submit(&id, s, book, now, wall, out, events),
            ClientRequest::Subscribe { .. } => {
                self.subscribed = true;
                // Subscription ids are not used for resumption; echo a stable one.
                let sub = format!("{}", self.extranonce1);
                let result = json!([
                    [["mining.set_difficulty", sub], ["mining.notify", sub]],
                    self.extranonce1.to_hex(),
                    self.cfg.extranonce2_size
                ]);
                encode_result(&id, &result, out);
                if !self.workers.is_empty() {
                    self.send_work(book, now, out);
                }
            }
            ClientRequest::Authorize { username, password } => {
                match self.authorize(&username, password.as_deref()) {
                    Ok(()) => {
                        encode_bool_result(&id, true, out);
                        if self.subscribed && self.workers.len() == 1 {
                            self.send_work(book, now, out);
                        }
                    }
                    Err(why) => {
                        encode_error(
                            &id,
                            &StratumError::new(
                                relay::stratum::ErrorCode::UNAUTHORIZED,
                                format!("Unauthorized worker: {why}"),
                            ),
                            out,
                        );
                    }
                }
            }
            ClientRequest::Configure(c) => {
                let result = self.configure(&c, now);
                encode_result(&id, &result, out);
            }
            ClientRequest::SuggestDifficulty(d) => {
                let d = d.clamp(self.cfg.vardiff.min, self.cfg.vardiff.max);
                // The starting difficulty if no job was sent yet, else it applies from the next job.
                self.vardiff.reset(d, now);
                encode_bool_result(&id, true, out);
            }
            ClientRequest::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                encode_bool_result(&id, true, out);
            }
            ClientRequest::Ping => {
                encode_result(&id, &json!("pong"), out);
            }
            ClientRequest::Unknown(m) => {
                encode_error(
                    &id,
                    &StratumError::other(format!("Unknown method '{m}'")),
                    out,
                );
            }
        }
    }

    /// An oversized line (the framer already dropped it).
    pub fn on_frame_error(&mut self, err: &FrameError, out: &mut Vec<u8>) {
        self.counters.malformed_lines += 1;
        self.note_invalid();
        encode_error(&RequestId::Null, &StratumError::other(err.to_string()), out);
    }

    fn authorize(&mut self, username: &str, password: Option<&str>) -> Result<(), String> {
        if let Some(required) = &self.cfg.password {
            if password != Some(required.as_str()) {
                return Err("wrong password".into());
            }
        }
        let (account, worker) = username.split_once('.').unwrap_or((username, ""));
        let ok_chars = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:@+".contains(c))
        };
        if account.is_empty() || account.len() > 64 || !ok_chars(account) {
            return Err(format!(
                "account '{account}' must be 1-64 letters, digits or _-:@+"
            ));
        }
        if worker.len() > 64 || !ok_chars(worker) {
            return Err(format!(
                "worker '{worker}' must be at most 64 letters, digits or _-:@+"
            ));
        }
        let full: Arc<str> = if worker.is_empty() {
            format!("{account}.default").into()
        } else {
            username.into()
        };
        if !self.workers.iter().any(|w| **w == *full) {
            if self.workers.len() >= self.cfg.max_workers_per_connection {
                return Err("too many workers on one connection".into());
            }
            self.workers.push(full);
        }
        Ok(())
    }

    fn configure(&mut self, c: &Configure, now: Instant) -> Value {
        let mut result = Map::new();
        if let Some(vr) = c.version_rolling {
            let granted = VersionMask::negotiate(vr.mask, self.cfg.version_mask);
            if granted.bit_count() >= vr.min_bit_count {
                self.version_mask = Some(granted);
                self.told_mask = Some(granted);
                result.insert("version-rolling".into(), json!(true));
                result.insert(
                    "version-rolling.mask".into(),
                    json!(format!("{:08x}", granted.0)),
                );
            } else {
                result.insert("version-rolling".into(), json!(false));
            }
        }
        if let Some(d) = c.minimum_difficulty {
            let d = d.clamp(self.cfg.vardiff.min, self.cfg.vardiff.max);
            self.miner_min_difficulty = Some(d);
            if self.vardiff.difficulty() < d {
                self.vardiff.reset(d, now);
            }
            result.insert("minimum-difficulty".into(), json!(true));
        }
        if c.subscribe_extranonce {
            self.extranonce_subscribed = true;
            result.insert("subscribe-extranonce".into(), json!(true));
        }
        // BIP310: extensions the server does not support are answered with false.
        for name in &c.unknown {
            result.insert(name.clone(), json!(false));
        }
        Value::Object(result)
    }

    /// Sends the current job (with set_difficulty first when it changed).
    fn send_work(&mut self, book: &JobBook, now: Instant, out: &mut Vec<u8>) {
        let Some(current) = book.current() else {
            return;
        };
        if self
            .jobs
            .back()
            .is_some_and(|j| Arc::ptr_eq(&j.entry, current))
        {
            return;
        }
        if current.job.clean_jobs
            || self
                .jobs
                .back()
                .is_some_and(|j| j.entry.job.prev_hash != current.job.prev_hash)
        {
            while let Some(j) = self.jobs.pop_front() {
                self.remember_dropped(j.entry.job.id.clone());
            }
        }
        let version_mask = self.job_version_mask(current, out);
        // A silent miner's difficulty comes down here, between jobs.
        self.vardiff.poll(now, &self.cfg.vardiff);
        let mut difficulty = self.vardiff.difficulty();
        if let Some(min) = self.miner_min_difficulty {
            if difficulty < min {
                difficulty = min;
            }
        }
        if self.sent_difficulty != Some(difficulty) {
            out.extend_from_slice(
                ServerNotification::SetDifficulty(difficulty)
                    .encode(&RequestId::Null)
                    .as_bytes(),
            );
            self.sent_difficulty = Some(difficulty);
        }
        out.extend_from_slice(current.notify_line.as_bytes());
        let target = Target::from_difficulty(difficulty, self.cfg.algorithm.diff1());
        // The job it replaces takes few shares from now on: give back its record's slack (up
        // to half of it, from doubling), a third of a busy connection's memory.
        if let Some(prev) = self.jobs.back_mut() {
            prev.seen.shrink_to_fit();
        }
        self.jobs.push_back(SentJob {
            entry: current.clone(),
            difficulty,
            target,
            version_mask,
            seen: Vec::new(),
        });
        while self.jobs.len() > SESSION_JOBS {
            if let Some(j) = self.jobs.pop_front() {
                self.remember_dropped(j.entry.job.id.clone());
            }
        }
        self.forget_expired_shares(book, now);
    }

    /// Frees the duplicate records of jobs that can no longer take a share (superseded past
    /// the grace period, or gone from the book): any share on them is refused as stale before
    /// duplicates are looked at.
    fn forget_expired_shares(&mut self, book: &JobBook, now: Instant) {
        for j in self.jobs.iter_mut() {
            if j.seen.capacity() != 0
                && book.is_stale(j.entry.job.id.as_str(), now, self.cfg.stale_grace)
            {
                j.seen = Vec::new();
            }
        }
    }

    /// The mask the miner may roll on `job`: its grant (or, without `mining.configure`, the
    /// port's mask) narrowed to the job's upstream mask. A negotiated miner hears of every
    /// change with `mining.set_version_mask` (BIP310) before the job's notify.
    fn job_version_mask(&mut self, job: &JobEntry, out: &mut Vec<u8>) -> VersionMask {
        let narrow = |m: VersionMask| job.version_mask.map_or(m, |u| VersionMask(m.0 & u.0));
        let Some(granted) = self.version_mask else {
            return narrow(self.cfg.version_mask);
        };
        let mask = narrow(granted);
        if self.told_mask != Some(mask) {
            out.extend_from_slice(
                ServerNotification::SetVersionMask(mask)
                    .encode(&RequestId::Null)
                    .as_bytes(),
            );
            self.told_mask = Some(mask);
        }
        mask
    }

    fn remember_dropped(&mut self, id: JobId) {
        self.dropped.push_back(id);
        while self.dropped.len() > DROPPED_JOBS {
            self.dropped.pop_front();
        }
    }

    /// New work was published.
    pub fn on_jobs(&mut self, book: &JobBook, now: Instant, out: &mut Vec<u8>) {
        if self.is_ready() {
            self.send_work(book, now, out);
        }
    }

    /// Timer: closes idle or never-authorized connections, and frees the duplicate records of
    /// jobs whose grace period has passed (rather than when the next job comes, which may be
    /// minutes away).
    pub fn on_tick(&mut self, book: &JobBook, now: Instant) -> Option<&CloseReason> {
        self.forget_expired_shares(book, now);
        if self.close.is_none() {
            if !self.is_ready()
                && now.saturating_duration_since(self.created) > self.cfg.handshake_timeout
            {
                self.close = Some(CloseReason::HandshakeTimeout);
            } else if now.saturating_duration_since(self.last_line) > self.cfg.idle_timeout {
                self.close = Some(CloseReason::IdleTimeout);
            }
        }
        self.close.as_ref()
    }

    fn note_invalid(&mut self) {
        if let Some(ban) = self.guard.on_invalid(&self.cfg) {
            self.close.get_or_insert(ban);
        }
    }

    fn reject(&mut self, id: &RequestId, r: Reject, out: &mut Vec<u8>) {
        if !matches!(r, Reject::Stale | Reject::JobNotFound) {
            self.note_invalid();
        }
        self.counters.rejected.push(r.label());
        encode_error(id, &r.to_stratum(), out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_submit(
        &mut self,
        id: &RequestId,
        s: Submit<'_>,
        book: &JobBook,
        now: Instant,
        wall: SystemTime,
        out: &mut Vec<u8>,
        events: &mut Vec<ShareEvent>,
    ) {
        if !self.subscribed {
            return self.reject(id, Reject::NotSubscribed, out);
        }
        let Some(worker) = self.workers.iter().find(|w| ***w == *s.worker).cloned() else {
            return self.reject(id, Reject::Unauthorized, out);
        };
        let Some(pos) = self
            .jobs
            .iter()
            .rposition(|j| j.entry.job.id.as_str() == s.job_id)
        else {
            let r = if self.dropped.iter().any(|d| d.as_str() == s.job_id) {
                Reject::Stale
            } else {
                Reject::JobNotFound
            };
            return self.reject(id, r, out);
        };
        // Superseded jobs stay valid for the grace period if the prevhash is still current.
        // A share judged stale against work this miner has not been sent yet (the connector
        // holds the new book and sends it in slices) gets that work first: the miner must hear
        // of the new job before it hears its share was stale on the old one.
        if book.is_stale(&s.job_id, now, self.cfg.stale_grace) {
            self.send_work(book, now, out);
            return self.reject(id, Reject::Stale, out);
        }
        let sent = &self.jobs[pos];
        let job_version = sent.entry.job.version;
        let version = match s.version_bits {
            None => job_version,
            Some(bits) => {
                if self.version_mask.is_none() {
                    self.counters.version_rolling_unnegotiated += 1;
                }
                let mask = sent.version_mask;
                // Full-version form: the bits outside the mask are the job's own.
                let bits = if bits & !mask.0 == job_version & !mask.0 {
                    bits & mask.0
                } else {
                    bits
                };
                match mask.apply(job_version, bits) {
                    Ok(v) => v,
                    Err(e) => return self.reject(id, Reject::Invalid(e.to_string()), out),
                }
            }
        };
        let work = ShareWork {
            extranonce1: self.extranonce1,
            extranonce2: s.extranonce2,
            ntime: s.ntime,
            nonce: s.nonce,
            version,
        };
        let entry = sent.entry.clone();
        let mut difficulty = sent.difficulty;
        let target = sent.target;
        let root = self.merkle_root_of(&entry, &work);
        let mut result = validate_share_with_root(
            self.cfg.algorithm,
            &entry,
            &work,
            self.cfg.extranonce2_size,
            &target,
            root,
        );
        // A share that misses its job's difficulty but meets a lower current difficulty (the
        // miner applied a decrease at once) is accepted at the lower one.
        if let Err(PowReject::LowDifficulty { .. }) = result {
            let current = self.sent_difficulty.unwrap_or(difficulty);
            if current < difficulty {
                let t = Target::from_difficulty(current, self.cfg.algorithm.diff1());
                result = validate_share_with_root(
                    self.cfg.algorithm,
                    &entry,
                    &work,
                    self.cfg.extranonce2_size,
                    &t,
                    root,
                );
                difficulty = current;
            }
        }
        let v = match result {
            Ok(v) => v,
            Err(PowReject::LowDifficulty { .. }) => {
                return self.reject(id, Reject::LowDifficulty, out)
            }
            Err(e) => return self.reject(id, Reject::Invalid(e.to_string()), out),
        };
        if !self.jobs[pos].remember(ShareFingerprint::of(&v.pow_hash)) {
            return self.reject(id, Reject::Duplicate, out);
        }
        self.guard.on_accepted(&self.cfg);
        self.counters.accepted += 1;
        encode_bool_result(id, true, out);
        self.vardiff.on_share(difficulty, now, &self.cfg.vardiff);
        let record = ShareRecord {
            worker,
            job_id: entry.job.id.clone(),
            extranonce1: self.extranonce1,
            extranonce2: s.extranonce2,
            ntime: s.ntime,
            nonce: s.nonce,
            version,
            difficulty,
            achieved: v.achieved,
            received_at: wall,
            meets_upstream: v.meets_upstream,
            spool_ref: None,
        };
        if v.is_block {
            events.push(ShareEvent::Block(Box::new(BlockCandidate {
                header: v.header.to_bytes(),
                coinbase: entry.job.coinbase(&self.extranonce1, &s.extranonce2),
                share: record,
            })));
        } else {
            events.push(ShareEvent::Accepted(record));
        }
    }

    /// The merkle root of `work` on `entry`, from the cache when the miner kept its
    /// extranonce2; `None` for an extranonce2 of the wrong size (the validator refuses it).
    fn merkle_root_of(&mut self, entry: &Arc<JobEntry>, work: &ShareWork) -> Option<Hash256> {
        if work.extranonce2.len() != self.cfg.extranonce2_size {
            return None;
        }
        if let Some(c) = &self.root_cache {
            if Arc::ptr_eq(&c.entry, entry) && c.extranonce2 == work.extranonce2 {
                return Some(c.root);
            }
        }
        let cb = entry
            .job
            .coinbase_hash(&work.extranonce1, &work.extranonce2);
        let root = Hash256(merkle_root(cb, &entry.job.merkle_branch));
        self.root_cache = Some(RootCache {
            entry: entry.clone(),
            extranonce2: work.extranonce2,
            root,
        });
        Some(root)
    }

    /// Re-announces a changed extranonce1 to a miner that subscribed to extranonce changes.
    /// Returns false when the miner cannot take it (it must reconnect instead).
    pub fn set_extranonce1(&mut self, e1: Extranonce, out: &mut Vec<u8>) -> bool {
        if !self.extranonce_subscribed {
            return false;
        }
        self.extranonce1 = e1;
        self.jobs.clear();
        self.root_cache = None;
        out.extend_from_slice(
            ServerNotification::SetExtranonce {
                extranonce1: e1,
                extranonce2_size: self.cfg.extranonce2_size,
            }
            .encode(&RequestId::Null)
            .as_bytes(),
        );
        true
    }
}

#[cfg(test)]
mod tests;
