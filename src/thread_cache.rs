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
//! [`Counts`], and summed by `stats()`; peaks come from gauges ([`Sink`]).
//!
//! A cache hit or a free into the cache writes no shared line: its change
//! of allocated bytes stays pending in the thread's cache ([`Local`]'s
//! `pending`) and is folded into the gauges (one atomic add each) only when
//! it passes [`SLACK`] either way, when the thread takes the arena's path
//! (an allocation the cache cannot serve, a free the cache does not take:
//! those fold at once), when a drain, `stats()` or `reset_peak_stats` reads
//! the cache, and when the thread exits. A hit checks the peak with loads
//! only: the gauge's value plus its own pending change against the peak,
//! and raises the peak only when that exceeds it. So:
//! - with one thread using the device's cache (or every other thread's
//!   pending change at zero) every peak is exact, as every gauge value the
//!   thread sees plus its own change is the true sum;
//! - with T threads caching, a peak differs from the true peak by at most
//!   (T - 1) x [`SLACK`] (the others' pending changes it did not see);
//! - `stats()` folds every pending change before it reads, so at
//!   quiescence the current figures and the gauges' values are exact, and
//!   every peak it reports is at least the current value (every rise of a
//!   gauge's value, a fold's or a hit's, checks the peak).
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

use crate::arena::{BlockRef, StreamTag, SMALL_REQUEST_MAX};
use crate::ownership::{Record, RecordRef};
use crate::stats::{Gauge, PoolStats, StatsBook};
use crate::sync::{next_id, thread_local, Arc, AtomicUsize, Mutex, Ordering, OwnerLock};
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};

/// Blocks one thread's cache of one device holds at most.
pub(crate) const CAP_BLOCKS: usize = 128;
/// Bytes one thread's cache of one device holds at most.
pub(crate) const CAP_BYTES: usize = 1 << 30;
/// Blocks one bin (stream, size) of a thread's cache holds at most.
pub(crate) const BIN_CAP: usize = 16;
/// Registered caches past which a registration lets the orphans go.
const PRUNE_AT: usize = 64;
/// Allocated bytes a thread's cache keeps pending, either way, before it
/// folds them into the shared gauges: the largest cacheable block, so that
/// a thread's allocate/free pairs of any cacheable size never fold, while
/// a thread that keeps more than that much (or frees it) does.
pub(crate) const SLACK: usize = SMALL_REQUEST_MAX;

/// A gauge on cache lines of its own: read by every cache hit, written on
/// folds only, it must not share a line with anything written more often.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(pub(crate) Gauge);

/// The allocated-bytes gauges of one device's caching side, which thread
/// caches fold their pending changes into: the device's own (for its exact
/// peak; none with a sharded cache), and the book's ones for the caching
/// side (the total's, and the caching sum's with several devices).
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) device: Option<Padded>,
    book: Arc<StatsBook>,
}

impl Sink {
    pub(crate) fn new(book: Arc<StatsBook>, device_gauge: bool) -> Self {
        Sink {
            device: device_gauge.then(Padded::default),
            book,
        }
    }

    fn gauges(&self) -> impl Iterator<Item = &Gauge> {
        self.device
            .iter()
            .map(|p| &p.0)
            .chain(self.book.caching_allocated())
    }

    /// Applies a pending change.
    fn fold(&self, delta: isize) {
        if delta != 0 {
            self.gauges().for_each(|g| g.fold(delta));
        }
    }

    /// A hit's peak check with `pending` not applied.
    fn observe(&self, pending: isize) {
        self.gauges().for_each(|g| g.observe(pending));
    }
}

/// A thread's cache on cache lines of its own: its lock and figures are
/// written by every call of its thread, and by no other thread's.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(OwnerLock<Local>);

impl std::ops::Deref for Slot {
    type Target = OwnerLock<Local>;
    fn deref(&self) -> &OwnerLock<Local> {
        &self.0
    }
}

