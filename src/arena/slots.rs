//! [`Blocks`]: the arena's blocks by slot.
//!
//! A `Vec` with a stack of vacant slots, reused last freed first (as a
//! `Slab` does). The hot paths index it several times per event; a plain
//! `Vec` index checks only the bound, where a `Slab` also checks the entry's
//! state. A vacant slot holds a block of no segment, not live (so that
//! `Arena::account_free`'s check fails on it).

use super::Block;
use std::ops::{Index, IndexMut};

/// The segment of a vacant slot's block.
const VACANT: u32 = u32::MAX;

/// The arena's blocks by slot; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Blocks {
    entries: Vec<Block>,
    vacant: Vec<u32>,
}

impl Blocks {
    /// Stores `block` in a vacant slot (the last freed) or a new one.
    #[inline]
    pub(super) fn insert(&mut self, block: Block) -> usize {
        debug_assert!(block.segment != VACANT, "a block of no segment");
        match self.vacant.pop() {
            Some(slot) => {
                self.entries[slot as usize] = block;
                slot as usize
            }
            None => {
                self.entries.push(block);
                self.entries.len() - 1
            }
        }
    }

    /// Takes the block out of `slot`, which becomes vacant.
    #[inline]
    pub(super) fn remove(&mut self, slot: usize) -> Block {
        let entry = &mut self.entries[slot];
        let gone = *entry;
        assert!(gone.segment != VACANT, "removing a vacant block slot");
        // The segment marks the slot vacant; a block that is not live
        // fails `Arena::account_free`'s check (the rest is left as it was).
        (entry.segment, entry.allocated) = (VACANT, false);
        self.vacant.push(slot as u32);
        gone
    }

    /// Every block, with its slot.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Block)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, b)| b.segment != VACANT)
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.vacant.clear();
    }
}

impl Index<usize> for Blocks {
    type Output = Block;
    #[inline]
    fn index(&self, slot: usize) -> &Block {
        let b = &self.entries[slot];
        debug_assert!(b.segment != VACANT, "vacant block slot {slot}");
        b
    }
}

impl IndexMut<usize> for Blocks {
    #[inline]
    fn index_mut(&mut self, slot: usize) -> &mut Block {
        let b = &mut self.entries[slot];
        debug_assert!(b.segment != VACANT, "vacant block slot {slot}");
        b
    }
}

#[cfg(test)]
impl Block {
    /// A block of no segment.
    fn vacant() -> Block {
        Block {
            addr: 0,
            size: 0,
            segment: VACANT,
            allocated: false,
            mapped: false,
            freed: 0,
            stale: false,
            prev: None,
            next: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Block, Blocks};

    fn block(addr: u64) -> Block {
        Block {
            addr,
            segment: 0,
            ..Block::vacant()
        }
    }

    #[test]
    fn reuses_the_last_freed_slot_and_iterates_live_blocks_only() {
        let mut blocks = Blocks::default();
        let slots: Vec<usize> = (0..4).map(|i| blocks.insert(block(i * 512))).collect();
        assert_eq!(slots, [0, 1, 2, 3]);
        assert_eq!(blocks.remove(1).addr, 512);
        assert_eq!(blocks.remove(3).addr, 1536);
        let live: Vec<(usize, u64)> = blocks.iter().map(|(s, b)| (s, b.addr)).collect();
        assert_eq!(live, [(0, 0), (2, 1024)]);
        assert_eq!(blocks.insert(block(4096)), 3, "the last freed first");
        assert_eq!(blocks.insert(block(8192)), 1);
        assert_eq!(blocks.insert(block(9216)), 4, "then a new slot");
        assert_eq!(blocks[1].addr, 8192);
        blocks.clear();
        assert_eq!(blocks.iter().count(), 0);
    }

    #[test]
    #[should_panic(expected = "vacant")]
    fn removing_a_vacant_slot_panics() {
        let mut blocks = Blocks::default();
        let slot = blocks.insert(block(0));
        blocks.remove(slot);
        blocks.remove(slot);
    }
}
