//! A simulated miner's Stratum V1 session, as a sans-IO state machine.
//!
//! [`MinerSession`] never touches a socket or reads a clock (the way `quinn_proto::Connection`
//! works): the shell around it feeds it the lines it received ([`MinerSession::handle_line`]) and
//! the current [`Instant`], asks it for lines to send ([`MinerSession::poll_transmit`]) and for
//! what happened ([`MinerSession::poll_event`]), and gives it a hashing budget
//! ([`MinerSession::next_share`]). Tests drive it with scripted pool lines and a fake clock; the
//! blocking runner in [`super::runner`] drives it over TCP; a later event-loop runner can reuse it.
//!
//! The session mines for real: it rebuilds the header of each candidate exactly as a pool does
//! (coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2, merkle branch, header fields), hashes
//! it with the coin's algorithm and submits only what meets the job's share target. So it knows
//! the right verdict for every share it sends, and checks the pool's. On purpose it can also send
//! shares that must be refused (the *share mix*): a resubmitted accepted share (duplicate, code
//! 22), a share on a job that `clean_jobs` dropped or that never existed (stale, 21), a share
//! whose hash misses the target (low difficulty, 23) and a broken line (malformed, 20).
//!
//! Difficulty, extranonce1 and extranonce2 size are recorded with each job when it arrives:
//! `mining.set_difficulty` and `mining.set_extranonce` apply to jobs received after them.

use super::stats::{micros, SessionStats};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::stratum::{
    ClientRequest, Configure, ErrorCode, Request, RequestId, Response, ServerMessage,
    ServerNotification, StratumError, Submit, VersionRollingRequest,
};
use relay::work::{
    merkle_root, BlockHeader, Difficulty, Extranonce, Job, JobId, ShareWork, Target, VersionMask,
};
use relay::{Hash256, PowAlgorithm};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// BIP310: the version-rolling mask the ASIC profile asks for (the bits BIP320 leaves to miners).
pub const ASIC_VERSION_MASK: VersionMask = VersionMask::BIP320;
/// BIP310 `version-rolling.min-bit-count` the ASIC profile asks for.
pub const ASIC_MIN_BIT_COUNT: u32 = 2;
/// Stratum's implicit difficulty before the pool sends `mining.set_difficulty`.
const DEFAULT_DIFFICULTY: f64 = 1.0;
/// Jobs kept alive without a `clean_jobs` (older ones are forgotten, not counted as dropped).
const MAX_LIVE_JOBS: usize = 16;
/// Dropped job ids remembered for deliberately stale shares.
const MAX_DROPPED_JOBS: usize = 8;
/// Accepted shares remembered for deliberate duplicates.
const MAX_ACCEPTED_KEPT: usize = 32;
/// Hashes spent looking for a deliberately low-difficulty hash before giving up on it.
const MAX_LOW_DIFFICULTY_SEARCH: u32 = 256;

/// Which kind of miner the session imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// An Antminer-style ASIC: `mining.configure` with version rolling (BIP310), 6-parameter
    /// submits carrying the rolled version bits, `mining.suggest_difficulty`.
    Asic,
    /// A NiceHash-style rental client: `mining.extranonce.subscribe`, honours
    /// `mining.set_extranonce`.
    NiceHash,
    /// cpuminer: plain subscribe, authorize, 5-parameter submits.
    Cpuminer,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Asic, Profile::NiceHash, Profile::Cpuminer];

    /// The user agent sent in `mining.subscribe`, as the real software sends it.
    pub fn user_agent(self) -> &'static str {
        match self {
            Profile::Asic => "bmminer/2.0.0",
            Profile::NiceHash => "NiceHash/1.0.0",
            Profile::Cpuminer => "cpuminer/2.5.1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Asic => "asic",
            Profile::NiceHash => "nicehash",
            Profile::Cpuminer => "cpuminer",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "asic" => Ok(Profile::Asic),
            "nicehash" => Ok(Profile::NiceHash),
            "cpuminer" => Ok(Profile::Cpuminer),
            other => Err(format!(
                "unknown miner profile '{other}' (known: asic, nicehash, cpuminer)"
            )),
        }
    }
}

/// What a submitted share is, and so what the pool must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareKind {
    /// Hash computed and meeting the job's share target: must be accepted.
    Valid,
    /// An accepted share sent again: code 22.
    Duplicate,
    /// A share on a job dropped by `clean_jobs`, or on a job id the pool never sent: code 21.
    Stale,
    /// A share whose hash misses the share target: code 23.
    LowDifficulty,
    /// A line the pool cannot parse as a submit (bad hex, wrong parameter count): code 20.
    Malformed,
}

impl ShareKind {
    /// The error code the pool must answer with, `None` when it must accept.
    pub fn expected_error(self) -> Option<ErrorCode> {
        match self {
            ShareKind::Valid => None,
            ShareKind::Duplicate => Some(ErrorCode::DUPLICATE_SHARE),
            ShareKind::Stale => Some(ErrorCode::JOB_NOT_FOUND),
            ShareKind::LowDifficulty => Some(ErrorCode::LOW_DIFFICULTY),
            ShareKind::Malformed => Some(ErrorCode::OTHER),
        }
    }
}

/// Fractions of deliberately bad shares among submissions; the rest are valid.
///
/// Text form (CLI): `duplicate=0.02,stale=0.01,low=0.01,malformed=0.005` (any subset; `low`
/// and `low_difficulty` are synonyms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShareMix {
    pub duplicate: f64,
    pub stale: f64,
    pub low_difficulty: f64,
    pub malformed: f64,
}

impl ShareMix {
    /// Only valid shares.
    pub const ALL_VALID: ShareMix = ShareMix {
        duplicate: 0.0,
        stale: 0.0,
        low_difficulty: 0.0,
        malformed: 0.0,
    };

    /// Checks that every fraction is in `[0, 1]` and that they sum to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("duplicate", self.duplicate),
            ("stale", self.stale),
            ("low_difficulty", self.low_difficulty),
            ("malformed", self.malformed),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("share mix: {name}={v} is not a fraction in [0, 1]"));
            }
        }
        if self.bad() > 1.0 + 1e-9 {
            return Err(format!(
                "share mix: bad fractions sum to {} (more than 1)",
                self.bad()
            ));
        }
        Ok(())
    }

    fn bad(&self) -> f64 {
        self.duplicate + self.stale + self.low_difficulty + self.malformed
    }

    /// The fraction of valid shares.
    pub fn valid(&self) -> f64 {
        (1.0 - self.bad()).max(0.0)
    }

    /// The kind for a uniform draw `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> ShareKind {
        let mut acc = self.duplicate;
        if u < acc {
            return ShareKind::Duplicate;
        }
        acc += self.stale;
        if u < acc {
            return ShareKind::Stale;
        }
        acc += self.low_difficulty;
        if u < acc {
            return ShareKind::LowDifficulty;
        }
        acc += self.malformed;
        if u < acc {
            return ShareKind::Malformed;
        }
        ShareKind::Valid
    }
}

impl FromStr for ShareMix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = ShareMix::ALL_VALID;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("share mix: '{part}' is not name=fraction"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("share mix: '{v}' in '{part}' is not a number"))?;
            match k.trim() {
                "duplicate" => mix.duplicate = v,
                "stale" => mix.stale = v,
                "low" | "low_difficulty" => mix.low_difficulty = v,
                "malformed" => mix.malformed = v,
                other => {
                    return Err(format!(
                    "share mix: unknown kind '{other}' (known: duplicate, stale, low, malformed)"
                ))
                }
            }
        }
        mix.validate()?;
        Ok(mix)
    }
}

/// Everything a session needs to know before it starts.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub profile: Profile,
    pub algorithm: PowAlgorithm,
    /// `account.worker`, sent in `mining.authorize` and every submit.
    pub username: String,
    pub password: String,
    /// Sent by the ASIC profile after authorizing.
    pub suggest_difficulty: Option<Difficulty>,
    pub mix: ShareMix,
    /// Seeds the start of the nonce/extranonce2 search and the share-mix draws.
    pub seed: u64,
    /// A request unanswered this long is given up on ([`MinerSession::handle_timeout`]).
    pub response_timeout: Duration,
    /// Record submit latency in this session's own histogram (about 190 KiB each). Runners
    /// with thousands of sessions turn it off and record the latency carried by
    /// [`Event::ShareAnswered`] in one histogram per thread instead.
    pub latency_histogram: bool,
    /// Keep the identity of every accepted valid share (`worker/job/extranonce1/extranonce2/
    /// ntime/nonce`) for exactly-once checks against what the pool credited.
    pub record_accepted: bool,
}

impl SessionConfig {
    pub fn new(profile: Profile, algorithm: PowAlgorithm, username: impl Into<String>) -> Self {
        SessionConfig {
            profile,
            algorithm,
            username: username.into(),
            password: "x".into(),
            suggest_difficulty: None,
            mix: ShareMix::ALL_VALID,
            seed: 0,
            response_timeout: Duration::from_secs(30),
            latency_histogram: true,
            record_accepted: false,
        }
    }
}

/// Where the session is in its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// `mining.subscribe` sent, no answer yet.
    Subscribing,
    /// Subscribed; `mining.authorize` sent.
    Authorizing,
    /// Authorized: mining as soon as a job is known.
    Ready,
    /// The pool refused subscription or authorization, or broke the handshake; the shell
    /// should disconnect.
    Failed(String),
}

/// How the pool's answer to a submit compares with what the share deserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and accepted, or bad and rejected with the right code.
    AsExpected,
    /// Rejected as stale because the job was dropped while the share was on the wire.
    StaleRace,
    /// A valid share rejected.
    UnexpectedReject,
    /// A deliberately bad share accepted.
    BadShareAccepted,
    /// A deliberately bad share rejected with the wrong code.
    WrongRejectCode { expected: ErrorCode },
}

