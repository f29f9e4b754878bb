//! The caching allocator of one device.
//!
//! Policy on top of the shared [`Arena`]: segments are reserved on demand
//! and kept after their blocks are freed, so later requests reuse them
//! without a trip to the driver; they go back to the device only on
//! [`CachingAllocator::empty_cache`] or when an allocation finds the device
//! full (release everything idle, retry once).
//!
//! In front of the arena, each thread keeps the small blocks it allocated
//! and freed in a cache of its own ([`crate::thread_cache`]), so that the
//! common allocate/free pair of one small size on one stream touches no
//! shared lock (large blocks go back to best fit at once). The
//! user-level statistics are per-thread counts summed when asked, and the
//! peak of allocated bytes a gauge of the device's, into which each thread
//! cache folds its changes in batches (see [`crate::thread_cache`]: exact
//! with one thread, within a stated bound with several), so that a cache
//! hit writes no shared line.
//!
//! The cache is one arena by default, like PyTorch's one lock per device.
//! With `shards: N` it is N arenas, each with its own lock and segments:
//! each thread allocates from the shard it was assigned (round robin, on its
//! first allocation), and a free goes back to the shard that handed the
//! block out, whichever thread frees it. Threads then rarely meet on a lock,
//! at the price of memory cached in one shard being invisible to the
//! others until it is released (out of memory releases every shard's idle
//! segments before failing). A sharded cache also keeps no gauge: its
//! allocated peak is the sum of the shards' arena peaks (which count blocks
//! in thread caches as handed out), an upper bound.

use crate::arena::{
    AddressKind, Arena, BlockRef, Books, Carved, StreamTag, WalkedSegment, SMALL_REQUEST_MAX,
};
use crate::backend::BackendError;
use crate::device::{Device, Shortfall};
use crate::history::Action;
use crate::ownership::{Kept, Owner, OwnershipMap, Record};
use crate::stats::{PoolStats, Side};
use crate::sync::{thread_local, Arc, Mutex};
use crate::thread_cache::{Cached, Sink, ThreadCaches};
use std::cell::Cell;

thread_local! {
    /// The calling thread's shard number, before reduction modulo the
    /// shard count; assigned on first use.
    static THREAD_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The calling thread's shard among `count`.
fn thread_shard(count: usize) -> usize {
    if count == 1 {
        return 0;
    }
    // Late in thread teardown the slot may be gone: shard 0 then.
    THREAD_SHARD
        .try_with(|slot| {
            let n = slot.get().unwrap_or_else(|| {
                // Spreads threads over shards; not part of any synchronisation.
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                slot.set(Some(n));
                n
            });
            n % count
        })
        .unwrap_or(0)
}

/// One shard on cache lines of its own, so that threads working in
/// neighbouring shards do not share a line.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Arena>);

impl std::ops::Deref for Shard {
    type Target = Mutex<Arena>;
    fn deref(&self) -> &Mutex<Arena> {
        &self.0
    }
}

/// [`CachingAllocator::keep`] for the live block of `record`, handed out as
/// `ptr`, if a caching allocator (of `caches`) owns it: whether it went into
/// the calling thread's cache. Blocks a thread cache lets go of meanwhile go
/// to `orphans`, which the caller flushes (on the free's arena or kept path).
#[inline]
pub(crate) fn keep(
    caches: &[Arc<CachingAllocator>],
    record: &Record,
    ptr: u64,
    orphans: &mut Vec<Cached>,
) -> bool {
    match &record.owner {
        Owner::Cache { device, origin } => caches[*device].keep(*origin, record, ptr, orphans),
        _ => false,
    }
}

/// Where a caching allocator's block came from: the shard that handed it
/// out, and the id of the thread cache that counted its allocation (the
/// only one a free puts it in).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Origin {
    shard: usize,
    thread: u64,
}

impl Origin {
    /// No origin (see [`Owner::SPENT`](crate::ownership::Owner::SPENT)).
    pub(crate) const SPENT: Origin = Origin {
        shard: usize::MAX,
        thread: 0,
    };
}

