//! Variable difficulty: keeps each miner near a target share rate.
//!
//! A miner's share rate depends on its hashrate and its difficulty. Too many shares waste the
//! pool's CPU and bandwidth; too few make the miner's stats and payouts noisy. Vardiff measures
//! the work a connection submits (in difficulty-1 units, i.e. its hashrate), smooths it with an
//! exponentially decaying average, and picks the difficulty that would yield the target rate.
//! Hysteresis keeps it from flapping: the difficulty changes only when the ideal is far enough
//! from the current one.
//!
//! Sans-IO: callers pass `Instant`s in; nothing here reads a clock.

use relay::work::Difficulty;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct VardiffConfig {
    /// Shares per minute the pool wants from each connection (default 18).
    pub target_shares_per_minute: f64,
    pub min: Difficulty,
    pub max: Difficulty,
    /// Shortest time between two retargets.
    pub min_interval: Duration,
    /// A retarget happens at the latest after this long, even with few shares.
    pub max_interval: Duration,
    /// Retarget early once this many shares arrived in the current window.
    pub shares_per_window: u32,
    /// Change only when ideal/current leaves `[1/(1+h), 1+h]`.
    pub hysteresis: f64,
    /// Weight of the newest window in the decayed estimate (0..1].
    pub smoothing: f64,
}

impl Default for VardiffConfig {
    fn default() -> Self {
        VardiffConfig {
            target_shares_per_minute: 18.0,
            min: Difficulty::new(1.0).expect("constant"),
            max: Difficulty::new(1e12).expect("constant"),
            min_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(90),
            shares_per_window: 24,
            hysteresis: 0.4,
            smoothing: 0.5,
        }
    }
}

/// Per-connection vardiff state.
#[derive(Clone, Debug)]
pub struct Vardiff {
    current: Difficulty,
    window_start: Instant,
    window_work: f64,
    window_shares: u32,
    /// Decayed estimate of difficulty-1 work per second (None until the first window closes).
    rate: Option<f64>,
}

impl Vardiff {
    pub fn new(start: Difficulty, now: Instant) -> Self {
        Vardiff {
            current: start,
            window_start: now,
            window_work: 0.0,
            window_shares: 0,
            rate: None,
        }
    }

    pub fn difficulty(&self) -> Difficulty {
        self.current
    }

    /// Resets to a difficulty chosen elsewhere (suggest_difficulty, minimum-difficulty).
    pub fn reset(&mut self, difficulty: Difficulty, now: Instant) {
        *self = Vardiff::new(difficulty, now);
    }

    /// Estimated hashrate in difficulty-1 shares per second.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Records an accepted share of `difficulty`; may return a new difficulty to send.
    pub fn on_share(
        &mut self,
        difficulty: Difficulty,
        now: Instant,
        cfg: &VardiffConfig,
    ) -> Option<Difficulty> {
        self.window_work += difficulty.value();
        self.window_shares += 1;
        self.poll(now, cfg)
    }

    /// Call periodically (e.g. on every job or timer); lowers difficulty for a silent miner.
    pub fn poll(&mut self, now: Instant, cfg: &VardiffConfig) -> Option<Difficulty> {
        let elapsed = now.saturating_duration_since(self.window_start);
        let due = (elapsed >= cfg.min_interval && self.window_shares >= cfg.shares_per_window)
            || elapsed >= cfg.max_interval;
        if !due {
            return None;
        }
        let secs = elapsed.as_secs_f64().max(1e-3);
        let window_rate = self.window_work / secs;
        let rate = match self.rate {
            Some(old) => cfg.smoothing * window_rate + (1.0 - cfg.smoothing) * old,
            None => window_rate,
        };
        self.rate = Some(rate);
        self.window_start = now;
        self.window_work = 0.0;
        self.window_shares = 0;

        let ideal = if rate > 0.0 {
            rate * 60.0 / cfg.target_shares_per_minute
        } else {
            // No work at all in a whole window: the difficulty is far too high.
            self.current.value() / 4.0
        };
        let ratio = ideal / self.current.value();
        if ratio < 1.0 / (1.0 + cfg.hysteresis) || ratio > 1.0 + cfg.hysteresis {
            let next = Difficulty::new(ideal)
                .unwrap_or(cfg.min)
                .clamp(cfg.min, cfg.max);
            if next != self.current {
                self.current = next;
                return Some(next);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: f64) -> Difficulty {
        Difficulty::new(v).unwrap()
    }

    /// Simulates a miner of `hashrate` (diff-1 shares/s) finding shares at exactly its expected
    /// rate for the current difficulty, for `secs` seconds; returns the final difficulty.
    fn run(v: &mut Vardiff, cfg: &VardiffConfig, t0: Instant, hashrate: f64, secs: u64) -> Instant {
        let mut t = t0;
        let end = t0 + Duration::from_secs(secs);
        while t < end {
            let interval = v.difficulty().value() / hashrate;
            t += Duration::from_secs_f64(interval.min(5.0));
            if interval <= 5.0 {
                v.on_share(v.difficulty(), t, cfg);
            } else {
                v.poll(t, cfg);
            }
        }
        t
    }

    #[test]
    fn converges_to_target_share_rate() {
        let cfg = VardiffConfig::default();
        let t0 = Instant::now();
        let mut v = Vardiff::new(d(1.0), t0);
        // 1000 diff-1 shares/s => ideal difficulty 1000*60/18 = 3333.
        run(&mut v, &cfg, t0, 1000.0, 900);
        let ratio = v.difficulty().value() / 3333.3;
        assert!((0.6..1.5).contains(&ratio), "difficulty {}", v.difficulty());
    }

    #[test]
    fn steady_miner_near_target_is_not_retargeted() {
        let cfg = VardiffConfig::default();
        let t0 = Instant::now();
        let mut v = Vardiff::new(d(3333.0), t0);
        let mut t = t0;
        let mut changes = 0;
        for _ in 0..2000 {
            t += Duration::from_secs_f64(60.0 / 18.0);
            if v.on_share(v.difficulty(), t, &cfg).is_some() {
                changes += 1;
            }
        }
        assert_eq!(changes, 0);
    }

    #[test]
    fn silent_miner_gets_lower_difficulty_down_to_min() {
        let cfg = VardiffConfig {
            min: d(8.0),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut v = Vardiff::new(d(1024.0), t0);
        let mut t = t0;
        for _ in 0..20 {
            t += cfg.max_interval;
            v.poll(t, &cfg);
        }
        assert_eq!(v.difficulty(), d(8.0));
    }

    #[test]
    fn difficulty_is_clamped_to_max() {
        let cfg = VardiffConfig {
            max: d(100.0),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut v = Vardiff::new(d(1.0), t0);
        run(&mut v, &cfg, t0, 1e6, 300);
        assert_eq!(v.difficulty(), d(100.0));
    }
}
