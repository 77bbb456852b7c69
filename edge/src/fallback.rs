//! Edge fallback: work from a backup pool while the core is out of reach (sans-IO).
//!
//! An edge normally gets every job from its core shard. When the link is down, miners keep
//! hashing the last job and their shares wait in the spool; that is right for a short outage,
//! but after a long one the last job is worthless (its block is gone) and the farm's hashrate
//! is burnt. With a `[fallback]` pool configured, the edge then becomes a Stratum client of
//! that pool itself: after `after` without a core connection it subscribes to the backup pool,
//! hands its jobs to the miners (translated exactly as the core's proxy does, see
//! [`relay::upstream::translate`]) and forwards the shares that meet the backup pool's target.
//! When the core is back and sends its first job, miners return to it at once (a clean job),
//! and the backup connection is closed a moment later so shares already in flight still go.
//!
//! Shares on backup jobs belong to the backup pool: the core never issued that work, and
//! crediting it there too would pay for it twice. They are recognised by their job id
//! ([`FALLBACK_JOB_PREFIX`], which no core job id has: those are plain hex), never batched to
//! the core, and still step the spool's lane marks past them so the exactly-once bookkeeping of
//! core shares goes on undisturbed.
//!
//! Two plain structs hold the logic: [`Fallback`] decides when to connect, serve and let go,
//! from core link events and a clock passed in; [`BackupWork`] turns the backup pool's jobs
//! into ours and our shares into its submits. The uplink thread drives both and does the I/O.

use crate::jobs::JobEntry;
use relay::quic::Backoff;
use relay::upstream::translate::{
    share_target, translate, upstream_share, ForwardError, JobOrigin, UpstreamWork,
};
use relay::upstream::{ConnectOptions, UpstreamShare};
use relay::wire::ShareData;
use relay::work::{
    Difficulty, Extranonce, ExtranonceError, ExtranonceLayout, Job, JobId, UpstreamCarve,
    VersionMask,
};
use relay::PowAlgorithm;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Job ids of backup-pool work start with this. Core job ids are hex counters, which never
/// contain `-`, so the two can never be mistaken for each other.
pub const FALLBACK_JOB_PREFIX: &str = "fb-";

/// Whether a job id is one of the backup pool's (its shares are not the core's).
pub fn is_fallback_job(job_id: &str) -> bool {
    job_id.starts_with(FALLBACK_JOB_PREFIX)
}

/// After returning to the core, the backup connection stays open this long so that shares
/// accepted just before the switch are still forwarded.
pub const LINGER: Duration = Duration::from_secs(3);

/// Backup-pool jobs kept for late shares.
const JOBS_KEPT: usize = 32;

/// The `[fallback]` section, checked.
#[derive(Clone, Debug)]
pub struct FallbackConfig {
    /// The backup pool, our account there, TLS roots for `stratum+ssl://`.
    pub connect: ConnectOptions,
    /// Core unreachable this long: miners get the backup pool's work.
    pub after: Duration,
}

/// What the shell should do with the backup connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackAction {
    Connect,
    Disconnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Idle,
    /// Started, handshake not finished.
    Connecting,
    Ready,
}

/// When to use the backup pool (see the module docs).
#[derive(Debug)]
pub struct Fallback {
    after: Duration,
    /// Since when the core has been unreachable; `None` while its link is up.
    core_down_since: Option<Instant>,
    /// Miners are working on the backup pool's jobs.
    serving: bool,
    conn: Conn,
    /// A failed or lost backup connection is retried from here.
    retry_at: Option<Instant>,
    /// Back on the core: the backup connection closes at this instant.
    close_at: Option<Instant>,
    backoff: Backoff,
}

