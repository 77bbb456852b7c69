//! Where the machine's CPU went during a run: to the edge, the core, the harness itself, the
//! kernel's packet work that no process is charged for (softirq), the hypervisor (steal), or
//! nowhere (idle).
//!
//! The steady goal is measured on a 2-core machine that the harness shares with the stack, so a
//! latency tail has to be read against how full the box was, and the per-process figures alone
//! do not say that: idle time and the hypervisor's steal are no process's. Loopback TCP's
//! receive work runs in softirq; with tick-based CPU accounting (this guest's kernel) a tick that
//! lands in it is also charged to the process it interrupted, so the processes add up to about
//! the busy total and the softirq figure says how much of it was packet work. The report
//! carries the whole budget, for the run and for every second, in cores (they add up to `cpus`).
//!
//! [`CpuTimes`] and [`BoxCpu::between`] are plain arithmetic over `/proc/stat` text and tick
//! counts, tested with made-up figures; [`Snapshot::take`] is the only part that reads `/proc`.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The machine-wide line of `/proc/stat`, in clock ticks since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// The aggregate `cpu ` line of a `/proc/stat` text (older kernels without a `steal`
    /// column read as none stolen).
    pub fn parse(proc_stat: &str) -> Option<CpuTimes> {
        let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
        let mut f = line.split_whitespace().skip(1).map(|v| v.parse::<u64>());
        let mut next = |required: bool| match f.next() {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => None,
            None if required => None,
            None => Some(0),
        };
        Some(CpuTimes {
            user: next(true)?,
            nice: next(true)?,
            system: next(true)?,
            idle: next(true)?,
            iowait: next(false)?,
            irq: next(false)?,
            softirq: next(false)?,
            steal: next(false)?,
        })
    }

    /// How many per-CPU lines (`cpu0`, `cpu1`, ...) the text has: the CPUs the machine-wide
    /// line adds up.
    pub fn cpus_in(proc_stat: &str) -> usize {
        proc_stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count()
    }

    fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

/// The processes of the stack, by pid (none where a run has no such process).
#[derive(Clone, Copy, Debug, Default)]
pub struct StackPids {
    pub edge: Option<u32>,
    pub core: Option<u32>,
    /// The process that runs the miners and the hostile clients; a storm's worker processes
    /// are not in it.
    pub harness: Option<u32>,
}

/// CPU times at one instant: the machine's and the stack processes' (seconds of CPU).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub machine: CpuTimes,
    pub cpus: usize,
    pub edge_secs: Option<f64>,
    pub core_secs: Option<f64>,
    pub harness_secs: Option<f64>,
}

impl Snapshot {
    /// Reads `/proc/stat` and the processes' `/proc/PID/stat`; `None` if the machine's line
    /// cannot be read (not Linux, or no `/proc`).
    pub fn take(pids: &StackPids) -> Option<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = |pid: Option<u32>| pid.and_then(crate::scenario::proc_cpu_secs);
        Some(Snapshot {
            at: Instant::now(),
            machine: CpuTimes::parse(&stat)?,
            cpus: CpuTimes::cpus_in(&stat).max(1),
            edge_secs: cpu(pids.edge),
            core_secs: cpu(pids.core),
            harness_secs: cpu(pids.harness),
        })
    }
}

/// Where the CPU went between two snapshots, in cores: `busy_cores + idle_cores == cpus`, and
/// `busy_cores` splits into user, system, softirq (hard and soft interrupts) and steal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BoxCpu {
    pub cpus: usize,
    pub busy_cores: f64,
    pub user_cores: f64,
    pub system_cores: f64,
    /// Interrupt and softirq work: on loopback, most of the TCP receive path.
    pub softirq_cores: f64,
    /// Taken by the hypervisor for other guests while this one wanted to run.
    pub steal_cores: f64,
    pub idle_cores: f64,
    pub edge_cores: Option<f64>,
    pub core_cores: Option<f64>,
    pub harness_cores: Option<f64>,
}

impl BoxCpu {
    /// The machine's share per tick category, scaled to its cores; the processes' CPU seconds
    /// over the wall-clock time between the snapshots.
    pub fn between(a: &Snapshot, b: &Snapshot) -> Option<BoxCpu> {
        let cpus = b.cpus;
        let d = b.machine.since(&a.machine);
        let total = d.total();
        let wall = b.at.checked_duration_since(a.at)?.as_secs_f64();
        if total == 0 || wall <= 0.0 {
            return None;
        }
        let cores = |ticks: u64| cpus as f64 * ticks as f64 / total as f64;
        let per_wall = |x: Option<f64>, y: Option<f64>| Some(((y? - x?) / wall).max(0.0));
        let idle = cores(d.idle + d.iowait);
        Some(BoxCpu {
            cpus,
            busy_cores: cpus as f64 - idle,
            user_cores: cores(d.user + d.nice),
            system_cores: cores(d.system),
            softirq_cores: cores(d.irq + d.softirq),
            steal_cores: cores(d.steal),
            idle_cores: idle,
            edge_cores: per_wall(a.edge_secs, b.edge_secs),
            core_cores: per_wall(a.core_secs, b.core_secs),
            harness_cores: per_wall(a.harness_secs, b.harness_secs),
        })
    }
}

