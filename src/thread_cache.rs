//! Per-thread caches of freed blocks, in front of a device's arenas.
//!
//! A small block (of a request up to 1 MiB) freed on the caching side goes,
//! when it may be reused at once on its own stream (no `record_stream`
//! uses, its stream not being captured) and the freeing thread allocated
//! it, into the freeing thread's cache for its device, in a bin for its exact
//! (stream, block size). The next request of that thread for that rounded
//! size on that stream takes it back without touching the arena's lock.
//! Each thread's cache sits behind a lock of its own, uncontended except
//! while another thread drains it, and is registered with its device's
//! [`ThreadCaches`] so that others can drain it.
//!
//! A block in a thread cache is free for the statistics (the user freed it)
//! but still taken out of the arena: the arena's own figures count it as
//! handed out. The caching side's user-level figures (allocated, requested,
//! live blocks, allocations, frees) are therefore kept per thread here, in
//! [`Counts`], and summed by `stats()`; peaks come from gauges
//! (`CachingAllocator`).
//!
//! Every thread's cache is drained back into the arena:
//! - before the arena reserves or maps memory for a request it cannot serve
//!   (so no memory is reserved while a thread cache holds a block that,
//!   merged back, could serve it), hence before out-of-memory too;
//! - on `empty_cache`;
//! - when the allocator goes away (the blocks are then simply forgotten).
//!
//! A thread that exits marks its cache orphaned (its thread-local destructor
//! cannot reach the arena); orphaned caches stay registered, counted by
//! `stats()`, until the next drain above (or a registration that finds the
//! list of caches long) flushes them into the arena and folds their counts
//! into the retired ones. Their blocks are never lost to a reservation:
//! every drain before reserving takes them. A thread that frees
//! or allocates late in its teardown, when its thread-locals are gone, uses
//! no cache: the block goes straight to the arena, its counts to the
//! retired ones.
//!
//! A thread's cache holds at most [`CAP_BLOCKS`] blocks and [`CAP_BYTES`]
//! bytes, and a bin at most [`BIN_CAP`] blocks: a free beyond these goes to
//! the arena.

use crate::arena::{BlockRef, StreamTag};
use crate::stats::PoolStats;
use crate::sync::{next_id, thread_local, Arc, Mutex};
use rustc_hash::FxHashMap;
use std::cell::RefCell;

/// Blocks one thread's cache of one device holds at most.
pub(crate) const CAP_BLOCKS: usize = 64;
/// Bytes one thread's cache of one device holds at most.
pub(crate) const CAP_BYTES: usize = 1 << 30;
/// Blocks one bin (stream, size) of a thread's cache holds at most.
pub(crate) const BIN_CAP: usize = 8;
/// Registered caches past which a registration lets the orphans go.
const PRUNE_AT: usize = 64;

/// A block in a thread cache: handed out by the arena of `shard`, freed by
/// the user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached {
    pub(crate) block: BlockRef,
    pub(crate) size: usize,
    pub(crate) shard: usize,
    pub(crate) stream: StreamTag,
}

/// User-level figures of the caching side, as one thread changed them.
///
/// A thread may free what another allocated, so one thread's figures can go
/// below zero: they wrap, and only their sum over all threads (plus the
/// retired ones) means anything.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    allocated: usize,
    requested: usize,
    live: usize,
    allocations: u64,
    frees: u64,
}

impl Counts {
    pub(crate) fn on_alloc(&mut self, size: usize, requested: usize) {
        self.allocated = self.allocated.wrapping_add(size);
        self.requested = self.requested.wrapping_add(requested);
        self.live = self.live.wrapping_add(1);
        self.allocations = self.allocations.wrapping_add(1);
    }

    pub(crate) fn on_free(&mut self, size: usize, requested: usize) {
        self.allocated = self.allocated.wrapping_sub(size);
        self.requested = self.requested.wrapping_sub(requested);
        self.live = self.live.wrapping_sub(1);
        self.frees = self.frees.wrapping_add(1);
    }

