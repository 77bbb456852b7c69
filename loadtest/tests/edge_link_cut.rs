//! Issue 4 fault test: the edge's uplink is cut for 30 s (a blackout in a UDP proxy between
//! edge and core) while miners submit. Miners keep getting answers from the edge; when the link
//! returns the spooled shares are delivered; every acknowledged share is credited exactly once.

mod common;

use loadtest::impair::{Impairment, UdpProxy};
use loadtest::process::free_port;
use loadtest::stack::{fresh_dir, remove_dir, Stack, StackOptions};
use std::time::Duration;

#[test]
fn thirty_second_link_cut_loses_and_doubles_nothing() {
    let dir = fresh_dir("quarry-it-link-cut");
    let gw_port = free_port().unwrap();
    let proxy = UdpProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        format!("127.0.0.1:{gw_port}").parse().unwrap(),
        Impairment::default(),
    )
    .unwrap();
    let stack = Stack::start(&StackOptions {
        edge: true,
        gateway_port: gw_port,
        edge_uplink_via: Some(proxy.listen),
        ..StackOptions::new(dir.clone())
    })
    .expect("stack");
    let miners = common::start_miners(&stack, 3);
    common::mine_for(Duration::from_secs(5));
    proxy.set_blackout(true);
    common::mine_for(Duration::from_secs(30));
    proxy.set_blackout(false);
    common::mine_for(Duration::from_secs(5));
    let stats = miners.stop();
    let report = common::settle_and_compare(&stack, &stats, Duration::from_secs(90));
    assert!(
        stats.shares.accepted > 40,
        "miners kept working through the cut: {stats}"
    );
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
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
