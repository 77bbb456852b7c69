//! Issue 6 against the simulated upstream pool (`loadtest::sim_pool`, which verifies every share
//! it receives for real): a `quarry-core` in proxy mode as a child process, sha256d miners
//! hashing for real against its Stratum port, one or two simulated upstreams in this process.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`).

use loadtest::miner::{self, MinerStats, ProfileChoice, RunConfig, StratumUrl};
use loadtest::proxy_rig::{ProxyCore, ProxyCoreOptions, UpstreamEntry};
use loadtest::sim_pool::{SimPool, SimPoolConfig, SimPoolHandle};
use loadtest::stack::{fresh_dir, remove_dir};
use relay::work::Difficulty;
use relay::PowAlgorithm;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The proxy's miners' difficulty: ~4 sha256d hashes a share, so miners submit often.
const MINER_DIFFICULTY: f64 = 1.0 / (1u64 << 30) as f64;
/// The upstream's: 64 times harder, so one share in ~64 is forwarded.
const UPSTREAM_DIFFICULTY: f64 = 1.0 / (1u64 << 24) as f64;

/// The tests share two cores: one at a time, so their timings mean something.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How late a stale share may reach the upstream and still count as a race: a share in flight
/// while the upstream's new block was on its way to the miners. A few round trips through the
/// proxy (and the edge) take milliseconds; a proxy that kept its miners on old work would send
/// stale shares until the next job, seconds later.
const STALE_RACE_WINDOW_MS: u64 = 1_000;

/// Upstream rejects other than stale races: none. Stale races: each one within
/// [`STALE_RACE_WINDOW_MS`] of its job going stale, so their number is bounded by the time the
/// work takes to propagate, not by a share count a slow CI host can exceed.
fn assert_no_rejects_but_rare_stale_races(what: &str, s: &loadtest::sim_pool::SimPoolStats) {
    let stale = s.rejected.get("stale").copied().unwrap_or(0);
    let others: u64 = s.rejected.values().sum::<u64>() - stale;
    assert_eq!(others, 0, "{what} rejected valid work: {:?}", s.rejected);
    assert_eq!(
        s.stale_late_ms.len() as u64,
        stale,
        "{what}: every stale reject is timed"
    );
    assert!(
        s.stale_late_ms.iter().all(|&ms| ms <= STALE_RACE_WINDOW_MS),
        "{what}: stale shares arrived this long (ms) after their job went stale: {:?}",
        s.stale_late_ms
    );
}

fn sim_pool(difficulty: f64) -> SimPoolHandle {
    let mut cfg = SimPoolConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.algorithm = PowAlgorithm::Sha256d;
    cfg.difficulty = Difficulty::new(difficulty).unwrap();
    cfg.extranonce2_size = 8;
    cfg.job_interval = Duration::from_secs(5);
    SimPool::start(cfg).expect("sim pool starts")
}

fn sim_pool_at(addr: SocketAddr, difficulty: f64) -> SimPoolHandle {
    let mut cfg = SimPoolConfig::new(addr);
    cfg.algorithm = PowAlgorithm::Sha256d;
    cfg.difficulty = Difficulty::new(difficulty).unwrap();
    cfg.extranonce2_size = 8;
    cfg.job_interval = Duration::from_secs(5);
    SimPool::start(cfg).expect("sim pool restarts on its port")
}

fn proxy(dir: &std::path::Path, upstreams: Vec<UpstreamEntry>, mode: &str) -> ProxyCore {
    proxy_with(dir, upstreams, mode, |_| {})
}

/// A proxy core for sha256d miners at [`MINER_DIFFICULTY`], adjusted by `tweak`.
fn proxy_with(
    dir: &std::path::Path,
    upstreams: Vec<UpstreamEntry>,
    mode: &str,
    tweak: impl FnOnce(&mut ProxyCoreOptions),
) -> ProxyCore {
    let mut o = ProxyCoreOptions::new(dir.join("proxy"), upstreams);
    o.algorithm = "sha256d".into();
    o.mode = mode.into();
    o.failback_secs = 3.0;
    o.split_period_secs = 1.0;
    o.start_difficulty = MINER_DIFFICULTY;
    o.fixed_difficulty = true;
    tweak(&mut o);
    ProxyCore::start(&o).expect("proxy core starts")
}