    fn add(&mut self, other: &Counts) {
        self.allocated = self.allocated.wrapping_add(other.allocated);
        self.requested = self.requested.wrapping_add(other.requested);
        self.live = self.live.wrapping_add(other.live);
        self.allocations = self.allocations.wrapping_add(other.allocations);
        self.frees = self.frees.wrapping_add(other.frees);
    }

    /// Writes the figures into `stats` (replacing its user-level ones).
    pub(crate) fn write_to(&self, stats: &mut PoolStats) {
        stats.allocated_bytes = self.allocated;
        stats.requested_bytes = self.requested;
        stats.live_blocks = self.live;
        stats.allocations = self.allocations;
        stats.frees = self.frees;
    }
}

/// One thread's cache for one device.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// A process-unique id (0 for the throwaway cache of a thread in
    /// teardown).
    pub(crate) id: u64,
    bins: FxHashMap<(StreamTag, usize), Vec<Cached>>,
    blocks: usize,
    bytes: usize,
    /// The thread's user-level figures.
    pub(crate) counts: Counts,
    /// The thread has exited: the next drain flushes this cache for good.
    orphan: bool,
    /// The device's caches are gone: the thread drops its entry.
    dead: bool,
}

impl Local {
    /// Takes a block of exactly `size` bytes on `stream`, lowest address
    /// first (as the arena's quick bins do, so placement does not depend
    /// on the order of frees).
    pub(crate) fn take(&mut self, stream: StreamTag, size: usize) -> Option<Cached> {
        let bin = self.bins.get_mut(&(stream, size))?;
        let cached = bin.pop()?;
        self.blocks -= 1;
        self.bytes -= cached.size;
        Some(cached)
    }

    /// Keeps a freed block; gives it back if the cache is full.
    pub(crate) fn put(&mut self, cached: Cached) -> Result<(), Cached> {
        if self.blocks >= CAP_BLOCKS || self.bytes + cached.size > CAP_BYTES {
            return Err(cached);
        }
        let bin = self.bins.entry((cached.stream, cached.size)).or_default();
        if bin.len() >= BIN_CAP {
            return Err(cached);
        }
        // Highest address first, so `pop` takes the lowest.
        let at = bin.partition_point(|c| c.block.addr() > cached.block.addr());
        bin.insert(at, cached);
        self.blocks += 1;
        self.bytes += cached.size;
        Ok(())
    }

    /// Takes every cached block out.
    fn take_all(&mut self) -> Vec<Cached> {
        let mut out = Vec::new();
        self.take_all_into(&mut out);
        out
    }

    fn take_all_into(&mut self, out: &mut Vec<Cached>) {
        if self.blocks == 0 {
            return;
        }
        for bin in self.bins.values_mut() {
            out.append(bin);
        }
        self.blocks = 0;
        self.bytes = 0;
    }
}

/// A thread's entry for one device's caches; marks the cache orphaned when
/// the thread's thread-locals are destroyed.
struct Handle {
    owner: u64,
    local: Arc<Mutex<Local>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.local.lock().orphan = true;
    }
}

thread_local! {
    /// The calling thread's caches, one per device's [`ThreadCaches`] used.
    static MINE: RefCell<Vec<Handle>> = const { RefCell::new(Vec::new()) };
}

/// The thread caches of one device.
#[derive(Debug)]
pub(crate) struct ThreadCaches {
    id: u64,
    /// Every thread's cache for this device, orphaned ones too.
    locals: Mutex<Vec<Arc<Mutex<Local>>>>,
    /// The counts of flushed orphans and of calls that could use no cache.
    retired: Mutex<Counts>,
}

impl ThreadCaches {
    pub(crate) fn new() -> Self {
        ThreadCaches {
            id: next_id(),
            locals: Mutex::new(Vec::new()),
            retired: Mutex::new(Counts::default()),
        }
    }

