//! Jobs as sent in `mining.notify`, and rebuilding the header of a submitted share.
//!
//! Why shares go stale: a job builds on one previous block. When the network finds a new block,
//! every header built on the old one is worthless, so the pool sends a job with `clean_jobs` set
//! and refuses shares for older jobs. Jobs that only refresh ntime or the mempool keep the old
//! prevhash; shares for them are still worth something for a short grace period.

use super::extranonce::Extranonce;
use super::header::{merkle_root, BlockHeader};
use super::target::CompactTarget;
use crate::hash::{sha256d_finish, Hash256};
use sha2::{Digest, Sha256};
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A job identifier as chosen by whoever issued the job (opaque to miners, and to us when it
/// comes from an upstream pool).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Arc<str>);

impl JobId {
    pub fn new(s: &str) -> Self {
        JobId(Arc::from(s))
    }

    /// Pool-issued ids: short lowercase hex of a counter.
    pub fn from_counter(n: u64) -> Self {
        JobId(Arc::from(format!("{n:x}").as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// The previous block hash of a job. Stored in header (internal) byte order; `mining.notify`
/// carries it as eight 32-bit words, each with its bytes reversed — a leftover of early miners
/// that byte-swapped the whole header as 32-bit words. The conversion lives only here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PrevHash(pub Hash256);

impl PrevHash {
    /// From the 64 hex characters of `mining.notify`'s prevhash parameter.
    pub fn from_stratum_hex(s: &str) -> Result<Self, hex::FromHexError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)?;
        Ok(PrevHash(Hash256(swap_words(b))))
    }

    pub fn to_stratum_hex(&self) -> String {
        hex::encode(swap_words(self.0 .0))
    }

    /// From the `previousblockhash` of getblocktemplate (display order).
    pub fn from_display_hex(s: &str) -> Result<Self, hex::FromHexError> {
        Hash256::from_display_hex(s).map(PrevHash)
    }
}

fn swap_words(mut b: [u8; 32]) -> [u8; 32] {
    for w in b.chunks_exact_mut(4) {
        w.reverse();
    }
    b
}

/// A unit of work as sent to miners.
#[derive(Clone)]
pub struct Job {
    pub id: JobId,
    pub prev_hash: PrevHash,
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: CompactTarget,
    pub ntime: u32,
    pub clean_jobs: bool,
    /// SHA-256 state after absorbing coinb1: every share of the job starts from here.
    coinb1_midstate: Sha256,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("prev_hash", &self.prev_hash)
            .field("coinb1", &hex::encode(&self.coinb1))
            .field("coinb2", &hex::encode(&self.coinb2))
            .field("merkle_branch_len", &self.merkle_branch.len())
            .field("version", &format_args!("{:08x}", self.version))
            .field("nbits", &format_args!("{:08x}", self.nbits.0))
            .field("ntime", &self.ntime)
            .field("clean_jobs", &self.clean_jobs)
            .finish()
    }
}

impl PartialEq for Job {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
            && self.prev_hash == o.prev_hash
            && self.coinb1 == o.coinb1
            && self.coinb2 == o.coinb2
            && self.merkle_branch == o.merkle_branch
            && self.version == o.version
            && self.nbits == o.nbits
            && self.ntime == o.ntime
            && self.clean_jobs == o.clean_jobs
    }
}

/// What a miner chose for one share: everything needed, with the job, to rebuild its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareWork {
    pub extranonce1: Extranonce,
    pub extranonce2: Extranonce,
    pub ntime: u32,
    pub nonce: u32,
    /// The full header version after rolling (the job version when the miner does not roll).
    pub version: u32,
}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: JobId,
        prev_hash: PrevHash,
        coinb1: Vec<u8>,
        coinb2: Vec<u8>,
        merkle_branch: Vec<[u8; 32]>,
        version: u32,
        nbits: CompactTarget,
        ntime: u32,
        clean_jobs: bool,
    ) -> Self {
        let mut coinb1_midstate = Sha256::new();
        coinb1_midstate.update(&coinb1);
        Job {
            id,
            prev_hash,
            coinb1,
            coinb2,
            merkle_branch,
            version,
            nbits,
            ntime,
            clean_jobs,
            coinb1_midstate,
        }
    }

    /// The full coinbase transaction for a miner's extranonces.
    pub fn coinbase(&self, extranonce1: &Extranonce, extranonce2: &Extranonce) -> Vec<u8> {
        let mut cb = Vec::with_capacity(
            self.coinb1.len() + extranonce1.len() + extranonce2.len() + self.coinb2.len(),
        );
        cb.extend_from_slice(&self.coinb1);
        cb.extend_from_slice(extranonce1.as_bytes());
        cb.extend_from_slice(extranonce2.as_bytes());
        cb.extend_from_slice(&self.coinb2);
        cb
    }

    /// The coinbase txid (sha256d of the coinbase, non-witness serialization), from the midstate.
    #[inline]
    pub fn coinbase_hash(&self, extranonce1: &Extranonce, extranonce2: &Extranonce) -> [u8; 32] {
        let mut h = self.coinb1_midstate.clone();
        h.update(extranonce1.as_bytes());
        h.update(extranonce2.as_bytes());
        h.update(&self.coinb2);
        sha256d_finish(h)
    }

    /// The header a miner hashed for this share.
    #[inline]
    pub fn header(&self, work: &ShareWork) -> BlockHeader {
        let cb = self.coinbase_hash(&work.extranonce1, &work.extranonce2);
        BlockHeader {
            version: work.version,
            prev_hash: self.prev_hash.0,
            merkle_root: Hash256(merkle_root(cb, &self.merkle_branch)),
            time: work.ntime,
            bits: self.nbits.0,
            nonce: work.nonce,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256d;

    #[test]
    fn stratum_prevhash_swaps_each_word() {
        let p = PrevHash::from_stratum_hex(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        )
        .unwrap();
        assert_eq!(
            &p.0 .0[..8],
            &[0x33, 0x22, 0x11, 0x00, 0x77, 0x66, 0x55, 0x44]
        );
        assert_eq!(
            p.to_stratum_hex(),
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        );
    }

    #[test]
    fn midstate_coinbase_hash_equals_hash_of_assembled_coinbase() {
        let job = Job::new(
            JobId::from_counter(1),
            PrevHash(Hash256([1; 32])),
            (0..97u8).collect(),
            (0..41u8).collect(),
            vec![],
            0x2000_0000,
            CompactTarget(0x1d00ffff),
            1,
            true,
        );
        let e1 = Extranonce::from_hex("01020304").unwrap();
        let e2 = Extranonce::from_hex("aabbccdd").unwrap();
        assert_eq!(
            job.coinbase_hash(&e1, &e2),
            sha256d(&job.coinbase(&e1, &e2))
        );
    }
}
