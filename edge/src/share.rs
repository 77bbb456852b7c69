//! What the edge hands on after judging a share.

use relay::work::{Difficulty, Extranonce, JobId};
use std::sync::Arc;
use std::time::SystemTime;

/// A share the edge accepted and acknowledged to its miner. From these fields (with the job)
/// anyone can rebuild the header and re-check the proof of work.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareRecord {
    /// `account.worker` as authorized: every device stays visible, not one aggregate.
    pub worker: Arc<str>,
    pub job_id: JobId,
    pub extranonce1: Extranonce,
    pub extranonce2: Extranonce,
    pub ntime: u32,
    pub nonce: u32,
    /// Full header version after rolling.
    pub version: u32,
    /// The difficulty the share was judged at (and is credited at).
    pub difficulty: Difficulty,
    /// The difficulty its hash actually reached (for best-share stats).
    pub achieved: f64,
    pub received_at: SystemTime,
    /// Meets the upstream pool's target (proxy mining): forward it.
    pub meets_upstream: bool,
    /// Where the edge spooled it: (lane, index), set by the connector before the miner's answer.
    pub spool_ref: Option<(u16, u64)>,
}

impl ShareRecord {
    /// The share as the relay protocol carries it (to the core, or to the core's proxy).
    pub fn to_wire(&self) -> relay::wire::ShareData {
        relay::wire::ShareData {
            worker: self.worker.clone(),
            job_id: self.job_id.clone(),
            extranonce1: self.extranonce1,
            extranonce2: self.extranonce2,
            ntime: self.ntime,
            nonce: self.nonce,
            version: self.version,
            difficulty: self.difficulty,
            received_at_ms: crate::spool::unix_ms(self.received_at),
            meets_upstream: self.meets_upstream,
        }
    }
}

/// A share whose hash meets the network target: submit the block now.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockCandidate {
    pub share: ShareRecord,
    pub header: [u8; 80],
    /// The coinbase transaction, non-witness serialization.
    pub coinbase: Vec<u8>,
}

/// What a session reports besides the bytes it sends back.
#[derive(Clone, Debug, PartialEq)]
pub enum ShareEvent {
    Accepted(ShareRecord),
    /// Boxed: blocks are rare, and every queued share would otherwise be as big as one (240
    /// bytes instead of 136).
    Block(Box<BlockCandidate>),
}

/// Where the Stratum server's connector threads hand their accepted shares: one call per loop
/// turn with everything that turn accepted, in order, so the consumer is woken at most once per
/// turn rather than once per share (per-share wake-ups of the uplink were a tenth of the edge's
/// CPU at 27,000 shares/s).
pub trait ShareSink: Send + Sync {
    /// Takes one turn's events, leaving `events` empty (the caller keeps its allocation). False
    /// once nobody is listening any more (the events are lost to this sink; the spool still has
    /// the accepted ones).
    fn take(&self, events: &mut Vec<ShareEvent>) -> bool;
}

/// A channel of single events, for consumers that handle one share at a time.
impl ShareSink for crossbeam_channel::Sender<ShareEvent> {
    fn take(&self, events: &mut Vec<ShareEvent>) -> bool {
        events.drain(..).all(|ev| self.send(ev).is_ok())
    }
}

/// A share record for tests, told apart by its nonce.
#[cfg(test)]
pub(crate) fn sample_record(nonce: u32) -> ShareRecord {
    ShareRecord {
        worker: "acct.rig1".into(),
        job_id: JobId::new("1a"),
        extranonce1: Extranonce::from_hex("00010002").unwrap(),
        extranonce2: Extranonce::from_hex("0000000a").unwrap(),
        ntime: 1_700_000_000,
        nonce,
        version: 0x2000_0000,
        difficulty: Difficulty::new(0.5).unwrap(),
        achieved: 3.25,
        received_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
        meets_upstream: false,
        spool_ref: None,
    }
}