/// A fresh folder, one sim pool and a proxy core mining into it, connected.
fn one_upstream(name: &str) -> (std::path::PathBuf, SimPoolHandle, ProxyCore) {
    let dir = fresh_dir(name);
    let pool = sim_pool(UPSTREAM_DIFFICULTY);
    let proxy = proxy(
        &dir,
        vec![UpstreamEntry::tcp("sim", pool.local_addr(), "farm.proxy")],
        "failover",
    );
    wait_until("the upstream connection", Duration::from_secs(20), || {
        pool.stats().connected >= 1
    });
    (dir, pool, proxy)
}

/// Waits until the proxy gives `name` the work.
fn wait_active(proxy: &ProxyCore, name: &str) {
    let label = format!("upstream=\"{name}\"");
    wait_until("the upstream to be active", Duration::from_secs(30), || {
        proxy
            .metric_with("quarry_core_upstream_active", &label)
            .unwrap_or(0.0)
            == 1.0
    });
}

struct Miners {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<MinerStats>,
}

fn miners(proxy: &ProxyCore, count: usize, hashrate: f64) -> Miners {
    miners_as(proxy, count, hashrate, ProfileChoice::Mixed)
}

fn miners_as(proxy: &ProxyCore, count: usize, hashrate: f64, profile: ProfileChoice) -> Miners {
    miners_at(proxy.stratum.port(), count, hashrate, profile)
}

fn miners_at(port: u16, count: usize, hashrate: f64, profile: ProfileChoice) -> Miners {
    let mut cfg = RunConfig::new(
        StratumUrl {
            host: "127.0.0.1".into(),
            port,
        },
        count,
        PowAlgorithm::Sha256d,
    );
    cfg.profile = profile;
    cfg.hashrate = hashrate;
    cfg.user = "farm.rig".into();
    cfg.duration = None;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || miner::run(&cfg, stop, |_| {}).expect("miners run"))
    };
    Miners { stop, thread }
}

impl Miners {
    fn finish(self) -> MinerStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("miner thread")
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn upstream_accepts_match_hashrate_and_difficulty_and_nothing_valid_is_rejected() {
    let _serial = serial();
    let (dir, pool, proxy) = one_upstream("quarry-it-proxy-accepts");
    let m = miners(&proxy, 4, 2_000.0);
    std::thread::sleep(Duration::from_secs(20));
    let stats = m.finish();
    // Answers of the last forwarded shares.
    std::thread::sleep(Duration::from_secs(1));
    let up = pool.stats();
    // Each hash meets the upstream difficulty D with probability 1 / (2^32 · D).
    let expected = stats.shares.hashes as f64 / (4_294_967_296.0 * UPSTREAM_DIFFICULTY);
    let sigma = expected.sqrt();
    let forwarded = proxy
        .metric("quarry_core_upstream_shares_forwarded_total")
        .unwrap();
    let below = proxy
        .metric_with(
            "quarry_core_upstream_not_forwarded_total",
            "reason=\"below_target\"",
        )
        .unwrap();
    eprintln!(
        "hashes {} expected upstream accepts {expected:.1} ± {sigma:.1}; upstream {up:?}; \
         forwarded {forwarded}, below target {below}; miners {stats}",
        stats.shares.hashes
    );
    assert!(expected > 100.0, "too little work to judge: {expected}");
    assert!(
        (up.accepted as f64 - expected).abs() <= 5.0 * sigma + 0.05 * expected,
        "upstream accepted {} shares, the hashrate predicts {expected:.0} ± {sigma:.0}",
        up.accepted
    );
    assert_no_rejects_but_rare_stale_races("the upstream", &up);
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    // Every valid share is still credited locally.
    let credited = proxy.metric("quarry_core_shares_credited_total").unwrap();
    assert_eq!(credited as u64, stats.shares.accepted, "{stats}");
    let per_worker = proxy
        .metric_with(
            "quarry_core_upstream_worker_shares_total",
            "result=\"accepted\"",
        )
        .unwrap();
    assert_eq!(per_worker as u64, up.accepted);
    proxy.stop();
    pool.shutdown();
    remove_dir(&dir);
}

#[test]
fn a_killed_upstream_fails_over_at_once_and_work_returns_after_failback() {
    let _serial = serial();
    let dir = fresh_dir("quarry-it-proxy-failover");
    let primary = sim_pool(UPSTREAM_DIFFICULTY);
    let primary_addr = primary.local_addr();
    let backup = sim_pool(UPSTREAM_DIFFICULTY);
    let proxy = proxy(
        &dir,
        vec![
            UpstreamEntry::tcp("primary", primary_addr, "farm.proxy"),
            UpstreamEntry::tcp("backup", backup.local_addr(), "farm.proxy"),
        ],
        "failover",
    );
    // Both connect at once; if the backup answers first it gets the work until the primary
    // has been up for failback_secs. Start measuring once the primary has it.
    wait_active(&proxy, "primary");
    let m = miners(&proxy, 4, 2_000.0);
    wait_until("shares at the primary", Duration::from_secs(30), || {
        primary.stats().accepted >= 5
    });
    let before = backup.stats().accepted;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        backup.stats().accepted,
        before,
        "all work goes to the primary"
    );
    primary.shutdown();
    let failover = wait_until("shares at the backup", Duration::from_secs(15), || {
        backup.stats().accepted > before
    });
    eprintln!("failover: first share accepted by the backup {failover:?} after the kill");
    // The primary comes back on its port; after failback_secs (3 s) work returns to it.
    let primary = sim_pool_at(primary_addr, UPSTREAM_DIFFICULTY);
    let back = Instant::now();
    let failback = wait_until(
        "shares at the returned primary",
        Duration::from_secs(30),
        || primary.stats().accepted >= 3,
    );
    eprintln!("failback: first share at the returned primary {failback:?} after its restart");
    assert!(
        back.elapsed() >= Duration::from_secs(3),
        "failback before the hold time"
    );
    let at_backup = backup.stats().accepted;
    std::thread::sleep(Duration::from_secs(3));
    // Only stragglers (answers in flight) may still reach the backup.
    assert!(
        backup.stats().accepted <= at_backup + 2,
        "the backup still gets work after failback"
    );
    let stats = m.finish();
    assert_eq!(stats.disconnects, 0, "no miner was disconnected: {stats}");
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    assert_no_rejects_but_rare_stale_races("the backup", &backup.stats());
    assert_no_rejects_but_rare_stale_races("the primary", &primary.stats());
    let failovers = proxy
        .metric("quarry_core_upstream_failovers_total")
        .unwrap();
    assert!(
        failovers >= 2.0,
        "failover and failback counted: {failovers}"
    );
    proxy.stop();
    backup.shutdown();
    primary.shutdown();
    remove_dir(&dir);
}

