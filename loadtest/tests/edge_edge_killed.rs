//! Issue 4 fault test: the edge is killed with SIGKILL and restarted on the same spool while
//! miners submit. Shares it acknowledged before dying reach the core from its spool; nothing is
//! credited twice.

mod common;

use loadtest::stack::{fresh_dir, remove_dir, Stack, StackOptions};
use std::time::Duration;

#[test]
fn edge_sigkill_and_restart_loses_and_doubles_nothing() {
    let dir = fresh_dir("quarry-it-edge-kill");
    let mut stack = Stack::start(&StackOptions {
        edge: true,
        ..StackOptions::new(dir.clone())
    })
    .expect("stack");
    let miners = common::start_miners(&stack, 3);
    common::mine_for(Duration::from_secs(8));
    stack.restart_edge_hard().expect("edge restarts");
    common::mine_for(Duration::from_secs(10));
    let stats = miners.stop();
    let report = common::settle_and_compare(&stack, &stats, Duration::from_secs(60));
    assert!(stats.shares.accepted > 20, "miners made progress: {stats}");
    assert!(
        stats.connects > 3,
        "miners reconnected to the restarted edge: {stats}"
    );
    assert!(
        report.is_exact(),
        "accepted {} credited {}; missing {:?}; doubled {:?}",
        report.accepted,
        report.credited,
        &report.missing[..report.missing.len().min(5)],
        report.doubled
    );
    stack.stop();
    remove_dir(&dir);
}