/// Something the shell may want to log or act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Subscribed {
        extranonce1: Extranonce,
        extranonce2_size: usize,
    },
    /// The answer to `mining.configure`: the granted version-rolling mask, if any.
    Configured {
        version_mask: Option<VersionMask>,
    },
    ExtranonceSubscribed {
        accepted: bool,
    },
    Authorized,
    /// Subscription or authorization refused: the session is [`SessionState::Failed`].
    HandshakeFailed(String),
    NewJob {
        id: JobId,
        clean: bool,
        difficulty: Difficulty,
    },
    DifficultyChanged(Difficulty),
    ExtranonceChanged {
        extranonce1: Extranonce,
        extranonce2_size: usize,
    },
    ShareAnswered {
        id: u64,
        kind: ShareKind,
        job_id: JobId,
        /// `None` when accepted.
        error: Option<StratumError>,
        verdict: Verdict,
        latency: Option<Duration>,
    },
    /// A request left unanswered past the response timeout.
    TimedOut {
        id: u64,
        method: &'static str,
    },
    ProtocolError(String),
    /// `client.reconnect`: the pool asks the miner to reconnect (maybe elsewhere).
    ReconnectRequested {
        host: Option<String>,
        port: Option<u16>,
        wait_secs: Option<u64>,
    },
    Message(String),
}

/// A share handed to the transport queue by [`MinerSession::next_share`].
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    /// The JSON-RPC id of the `mining.submit`.
    pub id: u64,
    pub kind: ShareKind,
    pub job_id: JobId,
    /// What the miner chose (for a malformed share, the values before the line was broken).
    pub work: ShareWork,
    /// The 6th submit parameter (BIP310), when version rolling was negotiated.
    pub version_bits: Option<u32>,
    /// The proof-of-work hash, when the miner computed one.
    pub hash: Option<Hash256>,
    /// The hash meets the job's network target: a block.
    pub is_block: bool,
    /// The exact line queued, newline included.
    pub line: String,
}

#[derive(Clone, Debug)]
struct SentShare {
    kind: ShareKind,
    job_id: JobId,
    /// The parameters, kept to resubmit an accepted share as a duplicate.
    submit: Option<Submit<'static>>,
    /// The extranonce1 the share was built with (for the accepted-share record).
    extranonce1: Option<Extranonce>,
}

#[derive(Clone, Debug)]
enum PendingKind {
    Configure,
    Subscribe,
    ExtranonceSubscribe,
    Authorize,
    SuggestDifficulty,
    Submit(SentShare),
}

impl PendingKind {
    fn method(&self) -> &'static str {
        match self {
            PendingKind::Configure => "mining.configure",
            PendingKind::Subscribe => "mining.subscribe",
            PendingKind::ExtranonceSubscribe => "mining.extranonce.subscribe",
            PendingKind::Authorize => "mining.authorize",
            PendingKind::SuggestDifficulty => "mining.suggest_difficulty",
            PendingKind::Submit(_) => "mining.submit",
        }
    }
}

#[derive(Debug)]
struct PendingRequest {
    kind: PendingKind,
    /// Set when the shell took the line from [`MinerSession::poll_transmit`].
    sent_at: Option<Instant>,
}

/// A job with the context it arrived in, and how far the miner has searched it.
#[derive(Clone, Debug)]
struct JobSlot {
    job: Job,
    difficulty: Difficulty,
    share_target: Target,
    /// `None` when the job's nbits cannot be decoded (no block detection then).
    network_target: Option<Target>,
    extranonce1: Extranonce,
    extranonce2_size: usize,
    /// Candidates hashed on this job; candidate `n` is fully determined by `n` and the starts.
    searched: u64,
    extranonce2_start: u64,
    nonce_start: u32,
    /// Merkle root of the candidate extranonce2 in use. A real miner builds the coinbase and
    /// folds the branch once per extranonce2 and then only rolls nonce and version bits; doing it
    /// per candidate cost 39 of the 42 SHA-256 compressions of each hash (a quarter of the
    /// harness's CPU at 10,000 miners), time taken from the edge it measures on the same cores.
    root_cache: Option<(Extranonce, Hash256)>,
}

impl JobSlot {
    /// The header of `work`, the merkle root reused while the extranonce2 stays the same.
    fn header(&mut self, work: &ShareWork) -> BlockHeader {
        let merkle_root = match self.root_cache {
            Some((e2, root)) if e2 == work.extranonce2 => root,
            _ => {
                let cb = self.job.coinbase_hash(&work.extranonce1, &work.extranonce2);
                let root = Hash256(merkle_root(cb, &self.job.merkle_branch));
                self.root_cache = Some((work.extranonce2, root));
                root
            }
        };
        BlockHeader {
            version: work.version,
            prev_hash: self.job.prev_hash.0,
            merkle_root,
            time: work.ntime,
            bits: self.job.nbits.0,
            nonce: work.nonce,
        }
    }

    /// The next candidate: the nonce runs fastest, extranonce2 steps each 2^32 candidates, and
    /// rolled version bits (if any) follow the candidate counter spread over the mask's bits.
    fn next_candidate(&mut self, mask: Option<VersionMask>) -> (ShareWork, Option<u32>) {
        let n = self.searched;
        self.searched += 1;
        let e2_bits = 8 * self.extranonce2_size.min(8) as u32;
        let e2_value = self.extranonce2_start.wrapping_add(n >> 32);
        let e2_value = if e2_bits >= 64 {
            e2_value
        } else {
            e2_value & ((1u64 << e2_bits) - 1)
        };
        let extranonce2 =
            Extranonce::from_counter(e2_value, self.extranonce2_size).unwrap_or_default();
        let bits = mask.map(|m| deposit_bits(n as u32, m.0));
        let version = match (mask, bits) {
            (Some(m), Some(b)) => (self.job.version & !m.0) | b,
            _ => self.job.version,
        };
        (
            ShareWork {
                extranonce1: self.extranonce1,
                extranonce2,
                ntime: self.job.ntime,
                nonce: self.nonce_start.wrapping_add(n as u32),
                version,
            },
            bits,
        )
    }
}

/// Spreads the low bits of `value` over the set bits of `mask` (a software PDEP).
fn deposit_bits(mut value: u32, mask: u32) -> u32 {
    let mut out = 0;
    let mut m = mask;
    while m != 0 {
        let lowest = m & m.wrapping_neg();
        if value & 1 != 0 {
            out |= lowest;
        }
        value >>= 1;
        m &= m - 1;
    }
    out
}

/// What identifies an accepted share (with the session's user name): see [`AcceptedKey::id`].
#[derive(Clone, Debug)]
struct AcceptedKey {
    job_id: JobId,
    extranonce1: Extranonce,
    extranonce2: Extranonce,
    ntime: u32,
    nonce: u32,
}

impl AcceptedKey {
    /// The id [`crate::exactly_once`] matches against the core's credits.
    fn id(&self, user: &str) -> String {
        format!(
            "{user}/{}/{}/{}/{:08x}/{:08x}",
            self.job_id, self.extranonce1, self.extranonce2, self.ntime, self.nonce
        )
    }
}

/// A hash that missed both targets, kept to be sent later as a deliberately low-difficulty share.
#[derive(Clone, Copy, Debug)]
struct LowCandidate {
    slot_generation: u64,
    work: ShareWork,
    version_bits: Option<u32>,
    hash: Hash256,
}