#[derive(Debug)]
pub(crate) struct CachingAllocator {
    pub(crate) device: Arc<Device>,
    shards: Box<[Shard]>,
    /// The threads' caches of freed blocks, the user-level counts, and the
    /// allocated-bytes gauges (the device's, for its peak, none when
    /// sharded; the book's).
    threads: ThreadCaches,
    /// The allocator's ownership map, where the records of blocks in
    /// thread caches stay (marked cached) until a flush removes them.
    owners: Arc<OwnershipMap>,
}

impl CachingAllocator {
    pub(crate) fn new(device: Arc<Device>, shards: usize, owners: Arc<OwnershipMap>) -> Self {
        CachingAllocator {
            shards: (0..shards.max(1))
                .map(|_| Shard(Mutex::new(Arena::new())))
                .collect(),
            threads: ThreadCaches::new(Sink::new(device.book.clone(), shards <= 1)),
            device,
            owners,
        }
    }

    /// Serves `rounded` bytes on `stream`: from the calling thread's cache
    /// if it holds a block of exactly that size on that stream, else carved
    /// from the calling thread's shard. Returns where the block came from,
    /// and for a block from the thread's cache the pointer its kept
    /// ownership record is under (the caller revives it).
    /// When the device is full, waits for deferred frees, releases every
    /// shard's idle segments, and tries once more.
    /// `look`: whether to look in the thread's cache (not if the caller did).
    pub(crate) fn allocate(
        &self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
        look: bool,
    ) -> Result<(Origin, Carved, Option<u64>), Shortfall> {
        // Large blocks are never cached: no look there.
        if look && rounded <= SMALL_REQUEST_MAX {
            if let Some((origin, c)) = self.take_cached(stream, rounded, requested) {
                let carved = Carved {
                    block: c.block,
                    size: c.size,
                };
                return Ok((origin, carved, Some(c.ptr)));
            }
        }
        let (shard, carved) = self.carve(stream, rounded)?;
        let thread = self.threads.with(
            |local| {
                local.on_alloc(&self.threads.sink, carved.size, requested, false);
                local.id
            },
            |orphans| self.flush(orphans),
        );
        Ok((Origin { shard, thread }, carved, None))
    }

