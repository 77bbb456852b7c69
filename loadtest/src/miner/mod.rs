//! Simulated miners: real Stratum V1 clients that hash for real.
//!
//! A pool is only as trustworthy as its share verdicts. These miners compute every share's
//! proof of work themselves, so they know which shares must be accepted, and they can send
//! shares that must be refused (duplicates, stale, low difficulty, malformed) to check that the
//! pool refuses them with the right code. [`client`] is the sans-IO session of one miner;
//! [`runner`] drives many of them over TCP; [`stats`] holds what they count.

pub mod client;
pub mod runner;
pub mod stats;

pub use client::{
    Event, MinerSession, Profile, SessionConfig, SessionState, ShareKind, ShareMix, Submission,
    Verdict,
};
pub use runner::{run, ProfileChoice, Progress, RunConfig, RunError, StratumUrl};
pub use stats::{KindCounts, LatencySummary, MinerStats, SessionStats, ShareCounts};
