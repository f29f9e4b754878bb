//! Graph mode's thread caches: what lets a graph-mode allocate/free pair
//! take no lock but the thread's own and write no line another thread
//! writes.
//!
//! Each graph-mode entry of a thread on an unplanned pool (`mode.rs`)
//! gets a cache of its own ([`PoolSlot`], the bins and caps of a device's
//! thread cache), listed in the pool's arena: made by the entry's first
//! graph-mode allocation after a free of a pool block under it
//! (`mode::EntrySlot`). A block of the pool freed on
//! that thread while the entry is its innermost one on the pool goes into
//! that cache when the pool would make it reusable at once anyway: on the
//! default stream, with no `record_stream` uses, of a small request
//! (at most 1 MiB) at its block's start. Its ownership record stays in the
//! map, marked cached, and the thread's next request of that size in graph
//! mode on the pool (the hot path, `allocator/hot.rs`) takes the block back
//! and revives the record in place: no arena lock, no insert or remove in
//! the map, no gauge, no reference count. For the arena the block stays
//! handed out (counted live), so the pool cannot go away under it (see
//! [`super::PoolPtr`]): the entry holds a handle anyway.
//!
//! The blocks go back to the arena ([`PoolArena::flush_slots`], under the
//! arena lock, every cache of the pool):
//! - before the arena hands out any block (a miss of the hot path, every
//!   other allocation from the pool): every allocation from the arena then
//!   sees exactly the free blocks it would see without the caches (same
//!   placement, and no segment reserved while a cache holds a block), and
//!   the arena's allocated bytes, checked against the pool's peak there,
//!   are the true ones;
//! - whenever the pool's figures are read (`GraphPool::stats`, `reset`,
//!   the allocator's `stats()` and `reset_peak_stats()`, snapshots,
//!   out-of-memory reports, the diagnosis of a bad free);
//! - when the entry goes (its guard is dropped, or its thread exits with
//!   it): the cache is flushed and leaves the pool's list.
//!
//! Statistics: a cache counts its hits and frees ([`Counts`]), folded into
//! the arena's figures when its blocks go back; every reader flushes first,
//! so a pool's own figures, peaks included, stay exact at every call. A
//! cached block's bytes stay in the pools' allocated gauges until flushed
//! (they were in them before it was freed; a hit takes back a block freed
//! since the last flush, so a pair never writes a gauge): the pools' and the
//! total's allocated gauges are above the true sums by at most the bytes in
//! the caches (so their peaks may be too, by as much at most), and exact at
//! every `stats()` (which flushes).
//!
//! Lock order: the arena, then a cache (released before the map is used to
//! forget the records); a free puts a block into its cache under the map
//! shard's lock, which is never held while an arena lock is taken.
//!
//! [`Counts`]: crate::thread_cache::Counts

use super::pending::PoolArena;
use super::PoolCore;
use crate::allocator::DEFAULT_STREAM;
use crate::arena::{Arena, SMALL_REQUEST_MAX};
use crate::mode;
use crate::ownership::{OwnershipMap, Record};
use crate::stats::StatsBook;
use crate::sync::Arc;
use crate::thread_cache::{Cached, PoolSlot};

impl PoolArena {
    /// Before the arena hands out a block: gives it back the blocks of the
    /// pool's thread caches (skipping the empty ones with one load each;
    /// their counts wait for a reader's [`PoolArena::flush_slots`]).
    #[inline]
    pub(crate) fn flush_blocks(&mut self, owners: &OwnershipMap, book: &StatsBook) {
        for slot in &self.slots {
            if slot.holds_blocks() {
                return self.flush_listed(owners, book);
            }
        }
    }

    /// Gives every block of the pool's thread caches back to the arena and
    /// folds the caches' counts into its figures (and the freed bytes into
    /// the pools' allocated gauges).
    #[inline]
    pub(crate) fn flush_slots(&mut self, owners: &OwnershipMap, book: &StatsBook) {
        if self.slots.is_empty() {
            return;
        }
        self.flush_listed(owners, book);
    }

    #[inline(never)]
    fn flush_listed(&mut self, owners: &OwnershipMap, book: &StatsBook) {
        let PoolArena { arena, slots, .. } = self;
        let freed: usize = (slots.iter()).map(|s| flush_one(arena, s, owners)).sum();
        self.fold_freed(book, freed);
    }

    /// `freed` bytes went back to the arena from the caches: out of the
    /// gauges (after the pending change, which they follow).
    fn fold_freed(&mut self, book: &StatsBook, freed: usize) {
        if freed != 0 {
            self.fold_pending(book);
            book.pools_allocated()
                .for_each(|g| g.fold(-(freed as isize)));
        }
    }
}

/// Gives the blocks of `slot` back to `arena`, with its counts; returns
/// the bytes freed.
fn flush_one(arena: &mut Arena, slot: &PoolSlot, owners: &OwnershipMap) -> usize {
    let (blocks, counts) = slot.take_books();
    // The pointers stop being known before their blocks are free in the
    // arena (nothing can hand them out before the caller's unlock anyway).
    for c in &blocks {
        owners.forget_cached(c.ptr);
    }
    let freed = (blocks.iter()).map(|c| arena.free(c.block, 0)).sum();
    counts.fold_into_pool(&mut arena.stats, blocks.len());
    freed
}

impl PoolCore {
    /// A cache for a new graph-mode entry of the calling thread on this
    /// pool, listed in the pool's arena; none for a planned pool (its plan
    /// places every block).
    pub(crate) fn open_slot(&self) -> Option<Arc<PoolSlot>> {
        if self.plan.is_some() {
            return None;
        }
        let slot = Arc::new(PoolSlot::default());
        self.arena.lock().slots.push(slot.clone());
        Some(slot)
    }

    /// The entry of `slot` is gone: its blocks go back to the arena and
    /// the pool stops listing it.
    pub(crate) fn close_slot(&self, slot: &PoolSlot) {
        let mut arena = self.arena.lock();
        let freed = flush_one(&mut arena.arena, slot, &self.registry.owners);
        arena.fold_freed(&self.registry.book, freed);
        arena.slots.retain(|s| !std::ptr::eq(&**s, slot));
    }

    /// Flushes the pool's thread caches into `arena` (this pool's, locked).
    #[inline]
    pub(super) fn flush(&self, arena: &mut PoolArena) {
        arena.flush_slots(&self.registry.owners, &self.registry.book);
    }

    /// [`PoolArena::flush_blocks`] into `arena` (this pool's, locked).
    #[inline]
    pub(super) fn flush_blocks(&self, arena: &mut PoolArena) {
        arena.flush_blocks(&self.registry.owners, &self.registry.book);
    }

    /// Keeps a block of this pool that the calling thread frees (`record`,
    /// handed out as `ptr`) in the thread's cache for the pool, if it has
    /// one and the block may go there (see the module's docs); `true` if
    /// it did. Called under the record's map shard lock: takes only the
    /// cache's lock.
    #[inline]
    pub(crate) fn keep(&self, record: &Record, ptr: u64) -> bool {
        let cacheable = record.size <= SMALL_REQUEST_MAX
            && self.plan.is_none()
            && record.stream == DEFAULT_STREAM
            && record.uses().is_empty()
            && ptr == record.block.addr();
        if !cacheable {
            return false;
        }
        let cached = Cached::of(record, ptr, 0);
        mode::with_slot(self, |slot| slot.put(cached, record.requested()))
    }
}
