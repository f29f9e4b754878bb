//! One device as the pools see it: a backend plus the accounting of what
//! graphalloc reserved from it, under an optional limit.
//!
//! Both the caching allocator and the graph pools grow and shrink their
//! arenas through here, so the "try the cache, else reserve a segment"
//! sequence and the reserved-bytes books exist once. Stream ordering (frees
//! that wait for events or for a capture to end) is in [`events`].

mod events;

use crate::arena::{
    segment_size, tight_segment_size, Arena, Carved, Class, FreedSegment, PageRun, StreamTag,
};
use crate::backend::{Backend, BackendError, MemInfo};
use crate::stats::{Side, StatsBook};
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};

/// An expandable cache may hold 1/EXPANDABLE_SLACK more than its peak
/// allocated bytes before it unmaps idle pages to grow.
const EXPANDABLE_SLACK: usize = 40;

/// The size classes served from expandable segments.
const EXPANDABLE_CLASSES: &[Class] = &[Class::Small, Class::Large];

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

/// A device: its backend and what graphalloc holds of it.
///
/// The backend is shared through a std `Arc` in both builds: it is an
/// immutable handle, not part of the state the loom models explore.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) backend: std::sync::Arc<dyn Backend>,
    pub(crate) book: Arc<StatsBook>,
    /// Fraction of the device's total memory graphalloc may hold.
    memory_fraction: f64,
    /// Whether the caching allocator serves large requests from expandable
    /// segments (address space reserved once, memory mapped in pages).
    expandable: bool,
    /// The device's total memory, read on first need (so building an
    /// allocator touches no device); the limit derives from it.
    total: std::sync::OnceLock<usize>,
    /// Bytes held in segments now, caches and pools together.
    reserved: AtomicUsize,
    /// Idle events, reused for stream ordering (never destroyed).
    events: Mutex<Vec<u64>>,
}

