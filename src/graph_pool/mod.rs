//! [`GraphPool`]: the private pool that a CUDA graph capture allocates from;
//! planned pools ([`plan`]) place its blocks ahead of the capture from a
//! recording ([`record`]) of the same run.

mod pending;
pub(crate) mod plan;
mod planner;
pub(crate) mod record;
mod slots;

use crate::arena::{AddressKind, Arena, BlockRef, Books, Carved, StreamTag, WalkedSegment};
use crate::caching::CachingAllocator;
use crate::device::Shortfall;
use crate::error::{Error, Result};
use crate::history::Action;
use crate::ownership::OwnershipMap;
use crate::stats::{PoolStats, Side, StatsBook};
use crate::sync::{next_id, Arc, AtomicBool, Mutex, Ordering};
use pending::PoolArena;
use std::collections::HashMap;
use std::fmt;
use std::ptr::NonNull;

/// The pools of one allocator: the arena of each pool alive now, and the
/// cumulative counts of the pools already dropped.
///
/// Owned by the allocator and shared with each of its pools, which leaves
/// it when dropped. Both halves sit under one lock, so a pool moves from
/// live to retired in one step: a sum taken meanwhile ([`PoolRegistry::stats`])
/// counts it exactly once. Lock order: the registry, then a pool's arena.
#[derive(Debug)]
pub(crate) struct PoolRegistry {
    inner: Mutex<Registered>,
    /// The allocator's ownership map, where the records of blocks in the
    /// pools' thread caches stay until a flush forgets them (`slots.rs`).
    owners: Arc<OwnershipMap>,
    /// The allocator's statistics book (the pools' allocated gauges).
    book: Arc<StatsBook>,
}

#[derive(Debug, Default)]
struct Registered {
    /// Pool id → the pool's device and arena.
    live: HashMap<u64, (usize, Arc<Mutex<PoolArena>>)>,
    /// The cumulative counts of pools already dropped.
    retired: PoolStats,
    /// Pool id → the pool, for each pool whose last handle was dropped
    /// while blocks of it were live: kept alive here until its last block
    /// is freed ([`PoolCore::free`]) or the allocator goes away
    /// ([`PoolRegistry::close`]). See [`PoolPtr`].
    parked: HashMap<u64, Arc<PoolCore>>,
    /// Set when the allocator goes away: its ownership records are gone,
    /// so no block of a pool will be freed any more, and nothing is parked.
    closed: bool,
}

impl PoolRegistry {
    pub(crate) fn new(owners: Arc<OwnershipMap>, book: Arc<StatsBook>) -> Self {
        PoolRegistry {
            inner: Mutex::new(Registered::default()),
            owners,
            book,
        }
    }

    /// Locks `arena` and gives it back the blocks of its thread caches
    /// (`slots.rs`), before its figures or blocks are read.
    fn flushed<R>(&self, arena: &Mutex<PoolArena>, f: impl FnOnce(&mut PoolArena) -> R) -> R {
        let mut arena = arena.lock();
        arena.flush_slots(&self.owners, &self.book);
        f(&mut arena)
    }

    fn register(&self, id: u64, device: usize, arena: Arc<Mutex<PoolArena>>) {
        self.inner.lock().live.insert(id, (device, arena));
    }

    /// Moves pool `id` from the live set to the retired counts, in one step.
    fn retire(&self, id: u64, last: &PoolStats) {
        let mut inner = self.inner.lock();
        inner.live.remove(&id);
        inner.retired.add_counts(last);
    }

    /// Parks `core`, whose last handle is being dropped while `live` says
    /// blocks of it are live (read under the pool's arena lock, held by the
    /// caller with this registry's lock: `live` is called with both held).
    /// Returns whether it parked (not once the allocator is gone).
    fn park_if(&self, core: &Arc<PoolCore>, live: impl FnOnce() -> bool) -> bool {
        let mut inner = self.inner.lock();
        if inner.closed || !live() {
            return false;
        }
        inner.parked.insert(core.id, core.clone());
        true
    }

    /// Takes parked pool `id` out (its last block was just freed); the
    /// caller drops it, outside every lock of the pool.
    fn unpark(&self, id: u64) -> Option<Arc<PoolCore>> {
        self.inner.lock().parked.remove(&id)
    }

    /// The allocator is going away (its ownership records were cleared):
    /// nothing parks any more, and every parked pool is returned to be
    /// dropped by the caller (outside this registry's lock, which a pool's
    /// drop takes).
    pub(crate) fn close(&self) -> Vec<Arc<PoolCore>> {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.parked.drain().map(|(_, core)| core).collect()
    }