    /// A block of exactly `rounded` bytes on `stream` from the calling
    /// thread's cache, counted as allocated for `requested` bytes: where it
    /// came from, and the pointer its kept ownership record is under (the
    /// caller revives it).
    #[inline]
    pub(crate) fn take_cached(
        &self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Option<(Origin, Cached)> {
        self.threads.with(
            |local| {
                let c = local.take(stream, rounded)?;
                local.on_alloc(&self.threads.sink, c.size, requested, true);
                let origin = Origin {
                    shard: c.shard,
                    thread: local.id,
                };
                Some((origin, c))
            },
            |orphans| self.flush(orphans),
        )
    }

    /// Carves from the arena: from what it has free; else, after every
    /// thread's cache was drained into it, as [`Device::carve`] does
    /// (reserving or mapping memory), retrying once after releasing idle
    /// memory when the device is full.
    fn carve(&self, stream: StreamTag, rounded: usize) -> Result<(usize, Carved), Shortfall> {
        let shard = thread_shard(self.shards.len());
        {
            let mut arena = self.shards[shard].lock();
            if !arena.deferred.is_empty() {
                // Best effort: a block whose events cannot be queried stays deferred.
                let _ = self.device.settle(&mut arena, Side::Caching, false);
            }
            // The arena's figures count blocks out of the arena (requested
            // bytes are counted per thread, so none here).
            if let Some(carved) = arena.try_alloc(stream, rounded, 0) {
                return Ok((shard, carved));
            }
        }
        // No memory is reserved while a thread cache holds blocks that,
        // merged back, might serve the request.
        self.drain_threads();
        let first = {
            let mut arena = self.shards[shard].lock();
            self.device
                .carve(&mut arena, Side::Caching, stream, rounded, 0)
        };
        match first {
            Err(Shortfall::Exhausted) => {}
            other => return other.map(|carved| (shard, carved)),
        }
        // Best effort: an error leaves less room, which the retry then
        // reports as out of memory.
        let _ = self.empty_cache();
        let mut arena = self.shards[shard].lock();
        arena.stats.on_oom_retry();
        self.device
            .carve(&mut arena, Side::Caching, stream, rounded, 0)
            .map(|carved| (shard, carved))
    }

    /// Counts the free of the live block of `record` (handed out as
    /// `ptr`, from `origin`) for the calling thread, and puts it into that
    /// thread's cache when that thread allocated it, it may be reused at once
    /// on its own stream (no other stream used it, its stream is not being
    /// captured) and the cache has room: then returns `true` (the free is
    /// complete: [`CachingAllocator::kept`]), else `false`: the caller gives
    /// the block to [`CachingAllocator::free_to_arena`]. A block freed by
    /// another thread than the one that allocated it so goes back where every
    /// thread sees it.
    ///
    /// Runs under the ownership map's lock of `ptr` ([`OwnershipMap::claim`]):
    /// takes only the calling thread's cache lock (and the cache list's on a
    /// thread's first call), and leaves blocks to flush in `orphans`, for the
    /// caller to flush after.
    pub(crate) fn keep(
        &self,
        origin: Origin,
        record: &Record,
        ptr: u64,
        orphans: &mut Vec<Cached>,
    ) -> bool {
        let (size, stream) = (record.size, record.stream);
        // Only small blocks: large ones go back to best fit at once, where
        // their placement decides fragmentation (as with the arena's quick
        // bins). A failed capture query keeps the block out, to be safe.
        let cacheable = size <= SMALL_REQUEST_MAX
            && record.uses().is_empty()
            && self.device.capturing(stream) == Ok(false);
        let cached = Cached::of(record, ptr, origin.shard);
        self.threads.with(
            |local| {
                let kept = cacheable && local.id == origin.thread && local.put(cached).is_ok();
                local.on_free(&self.threads.sink, size, record.requested(), kept);
                kept
            },
            |mut blocks| orphans.append(&mut blocks),
        )
    }

    /// Notes the free of `ptr`, whose block [`CachingAllocator::keep`]
    /// kept: requested, and complete (in the thread's cache the block is
    /// free and reusable at once); then flushes `orphans`.
    #[inline]
    pub(crate) fn kept(&self, kept: &Kept, ptr: u64, orphans: Vec<Cached>) {
        let (stream, device) = (kept.stream, &self.device);
        device.note(
            Action::FreeRequested,
            Side::Caching,
            stream,
            kept.requested,
            ptr,
        );
        device.note(
            Action::FreeCompleted,
            Side::Caching,
            stream,
            kept.size,
            kept.block,
        );
        self.flush(orphans);
    }

    /// Frees a block [`CachingAllocator::keep`] did not keep (and counted)
    /// into the arena of `origin`, which defers it as stream order requires;
    /// then flushes `orphans`.
    pub(crate) fn free_to_arena(
        &self,
        origin: Origin,
        block: BlockRef,
        stream: StreamTag,
        uses: &[StreamTag],
        orphans: Vec<Cached>,
    ) {
        {
            let mut arena = self.shards[origin.shard].lock();
            self.device
                .free_block(&mut arena, Side::Caching, block, 0, stream, uses);
        }
        self.flush(orphans);
    }

    /// Gives blocks taken out of thread caches back to their arenas (a
    /// block whose stream is being captured by now waits for the capture's
    /// end, as any free does).
    #[inline]
    fn flush(&self, blocks: Vec<Cached>) {
        // Nothing, on every call's path: no call.
        if !blocks.is_empty() {
            self.flush_blocks(blocks);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush_blocks(&self, mut blocks: Vec<Cached>) {
        // The pointers stop being known before their blocks are free in the
        // arena (which may hand them out again at once).
        for c in &blocks {
            self.owners.forget_cached(c.ptr);
        }
        blocks.sort_unstable_by_key(|c| c.shard);
        for chunk in blocks.chunk_by(|a, b| a.shard == b.shard) {
            let mut arena = self.shards[chunk[0].shard].lock();
            for c in chunk {
                self.device.return_cached(&mut arena, c.block);
            }
        }
    }

    /// Gives every thread's cached blocks back to the arena.
    pub(crate) fn drain_threads(&self) {
        self.flush(self.threads.drain(false));
    }

    /// Drains every thread's cache, waits for the stream work of deferred
    /// frees, then releases every cached, unused segment of every shard to
    /// the device. Returns the bytes released, or the first error (after
    /// trying every shard).
    pub(crate) fn empty_cache(&self) -> Result<usize, BackendError> {
        self.drain_threads();
        let mut released = 0;
        let mut first_error = None;
        for shard in self.shards.iter() {
            let mut arena = shard.lock();
            if let Err(e) = self.device.settle(&mut arena, Side::Caching, true) {
                first_error.get_or_insert(e);
            }
            match self.device.release_idle(&mut arena, Side::Caching) {
                Ok(bytes) => released += bytes,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(released), Err)
    }

    /// The statistics of the device's cache: current figures exact whenever
    /// no allocation or free is in flight (while some are, a snapshot is not
    /// one instant's, but allocated bytes stay between 0 and reserved
    /// bytes, and requested bytes at most allocated bytes). With one shard the allocated
    /// peak is the device gauge's: exact while one thread uses the cache,
    /// within (T - 1) x [`crate::thread_cache::SLACK`] of the true peak with
    /// T threads, and never below the current figure at quiescence; the
    /// reserved peak is exact. With several shards each peak is the sum of
    /// the shards' peaks, an upper bound of the true peak.
    pub(crate) fn stats(&self) -> PoolStats {
        let mut sum = PoolStats::default();
        for shard in self.shards.iter() {
            sum.add(&shard.lock().stats);
        }
        self.threads.counts().write_to(&mut sum);
        // The shards and the caches are read one after the other: while
        // other threads allocate (a segment reserved after its shard was
        // read) the sum could show more allocated than reserved.
        sum.allocated_bytes = sum.allocated_bytes.min(sum.reserved_bytes);
        sum.requested_bytes = sum.requested_bytes.min(sum.allocated_bytes);
        if let Some(gauge) = &self.threads.sink.device {
            sum.peak_allocated_bytes = gauge.0.peak();
        }
        sum
    }

    /// The books of every shard (for an out-of-memory report), each read
    /// under its lock, with the `top` largest live blocks.
    pub(crate) fn books(&self, top: usize) -> Books {
        let mut sum = Books::default();
        for shard in self.shards.iter() {
            let books = shard.lock().books(top);
            sum.merge(books, top);
        }
        sum
    }

    pub(crate) fn classify(&self, addr: u64) -> AddressKind {
        // A block in a thread cache is free for the user.
        if let Some((start, _)) = self.threads.containing(addr) {
            return if start == addr {
                AddressKind::FreeBlockStart
            } else {
                AddressKind::Inside {
                    block: start,
                    allocated: false,
                }
            };
        }
        self.shards
            .iter()
            .map(|shard| shard.lock().classify(addr))
            .find(|kind| *kind != AddressKind::Outside)
            .unwrap_or(AddressKind::Outside)
    }

    /// Releases every segment, live blocks and all: the allocator is
    /// going away.
    pub(crate) fn release_all(&self) {
        // The cached blocks go with their segments.
        drop(self.threads.drain(false));
        for shard in self.shards.iter() {
            let mut arena = shard.lock();
            let _ = self.device.settle(&mut arena, Side::Caching, true);
            let _ = self.device.release_all(&mut arena, Side::Caching);
        }
    }

    /// Every segment of every shard with its blocks (for snapshots).
    ///
    /// Thread caches are drained first, so that the blocks they hold show
    /// as free (they are, for the statistics).
    pub(crate) fn walk(&self) -> Vec<WalkedSegment> {
        self.drain_threads();
        self.shards.iter().flat_map(|s| s.lock().walk()).collect()
    }

    /// Restarts the peaks from the current figures, after folding every
    /// thread cache's pending change into the gauges (the book's gauges
    /// restart after this, in `Allocator::reset_peak_stats`).
    pub(crate) fn reset_peaks(&self) {
        self.threads.fold_all();
        if let Some(gauge) = &self.threads.sink.device {
            gauge.0.reset_peak();
        }
        for shard in self.shards.iter() {
            shard.lock().stats.reset_peaks();
        }
    }
}