/// A block in a thread cache: handed out by the arena of `shard`, freed by
/// the user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached {
    /// The pointer last handed out for the block: its ownership record
    /// stays in the map, marked cached, under this pointer.
    pub(crate) ptr: u64,
    /// That record, in place ([`OwnershipMap::revive_kept`]).
    ///
    /// [`OwnershipMap::revive_kept`]: crate::ownership::OwnershipMap::revive_kept
    pub(crate) record: RecordRef,
    pub(crate) block: BlockRef,
    pub(crate) size: usize,
    pub(crate) shard: usize,
    pub(crate) stream: StreamTag,
}

impl Cached {
    /// The block of the live `record`, handed out as `ptr` by the arena of
    /// `shard`, as a cache holds it.
    #[inline]
    pub(crate) fn of(record: &Record, ptr: u64, shard: usize) -> Cached {
        Cached {
            ptr,
            record: RecordRef::of(record),
            block: record.block,
            size: record.size,
            shard,
            stream: record.stream,
        }
    }
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

    /// Folds a pool cache's counts ([`PoolSlot::take_books`]) into the
    /// pool arena's figures, once the `returned` blocks the cache held went
    /// back to the arena (each freed there with no requested bytes, so
    /// counted as a free, and its bytes and block as no longer live): the
    /// hits become allocations, the frees beyond those blocks frees, and the
    /// requested bytes change by the hits' less the frees'. (The allocated
    /// bytes and live blocks of the counts are those of the returned
    /// blocks, less: the arena's free took them off already.)
    pub(crate) fn fold_into_pool(&self, stats: &mut PoolStats, returned: usize) {
        stats.allocations = stats.allocations.wrapping_add(self.allocations);
        let frees = self.frees.wrapping_sub(returned as u64);
        stats.frees = stats.frees.wrapping_add(frees);
        stats.requested_bytes = stats.requested_bytes.wrapping_add(self.requested);
        debug_assert_eq!(self.live.wrapping_add(returned), 0, "pool cache counts");
    }

    fn add(&mut self, other: &Counts) {
        self.allocated = self.allocated.wrapping_add(other.allocated);
        self.requested = self.requested.wrapping_add(other.requested);
        self.live = self.live.wrapping_add(other.live);
        self.allocations = self.allocations.wrapping_add(other.allocations);
        self.frees = self.frees.wrapping_add(other.frees);
    }

    /// Writes the figures into `stats` (replacing its user-level ones).
    ///
    /// The caches are read one after the other, so a sum taken while
    /// other threads allocate and free is not one instant's: a block
    /// allocated by a cache read before and freed by a cache read after
    /// counts only its free, and a figure may sum below zero. Such a
    /// figure reads as zero (never as the wrapped value, about 2^64).
    pub(crate) fn write_to(&self, stats: &mut PoolStats) {
        let at_least_zero = |v: usize| (v as isize).max(0) as usize;
        stats.allocated_bytes = at_least_zero(self.allocated);
        stats.requested_bytes = at_least_zero(self.requested);
        stats.live_blocks = at_least_zero(self.live);
        stats.allocations = self.allocations;
        stats.frees = self.frees;
    }
}

/// A thread cache's bins, one per (stream, block size), with the last one
/// used remembered: a thread that allocates and frees one size finds its
/// bin without hashing.
#[derive(Debug, Default)]
struct Bins {
    bins: Vec<Vec<Cached>>,
    keys: Vec<(StreamTag, usize)>,
    index: FxHashMap<(StreamTag, usize), usize>,
    last: usize,
}

impl Bins {
    #[inline]
    fn get_mut(&mut self, key: (StreamTag, usize)) -> Option<&mut Vec<Cached>> {
        let at = match self.keys.get(self.last) {
            Some(&k) if k == key => self.last,
            _ => *self.index.get(&key)?,
        };
        self.last = at;
        Some(&mut self.bins[at])
    }

    #[inline]
    fn entry(&mut self, key: (StreamTag, usize)) -> &mut Vec<Cached> {
        let at = match self.keys.get(self.last) {
            Some(&k) if k == key => self.last,
            _ => self.slot(key),
        };
        self.last = at;
        &mut self.bins[at]
    }

    /// The index of `key`'s bin, made if new (off the pair's path).
    #[inline(never)]
    fn slot(&mut self, key: (StreamTag, usize)) -> usize {
        let next = self.bins.len();
        let at = *self.index.entry(key).or_insert(next);
        if at == next {
            self.bins.push(Vec::new());
            self.keys.push(key);
        }
        at
    }
}

