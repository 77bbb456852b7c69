//! Groups accepted shares into batches by count and by age (sans-IO).
//!
//! A batch leaves when it holds `max_shares` shares or its oldest share has waited
//! `max_delay`, whichever comes first: big batches keep the uplink compact (the wire cost per
//! share falls as a batch grows), the age bound keeps credit timely. Block candidates never wait
//! here; the uplink sends them alone at once. A share that meets the upstream pool's target
//! (proxy mining) makes its batch leave at once too: the core forwards it upstream, and the
//! upstream's next job would make it stale.
//!
//! Lane records that are not the core's (shares on the edge's backup-pool jobs, see
//! `edge::fallback`) pass through as *covered* entries: they carry no share, only their lane
//! position, so a batch's lane marks reach past them exactly when every earlier record of
//! their lane is in this batch or an earlier one.

use relay::wire::ShareData;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A share waiting for its batch, with where it sits in the spool.
#[derive(Clone, Debug)]
pub struct PendingShare {
    pub data: ShareData,
    pub spool_ref: Option<(u16, u64)>,
}

/// What the batcher hands out: shares for one batch and how far into each lane they reach.
#[derive(Clone, Debug, Default)]
pub struct ReadyBatch {
    pub shares: Vec<ShareData>,
    pub marks: Vec<(u16, u64)>,
}

#[derive(Debug)]
enum Entry {
    Share(PendingShare),
    /// A lane record that is not sent to the core; only the marks move past it.
    Covered((u16, u64)),
}

#[derive(Debug)]
pub struct Batcher {
    /// Entries with when each was pushed: the batch is as old as its first entry, and what a
    /// full batch leaves behind is aged from its own first entry.
    pending: Vec<(Instant, Entry)>,
    /// Shares (not covered entries) in `pending`.
    shares: usize,
    /// A pending share is for the upstream pool: the batch is due now.
    urgent: bool,
    pub max_shares: usize,
    pub max_delay: Duration,
}

impl Batcher {
    pub fn new(max_shares: usize, max_delay: Duration) -> Self {
        Batcher {
            pending: Vec::new(),
            shares: 0,
            urgent: false,
            max_shares: max_shares.max(1),
            max_delay,
        }
    }

    /// Shares waiting (covered entries are not counted).
    pub fn len(&self) -> usize {
        self.shares
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn push(&mut self, share: PendingShare, now: Instant) {
        self.urgent |= share.data.meets_upstream;
        self.pending.push((now, Entry::Share(share)));
        self.shares += 1;
    }

    /// A lane record the core must never see: the marks of the batch it falls in move past it.
    pub fn push_covered(&mut self, spool_ref: (u16, u64), now: Instant) {
        self.pending.push((now, Entry::Covered(spool_ref)));
    }

    /// When the current batch must leave at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        let oldest = self.pending.first().map(|(at, _)| *at);
        if self.urgent {
            return oldest;
        }
        oldest.map(|t| t + self.max_delay)
    }

    /// A full or aged batch, if one is due.
    pub fn poll(&mut self, now: Instant) -> Option<ReadyBatch> {
        let due = self.shares >= self.max_shares || self.deadline().is_some_and(|d| now >= d);
        if !due || self.pending.is_empty() {
            return None;
        }
        Some(self.take(self.max_shares))
    }

