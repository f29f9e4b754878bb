//! [`GraphPool`]: the private pool that a CUDA graph capture allocates from;
//! planned pools ([`plan`]) place its blocks ahead of the capture from a
//! recording ([`record`]) of the same run.

pub(crate) mod plan;
mod planner;
pub(crate) mod record;

use crate::arena::{AddressKind, Arena, BlockRef, Books, Carved, StreamTag, WalkedSegment};
use crate::caching::CachingAllocator;
use crate::device::Shortfall;
use crate::error::{Error, Result};
use crate::stats::{PoolStats, Side};
use crate::sync::{next_id, Arc, Mutex};
use std::collections::HashMap;
use std::fmt;

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
}

#[derive(Debug, Default)]
struct Registered {
    /// Pool id → the pool's device and arena.
    live: HashMap<u64, (usize, Arc<Mutex<Arena>>)>,
    /// The cumulative counts of pools already dropped.
    retired: PoolStats,
}

impl PoolRegistry {
    pub(crate) fn new() -> Self {
        PoolRegistry {
            inner: Mutex::new(Registered::default()),
        }
    }

    fn register(&self, id: u64, device: usize, arena: Arc<Mutex<Arena>>) {
        self.inner.lock().live.insert(id, (device, arena));
    }

    /// Moves pool `id` from the live set to the retired counts, in one step.
    fn retire(&self, id: u64, last: &PoolStats) {
        let mut inner = self.inner.lock();
        inner.live.remove(&id);
        inner.retired.add_counts(last);
    }

    /// The sum of the figures of the pools alive now, on `device` or on all;
    /// with `retired`, plus the cumulative counts of the pools dropped.
    pub(crate) fn stats(&self, device: Option<usize>, retired: bool) -> PoolStats {
        let inner = self.inner.lock();
        let mut sum = PoolStats::default();
        for (d, arena) in inner.live.values() {
            if device.is_none_or(|want| want == *d) {
                sum.add(&arena.lock().stats);
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
                let books = arena.lock().books(top);
                sum.merge(books, top);
            }
        }
        sum
    }

    /// Each live pool's id, device, and segments with their blocks.
    pub(crate) fn walk(&self) -> Vec<(u64, usize, Vec<WalkedSegment>)> {
        let inner = self.inner.lock();
        let mut out: Vec<_> = (inner.live.iter())
            .map(|(id, (device, arena))| (*id, *device, arena.lock().walk()))
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
            .map(|(_, arena)| arena.lock().classify(addr))
            .collect()
    }
}

/// The shared state of a pool. Every [`GraphPool`] handle, every live block
/// of the pool (through its ownership record) and every active graph-mode
/// guard on it hold an `Arc` to this, so it is dropped (and its segments are
/// released) exactly once: when the last handle is gone *and* no block of it
/// is live.
pub(crate) struct PoolCore {
    pub(crate) id: u64,
    pub(crate) allocator_id: u64,
    /// The device ordinal (read once: the hot path asks for it per call).
    device: usize,
    /// The caching allocator of the pool's device: where its segments come
    /// from, and the cache emptied when the device is full.
    cache: Arc<CachingAllocator>,
    arena: Arc<Mutex<Arena>>,
    /// The allocator's registry, which this pool leaves when dropped.
    registry: Arc<PoolRegistry>,
    /// A planned pool's plan and cursor. Lock order: this, then the arena.
    plan: Option<Mutex<plan::PlanCursor>>,
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
            if arena.deferred.is_empty() {
                if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
                    self.cache.device.book.allocated(Side::Pools, carved.size);
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
        let device = &self.cache.device;
        if let Some(cursor) = cursor.as_mut() {
            let planned = cursor.serve(device, &mut arena, stream, rounded, requested, align);
            if let Some(carved) = planned {
                device.book.allocated(Side::Pools, carved.size);
                return Ok(carved);
            }
        }
        drop(cursor);
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
    #[inline]
    pub(crate) fn free(
        &self,
        block: BlockRef,
        requested: usize,
        stream: StreamTag,
        uses: &[StreamTag],
    ) {
        let mut arena = self.arena.lock();
        self.cache
            .device
            .free_block(&mut arena, Side::Pools, block, requested, stream, uses);
    }

    pub(crate) fn device(&self) -> usize {
        self.device
    }
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        let device = &self.cache.device;
        let stats = {
            let mut arena = self.arena.lock();
            // Live blocks remain only when their allocator was dropped
            // first (its ownership records held this pool): their memory
            // goes with the pool. Deferred frees are waited for. Errors
            // cannot be reported from a drop; a segment whose release fails
            // is dropped from the books either way.
            let _ = device.settle(&mut arena, Side::Pools, true);
            let _ = device.release_all(&mut arena, Side::Pools);
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
    pub(crate) core: Arc<PoolCore>,
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
        let arena = Arc::new(Mutex::new(arena));
        let id = next_id();
        let device = cache.device.ordinal();
        registry.register(id, device, arena.clone());
        GraphPool {
            core: Arc::new(PoolCore {
                id,
                allocator_id,
                device,
                cache,
                arena,
                registry: registry.clone(),
                plan,
            }),
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
        self.core.arena.lock().stats
    }

    /// Whether two handles share one pool.
    pub fn same_pool(&self, other: &GraphPool) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }
}
