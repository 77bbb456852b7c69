//! Which upstream pool gets the farm's hashrate right now (sans-IO).
//!
//! Operators list upstream pools in priority order. In **failover** mode all work comes from the
//! first usable one; when it fails the next takes over at once, and when a higher one comes
//! back it gets the work again only after staying up for `failback` — a pool that flaps would
//! otherwise drag the farm back and forth, throwing away work on every switch. In **split**
//! mode the hashrate is divided by weight (70/30): time is cut into periods and each usable
//! upstream gets a slice of every period proportional to its weight, so miners always work on
//! one job at a time and the split is exact on average. An upstream that is down, or demoted
//! after rejecting our work wholesale, gets no slice; the others share its time.

use std::time::{Duration, Instant};

/// How the hashrate is spread over the upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionMode {
    Failover,
    Split,
}

#[derive(Clone, Debug)]
struct Health {
    weight: u32,
    /// Subscribed, authorized and has sent a job: since when.
    up_since: Option<Instant>,
    /// Not to be chosen before this (after wholesale rejects).
    demoted_until: Option<Instant>,
}

/// The choice of upstream, driven by health reports and the clock.
#[derive(Clone, Debug)]
pub struct Selector {
    mode: SelectionMode,
    failback: Duration,
    period: Duration,
    origin: Instant,
    upstreams: Vec<Health>,
    current: Option<usize>,
}

impl Selector {
    /// `weights` in priority order (weights matter only in split mode; 0 counts as 1).
    pub fn new(
        mode: SelectionMode,
        weights: &[u32],
        failback: Duration,
        period: Duration,
        now: Instant,
    ) -> Self {
        Selector {
            mode,
            failback,
            period: period.max(Duration::from_millis(100)),
            origin: now,
            upstreams: weights
                .iter()
                .map(|&w| Health {
                    weight: w.max(1),
                    up_since: None,
                    demoted_until: None,
                })
                .collect(),
            current: None,
        }
    }

    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    pub fn mode(&self) -> SelectionMode {
        self.mode
    }

    /// The upstream is ready to take work (it has a job).
    pub fn set_up(&mut self, i: usize, now: Instant) {
        if let Some(h) = self.upstreams.get_mut(i) {
            h.up_since.get_or_insert(now);
        }
    }

    /// The upstream is gone (disconnected, refused us).
    pub fn set_down(&mut self, i: usize) {
        if let Some(h) = self.upstreams.get_mut(i) {
            h.up_since = None;
        }
    }

    /// Keep work away from it until `until` (it rejected our work wholesale).
    pub fn demote(&mut self, i: usize, until: Instant) {
        if let Some(h) = self.upstreams.get_mut(i) {
            h.demoted_until = Some(until);
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.upstreams.get(i).is_some_and(|h| h.up_since.is_some())
    }

    fn usable(&self, i: usize, now: Instant) -> bool {
        let h = &self.upstreams[i];
        h.up_since.is_some() && h.demoted_until.is_none_or(|t| now >= t)
    }

    /// The upstream whose jobs miners should work on now (`None`: nothing usable). Call it on
    /// every report and at [`Self::next_change`]; the answer only moves when it must.
    pub fn select(&mut self, now: Instant) -> Option<usize> {
        let pick = match self.mode {
            SelectionMode::Failover => self.select_failover(now),
            SelectionMode::Split => self.select_split(now),
        };
        self.current = pick;
        pick
    }

    pub fn current(&self) -> Option<usize> {
        self.current
    }

    fn select_failover(&self, now: Instant) -> Option<usize> {
        let n = self.upstreams.len();
        // Keep the current one while it is usable, unless a higher one has been up long enough.
        if let Some(c) = self.current.filter(|&c| c < n && self.usable(c, now)) {
            let better = (0..c).find(|&i| {
                self.usable(i, now)
                    && self.upstreams[i]
                        .up_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.failback)
            });
            return Some(better.unwrap_or(c));
        }
        // Lost the current one (or none yet): the best usable, at once.
        (0..n).find(|&i| self.usable(i, now))
    }