    /// Folds every live pool's pending change of allocated bytes into the
    /// gauges of `book` (before they are read or their peaks restarted).
    pub(crate) fn fold(&self, book: &crate::stats::StatsBook) {
        let inner = self.inner.lock();
        for (_, arena) in inner.live.values() {
            self.flushed(arena, |a| a.fold_pending(book));
        }
    }

    /// The sum of the figures of the pools alive now, on `device` or on all;
    /// with `retired`, plus the cumulative counts of the pools dropped.
    pub(crate) fn stats(&self, device: Option<usize>, retired: bool) -> PoolStats {
        let inner = self.inner.lock();
        let mut sum = PoolStats::default();
        for (d, arena) in inner.live.values() {
            if device.is_none_or(|want| want == *d) {
                sum.add(&self.flushed(arena, |a| a.stats));
            }
        }
        if retired {
            sum.add_counts(&inner.retired);
        }
        sum
    }

    /// The books of the live pools of `device` (for an out-of-memory
    /// report), each arena read under its lock, with the `top` largest live
    /// blocks.
    pub(crate) fn books(&self, device: usize, top: usize) -> Books {
        let inner = self.inner.lock();
        let mut sum = Books::default();
        for (d, arena) in inner.live.values() {
            if *d == device {
                let books = self.flushed(arena, |a| a.books(top));
                sum.merge(books, top);
            }
        }
        sum
    }

    /// Each live pool's id, device, and segments with their blocks.
    pub(crate) fn walk(&self) -> Vec<(u64, usize, Vec<WalkedSegment>)> {
        let inner = self.inner.lock();
        let mut out: Vec<_> = (inner.live.iter())
            .map(|(id, (device, arena))| (*id, *device, self.flushed(arena, |a| a.walk())))
            .collect();
        out.sort_by_key(|p| p.0);
        out
    }

    /// What `addr` is in each live pool's arena.
    pub(crate) fn classify(&self, addr: u64) -> Vec<AddressKind> {
        let inner = self.inner.lock();
        inner
            .live
            .values()
            .map(|(_, arena)| self.flushed(arena, |a| a.classify(addr)))
            .collect()
    }
}

/// The shared state of a pool. It is dropped (and its segments are
/// released) exactly once: when its last handle ([`PoolHandle`]) is gone
/// *and* no block of it is live. The handle holds an `Arc` to it; the
/// ownership records of its live blocks hold a [`PoolPtr`] (no reference
/// count per block), and a pool whose last handle goes while blocks live is
/// parked in its registry until its last block is freed.
pub(crate) struct PoolCore {
    pub(crate) id: u64,
    pub(crate) allocator_id: u64,
    /// The device ordinal (read once: the hot path asks for it per call).
    device: usize,
    /// The caching allocator of the pool's device: where its segments come
    /// from, and the cache emptied when the device is full.
    cache: Arc<CachingAllocator>,
    arena: Arc<Mutex<PoolArena>>,
    /// The allocator's registry, which this pool leaves when dropped.
    registry: Arc<PoolRegistry>,
    /// A planned pool's plan and cursor. Lock order: this, then the arena.
    plan: Option<Mutex<plan::PlanCursor>>,
    /// Whether the pool's last handle is gone and it is parked in the
    /// registry. Read and written only under the arena lock (an atomic only
    /// to be `Sync`).
    orphaned: AtomicBool,
}

impl fmt::Debug for PoolCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCore")
            .field("id", &self.id)
            .field("allocator_id", &self.allocator_id)
            .field("device", &self.cache.device.ordinal())
            .finish()
    }
}