#[test]
fn a_70_30_split_sends_70_percent_of_the_work_to_the_first_upstream() {
    let _serial = serial();
    let dir = fresh_dir("quarry-it-proxy-split");
    let a = sim_pool(UPSTREAM_DIFFICULTY);
    let b = sim_pool(UPSTREAM_DIFFICULTY);
    let mut ua = UpstreamEntry::tcp("a", a.local_addr(), "farm.proxy");
    ua.weight = 70;
    let mut ub = UpstreamEntry::tcp("b", b.local_addr(), "farm.proxy");
    ub.weight = 30;
    let proxy = proxy(&dir, vec![ua, ub], "split");
    wait_until("both upstreams", Duration::from_secs(20), || {
        a.stats().connected >= 1 && b.stats().connected >= 1
    });
    let m = miners(&proxy, 4, 2_000.0);
    std::thread::sleep(Duration::from_secs(30));
    let stats = m.finish();
    std::thread::sleep(Duration::from_secs(1));
    let (sa, sb) = (a.stats(), b.stats());
    let share_a = sa.accepted_difficulty / (sa.accepted_difficulty + sb.accepted_difficulty);
    eprintln!(
        "split: a {} shares ({:.6} difficulty), b {} ({:.6}); a's share {share_a:.3}",
        sa.accepted, sa.accepted_difficulty, sb.accepted, sb.accepted_difficulty
    );
    assert!(sa.accepted + sb.accepted >= 200, "too little work: {stats}");
    assert!(
        (share_a - 0.70).abs() <= 0.08,
        "a got {share_a:.3} of the work, configured 0.70"
    );
    assert_no_rejects_but_rare_stale_races("a", &sa);
    assert_no_rejects_but_rare_stale_races("b", &sb);
    proxy.stop();
    a.shutdown();
    b.shutdown();
    remove_dir(&dir);
}

