//! The 80-byte block header, merkle roots and BIP310 version rolling.
//!
//! Header layout (all integers little-endian): version (4) ‖ previous block hash (32, internal
//! order) ‖ merkle root (32) ‖ time (4) ‖ nBits (4) ‖ nonce (4).

use crate::hash::{sha256d_64, sha256d_80, Hash256};
use sha2::{Digest, Sha256};

/// A block header, field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub version: u32,
    pub prev_hash: Hash256,
    pub merkle_root: Hash256,
    pub time: u32,
    pub bits: u32,
    pub nonce: u32,
}

impl BlockHeader {
    #[inline]
    pub fn to_bytes(&self) -> [u8; 80] {
        let mut h = [0u8; 80];
        h[0..4].copy_from_slice(&self.version.to_le_bytes());
        h[4..36].copy_from_slice(&self.prev_hash.0);
        h[36..68].copy_from_slice(&self.merkle_root.0);
        h[68..72].copy_from_slice(&self.time.to_le_bytes());
        h[72..76].copy_from_slice(&self.bits.to_le_bytes());
        h[76..80].copy_from_slice(&self.nonce.to_le_bytes());
        h
    }

    pub fn from_bytes(h: &[u8; 80]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&h[4..36]);
        let mut root = [0u8; 32];
        root.copy_from_slice(&h[36..68]);
        BlockHeader {
            version: u32_at(0),
            prev_hash: Hash256(prev),
            merkle_root: Hash256(root),
            time: u32_at(68),
            bits: u32_at(72),
            nonce: u32_at(76),
        }
    }

    /// The block id: sha256d of the header, whatever the proof-of-work algorithm.
    pub fn block_hash(&self) -> Hash256 {
        Hash256(sha256d_80(&self.to_bytes()))
    }
}

/// Folds a merkle branch onto the coinbase hash: `node = sha256d(node ‖ branch[i])`. Stratum
/// branches always sit to the right because the coinbase is the block's first transaction.
#[inline]
pub fn merkle_root(coinbase_hash: [u8; 32], branch: &[[u8; 32]]) -> [u8; 32] {
    let mut pair = [0u8; 64];
    pair[..32].copy_from_slice(&coinbase_hash);
    for sibling in branch {
        pair[32..].copy_from_slice(sibling);
        let node = sha256d_64(&pair);
        pair[..32].copy_from_slice(&node);
    }
    let mut node = [0u8; 32];
    node.copy_from_slice(&pair[..32]);
    node
}

/// Computes the merkle branch for the first leaf (the coinbase) of a transaction list, given the
/// txids of the *other* transactions in block order. This is what a pool sends in mining.notify.
pub fn coinbase_merkle_branch(other_txids: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut branch = Vec::new();
    // Level 0 holds a placeholder for the coinbase followed by the other txids.
    let mut level: Vec<Option<[u8; 32]>> = std::iter::once(None)
        .chain(other_txids.iter().copied().map(Some))
        .collect();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            let last = *level.last().expect("non-empty level");
            level.push(last);
        }
        branch.push(level[1].expect("only index 0 is the coinbase placeholder"));
        let mut next = Vec::with_capacity(level.len() / 2);
        next.push(None);
        for pair in level[2..].chunks(2) {
            let (a, b) = (pair[0].expect("filled"), pair[1].expect("filled"));
            let mut h = Sha256::new();
            h.update(a);
            h.update(b);
            next.push(Some(Sha256::digest(h.finalize()).into()));
        }
        level = next;
    }
    branch
}

/// The full merkle root of a list of hashes (txids or wtxids), Bitcoin style: an odd level
/// duplicates its last node.
pub fn merkle_root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return [0u8; 32];
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            level.push(*level.last().expect("non-empty"));
        }
        level = level
            .chunks(2)
            .map(|p| {
                let mut h = Sha256::new();
                h.update(p[0]);
                h.update(p[1]);
                Sha256::digest(h.finalize()).into()
            })
            .collect();
    }
    level[0]
}

/// BIP310 version-rolling mask: the header version bits a miner may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionMask(pub u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionRollingError {
    #[error("version bits {bits:08x} touch bits outside the allowed mask {mask:08x}")]
    OutsideMask { bits: u32, mask: u32 },
}

impl VersionMask {
    /// BIP310's suggested mask (the bits BIP320 leaves to miners): 0x1fffe000.
    pub const BIP320: VersionMask = VersionMask(0x1fff_e000);
    pub const NONE: VersionMask = VersionMask(0);

    /// What a miner gets: only the bits both it asked for and the pool allows.
    pub fn negotiate(requested: VersionMask, pool: VersionMask) -> VersionMask {
        VersionMask(requested.0 & pool.0)
    }

    pub fn bit_count(self) -> u32 {
        self.0.count_ones()
    }

    /// Applies a miner's submitted version bits to the job version. Bits outside the mask are
    /// refused rather than silently dropped: a header with them would not be the one the miner
    /// hashed. The job's own bits outside the mask are never changed.
    #[inline]
    pub fn apply(self, job_version: u32, submitted_bits: u32) -> Result<u32, VersionRollingError> {
        if submitted_bits & !self.0 != 0 {
            return Err(VersionRollingError::OutsideMask {
                bits: submitted_bits,
                mask: self.0,
            });
        }
        Ok((job_version & !self.0) | (submitted_bits & self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256d;

    #[test]
    fn negotiated_mask_is_the_intersection() {
        let m = VersionMask::negotiate(VersionMask(0xffff_ffff), VersionMask::BIP320);
        assert_eq!(m, VersionMask::BIP320);
        let m = VersionMask::negotiate(VersionMask(0x0000_6000), VersionMask::BIP320);
        assert_eq!(m, VersionMask(0x0000_6000));
    }

    #[test]
    fn rolling_keeps_job_bits_outside_mask() {
        let m = VersionMask::BIP320;
        assert_eq!(m.apply(0x2000_0000, 0x0000_2000).unwrap(), 0x2000_2000);
        assert_eq!(m.apply(0x2000_0004, 0x1fff_e000).unwrap(), 0x3fff_e004);
        assert_eq!(m.apply(0x2000_2000, 0).unwrap(), 0x2000_0000);
        assert!(m.apply(0x2000_0000, 0x4000_0000).is_err());
    }

    #[test]
    fn branch_and_full_root_agree() {
        for n in 1..20u8 {
            let leaves: Vec<[u8; 32]> = (0..n).map(|i| sha256d(&[i])).collect();
            let branch = coinbase_merkle_branch(&leaves[1..]);
            assert_eq!(
                merkle_root(leaves[0], &branch),
                merkle_root_of(&leaves),
                "n={n}"
            );
        }
    }

    #[test]
    fn header_bytes_round_trip() {
        let h = BlockHeader {
            version: 0x2000_0000,
            prev_hash: Hash256([7; 32]),
            merkle_root: Hash256([9; 32]),
            time: 1_700_000_000,
            bits: 0x1d00ffff,
            nonce: 42,
        };
        assert_eq!(BlockHeader::from_bytes(&h.to_bytes()), h);
    }
}