/// One thread's cache for one device.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// A process-unique id (0 for the throwaway cache of a thread in
    /// teardown).
    pub(crate) id: u64,
    bins: Bins,
    blocks: usize,
    bytes: usize,
    /// The thread's user-level figures.
    counts: Counts,
    /// Allocated bytes (allocations less frees) not yet in the gauges.
    pending: isize,
    /// The thread has exited: the next drain flushes this cache for good.
    orphan: bool,
    /// The device's caches are gone: the thread drops its entry.
    dead: bool,
}

impl Local {
    /// Counts an allocation of a block of `size` bytes for `requested`.
    /// `hit`: served from this cache, the change stays pending (peak checked
    /// with loads only) unless past the slack; else it is folded at once.
    pub(crate) fn on_alloc(&mut self, sink: &Sink, size: usize, requested: usize, hit: bool) {
        self.counts.on_alloc(size, requested);
        self.pending = self.pending.wrapping_add(size as isize);
        if !hit || self.pending > SLACK as isize {
            self.fold(sink);
        } else {
            sink.observe(self.pending);
        }
    }

    /// Counts a free of a block of `size` bytes for `requested`. `cached`:
    /// the block went into this cache, the change stays pending unless past
    /// the slack; else it is folded at once (no peak check: the sum only
    /// went down).
    pub(crate) fn on_free(&mut self, sink: &Sink, size: usize, requested: usize, cached: bool) {
        self.counts.on_free(size, requested);
        self.pending = self.pending.wrapping_sub(size as isize);
        if !cached || self.pending < -(SLACK as isize) {
            self.fold(sink);
        }
    }

    /// Applies the pending change to the gauges.
    fn fold(&mut self, sink: &Sink) {
        sink.fold(std::mem::take(&mut self.pending));
    }

    /// Takes a block of exactly `size` bytes on `stream`, lowest address
    /// first (as the arena's quick bins do, so placement does not depend
    /// on the order of frees).
    pub(crate) fn take(&mut self, stream: StreamTag, size: usize) -> Option<Cached> {
        let bin = self.bins.get_mut((stream, size))?;
        let cached = bin.pop()?;
        self.blocks -= 1;
        self.bytes -= cached.size;
        Some(cached)
    }

    /// Keeps a freed block; gives it back if the cache is full.
    #[inline(always)]
    pub(crate) fn put(&mut self, cached: Cached) -> Result<(), Cached> {
        if self.blocks >= CAP_BLOCKS || self.bytes + cached.size > CAP_BYTES {
            return Err(cached);
        }
        let bin = self.bins.entry((cached.stream, cached.size));
        if bin.len() >= BIN_CAP {
            return Err(cached);
        }
        // Highest address first, so `pop` takes the lowest (a block below
        // every other, as the one just taken back is, goes on top).
        match bin.last() {
            Some(top) if top.block.addr() < cached.block.addr() => {
                let at = bin.partition_point(|c| c.block.addr() > cached.block.addr());
                bin.insert(at, cached);
            }
            _ => bin.push(cached),
        }
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
        for bin in self.bins.bins.iter_mut() {
            out.append(bin);
        }
        self.blocks = 0;
        self.bytes = 0;
    }
}

/// A graph pool's cache for one thread in graph mode on it (the
/// thread's graph-mode entry holds it, the pool's arena lists it; see
/// `graph_pool/slots.rs`): the bins and caps of a device's thread cache,
/// and the pool's user-level counts of the hits and frees it served, which
/// the pool folds into its figures when it takes the blocks back. On cache
/// lines of its own, as [`Slot`].
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct PoolSlot {
    local: OwnerLock<Local>,
    /// The blocks held, written under the lock: read without it by an
    /// allocation from the pool's arena, which needs only the blocks back
    /// (an empty cache is skipped with one load). A put that this load
    /// misses is concurrent with that allocation (of another thread): it
    /// takes effect after it.
    held: AtomicUsize,
}

