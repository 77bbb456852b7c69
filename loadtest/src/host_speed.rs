//! How fast this host is right now, measured just before a run.
//!
//! On a shared machine the same binaries can need a third more CPU per share from one hour to the
//! next, mostly in the kernel's loopback TCP path, which a CPU model name does not show. Every
//! scenario report therefore carries two small figures taken before the stack starts: the round
//! trip of a short line over one loopback TCP connection between two threads (the kernel path
//! and the wake-ups every share takes), once with both threads on one CPU and once across two,
//! and the sha256d rate of one core (plain compute). Runs are comparable when these agree.
//!
//! A third figure says how often the host takes the CPUs away: a thread spinning on each CPU
//! notes every gap of a millisecond or more between two readings of the clock. On a quiet machine
//! these are rare; on a shared virtual machine they can add up to about 1% of the time, with single
//! gaps over 10 ms, and every share in flight during one waits it out. A p99 latency budget of
//! 2 ms cannot hold when more than about 1% of the time is lost this way, whatever the code does.

use crate::stall_watch::Stalled;
use serde::Serialize;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Round trips timed on the loopback connection (after [`WARM_UP`]).
const ROUND_TRIPS: usize = 4_000;
const WARM_UP: usize = 200;
/// How long the hash rate is measured.
const HASHING: Duration = Duration::from_millis(200);
/// How long the stall probe spins on each CPU (all CPUs at once).
const STALL_PROBE: Duration = Duration::from_secs(2);
/// A line the size of a `mining.submit`.
const LINE: &[u8] = &[b'x'; 160];

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostSpeed {
    /// Round trip of a 160-byte line over loopback TCP between two threads on the same CPU: the
    /// kernel's TCP path (µs, median and 99th percentile).
    pub same_cpu_round_trip: Percentiles,
    /// The same between threads on two CPUs: adds a cross-CPU wake-up each way, which a
    /// virtual machine may pay dearly for. `None` when this process may use only one CPU.
    pub cross_cpu_round_trip: Option<Percentiles>,
    /// sha256d of an 80-byte header, one thread (millions per second).
    pub sha256d_mhs: f64,
    /// Time the CPUs were taken away from a thread spinning on each of them.
    pub stalls: Stalls,
}

/// Gaps of [`crate::stall_watch::STALL`] or more in a spinning thread's clock readings, over all CPUs probed.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Stalls {
    pub cpus: usize,
    pub probe_secs: f64,
    /// Gaps per second, per CPU.
    pub gaps_per_sec: f64,
    /// Share of the probe time lost in those gaps (percent, averaged over the CPUs).
    pub stalled_percent: f64,
    pub longest_ms: f64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
}

impl std::fmt::Display for HostSpeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.same_cpu_round_trip;
        write!(
            f,
            "loopback TCP round trip p50/p99 {:.1}/{:.1} µs on one CPU",
            s.p50_us, s.p99_us
        )?;
        if let Some(c) = self.cross_cpu_round_trip {
            write!(f, ", {:.1}/{:.1} µs across CPUs", c.p50_us, c.p99_us)?;
        }
        write!(f, "; sha256d {:.2} M/s on one core", self.sha256d_mhs)?;
        write!(f, "; {}", self.stalls)
    }
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPUs stalled {:.2}% of the time in gaps >= 1 ms ({:.1}/s per CPU, longest {:.1} ms)",
            self.stalled_percent, self.gaps_per_sec, self.longest_ms
        )
    }
}

/// Tallies the gaps between successive clock readings of one spinning thread (as the stall
/// watcher tallies its late wake-ups). Kept apart from the clock so the arithmetic is tested
/// with made-up readings.
#[derive(Debug)]
struct GapTally {
    start: Instant,
    last: Instant,
    gaps: Stalled,
}

impl GapTally {
    fn new(start: Instant) -> Self {
        GapTally {
            start,
            last: start,
            gaps: Stalled::default(),
        }
    }

    fn observe(&mut self, now: Instant) {
        self.gaps.note(now.saturating_duration_since(self.last));
        self.last = now;
    }

    fn elapsed(&self) -> Duration {
        self.last.saturating_duration_since(self.start)
    }
}

/// Combines the tallies of the CPUs probed at the same time.
fn stalls_of(tallies: &[GapTally]) -> Stalls {
    let cpus = tallies.len();
    let secs: f64 = tallies.iter().map(|t| t.elapsed().as_secs_f64()).sum();
    if cpus == 0 || secs <= 0.0 {
        return Stalls::default();
    }
    let gaps: u64 = tallies.iter().map(|t| t.gaps.late_wakeups).sum();
    let stalled_ms: f64 = tallies.iter().map(|t| t.gaps.late_ms).sum();
    let longest_ms = tallies
        .iter()
        .map(|t| t.gaps.longest_ms)
        .fold(0.0, f64::max);
    Stalls {
        cpus,
        probe_secs: secs / cpus as f64,
        gaps_per_sec: gaps as f64 / secs,
        stalled_percent: 100.0 * stalled_ms / (secs * 1e3),
        longest_ms,
    }
}

