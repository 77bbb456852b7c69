//! Issue 3, end to end with real processes: litecoind (regtest, past MWEB activation) ←
//! quarry-core ← Stratum miners hashing real scrypt. Blocks found through Quarry must be accepted
//! by litecoind, pay the pool's address and carry its tag.
//!
//! Needs `litecoind` (scripts/setup.sh installs it) and the workspace binaries
//! (`cargo build --workspace --bins`), as the README's test command does.

use loadtest::miner::{self, ProfileChoice, RunConfig, StratumUrl};
use loadtest::stack::{fresh_dir, remove_dir, Stack, StackOptions};
use relay::PowAlgorithm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn miners_find_blocks_through_quarry_that_litecoind_accepts() {
    let dir = fresh_dir("quarry-it-single-box");
    let stack = Stack::start(&StackOptions {
        pool_tag: "/quarry-it/".into(),
        ..StackOptions::new(dir.clone())
    })
    .expect("stack starts");
    let start_height = stack.block_count().unwrap();
    assert!(start_height >= 432, "MWEB must be active before mining");

    let mut cfg = RunConfig::new(
        StratumUrl {
            host: "127.0.0.1".into(),
            port: stack.core_stratum.port(),
        },
        3,
        PowAlgorithm::Scrypt,
    );
    // asic (version rolling, 6-parameter submits), nicehash, cpuminer in turn.
    cfg.profile = ProfileChoice::Mixed;
    cfg.hashrate = 4.0;
    cfg.user = "farm.rig".into();
    cfg.duration = None;
    let stop = Arc::new(AtomicBool::new(false));
    let miners = {
        let stop = stop.clone();
        std::thread::spawn(move || miner::run(&cfg, stop, |_| {}))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while stack.block_count().unwrap() < start_height + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    let stats = miners.join().unwrap().unwrap();
    let end_height = stack.block_count().unwrap();
    assert!(
        end_height >= start_height + 3,
        "at least 3 blocks through Quarry: height {start_height} -> {end_height}; miners: {stats}"
    );
    assert!(
        stats.shares.pool_verdicts_correct(),
        "pool misjudged shares: {stats}"
    );
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");

    for height in start_height + 1..=end_height {
        stack
            .check_pool_coinbase(height, "/quarry-it/")
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    stack.stop();
    remove_dir(&dir);
}
