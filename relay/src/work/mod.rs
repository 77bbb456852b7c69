//! The work model: what a pool hands a miner and how a miner's answer becomes a block header.
//!
//! A *job* (`mining.notify`) carries everything of a block except what the miner varies: the
//! coinbase is split around the extranonce (`coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2`), the
//! rest of the block's transactions are summarised by a merkle branch, and the header fields come
//! with it. A *share* is the miner's choice of extranonce2, ntime, nonce and (with version rolling)
//! some version bits; from them anyone can rebuild the exact header the miner hashed.

pub mod extranonce;
pub mod header;
pub mod job;
pub mod target;

pub use extranonce::{
    Extranonce, ExtranonceError, ExtranonceLayout, UpstreamCarve, MAX_EXTRANONCE_LEN,
};
pub use header::{merkle_root, BlockHeader, VersionMask, VersionRollingError};
pub use job::{Job, JobId, PrevHash, ShareWork};
pub use target::{hash_difficulty, CompactTarget, Difficulty, Target, TargetError};
