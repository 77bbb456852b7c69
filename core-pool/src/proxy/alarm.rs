//! Noticing that an upstream rejects our work wholesale (sans-IO).
//!
//! Every share we forward was validated twice before it left (by the edge and again by the
//! proxy against the upstream's own target), so an upstream that rejects a run of them is not
//! judging our miners: something between us broke — a `mining.set_extranonce` we missed, a
//! version mask it no longer allows, a job it silently dropped. Burning a farm's hashrate into
//! such an upstream is the worst failure a proxy can have, because nothing looks wrong locally.
//! The alarm fires after `threshold` consecutive non-stale rejects; the first alarm asks for a
//! resubscribe, a second one within `memory` of the first asks for a failover.

use std::time::{Duration, Instant};

/// What the owner should do about an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmAction {
    /// Reconnect and subscribe again (fresh extranonce, mask and jobs).
    Resubscribe,
    /// It keeps rejecting after a resubscribe: take work away from it.
    FailOver,
}

#[derive(Clone, Debug)]
pub struct RejectAlarm {
    threshold: u32,
    memory: Duration,
    consecutive: u32,
    last_alarm: Option<Instant>,
}

impl RejectAlarm {
    pub fn new(threshold: u32, memory: Duration) -> Self {
        RejectAlarm {
            threshold: threshold.max(1),
            memory,
            consecutive: 0,
            last_alarm: None,
        }
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    pub fn accepted(&mut self) {
        self.consecutive = 0;
    }

    /// A forwarded share was rejected; stale rejects (the upstream moved on before our share
    /// arrived) are the link's doing and are not counted.
    pub fn rejected(&mut self, stale: bool, now: Instant) -> Option<AlarmAction> {
        if stale {
            return None;
        }
        self.consecutive += 1;
        if self.consecutive < self.threshold {
            return None;
        }
        self.consecutive = 0;
        let repeat = self
            .last_alarm
            .is_some_and(|t| now.saturating_duration_since(t) < self.memory);
        self.last_alarm = Some(now);
        Some(if repeat {
            AlarmAction::FailOver
        } else {
            AlarmAction::Resubscribe
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_rejects_asks_for_resubscribe_then_failover() {
        let t = Instant::now();
        let mut a = RejectAlarm::new(3, Duration::from_secs(300));
        assert_eq!(a.rejected(false, t), None);
        assert_eq!(a.rejected(true, t), None, "stale rejects do not count");
        assert_eq!(a.rejected(false, t), None);
        assert_eq!(a.rejected(false, t), Some(AlarmAction::Resubscribe));
        for _ in 0..2 {
            assert_eq!(a.rejected(false, t + Duration::from_secs(10)), None);
        }
        assert_eq!(
            a.rejected(false, t + Duration::from_secs(10)),
            Some(AlarmAction::FailOver)
        );
    }

    #[test]
    fn an_accept_resets_the_run_and_old_alarms_are_forgotten() {
        let t = Instant::now();
        let mut a = RejectAlarm::new(2, Duration::from_secs(60));
        a.rejected(false, t);
        a.accepted();
        assert_eq!(a.rejected(false, t), None);
        assert_eq!(a.rejected(false, t), Some(AlarmAction::Resubscribe));
        a.rejected(false, t + Duration::from_secs(61));
        assert_eq!(
            a.rejected(false, t + Duration::from_secs(61)),
            Some(AlarmAction::Resubscribe)
        );
    }
}
