//! A pool's arena with its latest free kept pending: what lets a
//! graph-mode allocate/free pair write no shared counter.
//!
//! Every allocation and free of a pool used to add to or subtract from two
//! shared gauges (the pools' sum and the total), four atomic writes per
//! pair on lines every pool's thread writes. Instead, under the arena lock
//! the pool already holds, a free keeps its size pending (after folding
//! what was pending before, if anything), and an allocation applies its
//! size less what is pending: nothing at all when it is of the size just
//! freed, the common graph-mode pattern, so an allocate/free pair of one
//! size never writes a gauge once warm. `stats()` and `reset_peak_stats()`
//! fold every live pool first, and a pool folds when dropped.
//!
//! Exactness: only frees are pending, at most one per pool (its latest, if
//! no allocation of the pool followed it), so a gauge's value is never
//! below the true sum, and above it by at most those blocks. A pool's
//! allocation leaves none of its own pending, so a peak it checks is exact
//! but for the other pools' pending frees: every peak of the sums is at
//! least the true peak, exact while no other pool has a free pending (one
//! pool in use, or the others' last operation an allocation), and above
//! it by at most one block per other pool otherwise. Read by `stats()`
//! with no call in flight (it folds first), current figures are exact and
//! no peak is below them. A pool's own figures ([`crate::GraphPool::stats`])
//! are kept under its lock and stay exact.

use crate::arena::Arena;
use crate::stats::StatsBook;
use crate::sync::Arc;
use crate::thread_cache::PoolSlot;

/// A pool's arena and the change of allocated bytes it keeps pending (not
/// yet in the allocator's gauges): zero or its latest free, negative.
#[derive(Debug)]
pub(crate) struct PoolArena {
    pub(super) arena: Arena,
    pending: isize,
    /// The caches of the threads in graph mode on the pool (`slots.rs`).
    pub(super) slots: Vec<Arc<PoolSlot>>,
}

impl PoolArena {
    pub(crate) fn new(arena: Arena) -> Self {
        PoolArena {
            arena,
            pending: 0,
            slots: Vec::new(),
        }
    }

    /// A block of `size` bytes left the arena: applies it less the pending
    /// free (nothing when they cancel; an increase checks the peaks).
    #[inline]
    pub(crate) fn pend_alloc(&mut self, book: &StatsBook, size: usize) {
        self.pending += size as isize;
        self.fold_pending(book);
    }

    /// A block of `size` bytes went back to the arena: folds what was
    /// pending and keeps this free pending.
    #[inline]
    pub(crate) fn pend_free(&mut self, book: &StatsBook, size: usize) {
        self.fold_pending(book);
        self.pending = -(size as isize);
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