impl PoolCore {
    /// Carves a block for a request: as the plan says for a planned pool,
    /// else from the pool's free blocks or a new segment.
    #[inline]
    pub(crate) fn allocate(
        &self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
        align: usize,
    ) -> Result<Carved, Shortfall> {
        // The common case in line: no plan, nothing deferred, a free block
        // fits (anything else starts over below).
        if self.plan.is_none() {
            let mut arena = self.arena.lock();
            // The threads' caches' blocks first (`slots.rs`).
            self.flush_blocks(&mut arena);
            if arena.deferred.is_empty() {
                if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
                    arena.pend_alloc(&self.cache.device.book, carved.size);
                    return Ok(carved);
                }
            }
        }
        self.allocate_slow(stream, rounded, requested, align)
    }

    #[inline(never)]
    fn allocate_slow(
        &self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
        align: usize,
    ) -> Result<Carved, Shortfall> {
        let mut cursor = self.plan.as_ref().map(|p| p.lock());
        let mut arena = self.arena.lock();
        self.flush_blocks(&mut arena);
        let device = &self.cache.device;
        if let Some(cursor) = cursor.as_mut() {
            let planned = cursor.serve(device, &mut arena, stream, rounded, requested, align);
            if let Some(carved) = planned {
                arena.pend_alloc(&device.book, carved.size);
                return Ok(carved);
            }
        }
        drop(cursor);
        // The common case, as `carve` does it with no deferred free to
        // settle and a free block that fits: the change stays pending.
        if arena.deferred.is_empty() {
            if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
                arena.pend_alloc(&device.book, carved.size);
                return Ok(carved);
            }
        }
        // `carve` adds to the gauges at once: the pending free goes first,
        // or the peak would count the freed block and the new one together.
        arena.fold_pending(&device.book);
        match device.carve(&mut arena, Side::Pools, stream, rounded, requested) {
            Err(Shortfall::Exhausted) => {}
            other => return other,
        }
        // The device is full. Pool segments must stay (graphs replay into
        // them); what can go is the device cache's idle memory. Blocks of
        // the pool waiting for stream work may become reusable too.
        arena.stats.on_oom_retry();
        let _ = device.settle(&mut arena, Side::Pools, true);
        let _ = self.cache.empty_cache();
        device.carve(&mut arena, Side::Pools, stream, rounded, requested)
    }

    /// Frees a block allocated on `stream` and also used on `uses`. Blocks
    /// freed during the pool's own capture are reusable by that capture at
    /// once (they never reach eager work: only the pool hands them out).
    ///
    /// Returns the pool itself when this was the last live block of a
    /// parked pool: the caller drops it once it holds no reference into
    /// the pool (see [`PoolPtr::free`]).
    ///
    /// A raw pointer, not `&self`: once the arena lock is released, another
    /// thread's free (or the last handle's drop) may release the pool while
    /// this call is still returning, and a reference argument must stay
    /// valid for the whole call; a local reference needs to be valid only
    /// where it is used.
    ///
    /// # Safety
    /// `this` is valid until the arena lock is released: the caller's
    /// block is live (see [`PoolPtr`]).
    #[must_use]
    unsafe fn free(
        this: NonNull<PoolCore>,
        block: BlockRef,
        requested: usize,
        stream: StreamTag,
        uses: &[StreamTag],
    ) -> Option<Arc<PoolCore>> {
        // SAFETY: valid while the block is live (the caller's contract), and
        // used only up to the unlock below, or, for the last block of a
        // parked pool, while the registry still holds the pool.
        let pool = unsafe { this.as_ref() };
        let mut arena = pool.arena.lock();
        let device = &pool.cache.device;
        if uses.is_empty() {
            // As `free_block` does with a pool's block used on its own stream
            // only (reusable at once), the change kept pending.
            let size = arena.free(block, requested);
            arena.pend_free(&device.book, size);
            device.note(
                Action::FreeCompleted,
                Side::Pools,
                stream,
                size,
                block.addr(),
            );
        } else {
            device.free_block(&mut arena, Side::Pools, block, requested, stream, uses);
        }
        // No handle is left once orphaned, so no block can be allocated
        // any more: the live count only falls, and exactly one free takes
        // it to zero (under this lock).
        let last = arena.is_idle() && pool.orphaned.load(Ordering::Relaxed);
        drop(arena);
        if last {
            // Not under the arena lock: the registry is locked first. No
            // handle is left and no block: only the registry holds the
            // pool, until this takes it out.
            pool.registry.unpark(pool.id)
        } else {
            None
        }
    }

    pub(crate) fn device(&self) -> usize {
        self.device
    }
}

/// A pool's handle: what [`GraphPool`] handles, graph-mode guards and the
/// allocator's capture maps share (as `Arc<PoolHandle>`). Allocating from a
/// pool needs one held, which keeps the pool alive; when the last one goes
/// while blocks of the pool are live, the pool is parked (see [`PoolPtr`]).
pub(crate) struct PoolHandle {
    core: Arc<PoolCore>,
}