impl PoolSlot {
    /// A block of exactly `size` bytes on `stream` for a request of
    /// `requested` bytes, counted as an allocation.
    #[inline]
    pub(crate) fn take(&self, stream: StreamTag, size: usize, requested: usize) -> Option<Cached> {
        let mut local = self.local.lock();
        let cached = local.take(stream, size)?;
        local.counts.on_alloc(cached.size, requested);
        self.held.store(local.blocks, Ordering::Relaxed);
        Some(cached)
    }

    /// Keeps a freed block (of a request of `requested` bytes), counted as
    /// a free; `false` (nothing changed) if the cache is full.
    #[inline]
    pub(crate) fn put(&self, cached: Cached, requested: usize) -> bool {
        let mut local = self.local.lock();
        let kept = local.put(cached).is_ok();
        if kept {
            local.counts.on_free(cached.size, requested);
            self.held.store(local.blocks, Ordering::Relaxed);
        }
        kept
    }

    /// Whether the cache may hold blocks (see `held`).
    #[inline]
    pub(crate) fn holds_blocks(&self) -> bool {
        self.held.load(Ordering::Relaxed) != 0
    }

    /// Takes every block out, with the counts since the last take.
    pub(crate) fn take_books(&self) -> (Vec<Cached>, Counts) {
        let mut local = self.local.lock();
        let blocks = local.take_all();
        self.held.store(0, Ordering::Relaxed);
        (blocks, std::mem::take(&mut local.counts))
    }
}

/// A new thread's cache, registered by the caller. Out of line and cold:
/// built in place, a `Slot` (aligned to 128 bytes) would realign and
/// enlarge the stack frame of every call of [`ThreadCaches::with`].
#[cold]
#[inline(never)]
fn new_slot() -> Arc<Slot> {
    Arc::new(Slot(OwnerLock::new(Local {
        id: next_id(),
        ..Local::default()
    })))
}

/// A thread's entry for one device's caches; marks the cache orphaned when
/// the thread's thread-locals are destroyed.
struct Handle {
    owner: u64,
    local: Arc<Slot>,
    sink: Arc<Sink>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The memo must not outlive the entry it points into.
        let slot: *const Slot = &*self.local;
        let _ = LAST.try_with(|last| {
            if last.get().1 == slot {
                last.set((0, std::ptr::null()));
            }
        });
        let mut local = self.local.lock();
        local.fold(&self.sink);
        local.orphan = true;
    }
}

thread_local! {
    /// The calling thread's caches, one per device's [`ThreadCaches`] used.
    static MINE: RefCell<Vec<Handle>> = const { RefCell::new(Vec::new()) };
    /// The cache the calling thread used last, as (the [`ThreadCaches`]'
    /// id, its slot), or (0, null): one plain load finds it on every call
    /// of a thread that uses one device (no destructor, no borrow, no
    /// search). Invariant: a non-null slot is that of an entry of [`MINE`]
    /// (whose `Arc` keeps it alive): set only from an entry found or
    /// pushed there, cleared when that entry is dropped.
    static LAST: Cell<(u64, *const Slot)> = const { Cell::new((0, std::ptr::null())) };
}

/// The thread caches of one device.
#[derive(Debug)]
pub(crate) struct ThreadCaches {
    id: u64,
    /// Every thread's cache for this device, orphaned ones too.
    locals: Mutex<Vec<Arc<Slot>>>,
    /// The counts of flushed orphans and of calls that could use no cache.
    retired: Mutex<Counts>,
    /// The gauges the caches fold their pending changes into.
    pub(crate) sink: Arc<Sink>,
}

impl ThreadCaches {
    pub(crate) fn new(sink: Sink) -> Self {
        ThreadCaches {
            id: next_id(),
            locals: Mutex::new(Vec::new()),
            retired: Mutex::new(Counts::default()),
            sink: Arc::new(sink),
        }
    }