/// One simulated miner's Stratum session. See the module documentation.
pub struct MinerSession {
    config: SessionConfig,
    state: SessionState,
    rng: StdRng,
    next_id: u64,
    outgoing: VecDeque<(Option<u64>, String)>,
    events: VecDeque<Event>,
    /// Requests not answered yet, by id. Ids grow and lines leave in the order they were
    /// queued, so the first entry is the one sent longest ago: timeouts look at it alone
    /// instead of scanning every request on every wake-up.
    pending: BTreeMap<u64, PendingRequest>,
    /// `None` until subscribed.
    extranonce1: Option<Extranonce>,
    extranonce2_size: usize,
    difficulty: Difficulty,
    /// The BIP310 mask the pool granted (ASIC profile only).
    version_mask: Option<VersionMask>,
    extranonce_subscribed: bool,
    /// Live jobs, oldest first; the newest is mined.
    jobs: VecDeque<(u64, JobSlot)>,
    job_generation: u64,
    dropped: VecDeque<JobId>,
    accepted: VecDeque<(JobId, Submit<'static>)>,
    low_candidate: Option<(JobId, LowCandidate)>,
    /// Accepted valid shares when `record_accepted`; worded as ids only when the session ends
    /// (formatting one per answer was a twentieth of the harness's CPU).
    accepted_keys: Vec<AcceptedKey>,
    next_kind: Option<ShareKind>,
    malformed_sent: u64,
    stats: SessionStats,
}

impl fmt::Debug for MinerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinerSession")
            .field("profile", &self.config.profile)
            .field("username", &self.config.username)
            .field("state", &self.state)
            .field("extranonce1", &self.extranonce1)
            .field("extranonce2_size", &self.extranonce2_size)
            .field("difficulty", &self.difficulty)
            .field("version_mask", &self.version_mask)
            .field("jobs", &self.jobs.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

thread_local! {
    /// The last `mining.notify` line this thread parsed, and what it parsed to.
    static LAST_NOTIFY: RefCell<Option<(Box<[u8]>, ServerMessage)>> = const { RefCell::new(None) };
}

/// Parses a line from the pool, reusing this thread's last parsed `mining.notify` when the line
/// is byte for byte the same. A job broadcast brings every miner of a harness thread the same
/// 1.3 KB line. Each miner still receives, frames and handles it, and gets its own copy of the
/// job, but the JSON and hex are decoded once per thread rather than once per miner (~5 µs
/// each, 50 ms of the shared CPUs for a broadcast to 10,000 miners). The harness's CPU is not
/// a real farm's cost: a real miner has its own.
fn parse_pool_line(line: &[u8]) -> Result<ServerMessage, relay::stratum::ProtocolError> {
    let cached = LAST_NOTIFY.with_borrow(|last| match last {
        Some((l, msg)) if **l == *line => Some(msg.clone()),
        _ => None,
    });
    if let Some(msg) = cached {
        return Ok(msg);
    }
    let msg = ServerMessage::parse(line)?;
    if matches!(
        msg,
        ServerMessage::Notification {
            body: ServerNotification::Notify(_),
            ..
        }
    ) {
        LAST_NOTIFY.set(Some((line.into(), msg.clone())));
    }
    Ok(msg)
}

impl MinerSession {
    /// A new session; its opening requests (`mining.configure` for the ASIC profile, then
    /// `mining.subscribe`) are queued for [`Self::poll_transmit`].
    pub fn new(config: SessionConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        let mut s = MinerSession {
            state: SessionState::Subscribing,
            rng,
            next_id: 1,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            pending: BTreeMap::new(),
            extranonce1: None,
            extranonce2_size: 0,
            difficulty: Difficulty::new(DEFAULT_DIFFICULTY).unwrap_or_default(),
            version_mask: None,
            extranonce_subscribed: false,
            jobs: VecDeque::new(),
            job_generation: 0,
            dropped: VecDeque::new(),
            accepted: VecDeque::new(),
            low_candidate: None,
            accepted_keys: Vec::new(),
            next_kind: None,
            malformed_sent: 0,
            stats: if config.latency_histogram {
                SessionStats::default()
            } else {
                SessionStats::without_latency()
            },
            config,
        };
        if s.config.profile == Profile::Asic {
            s.request(
                ClientRequest::Configure(Configure {
                    version_rolling: Some(VersionRollingRequest {
                        mask: ASIC_VERSION_MASK,
                        min_bit_count: ASIC_MIN_BIT_COUNT,
                    }),
                    ..Configure::default()
                }),
                PendingKind::Configure,
            );
        }
        let ua = s.config.profile.user_agent();
        s.request(
            ClientRequest::Subscribe {
                user_agent: Some(Cow::Borrowed(ua)),
                session_id: None,
            },
            PendingKind::Subscribe,
        );
        s
    }

    // ---- getters ----

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.state, SessionState::Failed(_))
    }

    /// The extranonce1 the next job will be mined with (`None` before subscription).
    pub fn extranonce1(&self) -> Option<Extranonce> {
        self.extranonce1
    }

    pub fn extranonce2_size(&self) -> usize {
        self.extranonce2_size
    }

    /// The difficulty the next job will carry.
    pub fn difficulty(&self) -> Difficulty {
        self.difficulty
    }

    /// The version-rolling mask the pool granted, if any.
    pub fn version_mask(&self) -> Option<VersionMask> {
        self.version_mask
    }

    /// Ids of the live jobs, oldest first (the last one is being mined).
    pub fn job_ids(&self) -> impl Iterator<Item = &JobId> {
        self.jobs.iter().map(|(_, s)| &s.job.id)
    }

    /// The difficulty a live job was received with.
    pub fn job_difficulty(&self, id: &str) -> Option<Difficulty> {
        self.slot(id).map(|s| s.difficulty)
    }

    /// The job being mined.
    pub fn current_job(&self) -> Option<&Job> {
        self.jobs.back().map(|(_, s)| &s.job)
    }

    /// True when authorized with a job to mine.
    pub fn can_mine(&self) -> bool {
        self.state == SessionState::Ready && !self.jobs.is_empty()
    }

    /// Submits sent and not yet answered.
    pub fn pending_submits(&self) -> usize {
        self.pending
            .values()
            .filter(|p| matches!(p.kind, PendingKind::Submit(_)) && p.sent_at.is_some())
            .count()
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    pub fn latency(&self) -> &Histogram<u64> {
        &self.stats.latency_us
    }

    /// Ends the session: submits still unanswered are counted as such.
    pub fn into_stats(mut self) -> SessionStats {
        let user = &self.config.username;
        self.stats
            .accepted_ids
            .extend(self.accepted_keys.iter().map(|k| k.id(user)));
        self.stats.counts.unanswered += self.pending_submits() as u64;
        self.stats
    }

    // ---- what the application asks ----

    /// Changes the share mix from the next share on.
    pub fn set_share_mix(&mut self, mix: ShareMix) {
        self.config.mix = mix;
        self.next_kind = None;
    }

    /// Records a problem the shell found in the pool's byte stream (e.g. an oversized line).
    pub fn note_protocol_error(&mut self, what: impl Into<String>) {
        self.protocol_error(what.into());
    }

    // ---- output ----

    /// The next line to send, newline included. `now` is when it goes on the wire: submit
    /// latency is measured from it.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<String> {
        let (id, line) = self.outgoing.pop_front()?;
        if let Some(id) = id {
            if let Some(p) = self.pending.get_mut(&id) {
                p.sent_at = Some(now);
                if let PendingKind::Submit(share) = &p.kind {
                    let c = &mut self.stats.counts;
                    c.submitted += 1;
                    let k = &mut c.submitted_by_kind;
                    match share.kind {
                        ShareKind::Valid => k.valid += 1,
                        ShareKind::Duplicate => k.duplicate += 1,
                        ShareKind::Stale => k.stale += 1,
                        ShareKind::LowDifficulty => k.low_difficulty += 1,
                        ShareKind::Malformed => k.malformed += 1,
                    }
                }
            }
        }
        Some(line)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (_, oldest) = self.pending.first_key_value()?;
        oldest.sent_at.map(|t| t + self.config.response_timeout)
    }

    // ---- input ----

    /// Gives up on requests unanswered for longer than the response timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let limit = self.config.response_timeout;
        // Sent in id order: the expired ones are a prefix.
        let expired: Vec<u64> = self
            .pending
            .iter()
            .take_while(|(_, p)| {
                p.sent_at
                    .is_some_and(|t| now.saturating_duration_since(t) > limit)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            let method = p.kind.method();
            match p.kind {
                PendingKind::Submit(_) => {
                    self.stats.counts.unanswered += 1;
                    self.stats
                        .note_problem(format!("{method} id {id}: no answer within {limit:?}"));
                }
                // Many pools never answer suggest_difficulty; that is not an error.
                PendingKind::SuggestDifficulty => {}
                _ => self.protocol_error(format!("{method} id {id}: no answer within {limit:?}")),
            }
            self.events.push_back(Event::TimedOut { id, method });
        }
    }

    /// Handles one line received from the pool (without its newline).
    pub fn handle_line(&mut self, line: &[u8], now: Instant) {
        match parse_pool_line(line) {
            Ok(ServerMessage::Response(r)) => self.handle_response(r, now),
            Ok(ServerMessage::Notification { id, body }) => self.handle_notification(id, body),
            Ok(ServerMessage::Unknown { id, method }) => {
                if method == "client.get_version" && id != RequestId::Null {
                    let mut out = Vec::new();
                    relay::stratum::encode_result(
                        &id,
                        &json!(self.config.profile.user_agent()),
                        &mut out,
                    );
                    self.outgoing
                        .push_back((None, String::from_utf8_lossy(&out).into_owned()));
                } else {
                    self.events
                        .push_back(Event::Message(format!("unknown method {method} ignored")));
                }
            }
            Err(e) => self.protocol_error(format!(
                "unparseable line from pool ({e}): {}",
                excerpt(line)
            )),
        }
    }

    fn handle_response(&mut self, r: Response, now: Instant) {
        let id = match r.id {
            RequestId::Number(n) => n,
            ref other => {
                let e = r
                    .error
                    .as_ref()
                    .map(|e| format!(" (error {e})"))
                    .unwrap_or_default();
                return self.protocol_error(format!(
                    "response to id {} that was never sent{e}",
                    other.to_value()
                ));
            }
        };
        let Some(p) = self.pending.remove(&id) else {
            return self.protocol_error(format!("response to id {id} that is not outstanding"));
        };
        let Some(sent_at) = p.sent_at else {
            return self.protocol_error(format!(
                "response to id {id} ({}) before it was sent",
                p.kind.method()
            ));
        };
        match p.kind {
            PendingKind::Configure => self.on_configure(r),
            PendingKind::Subscribe => self.on_subscribe(r),
            PendingKind::ExtranonceSubscribe => {
                let accepted = r.error.is_none() && r.result == Value::Bool(true);
                self.extranonce_subscribed = accepted;
                self.events
                    .push_back(Event::ExtranonceSubscribed { accepted });
            }
            PendingKind::Authorize => {
                if r.error.is_none() && r.result == Value::Bool(true) {
                    if self.state == SessionState::Authorizing {
                        self.state = SessionState::Ready;
                    }
                    self.events.push_back(Event::Authorized);
                } else {
                    self.stats.counts.authorize_failures += 1;
                    let why = match r.error {
                        Some(e) => format!("authorize {} refused: {e}", self.config.username),
                        None => format!(
                            "authorize {} refused: result {}",
                            self.config.username, r.result
                        ),
                    };
                    self.fail(why);
                }
            }
            // Pools answer true, null or an error; none of them is wrong.
            PendingKind::SuggestDifficulty => {}
            PendingKind::Submit(share) => {
                let latency = now.saturating_duration_since(sent_at);
                if self.config.latency_histogram {
                    self.stats.latency_us.saturating_record(micros(latency));
                }
                self.on_submit_answer(id, share, r, latency);
            }
        }
    }

