//! Watches, during a run, for the moments the host takes the CPUs away.
//!
//! The probe in [`crate::host_speed`] spins before the run; during it, a spinning thread would
//! steal a CPU from what is measured. This watcher sleeps instead: it asks to be woken every
//! [`PERIOD`] and notes how late it woke. With real-time priority (`SCHED_FIFO`, which root may
//! take) it runs the moment it is due, ahead of the edge and the harness, so lateness of a
//! millisecond or more is time the CPUs did not run at all: the hypervisor or a non-preemptible
//! stretch of the kernel. Without that priority it also waits for its turn behind the busy
//! threads, and the report says so.
//!
//! Each second of the report carries the late time and the longest late wake-up of that second,
//! beside its submit latency: a spike in both at once was the host's.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the watcher asks to be woken. Fine enough to see a 2 ms stall, coarse enough to cost
/// well under 1% of a CPU.
const PERIOD: Duration = Duration::from_millis(1);
/// A wait counted as a stall, here and by [`crate::host_speed`]'s probe: far above the clock's
/// own cost (tens of ns) and a timer tick's work, and half the 2 ms latency budget of `steady`.
pub const STALL: Duration = Duration::from_millis(1);

/// Late wake-ups over an interval.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stalled {
    /// Wake-ups in all.
    pub wakeups: u64,
    /// Wake-ups [`STALL`] or more after they were due.
    pub late_wakeups: u64,
    /// Their lateness, summed (ms).
    pub late_ms: f64,
    /// The latest of them (ms).
    pub longest_ms: f64,
}

impl Stalled {
    /// Notes one wake-up that came `late` after it was due (for the spinning probe: one clock
    /// reading, `late` after the one before). Kept apart from the clock and the sleeping so the
    /// arithmetic is tested with made-up durations.
    pub(crate) fn note(&mut self, late: Duration) {
        self.wakeups += 1;
        if late >= STALL {
            let ms = late.as_secs_f64() * 1e3;
            self.late_wakeups += 1;
            self.late_ms += ms;
            self.longest_ms = self.longest_ms.max(ms);
        }
    }

    fn add(&mut self, o: &Stalled) {
        self.wakeups += o.wakeups;
        self.late_wakeups += o.late_wakeups;
        self.late_ms += o.late_ms;
        self.longest_ms = self.longest_ms.max(o.longest_ms);
    }
}

/// The next wake-up: one period after the last one that was due, unless the watcher fell behind
/// by more than a period (a stall), when it starts afresh from now rather than wake at once for
/// every period it missed.
fn next_due(due: Instant, woke: Instant) -> Instant {
    let next = due + PERIOD;
    if woke > next {
        woke + PERIOD
    } else {
        next
    }
}

/// The host's stalls over a whole run.
#[derive(Clone, Debug, Serialize)]
pub struct HostStallsDuringRun {
    /// The watcher ran at real-time priority: its lateness was the host's alone. Otherwise it
    /// includes waiting behind the run's own busy threads.
    pub realtime: bool,
    pub stalls: Stalled,
    /// Late time as a share of the run (percent).
    pub stalled_percent: f64,
}

impl std::fmt::Display for HostStallsDuringRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} wake-ups of {} were 1 ms or more late, {:.0} ms in all ({:.2}% of the run), longest {:.1} ms{}",
            self.stalls.late_wakeups,
            self.stalls.wakeups,
            self.stalls.late_ms,
            self.stalled_percent,
            self.stalls.longest_ms,
            if self.realtime {
                ""
            } else {
                " (not real-time: includes waiting for busy CPUs)"
            }
        )
    }
}

/// The watcher thread of one run; stops when dropped.
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    tally: Arc<parking_lot::Mutex<Stalled>>,
    whole_run: Stalled,
    started: Instant,
    realtime: bool,
    thread: Option<JoinHandle<()>>,
}

impl StallWatch {
    pub fn start() -> std::io::Result<StallWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(parking_lot::Mutex::new(Stalled::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let tally = tally.clone();
            std::thread::Builder::new()
                .name("stall-watch".into())
                .spawn(move || {
                    let _ = tx.send(take_realtime_priority());
                    let mut due = Instant::now() + PERIOD;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let woke = Instant::now();
                        tally.lock().note(woke.saturating_duration_since(due));
                        due = next_due(due, woke);
                    }
                })?
        };
        let realtime = rx.recv().unwrap_or(false);
        Ok(StallWatch {
            stop,
            tally,
            whole_run: Stalled::default(),
            started: Instant::now(),
            realtime,
            thread: Some(thread),
        })
    }

    /// The late wake-ups since the previous call.
    pub fn take_interval(&mut self) -> Stalled {
        let s = std::mem::take(&mut *self.tally.lock());
        self.whole_run.add(&s);
        s
    }

    /// Everything noted so far, also what no interval took yet.
    fn whole_run(&mut self) -> Stalled {
        self.take_interval();
        self.whole_run
    }

    /// Stops the watcher and sums up the run.
    pub fn finish(mut self) -> HostStallsDuringRun {
        let stalls = self.whole_run();
        let watched_ms = self.started.elapsed().as_secs_f64().max(1e-3) * 1e3;
        HostStallsDuringRun {
            realtime: self.realtime,
            stalls,
            stalled_percent: 100.0 * stalls.late_ms / watched_ms,
        }
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Best effort: `SCHED_FIFO` at the lowest real-time priority, enough to run ahead of every
/// ordinary thread. Refused without the privilege; the watcher then runs as any thread.
fn take_realtime_priority() -> bool {
    // SAFETY: sched_param is a plain struct; pid 0 is the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 1 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wake_ups_a_millisecond_late_or_more_count() {
        let ms = |m: f64| Duration::from_secs_f64(m / 1e3);
        let mut s = Stalled::default();
        for late in [0.05, 0.9, 4.0, 1.5] {
            s.note(ms(late));
        }
        assert_eq!(s.wakeups, 4);
        assert_eq!(s.late_wakeups, 2);
        assert!((s.late_ms - 5.5).abs() < 1e-6, "{s:?}");
        assert!((s.longest_ms - 4.0).abs() < 1e-6, "{s:?}");
        // Exactly the threshold counts.
        s.note(STALL);
        assert_eq!(s.late_wakeups, 3);
    }

    #[test]
    fn a_watcher_that_fell_behind_starts_afresh_instead_of_catching_up() {
        let t0 = Instant::now();
        assert_eq!(next_due(t0, t0 + PERIOD / 2), t0 + PERIOD);
        let late = t0 + PERIOD * 10;
        assert_eq!(next_due(t0, late), late + PERIOD);
    }

    #[test]
    fn the_watcher_runs_and_stops() {
        let mut w = StallWatch::start().expect("start");
        std::thread::sleep(Duration::from_millis(50));
        let s = w.take_interval();
        // Woken every millisecond: even a stalling host gets a handful in 50 ms.
        assert!(s.wakeups >= 5, "{s:?}");
        assert!(s.late_wakeups <= s.wakeups, "{s:?}");
        std::thread::sleep(Duration::from_millis(20));
        let run = w.finish();
        assert!(run.stalls.wakeups > s.wakeups, "{run:?} after {s:?}");
        assert!((0.0..=100.0).contains(&run.stalled_percent), "{run:?}");
    }
}