#[test]
fn an_upstream_that_silently_narrows_its_mask_raises_the_alarm_and_is_resubscribed() {
    let _serial = serial();
    let (dir, pool, proxy) = one_upstream("quarry-it-proxy-alarm");
    // ASIC-like miners roll version bits (mask 1fffe000).
    let m = miners_as(
        &proxy,
        4,
        2_000.0,
        ProfileChoice::Fixed(loadtest::miner::client::Profile::Asic),
    );
    wait_until("accepted upstream shares", Duration::from_secs(30), || {
        pool.stats().accepted >= 20
    });
    // The pool now allows only bits 13-14 and tells nobody: every rolled share outside them
    // is rejected. The proxy must notice within seconds and resubscribe (getting the new mask).
    pool.set_version_mask_silently(relay::work::VersionMask(0x0000_6000));
    let changed = Instant::now();
    let noticed = wait_until("the alarm", Duration::from_secs(30), || {
        proxy
            .metric("quarry_core_upstream_alarms_total")
            .unwrap_or(0.0)
            >= 1.0
    });
    eprintln!("wholesale rejects noticed {noticed:?} after the silent mask change");
    wait_until("a resubscription", Duration::from_secs(30), || {
        pool.stats().connections_total >= 2
    });
    let rejected_at_resub: u64 = pool.stats().rejected.values().sum();
    let accepted_at_resub = pool.stats().accepted;
    wait_until(
        "accepts after the resubscription",
        Duration::from_secs(30),
        || pool.stats().accepted >= accepted_at_resub + 20,
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = pool.stats();
    let stats = m.finish();
    eprintln!(
        "silent mask change: {:?} to recover; rejects {:?}; miners {stats}",
        changed.elapsed(),
        after.rejected
    );
    assert!(
        after.rejected.get("bad-version-bits").copied().unwrap_or(0) >= 5,
        "the pool did reject the wide rolls: {:?}",
        after.rejected
    );
    // Once resubscribed, with the narrower mask passed on to the miners, nothing more is
    // rejected (at most answers already in flight).
    let rejected_now: u64 = after.rejected.values().sum();
    assert!(
        rejected_now <= rejected_at_resub + 8,
        "rejects went on after resubscribing: {rejected_at_resub} -> {rejected_now}"
    );
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    proxy.stop();
    pool.shutdown();
    remove_dir(&dir);
}

/// The farm's real shape: miners → quarry-edge (QUIC, batches) → proxying quarry-core →
/// upstream. Shares meeting the upstream target cross the edge's uplink at once (their batch
/// does not wait for the batch timer), are forwarded by the core's gateway, and every share is
/// still credited at the core.
#[test]
fn shares_from_an_edge_behind_a_proxying_core_reach_the_upstream() {
    let _serial = serial();
    let dir = fresh_dir("quarry-it-proxy-edge");
    let pool = sim_pool(UPSTREAM_DIFFICULTY);
    let mut o = ProxyCoreOptions::new(
        dir.clone(),
        vec![UpstreamEntry::tcp("sim", pool.local_addr(), "farm.proxy")],
    );
    o.algorithm = "sha256d".into();
    o.start_difficulty = MINER_DIFFICULTY;
    o.fixed_difficulty = true;
    o.gateway = true;
    let proxy = ProxyCore::start(&o).expect("proxy core with gateway starts");
    let gateway = proxy.gateway.expect("gateway address");
    let edge = loadtest::stack::start_edge(
        &dir,
        gateway,
        &loadtest::stack::StackOptions {
            algorithm: "sha256d".into(),
            start_difficulty: MINER_DIFFICULTY,
            min_difficulty: MINER_DIFFICULTY,
            max_difficulty: MINER_DIFFICULTY,
            ..loadtest::stack::StackOptions::new(dir.clone())
        },
    )
    .expect("edge starts");
    // The edge must have the upstream's job before the miners start.
    wait_until("the upstream connection", Duration::from_secs(20), || {
        pool.stats().connected >= 1
    });
    let m = miners_at(edge.stratum.port(), 4, 2_000.0, ProfileChoice::Mixed);
    std::thread::sleep(Duration::from_secs(15));
    let stats = m.finish();
    let accepted = stats.shares.accepted;
    wait_until(
        "every share credited at the core",
        Duration::from_secs(30),
        || {
            proxy
                .metric("quarry_core_shares_credited_total")
                .unwrap_or(0.0) as u64
                >= accepted
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let up = pool.stats();
    let expected = stats.shares.hashes as f64 / (4_294_967_296.0 * UPSTREAM_DIFFICULTY);
    let body = loadtest::process::scrape(proxy.metrics).unwrap_or_default();
    for l in body.lines().filter(|l| {
        l.starts_with("quarry_core_upstream_not_forwarded")
            || l.starts_with("quarry_core_upstream_shares_forwarded")
    }) {
        eprintln!("{l}");
    }
    eprintln!(
        "edge: upstream accepted {} (expected {expected:.0}), rejected {:?} (stale ms late {:?}); miners {stats}",
        up.accepted, up.rejected, up.stale_late_ms
    );
    assert!(expected > 100.0, "too little work: {expected}");
    assert!(
        (up.accepted as f64 - expected).abs() <= 5.0 * expected.sqrt() + 0.05 * expected,
        "upstream accepted {}, the hashrate predicts {expected:.0}",
        up.accepted
    );
    assert_no_rejects_but_rare_stale_races("the upstream", &up);
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    let credited = proxy.metric("quarry_core_shares_credited_total").unwrap() as u64;
    assert_eq!(credited, accepted, "credited once each at the core");
    drop(edge);
    proxy.stop();
    pool.shutdown();
    remove_dir(&dir);
}

/// A pool that hangs keeps its sockets open: only the answer timeout can tell. With
/// `timeout_secs = 2` the work must be at the backup within about that.
#[test]
fn a_hung_upstream_loses_the_work_within_the_configured_timeout() {
    let _serial = serial();
    let dir = fresh_dir("quarry-it-proxy-hung");
    let primary = sim_pool(UPSTREAM_DIFFICULTY);
    let backup = sim_pool(UPSTREAM_DIFFICULTY);
    let proxy = proxy_with(
        &dir,
        vec![
            UpstreamEntry::tcp("primary", primary.local_addr(), "farm.proxy"),
            UpstreamEntry::tcp("backup", backup.local_addr(), "farm.proxy"),
        ],
        "failover",
        |o| {
            // A frozen primary never finishes a handshake again, so it cannot win the work
            // back; a short hold lets it take the work at the start if the backup answered first.
            o.failback_secs = 1.0;
            o.timeout_secs = 2.0;
        },
    );
    wait_active(&proxy, "primary");
    let m = miners(&proxy, 4, 2_000.0);
    wait_until("shares at the primary", Duration::from_secs(30), || {
        primary.stats().accepted >= 5
    });
    let before = backup.stats().accepted;
    primary.freeze(true);
    let took = wait_until("shares at the backup", Duration::from_secs(20), || {
        backup.stats().accepted > before
    });
    eprintln!("hung primary: first share at the backup {took:?} after the freeze (timeout 2 s)");
    assert!(
        took <= Duration::from_secs(5),
        "the hung upstream kept the work for {took:?} with a 2 s timeout"
    );
    let stats = m.finish();
    assert_eq!(stats.disconnects, 0, "{stats}");
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    assert_no_rejects_but_rare_stale_races("the backup", &backup.stats());
    primary.freeze(false);
    proxy.stop();
    primary.shutdown();
    backup.shutdown();
    remove_dir(&dir);
}

/// `mining.set_extranonce` and `client.reconnect` from the upstream are honoured: after either,
/// forwarded work keeps being accepted (the proxy's miners never see their extranonce1 change,
/// nor a disconnect).
#[test]
fn set_extranonce_and_client_reconnect_from_the_upstream_are_followed() {
    let _serial = serial();
    let (dir, pool, proxy) = one_upstream("quarry-it-proxy-extranonce");
    let m = miners(&proxy, 4, 2_000.0);
    wait_until("accepted shares", Duration::from_secs(30), || {
        pool.stats().accepted >= 20
    });
    pool.set_extranonce_all();
    let after_change = pool.stats().accepted;
    // Enough shares in each phase that a proxy still mining on a dead extranonce1 or
    // connection would show.
    wait_until(
        "accepts with the new extranonce1",
        Duration::from_secs(30),
        || pool.stats().accepted >= after_change + 100,
    );
    let before = pool.stats();
    pool.reconnect_all(None, None, 1);
    wait_until("the proxy to reconnect", Duration::from_secs(20), || {
        pool.stats().connections_total > before.connections_total
    });
    let after_reconnect = pool.stats().accepted;
    wait_until(
        "accepts after the reconnect",
        Duration::from_secs(30),
        || pool.stats().accepted >= after_reconnect + 100,
    );
    let stats = m.finish();
    let up = pool.stats();
    eprintln!("extranonce/reconnect: upstream {up:?}");
    assert_no_rejects_but_rare_stale_races("the upstream", &up);
    assert_eq!(stats.disconnects, 0, "{stats}");
    assert_eq!(stats.shares.unexpected_rejects, 0, "{stats}");
    proxy.stop();
    pool.shutdown();
    remove_dir(&dir);
}
