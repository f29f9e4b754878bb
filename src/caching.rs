//! The caching allocator of one device.
//!
//! Policy on top of the shared [`Arena`]: segments are reserved on demand
//! and kept after their blocks are freed, so later requests reuse them
//! without a trip to the driver; they go back to the device only on
//! [`CachingAllocator::empty_cache`] or when an allocation finds the device
//! full (release everything idle, retry once).

use crate::arena::{Arena, BlockRef, Carved, StreamTag};
use crate::backend::BackendError;
use crate::device::{Device, Shortfall};
use crate::stats::{PoolStats, Side};
use crate::sync::{Arc, Mutex};

#[derive(Debug)]
pub(crate) struct CachingAllocator {
    pub(crate) device: Arc<Device>,
    arena: Mutex<Arena>,
}

impl CachingAllocator {
    pub(crate) fn new(device: Arc<Device>) -> Self {
        CachingAllocator {
            device,
            arena: Mutex::new(Arena::new()),
        }
    }

    pub(crate) fn allocate(
        &self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Result<Carved, Shortfall> {
        let mut arena = self.arena.lock();
        let device = &self.device;
        device.carve(
            &mut arena,
            Side::Caching,
            stream,
            rounded,
            requested,
            |arena| {
                // Best effort: an error leaves less room, which the retry
                // then reports as out of memory.
                let _ = device.settle(arena, true);
                let _ = device.release_idle(arena, Side::Caching);
            },
        )
    }

    /// Frees a block allocated on `stream` and also used on `uses`.
    pub(crate) fn free(
        &self,
        block: BlockRef,
        requested: usize,
        stream: StreamTag,
        uses: &[StreamTag],
    ) {
        let mut arena = self.arena.lock();
        self.device
            .free_block(&mut arena, Side::Caching, block, requested, stream, uses);
    }

    /// Waits for the stream work of deferred frees, then releases every
    /// cached, unused segment to the device.
    pub(crate) fn empty_cache(&self) -> Result<usize, BackendError> {
        let mut arena = self.arena.lock();
        let settled = self.device.settle(&mut arena, true);
        let released = self.device.release_idle(&mut arena, Side::Caching)?;
        settled.map(|()| released)
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.arena.lock().stats
    }

    pub(crate) fn classify(&self, addr: u64) -> crate::arena::AddressKind {
        self.arena.lock().classify(addr)
    }

    /// Releases every segment, live blocks and all: the allocator is
    /// going away.
    pub(crate) fn release_all(&self) {
        let mut arena = self.arena.lock();
        let _ = self.device.settle(&mut arena, true);
        let _ = self.device.release_all(&mut arena, Side::Caching);
    }

    pub(crate) fn reset_peaks(&self) {
        self.arena.lock().stats.reset_peaks();
    }
}
