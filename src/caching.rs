//! The caching allocator of one device.
//!
//! Policy on top of the shared [`Arena`]: segments are reserved on demand
//! and kept after their blocks are freed, so later requests reuse them
//! without a trip to the driver; they go back to the device only on
//! [`CachingAllocator::empty_cache`] or when an allocation finds the device
//! full (release everything idle, retry once).
//!
//! The cache is one arena by default, like PyTorch's one lock per device.
//! With `shards: N` it is N arenas, each with its own lock and segments:
//! each thread allocates from the shard it was assigned (round robin, on its
//! first allocation), and a free goes back to the shard that handed the
//! block out, whichever thread frees it. Threads then rarely meet on a lock,
//! at the price of memory cached in one shard being invisible to the
//! others until it is released (out of memory releases every shard's idle
//! segments before failing).

use crate::arena::{AddressKind, Arena, BlockRef, Books, Carved, StreamTag, WalkedSegment};
use crate::backend::BackendError;
use crate::device::{Device, Shortfall};
use crate::stats::{PoolStats, Side};
use crate::sync::{thread_local, Arc, Mutex};
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

#[derive(Debug)]
pub(crate) struct CachingAllocator {
    pub(crate) device: Arc<Device>,
    shards: Box<[Shard]>,
}

impl CachingAllocator {
    pub(crate) fn new(device: Arc<Device>, shards: usize) -> Self {
        CachingAllocator {
            device,
            shards: (0..shards.max(1))
                .map(|_| Shard(Mutex::new(Arena::new())))
                .collect(),
        }
    }

    /// Carves a block from the calling thread's shard; returns the shard
    /// with it. When the device is full, waits for deferred frees, releases
    /// every shard's idle segments, and tries once more.
    pub(crate) fn allocate(
        &self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Result<(usize, Carved), Shortfall> {
        let shard = thread_shard(self.shards.len());
        let first = {
            let mut arena = self.shards[shard].lock();
            self.device
                .carve(&mut arena, Side::Caching, stream, rounded, requested)
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
            .carve(&mut arena, Side::Caching, stream, rounded, requested)
            .map(|carved| (shard, carved))
    }

    /// Frees a block of `shard` allocated on `stream` and also used on `uses`.
    pub(crate) fn free(
        &self,
        shard: usize,
        block: BlockRef,
        requested: usize,
        stream: StreamTag,
        uses: &[StreamTag],
    ) {
        let mut arena = self.shards[shard].lock();
        self.device
            .free_block(&mut arena, Side::Caching, block, requested, stream, uses);
    }

    /// Waits for the stream work of deferred frees, then releases every
    /// cached, unused segment of every shard to the device. Returns the
    /// bytes released, or the first error (after trying every shard).
    pub(crate) fn empty_cache(&self) -> Result<usize, BackendError> {
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

    /// The statistics of the device's cache. With one shard they are exact;
    /// with several, current figures are exact sums and each peak is the
    /// sum of the shards' peaks, an upper bound of the true peak.
    pub(crate) fn stats(&self) -> PoolStats {
        let mut sum = PoolStats::default();
        for shard in self.shards.iter() {
            sum.add(&shard.lock().stats);
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
        self.shards
            .iter()
            .map(|shard| shard.lock().classify(addr))
            .find(|kind| *kind != AddressKind::Outside)
            .unwrap_or(AddressKind::Outside)
    }

    /// Releases every segment, live blocks and all: the allocator is
    /// going away.
    pub(crate) fn release_all(&self) {
        for shard in self.shards.iter() {
            let mut arena = shard.lock();
            let _ = self.device.settle(&mut arena, Side::Caching, true);
            let _ = self.device.release_all(&mut arena, Side::Caching);
        }
    }

    /// Every segment of every shard with its blocks (for snapshots).
    pub(crate) fn walk(&self) -> Vec<WalkedSegment> {
        self.shards.iter().flat_map(|s| s.lock().walk()).collect()
    }

    pub(crate) fn reset_peaks(&self) {
        for shard in self.shards.iter() {
            shard.lock().stats.reset_peaks();
        }
    }
}