    /// Runs `f` on the calling thread's cache, registering one on first
    /// use. Late in the thread's teardown (no thread-locals), runs `f` on a
    /// throwaway cache whose counts are retired and whose blocks (if `f`
    /// left any) go to `orphans`, for the arena.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut Local) -> R,
        orphans: impl FnOnce(Vec<Cached>),
    ) -> R {
        let (id, slot) = LAST.try_with(Cell::get).unwrap_or((0, std::ptr::null()));
        if id == self.id {
            // SAFETY: `LAST`'s invariant: the slot of an entry of this
            // thread's `MINE`, alive while that entry is, and the entry is
            // dropped only by this thread (which is here), clearing `LAST`.
            let slot = unsafe { &*slot };
            return f(&mut slot.lock());
        }
        self.with_slow(f, orphans)
    }

    /// [`ThreadCaches::with`] when the thread's last cache is another
    /// device's (or none yet): finds or registers this one's, and
    /// remembers it.
    #[inline(never)]
    fn with_slow<R>(
        &self,
        f: impl FnOnce(&mut Local) -> R,
        orphans: impl FnOnce(Vec<Cached>),
    ) -> R {
        let mut f = Some(f);
        let found = MINE.try_with(|mine| {
            let mine = mine.borrow();
            let handle = mine.iter().find(|h| h.owner == self.id)?;
            let slot: *const Slot = &*handle.local;
            let _ = LAST.try_with(|last| last.set((self.id, slot)));
            let mut local = handle.local.lock();
            Some((f.take().expect("called once"))(&mut local))
        });
        match found {
            Ok(Some(r)) => r,
            Ok(None) => {
                let local = new_slot();
                let r = (f.take().expect("called once"))(&mut local.lock());
                orphans(self.register(local));
                r
            }
            Err(_) => {
                let mut local = Local::default();
                let r = (f.take().expect("called once"))(&mut local);
                local.fold(&self.sink);
                self.retired.lock().add(&local.counts);
                orphans(local.take_all());
                r
            }
        }
    }

    /// Registers a new thread's cache (in the thread-local list and here).
    /// Late in the thread's teardown, returns its blocks.
    fn register(&self, local: Arc<Slot>) -> Vec<Cached> {
        let handle = Handle {
            owner: self.id,
            local: local.clone(),
            sink: self.sink.clone(),
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
            local.fold(&self.sink);
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
    /// counts, and folds every pending change of the caches it looks at.
    /// The caller gives the blocks back to the arena.
    pub(crate) fn drain(&self, orphans_only: bool) -> Vec<Cached> {
        let mut out = Vec::new();
        let mut retired = Counts::default();
        let mut locals = self.locals.lock();
        locals.retain(|local| {
            let mut local = local.lock();
            if local.orphan || !orphans_only {
                local.fold(&self.sink);
            }
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

    /// The user-level figures of every thread, summed, after folding every
    /// cache's pending change into the gauges: at quiescence every figure
    /// and every gauge's value is then exact, and no peak is below its
    /// gauge's value (every rise of a value checks its peak). (Lock order: the list, then a
    /// cache or the retired counts; a cache, then the retired counts.)
    pub(crate) fn counts(&self) -> Counts {
        let locals = self.locals.lock();
        let mut sum = *self.retired.lock();
        for local in locals.iter() {
            let mut local = local.lock();
            local.fold(&self.sink);
            sum.add(&local.counts);
        }
        sum
    }

    /// Folds every cache's pending change into the gauges (before a reset
    /// of their peaks, which restarts them from the gauges' values).
    pub(crate) fn fold_all(&self) {
        for local in self.locals.lock().iter() {
            local.lock().fold(&self.sink);
        }
    }

    /// The cached block that contains `addr`, as (start, size), if any
    /// (slow: a scan, for diagnosing a bad free).
    pub(crate) fn containing(&self, addr: u64) -> Option<(u64, usize)> {
        self.locals.lock().iter().find_map(|local| {
            let local = local.lock();
            local.bins.bins.iter().flatten().find_map(|c| {
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

#[cfg(test)]
mod tests {
    use super::Counts;
    use crate::stats::PoolStats;

    #[test]
    fn a_sum_below_zero_reads_as_zero_not_as_the_wrapped_value() {
        // Cache A read before it allocated 4 KiB, cache B after it freed
        // that block: the sum counts the free only.
        let (mut a, mut b) = (Counts::default(), Counts::default());
        b.on_free(4096, 4000);
        a.add(&b);
        let mut stats = PoolStats::default();
        a.write_to(&mut stats);
        assert_eq!(stats.allocated_bytes, 0);
        assert_eq!(stats.requested_bytes, 0);
        assert_eq!(stats.live_blocks, 0);
        assert_eq!(stats.frees, 1);
    }
}
