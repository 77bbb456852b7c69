//! Simulated miners: real Stratum V1 clients that hash for real.
//!
//! A pool is only as trustworthy as its share verdicts. These miners compute every share's
//! proof of work themselves, so they know which shares must be accepted, and they can send
//! shares that must be refused (duplicates, stale, low difficulty, malformed) to check that the
//! pool refuses them with the right code. [`client`] is the sans-IO session of one miner;
//! [`runner`] drives them over TCP with a thread each, [`mio_runner`] with a few event loops
//! (thousands of connections); [`stats`] holds what they count.

pub mod client;
pub mod mio_runner;
pub mod runner;
pub mod stats;

pub use client::{
    Event, MinerSession, Profile, SessionConfig, SessionState, ShareKind, ShareMix, Submission,
    Verdict,
};
pub use runner::{run, ProfileChoice, Progress, RunConfig, RunError, StratumUrl};
pub use stats::{KindCounts, LatencySummary, MinerStats, SessionStats, ShareCounts};

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Which runner drives the miners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// [`mio_runner`]: a few event loops, for many connections.
    Mio,
    /// [`runner`]: one blocking thread per miner.
    Threads,
}

impl Engine {
    /// The default for `miners` connections: threads for a few, event loops beyond 64.
    pub fn for_count(miners: usize) -> Engine {
        if miners > 64 {
            Engine::Mio
        } else {
            Engine::Threads
        }
    }

    /// Runs the miners with this engine (see [`runner::run`]).
    pub fn run(
        self,
        config: &RunConfig,
        stop: Arc<AtomicBool>,
        progress: impl FnMut(&Progress),
    ) -> Result<MinerStats, RunError> {
        match self {
            Engine::Mio => mio_runner::run(config, stop, progress),
            Engine::Threads => runner::run(config, stop, progress),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Mio => "mio",
            Engine::Threads => "threads",
        })
    }
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mio" => Ok(Engine::Mio),
            "threads" => Ok(Engine::Threads),
            other => Err(format!("unknown engine '{other}' (known: mio, threads)")),
        }
    }
}
