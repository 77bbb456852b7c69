//! The credit book: how much work each worker has done, in difficulty-1 units.
//!
//! A share of difficulty *d* is worth *d* times a difficulty-1 share: that sum is the basis of
//! every reward scheme (PPLNS, PPS, ...). This in-memory book is rebuilt at start from the shard
//! journal ([`crate::journal`]), which is the truth for shares that came through edges; the
//! durable SQL ledger will ingest the same journal keyed by `(edge id, epoch, seq)`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Credited work of one worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerTally {
    pub shares: u64,
    /// Sum of the credited shares' difficulties.
    pub work: f64,
    /// Credited shares that were block candidates.
    pub blocks: u64,
}

/// In-memory credit book of this process.
#[derive(Default)]
pub struct Ledger {
    workers: Mutex<HashMap<Arc<str>, WorkerTally>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("workers", &self.workers.lock().len())
            .finish()
    }
}

impl Ledger {
    pub fn credit(&self, worker: &Arc<str>, difficulty: f64, block: bool) {
        let mut w = self.workers.lock();
        let t = w.entry(worker.clone()).or_default();
        t.shares += 1;
        t.work += difficulty;
        t.blocks += u64::from(block);
    }

    /// Credits many shares under one lock: `(worker, difficulty, block)`.
    pub fn credit_all<'a>(&self, shares: impl IntoIterator<Item = (&'a Arc<str>, f64, bool)>) {
        let mut w = self.workers.lock();
        for (worker, difficulty, block) in shares {
            let t = w.entry(worker.clone()).or_default();
            t.shares += 1;
            t.work += difficulty;
            t.blocks += u64::from(block);
        }
    }

    pub fn snapshot(&self) -> HashMap<Arc<str>, WorkerTally> {
        self.workers.lock().clone()
    }

    /// Credited shares over all workers.
    pub fn total_shares(&self) -> u64 {
        self.workers.lock().values().map(|t| t.shares).sum()
    }
}
