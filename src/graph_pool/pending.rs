//! A pool's arena with its change of allocated bytes kept pending: what
//! lets a graph-mode allocate/free pair write no shared counter.
//!
//! Every allocation and free of a pool used to add to or subtract from two
//! shared gauges (the pools' sum and the total), four atomic writes per
//! pair on lines every pool's thread writes. Instead, under the arena lock
//! the pool already holds, an allocation folds what was pending (if
//! anything) and keeps its own size pending, checking the peaks with loads
//! only (the gauge's value plus the pending change against the peak); a
//! free subtracts its size from what is pending and folds the rest, if any.
//! So at most one allocation of each pool (its latest) is pending, and an
//! allocate/free pair of one size, the common graph-mode pattern, never
//! folds. `stats()` and `reset_peak_stats()` fold every live pool first,
//! and a pool folds when dropped.
//!
//! Exactness: while one pool allocates at a time, every peak of the sums
//! is exact (the pending change is the only one the gauges miss, and each
//! check adds it); with P pools allocating at once, a peak may miss the
//! other pools' latest allocations (at most P - 1 blocks); read by
//! `stats()` (which folds first) with no call in flight, no peak is below
//! the current figure. A pool's own figures ([`crate::GraphPool::stats`])
//! are kept under its lock and stay exact.

use crate::arena::Arena;
use crate::stats::StatsBook;

/// A pool's arena and the change of allocated bytes it keeps pending (not
/// yet in the allocator's gauges).
#[derive(Debug)]
pub(crate) struct PoolArena {
    arena: Arena,
    pending: isize,
}

impl PoolArena {
    pub(crate) fn new(arena: Arena) -> Self {
        PoolArena { arena, pending: 0 }
    }

    /// A block of `size` bytes left the arena: folds what was pending and
    /// keeps this change pending, its peak checked with loads.
    #[inline]
    pub(crate) fn pend_alloc(&mut self, book: &StatsBook, size: usize) {
        self.fold_pending(book);
        self.pending = size as isize;
        book.pools_allocated().for_each(|g| g.observe(self.pending));
    }

    /// A block of `size` bytes went back to the arena: cancels a pending
    /// allocation of that size, else folds the difference.
    #[inline]
    pub(crate) fn pend_free(&mut self, book: &StatsBook, size: usize) {
        self.pending -= size as isize;
        self.fold_pending(book);
    }

    /// Applies the pending change to the gauges.
    #[inline]
    pub(crate) fn fold_pending(&mut self, book: &StatsBook) {
        let delta = std::mem::take(&mut self.pending);
        if delta != 0 {
            book.pools_allocated().for_each(|g| g.fold(delta));
        }
    }
}

impl std::ops::Deref for PoolArena {
    type Target = Arena;
    fn deref(&self) -> &Arena {
        &self.arena
    }
}

impl std::ops::DerefMut for PoolArena {
    fn deref_mut(&mut self) -> &mut Arena {
        &mut self.arena
    }
}
