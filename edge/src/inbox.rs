//! Where the connector threads leave accepted shares for the uplink loop, and when that loop is
//! woken for them.
//!
//! Shares travel to the core in batches of up to a thousand that may wait 200 ms, and every
//! share is already in a spool lane before its miner hears "accepted". Waking the uplink for
//! each connector turn (8,000 times a second at 50,000 shares/s, each a futex or eventfd round
//! trip through its runtime) bought nothing but CPU on a box the miners' answers share. So the
//! inbox wakes the loop only for what cannot wait:
//! - a block candidate (it skips the batch and goes at once);
//! - a share that meets the upstream pool's target (its batch leaves at once, see
//!   [`crate::batcher`]);
//! - a share on the backup pool's work (forwarded there, where staleness is counted in ms);
//! - a full batch's worth of shares.
//!
//! Everything else is picked up every [`PICKUP_EVERY`], on the loop's own tick. That is at most
//! a tenth of the batch delay; a core that asks for shorter batch delays gets the old way, a
//! wake for every connector turn.

use crate::fallback::is_fallback_job;
use crate::share::{ShareEvent, ShareSink};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often the uplink loop looks in the inbox without being woken.
pub const PICKUP_EVERY: Duration = Duration::from_millis(20);

/// Events a drained buffer keeps room for (a pick-up at 50,000 shares/s is ~1,000). The room a
/// backlog took (an uplink held up by a slow disk) is given back once it has been drained.
pub const RETAINED: usize = 4096;

#[derive(Debug)]
pub struct ShareInbox {
    queue: Mutex<Vec<ShareEvent>>,
    wake: Notify,
    /// Wake the loop once this many events wait: the batch size, so a full batch goes at once.
    wake_at: AtomicUsize,
    /// The batch delay is too short to wait for a pick-up: wake for every turn.
    wake_always: AtomicBool,
    closed: AtomicBool,
}