impl std::ops::Deref for PoolHandle {
    type Target = PoolCore;
    fn deref(&self) -> &PoolCore {
        &self.core
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        let core = &self.core;
        // Lock order: the registry (held while `live` runs), then the
        // arena. The flag is set under the arena lock, in the same critical
        // section as the count it is decided on; a free that sees it can
        // take the pool out of the registry only after the registry lock is
        // released here, by when the pool is parked.
        core.registry.park_if(core, || {
            let arena = core.arena.lock();
            let live = !arena.is_idle();
            core.orphaned.store(live, Ordering::Relaxed);
            live
        });
        // Unless parked, `core`'s last `Arc` goes with this handle, outside
        // every lock (the pool's drop takes the registry and arena locks).
    }
}

/// A pool as the ownership record of one of its live blocks names it: a
/// plain pointer, so that an allocation and a free in graph mode touch no
/// reference count.
///
/// Why it never dangles: a `PoolPtr` is made only for a block the pool just
/// handed out ([`PoolPtr::for_block`]), by a caller holding a
/// [`PoolHandle`], and lives in that block's ownership record until
/// [`PoolPtr::free`] consumes it (it is neither `Copy` nor `Clone`). The
/// block is counted in the arena's live blocks from its allocation until
/// that free, under the arena lock. The pool's `Arc<PoolCore>` is held by
/// every handle; the last handle's drop, with the registry and arena locks
/// held, parks a clone in the registry when the count is above zero
/// ([`PoolHandle`]'s drop), and only the free that takes the count of a
/// parked pool to zero, or the allocator's drop (which first clears every
/// ownership record), takes it out again. So while a record holds a
/// `PoolPtr`, its block is counted, and a handle or the registry holds the
/// pool. (An allocator dropped while handles live leaves its records
/// cleared and the registry closed: the pool is dropped with its last
/// handle, and no `PoolPtr` is left.)
#[derive(Debug)]
pub(crate) struct PoolPtr(NonNull<PoolCore>);

// SAFETY: a `PoolPtr` is a shared reference to a `PoolCore` (valid for as
// long as the `PoolPtr` lives, see above), and `PoolCore` is `Sync` (so
// `&PoolCore` is `Send` and `Sync`).
unsafe impl Send for PoolPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolPtr {}

impl PoolPtr {
    /// The pointer for a block that `pool` just handed out, to be stored
    /// in the block's ownership record.
    ///
    /// # Safety
    /// The caller holds a [`PoolHandle`] of `pool` (`pool` is borrowed from
    /// it), the pool's arena counts the block live, and the pointer goes
    /// into the block's record, to be consumed by [`PoolPtr::free`] when
    /// the block is freed (or dropped with the record).
    pub(crate) unsafe fn for_block(pool: &PoolCore) -> Self {
        PoolPtr(NonNull::from(pool))
    }

    /// The pool.
    #[inline]
    pub(crate) fn get(&self) -> &PoolCore {
        // SAFETY: while this `PoolPtr` lives, its block is live and the pool
        // is held by a handle or the registry (see the type's docs); the
        // reference is bounded by the borrow of `self`, and `free`, the only
        // way a block stops being live, consumes `self` (and works from the
        // raw pointer, not from this reference).
        unsafe { self.0.as_ref() }
    }

    /// Frees the block whose record held this pointer; when it was the
    /// last block of a parked pool, the pool is dropped here, after the
    /// last use of the reference.
    #[inline]
    pub(crate) fn free(
        self,
        block: BlockRef,
        requested: usize,
        stream: StreamTag,
        uses: &[StreamTag],
    ) {
        // SAFETY: this pointer's block is live until this free (see the
        // type's docs), and `self` is consumed: no reference from it
        // outlives the call.
        let parked = unsafe { PoolCore::free(self.0, block, requested, stream, uses) };
        drop(parked);
    }
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        let device = &self.cache.device;
        let stats = {
            let mut arena = self.arena.lock();
            self.flush(&mut arena);
            // Live blocks remain only when their allocator was dropped
            // first (its ownership records are gone): their memory goes
            // with the pool. Deferred frees are waited for. Errors
            // cannot be reported from a drop; a segment whose release fails
            // is dropped from the books either way.
            let _ = device.settle(&mut arena, Side::Pools, true);
            let _ = device.release_all(&mut arena, Side::Pools);
            arena.fold_pending(&device.book);
            arena.stats
        };
        // Not under the arena lock: the registry is locked first and the
        // arena second.
        self.registry.retire(self.id, &stats);
    }
}

