//! Issue 5: a tiny scenario (20 miners, 5 s, a 1 s blackout on an impaired uplink) runs end to
//! end through the library, and every share the miners heard "accepted" is credited exactly
//! once. Needs the binaries: `cargo build --workspace --bins`.

use loadtest::scenario::{run, write_outputs, RunOptions, Scenario};
use loadtest::stack::{fresh_dir, remove_dir};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
    let opts = RunOptions {
        out: dir.clone(),
        ..RunOptions::default()
    };
    let r = run(&s, &opts, Arc::new(AtomicBool::new(false)), |l| {
        eprintln!("{l}")
    })
    .expect("scenario run");
    write_outputs(&r, &dir).expect("outputs");
    assert!(r.shares_accepted > 0, "no shares accepted");
    assert!(r.settled, "{:?}", r.problems);
    assert_eq!(r.lost, 0, "{:?}", r.problems);
    assert_eq!(r.double_credited, 0, "{:?}", r.problems);
    assert_eq!(r.core_credited, r.shares_accepted);
    assert!(r.throughput.iter().any(|s| s.blackout));
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
