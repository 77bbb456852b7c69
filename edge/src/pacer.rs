//! Decides how a connector waits between loop turns.
//!
//! A fair-scheduled connector blocks in `epoll_wait` until something is ready, and submits
//! gather by themselves while it waits for the CPU. A real-time one ([`crate::realtime`]) gets
//! the CPU the instant a submit lands, so left alone it would run a turn per share, paying a
//! wake-up and two context switches for each: measured here, that took the edge from 0.67 to
//! 1.0 cores at 50,000 shares/s and filled the machine. So, when busy, after each turn it
//! sleeps a fixed gather time and then serves everything that came in one turn: a latency
//! bounded by the gather instead of by the scheduler, at a few thousand wake-ups a second.
//!
//! Gathering only pays when submits come faster than one per gather: a small farm's connector,
//! woken a few hundred times a second, would only add the gather to every answer (measured
//! here, 1,000 miners: p50 0.07 ms without, 0.28 ms with). So a real-time connector gathers
//! only after a turn that served at least one socket per gather time since the turn before.

use std::time::Duration;

/// Ready sockets one loop turn asks the kernel for.
pub const TURN_EVENTS: usize = 256;

/// How the connector waits before its next look at the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Block until a socket is ready (or the housekeeping timeout passes).
    Block(Duration),
    /// Look again at once: work is waiting.
    Poll,
    /// Sleep this long, whatever arrives, then look without blocking.
    Gather(Duration),
}

/// What the last turn did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// Ready sockets (and wake-ups) the kernel reported.
    pub ready: usize,
    /// A job broadcast or a close wave still has slices to go: a fair connector only looks for
    /// ready sockets between its slices.
    pub backlog: bool,
    /// Time since the previous turn ended: the ready sockets came in over this span.
    pub span: Duration,
}

/// Housekeeping (idle timeouts, lane syncs) runs at least this often.
pub const IDLE_WAIT: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// `Some` for a real-time connector.
    gather: Option<Duration>,
}

impl Pacer {
    pub fn fair() -> Self {
        Pacer { gather: None }
    }

    pub fn real_time(gather: Duration) -> Self {
        Pacer {
            gather: Some(gather),
        }
    }

    pub fn gathers(&self) -> bool {
        self.gather.is_some()
    }

    /// The wait before the turn after `last`.
    pub fn next(&self, last: Turn) -> Wait {
        // A full turn means more sockets are ready than one turn takes: no waiting, whoever
        // schedules us, or the backlog grows.
        if last.ready >= TURN_EVENTS {
            return Wait::Poll;
        }
        match self.gather {
            Some(g) if last.backlog || busy(last, g) => Wait::Gather(g),
            Some(_) => Wait::Block(IDLE_WAIT),
            None if last.backlog => Wait::Poll,
            None => Wait::Block(IDLE_WAIT),
        }
    }
}

/// Whether the turn's sockets came at least one per gather time: the next gather would
/// then collect work rather than only delay it.
fn busy(last: Turn, gather: Duration) -> bool {
    last.ready > 0 && gather.saturating_mul(last.ready as u32) >= last.span
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_micros(250);

    /// A turn that served `served` sockets that came in over `span_us`.
    fn turn_over(served: usize, backlog: bool, span_us: u64) -> Turn {
        Turn {
            ready: served,
            backlog,
            span: Duration::from_micros(span_us),
        }
    }

    /// A turn of a busy connector: its sockets came in during one gather.
    fn turn(served: usize, backlog: bool) -> Turn {
        turn_over(served, backlog, 250)
    }

    #[test]
    fn an_idle_connector_blocks_until_a_socket_is_ready_either_way() {
        assert_eq!(Pacer::fair().next(turn(0, false)), Wait::Block(IDLE_WAIT));
        assert_eq!(
            Pacer::real_time(G).next(turn(0, false)),
            Wait::Block(IDLE_WAIT)
        );
    }

    #[test]
    fn a_real_time_connector_gathers_after_serving_and_between_broadcast_slices() {
        let p = Pacer::real_time(G);
        assert!(p.gathers());
        assert_eq!(p.next(turn(1, false)), Wait::Gather(G));
        assert_eq!(p.next(turn(TURN_EVENTS - 1, false)), Wait::Gather(G));
        assert_eq!(p.next(turn(0, true)), Wait::Gather(G));
    }

    #[test]
    fn a_real_time_connector_woken_less_than_once_a_gather_answers_at_once() {
        let p = Pacer::real_time(G);
        // One submit in 400 µs (a small farm): gathering would only delay the next answer.
        assert_eq!(p.next(turn_over(1, false, 400)), Wait::Block(IDLE_WAIT));
        assert_eq!(p.next(turn_over(3, false, 1_000)), Wait::Block(IDLE_WAIT));
        // One in 200 µs, or ten over a gather and a turn: the next gather collects work.
        assert_eq!(p.next(turn_over(1, false, 200)), Wait::Gather(G));
        assert_eq!(p.next(turn_over(10, false, 400)), Wait::Gather(G));
        // A broadcast or close wave still gathers between its slices, however quiet.
        assert_eq!(p.next(turn_over(0, true, 100_000)), Wait::Gather(G));
    }

    #[test]
    fn a_fair_connector_never_sleeps_on_purpose() {
        let p = Pacer::fair();
        assert!(!p.gathers());
        assert_eq!(p.next(turn(5, false)), Wait::Block(IDLE_WAIT));
        assert_eq!(p.next(turn(0, true)), Wait::Poll);
    }

    #[test]
    fn a_full_turn_is_followed_at_once_by_the_next() {
        for p in [Pacer::fair(), Pacer::real_time(G)] {
            assert_eq!(p.next(turn(TURN_EVENTS, false)), Wait::Poll);
            assert_eq!(p.next(turn(TURN_EVENTS, true)), Wait::Poll);
        }
    }
}