/// Spins one pinned thread per CPU for `probe`, all at once, and tallies their stalls.
fn probe_stalls(cpus: &[usize], probe: Duration) -> io::Result<Stalls> {
    let spinners = cpus
        .iter()
        .map(|&cpu| {
            std::thread::Builder::new()
                .name("host-stall-probe".into())
                .spawn(move || {
                    pin_to(cpu);
                    let start = Instant::now();
                    let mut tally = GapTally::new(start);
                    loop {
                        let now = Instant::now();
                        tally.observe(now);
                        if now.saturating_duration_since(start) >= probe {
                            return tally;
                        }
                    }
                })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let tallies = spinners
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| io::Error::other("a stall probe thread panicked"))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(stalls_of(&tallies))
}

/// Measures the host (about three seconds). Uses 127.0.0.1 only; the measuring threads are pinned,
/// the caller is not.
pub fn measure() -> io::Result<HostSpeed> {
    let cpus = allowed_cpus();
    let first = cpus.first().copied().unwrap_or(0);
    Ok(HostSpeed {
        same_cpu_round_trip: loopback_round_trip(first, first)?,
        cross_cpu_round_trip: match cpus.get(1) {
            Some(&second) => Some(loopback_round_trip(first, second)?),
            None => None,
        },
        sha256d_mhs: sha256d_rate(),
        stalls: probe_stalls(if cpus.is_empty() { &[0] } else { &cpus }, STALL_PROBE)?,
    })
}

/// The CPUs this process may run on (a harness started under `taskset` gets only those).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set that sched_getaffinity fills; CPU_ISSET reads
    // inside it; pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU (best effort: a failed pin only blurs the figure).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn loopback_round_trip(client_cpu: usize, echo_cpu: usize) -> io::Result<Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::Builder::new()
        .name("host-speed-echo".into())
        .spawn(move || -> io::Result<()> {
            pin_to(echo_cpu);
            let (stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut writer = stream.try_clone()?;
            let mut reader = BufReader::new(stream);
            let mut line = Vec::with_capacity(LINE.len() + 1);
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    return Ok(());
                }
                writer.write_all(&line)?;
            }
        })?;
    let client = std::thread::Builder::new()
        .name("host-speed-client".into())
        .spawn(move || -> io::Result<Vec<f64>> {
            pin_to(client_cpu);
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut writer = stream.try_clone()?;
            let mut reader = BufReader::new(stream);
            let mut out = LINE.to_vec();
            out.push(b'\n');
            let mut back = Vec::with_capacity(out.len());
            let mut times = Vec::with_capacity(ROUND_TRIPS);
            for i in 0..WARM_UP + ROUND_TRIPS {
                let start = Instant::now();
                writer.write_all(&out)?;
                back.clear();
                reader.read_until(b'\n', &mut back)?;
                if back != out {
                    return Err(io::Error::other("the loopback echo came back different"));
                }
                if i >= WARM_UP {
                    times.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
            writer.shutdown(Shutdown::Write)?;
            Ok(times)
        })?;
    let joined = |name: &str| io::Error::other(format!("the loopback {name} thread panicked"));
    let times = client.join().map_err(|_| joined("client"));
    let echoed = echo.join().map_err(|_| joined("echo"));
    let mut times = times??;
    echoed??;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Percentiles {
        p50_us: at(0.5),
        p99_us: at(0.99),
    })
}

fn sha256d_rate() -> f64 {
    let mut header = [0u8; 80];
    let start = Instant::now();
    let mut hashes = 0u64;
    while start.elapsed() < HASHING {
        for _ in 0..1_000 {
            header[76..].copy_from_slice(&(hashes as u32).to_le_bytes());
            let h = relay::sha256d(std::hint::black_box(&header));
            header[0] ^= h[0];
            hashes += 1;
        }
    }
    hashes as f64 / start.elapsed().as_secs_f64() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_measured_with_plausible_figures() {
        let s = measure().expect("measure");
        // A loopback round trip takes more than a microsecond and (here) less than a second; the
        // percentiles are ordered; a core hashes at least a thousand headers a second.
        let mut trips = vec![s.same_cpu_round_trip];
        trips.extend(s.cross_cpu_round_trip);
        for t in trips {
            assert!(t.p50_us >= 1.0 && t.p50_us < 1e6, "{s}");
            assert!(t.p99_us >= t.p50_us, "{s}");
        }
        assert!(s.sha256d_mhs > 0.001 && s.sha256d_mhs.is_finite(), "{s}");
        assert!(s.to_string().contains("on one CPU"));
        // The probe ran on every CPU for its whole length; the stalled share is a percentage.
        assert!(s.stalls.cpus >= 1, "{s}");
        assert!(s.stalls.probe_secs >= STALL_PROBE.as_secs_f64(), "{s}");
        assert!((0.0..=100.0).contains(&s.stalls.stalled_percent), "{s}");
        assert!(s.to_string().contains("CPUs stalled"));
    }

    #[test]
    fn only_gaps_of_a_millisecond_or_more_count_as_stalls() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut cpu0 = GapTally::new(t0);
        // Readings 0.2 ms apart for a second, with one 5 ms and one 1 ms gap among them.
        let mut now = 0;
        while now < 1_000_000 {
            now += match now {
                300_000 => 5_000,
                600_000 => 1_000,
                _ => 200,
            };
            cpu0.observe(at(now));
        }
        assert_eq!(cpu0.gaps.late_wakeups, 2);
        assert!((cpu0.gaps.late_ms - 6.0).abs() < 1e-9, "{cpu0:?}");
        assert!((cpu0.gaps.longest_ms - 5.0).abs() < 1e-9, "{cpu0:?}");
        // A second CPU without a gap halves the per-CPU rate and the stalled share.
        let mut cpu1 = GapTally::new(t0);
        for step in 1..=5_000 {
            cpu1.observe(at(step * 200));
        }
        let s = stalls_of(&[cpu0, cpu1]);
        assert_eq!(s.cpus, 2);
        assert!((s.probe_secs - 1.0).abs() < 1e-3, "{s:?}");
        assert!((s.gaps_per_sec - 1.0).abs() < 1e-3, "{s:?}");
        assert!((s.stalled_percent - 0.3).abs() < 1e-3, "{s:?}");
        assert!((s.longest_ms - 5.0).abs() < 1e-9, "{s:?}");
    }
}
