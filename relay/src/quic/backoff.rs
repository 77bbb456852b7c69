//! How long an edge waits before dialling the core again.
//!
//! When a core shard restarts, every edge it served loses its connection in the same instant.
//! If they all retried on the same schedule they would arrive together, again and again. Each
//! wait is therefore drawn at random ("full jitter") from a window that doubles with every
//! failed attempt: `[min, min(max, min · 2^(attempt+1))]`. The floor `min` keeps a failing edge
//! from spinning; the cap `max` bounds how long a recovered core waits to see its edges back.
//!
//! Sans-IO: the caller supplies the random number, so a test can drive the schedule exactly.

use std::time::Duration;

/// Exponential backoff with full jitter above a floor.
///
/// ```
/// use std::time::Duration;
/// use relay::quic::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// assert_eq!(backoff.next_delay(0.0), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(0.5), Duration::from_millis(250)); // window [100 ms, 400 ms]
/// backoff.reset(); // connected: the next failure starts from the floor again
/// assert_eq!(backoff.attempts(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempts: u32,
}

/// Past this many doublings the window is pinned at `max` anyway (2^31 · 1 ns > 2 s; any
/// sensible floor reaches any sensible cap well before), and `1u32 << 31` cannot overflow.
const MAX_DOUBLINGS: u32 = 31;

impl Backoff {
    /// A backoff whose waits are never shorter than `min` nor longer than `max`.
    /// If `max < min`, `max` is raised to `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempts: 0,
        }
    }

    /// The default schedule of an edge's uplink: 100 ms floor, 30 s cap.
    pub fn uplink() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// The wait before the next attempt, counting one more failed attempt.
    ///
    /// `unit` is a uniform random number in `[0, 1)` (e.g. `rng.gen::<f64>()`). Values outside
    /// that range are clamped into it, and NaN counts as 0, so a bad generator can never produce
    /// a wait outside `[min, max]`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempts = self.attempts.saturating_add(1);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let span = ceiling.saturating_sub(self.min);
        // Full jitter: anywhere in the window, rounded to the nanosecond. Spans beyond u64
        // nanoseconds (584 years) saturate; the `min` below keeps the result under the cap.
        let span_ns = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos((span_ns as f64 * unit).round() as u64);
        self.min.saturating_add(jitter).min(self.max)
    }

    /// The top of the window the next delay is drawn from.
    pub fn ceiling(&self) -> Duration {
        let doublings = self.attempts.saturating_add(1).min(MAX_DOUBLINGS);
        self.min.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// How many delays were handed out since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Forget past failures: call it once a connection is established (and has proved useful).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn window_doubles_from_floor_until_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let ceilings: Vec<Duration> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay(0.5);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [
                200 * MS,
                400 * MS,
                800 * MS,
                1000 * MS,
                1000 * MS,
                1000 * MS
            ]
        );
    }

    #[test]
    fn delay_is_floor_plus_unit_times_window() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        assert_eq!(b.next_delay(0.0), 100 * MS); // window [100, 200]
        assert_eq!(b.next_delay(0.5), 250 * MS); // window [100, 400]
        assert_eq!(b.next_delay(1.0), 800 * MS); // window [100, 800]
        assert_eq!(b.next_delay(0.25), 475 * MS); // window [100, 1600]
        assert_eq!(b.attempts(), 4);
    }

    #[test]
    fn delay_never_leaves_floor_and_cap_even_with_a_bad_generator() {
        let mut b = Backoff::new(50 * MS, 3000 * MS);
        for (i, unit) in [f64::NAN, -1.0, 2.0, f64::INFINITY, f64::NEG_INFINITY, 0.7]
            .into_iter()
            .cycle()
            .take(200)
            .enumerate()
        {
            let d = b.next_delay(unit);
            assert!(d >= 50 * MS && d <= 3000 * MS, "attempt {i}: {d:?}");
        }
        // 200 attempts: long past the point where the shift would overflow without the cap.
        assert_eq!(b.next_delay(1.0), 3000 * MS);
        assert_eq!(b.next_delay(f64::NAN), 50 * MS);
    }

    #[test]
    fn reset_starts_the_schedule_over() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..5 {
            b.next_delay(1.0);
        }
        assert_eq!(b.next_delay(1.0), 6400 * MS);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(1.0), 200 * MS);
    }

    #[test]
    fn max_below_min_is_raised_to_min() {
        let mut b = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(b.next_delay(0.9), 500 * MS);
        assert_eq!(b.next_delay(0.1), 500 * MS);
    }

    #[test]
    fn zero_floor_gives_zero_delays() {
        let mut b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::ZERO);
    }

    #[test]
    fn uplink_schedule_reaches_its_cap() {
        let mut b = Backoff::uplink();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.next_delay(1.0);
        }
        assert_eq!(last, Duration::from_secs(30));
    }
}