impl std::fmt::Display for BoxCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} of {} cores busy (user {:.2}, system {:.2}, softirq {:.2}, steal {:.2})",
            self.busy_cores,
            self.cpus,
            self.user_cores,
            self.system_cores,
            self.softirq_cores,
            self.steal_cores
        )?;
        let mut who = Vec::new();
        for (name, v) in [
            ("edge", self.edge_cores),
            ("core", self.core_cores),
            ("harness", self.harness_cores),
        ] {
            if let Some(v) = v {
                who.push(format!("{name} {v:.2}"));
            }
        }
        if !who.is_empty() {
            write!(f, "; by process: {}", who.join(", "))?;
        }
        Ok(())
    }
}

/// The meter a run keeps: whole-run figures, and one per second.
#[derive(Debug)]
pub struct BoxCpuMeter {
    pids: StackPids,
    start: Snapshot,
    last: Snapshot,
}

impl BoxCpuMeter {
    /// `None` where `/proc/stat` cannot be read.
    pub fn start(pids: StackPids) -> Option<BoxCpuMeter> {
        let start = Snapshot::take(&pids)?;
        Some(BoxCpuMeter {
            pids,
            start,
            last: start,
        })
    }

    /// Since the previous call (or the start).
    pub fn take_interval(&mut self) -> Option<BoxCpu> {
        let now = Snapshot::take(&self.pids)?;
        let interval = BoxCpu::between(&self.last, &now);
        self.last = now;
        interval
    }

    /// Since the start.
    pub fn finish(self) -> Option<BoxCpu> {
        let now = Snapshot::take(&self.pids)?;
        BoxCpu::between(&self.start, &now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STAT_A: &str = "cpu  1000 0 500 8000 10 0 200 0 0 0\n\
                          cpu0 500 0 250 4000 5 0 100 0 0 0\n\
                          cpu1 500 0 250 4000 5 0 100 0 0 0\n\
                          intr 12345\n";
    // 2 CPUs × 1 s at 100 ticks/s = 200 ticks: 60 user, 50 system, 40 softirq, 10 steal,
    // 40 idle.
    const STAT_B: &str = "cpu  1060 0 550 8040 10 0 240 10 0 0\n";

    fn snap(at: Instant, stat: &str, edge: f64, harness: f64) -> Snapshot {
        Snapshot {
            at,
            machine: CpuTimes::parse(stat).expect("a cpu line"),
            cpus: 2,
            edge_secs: Some(edge),
            core_secs: None,
            harness_secs: Some(harness),
        }
    }

    #[test]
    fn the_machine_line_is_read_and_a_missing_steal_column_is_none_stolen() {
        let t = CpuTimes::parse(STAT_A).expect("parses");
        assert_eq!(
            (t.user, t.system, t.idle, t.softirq, t.steal),
            (1000, 500, 8000, 200, 0)
        );
        let old = CpuTimes::parse("cpu  7 1 2 90\n").expect("four columns are enough");
        assert_eq!((old.user, old.nice, old.idle, old.steal), (7, 1, 90, 0));
        assert_eq!(
            CpuTimes::parse("cpu0 1 2 3 4\n"),
            None,
            "per-CPU lines only"
        );
        assert_eq!(CpuTimes::parse("cpu  1 x 3 4\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuTimes::cpus_in(STAT_A), 2);
    }

    #[test]
    fn the_budget_is_split_in_cores_that_add_up_to_the_machine() {
        let t0 = Instant::now();
        let a = snap(t0, STAT_A, 10.0, 20.0);
        let b = snap(t0 + Duration::from_secs(2), STAT_B, 11.5, 21.0);
        let c = BoxCpu::between(&a, &b).expect("time passed");
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        assert!(close(c.user_cores, 0.6) && close(c.system_cores, 0.5));
        assert!(close(c.softirq_cores, 0.4) && close(c.steal_cores, 0.1));
        assert!(close(c.idle_cores, 0.4) && close(c.busy_cores, 1.6));
        assert!(close(
            c.user_cores + c.system_cores + c.softirq_cores + c.steal_cores + c.idle_cores,
            2.0
        ));
        // Processes: CPU seconds over the 2 s between the snapshots.
        assert_eq!(c.edge_cores, Some(0.75));
        assert_eq!(c.harness_cores, Some(0.5));
        assert_eq!(c.core_cores, None, "no core process in this run");
        let line = c.to_string();
        assert!(line.starts_with("1.60 of 2 cores busy"), "{line}");
        assert!(
            line.ends_with("by process: edge 0.75, harness 0.50"),
            "{line}"
        );
    }

    #[test]
    fn no_ticks_or_no_time_between_snapshots_gives_nothing() {
        let t0 = Instant::now();
        let a = snap(t0, STAT_A, 0.0, 0.0);
        assert_eq!(BoxCpu::between(&a, &a), None);
        let later = snap(t0 + Duration::from_secs(1), STAT_B, 0.0, 0.0);
        assert_eq!(BoxCpu::between(&later, &a), None, "snapshots out of order");
    }

    #[test]
    fn the_meter_reads_this_machine() {
        let me = std::process::id();
        let mut m = BoxCpuMeter::start(StackPids {
            harness: Some(me),
            ..StackPids::default()
        })
        .expect("/proc/stat on Linux");
        let spin_until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < spin_until {
            std::hint::black_box(0u64);
        }
        let i = m.take_interval().expect("ticks passed in 50 ms");
        assert!(i.busy_cores >= 0.0 && i.busy_cores <= 2.0 + 1e-9, "{i:?}");
        assert!(i.harness_cores.is_some());
        let whole = m.finish().expect("ticks passed");
        assert!(whole.idle_cores >= 0.0 && whole.idle_cores <= 2.0 + 1e-9);
    }
}