impl Fallback {
    /// An edge just started: the core counts as unreachable from `now` until its first Welcome.
    pub fn new(after: Duration, now: Instant) -> Self {
        Fallback {
            after,
            core_down_since: Some(now),
            serving: false,
            conn: Conn::Idle,
            retry_at: None,
            close_at: None,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// Miners are on backup work now.
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    fn wants_backup(&self, now: Instant) -> bool {
        self.serving
            || self
                .core_down_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.after)
    }

    /// The core link is up (Welcome). Miners stay on backup work until the core's first job;
    /// a backup connection that was not serving yet is no longer needed.
    pub fn core_connected(&mut self) -> Option<FallbackAction> {
        self.core_down_since = None;
        if !self.serving && self.conn != Conn::Idle && self.close_at.is_none() {
            self.conn = Conn::Idle;
            return Some(FallbackAction::Disconnect);
        }
        None
    }

    /// The core link is gone: the clock towards `after` starts.
    pub fn core_lost(&mut self, now: Instant) {
        self.core_down_since.get_or_insert(now);
    }

    /// A job from the core. Returns true when miners were on backup work: the core's job must
    /// then go out as a clean job, so they drop the backup pool's work at once.
    pub fn core_job(&mut self, now: Instant) -> bool {
        self.core_down_since = None;
        if !self.serving {
            return false;
        }
        self.serving = false;
        if self.conn != Conn::Idle {
            self.close_at = Some(now + LINGER);
        }
        true
    }

    /// The backup pool finished the handshake.
    pub fn backup_ready(&mut self) {
        if self.conn == Conn::Connecting {
            self.conn = Conn::Ready;
            self.backoff.reset();
        }
    }

    /// A job from the backup pool: `Some(clean)` when it should go to the miners (`clean`
    /// when it is the first since they left the core's work), `None` when the core serves.
    pub fn backup_job(&mut self, now: Instant) -> Option<bool> {
        if self.conn != Conn::Ready || self.close_at.is_some() || !self.wants_backup(now) {
            return None;
        }
        if self.serving {
            Some(false)
        } else {
            self.serving = true;
            Some(true)
        }
    }

    /// The backup connection ended (not by a [`FallbackAction::Disconnect`]); `unit` is a
    /// random number in `[0, 1)` for the retry jitter.
    pub fn backup_closed(&mut self, now: Instant, unit: f64) {
        self.conn = Conn::Idle;
        self.close_at = None;
        self.retry_at = Some(now + self.backoff.next_delay(unit));
    }

    /// What to do now, if anything.
    pub fn poll(&mut self, now: Instant) -> Option<FallbackAction> {
        if let Some(t) = self.close_at {
            if now >= t {
                self.close_at = None;
                if self.conn != Conn::Idle {
                    self.conn = Conn::Idle;
                    return Some(FallbackAction::Disconnect);
                }
            }
        }
        if self.conn == Conn::Idle
            && self.close_at.is_none()
            && self.wants_backup(now)
            && self.retry_at.is_none_or(|t| now >= t)
        {
            self.retry_at = None;
            self.conn = Conn::Connecting;
            return Some(FallbackAction::Connect);
        }
        None
    }

    /// The next instant [`Fallback::poll`] may have something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = if self.conn == Conn::Idle && !self.serving {
            self.core_down_since.map(|t| t + self.after)
        } else {
            None
        };
        [due, self.retry_at, self.close_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The backup pool's side of the work: its extranonce, difficulty, mask and jobs.
#[derive(Debug)]
pub struct BackupWork {
    algorithm: PowAlgorithm,
    /// Counts connections and extranonce changes: jobs of an earlier one are void upstream.
    generation: u64,
    carve: Option<UpstreamCarve>,
    difficulty: Option<Difficulty>,
    version_mask: Option<VersionMask>,
    /// The pool's newest job on this generation.
    last_job: Option<Job>,
    origins: HashMap<JobId, JobOrigin>,
    order: VecDeque<JobId>,
    next_id: u64,
}

impl BackupWork {
    /// `first_id` seeds the job counter; pass something that grows across restarts (Unix
    /// milliseconds) so a late share from before a restart never names a new job.
    pub fn new(algorithm: PowAlgorithm, first_id: u64) -> Self {
        BackupWork {
            algorithm,
            generation: 0,
            carve: None,
            difficulty: None,
            version_mask: None,
            last_job: None,
            origins: HashMap::new(),
            order: VecDeque::new(),
            next_id: first_id,
        }
    }

    /// A new connection: everything the last one said is void.
    pub fn connecting(&mut self) {
        self.generation += 1;
        self.carve = None;
        self.difficulty = None;
        self.version_mask = None;
        self.last_job = None;
    }

    /// Subscribed and authorized: fits our miners' extranonce space (`layout`) under the
    /// pool's. An error names the sizes; the pool cannot be used.
    pub fn ready(
        &mut self,
        layout: ExtranonceLayout,
        extranonce1: Extranonce,
        extranonce2_size: usize,
        version_mask: Option<VersionMask>,
    ) -> Result<(), ExtranonceError> {
        self.carve = Some(layout.carve_under(extranonce1, extranonce2_size)?);
        self.version_mask = version_mask;
        Ok(())
    }

    /// `mining.set_extranonce`: later jobs use it, earlier ones are void upstream.
    pub fn set_extranonce(
        &mut self,
        layout: ExtranonceLayout,
        extranonce1: Extranonce,
        extranonce2_size: usize,
    ) -> Result<(), ExtranonceError> {
        let carve = layout.carve_under(extranonce1, extranonce2_size);
        self.generation += 1;
        self.carve = carve.as_ref().ok().copied();
        carve.map(|_| ())
    }

    pub fn set_difficulty(&mut self, d: Difficulty) {
        self.difficulty = Some(d);
    }

    pub fn set_version_mask(&mut self, m: VersionMask) {
        self.version_mask = Some(m);
    }

    pub fn is_ready(&self) -> bool {
        self.carve.is_some()
    }

    /// The pool's newest job (kept until it can be translated).
    pub fn upstream_job(&mut self, job: Job) {
        self.last_job = Some(job);
    }

    pub fn has_job(&self) -> bool {
        self.last_job.is_some()
    }

    /// The pool's newest job as a job for our miners: a `fb-` id, the pool's target and mask.
    pub fn translate_last(&mut self, force_clean: bool, now: Instant) -> Option<JobEntry> {
        let (up, carve) = (self.last_job.as_ref()?, self.carve?);
        let difficulty = self
            .difficulty
            .unwrap_or_else(|| Difficulty::new(1.0).expect("1 is a difficulty"));
        let work = UpstreamWork {
            upstream: 0,
            generation: self.generation,
            carve,
            difficulty,
            version_mask: self.version_mask,
        };
        let id = JobId::new(&format!("{FALLBACK_JOB_PREFIX}{:x}", self.next_id));
        self.next_id += 1;
        let job = translate(up, &work, id.clone(), force_clean || up.clean_jobs);
        let target = share_target(difficulty, self.algorithm);
        self.origins.insert(
            id.clone(),
            JobOrigin {
                work,
                upstream_job_id: up.id.clone(),
                target,
                job_version: up.version,
            },
        );
        self.order.push_back(id);
        while self.order.len() > JOBS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.origins.remove(&old);
            }
        }
        Some(
            JobEntry::new(job, Some(target), now)
                .with_version_mask(Some(self.version_mask.unwrap_or(VersionMask::NONE))),
        )
    }

