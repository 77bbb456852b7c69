//! Issue 6, edge fallback: a real quarry-edge whose core goes away serves its miners work from
//! a backup pool, and returns to the core when it is back.
//!
//! synthetic-core (the real gateway and journal, as a child process) ← quarry-edge (child
//! process, `[fallback]` after 2 s) ← mio miners hashing for real. The backup pool is the real
//! edge Stratum server with synthetic jobs ([`loadtest::synthetic_pool`]) in this process,
//! offering 8 bytes of extranonce2 (the edge's miners need 4 + 4), a narrower version mask
//! than the edge's (`00ffe000`, so the miners must be told `mining.set_version_mask`) and 4x
//! the edge's share difficulty (so only some shares are worth forwarding). It recomputes the
//! proof of work of every share it receives.
//!
//! The core is stopped, the miners must get backup jobs (`fb-` ids) and the pool must accept
//! shares that are exactly the miners' shares on those jobs (same extranonces, ntime, nonce),
//! with no reject. Then the core starts again on the same journal: miners return to its jobs,
//! every share they were told "accepted" on a core job is credited exactly once, and no share
//! on a backup job is credited at the core.
//!
//! Needs the binaries: `cargo build --workspace --bins`.

use edge::share::{ShareEvent, ShareRecord};
use loadtest::bench_uplink::{free_udp_port, miner_config, Miners, CHEAP_DIFFICULTY};
use loadtest::exactly_once::{compare, credited_id};
use loadtest::process::{find_binary, free_port, metric_sum, scrape, ManagedProcess};
use loadtest::synthetic_core::{ensure_pki, EDGE_ID};
use loadtest::synthetic_pool::{SyntheticPool, SyntheticPoolConfig};
use parking_lot::Mutex;
use relay::work::{Difficulty, VersionMask};
use relay::PowAlgorithm;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BACKUP_USER: &str = "farm1.edge";
const BACKUP_MASK: VersionMask = VersionMask(0x00ff_e000);

/// The backup pool: serves in a thread, keeps every share it accepted.
struct BackupPool {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<ShareRecord>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackupPool {
    fn start() -> BackupPool {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let mut cfg = SyntheticPoolConfig::new(
            listen,
            PowAlgorithm::Sha256d,
            Difficulty::new(CHEAP_DIFFICULTY * 4.0).unwrap(),
        );
        cfg.threads = 1;
        cfg.extranonce2_size = 8;
        cfg.version_mask = BACKUP_MASK;
        let mut pool = SyntheticPool::start(cfg).expect("backup pool starts");
        let addr = pool.local_addr();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next_job = Instant::now() + Duration::from_secs(3);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(ev) = pool.shares().recv_timeout(Duration::from_millis(50)) {
                        match ev {
                            ShareEvent::Accepted(s) => accepted.lock().push(s),
                            ShareEvent::Block(b) => accepted.lock().push(b.share),
                        }
                    }
                    // New work every few seconds, a new block every third job, as pools do.
                    if Instant::now() >= next_job {
                        n += 1;
                        pool.publish(n.is_multiple_of(3));
                        next_job += Duration::from_secs(3);
                    }
                }
            })
        };
        BackupPool {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> Vec<ShareRecord> {
        self.accepted.lock().clone()
    }
}

