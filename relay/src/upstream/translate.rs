//! Upstream jobs in, Quarry jobs out; Quarry shares in, upstream submits out (no I/O).
//!
//! Shared by the core's proxy (`core_pool::proxy`) and the edge's backup pool
//! (`edge::fallback`): both hand an upstream pool's work to miners the same way.
//!
//! An upstream job is handed to our miners almost unchanged: the upstream's extranonce1 (and
//! any spare extranonce2 bytes) move to the end of coinb1 ([`UpstreamCarve`]), so our miners
//! roll the extranonce1 Quarry gives them and their own extranonce2 inside the space the
//! upstream left us. The job gets a Quarry job id (ids from several upstreams must never
//! collide), and the upstream's share target rides along so edges can flag the shares worth
//! forwarding. Going back, a share becomes the upstream's job id, `pad ‖ extranonce1 ‖
//! extranonce2` as its extranonce2, and the version bits inside the upstream's mask.

use super::session::UpstreamShare;
use crate::wire::ShareData;
use crate::work::{Difficulty, Job, JobId, Target, UpstreamCarve, VersionMask};
use crate::PowAlgorithm;

/// What one upstream connection currently says about its work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpstreamWork {
    /// Index in the configured upstream list (the edge's single backup pool is 0).
    pub upstream: usize,
    /// Counts connections to that upstream: jobs of an earlier connection are unknown to it.
    pub generation: u64,
    pub carve: UpstreamCarve,
    pub difficulty: Difficulty,
    pub version_mask: Option<VersionMask>,
}

/// Where a Quarry job came from, kept to forward its shares.
#[derive(Clone, Debug, PartialEq)]
pub struct JobOrigin {
    pub work: UpstreamWork,
    pub upstream_job_id: JobId,
    /// The upstream's share target when the job was issued.
    pub target: Target,
    pub job_version: u32,
}

/// The Quarry job for an upstream job.
pub fn translate(up: &Job, work: &UpstreamWork, id: JobId, clean: bool) -> Job {
    let mut coinb1 = up.coinb1.clone();
    coinb1.extend_from_slice(&work.carve.coinb1_suffix());
    Job::new(
        id,
        up.prev_hash,
        coinb1,
        up.coinb2.clone(),
        up.merkle_branch.clone(),
        up.version,
        up.nbits,
        up.ntime,
        clean,
    )
}

/// The share target of a difficulty under the upstream's algorithm.
pub fn share_target(difficulty: Difficulty, algorithm: PowAlgorithm) -> Target {
    Target::from_difficulty(difficulty, algorithm.diff1())
}

/// Why a share was not forwarded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForwardError {
    #[error("job {0} is not a job of any upstream we remember")]
    UnknownJob(JobId),
    #[error("its upstream connection has been replaced since the job was issued")]
    OldConnection,
    #[error("extranonce: {0}")]
    Extranonce(String),
    #[error("version bits {bits:08x} are outside the upstream's mask {mask:08x}")]
    VersionMask { bits: u32, mask: u32 },
    #[error(
        "the share does not meet the upstream target (difficulty {achieved:.4} < {needed:.4})"
    )]
    BelowTarget { achieved: f64, needed: f64 },
    #[error("already forwarded")]
    Duplicate,
    #[error("the upstream has moved to a new block since the job was issued")]
    Stale,
}

