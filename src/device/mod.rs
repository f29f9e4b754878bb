//! One device as the pools see it: a backend plus the accounting of what
//! graphalloc reserved from it, under an optional limit.
//!
//! Both the caching allocator and the graph pools grow and shrink their
//! arenas through here, so the "try the cache, else reserve a segment"
//! sequence and the reserved-bytes books exist once. Stream ordering (frees
//! that wait for events or for a capture to end) is in [`events`]; the
//! mapping policy of expandable segments in [`mapping`], with the fences
//! that let it unmap idle pages without waiting for a stream in [`fences`].

mod events;
mod fences;
mod mapping;

pub(crate) use fences::Fences;
pub use mapping::MappingStats;

use crate::arena::{
    segment_size, tight_segment_size, Arena, Carved, Class, FreedSegment, StreamTag,
};
use crate::backend::{Backend, BackendError, LimitAdaptor, MemInfo};
use crate::history::{Action, History};
use crate::stats::{Side, StatsBook};
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};

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

impl From<BackendError> for Shortfall {
    /// A backend's out-of-memory is the device being full; anything else
    /// stays a backend error.
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::OutOfMemory { .. } => Shortfall::Exhausted,
            other => Shortfall::Backend(other),
        }
    }
}

/// A device: its backend and what graphalloc holds of it.
///
/// The backend is shared through a std `Arc` in both builds: it is an
/// immutable handle, not part of the state the loom models explore.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) backend: std::sync::Arc<dyn Backend>,
    pub(crate) book: Arc<StatsBook>,
    /// The limit (`memory_fraction` below 1): an adaptor around the
    /// backend, which `backend` then is.
    limiter: Option<std::sync::Arc<LimitAdaptor<std::sync::Arc<dyn Backend>>>>,
    /// Whether the caching allocator serves large requests from expandable
    /// segments (address space reserved once, memory mapped in pages).
    expandable: bool,
    /// The device's total memory, read on first need (so building an
    /// allocator touches no device); the limit derives from it.
    total: std::sync::OnceLock<usize>,
    /// [`Device::capacity`] once known for good; 0 before.
    capacity: AtomicUsize,
    /// Bytes held in segments now, caches and pools together.
    reserved: AtomicUsize,
    /// Idle events, reused for stream ordering (destroyed with the device).
    events: Mutex<Vec<u64>>,
    /// Mapping calls made and the time spent in them.
    mapping: mapping::Counters,
    /// The allocator's memory history, which the device's events go to.
    history: Arc<History>,
}

impl Device {
    pub(crate) fn new(
        backend: std::sync::Arc<dyn Backend>,
        book: Arc<StatsBook>,
        memory_fraction: f64,
        expandable: bool,
        history: Arc<History>,
    ) -> Self {
        let (backend, limiter) = if memory_fraction < 1.0 {
            let limiter =
                std::sync::Arc::new(LimitAdaptor::with_fraction(backend, memory_fraction));
            (
                limiter.clone() as std::sync::Arc<dyn Backend>,
                Some(limiter),
            )
        } else {
            (backend, None)
        };
        // A backend without virtual memory serves plain segments whatever
        // the setting: expandable segments need address ranges and mapping.
        let expandable = expandable && backend.as_virtual_memory().is_some();
        Device {
            backend,
            book,
            limiter,
            expandable,
            total: std::sync::OnceLock::new(),
            capacity: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
            mapping: mapping::Counters::default(),
            history,
        }
    }

    /// Records an event of this device in the history, if it records (one
    /// relaxed load otherwise). A pool's events name pool 0 ("a graph
    /// pool"): the device does not know which.
    #[inline]
    pub(crate) fn note(
        &self,
        action: Action,
        side: Side,
        stream: StreamTag,
        size: usize,
        addr: u64,
    ) {
        if self.history.on() {
            let pool = (side == Side::Pools).then_some(0);
            self.history
                .record(action, self.ordinal(), stream, size, addr, pool);
        }
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.backend.ordinal()
    }

    /// Whether the cache's large blocks come from expandable segments.
    pub(crate) fn expandable(&self) -> bool {
        self.expandable
    }

    /// Bytes graphalloc may reserve on this device: `usize::MAX` (no limit
    /// of ours) with a memory fraction of 1, else that fraction of the total.
    pub(crate) fn limit(&self) -> usize {
        self.limiter
            .as_ref()
            .and_then(|l| l.limit())
            .unwrap_or(usize::MAX)
    }

