//! Quarry's shared library.
//!
//! Everything that the edge, the core pool and the load tester must agree on bit for bit lives
//! here: the Stratum V1 codec ([`stratum`]), the work model that turns a job plus a miner's
//! submission into an 80-byte block header ([`work`]), and the proof-of-work functions that judge
//! that header ([`pow`]). All of it is sans-IO: plain values in, plain values out.

pub mod hash;
pub mod pow;
pub mod quic;
pub mod seglog;
pub mod stratum;
pub mod upstream;
pub mod wire;
pub mod work;

pub use hash::{sha256d, Hash256};
pub use pow::PowAlgorithm;
