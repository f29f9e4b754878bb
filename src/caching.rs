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
                // Best effort: a release error leaves less room, which the
                // retry then reports as out of memory.
                let _ = device.release_idle(arena, Side::Caching);
            },
        )
    }

    pub(crate) fn free(&self, block: BlockRef, requested: usize) {
        let size = self.arena.lock().free(block, requested);
        self.device.freed(Side::Caching, size);
    }

    /// Releases every cached, unused segment to the device.
    pub(crate) fn empty_cache(&self) -> Result<usize, BackendError> {
        let mut arena = self.arena.lock();
        self.device.release_idle(&mut arena, Side::Caching)
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.arena.lock().stats
    }

    pub(crate) fn classify(&self, addr: u64) -> crate::arena::AddressKind {
        self.arena.lock().classify(addr)
    }

    pub(crate) fn reset_peaks(&self) {
        self.arena.lock().stats.reset_peaks();
    }
}