impl Device {
    pub(crate) fn new(
        backend: std::sync::Arc<dyn Backend>,
        book: Arc<StatsBook>,
        memory_fraction: f64,
        expandable: bool,
    ) -> Self {
        Device {
            backend,
            book,
            memory_fraction,
            expandable,
            total: std::sync::OnceLock::new(),
            reserved: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
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
        self.total().map_or(usize::MAX, |total| {
            (total as f64 * self.memory_fraction) as usize
        })
    }

    /// The most any single request can get: the device's total memory, or
    /// the limit if lower.
    pub(crate) fn capacity(&self) -> usize {
        self.total().unwrap_or(usize::MAX).min(self.limit())
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
    pub(crate) fn carve(
        &self,
        arena: &mut Arena,
        side: Side,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Result<Carved, Shortfall> {
        if !arena.deferred.is_empty() {
            // Best effort: a block whose events cannot be queried stays deferred.
            let _ = self.settle(arena, false);
        }
        let peak_before = arena.stats.peak_allocated_bytes;
        if let Some(carved) = arena.try_alloc(stream, rounded, requested) {
            return self.back(arena, side, carved, requested, peak_before);
        }
        // Expandable segments: one address range per stream for the cache's
        // large blocks. (Graph pools keep plain segments: a replay may touch
        // memory of blocks freed during its capture, which must stay mapped.)
        if self.expandable
            && side == Side::Caching
            && EXPANDABLE_CLASSES.contains(&Class::of(rounded))
        {
            // A fresh range, twice the device (address space is cheap), so
            // that fragmentation of the range never stands in for a full
            // device; another range comes only if even that is cut up.
            let class = Class::of(rounded);
            let page = self.backend.page_size().map_err(Shortfall::Backend)?;
            // An address range that cannot even be sized (a capacity near
            // `usize::MAX`, as when the device's memory cannot be read) can
            // be reserved no more than one the backend refuses.
            let size = self
                .capacity()
                .checked_mul(2)
                .and_then(|s| s.checked_next_multiple_of(page))
                .ok_or(Shortfall::Exhausted)?;
            let base = self.backend.reserve_range(size).map_err(|e| match e {
                BackendError::OutOfMemory { .. } => Shortfall::Exhausted,
                other => Shortfall::Backend(other),
            })?;
            let segment = arena.add_expandable_segment(base, size, stream, class, page);
            let carved = arena.try_alloc(stream, rounded, requested).expect(
                "a range the size of the device fits any request that passed the size check",
            );
            let backed = self.back(arena, side, carved, requested, peak_before);
            if backed.is_err() {
                // The first mapping failed: the range goes again, so the
                // failed request leaves nothing behind.
                if let Some(range) = arena.remove_fresh_segment(segment) {
                    let _ = self.backend.release_range(range.base, range.size);
                }
            }
            return backed;
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
        let carved = arena
            .try_alloc(stream, rounded, requested)
            .expect("a fresh segment of segment_size(rounded) fits the request");
        self.note_allocated(side, carved.size);
        Ok(carved)
    }

    /// Makes a freshly carved block usable: maps the pages under it that an
    /// expandable segment has not mapped yet (unmapping idle pages first
    /// when mapping would raise the arena past its peak), and books it.
    fn back(
        &self,
        arena: &mut Arena,
        side: Side,
        carved: Carved,
        requested: usize,
        peak_before: usize,
    ) -> Result<Carved, Shortfall> {
        let mut runs = arena.unmapped_runs(carved.block, carved.size);
        if !runs.is_empty() {
            let needed: usize = runs.iter().map(|r| r.2).sum();
            // Grow freely up to the peak reserved so far, or a little above
            // the peak allocated (mapping and unmapping cost tens of
            // microseconds a page on a GPU: the slack keeps that rare).
            let ceiling = arena.stats.peak_reserved_bytes.max(
                arena.stats.peak_allocated_bytes
                    + arena.stats.peak_allocated_bytes / EXPANDABLE_SLACK,
            );
            let excess = (arena.stats.reserved_bytes + needed).saturating_sub(ceiling);
            if excess > 0 {
                // Reuse memory sitting in free blocks rather than grow past
                // the ceiling: unmap just as many idle pages (lowest
                // addresses first, away from where the range grows).
                let _ = self.unmap_idle(arena, side, excess);
                runs = arena.unmapped_runs(carved.block, carved.size);
            }
            // All runs or none: on a failure the runs mapped so far go
            // again and every figure, peaks included, is as before.
            let reserved_peak = arena.stats.peak_reserved_bytes;
            let mut done = Vec::new();
            for run in runs {
                if let Err(e) = self.map_run(run) {
                    for &run in &done {
                        let _ = self.unmap_run(run);
                        arena.set_mapped(run, false);
                    }
                    arena.stats.peak_reserved_bytes = reserved_peak;
                    arena.undo_alloc(carved.block, requested, peak_before);
                    return Err(match e {
                        BackendError::OutOfMemory { .. } => Shortfall::Exhausted,
                        other => Shortfall::Backend(other),
                    });
                }
                arena.set_mapped(run, true);
                done.push(run);
            }
            self.book.reserved(side, done.iter().map(|r| r.2).sum());
        }
        self.note_allocated(side, carved.size);
        Ok(carved)
    }

    /// Maps one run, within the limit.
    fn map_run(&self, run: PageRun) -> Result<(), BackendError> {
        let (_, addr, len) = run;
        let claimed = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(len).filter(|&n| n <= self.limit())
            });
        if claimed.is_err() {
            return Err(BackendError::OutOfMemory { requested: len });
        }
        self.backend.map(addr, len).inspect_err(|_| {
            self.reserved.fetch_sub(len, Ordering::SeqCst);
        })
    }

    /// Unmaps one run (the books are the caller's).
    fn unmap_run(&self, run: PageRun) -> Result<(), BackendError> {
        let (_, addr, len) = run;
        self.reserved.fetch_sub(len, Ordering::SeqCst);
        self.backend.unmap(addr, len)
    }

    /// Unmaps pages of `arena`'s expandable segments that no live block
    /// touches, lowest addresses first, until `at_least` bytes are unmapped
    /// (`usize::MAX`: all of them). Returns the bytes unmapped.
    fn unmap_idle(
        &self,
        arena: &mut Arena,
        side: Side,
        at_least: usize,
    ) -> Result<usize, BackendError> {
        let mut unmapped = 0;
        let mut first_error = None;
        let runs = arena.idle_mapped_runs();
        if runs.is_empty() {
            return Ok(0);
        }
        let page = self.backend.page_size()?;
        for run in runs {
            if unmapped >= at_least {
                break;
            }
            let (seg, addr, len) = run;
            let take = (at_least - unmapped)
                .checked_next_multiple_of(page)
                .unwrap_or(usize::MAX)
                .min(len);
            let run = (seg, addr, take);
            if let Err(e) = self.unmap_run(run) {
                first_error.get_or_insert(e);
            }
            arena.set_mapped(run, false);
            self.book.released(side, run.2);
            unmapped += run.2;
        }
        first_error.map_or(Ok(unmapped), Err)
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
        let unmapped = self.unmap_idle(arena, side, usize::MAX);
        let segments = arena.take_free_segments();
        let released = self.release_segments(segments, side)?;
        unmapped.map(|bytes| bytes + released)
    }

    /// Releases every segment of `arena`, live blocks and all: for an owner
    /// that is going away. Returns the bytes released.
    pub(crate) fn release_all(&self, arena: &mut Arena, side: Side) -> Result<usize, BackendError> {
        let allocated = arena.stats.allocated_bytes;
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
        for seg in segments {
            let held = match &seg.mapped {
                None => {
                    if let Err(e) = self.backend.release(seg.base, seg.size) {
                        first_error.get_or_insert(e);
                    }
                    seg.size
                }
                Some(runs) => {
                    for &(addr, len) in runs {
                        if let Err(e) = self.backend.unmap(addr, len) {
                            first_error.get_or_insert(e);
                        }
                    }
                    if let Err(e) = self.backend.release_range(seg.base, seg.size) {
                        first_error.get_or_insert(e);
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