    /// The most any single request can get: the device's total memory, or
    /// the limit if lower. Once both are known it cannot change (the total
    /// is read once, the limit derives from it or is fixed): then it is one
    /// relaxed load, as every allocation asks.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        match self.capacity.load(Ordering::Relaxed) {
            0 => self.capacity_slow(),
            known => known,
        }
    }

    /// [`Device::capacity`] while it is not known for good: computed, and
    /// kept once the total was read and the limit (if any) answered.
    #[cold]
    fn capacity_slow(&self) -> usize {
        let total = self.total();
        let limit = self.limiter.as_ref().map(|l| l.limit());
        let capacity = total
            .unwrap_or(usize::MAX)
            .min(limit.flatten().unwrap_or(usize::MAX));
        // A limit that did not answer (its read of the total failed) may
        // answer later: keep nothing then.
        if total.is_some() && !matches!(limit, Some(None)) && capacity != 0 {
            self.capacity.store(capacity, Ordering::Relaxed);
        }
        capacity
    }

    /// The device's total memory, read from the backend once it answers.
    /// `None` while it cannot be read: then no bound of ours applies and the
    /// backend's own out-of-memory decides (a failed read is not cached).
    fn total(&self) -> Option<usize> {
        if let Some(&total) = self.total.get() {
            return Some(total);
        }
        let total = self.backend.mem_info().ok()?.total;
        Some(*self.total.get_or_init(|| total))
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
    /// block fits. [`Shortfall::Exhausted`] says the device is full: the
    /// owner then releases what it can and calls this once more.
    #[inline]
    pub(crate) fn carve(
        &self,
        arena: &mut Arena,
        side: Side,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Result<Carved, Shortfall> {
        // The common case in line: nothing to settle, a free block fits.
        let tried = arena.deferred.is_empty();
        if tried {
            if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
                self.note_allocated(side, carved.size);
                return Ok(carved);
            }
        }
        self.carve_slow(arena, side, tried, stream, rounded, requested)
    }

    /// [`Device::carve`] past its common case (`tried`: the arena was
    /// searched already, with nothing deferred: no need to search again
    /// before reserving).
    #[inline(never)]
    fn carve_slow(
        &self,
        arena: &mut Arena,
        side: Side,
        tried: bool,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Result<Carved, Shortfall> {
        if !arena.deferred.is_empty() {
            // Best effort: a block whose events cannot be queried stays deferred.
            let _ = self.settle(arena, side, false);
        }
        if !tried {
            if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
                // Blocks of expandable segments are carved from mapped memory only.
                self.note_allocated(side, carved.size);
                return Ok(carved);
            }
        }
        // Expandable segments: one address range per stream and class for
        // the cache's blocks, pages mapped on a miss (`mapping.rs`). (Graph
        // pools keep plain segments: a replay may touch memory of blocks
        // freed during its capture, which must stay mapped.)
        if self.expandable && side == Side::Caching {
            return self.grow(arena, side, stream, rounded, requested);
        }
        let mut size = segment_size(rounded).ok_or(Shortfall::Overflow)?;
        let tight = tight_segment_size(rounded).ok_or(Shortfall::Overflow)?;
        let base = match self.reserve(size) {
            // A large request below LARGE_SEGMENT_THRESHOLD asks for a 20 MiB
            // segment to share; when that does not fit, a segment of just
            // its size may.
            Err(Shortfall::Exhausted) if size > tight => {
                size = tight;
                self.reserve(size)?
            }
            other => other?,
        };
        arena.add_segment(base, size, stream, Class::of(rounded));
        self.book.reserved(side, size);
        self.note(Action::SegmentAlloc, side, stream, size, base);
        let carved = arena
            .try_alloc(stream, rounded, requested)
            .expect("a fresh segment of segment_size(rounded) fits the request");
        self.note_allocated(side, carved.size);
        Ok(carved)
    }

    /// Reserves a segment, within the limit.
    pub(crate) fn reserve(&self, size: usize) -> Result<u64, Shortfall> {
        let base = self.backend.reserve(size)?;
        self.reserved.fetch_add(size, Ordering::SeqCst);
        Ok(base)
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
        let unmapped = self.reclaim(arena, side, usize::MAX, &[], mapping::Reclaim::Now);
        let segments = arena.take_free_segments();
        let released = self.release_segments(segments, side)?;
        unmapped.map(|bytes| bytes + released)
    }

    /// Releases every segment of `arena`, live blocks and all: for an owner
    /// that is going away. Returns the bytes released.
    pub(crate) fn release_all(&self, arena: &mut Arena, side: Side) -> Result<usize, BackendError> {
        let allocated = arena.stats.allocated_bytes;
        self.recycle_deferred_events(arena);
        self.recycle_fences(arena, None);
        let segments = arena.take_all_segments();
        self.book.freed(side, allocated);
        self.release_segments(segments, side)
    }

    fn release_segments(
        &self,
        segments: Vec<FreedSegment>,
        side: Side,
    ) -> Result<usize, BackendError> {
        let mut released = 0;
        let mut first_error = None;
        // Pages still mapped (an owner going away) are unmapped only after
        // the work queued on their streams (as `cuMemFree` would wait).
        let mut streams: Vec<StreamTag> = segments
            .iter()
            .filter(|s| s.mapped.as_ref().is_some_and(|runs| !runs.is_empty()))
            .map(|s| s.stream)
            .collect();
        streams.sort_unstable();
        streams.dedup();
        for stream in streams {
            if let Err(e) = self.drain_stream(stream) {
                first_error.get_or_insert(e);
            }
        }
        for seg in segments {
            let held = match &seg.mapped {
                None => {
                    // SAFETY: the segment has left the arena, so no block will
                    // be carved from it again. From `take_free_segments` it
                    // is one free block: no live block (a deferred free is
                    // not free until its events complete). From
                    // `take_all_segments` its owner is going away: a fresh
                    // arena that handed nothing out, a dropped `Allocator`
                    // (no `DeviceBuffer` outlives it: each borrows it), or a
                    // pool whose live blocks belong to an allocator already
                    // dropped. Device work still using it is waited for by
                    // the backend (`cuMemFree` synchronizes).
                    if let Err(e) = unsafe { self.backend.release(seg.base, seg.size) } {
                        first_error.get_or_insert(e);
                    }
                    self.note(Action::SegmentFree, side, seg.stream, seg.size, seg.base);
                    seg.size
                }
                Some(runs) => {
                    let mut all_unmapped = true;
                    for &(addr, len) in runs {
                        // SAFETY: only `take_all_segments` gives mapped
                        // runs (a free segment is taken once all its pages
                        // are unmapped), so the owner is going away, as for a
                        // plain segment above: no block will be used again.
                        // The work queued on the segment's stream was waited
                        // for above (`drain_stream`), except on a stream being
                        // captured or a failed wait, where the pages go back
                        // all the same, as `cuMemFree` would give them.
                        match unsafe { self.unmap_pages(addr, len) } {
                            Ok(()) => self.note(Action::SegmentUnmap, side, seg.stream, len, addr),
                            Err(e) => {
                                // What the failing call did unmap is gone.
                                let gone = e.unmapped_bytes().min(len);
                                if gone > 0 {
                                    self.note(Action::SegmentUnmap, side, seg.stream, gone, addr);
                                }
                                all_unmapped = false;
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    // A range with pages still mapped cannot be freed.
                    if all_unmapped {
                        let vmm = self.backend.vmm();
                        // SAFETY: the segment has left the arena (as above)
                        // and every unit of its range is unmapped (its runs
                        // just above, the rest earlier by `reclaim`), so no
                        // block or work uses any address in it.
                        let freed =
                            vmm.and_then(|v| unsafe { v.release_range(seg.base, seg.size) });
                        if let Err(e) = freed {
                            first_error.get_or_insert(e);
                        }
                    }
                    runs.iter().map(|r| r.1).sum()
                }
            };
            self.reserved.fetch_sub(held, Ordering::SeqCst);
            self.book.released(side, held);
            released += held;
        }
        first_error.map_or(Ok(released), Err)
    }

    /// Notes that a block of `size` bytes of `side` was freed.
    pub(crate) fn freed(&self, side: Side, size: usize) {
        self.book.freed(side, size);
    }

    fn note_allocated(&self, side: Side, size: usize) {
        self.book.allocated(side, size);
    }
}