    /// Each usable upstream's slice of a period: (index, end of its slice in ns).
    fn slices(&self, now: Instant) -> Vec<(usize, u128)> {
        let usable: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| self.usable(i, now))
            .collect();
        let total: u128 = usable
            .iter()
            .map(|&i| u128::from(self.upstreams[i].weight))
            .sum();
        let period = self.period.as_nanos().max(1);
        let mut edge = 0u128;
        let mut out = Vec::with_capacity(usable.len());
        for &i in &usable {
            edge += (period * u128::from(self.upstreams[i].weight))
                .checked_div(total)
                .unwrap_or(0);
            out.push((i, edge));
        }
        if let Some(last) = out.last_mut() {
            last.1 = period;
        }
        out
    }

    fn position(&self, now: Instant) -> u128 {
        now.saturating_duration_since(self.origin).as_nanos() % self.period.as_nanos().max(1)
    }

    fn select_split(&self, now: Instant) -> Option<usize> {
        let pos = self.position(now);
        self.slices(now)
            .into_iter()
            .find(|&(_, end)| pos < end)
            .map(|(i, _)| i)
    }

    /// The next instant the choice may change without any report: a slice boundary in split
    /// mode, a failback or the end of a demotion.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let current = self.current.unwrap_or(usize::MAX);
        for (i, h) in self.upstreams.iter().enumerate() {
            if let Some(t) = h.demoted_until {
                consider(t);
            }
            // Only an upstream above the current one can take the work back.
            if let (SelectionMode::Failover, Some(t), true) = (self.mode, h.up_since, i < current) {
                consider(t + self.failback);
            }
        }
        if self.mode == SelectionMode::Split {
            let pos = self.position(now);
            if let Some(&(_, end)) = self.slices(now).iter().find(|&&(_, end)| pos < end) {
                let ns = u64::try_from(end - pos).unwrap_or(u64::MAX).max(1);
                consider(now + Duration::from_nanos(ns));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn failover_goes_to_the_next_at_once_and_back_only_after_the_hold() {
        let t0 = Instant::now();
        let mut s = Selector::new(SelectionMode::Failover, &[1, 1, 1], secs(30), secs(10), t0);
        assert_eq!(s.select(t0), None);
        s.set_up(1, t0);
        s.set_up(2, t0);
        assert_eq!(s.select(t0), Some(1), "the best usable one, at once");
        s.set_up(0, t0 + secs(5));
        assert_eq!(
            s.select(t0 + secs(6)),
            Some(1),
            "primary not up long enough yet"
        );
        assert_eq!(s.next_change(t0 + secs(6)), Some(t0 + secs(35)));
        assert_eq!(s.select(t0 + secs(35)), Some(0), "failback after 30 s up");
        s.set_down(0);
        assert_eq!(s.select(t0 + secs(36)), Some(1), "failover is immediate");
        s.set_down(1);
        assert_eq!(s.select(t0 + secs(36)), Some(2));
    }

    #[test]
    fn a_demoted_upstream_gets_no_work_until_its_demotion_ends() {
        let t0 = Instant::now();
        let mut s = Selector::new(SelectionMode::Failover, &[1, 1], secs(0), secs(10), t0);
        s.set_up(0, t0);
        s.set_up(1, t0);
        assert_eq!(s.select(t0), Some(0));
        s.demote(0, t0 + secs(60));
        assert_eq!(s.select(t0 + secs(1)), Some(1));
        assert_eq!(s.select(t0 + secs(60)), Some(0));
    }

    #[test]
    fn split_gives_each_upstream_its_weighted_share_of_time() {
        let t0 = Instant::now();
        let mut s = Selector::new(SelectionMode::Split, &[70, 30], secs(0), secs(10), t0);
        s.set_up(0, t0);
        s.set_up(1, t0);
        let mut counts = [0u32; 2];
        for ms in (0..100_000).step_by(10) {
            let i = s.select(t0 + Duration::from_millis(ms)).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [7_000, 3_000]);
        // Boundaries are announced: at 0 s the next change is the 7 s mark.
        assert_eq!(s.next_change(t0), Some(t0 + secs(7)));
        // With one of them down the other gets all the time.
        s.set_down(0);
        assert_eq!(s.select(t0 + secs(1)), Some(1));
    }
}