    /// Runs `f` on the calling thread's cache, registering one on first
    /// use. Late in the thread's teardown (no thread-locals), runs `f` on a
    /// throwaway cache whose counts are retired and whose blocks (if `f`
    /// left any) go to `orphans`, for the arena.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut Local) -> R,
        orphans: impl FnOnce(Vec<Cached>),
    ) -> R {
        let mut f = Some(f);
        let found = MINE.try_with(|mine| {
            let mine = mine.borrow();
            let handle = mine.iter().find(|h| h.owner == self.id)?;
            let mut local = handle.local.lock();
            Some((f.take().expect("called once"))(&mut local))
        });
        match found {
            Ok(Some(r)) => r,
            Ok(None) => {
                let local = Arc::new(Mutex::new(Local {
                    id: next_id(),
                    ..Local::default()
                }));
                let r = (f.take().expect("called once"))(&mut local.lock());
                orphans(self.register(local));
                r
            }
            Err(_) => {
                let mut local = Local::default();
                let r = (f.take().expect("called once"))(&mut local);
                self.retired.lock().add(&local.counts);
                orphans(local.take_all());
                r
            }
        }
    }

    /// Registers a new thread's cache (in the thread-local list and here).
    /// Late in the thread's teardown, returns its blocks.
    fn register(&self, local: Arc<Mutex<Local>>) -> Vec<Cached> {
        let handle = Handle {
            owner: self.id,
            local: local.clone(),
        };
        let registered = MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            // Entries of allocators gone since are dropped here, so a
            // thread's list holds about one entry per live device.
            mine.retain(|h| !h.local.lock().dead);
            mine.push(handle);
        });
        if registered.is_err() {
            // No thread-locals: the cache is used once and not registered.
            let mut local = local.lock();
            self.retired.lock().add(&local.counts);
            return local.take_all();
        }
        let mut locals = self.locals.lock();
        locals.push(local);
        // With threads coming and going, the orphans are let go whenever
        // the list doubles past PRUNE_AT, so it stays about as long as the
        // threads alive (and `stats()` and drains stay short).
        let n = locals.len();
        drop(locals);
        if n >= PRUNE_AT && n.is_power_of_two() {
            return self.drain(true);
        }
        Vec::new()
    }

    /// Takes the blocks out of every thread's cache (only of orphaned ones
    /// with `orphans_only`), dropping orphaned caches and retiring their
    /// counts. The caller gives the blocks back to the arena.
    pub(crate) fn drain(&self, orphans_only: bool) -> Vec<Cached> {
        let mut out = Vec::new();
        let mut retired = Counts::default();
        let mut locals = self.locals.lock();
        locals.retain(|local| {
            let mut local = local.lock();
            if local.orphan {
                local.take_all_into(&mut out);
                retired.add(&local.counts);
                return false;
            }
            if !orphans_only {
                local.take_all_into(&mut out);
            }
            true
        });
        // Under the list's lock, so `counts` sees an orphan's counts in the
        // list or in the retired ones, never in neither.
        self.retired.lock().add(&retired);
        drop(locals);
        out
    }

    /// The user-level figures of every thread, summed. (Lock order: the
    /// list, then a cache or the retired counts; a cache, then the retired
    /// counts.)
    pub(crate) fn counts(&self) -> Counts {
        let locals = self.locals.lock();
        let mut sum = *self.retired.lock();
        for local in locals.iter() {
            sum.add(&local.lock().counts);
        }
        sum
    }

    /// The cached block that contains `addr`, as (start, size), if any
    /// (slow: a scan, for diagnosing a bad free).
    pub(crate) fn containing(&self, addr: u64) -> Option<(u64, usize)> {
        self.locals.lock().iter().find_map(|local| {
            let local = local.lock();
            local.bins.values().flatten().find_map(|c| {
                let start = c.block.addr();
                (start..start + c.size as u64)
                    .contains(&addr)
                    .then_some((start, c.size))
            })
        })
    }
}

impl Drop for ThreadCaches {
    fn drop(&mut self) {
        // Threads still hold handles to their caches: mark them dead (and
        // empty) so each thread drops its entry at its next registration.
        for local in self.locals.lock().iter() {
            let mut local = local.lock();
            drop(local.take_all());
            local.dead = true;
        }
    }
}