impl ShareInbox {
    /// For batches of up to `max_shares` that may wait `max_delay`.
    pub fn new(max_shares: usize, max_delay: Duration) -> Arc<ShareInbox> {
        let inbox = Arc::new(ShareInbox {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            wake_at: AtomicUsize::new(1),
            wake_always: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        inbox.set_batching(max_shares, max_delay);
        inbox
    }

    /// The core's batch policy changed.
    pub fn set_batching(&self, max_shares: usize, max_delay: Duration) {
        self.wake_at.store(max_shares.max(1), Ordering::Relaxed);
        self.wake_always
            .store(max_delay < PICKUP_EVERY * 10, Ordering::Relaxed);
    }

    /// Moves everything waiting, in the order it came, to the end of `into`.
    pub fn drain_into(&self, into: &mut Vec<ShareEvent>) {
        if into.is_empty() && into.capacity() > RETAINED {
            into.shrink_to(RETAINED);
        }
        let mut q = self.queue.lock();
        if into.is_empty() {
            std::mem::swap(&mut *q, into);
        } else {
            into.append(&mut q);
        }
    }

    /// Resolves when something that cannot wait for the tick has arrived (at once if it came
    /// since the last wait: the wake is kept, never lost).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The loop is gone: later shares are refused (they stay in the spool lanes).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn cannot_wait(ev: &ShareEvent) -> bool {
        match ev {
            ShareEvent::Block(_) => true,
            ShareEvent::Accepted(s) => s.meets_upstream || is_fallback_job(s.job_id.as_str()),
        }
    }
}

impl ShareSink for Arc<ShareInbox> {
    fn take(&self, events: &mut Vec<ShareEvent>) -> bool {
        if self.closed.load(Ordering::Acquire) {
            events.clear();
            return false;
        }
        let urgent = events.iter().any(ShareInbox::cannot_wait);
        let waiting = {
            let mut q = self.queue.lock();
            q.append(events);
            q.len()
        };
        if urgent
            || waiting >= self.wake_at.load(Ordering::Relaxed)
            || self.wake_always.load(Ordering::Relaxed)
        {
            self.wake.notify_one();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::{sample_record, BlockCandidate, ShareRecord};
    use relay::work::JobId;
    use std::time::Duration;

    fn share(job: &str, n: u32) -> ShareEvent {
        ShareEvent::Accepted(ShareRecord {
            job_id: JobId::new(job),
            ..sample_record(n)
        })
    }

    /// Whether the inbox has a wake pending (waits briefly; a pending wake resolves at once).
    fn was_woken(inbox: &ShareInbox) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(30), inbox.woken()).await })
            .is_ok()
    }

    fn nonces(evs: &[ShareEvent]) -> Vec<u32> {
        evs.iter()
            .map(|e| match e {
                ShareEvent::Accepted(s) => s.nonce,
                ShareEvent::Block(b) => b.share.nonce,
            })
            .collect()
    }

    const DELAY: Duration = Duration::from_millis(200);

    #[test]
    fn ordinary_shares_wait_for_the_tick_and_keep_their_order() {
        let inbox = ShareInbox::new(10, DELAY);
        let mut turn = vec![share("a", 1), share("a", 2)];
        assert!(inbox.take(&mut turn));
        assert!(
            turn.is_empty(),
            "the connector's vector is drained for reuse"
        );
        turn.push(share("a", 3));
        assert!(inbox.take(&mut turn));
        assert!(!was_woken(&inbox));
        let mut got = Vec::new();
        inbox.drain_into(&mut got);
        assert_eq!(nonces(&got), [1, 2, 3]);
        got.clear();
        inbox.drain_into(&mut got);
        assert!(got.is_empty());
    }

    #[test]
    fn a_full_batch_wakes_the_loop() {
        let inbox = ShareInbox::new(3, DELAY);
        assert!(inbox.take(&mut vec![share("a", 1), share("a", 2)]));
        assert!(!was_woken(&inbox));
        assert!(inbox.take(&mut vec![share("a", 3)]));
        assert!(was_woken(&inbox));
        inbox.set_batching(100, DELAY);
        assert!(inbox.take(&mut vec![share("a", 4)]));
        assert!(!was_woken(&inbox), "4 waiting, the new batch size is 100");
    }

    #[test]
    fn a_batch_delay_shorter_than_ten_pickups_wakes_for_every_turn() {
        let inbox = ShareInbox::new(1000, PICKUP_EVERY * 10 - Duration::from_millis(1));
        assert!(inbox.take(&mut vec![share("a", 1)]));
        assert!(was_woken(&inbox));
        inbox.set_batching(1000, PICKUP_EVERY * 10);
        assert!(inbox.take(&mut vec![share("a", 2)]));
        assert!(!was_woken(&inbox));
    }

    #[test]
    fn blocks_upstream_shares_and_backup_work_wake_at_once() {
        let block = |n| {
            let ShareEvent::Accepted(s) = share("a", n) else {
                unreachable!()
            };
            ShareEvent::Block(Box::new(BlockCandidate {
                share: s,
                header: [0; 80],
                coinbase: vec![1, 2, 3],
            }))
        };
        let upstream = |n| {
            let ShareEvent::Accepted(mut s) = share("a", n) else {
                unreachable!()
            };
            s.meets_upstream = true;
            ShareEvent::Accepted(s)
        };
        let backup_job = format!("{}7", crate::fallback::FALLBACK_JOB_PREFIX);
        for ev in [block(1), upstream(2), share(&backup_job, 3)] {
            let inbox = ShareInbox::new(1000, DELAY);
            assert!(inbox.take(&mut vec![share("a", 0), ev]));
            assert!(was_woken(&inbox));
        }
    }

    #[test]
    fn the_room_a_backlog_took_is_given_back_once_drained() {
        let inbox = ShareInbox::new(1_000_000, DELAY);
        let mut arrived = Vec::new();
        for round in 0..3 {
            let mut backlog: Vec<ShareEvent> =
                (0..3 * RETAINED as u32).map(|n| share("a", n)).collect();
            assert!(inbox.take(&mut backlog));
            inbox.drain_into(&mut arrived);
            assert_eq!(arrived.len(), 3 * RETAINED, "round {round}");
            arrived.clear();
        }
        // Both buffers that held the backlog come back to the retained size once empty.
        inbox.drain_into(&mut arrived);
        assert!(arrived.is_empty() && arrived.capacity() <= RETAINED);
        assert!(inbox.take(&mut vec![share("a", 1)]));
        inbox.drain_into(&mut arrived);
        assert_eq!(arrived.len(), 1);
        assert!(arrived.capacity() <= RETAINED);
    }

    #[test]
    fn a_closed_inbox_refuses_and_says_so() {
        let inbox = ShareInbox::new(10, DELAY);
        inbox.close();
        let mut turn = vec![share("a", 1)];
        assert!(!inbox.take(&mut turn));
        let mut got = Vec::new();
        inbox.drain_into(&mut got);
        assert!(got.is_empty());
    }
}
