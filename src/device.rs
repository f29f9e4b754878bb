//! One device as the pools see it: a backend plus the accounting of what
//! graphalloc reserved from it, under an optional limit.
//!
//! Both the caching allocator and the graph pools grow and shrink their
//! arenas through here, so the "try the cache, else reserve a segment"
//! sequence and the reserved-bytes books exist once.

use crate::arena::{segment_size, Arena, Carved, Class, StreamTag};
use crate::backend::{Backend, BackendError, MemInfo};
use crate::stats::{Side, StatsBook};
use crate::sync::{Arc, AtomicUsize, Ordering};

/// Why a block could not be carved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shortfall {
    /// The device (or the configured limit) has no room, even after the
    /// owner reclaimed what it could.
    Exhausted,
    /// The request overflows any possible segment size.
    Overflow,
    /// The backend failed for another reason.
    Backend(BackendError),
}

#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) book: Arc<StatsBook>,
    /// Fraction of the device's total memory graphalloc may hold.
    memory_fraction: f64,
    /// `memory_fraction` of the device's total, computed on first need (so
    /// building an allocator touches no device).
    limit: std::sync::OnceLock<usize>,
    /// Bytes held in segments now, caches and pools together.
    reserved: AtomicUsize,
    /// Bytes in live blocks now, caches and pools together.
    allocated: AtomicUsize,
}

impl Device {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        book: Arc<StatsBook>,
        memory_fraction: f64,
    ) -> Self {
        Device {
            backend,
            book,
            memory_fraction,
            limit: std::sync::OnceLock::new(),
            reserved: AtomicUsize::new(0),
            allocated: AtomicUsize::new(0),
        }
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.backend.ordinal()
    }

    /// Bytes graphalloc may reserve on this device: `usize::MAX` (no limit
    /// of ours) with a memory fraction of 1, else that fraction of the total.
    pub(crate) fn limit(&self) -> usize {
        if self.memory_fraction >= 1.0 {
            return usize::MAX;
        }
        *self
            .limit
            .get_or_init(|| (self.mem_info().total as f64 * self.memory_fraction) as usize)
    }

    pub(crate) fn allocated(&self) -> usize {
        self.allocated.load(Ordering::SeqCst)
    }

    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::SeqCst)
    }

    pub(crate) fn mem_info(&self) -> MemInfo {
        self.backend
            .mem_info()
            .unwrap_or(MemInfo { free: 0, total: 0 })
    }

    /// Carves `rounded` bytes from `arena`, reserving a segment when no free
    /// block fits. When the device is full, calls `reclaim` once (which
    /// releases whatever cached memory the owner may give up), counts an OOM
    /// retry, and tries the reservation again.
    pub(crate) fn carve(
        &self,
        arena: &mut Arena,
        side: Side,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
        reclaim: impl FnOnce(&mut Arena),
    ) -> Result<Carved, Shortfall> {
        if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
            self.note_allocated(side, carved.size);
            return Ok(carved);
        }
        let size = segment_size(rounded).ok_or(Shortfall::Overflow)?;
        let base = match self.reserve(size) {
            Err(Shortfall::Exhausted) => {
                arena.stats.oom_retries += 1;
                reclaim(arena);
                self.reserve(size)?
            }
            other => other?,
        };
        arena.add_segment(base, size, stream, Class::of(rounded));
        self.book.reserved(side, size);
        let carved = arena
            .try_alloc(stream, rounded, requested)
            .expect("a fresh segment of segment_size(rounded) fits the request");
        self.note_allocated(side, carved.size);
        Ok(carved)
    }

    /// Reserves a segment, within the limit.
    fn reserve(&self, size: usize) -> Result<u64, Shortfall> {
        let claimed = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(size).filter(|&n| n <= self.limit())
            });
        if claimed.is_err() {
            return Err(Shortfall::Exhausted);
        }
        self.backend.reserve(size).map_err(|e| {
            self.reserved.fetch_sub(size, Ordering::SeqCst);
            match e {
                BackendError::OutOfMemory { .. } => Shortfall::Exhausted,
                other => Shortfall::Backend(other),
            }
        })
    }

    /// Takes every fully free segment out of `arena` and releases it to the
    /// device. Returns the bytes released, or the first backend error (the
    /// other segments are released all the same; a segment whose release
    /// failed is dropped from the books, as the driver no longer lets us use it).
    pub(crate) fn release_idle(
        &self,
        arena: &mut Arena,
        side: Side,
    ) -> Result<usize, BackendError> {
        let mut released = 0;
        let mut first_error = None;
        for seg in arena.take_free_segments() {
            if let Err(e) = self.backend.release(seg.base, seg.size) {
                first_error.get_or_insert(e);
            }
            self.reserved.fetch_sub(seg.size, Ordering::SeqCst);
            self.book.released(side, seg.size);
            released += seg.size;
        }
        first_error.map_or(Ok(released), Err)
    }

    /// Notes that a block of `size` bytes of `side` was freed.
    pub(crate) fn freed(&self, side: Side, size: usize) {
        self.allocated.fetch_sub(size, Ordering::Relaxed);
        self.book.freed(side, size);
    }

    fn note_allocated(&self, side: Side, size: usize) {
        self.allocated.fetch_add(size, Ordering::Relaxed);
        self.book.allocated(side, size);
    }
}
