//! Proof-of-work validation of one share: the edge's honesty.
//!
//! Many proxies answer "accepted" to everything and let the pool sort it out. Quarry's edge
//! rebuilds the exact header each share claims — coinbase from coinb1 ‖ extranonce1 ‖
//! extranonce2 ‖ coinb2, merkle root from the job's branch, version after rolling — hashes it
//! with the coin's algorithm and compares against the share, upstream and network targets. Only
//! then does the miner hear "accepted". The core re-runs this same code to audit edges.

use crate::jobs::JobEntry;
use relay::hash::Hash256;
use relay::pow::PowAlgorithm;
use relay::work::{hash_difficulty, BlockHeader, ShareWork, Target};

/// Largest ntime roll forward accepted (Bitcoin's own future-block limit is two hours).
pub const MAX_NTIME_ROLL_SECS: u32 = 7200;

/// A share that passed every check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validated {
    pub header: BlockHeader,
    pub pow_hash: Hash256,
    /// Difficulty its hash reached.
    pub achieved: f64,
    pub is_block: bool,
    pub meets_upstream: bool,
}

/// Why a share's proof of work failed (job lookup, duplicates and authorization are the
/// session's business; this is only about the bytes).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PowReject {
    #[error("extranonce2 has {got} bytes, expected {expected}")]
    Extranonce2Size { got: usize, expected: usize },
    #[error("ntime {ntime:08x} is outside the job's window [{min:08x}, {max:08x}]")]
    NtimeOutOfRange { ntime: u32, min: u32, max: u32 },
    #[error("hash does not meet the share target (difficulty {achieved:.6})")]
    LowDifficulty { achieved: f64 },
}

/// Checks one share against `job`. `share_target` is the session's target for this job.
#[inline]
pub fn validate_share(
    algo: PowAlgorithm,
    job: &JobEntry,
    work: &ShareWork,
    expected_extranonce2: usize,
    share_target: &Target,
) -> Result<Validated, PowReject> {
    validate_share_with_root(algo, job, work, expected_extranonce2, share_target, None)
}

/// [`validate_share`], given the merkle root of `work`'s extranonces on this job if the caller
/// knows it. A miner rolls nonce and version under one extranonce2 for many shares; the root
/// (coinbase hash and the branch, 39 of a share's 42 SHA-256 compressions with a 12-level
/// branch) is the same for all of them, so a session that remembers it hashes only the header.
/// The root must be `job.job`'s for `work.extranonce1` and `work.extranonce2`.
#[inline]
pub fn validate_share_with_root(
    algo: PowAlgorithm,
    job: &JobEntry,
    work: &ShareWork,
    expected_extranonce2: usize,
    share_target: &Target,
    merkle_root: Option<Hash256>,
) -> Result<Validated, PowReject> {
    if work.extranonce2.len() != expected_extranonce2 {
        return Err(PowReject::Extranonce2Size {
            got: work.extranonce2.len(),
            expected: expected_extranonce2,
        });
    }
    let min = job.job.ntime;
    let max = job.job.ntime.saturating_add(MAX_NTIME_ROLL_SECS);
    if work.ntime < min || work.ntime > max {
        return Err(PowReject::NtimeOutOfRange {
            ntime: work.ntime,
            min,
            max,
        });
    }
    let header = match merkle_root {
        Some(root) => BlockHeader {
            version: work.version,
            prev_hash: job.job.prev_hash.0,
            merkle_root: root,
            time: work.ntime,
            bits: job.job.nbits.0,
            nonce: work.nonce,
        },
        None => job.job.header(work),
    };
    let pow_hash = algo.hash(&header.to_bytes());
    if !share_target.is_met_by(&pow_hash) {
        return Err(PowReject::LowDifficulty {
            achieved: hash_difficulty(&pow_hash, algo.diff1()),
        });
    }
    Ok(Validated {
        header,
        pow_hash,
        achieved: hash_difficulty(&pow_hash, algo.diff1()),
        is_block: job.network_target.is_met_by(&pow_hash),
        meets_upstream: job.upstream_target.is_some_and(|t| t.is_met_by(&pow_hash)),
    })
}
