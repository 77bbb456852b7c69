//! Miner slots under an edge's extranonce lease.
//!
//! Each connection gets a slot, and its extranonce1 is `lease prefix ‖ slot`. A slot freed by a
//! disconnect goes to the back of the queue, so it is reused as late as possible: a new miner on
//! a recently freed slot could otherwise rebuild a header the previous owner already submitted
//! for a job that is still open.

use relay::work::{Extranonce, ExtranonceError, ExtranonceLayout};
use std::collections::VecDeque;

#[derive(Debug)]
pub struct SlotAllocator {
    layout: ExtranonceLayout,
    prefix: Extranonce,
    free: VecDeque<u32>,
    next_fresh: u64,
    capacity: u64,
}

impl SlotAllocator {
    pub fn new(layout: ExtranonceLayout, prefix: Extranonce) -> Self {
        let capacity = layout.slots_per_lease().min(u32::MAX as u64);
        SlotAllocator {
            layout,
            prefix,
            free: VecDeque::new(),
            next_fresh: 0,
            capacity,
        }
    }

    /// A new extranonce1, or `None` when every slot is taken.
    pub fn allocate(&mut self) -> Option<(u32, Extranonce)> {
        let slot = if self.next_fresh < self.capacity {
            self.next_fresh += 1;
            (self.next_fresh - 1) as u32
        } else {
            self.free.pop_front()?
        };
        self.layout
            .miner_extranonce1(&self.prefix, slot as u64)
            .ok()
            .map(|e| (slot, e))
    }

    pub fn release(&mut self, slot: u32) {
        self.free.push_back(slot);
    }

    /// Moves to a new lease prefix (e.g. after the core handed out a new one).
    pub fn set_prefix(&mut self, prefix: Extranonce) {
        self.prefix = prefix;
    }

    pub fn extranonce1_for(&self, slot: u32) -> Result<Extranonce, ExtranonceError> {
        self.layout.miner_extranonce1(&self.prefix, slot as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_reused_last() {
        let layout = ExtranonceLayout {
            slot_len: 1,
            ..Default::default()
        };
        let mut a = SlotAllocator::new(layout, layout.edge_prefix(0, 0).unwrap());
        let first: Vec<u32> = (0..256).map(|_| a.allocate().unwrap().0).collect();
        assert_eq!(first, (0..256).collect::<Vec<_>>());
        assert!(a.allocate().is_none());
        a.release(5);
        a.release(3);
        assert_eq!(a.allocate().unwrap().0, 5);
        assert_eq!(a.allocate().unwrap().0, 3);
    }
}