impl Drop for BackupPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn spawn_core(dir: &Path, gateway: SocketAddr, metrics: SocketAddr) -> ManagedProcess {
    let me = find_binary("quarry-loadtest").expect("quarry-loadtest binary");
    let args = [
        "synthetic-core".to_string(),
        "--gateway".into(),
        gateway.to_string(),
        "--pki".into(),
        dir.join("pki").display().to_string(),
        "--journal".into(),
        dir.join("journal").display().to_string(),
        "--algo".into(),
        "sha256d".into(),
        "--metrics".into(),
        metrics.to_string(),
        "--job-interval".into(),
        "5".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut core = ManagedProcess::spawn(
        "synthetic-core",
        &me,
        &args,
        &dir.join(format!("core-{}.log", now_ms())),
    )
    .expect("synthetic-core starts");
    core.wait_for_port(metrics, Duration::from_secs(30))
        .expect("synthetic-core metrics port");
    core
}

fn edge_config(
    dir: &Path,
    gateway: SocketAddr,
    stratum: SocketAddr,
    metrics: SocketAddr,
    backup: SocketAddr,
) -> PathBuf {
    let pki = dir.join("pki");
    let path = dir.join("edge.toml");
    std::fs::write(
        &path,
        format!(
            r#"[edge]
id = "{EDGE_ID}"
algorithm = "sha256d"
spool_dir = "{spool}"

[core]
endpoints = ["{gateway}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[stratum]
listen = "{stratum}"
start_difficulty = {d:e}
min_difficulty = {d:e}
max_difficulty = {d:e}

[metrics]
listen = "{metrics}"

[fallback]
url = "stratum+tcp://{backup}"
user = "{BACKUP_USER}"
after_secs = 2
"#,
            spool = dir.join("spool").display(),
            ca = pki.join("ca.crt").display(),
            cert = pki.join(format!("{EDGE_ID}.crt")).display(),
            key = pki.join(format!("{EDGE_ID}.key")).display(),
            d = CHEAP_DIFFICULTY,
        ),
    )
    .unwrap();
    path
}

/// `quarry_edge_fallback_shares_total{result="..."}`.
fn fallback_shares(body: &str, result: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.starts_with("quarry_edge_fallback_shares_total{")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.chars().take(220).collect()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn edge_metric(edge: SocketAddr, name: &str) -> f64 {
    scrape(edge).map_or(-1.0, |b| metric_sum(&b, name))
}

/// The sum of `name`'s samples whose labels contain `label`.
fn edge_metric_with(edge: SocketAddr, name: &str, label: &str) -> f64 {
    scrape(edge).map_or(-1.0, |b| {
        b.lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    })
}

fn core_credited(core: SocketAddr) -> f64 {
    scrape(core).map_or(0.0, |b| metric_sum(&b, "quarry_core_shares_credited_total"))
}

#[test]
fn edge_serves_the_backup_pool_while_the_core_is_down_and_returns_without_double_credit() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    if find_binary("quarry-edge").is_err() || find_binary("quarry-loadtest").is_err() {
        panic!("build the binaries first: cargo build --workspace --bins");
    }
    let dir = loadtest::stack::fresh_dir("quarry-edge-fallback");
    std::fs::create_dir_all(&dir).unwrap();
    ensure_pki(&dir.join("pki")).unwrap();
    let backup = BackupPool::start();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_udp_port().unwrap())
        .parse()
        .unwrap();
    let core_metrics: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let mut core = spawn_core(&dir, gateway, core_metrics);
    let stratum: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let edge_metrics: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let config = edge_config(&dir, gateway, stratum, edge_metrics, backup.addr);
    let config_arg = config.display().to_string();
    let mut edge = ManagedProcess::spawn(
        "quarry-edge",
        &find_binary("quarry-edge").unwrap(),
        &["run", "--config", &config_arg],
        &dir.join(format!("edge-{}.log", now_ms())),
    )
    .expect("quarry-edge starts");
    edge.wait_for_port(stratum, Duration::from_secs(60))
        .expect("edge stratum port");
    wait_until(
        "edge connected to the core",
        Duration::from_secs(30),
        || edge_metric(edge_metrics, "quarry_edge_uplink_connected") == 1.0,
    );

    let mut mcfg = miner_config(stratum, 4, 40.0, CHEAP_DIFFICULTY, None);
    mcfg.record_accepted = true;
    let miners = Miners::start(mcfg);

    // 1. Core work, credited at the core.
    wait_until(
        "shares credited at the core",
        Duration::from_secs(30),
        || core_credited(core_metrics) >= 50.0,
    );
    assert_eq!(
        edge_metric(edge_metrics, "quarry_edge_fallback_active"),
        0.0
    );

    // 2. The core goes away: after 2 s the miners work for the backup pool.
    let core_stopped = Instant::now();
    core.stop(Duration::from_secs(10));
    wait_until(
        "the edge serves the backup pool",
        Duration::from_secs(40),
        || edge_metric(edge_metrics, "quarry_edge_fallback_active") == 1.0,
    );
    // The core's QUIC close reaches the edge at once, so this is `after_secs` plus the backup
    // pool's handshake, not the 20 s idle timeout on top (docs/BENCHMARKS.md, edge fallback).
    eprintln!(
        "core stopped -> miners on the backup pool's work: {:?}",
        core_stopped.elapsed()
    );
    assert_eq!(
        edge_metric_with(
            edge_metrics,
            "quarry_edge_uplink_lost_total",
            "reason=\"shutdown\""
        ),
        1.0,
        "the stopping core's QUIC close reached the edge (not its idle timeout)"
    );
    wait_until(
        "shares accepted by the backup pool",
        Duration::from_secs(40),
        || backup.accepted().len() >= 40,
    );

    // 3. The core is back on the same journal: miners return to its work.
    let mut core = spawn_core(&dir, gateway, core_metrics);
    wait_until(
        "the edge is back on the core",
        Duration::from_secs(90),
        || {
            edge_metric(edge_metrics, "quarry_edge_fallback_active") == 0.0
                && edge_metric(edge_metrics, "quarry_edge_uplink_connected") == 1.0
        },
    );
    let credited_on_return = core_credited(core_metrics);
    wait_until(
        "new core work credited after the return",
        Duration::from_secs(30),
        || core_credited(core_metrics) >= credited_on_return + 50.0,
    );

    let stats = miners.finish().expect("miners ran");
    // Settle: everything the edge accepted on core jobs is acked (backup shares never are).
    wait_until("edge spool drained", Duration::from_secs(30), || {
        edge_metric(edge_metrics, "quarry_edge_spool_pending_shares") == 0.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let edge_body = scrape(edge_metrics).expect("edge metrics");
    // The edge's own account of the switches (timestamps for docs/BENCHMARKS.md).
    let log = std::fs::read_to_string(edge.log_path()).unwrap_or_default();
    for line in log.lines().filter(|l| {
        [
            "uplink lost",
            "uplink connected",
            "miners now work for the backup pool",
            "miners return to its work",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        println!("edge: {}", strip_ansi(line));
    }
    edge.stop(Duration::from_secs(10));
    core.stop(Duration::from_secs(10));
    let at_backup = backup.accepted();
    drop(backup);

    println!(
        "miners: {} accepted, {} rejected {:?}, stale races {}, unexpected {:?}, problems {:?}",
        stats.shares.accepted,
        stats.shares.rejected,
        stats.shares.rejected_by_code,
        stats.shares.stale_races,
        stats.shares.unexpected_rejects_by_code,
        stats.problems
    );
    assert_eq!(
        stats.shares.unexpected_rejects, 0,
        "valid shares rejected (a version mask the miners were not told?): {:?}",
        stats.shares.unexpected_rejects_by_code
    );
    assert!(
        !stats.problems.iter().any(|p| p.contains("version_mask")),
        "{:?}",
        stats.problems
    );

    let is_backup = |id: &String| id.split('/').nth(1).is_some_and(|j| j.starts_with("fb-"));
    let (fb_ids, core_ids): (Vec<String>, Vec<String>) =
        stats.accepted_ids.iter().cloned().partition(is_backup);
    assert!(
        fb_ids.len() >= 40,
        "miners worked on backup jobs: {}",
        fb_ids.len()
    );
    assert!(
        core_ids.len() >= 100,
        "and on core jobs: {}",
        core_ids.len()
    );

    // The backup pool got the miners' shares on its jobs, rebuilt as its own
    // (extranonce2 = miner extranonce1 ‖ miner extranonce2), and nothing else.
    let fb_keys: HashSet<String> = fb_ids
        .iter()
        .map(|id| {
            let p: Vec<&str> = id.split('/').collect();
            format!("{}{}/{}/{}", p[2], p[3], p[4], p[5])
        })
        .collect();
    assert!(!at_backup.is_empty());
    for s in &at_backup {
        assert_eq!(&*s.worker, BACKUP_USER);
        assert!(
            !s.job_id.as_str().starts_with("fb-"),
            "the pool's own job ids"
        );
        let key = format!("{}/{:08x}/{:08x}", s.extranonce2, s.ntime, s.nonce);
        assert!(
            fb_keys.contains(&key),
            "backup pool share {key} is no miner's share"
        );
    }
    let forwarded = fallback_shares(&edge_body, "forwarded");
    let accepted_upstream = fallback_shares(&edge_body, "accepted");
    let below = fallback_shares(&edge_body, "below_target");
    println!(
        "fallback: miners {} on backup jobs, forwarded {forwarded}, below target {below}, not forwarded {}, backup accepted {} (edge saw {accepted_upstream}), stale {}, rejected {}, timeout {}, lost {}",
        fb_ids.len(),
        fallback_shares(&edge_body, "not_forwarded"),
        at_backup.len(),
        fallback_shares(&edge_body, "stale"),
        fallback_shares(&edge_body, "rejected"),
        fallback_shares(&edge_body, "timeout"),
        fallback_shares(&edge_body, "lost"),
    );
    assert_eq!(fallback_shares(&edge_body, "rejected"), 0.0);
    assert_eq!(accepted_upstream as usize, at_backup.len());
    // Stale: shares that crossed the pool's new block on the wire (a few at most).
    let stale = fallback_shares(&edge_body, "stale");
    assert!(stale <= forwarded / 10.0, "stale {stale} of {forwarded}");
    // At 4x the edge's difficulty about one share in four is worth forwarding.
    assert!(below > forwarded, "below {below} forwarded {forwarded}");

    // The core credited every core share once and no backup share at all.
    let out = std::process::Command::new(find_binary("quarry-core").expect("quarry-core"))
        .args(["journal-dump", "--dir"])
        .arg(dir.join("journal"))
        .output()
        .expect("journal-dump");
    assert!(
        out.status.success(),
        "journal-dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credited: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("journal-dump line"))
        .collect();
    let fb_credited: Vec<String> = credited
        .iter()
        .filter_map(credited_id)
        .filter(is_backup)
        .collect();
    assert!(
        fb_credited.is_empty(),
        "backup shares credited at the core: {fb_credited:?}"
    );
    let report = compare(&core_ids, &credited);
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(report.credited, report.accepted, "{report:?}");
    loadtest::stack::remove_dir(&dir);
}