/// A private memory pool for CUDA graph captures.
///
/// Allocations made in graph mode on a pool ([`crate::graph_mode`]) come from
/// the pool's own segments, so their addresses stay valid for every replay of
/// the captured graph. Blocks freed into the pool are reused by later
/// allocations from the same pool (on the same stream), never by the caching
/// allocator.
///
/// Cloning the handle shares the pool, so several graphs can capture into
/// one pool. When the last handle is dropped, the pool's segments go back to
/// the device as soon as no block of it is live: a block freed after its
/// pool's last handle is gone is still routed to the pool and frees correctly.
///
/// ```
/// use graphalloc::{Allocator, Config};
/// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
/// let pool = alloc.create_pool();
/// let p = {
///     let _g = alloc.enter_graph_mode(&pool).unwrap();
///     alloc.allocate(4096, 256).unwrap()
/// };
/// assert_eq!(pool.stats().live_blocks, 1);
/// assert!(pool.reset().is_err()); // busy
/// alloc.free(p).unwrap(); // routed to the pool, outside graph mode
/// pool.reset().unwrap();
/// ```
#[derive(Clone)]
pub struct GraphPool {
    pub(crate) core: Arc<PoolHandle>,
}

impl fmt::Debug for GraphPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphPool")
            .field("id", &self.core.id)
            .field("device", &self.core.device())
            .field("stats", &self.stats())
            .finish()
    }
}

impl GraphPool {
    /// A new pool of allocator `allocator_id` on `cache`'s device, entered
    /// in the allocator's `registry`.
    pub(crate) fn create(
        allocator_id: u64,
        cache: Arc<CachingAllocator>,
        registry: &Arc<PoolRegistry>,
    ) -> Self {
        Self::build(allocator_id, cache, registry, Arena::new(), None)
    }

    /// A new planned pool: `plan` reserves the plan's segments in the new
    /// pool's arena. On its error, what it reserved goes back at once.
    pub(crate) fn create_with(
        allocator_id: u64,
        cache: Arc<CachingAllocator>,
        registry: &Arc<PoolRegistry>,
        plan: impl FnOnce(&CachingAllocator, &mut Arena) -> Result<plan::PlanCursor>,
    ) -> Result<Self> {
        let mut arena = Arena::new();
        match plan(&cache, &mut arena) {
            Ok(cursor) => Ok(Self::build(
                allocator_id,
                cache,
                registry,
                arena,
                Some(Mutex::new(cursor)),
            )),
            Err(e) => {
                let _ = cache.device.release_all(&mut arena, Side::Pools);
                Err(e)
            }
        }
    }

    fn build(
        allocator_id: u64,
        cache: Arc<CachingAllocator>,
        registry: &Arc<PoolRegistry>,
        arena: Arena,
        plan: Option<Mutex<plan::PlanCursor>>,
    ) -> Self {
        let arena = Arc::new(Mutex::new(PoolArena::new(arena)));
        let id = next_id();
        let device = cache.device.ordinal();
        registry.register(id, device, arena.clone());
        let core = Arc::new(PoolCore {
            id,
            allocator_id,
            device,
            cache,
            arena,
            registry: registry.clone(),
            plan,
            orphaned: AtomicBool::new(false),
        });
        GraphPool {
            core: Arc::new(PoolHandle { core }),
        }
    }

    /// The pool's process-unique id.
    pub fn id(&self) -> u64 {
        self.core.id
    }

    /// The device ordinal whose memory the pool holds.
    pub fn device(&self) -> usize {
        self.core.device()
    }

    /// Makes the whole pool reusable for a new capture: its segments stay
    /// reserved, every block is free, and the peaks restart from now.
    ///
    /// Refuses with [`Error::PoolBusy`] while any block of the pool is live
    /// (a graph still replaying into it would be corrupted), changing nothing.
    /// A planned pool follows its current plan from the start again.
    pub fn reset(&self) -> Result<()> {
        let mut cursor = self.core.plan.as_ref().map(|p| p.lock());
        let mut arena = self.core.arena.lock();
        self.core.flush(&mut arena);
        if !arena.is_idle() {
            return Err(Error::PoolBusy {
                pool: self.core.id,
                live_blocks: arena.stats.live_blocks,
                allocated: arena.stats.allocated_bytes,
            });
        }
        arena.stats.reset_peaks();
        if let Some(cursor) = cursor.as_mut() {
            cursor.rewind();
        }
        Ok(())
    }

    /// The pool's statistics.
    pub fn stats(&self) -> PoolStats {
        let mut arena = self.core.arena.lock();
        self.core.flush(&mut arena);
        arena.stats
    }

    /// Whether two handles share one pool.
    pub fn same_pool(&self, other: &GraphPool) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }
}