    /// Everything pending, now (shutdown).
    pub fn drain(&mut self) -> Option<ReadyBatch> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.take(usize::MAX))
        }
    }

    /// Takes entries up to and including the `n`-th share (all of them if there are fewer).
    fn take(&mut self, n: usize) -> ReadyBatch {
        let mut cut = self.pending.len();
        let mut seen = 0;
        for (i, (_, e)) in self.pending.iter().enumerate() {
            if let Entry::Share(_) = e {
                seen += 1;
                if seen == n {
                    cut = i + 1;
                    break;
                }
            }
        }
        let rest = self.pending.split_off(cut);
        let taken = std::mem::replace(&mut self.pending, rest);
        self.urgent = self
            .pending
            .iter()
            .any(|(_, e)| matches!(e, Entry::Share(p) if p.data.meets_upstream));
        // The remainder is now aged from its own first entry. (Aging it from the taken batch's
        // first share sent it at once as a small batch of its own whenever shares arrived in
        // clumps: full batch, tiny batch, full batch...)
        let mut marks: BTreeMap<u16, u64> = BTreeMap::new();
        let mut shares = Vec::with_capacity(taken.len());
        for (_, e) in taken {
            let spool_ref = match e {
                Entry::Share(p) => {
                    shares.push(p.data);
                    p.spool_ref
                }
                Entry::Covered(r) => Some(r),
            };
            if let Some((lane, idx)) = spool_ref {
                let m = marks.entry(lane).or_insert(idx);
                *m = (*m).max(idx);
            }
        }
        self.shares -= shares.len();
        ReadyBatch {
            shares,
            marks: marks.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::work::{Difficulty, Extranonce, JobId};

    fn share(lane: u16, idx: u64) -> PendingShare {
        PendingShare {
            data: ShareData {
                worker: "a.b".into(),
                job_id: JobId::new("1"),
                extranonce1: Extranonce::from_hex("00010000").unwrap(),
                extranonce2: Extranonce::from_hex("00000000").unwrap(),
                ntime: 1,
                nonce: idx as u32,
                version: 0x2000_0000,
                difficulty: Difficulty::new(1.0).unwrap(),
                received_at_ms: 0,
                meets_upstream: false,
            },
            spool_ref: Some((lane, idx)),
        }
    }

    #[test]
    fn full_batch_leaves_at_once_with_lane_marks() {
        let t = Instant::now();
        let mut b = Batcher::new(3, Duration::from_millis(200));
        b.push(share(0, 5), t);
        b.push(share(1, 9), t);
        assert!(b.poll(t).is_none());
        b.push(share(0, 6), t);
        let r = b.poll(t).unwrap();
        assert_eq!(r.shares.len(), 3);
        assert_eq!(r.marks, vec![(0, 6), (1, 9)]);
        assert!(b.is_empty());
    }

    #[test]
    fn covered_records_move_the_marks_but_are_never_sent() {
        let t = Instant::now();
        let mut b = Batcher::new(2, Duration::from_millis(200));
        b.push(share(0, 1), t);
        b.push_covered((0, 2), t);
        b.push_covered((1, 7), t);
        assert_eq!(b.len(), 1, "covered records are not shares");
        b.push(share(0, 3), t);
        b.push_covered((0, 4), t);
        let r = b.poll(t).unwrap();
        assert_eq!(r.shares.len(), 2);
        assert!(r.shares.iter().all(|s| s.nonce != 2));
        // Through the second share: (0, 4) arrived after it and waits for the next batch.
        assert_eq!(r.marks, vec![(0, 3), (1, 7)]);
        // A batch of covered records only: no shares, marks past them after max_delay.
        assert!(b.poll(t + Duration::from_millis(199)).is_none());
        let r = b.poll(t + Duration::from_millis(200)).unwrap();
        assert!(r.shares.is_empty());
        assert_eq!(r.marks, vec![(0, 4)]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn what_a_full_batch_leaves_behind_ages_from_its_own_first_share() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batcher::new(3, ms(200));
        b.push(share(0, 1), t);
        b.push(share(0, 2), t + ms(100));
        // A clump at 200 ms: the first batch is due by age and by count, the rest are new.
        b.push(share(0, 3), t + ms(200));
        b.push(share(0, 4), t + ms(200));
        let r = b.poll(t + ms(200)).unwrap();
        assert_eq!(r.shares.len(), 3);
        assert!(
            b.poll(t + ms(200)).is_none(),
            "one fresh share is not a batch"
        );
        assert_eq!(b.deadline(), Some(t + ms(400)));
        b.push(share(0, 5), t + ms(300));
        assert!(b.poll(t + ms(399)).is_none());
        assert_eq!(b.poll(t + ms(400)).unwrap().shares.len(), 2);
    }

    #[test]
    fn aged_batch_leaves_after_max_delay() {
        let t = Instant::now();
        let mut b = Batcher::new(100, Duration::from_millis(200));
        b.push(share(0, 1), t);
        b.push(share(0, 2), t + Duration::from_millis(150));
        assert!(b.poll(t + Duration::from_millis(199)).is_none());
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(200)));
        assert_eq!(
            b.poll(t + Duration::from_millis(200)).unwrap().shares.len(),
            2
        );
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_share_for_the_upstream_makes_its_batch_leave_at_once() {
        let t = Instant::now();
        let mut b = Batcher::new(100, Duration::from_millis(200));
        b.push(share(0, 1), t);
        assert!(b.poll(t + Duration::from_millis(1)).is_none());
        let mut up = share(0, 2);
        up.data.meets_upstream = true;
        b.push(up, t + Duration::from_millis(1));
        let r = b.poll(t + Duration::from_millis(1)).unwrap();
        assert_eq!(r.shares.len(), 2);
        assert!(r.shares[1].meets_upstream);
        b.push(share(0, 3), t + Duration::from_millis(2));
        assert!(
            b.poll(t + Duration::from_millis(2)).is_none(),
            "urgency ends with its batch"
        );
    }
}