    /// The submit for one of our shares on a backup job. `achieved` is the difficulty its hash
    /// reached: a share is sent only if it meets the pool's target both as issued with the job
    /// and as the pool asks now (never forwarded into a low-difficulty reject).
    pub fn forward(&self, share: &ShareData, achieved: f64) -> Result<UpstreamShare, ForwardError> {
        let origin = self
            .origins
            .get(&share.job_id)
            .ok_or_else(|| ForwardError::UnknownJob(share.job_id.clone()))?;
        if origin.work.generation != self.generation || self.carve.is_none() {
            return Err(ForwardError::OldConnection);
        }
        let issued = origin.work.difficulty.value();
        let needed = self.difficulty.map_or(issued, |d| d.value().max(issued));
        if !share.meets_upstream || achieved < needed {
            return Err(ForwardError::BelowTarget { achieved, needed });
        }
        upstream_share(origin, share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::work::{CompactTarget, PrevHash, ShareWork, Target};
    use relay::Hash256;

    const AFTER: Duration = Duration::from_secs(60);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backup_connects_only_after_the_core_was_unreachable_for_after() {
        let t0 = Instant::now();
        let mut f = Fallback::new(AFTER, t0);
        assert_eq!(f.poll(t0 + s(59)), None);
        assert_eq!(f.poll_timeout(), Some(t0 + AFTER));
        assert_eq!(f.poll(t0 + s(60)), Some(FallbackAction::Connect));
        assert_eq!(f.poll(t0 + s(61)), None, "one connection at a time");
    }

    #[test]
    fn a_core_that_comes_back_in_time_keeps_the_miners() {
        let t0 = Instant::now();
        let mut f = Fallback::new(AFTER, t0);
        assert_eq!(f.core_connected(), None);
        assert!(!f.core_job(t0 + s(1)));
        f.core_lost(t0 + s(100));
        assert_eq!(f.poll(t0 + s(159)), None, "the clock starts at the loss");
        f.core_connected();
        assert_eq!(f.poll(t0 + s(500)), None);
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn backup_jobs_are_served_first_clean_then_as_they_come() {
        let t0 = Instant::now();
        let mut f = Fallback::new(AFTER, t0);
        assert_eq!(f.backup_job(t0), None, "no connection, no serving");
        assert_eq!(f.poll(t0 + s(60)), Some(FallbackAction::Connect));
        assert_eq!(f.backup_job(t0 + s(60)), None, "handshake not finished");
        f.backup_ready();
        assert_eq!(f.backup_job(t0 + s(61)), Some(true));
        assert!(f.is_serving());
        assert_eq!(f.backup_job(t0 + s(90)), Some(false));
    }

    #[test]
    fn the_cores_first_job_takes_the_miners_back_and_the_backup_lingers_then_closes() {
        let t0 = Instant::now();
        let mut f = Fallback::new(AFTER, t0);
        f.poll(t0 + s(60));
        f.backup_ready();
        f.backup_job(t0 + s(61));
        // Welcome alone does not move the miners: the core has no job for them yet.
        assert_eq!(f.core_connected(), None);
        assert!(f.is_serving());
        assert_eq!(f.backup_job(t0 + s(70)), Some(false));
        assert!(f.core_job(t0 + s(71)), "the core's job goes out clean");
        assert!(!f.is_serving());
        assert_eq!(
            f.backup_job(t0 + s(72)),
            None,
            "backup jobs no longer published"
        );
        assert_eq!(f.poll_timeout(), Some(t0 + s(71) + LINGER));
        assert_eq!(f.poll(t0 + s(72)), None);
        assert_eq!(
            f.poll(t0 + s(71) + LINGER),
            Some(FallbackAction::Disconnect)
        );
        assert_eq!(f.poll(t0 + s(500)), None);
        assert!(!f.core_job(t0 + s(501)));
    }

    #[test]
    fn a_core_welcome_before_the_backup_serves_cancels_the_backup_connection() {
        let t0 = Instant::now();
        let mut f = Fallback::new(AFTER, t0);
        assert_eq!(f.poll(t0 + s(60)), Some(FallbackAction::Connect));
        assert_eq!(f.core_connected(), Some(FallbackAction::Disconnect));
        f.backup_ready();
        assert_eq!(f.backup_job(t0 + s(61)), None);
        assert_eq!(f.poll(t0 + s(1000)), None);
    }

    #[test]
    fn a_lost_backup_is_retried_with_backoff_while_still_needed() {
        let t0 = Instant::now();
        let mut f = Fallback::new(AFTER, t0);
        f.poll(t0 + s(60));
        f.backup_ready();
        f.backup_job(t0 + s(61));
        f.backup_closed(t0 + s(62), 0.0);
        assert_eq!(f.poll_timeout(), Some(t0 + s(63)));
        assert_eq!(f.poll(t0 + s(62)), None);
        assert_eq!(f.poll(t0 + s(63)), Some(FallbackAction::Connect));
        // Serving survives the reconnect even if the core link flapped meanwhile.
        f.core_connected();
        f.core_lost(t0 + s(64));
        f.backup_ready();
        assert_eq!(f.backup_job(t0 + s(65)), Some(false));
        // A failing handshake backs off further.
        f.backup_closed(t0 + s(66), 0.999);
        assert!(f.poll_timeout().unwrap() > t0 + s(67));
    }

    fn upstream_job(id: &str, clean: bool) -> Job {
        Job::new(
            JobId::new(id),
            PrevHash(Hash256([7; 32])),
            hex::decode("0100000001000000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008").unwrap(),
            hex::decode("072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000").unwrap(),
            vec![[3; 32]],
            0x2000_0000,
            CompactTarget(0x1d00_ffff),
            0x6500_0000,
            clean,
        )
    }

    fn layout() -> ExtranonceLayout {
        ExtranonceLayout::default()
    }

    fn ready_work() -> BackupWork {
        let mut w = BackupWork::new(PowAlgorithm::Sha256d, 0x100);
        w.connecting();
        w.ready(
            layout(),
            Extranonce::from_hex("f00d").unwrap(),
            10,
            Some(VersionMask(0x00ff_e000)),
        )
        .unwrap();
        w.set_difficulty(Difficulty::new(0.5).unwrap());
        w
    }

    fn share_on(entry: &JobEntry, version: u32, meets: bool) -> ShareData {
        ShareData {
            worker: "alice.rig1".into(),
            job_id: entry.job.id.clone(),
            extranonce1: Extranonce::from_hex("02070102").unwrap(),
            extranonce2: Extranonce::from_hex("0000beef").unwrap(),
            ntime: entry.job.ntime,
            nonce: 42,
            version,
            difficulty: Difficulty::new(0.1).unwrap(),
            received_at_ms: 0,
            meets_upstream: meets,
        }
    }

    #[test]
    fn backup_jobs_get_fb_ids_the_pools_target_and_mask_and_rebuild_the_pools_header() {
        let mut w = ready_work();
        assert!(
            w.translate_last(true, Instant::now()).is_none(),
            "no job yet"
        );
        let up = upstream_job("abc", false);
        w.upstream_job(up.clone());
        let entry = w.translate_last(true, Instant::now()).unwrap();
        assert_eq!(entry.job.id.as_str(), "fb-100");
        assert!(is_fallback_job(entry.job.id.as_str()));
        assert!(entry.job.clean_jobs, "forced clean");
        assert_eq!(entry.version_mask, Some(VersionMask(0x00ff_e000)));
        assert_eq!(
            entry.upstream_target,
            Some(Target::from_difficulty(
                Difficulty::new(0.5).unwrap(),
                Target::SHA256_DIFF1
            ))
        );
        let next = w.translate_last(false, Instant::now()).unwrap();
        assert_eq!(next.job.id.as_str(), "fb-101");
        assert!(!next.job.clean_jobs);

        let share = share_on(&entry, 0x2000_6000, true);
        let fwd = w.forward(&share, 0.7).unwrap();
        assert_eq!(fwd.job_id.as_str(), "abc");
        // pad (10 - 8 bytes) ‖ miner extranonce1 ‖ miner extranonce2
        assert_eq!(fwd.extranonce2.to_hex(), "0000020701020000beef");
        assert_eq!(fwd.version_bits, Some(0x0000_6000));
        let ours = entry.job.header(&ShareWork {
            extranonce1: share.extranonce1,
            extranonce2: share.extranonce2,
            ntime: share.ntime,
            nonce: share.nonce,
            version: share.version,
        });
        let theirs = up.header(&ShareWork {
            extranonce1: Extranonce::from_hex("f00d").unwrap(),
            extranonce2: fwd.extranonce2,
            ntime: fwd.ntime,
            nonce: fwd.nonce,
            version: 0x2000_6000,
        });
        assert_eq!(ours.to_bytes(), theirs.to_bytes());
    }

    #[test]
    fn shares_below_the_pools_target_or_of_an_old_connection_are_not_forwarded() {
        let mut w = ready_work();
        w.upstream_job(upstream_job("abc", true));
        let entry = w.translate_last(false, Instant::now()).unwrap();
        assert!(matches!(
            w.forward(&share_on(&entry, 0x2000_0000, false), 0.4),
            Err(ForwardError::BelowTarget { .. })
        ));
        // The pool raised its difficulty since the job: the stricter one counts.
        w.set_difficulty(Difficulty::new(2.0).unwrap());
        assert!(matches!(
            w.forward(&share_on(&entry, 0x2000_0000, true), 0.7),
            Err(ForwardError::BelowTarget { needed, .. }) if needed == 2.0
        ));
        assert!(w.forward(&share_on(&entry, 0x2000_0000, true), 2.5).is_ok());
        // Bits outside the pool's mask are never sent.
        assert!(matches!(
            w.forward(&share_on(&entry, 0x3000_0000, true), 2.5),
            Err(ForwardError::VersionMask { .. })
        ));
        // A new extranonce voids the jobs issued under the old one.
        w.set_extranonce(layout(), Extranonce::from_hex("beef").unwrap(), 8)
            .unwrap();
        assert_eq!(
            w.forward(&share_on(&entry, 0x2000_0000, true), 2.5),
            Err(ForwardError::OldConnection)
        );
        w.connecting();
        let unknown = ShareData {
            job_id: JobId::new("fb-1"),
            ..share_on(&entry, 0x2000_0000, true)
        };
        assert!(matches!(
            w.forward(&unknown, 9.0),
            Err(ForwardError::UnknownJob(_))
        ));
    }

    #[test]
    fn a_pool_leaving_too_little_extranonce_space_is_refused_naming_the_sizes() {
        let mut w = BackupWork::new(PowAlgorithm::Sha256d, 1);
        w.connecting();
        let e = w
            .ready(layout(), Extranonce::from_hex("01").unwrap(), 4, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("extranonce2_size is 4 bytes") && e.contains("needs 8"),
            "{e}"
        );
        assert!(!w.is_ready());
    }

    #[test]
    fn core_job_ids_are_never_taken_for_backup_ones() {
        for n in [0u64, 0xfb, 0xfb00_0000_0000, u64::MAX] {
            assert!(!is_fallback_job(JobId::from_counter(n).as_str()));
        }
        assert!(is_fallback_job("fb-1a"));
    }
}