    fn on_configure(&mut self, r: Response) {
        let granted = match (&r.error, r.result.as_object()) {
            (None, Some(o)) if o.get("version-rolling") == Some(&Value::Bool(true)) => {
                match o
                    .get("version-rolling.mask")
                    .and_then(Value::as_str)
                    .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                {
                    Some(m) => {
                        if m & !ASIC_VERSION_MASK.0 != 0 {
                            self.protocol_error(format!(
                                "mining.configure granted version mask {m:08x} outside the requested {:08x}",
                                ASIC_VERSION_MASK.0
                            ));
                        }
                        let m = VersionMask::negotiate(ASIC_VERSION_MASK, VersionMask(m));
                        if m.bit_count() < ASIC_MIN_BIT_COUNT {
                            self.protocol_error(format!(
                                "mining.configure granted version mask {:08x} with {} bits, fewer than min-bit-count {ASIC_MIN_BIT_COUNT}",
                                m.0,
                                m.bit_count()
                            ));
                        }
                        Some(m)
                    }
                    None => {
                        self.protocol_error(format!(
                            "mining.configure: version-rolling granted without a hex mask: {}",
                            r.result
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        self.version_mask = granted;
        self.events.push_back(Event::Configured {
            version_mask: granted,
        });
    }

    fn on_subscribe(&mut self, r: Response) {
        if let Some(e) = r.error {
            return self.fail(format!("mining.subscribe refused: {e}"));
        }
        let parsed = (|| {
            let a = r.result.as_array().ok_or("result is not a list")?;
            let e1 = a
                .get(1)
                .and_then(Value::as_str)
                .ok_or("extranonce1 (result[1]) is not a string")?;
            let e1 = Extranonce::from_hex(e1).map_err(|e| format!("extranonce1: {e}"))?;
            let size = a
                .get(2)
                .and_then(Value::as_u64)
                .ok_or("extranonce2_size (result[2]) is not an integer")?;
            let size = checked_extranonce2_size(size)?;
            Ok::<_, String>((e1, size))
        })();
        match parsed {
            Err(e) => {
                self.protocol_error(format!("mining.subscribe result {}: {e}", r.result));
                self.fail(format!("mining.subscribe: unusable result: {e}"));
            }
            Ok((e1, size)) => {
                self.extranonce1 = Some(e1);
                self.extranonce2_size = size;
                self.state = SessionState::Authorizing;
                self.events.push_back(Event::Subscribed {
                    extranonce1: e1,
                    extranonce2_size: size,
                });
                if self.config.profile == Profile::NiceHash {
                    self.request(
                        ClientRequest::ExtranonceSubscribe,
                        PendingKind::ExtranonceSubscribe,
                    );
                }
                let username = self.config.username.clone();
                let password = self.config.password.clone();
                self.request(
                    ClientRequest::Authorize {
                        username: Cow::Owned(username),
                        password: Some(Cow::Owned(password)),
                    },
                    PendingKind::Authorize,
                );
                if self.config.profile == Profile::Asic {
                    if let Some(d) = self.config.suggest_difficulty {
                        self.request(
                            ClientRequest::SuggestDifficulty(d),
                            PendingKind::SuggestDifficulty,
                        );
                    }
                }
            }
        }
    }

    fn on_submit_answer(&mut self, id: u64, share: SentShare, r: Response, latency: Duration) {
        let error = match (r.error, &r.result) {
            (Some(e), _) => Some(e),
            (None, Value::Bool(true)) => None,
            (None, other) => Some(StratumError::new(
                ErrorCode(0),
                format!("result {other} without an error"),
            )),
        };
        let job_live = self.slot(share.job_id.as_str()).is_some();
        let c = &mut self.stats.counts;
        let verdict = match &error {
            None => {
                c.accepted += 1;
                if share.kind == ShareKind::Valid {
                    if let (true, Some(s), Some(e1)) = (
                        self.config.record_accepted,
                        &share.submit,
                        share.extranonce1,
                    ) {
                        self.accepted_keys.push(AcceptedKey {
                            job_id: share.job_id.clone(),
                            extranonce1: e1,
                            extranonce2: s.extranonce2,
                            ntime: s.ntime,
                            nonce: s.nonce,
                        });
                    }
                    if let Some(s) = share.submit.clone() {
                        if self.accepted.len() == MAX_ACCEPTED_KEPT {
                            self.accepted.pop_front();
                        }
                        self.accepted.push_back((share.job_id.clone(), s));
                    }
                    Verdict::AsExpected
                } else {
                    c.bad_shares_accepted += 1;
                    Verdict::BadShareAccepted
                }
            }
            Some(e) => {
                c.rejected += 1;
                *c.rejected_by_code.entry(e.code.0).or_default() += 1;
                if e.code == ErrorCode::JOB_NOT_FOUND
                    && !job_live
                    && share.kind != ShareKind::Stale
                    && share.kind != ShareKind::Malformed
                {
                    c.stale_races += 1;
                    Verdict::StaleRace
                } else {
                    match share.kind.expected_error() {
                        None => {
                            c.unexpected_rejects += 1;
                            *c.unexpected_rejects_by_code.entry(e.code.0).or_default() += 1;
                            Verdict::UnexpectedReject
                        }
                        Some(expected) if expected == e.code => {
                            c.expected_rejects += 1;
                            Verdict::AsExpected
                        }
                        Some(expected) => {
                            c.wrong_reject_codes += 1;
                            Verdict::WrongRejectCode { expected }
                        }
                    }
                }
            }
        };
        let problem = match &verdict {
            Verdict::UnexpectedReject => Some(format!(
                "valid share id {id} on job {} rejected: {}",
                share.job_id,
                error.as_ref().map(ToString::to_string).unwrap_or_default()
            )),
            Verdict::BadShareAccepted => Some(format!(
                "{:?} share id {id} on job {} accepted",
                share.kind, share.job_id
            )),
            Verdict::WrongRejectCode { expected } => Some(format!(
                "{:?} share id {id} on job {} rejected with {}, expected code {}",
                share.kind,
                share.job_id,
                error.as_ref().map(ToString::to_string).unwrap_or_default(),
                expected.0
            )),
            Verdict::AsExpected | Verdict::StaleRace => None,
        };
        if let Some(p) = problem {
            self.stats.note_problem(p);
        }
        self.events.push_back(Event::ShareAnswered {
            id,
            kind: share.kind,
            job_id: share.job_id,
            error,
            verdict,
            latency: Some(latency),
        });
    }

    fn handle_notification(&mut self, id: RequestId, body: ServerNotification) {
        match body {
            ServerNotification::Notify(job) => self.on_notify(job),
            ServerNotification::SetDifficulty(d) => {
                self.difficulty = d;
                self.events.push_back(Event::DifficultyChanged(d));
            }
            ServerNotification::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => {
                if !self.extranonce_subscribed {
                    return self.protocol_error(format!(
                        "mining.set_extranonce {extranonce1}/{extranonce2_size} without mining.extranonce.subscribe"
                    ));
                }
                match checked_extranonce2_size(extranonce2_size as u64) {
                    Ok(size) => {
                        self.extranonce1 = Some(extranonce1);
                        self.extranonce2_size = size;
                        self.events.push_back(Event::ExtranonceChanged {
                            extranonce1,
                            extranonce2_size: size,
                        });
                    }
                    Err(e) => self.protocol_error(format!("mining.set_extranonce: {e}")),
                }
            }
            ServerNotification::SetVersionMask(m) => match self.version_mask {
                Some(_) => {
                    if m.0 & !ASIC_VERSION_MASK.0 != 0 {
                        self.protocol_error(format!(
                            "mining.set_version_mask {:08x} outside the requested {:08x}",
                            m.0, ASIC_VERSION_MASK.0
                        ));
                    }
                    self.version_mask = Some(VersionMask::negotiate(ASIC_VERSION_MASK, m));
                }
                None => self.protocol_error(format!(
                    "mining.set_version_mask {:08x} without negotiated version rolling",
                    m.0
                )),
            },
            ServerNotification::Reconnect {
                host,
                port,
                wait_secs,
            } => self.events.push_back(Event::ReconnectRequested {
                host,
                port,
                wait_secs,
            }),
            ServerNotification::ShowMessage(m) => self.events.push_back(Event::Message(m)),
            ServerNotification::Ping => {
                if id != RequestId::Null {
                    let mut out = Vec::new();
                    relay::stratum::encode_result(&id, &json!("pong"), &mut out);
                    self.outgoing
                        .push_back((None, String::from_utf8_lossy(&out).into_owned()));
                }
            }
        }
    }

    fn on_notify(&mut self, job: Job) {
        let Some(extranonce1) = self.extranonce1 else {
            return self.protocol_error(format!(
                "mining.notify for job {} before the subscription was answered",
                job.id
            ));
        };
        let clean = job.clean_jobs;
        if clean {
            for (_, s) in self.jobs.drain(..) {
                if self.dropped.len() == MAX_DROPPED_JOBS {
                    self.dropped.pop_front();
                }
                self.dropped.push_back(s.job.id);
            }
        }
        self.jobs.retain(|(_, s)| s.job.id != job.id);
        self.dropped.retain(|d| *d != job.id);
        if self.jobs.len() == MAX_LIVE_JOBS {
            self.jobs.pop_front();
        }
        let algo = self.config.algorithm;
        let share_target = Target::from_difficulty(self.difficulty, algo.diff1());
        let network_target = Target::from_compact(job.nbits).ok();
        let id = job.id.clone();
        self.job_generation += 1;
        let slot = JobSlot {
            job,
            difficulty: self.difficulty,
            share_target,
            network_target,
            extranonce1,
            extranonce2_size: self.extranonce2_size,
            searched: 0,
            extranonce2_start: self.rng.gen(),
            nonce_start: self.rng.gen(),
            root_cache: None,
        };
        self.jobs.push_back((self.job_generation, slot));
        self.events.push_back(Event::NewJob {
            id,
            clean,
            difficulty: self.difficulty,
        });
    }

    // ---- hashing ----

    /// Spends up to `budget_hashes` proof-of-work hashes on the current job and queues the next
    /// share when one is ready; `None` when the budget ran out first (or there is nothing to
    /// mine yet). The kind of each share is drawn from the share mix; deliberately bad shares
    /// other than low-difficulty ones cost no hashes.
    pub fn next_share(&mut self, budget_hashes: u32) -> Option<Submission> {
        if !self.can_mine() {
            return None;
        }
        let kind = match self.next_kind {
            Some(k) => k,
            None => {
                let k = self.config.mix.pick(self.rng.gen());
                self.next_kind = Some(k);
                k
            }
        };
        let sub = match kind {
            ShareKind::Valid => self.mine(budget_hashes, false),
            ShareKind::Duplicate => match self.duplicate() {
                Some(s) => Some(s),
                // Nothing accepted on a live job yet: mine a valid share instead.
                None => {
                    self.next_kind = Some(ShareKind::Valid);
                    self.mine(budget_hashes, false)
                }
            },
            ShareKind::Stale => Some(self.stale()),
            ShareKind::LowDifficulty => self.low_difficulty(budget_hashes),
            ShareKind::Malformed => Some(self.malformed()),
        };
        if sub.is_some() {
            self.next_kind = None;
        }
        sub
    }

    /// Hashes candidates of the newest job until one meets its share target (or, when
    /// `want_miss`, until one misses both targets).
    fn mine(&mut self, budget: u32, want_miss: bool) -> Option<Submission> {
        let algo = self.config.algorithm;
        let mask = self.rolling_mask();
        let (generation, slot) = self.jobs.back_mut()?;
        let generation = *generation;
        for _ in 0..budget {
            let (work, bits) = slot.next_candidate(mask);
            let hash = algo.hash(&slot.header(&work).to_bytes());
            self.stats.counts.hashes += 1;
            let meets_share = slot.share_target.is_met_by(&hash);
            let meets_network = slot.network_target.is_some_and(|t| t.is_met_by(&hash));
            if meets_share {
                let job_id = slot.job.id.clone();
                if meets_network {
                    self.stats.counts.blocks += 1;
                }
                return Some(self.queue_share(
                    ShareKind::Valid,
                    job_id,
                    work,
                    bits,
                    Some(hash),
                    meets_network,
                ));
            }
            if !meets_network {
                let candidate = LowCandidate {
                    slot_generation: generation,
                    work,
                    version_bits: bits,
                    hash,
                };
                if want_miss {
                    let job_id = slot.job.id.clone();
                    return Some(self.send_low(job_id, candidate));
                }
                self.low_candidate = Some((slot.job.id.clone(), candidate));
            }
        }
        None
    }

    fn rolling_mask(&self) -> Option<VersionMask> {
        match (self.config.profile, self.version_mask) {
            (Profile::Asic, Some(m)) => Some(m),
            _ => None,
        }
    }

    fn duplicate(&mut self) -> Option<Submission> {
        let live: Vec<usize> = (0..self.accepted.len())
            .filter(|&i| self.slot(self.accepted[i].0.as_str()).is_some())
            .collect();
        if live.is_empty() {
            return None;
        }
        let pick = live[self.rng.gen_range(0..live.len())];
        let (job_id, submit) = self.accepted[pick].clone();
        let work = ShareWork {
            extranonce1: self
                .slot(job_id.as_str())
                .map(|s| s.extranonce1)
                .unwrap_or_default(),
            extranonce2: submit.extranonce2,
            ntime: submit.ntime,
            nonce: submit.nonce,
            version: self
                .slot(job_id.as_str())
                .map(|s| s.job.version)
                .unwrap_or(0),
        };
        let (id, line) =
            self.queue_request(submit.clone(), ShareKind::Duplicate, job_id.clone(), None);
        Some(Submission {
            id,
            kind: ShareKind::Duplicate,
            job_id,
            work,
            version_bits: submit.version_bits,
            hash: None,
            is_block: false,
            line,
        })
    }

    fn stale(&mut self) -> Submission {
        let job_id = match self.dropped.back() {
            Some(j) => j.clone(),
            // No job dropped yet: an id the pool never issued.
            None => JobId::new(&format!("{:016x}", self.rng.gen::<u64>() | 1 << 63)),
        };
        let e2 = Extranonce::from_counter(0, self.extranonce2_size).unwrap_or_default();
        let (ntime, version) = self
            .jobs
            .back()
            .map(|(_, s)| (s.job.ntime, s.job.version))
            .unwrap_or_default();
        let work = ShareWork {
            extranonce1: self.extranonce1.unwrap_or_default(),
            extranonce2: e2,
            ntime,
            nonce: self.rng.gen(),
            version,
        };
        let bits = self.rolling_mask().map(|_| 0);
        self.queue_share(ShareKind::Stale, job_id, work, bits, None, false)
    }

    fn low_difficulty(&mut self, budget: u32) -> Option<Submission> {
        let newest = self.jobs.back().map(|(g, _)| *g);
        if let Some((job_id, c)) = self.low_candidate.take() {
            if Some(c.slot_generation) == newest {
                return Some(self.send_low(job_id, c));
            }
        }
        // Search for a miss; a hit found on the way is sent as the valid share it is.
        let budget = budget.min(MAX_LOW_DIFFICULTY_SEARCH);
        let sub = self.mine(budget, true);
        if let Some(s) = &sub {
            if s.kind == ShareKind::Valid {
                // Keep trying for the low-difficulty share next time.
                self.next_kind = Some(ShareKind::LowDifficulty);
            }
        }
        sub
    }

    fn send_low(&mut self, job_id: JobId, c: LowCandidate) -> Submission {
        self.queue_share(
            ShareKind::LowDifficulty,
            job_id,
            c.work,
            c.version_bits,
            Some(c.hash),
            false,
        )
    }

    fn malformed(&mut self) -> Submission {
        let (job_id, work, bits) = match self.jobs.back_mut() {
            Some((_, slot)) => {
                let (w, b) = slot.next_candidate(None);
                (slot.job.id.clone(), w, b)
            }
            // next_share only runs with a job; keep a harmless fallback anyway.
            None => (
                JobId::new("0"),
                ShareWork {
                    extranonce1: Extranonce::default(),
                    extranonce2: Extranonce::default(),
                    ntime: 0,
                    nonce: 0,
                    version: 0,
                },
                None,
            ),
        };
        let id = self.take_id();
        let user = self.config.username.clone();
        self.malformed_sent += 1;
        let params = if self.malformed_sent % 2 == 1 {
            // Bad hex in the nonce.
            json!([
                user,
                job_id.as_str(),
                work.extranonce2.to_hex(),
                format!("{:08x}", work.ntime),
                "zzzzzzzz"
            ])
        } else {
            // Wrong parameter count.
            json!([user, job_id.as_str(), work.extranonce2.to_hex()])
        };
        let mut line = json!({"id": id, "method": "mining.submit", "params": params}).to_string();
        line.push('\n');
        self.pending.insert(
            id,
            PendingRequest {
                kind: PendingKind::Submit(SentShare {
                    kind: ShareKind::Malformed,
                    job_id: job_id.clone(),
                    submit: None,
                    extranonce1: None,
                }),
                sent_at: None,
            },
        );
        self.outgoing.push_back((Some(id), line.clone()));
        Submission {
            id,
            kind: ShareKind::Malformed,
            job_id,
            work,
            version_bits: bits,
            hash: None,
            is_block: false,
            line,
        }
    }

    // ---- plumbing ----

    fn queue_share(
        &mut self,
        kind: ShareKind,
        job_id: JobId,
        work: ShareWork,
        version_bits: Option<u32>,
        hash: Option<Hash256>,
        is_block: bool,
    ) -> Submission {
        let submit = Submit {
            worker: Cow::Owned(self.config.username.clone()),
            job_id: Cow::Owned(job_id.as_str().to_string()),
            extranonce2: work.extranonce2,
            ntime: work.ntime,
            nonce: work.nonce,
            version_bits,
        };
        let (id, line) = self.queue_request(submit, kind, job_id.clone(), Some(work.extranonce1));
        Submission {
            id,
            kind,
            job_id,
            work,
            version_bits,
            hash,
            is_block,
            line,
        }
    }

    fn queue_request(
        &mut self,
        submit: Submit<'static>,
        kind: ShareKind,
        job_id: JobId,
        extranonce1: Option<Extranonce>,
    ) -> (u64, String) {
        let id = self.request(
            ClientRequest::Submit(submit.clone()),
            PendingKind::Submit(SentShare {
                kind,
                job_id,
                submit: Some(submit),
                extranonce1,
            }),
        );
        let line = self
            .outgoing
            .back()
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        (id, line)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn request(&mut self, body: ClientRequest<'_>, kind: PendingKind) -> u64 {
        let id = self.take_id();
        let line = match &body {
            ClientRequest::Submit(s) => encode_submit(id, s),
            _ => Request {
                id: RequestId::Number(id),
                body,
            }
            .encode(),
        };
        self.pending.insert(
            id,
            PendingRequest {
                kind,
                sent_at: None,
            },
        );
        self.outgoing.push_back((Some(id), line));
        id
    }

    fn slot(&self, id: &str) -> Option<&JobSlot> {
        self.jobs
            .iter()
            .rev()
            .map(|(_, s)| s)
            .find(|s| s.job.id.as_str() == id)
    }

    fn protocol_error(&mut self, what: String) {
        self.stats.counts.protocol_errors += 1;
        self.stats.note_problem(format!("protocol: {what}"));
        self.events.push_back(Event::ProtocolError(what));
    }

    fn fail(&mut self, why: String) {
        self.stats.note_problem(why.clone());
        self.state = SessionState::Failed(why.clone());
        self.events.push_back(Event::HandshakeFailed(why));
    }
}

/// The `mining.submit` line [`Request::encode`] writes, byte for byte, without building a
/// `serde_json::Value` first: that tree cost a fifth of the harness's CPU at 50,000 submits/s,
/// CPU the edge under test then did not get.
fn encode_submit(id: u64, s: &Submit<'_>) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(96 + s.worker.len() + s.job_id.len());
    let _ = write!(
        line,
        "{{\"id\":{id},\"method\":\"mining.submit\",\"params\":["
    );
    push_json_str(&mut line, &s.worker);
    line.push(',');
    push_json_str(&mut line, &s.job_id);
    line.push_str(",\"");
    for b in s.extranonce2.as_bytes() {
        let _ = write!(line, "{b:02x}");
    }
    let _ = write!(line, "\",\"{:08x}\",\"{:08x}\"", s.ntime, s.nonce);
    if let Some(v) = s.version_bits {
        let _ = write!(line, ",\"{v:08x}\"");
    }
    line.push_str("]}\n");
    line
}

/// Appends `v` as a JSON string (serde_json's escaping for anything unusual).
fn push_json_str(line: &mut String, v: &str) {
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        line.push('"');
        line.push_str(v);
        line.push('"');
    } else {
        line.push_str(&Value::from(v).to_string());
    }
}

fn checked_extranonce2_size(size: u64) -> Result<usize, String> {
    if size > relay::work::extranonce::MAX_EXTRANONCE_LEN as u64 {
        return Err(format!(
            "extranonce2_size {size} is larger than the {} bytes supported",
            relay::work::extranonce::MAX_EXTRANONCE_LEN
        ));
    }
    Ok(size as usize)
}

/// At most 200 characters of a line, for error messages.
fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::sha256d;
    use relay::stratum::{encode_error, encode_result};
    use relay::work::{CompactTarget, PrevHash};

    const E1: &str = "02070102";

    fn sha_diff() -> Difficulty {
        // diff1 / 2^-29: about one sha256d hash in 8 meets it.
        Difficulty::new(2f64.powi(-29)).unwrap()
    }

    fn scrypt_diff() -> Difficulty {
        Difficulty::new(2f64.powi(-13)).unwrap()
    }

    fn test_job(id: &str, clean: bool, nbits: u32) -> Job {
        Job::new(
            JobId::new(id),
            PrevHash(Hash256([0x11; 32])),
            (0..60u8).collect(),
            (100..140u8).collect(),
            vec![[0xaa; 32], [0xbb; 32]],
            0x2000_0000,
            CompactTarget(nbits),
            0x6650_0000,
            clean,
        )
    }

    #[test]
    fn a_notify_line_seen_before_parses_to_the_same_job_and_a_new_one_to_its_own() {
        let line = |job: Job| {
            let l = ServerNotification::Notify(job).encode(&RequestId::Null);
            l.trim_end().as_bytes().to_vec()
        };
        let first = line(test_job("1", true, 0x1d00ffff));
        let second = line(test_job("2", false, 0x1d00ffff));
        let answer = br#"{"id":7,"result":true,"error":null}"#;
        for l in [&first, &first, &second, &first] {
            assert_eq!(
                parse_pool_line(l).expect("parses"),
                ServerMessage::parse(l).expect("parses")
            );
            // Other lines in between neither use nor disturb it.
            assert_eq!(
                parse_pool_line(answer).expect("parses"),
                ServerMessage::parse(answer).expect("parses")
            );
        }
        // A line that differs in one byte (the job id) is parsed afresh.
        let mut other = first.clone();
        let at = other
            .windows(3)
            .position(|w| w == br#""1""#)
            .expect("job id");
        other[at + 1] = b'9';
        match parse_pool_line(&other).expect("parses") {
            ServerMessage::Notification {
                body: ServerNotification::Notify(j),
                ..
            } => assert_eq!(j.id, JobId::new("9")),
            m => panic!("not a notify: {m:?}"),
        }
        assert!(parse_pool_line(&first[..first.len() - 1]).is_err());
    }

    fn config(profile: Profile, algo: PowAlgorithm) -> SessionConfig {
        let mut c = SessionConfig::new(profile, algo, "acct.rig0");
        c.seed = 7;
        c.suggest_difficulty = Some(Difficulty::new(512.0).unwrap());
        c
    }

    fn drain(s: &mut MinerSession, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| s.poll_transmit(now)).collect()
    }

    fn respond(s: &mut MinerSession, id: u64, result: Value, now: Instant) {
        let mut out = vec![];
        encode_result(&RequestId::Number(id), &result, &mut out);
        s.handle_line(out.trim_ascii_end(), now);
    }

    fn reject(s: &mut MinerSession, id: u64, err: StratumError, now: Instant) {
        let mut out = vec![];
        encode_error(&RequestId::Number(id), &err, &mut out);
        s.handle_line(out.trim_ascii_end(), now);
    }

    fn notify(s: &mut MinerSession, n: ServerNotification, now: Instant) {
        let line = n.encode(&RequestId::Null);
        s.handle_line(line.trim_end().as_bytes(), now);
    }

    /// Plays the pool's side of the handshake, answering whatever the miner sends by method;
    /// returns the methods in the order the miner sent them.
    fn handshake(s: &mut MinerSession, granted_mask: &str, now: Instant) -> Vec<String> {
        let mut methods = vec![];
        loop {
            let lines = drain(s, now);
            if lines.is_empty() {
                return methods;
            }
            for line in lines {
                let r =
                    Request::parse(line.trim_end().as_bytes()).expect("miner sent a valid line");
                let RequestId::Number(id) = r.id else {
                    panic!("ids are numbers")
                };
                let method = match &r.body {
                    ClientRequest::Configure(_) => "mining.configure",
                    ClientRequest::Subscribe { .. } => "mining.subscribe",
                    ClientRequest::Authorize { .. } => "mining.authorize",
                    ClientRequest::ExtranonceSubscribe => "mining.extranonce.subscribe",
                    ClientRequest::SuggestDifficulty(_) => "mining.suggest_difficulty",
                    other => panic!("unexpected {other:?}"),
                };
                methods.push(format!("{method} {}", &line.trim_end()));
                let result = match &r.body {
                    ClientRequest::Configure(_) => {
                        json!({"version-rolling": true, "version-rolling.mask": granted_mask})
                    }
                    ClientRequest::Subscribe { .. } => {
                        json!([
                            [["mining.set_difficulty", "1"], ["mining.notify", "1"]],
                            E1,
                            4
                        ])
                    }
                    _ => json!(true),
                };
                respond(s, id, result, now);
            }
        }
    }

    fn ready(profile: Profile, algo: PowAlgorithm, d: Difficulty, job: &Job) -> MinerSession {
        let now = Instant::now();
        let mut s = MinerSession::new(config(profile, algo));
        handshake(&mut s, "1fffe000", now);
        notify(&mut s, ServerNotification::SetDifficulty(d), now);
        notify(&mut s, ServerNotification::Notify(job.clone()), now);
        assert!(s.can_mine());
        s
    }

    /// Rebuilds the share's header from the job and the submit line alone (not through
    /// `Job::header`) and returns its proof-of-work hash.
    fn rebuild_hash(
        job: &Job,
        e1: &Extranonce,
        line: &str,
        mask: Option<u32>,
        algo: PowAlgorithm,
    ) -> Hash256 {
        let r = Request::parse(line.trim_end().as_bytes()).expect("submit parses");
        let ClientRequest::Submit(sub) = r.body else {
            panic!("not a submit: {line}")
        };
        assert_eq!(sub.job_id, job.id.as_str());
        let mut cb = job.coinb1.clone();
        cb.extend_from_slice(e1.as_bytes());
        cb.extend_from_slice(sub.extranonce2.as_bytes());
        cb.extend_from_slice(&job.coinb2);
        let mut node = sha256d(&cb);
        for b in &job.merkle_branch {
            let mut cat = node.to_vec();
            cat.extend_from_slice(b);
            node = sha256d(&cat);
        }
        let version = match (mask, sub.version_bits) {
            (Some(m), Some(bits)) => {
                assert_eq!(bits & !m, 0, "version bits {bits:08x} outside mask {m:08x}");
                (job.version & !m) | bits
            }
            (None, None) => job.version,
            other => panic!("version bits / mask mismatch: {other:?}"),
        };
        let mut h = [0u8; 80];
        h[0..4].copy_from_slice(&version.to_le_bytes());
        h[4..36].copy_from_slice(&job.prev_hash.0 .0);
        h[36..68].copy_from_slice(&node);
        h[68..72].copy_from_slice(&sub.ntime.to_le_bytes());
        h[72..76].copy_from_slice(&job.nbits.0.to_le_bytes());
        h[76..80].copy_from_slice(&sub.nonce.to_le_bytes());
        algo.hash(&h)
    }

    #[test]
    fn asic_profile_configures_subscribes_then_authorizes_and_suggests_difficulty() {
        let mut s = MinerSession::new(config(Profile::Asic, PowAlgorithm::Scrypt));
        let methods = handshake(&mut s, "1fffe000", Instant::now());
        assert_eq!(methods.len(), 4, "{methods:#?}");
        assert!(methods[0].starts_with("mining.configure"));
        assert!(
            methods[0].contains(r#""version-rolling.mask":"1fffe000""#),
            "{}",
            methods[0]
        );
        assert!(
            methods[0].contains(r#""version-rolling.min-bit-count":2"#),
            "{}",
            methods[0]
        );
        assert!(methods[1].starts_with("mining.subscribe"));
        assert!(methods[1].contains("bmminer/"), "{}", methods[1]);
        assert!(methods[2].starts_with("mining.authorize"));
        assert!(methods[2].contains(r#""acct.rig0""#), "{}", methods[2]);
        assert!(methods[3].starts_with("mining.suggest_difficulty"));
        assert!(methods[3].contains("512"), "{}", methods[3]);
        assert_eq!(s.state(), &SessionState::Ready);
        assert_eq!(s.version_mask(), Some(VersionMask(0x1fff_e000)));
        assert_eq!(s.extranonce1(), Some(Extranonce::from_hex(E1).unwrap()));
        assert_eq!(s.extranonce2_size(), 4);
        assert_eq!(s.stats().counts.protocol_errors, 0);
    }

    #[test]
    fn nicehash_profile_subscribes_to_extranonce_and_mines_later_jobs_with_set_extranonce() {
        let now = Instant::now();
        let mut s = MinerSession::new(config(Profile::NiceHash, PowAlgorithm::Sha256d));
        let methods = handshake(&mut s, "", now);
        let names: Vec<&str> = methods
            .iter()
            .map(|m| m.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "mining.subscribe",
                "mining.extranonce.subscribe",
                "mining.authorize"
            ]
        );
        assert!(methods[0].contains("NiceHash/"), "{}", methods[0]);
        notify(&mut s, ServerNotification::SetDifficulty(sha_diff()), now);
        let old = test_job("1", true, 0x1d00ffff);
        notify(&mut s, ServerNotification::Notify(old.clone()), now);
        let e1b = Extranonce::from_hex("aabbccddee").unwrap();
        notify(
            &mut s,
            ServerNotification::SetExtranonce {
                extranonce1: e1b,
                extranonce2_size: 3,
            },
            now,
        );
        // Still mining the job received before set_extranonce: the old extranonce applies.
        let sub = s.next_share(10_000).expect("a share");
        assert_eq!(sub.work.extranonce1.to_hex(), E1);
        let new = test_job("2", true, 0x1d00ffff);
        notify(&mut s, ServerNotification::Notify(new.clone()), now);
        let sub = s.next_share(10_000).expect("a share");
        assert_eq!(sub.work.extranonce1, e1b);
        assert_eq!(sub.work.extranonce2.len(), 3);
        let target = Target::from_difficulty(sha_diff(), PowAlgorithm::Sha256d.diff1());
        assert!(target.is_met_by(&rebuild_hash(
            &new,
            &e1b,
            &sub.line,
            None,
            PowAlgorithm::Sha256d
        )));
        assert_eq!(s.stats().counts.protocol_errors, 0);
    }

    #[test]
    fn cpuminer_profile_is_plain_and_sends_five_param_submits() {
        let now = Instant::now();
        let mut s = MinerSession::new(config(Profile::Cpuminer, PowAlgorithm::Sha256d));
        let methods = handshake(&mut s, "", now);
        assert_eq!(methods.len(), 2, "{methods:#?}");
        assert!(methods[0].starts_with("mining.subscribe") && methods[0].contains("cpuminer/"));
        assert!(methods[1].starts_with("mining.authorize"));
        notify(&mut s, ServerNotification::SetDifficulty(sha_diff()), now);
        notify(
            &mut s,
            ServerNotification::Notify(test_job("1", true, 0x1d00ffff)),
            now,
        );
        let sub = s.next_share(10_000).expect("a share");
        assert_eq!(sub.version_bits, None);
        let v: Value = serde_json::from_str(&sub.line).unwrap();
        assert_eq!(v["params"].as_array().unwrap().len(), 5);
        // set_extranonce without extranonce.subscribe is a protocol error and is ignored.
        notify(
            &mut s,
            ServerNotification::SetExtranonce {
                extranonce1: Extranonce::from_hex("ff").unwrap(),
                extranonce2_size: 2,
            },
            now,
        );
        assert_eq!(s.stats().counts.protocol_errors, 1);
        assert_eq!(s.extranonce1(), Some(Extranonce::from_hex(E1).unwrap()));
    }

    #[test]
    fn found_scrypt_share_verifies_against_an_independently_rebuilt_header() {
        let job = test_job("bf", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Scrypt, scrypt_diff(), &job);
        let target = Target::from_difficulty(scrypt_diff(), PowAlgorithm::Scrypt.diff1());
        let e1 = Extranonce::from_hex(E1).unwrap();
        for _ in 0..3 {
            let sub = s
                .next_share(2_000)
                .expect("a share within 2000 hashes at 1/8 odds");
            assert_eq!(sub.kind, ShareKind::Valid);
            let hash = rebuild_hash(&job, &e1, &sub.line, None, PowAlgorithm::Scrypt);
            assert_eq!(Some(hash), sub.hash);
            assert!(
                target.is_met_by(&hash),
                "share hash {hash} misses {target:?}"
            );
        }
        let lines = drain(&mut s, Instant::now());
        assert_eq!(lines.len(), 3);
        assert_eq!(s.stats().counts.submitted, 3);
        assert!(s.stats().counts.hashes >= 3);
    }

    #[test]
    fn cached_merkle_root_gives_the_same_header_as_rebuilding_it_across_an_extranonce2_step() {
        let job = test_job("7", true, 0x1d00ffff);
        let mut slot = JobSlot {
            job: job.clone(),
            difficulty: sha_diff(),
            share_target: Target::from_difficulty(sha_diff(), PowAlgorithm::Sha256d.diff1()),
            network_target: None,
            extranonce1: Extranonce::from_counter(0x0102_0304, 4).unwrap(),
            extranonce2_size: 4,
            // Three candidates before the nonce counter wraps into the next extranonce2.
            searched: (1 << 32) - 3,
            extranonce2_start: 41,
            nonce_start: 5,
            root_cache: None,
        };
        let mask = Some(VersionMask(0x1fffe000));
        let mut e2s = Vec::new();
        for _ in 0..6 {
            let (work, _) = slot.next_candidate(mask);
            e2s.push(work.extranonce2);
            assert_eq!(slot.header(&work), job.header(&work));
        }
        assert_ne!(e2s[0], e2s[5], "the run crossed an extranonce2 step");
    }

    #[test]
    fn submit_lines_are_exactly_what_the_library_encoder_writes() {
        let cases = [
            ("acct.rig0", "1f", "0000002a", Some(0x1fffe000)),
            ("acct.rig0", "job 7", "00", None),
            ("we\"ird\\na\u{e9}me\n", "j\"1", "deadbeefcafebabe", Some(0)),
        ];
        for (i, (worker, job, e2, vb)) in cases.into_iter().enumerate() {
            let submit = Submit {
                worker: Cow::Borrowed(worker),
                job_id: Cow::Borrowed(job),
                extranonce2: Extranonce::from_hex(e2).unwrap(),
                ntime: 0x6650_0001,
                nonce: 0x0000_00ff + i as u32,
                version_bits: vb,
            };
            let id = 1u64 << (20 * i);
            let reference = Request {
                id: RequestId::Number(id),
                body: ClientRequest::Submit(submit.clone()),
            }
            .encode();
            assert_eq!(encode_submit(id, &submit), reference);
        }
    }

    #[test]
    fn asic_version_bits_stay_within_the_granted_mask() {
        let now = Instant::now();
        let mut s = MinerSession::new(config(Profile::Asic, PowAlgorithm::Sha256d));
        // The pool grants fewer bits than asked.
        handshake(&mut s, "00ffe000", now);
        assert_eq!(s.version_mask(), Some(VersionMask(0x00ff_e000)));
        notify(&mut s, ServerNotification::SetDifficulty(sha_diff()), now);
        let job = test_job("7", true, 0x1d00ffff);
        notify(&mut s, ServerNotification::Notify(job.clone()), now);
        let e1 = Extranonce::from_hex(E1).unwrap();
        let target = Target::from_difficulty(sha_diff(), PowAlgorithm::Sha256d.diff1());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let sub = s.next_share(10_000).expect("a share");
            let bits = sub.version_bits.expect("6-param submit");
            assert_eq!(bits & !0x00ff_e000, 0);
            assert_eq!(sub.work.version, (job.version & !0x00ff_e000) | bits);
            let hash = rebuild_hash(
                &job,
                &e1,
                &sub.line,
                Some(0x00ff_e000),
                PowAlgorithm::Sha256d,
            );
            assert!(target.is_met_by(&hash));
            seen.insert(bits);
        }
        assert!(seen.len() > 5, "version bits actually roll: {seen:?}");
        // The pool narrows the mask: later shares follow it.
        notify(
            &mut s,
            ServerNotification::SetVersionMask(VersionMask(0x0000_6000)),
            now,
        );
        for _ in 0..20 {
            let sub = s.next_share(10_000).expect("a share");
            assert_eq!(sub.version_bits.unwrap() & !0x0000_6000, 0);
        }
        assert_eq!(s.stats().counts.protocol_errors, 0);
    }

    #[test]
    fn rejected_valid_share_counts_as_unexpected_with_the_pools_code_and_message() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let now = Instant::now();
        let sub = s.next_share(10_000).unwrap();
        drain(&mut s, now);
        reject(&mut s, sub.id, StratumError::low_difficulty(), now);
        let c = &s.stats().counts;
        assert_eq!(c.rejected, 1);
        assert_eq!(c.unexpected_rejects, 1);
        assert_eq!(c.unexpected_rejects_by_code.get(&23), Some(&1));
        assert!(
            s.stats().problems[0].contains("[23] Low difficulty share"),
            "{:?}",
            s.stats().problems
        );
        let ev = std::iter::from_fn(|| s.poll_event()).last().unwrap();
        assert!(
            matches!(
                ev,
                Event::ShareAnswered {
                    verdict: Verdict::UnexpectedReject,
                    ..
                }
            ),
            "{ev:?}"
        );
        assert!(!s.stats().counts.pool_verdicts_correct());
    }

    #[test]
    fn submit_latency_lands_in_the_histogram_in_microseconds() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let t0 = Instant::now();
        let a = s.next_share(10_000).unwrap();
        let b = s.next_share(10_000).unwrap();
        assert_eq!(drain(&mut s, t0).len(), 2);
        respond(&mut s, a.id, json!(true), t0 + Duration::from_micros(1_500));
        respond(&mut s, b.id, json!(true), t0 + Duration::from_millis(40));
        let h = s.latency();
        assert_eq!(h.len(), 2);
        assert!(h.equivalent(h.min(), 1_500), "min {}", h.min());
        assert!(h.equivalent(h.max(), 40_000), "max {}", h.max());
        assert_eq!(s.stats().counts.accepted, 2);
        assert!(s.stats().counts.pool_verdicts_correct());
    }

    #[test]
    fn set_difficulty_applies_only_to_jobs_received_after_it() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let now = Instant::now();
        let harder = Difficulty::new(2f64.powi(-20)).unwrap();
        notify(&mut s, ServerNotification::SetDifficulty(harder), now);
        assert_eq!(s.job_difficulty("1"), Some(sha_diff()));
        // Shares on job 1 still use its difficulty.
        let sub = s.next_share(10_000).unwrap();
        assert_eq!(sub.job_id.as_str(), "1");
        notify(
            &mut s,
            ServerNotification::Notify(test_job("2", false, 0x1d00ffff)),
            now,
        );
        assert_eq!(s.job_difficulty("1"), Some(sha_diff()));
        assert_eq!(s.job_difficulty("2"), Some(harder));
        assert_eq!(
            s.job_ids().map(JobId::as_str).collect::<Vec<_>>(),
            ["1", "2"]
        );
    }

    #[test]
    fn clean_jobs_drops_old_jobs_and_a_stale_race_is_not_unexpected() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let now = Instant::now();
        notify(
            &mut s,
            ServerNotification::Notify(test_job("2", false, 0x1d00ffff)),
            now,
        );
        let sub = s.next_share(10_000).unwrap();
        assert_eq!(sub.job_id.as_str(), "2");
        drain(&mut s, now);
        // A new block: the share crossed the clean notify on the wire.
        notify(
            &mut s,
            ServerNotification::Notify(test_job("3", true, 0x1d00ffff)),
            now,
        );
        assert_eq!(s.job_ids().map(JobId::as_str).collect::<Vec<_>>(), ["3"]);
        reject(&mut s, sub.id, StratumError::stale(), now);
        let c = &s.stats().counts;
        assert_eq!((c.stale_races, c.unexpected_rejects), (1, 0));
        assert!(c.pool_verdicts_correct());
    }

    #[test]
    fn deliberate_bad_shares_are_checked_against_their_expected_codes() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Asic, PowAlgorithm::Sha256d, sha_diff(), &job);
        let now = Instant::now();
        let e1 = Extranonce::from_hex(E1).unwrap();
        let valid = s.next_share(10_000).unwrap();
        drain(&mut s, now);
        respond(&mut s, valid.id, json!(true), now);

        // Duplicate: the accepted share again, same parameters, new id.
        s.set_share_mix("duplicate=1".parse().unwrap());
        let dup = s.next_share(10_000).unwrap();
        assert_eq!(dup.kind, ShareKind::Duplicate);
        let strip_id = |l: &str| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["id"] = Value::Null;
            v
        };
        assert_eq!(strip_id(&dup.line), strip_id(&valid.line));
        drain(&mut s, now);
        reject(&mut s, dup.id, StratumError::duplicate(), now);
        assert_eq!(s.stats().counts.expected_rejects, 1);

        // Low difficulty: a hash that misses the share target.
        s.set_share_mix("low=1".parse().unwrap());
        let low = s.next_share(10_000).unwrap();
        assert_eq!(low.kind, ShareKind::LowDifficulty);
        let target = Target::from_difficulty(sha_diff(), PowAlgorithm::Sha256d.diff1());
        let hash = rebuild_hash(
            &job,
            &e1,
            &low.line,
            Some(0x1fff_e000),
            PowAlgorithm::Sha256d,
        );
        assert!(!target.is_met_by(&hash));
        drain(&mut s, now);
        // The pool wrongly accepts it.
        respond(&mut s, low.id, json!(true), now);
        assert_eq!(s.stats().counts.bad_shares_accepted, 1);

        // Malformed: the pool's codec refuses the line but can read its id.
        s.set_share_mix("malformed=1".parse().unwrap());
        for _ in 0..2 {
            let bad = s.next_share(10_000).unwrap();
            let f = Request::parse(bad.line.trim_end().as_bytes()).unwrap_err();
            assert_eq!(f.id, RequestId::Number(bad.id));
            drain(&mut s, now);
            reject(&mut s, bad.id, f.error.to_stratum(), now);
        }
        assert_eq!(s.stats().counts.expected_rejects, 3);

        // Stale: first an id never issued, then a job dropped by clean_jobs.
        s.set_share_mix("stale=1".parse().unwrap());
        let st = s.next_share(10_000).unwrap();
        assert!(!s.job_ids().any(|j| *j == st.job_id));
        drain(&mut s, now);
        // The pool answers with the wrong code.
        reject(&mut s, st.id, StratumError::other("nope"), now);
        assert_eq!(s.stats().counts.wrong_reject_codes, 1);
        notify(
            &mut s,
            ServerNotification::Notify(test_job("2", true, 0x1d00ffff)),
            now,
        );
        let st = s.next_share(10_000).unwrap();
        assert_eq!(st.job_id.as_str(), "1");
        drain(&mut s, now);
        reject(&mut s, st.id, StratumError::stale(), now);

        let c = &s.stats().counts;
        assert_eq!(c.expected_rejects, 4);
        assert_eq!(
            (
                c.submitted_by_kind.valid,
                c.submitted_by_kind.duplicate,
                c.submitted_by_kind.low_difficulty
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (c.submitted_by_kind.malformed, c.submitted_by_kind.stale),
            (2, 2)
        );
        assert_eq!(c.rejected_by_code.get(&20), Some(&3));
        assert_eq!(c.unexpected_rejects, 0);
        assert_eq!(s.pending_submits(), 0);
    }

    #[test]
    fn responses_to_unknown_ids_and_garbage_are_protocol_errors() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let now = Instant::now();
        respond(&mut s, 999, json!(true), now);
        s.handle_line(
            br#"{"id":null,"result":null,"error":[20,"Malformed",null]}"#,
            now,
        );
        s.handle_line(b"\xff not json", now);
        assert_eq!(s.stats().counts.protocol_errors, 3);
        // The same id answered twice: the second answer is unknown.
        let sub = s.next_share(10_000).unwrap();
        drain(&mut s, now);
        respond(&mut s, sub.id, json!(true), now);
        respond(&mut s, sub.id, json!(true), now);
        assert_eq!(s.stats().counts.protocol_errors, 4);
        assert_eq!(s.stats().counts.accepted, 1);
    }

