//! Shared harness of the edge fault tests: a stack with an edge, miners on the edge that
//! record every accepted share, and the exactly-once comparison at the end.

use loadtest::exactly_once::{compare, CreditReport};
use loadtest::miner::{self, MinerStats, ProfileChoice, RunConfig, StratumUrl};
use loadtest::stack::Stack;
use relay::PowAlgorithm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Miners {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<MinerStats, miner::RunError>>,
}

pub fn start_miners(stack: &Stack, count: usize) -> Miners {
    let edge = stack.edge.as_ref().expect("stack has an edge").stratum;
    let mut cfg = RunConfig::new(
        StratumUrl {
            host: edge.ip().to_string(),
            port: edge.port(),
        },
        count,
        PowAlgorithm::Scrypt,
    );
    cfg.profile = ProfileChoice::Mixed;
    cfg.hashrate = 4.0;
    cfg.user = "farm.rig".into();
    cfg.duration = None;
    cfg.record_accepted = true;
    cfg.backoff_max = Duration::from_millis(500);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    Miners {
        stop,
        thread: std::thread::spawn(move || miner::run(&cfg, s, |_| {})),
    }
}

impl Miners {
    pub fn stop(self) -> MinerStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("miner thread")
            .expect("miners ran")
    }
}

/// Waits (up to `limit`) until every accepted share is credited, then compares exactly.
pub fn settle_and_compare(stack: &Stack, stats: &MinerStats, limit: Duration) -> CreditReport {
    let deadline = Instant::now() + limit;
    loop {
        let credited = stack.credited_shares().expect("journal-dump");
        let report = compare(&stats.accepted_ids, &credited);
        if report.missing.is_empty() || Instant::now() > deadline {
            return report;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn mine_for(d: Duration) {
    std::thread::sleep(d);
}
