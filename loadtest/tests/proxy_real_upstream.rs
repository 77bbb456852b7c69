//! Issue 6 with a real upstream: a `quarry-core` in pool mode on litecoind regtest is the
//! "larger pool"; a second `quarry-core` in proxy mode mines into it; CPU miners hashing real
//! scrypt connect to the proxy. Blocks found by the proxy's miners must reach the upstream as
//! shares, be submitted by the upstream to litecoind and be accepted there, with the upstream's
//! coinbase (its payout address and tag) — the proxy never builds a block itself.
//!
//! Needs `litecoind` (scripts/setup.sh installs it) and the workspace binaries.

use loadtest::miner::{self, ProfileChoice, RunConfig, StratumUrl};
use loadtest::proxy_rig::{ProxyCore, ProxyCoreOptions, UpstreamEntry};
use loadtest::stack::{fresh_dir, remove_dir, Stack, StackOptions};
use relay::PowAlgorithm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn miners_behind_a_proxying_quarry_find_blocks_the_upstreams_litecoind_accepts() {
    let dir = fresh_dir("quarry-it-proxy-real");
    let upstream = Stack::start(&StackOptions {
        pool_tag: "/upstream-pool/".into(),
        // Room for the proxy's own 4-byte prefix and its miners' 4 bytes.
        extranonce2_size: 8,
        ..StackOptions::new(dir.join("upstream"))
    })
    .expect("upstream stack starts");
    let start_height = upstream.block_count().unwrap();

    let proxy = ProxyCore::start(&ProxyCoreOptions::new(
        dir.join("proxy"),
        vec![UpstreamEntry::tcp(
            "upstream-core",
            upstream.core_stratum,
            "proxyfarm.quarry",
        )],
    ))
    .expect("proxy core starts");

    let mut cfg = RunConfig::new(
        StratumUrl {
            host: "127.0.0.1".into(),
            port: proxy.stratum.port(),
        },
        3,
        PowAlgorithm::Scrypt,
    );
    cfg.profile = ProfileChoice::Mixed;
    cfg.hashrate = 4.0;
    cfg.user = "farm.rig".into();
    cfg.duration = None;
    let stop = Arc::new(AtomicBool::new(false));
    let miners = {
        let stop = stop.clone();
        std::thread::spawn(move || miner::run(&cfg, stop, |_| {}))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while upstream.block_count().unwrap() < start_height + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    let stats = miners.join().unwrap().unwrap();
    // Let the last forwarded shares' answers arrive.
    std::thread::sleep(Duration::from_secs(1));
    let end_height = upstream.block_count().unwrap();
    let forwarded = proxy
        .metric("quarry_core_upstream_shares_forwarded_total")
        .unwrap();
    let accepted = proxy
        .metric_with("quarry_core_upstream_shares_total", "result=\"accepted\"")
        .unwrap();
    let rejected = proxy
        .metric_with("quarry_core_upstream_shares_total", "result=\"rejected\"")
        .unwrap();
    let blocks_upstream = upstream_metric(&upstream, "quarry_core_blocks_accepted_total");
    assert!(
        end_height >= start_height + 3,
        "at least 3 blocks through the proxy: height {start_height} -> {end_height}; \
         forwarded {forwarded}, upstream accepted {accepted}, rejected {rejected}; miners: {stats}; \
         proxy log: {}",
        proxy.log().display()
    );
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    assert!(forwarded >= 3.0, "forwarded {forwarded}");
    // In regtest every share is a block, so the upstream's tip moves with each accepted share:
    // a candidate already on the wire when the upstream moves on is answered `21 Stale share`.
    // That race is the link's, not a fault in the forwarded work; anything else is a fault.
    let stale = proxy
        .metric_with("quarry_core_upstream_rejects_total", "code=\"21\"")
        .unwrap();
    let reasons = proxy
        .metric_lines("quarry_core_upstream_rejects_total")
        .unwrap_or_default();
    assert_eq!(
        rejected - stale,
        0.0,
        "the upstream rejected valid forwarded work: {reasons:?}"
    );
    assert!(
        stale * 4.0 <= forwarded,
        "{stale} of {forwarded} forwarded shares were stale at the upstream: {reasons:?}"
    );
    assert!(
        blocks_upstream >= 3.0,
        "upstream counted {blocks_upstream} blocks"
    );

    // The blocks are the upstream's: its coinbase, tag and payout.
    for height in start_height + 1..=end_height {
        upstream
            .check_pool_coinbase(height, "/upstream-pool/")
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    proxy.stop();
    upstream.stop();
    remove_dir(&dir);
}

fn upstream_metric(stack: &Stack, name: &str) -> f64 {
    loadtest::process::scrape_metric(stack.core_metrics, name).unwrap_or(0.0)
}