/// The upstream submit for one of our shares on a job of `origin`.
pub fn upstream_share(
    origin: &JobOrigin,
    share: &ShareData,
) -> Result<UpstreamShare, ForwardError> {
    let extranonce2 = origin
        .work
        .carve
        .upstream_extranonce2(&share.extranonce1, &share.extranonce2)
        .map_err(|e| ForwardError::Extranonce(e.to_string()))?;
    let rolled = share.version ^ origin.job_version;
    let version_bits = match origin.work.version_mask {
        _ if rolled == 0 => None,
        Some(mask) if rolled & !mask.0 == 0 => Some(share.version & mask.0),
        mask => {
            return Err(ForwardError::VersionMask {
                bits: rolled,
                mask: mask.map_or(0, |m| m.0),
            })
        }
    };
    Ok(UpstreamShare {
        job_id: origin.upstream_job_id.clone(),
        extranonce2,
        ntime: share.ntime,
        nonce: share.nonce,
        version_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::{CompactTarget, Extranonce, ExtranonceLayout, PrevHash, ShareWork};
    use crate::Hash256;

    fn upstream_job() -> Job {
        Job::new(
            JobId::new("up-1f"),
            PrevHash(Hash256([7; 32])),
            hex::decode("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008").unwrap(),
            hex::decode("072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000").unwrap(),
            vec![[3; 32], [4; 32]],
            0x2000_0000,
            CompactTarget(0x1d00_ffff),
            0x6500_0000,
            true,
        )
    }

    #[test]
    fn our_header_is_the_upstreams_header_for_the_forwarded_extranonce2() {
        let layout = ExtranonceLayout::default();
        let up_e1 = Extranonce::from_hex("f000000d").unwrap();
        let carve = layout.carve_under(up_e1, 12).unwrap();
        let work = UpstreamWork {
            upstream: 0,
            generation: 1,
            carve,
            difficulty: Difficulty::new(1.0).unwrap(),
            version_mask: Some(VersionMask::BIP320),
        };
        let up = upstream_job();
        let ours = translate(&up, &work, JobId::new("q1"), true);
        let e1 = layout
            .miner_extranonce1(&layout.edge_prefix(3, 9).unwrap(), 77)
            .unwrap();
        let e2 = Extranonce::from_hex("00c0ffee").unwrap();
        let share = ShareData {
            worker: "alice.rig1".into(),
            job_id: ours.id.clone(),
            extranonce1: e1,
            extranonce2: e2,
            ntime: 0x6500_0003,
            nonce: 0x1234_5678,
            version: 0x2000_4000,
            difficulty: Difficulty::new(1.0).unwrap(),
            received_at_ms: 0,
            meets_upstream: true,
        };
        let origin = JobOrigin {
            work,
            upstream_job_id: up.id.clone(),
            target: share_target(work.difficulty, PowAlgorithm::Sha256d),
            job_version: up.version,
        };
        let fwd = upstream_share(&origin, &share).unwrap();
        assert_eq!(fwd.job_id.as_str(), "up-1f");
        assert_eq!(fwd.extranonce2.len(), 12);
        assert_eq!(fwd.version_bits, Some(0x0000_4000));
        // The header the upstream rebuilds equals the one our miner hashed.
        let mine = ours.header(&ShareWork {
            extranonce1: e1,
            extranonce2: e2,
            ntime: share.ntime,
            nonce: share.nonce,
            version: share.version,
        });
        let theirs = up.header(&ShareWork {
            extranonce1: up_e1,
            extranonce2: fwd.extranonce2,
            ntime: fwd.ntime,
            nonce: fwd.nonce,
            version: VersionMask::BIP320
                .apply(up.version, fwd.version_bits.unwrap())
                .unwrap(),
        });
        assert_eq!(mine.to_bytes(), theirs.to_bytes());
    }

    #[test]
    fn bits_outside_the_upstream_mask_are_not_forwarded() {
        let layout = ExtranonceLayout::default();
        let work = UpstreamWork {
            upstream: 0,
            generation: 1,
            carve: layout
                .carve_under(Extranonce::from_hex("01").unwrap(), 8)
                .unwrap(),
            difficulty: Difficulty::new(1.0).unwrap(),
            version_mask: Some(VersionMask(0x0000_6000)),
        };
        let origin = JobOrigin {
            work,
            upstream_job_id: JobId::new("1"),
            target: Target::MAX,
            job_version: 0x2000_0000,
        };
        let mut share = ShareData {
            worker: "a.b".into(),
            job_id: JobId::new("q"),
            extranonce1: Extranonce::from_hex("00010000").unwrap(),
            extranonce2: Extranonce::from_hex("00000000").unwrap(),
            ntime: 1,
            nonce: 1,
            version: 0x2000_8000,
            difficulty: Difficulty::new(1.0).unwrap(),
            received_at_ms: 0,
            meets_upstream: true,
        };
        assert_eq!(
            upstream_share(&origin, &share),
            Err(ForwardError::VersionMask {
                bits: 0x8000,
                mask: 0x6000
            })
        );
        share.version = 0x2000_0000;
        assert_eq!(upstream_share(&origin, &share).unwrap().version_bits, None);
    }
}
