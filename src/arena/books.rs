//! What an out-of-memory report reads from an arena (`crate::oom`): a few
//! figures taken while the arena's lock is held, so that the report is one
//! consistent picture of each arena. Slow (a walk over every block): for
//! error reports only.

use super::Arena;
use std::collections::HashSet;

/// The books of one or more arenas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Books {
    /// Bytes in segments (mapped pages, for expandable ones).
    pub(crate) reserved: usize,
    /// Bytes in live blocks.
    pub(crate) allocated: usize,
    /// The largest free block with memory behind it.
    pub(crate) largest_free: usize,
    /// The largest live blocks, (address, size), largest first.
    pub(crate) largest_live: Vec<(u64, usize)>,
}

impl Books {
    /// Adds `other`'s figures, keeping the `top` largest live blocks.
    pub(crate) fn merge(&mut self, other: Books, top: usize) {
        self.reserved += other.reserved;
        self.allocated += other.allocated;
        self.largest_free = self.largest_free.max(other.largest_free);
        self.largest_live.extend(other.largest_live);
        keep_largest(&mut self.largest_live, top);
    }
}

/// Sorts `blocks` largest first (then by address) and keeps `top` of them.
fn keep_largest(blocks: &mut Vec<(u64, usize)>, top: usize) {
    blocks.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    blocks.truncate(top);
}

impl Arena {
    /// This arena's books, with its `top` largest live blocks. Blocks in
    /// quick bins and deferred frees are freed (not live); deferred ones are
    /// not reusable yet either, so they count as neither live nor free.
    pub(crate) fn books(&self, top: usize) -> Books {
        let deferred: HashSet<u32> = self.deferred.iter().map(|d| d.block.slot).collect();
        let mut largest_free = 0;
        let mut live = Vec::new();
        for (slot, b) in self.blocks.iter() {
            let slot = slot as u32;
            if deferred.contains(&slot) {
                continue;
            }
            if b.allocated && !self.is_quick(slot) {
                live.push((b.addr, b.size));
            } else if b.mapped {
                largest_free = largest_free.max(b.size);
            }
        }
        keep_largest(&mut live, top);
        Books {
            reserved: self.stats.reserved_bytes,
            allocated: self.stats.allocated_bytes,
            largest_free,
            largest_live: live,
        }
    }
}