    #[test]
    fn unanswered_submits_time_out_and_are_counted() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let t0 = Instant::now();
        s.next_share(10_000).unwrap();
        drain(&mut s, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        s.handle_timeout(t0 + Duration::from_secs(31));
        assert_eq!(s.stats().counts.unanswered, 1);
        assert_eq!(s.pending_submits(), 0);
    }

    #[test]
    fn timeouts_follow_the_oldest_unanswered_request_also_when_answers_come_out_of_order() {
        let job = test_job("1", true, 0x1d00ffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                let sub = s.next_share(10_000).unwrap();
                drain(&mut s, t0 + Duration::from_secs(i * 10));
                sub.id
            })
            .collect();
        // The middle one answered first: the oldest still sets the deadline.
        respond(&mut s, ids[1], json!(true), t0 + Duration::from_secs(21));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        s.handle_timeout(t0 + Duration::from_secs(31));
        assert_eq!(s.stats().counts.unanswered, 1);
        // Next the one sent at 20 s; nothing else has expired yet.
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(50)));
        s.handle_timeout(t0 + Duration::from_secs(49));
        assert_eq!(s.pending_submits(), 1);
        respond(&mut s, ids[2], json!(true), t0 + Duration::from_secs(49));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.stats().counts.accepted, 2);
        assert_eq!(s.stats().counts.unanswered, 1);
    }

    #[test]
    fn regtest_shares_that_meet_nbits_count_as_blocks() {
        // Regtest powLimit 0x207fffff: about half of all hashes meet it.
        let job = test_job("1", true, 0x207fffff);
        let mut s = ready(Profile::Cpuminer, PowAlgorithm::Sha256d, sha_diff(), &job);
        let sub = s.next_share(10_000).unwrap();
        assert!(sub.is_block);
        assert_eq!(s.stats().counts.blocks, 1);
    }

    #[test]
    fn share_mix_parses_and_picks_by_fraction() {
        let m: ShareMix = "duplicate=0.1, stale=0.2,low=0.3,malformed=0.1"
            .parse()
            .unwrap();
        assert!((m.valid() - 0.3).abs() < 1e-9);
        assert_eq!(m.pick(0.05), ShareKind::Duplicate);
        assert_eq!(m.pick(0.25), ShareKind::Stale);
        assert_eq!(m.pick(0.55), ShareKind::LowDifficulty);
        assert_eq!(m.pick(0.65), ShareKind::Malformed);
        assert_eq!(m.pick(0.75), ShareKind::Valid);
        assert!("stale=0.7,low=0.7".parse::<ShareMix>().is_err());
        assert!("stale=x".parse::<ShareMix>().is_err());
        assert_eq!("".parse::<ShareMix>().unwrap(), ShareMix::ALL_VALID);
    }
}
