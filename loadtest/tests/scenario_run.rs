//! Issue 5: a tiny scenario (20 miners, 5 s, a 1 s blackout on an impaired uplink) runs end to
//! end through the library, and every share the miners heard "accepted" is credited exactly
//! once. Needs the binaries: `cargo build --workspace --bins`.

use loadtest::scenario::{run, write_outputs, RunOptions, Scenario, ScenarioReport};
use loadtest::stack::{fresh_dir, remove_dir};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Runs `s` with its outputs (and rig) in `dir`, logging progress to stderr.
fn run_in(s: &Scenario, dir: &Path) -> ScenarioReport {
    let opts = RunOptions {
        out: dir.to_path_buf(),
        ..RunOptions::default()
    };
    run(s, &opts, Arc::new(AtomicBool::new(false)), |l| {
        eprintln!("{l}")
    })
    .expect("scenario run")
}

const TINY: &str = r#"
name = "tiny"
duration_secs = 5
settle_secs = 30

[miners]
count = 20
shares_per_sec = 200

[link]
delay_ms = 20
jitter_ms = 5
loss = 0.02
blackouts = [{ at_secs = 2, for_secs = 1 }]
"#;

fn run_tiny(baseline: bool) {
    let dir = fresh_dir(if baseline {
        "quarry-it-scenario-baseline"
    } else {
        "quarry-it-scenario"
    });
    let mut s = Scenario::parse(TINY).expect("scenario");
    s.baseline = baseline;
    let r = run_in(&s, &dir);
    write_outputs(&r, &dir).expect("outputs");
    assert!(r.shares_accepted > 0, "no shares accepted");
    assert!(r.settled, "{:?}", r.problems);
    assert_eq!(r.lost, 0, "{:?}", r.problems);
    assert_eq!(r.double_credited, 0, "{:?}", r.problems);
    assert_eq!(r.core_credited, r.shares_accepted);
    assert_eq!(r.credited_unacknowledged, 0, "{:?}", r.problems);
    assert!(r.throughput.iter().any(|s| s.blackout));
    // Each second's answers arrived in the sockets no later than the miners read them; in the
    // baseline the link's 20 ms delay lies between miners and pool, so it shows in both.
    let answered: Vec<_> = r.throughput.iter().filter(|s| s.answers > 0).collect();
    assert!(!answered.is_empty());
    for s in &answered {
        assert!(s.arrival_p99_us <= s.submit_p99_us, "{s:?}");
    }
    if baseline {
        assert!(
            answered.iter().all(|s| s.arrival_p99_us >= 20_000),
            "{answered:?}"
        );
    }
    // The host was watched throughout: about a wake-up a millisecond over the 5 s run.
    let watched = r
        .host_stalls_during_run
        .as_ref()
        .expect("host stalls watched");
    assert!(watched.stalls.wakeups >= 1_000, "{watched:?}");
    assert!(r.throughput.iter().all(|s| s.host_stalls.wakeups > 0));
    // The CPU budget covers the stack's three processes, and no process used more than the
    // machine has.
    let cpu = r.box_cpu.as_ref().expect("CPU measured");
    for v in [cpu.edge_cores, cpu.core_cores, cpu.harness_cores] {
        let v = v.expect("each process measured");
        assert!(v > 0.0 && v <= cpu.cpus as f64 + 0.05, "{cpu:?}");
    }
    assert!(cpu.busy_cores > 0.0 && cpu.idle_cores >= 0.0, "{cpu:?}");
    assert!(r.throughput.iter().all(|s| s.box_cpu.is_some()));
    if !baseline {
        // The edge's connectors ask to run real-time by default; root may, others may not.
        let how = r.edge.connector_scheduling.as_deref().expect("read");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(how.starts_with("real-time SCHED_FIFO 10"), "{how}");
        } else {
            assert!(how.starts_with("fair"), "{how}");
        }
        let rate = r
            .sustained_accepted_per_sec
            .expect("all miners were connected");
        assert!(rate > 0.0, "{rate}");
    }
    for f in ["report.json", "summary.txt", "throughput.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    remove_dir(&dir);
}

#[test]
fn tiny_scenario_through_a_blackout_loses_and_doubles_nothing() {
    run_tiny(false);
}

#[test]
fn tiny_baseline_scenario_loses_and_doubles_nothing() {
    run_tiny(true);
}

const SHORT: &str = r#"
name = "short"
duration_secs = 2
settle_secs = 30

[miners]
count = 10
shares_per_sec = 100
"#;

/// A second run into the same directory must not inherit the first run's journal or spool:
/// the core would count the first run's credits against the second run's miners.
#[test]
fn a_rerun_into_the_same_directory_counts_only_its_own_shares() {
    let dir = fresh_dir("quarry-it-scenario-rerun");
    let s = Scenario::parse(SHORT).expect("scenario");
    for round in 0..2 {
        let r = run_in(&s, &dir);
        assert!(r.shares_accepted > 0, "round {round}: no shares accepted");
        assert!(r.settled, "round {round}: {:?}", r.problems);
        assert_eq!(r.core_credited, r.shares_accepted, "round {round}");
        assert_eq!(r.credited_unacknowledged, 0, "round {round}");
        assert_eq!(r.double_credited, 0, "round {round}");
    }
    remove_dir(&dir);
}

const SMALL_HOSTILE: &str = r#"
name = "small-hostile"
duration_secs = 4
settle_secs = 30

[miners]
count = 20
shares_per_sec = 200

[edge]
handshake_timeout_secs = 2
ban_after_invalid = 20

[hostile]
malformed = 2
oversized = 2
slowloris = 2
invalid_flood = 4
invalid_flood_rate = 400
"#;

/// Hostile clients around honest miners: the honest ones get only the answers they expect, the
/// flood is rejected, and every share a miner heard accepted, the flood's valid hits included,
/// is credited exactly once.
#[test]
fn hostile_clients_cost_honest_miners_nothing_and_every_accepted_share_is_credited_once() {
    let dir = fresh_dir("quarry-it-scenario-hostile");
    let s = Scenario::parse(SMALL_HOSTILE).expect("scenario");
    let r = run_in(&s, &dir);
    assert!(r.shares_accepted > 0, "no shares accepted");
    assert_eq!(r.unexpected_rejects, 0, "{:?}", r.problems);
    assert!(r.settled, "{:?}", r.problems);
    let hostile = r.hostile.as_ref().expect("hostile report");
    let flood = hostile.flood.as_ref().expect("flood stats");
    assert!(flood.shares.rejected > 0, "the flood was not rejected");
    assert!(hostile.lines_sent > 0 && hostile.closed_by_edge > 0);
    assert_eq!(r.lost, 0, "{:?}", r.problems);
    assert_eq!(r.double_credited, 0, "{:?}", r.problems);
    // A flood miner banned (or stopped) between a valid submit and its answer never hears the
    // "accepted" its share was credited for; nothing else may be credited unacknowledged.
    assert!(
        r.credited_unacknowledged as u64 <= flood.shares.unanswered,
        "{} credited but unacknowledged, {} flood submits unanswered",
        r.credited_unacknowledged,
        flood.shares.unanswered
    );
    remove_dir(&dir);
}
