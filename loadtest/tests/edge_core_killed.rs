//! Issue 4 fault test: the core is killed with SIGKILL and restarted while miners submit to the
//! edge. Every share the edge acknowledged is credited exactly once, and blocks found behind
//! the edge are accepted by litecoind.

mod common;

use loadtest::stack::{fresh_dir, remove_dir, Stack, StackOptions};
use std::time::Duration;

#[test]
fn core_sigkill_and_restart_loses_and_doubles_nothing() {
    let dir = fresh_dir("quarry-it-core-kill");
    let mut stack = Stack::start(&StackOptions {
        edge: true,
        ..StackOptions::new(dir.clone())
    })
    .expect("stack");
    let h0 = stack.block_count().unwrap();
    let miners = common::start_miners(&stack, 3);
    common::mine_for(Duration::from_secs(8));
    stack.restart_core_hard().expect("core restarts");
    common::mine_for(Duration::from_secs(10));
    let stats = miners.stop();
    let report = common::settle_and_compare(&stack, &stats, Duration::from_secs(60));
    assert!(stats.shares.accepted > 20, "miners made progress: {stats}");
    assert!(
        report.is_exact(),
        "accepted {} credited {}; missing {:?}; doubled {:?}",
        report.accepted,
        report.credited,
        &report.missing[..report.missing.len().min(5)],
        report.doubled
    );
    assert!(
        stack.block_count().unwrap() >= h0 + 3,
        "blocks found behind the edge are accepted by litecoind"
    );
    stack.stop();
    remove_dir(&dir);
}
