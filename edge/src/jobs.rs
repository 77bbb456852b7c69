//! The job book: the jobs miners may currently work on, as one immutable snapshot.
//!
//! The uplink (or, in the core, the job manager) publishes a new [`JobBook`] whenever work
//! changes; connector threads swap their `Arc` and notify their sessions. A snapshot never
//! changes after it is built, so readers need no lock on the share path.

use relay::stratum::{RequestId, ServerNotification};
use relay::work::{Job, Target, VersionMask};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One job with what validation needs beside it.
#[derive(Debug)]
pub struct JobEntry {
    pub job: Job,
    /// The block target from nBits: a share meeting it is a block candidate.
    pub network_target: Target,
    /// Target of the upstream pool in proxy mining (shares meeting it are forwarded).
    pub upstream_target: Option<Target>,
    /// The version bits the upstream pool lets us roll (proxy mining, the edge's backup
    /// pool): sessions narrow their miners' masks to it (`None`: no limit of its own).
    pub version_mask: Option<VersionMask>,
    /// The `mining.notify` line for this job, encoded once for every session.
    pub notify_line: Arc<str>,
    pub created: Instant,
}

impl JobEntry {
    pub fn new(job: Job, upstream_target: Option<Target>, created: Instant) -> Self {
        // An nBits that does not decode (negative/overflowing) can never be met by a block: treat
        // every share as a non-block rather than refusing the job.
        let network_target = Target::from_compact(job.nbits).unwrap_or(Target::ZERO);
        let notify_line = ServerNotification::Notify(job.clone())
            .encode(&RequestId::Null)
            .into();
        JobEntry {
            job,
            network_target,
            upstream_target,
            version_mask: None,
            notify_line,
            created,
        }
    }

    /// The job limited to the upstream's version-rolling mask.
    pub fn with_version_mask(mut self, mask: Option<VersionMask>) -> Self {
        self.version_mask = mask;
        self
    }
}

/// A job in the book and when it stopped being the newest.
#[derive(Clone, Debug)]
pub struct BookEntry {
    pub entry: Arc<JobEntry>,
    pub superseded_at: Option<Instant>,
}

/// An immutable snapshot of the current work.
#[derive(Clone, Debug, Default)]
pub struct JobBook {
    /// Increases with every published snapshot.
    pub epoch: u64,
    /// Oldest first; the last one is current. Only jobs on the current prevhash are kept.
    pub entries: Vec<BookEntry>,
}

/// How many superseded jobs on the same prevhash are kept for late shares.
pub const MAX_BOOK_JOBS: usize = 8;

impl JobBook {
    pub fn current(&self) -> Option<&Arc<JobEntry>> {
        self.entries.last().map(|e| &e.entry)
    }

    /// The next snapshot with `job` as the current one. A clean job (new prevhash) drops all
    /// older jobs: shares on them are stale.
    pub fn with_job(&self, entry: Arc<JobEntry>, now: Instant) -> JobBook {
        let mut entries: Vec<BookEntry> = if entry.job.clean_jobs
            || self
                .current()
                .is_some_and(|c| c.job.prev_hash != entry.job.prev_hash)
        {
            Vec::new()
        } else {
            self.entries
                .iter()
                .map(|e| BookEntry {
                    entry: e.entry.clone(),
                    superseded_at: e.superseded_at.or(Some(now)),
                })
                .collect()
        };
        entries.push(BookEntry {
            entry,
            superseded_at: None,
        });
        if entries.len() > MAX_BOOK_JOBS {
            entries.drain(..entries.len() - MAX_BOOK_JOBS);
        }
        JobBook {
            epoch: self.epoch + 1,
            entries,
        }
    }

    pub fn find(&self, job_id: &str) -> Option<&BookEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.entry.job.id.as_str() == job_id)
    }

    /// True when no share on `job_id` can be taken any more: the job is gone from the book, or
    /// it was superseded more than `grace` ago.
    pub fn is_stale(&self, job_id: &str, now: Instant, grace: Duration) -> bool {
        match self.find(job_id) {
            Some(e) => e
                .superseded_at
                .is_some_and(|t| now.saturating_duration_since(t) > grace),
            None => true,
        }
    }
}
