//! The mapping policy of expandable segments: when memory is mapped into
//! the cache's address ranges and when it is unmapped again.
//!
//! - A request is carved from mapped free memory whenever some fits (best
//!   fit, `Arena::try_alloc`; in memory left free since its range last
//!   held no block, a loose fit takes the lowest address: `Arena::place`):
//!   no mapping call. Only a true miss maps, and
//!   it maps the fewest pages that make room, next to mapped free blocks
//!   ([`crate::arena::Arena::plan_growth`]), widened to a granule of
//!   [`GROWTH_GRANULE`] bytes while the budget allows, or of
//!   1/[`GRANULE_SHARE`] of what the cache maps already if that is less
//!   (a small cache is not left holding 16 MiB units that a few
//!   long-lived blocks keep from ever being idle).
//! - Memory is mapped in **mapping units**: one map call, one physical
//!   allocation (one `cuMemCreate` handle, one `cuMemMap`, one
//!   `cuMemSetAccess`), unmapped only whole (CUDA cannot unmap part of a
//!   mapping). The driver's cost is per handle, nearly whatever its size
//!   (`bench/map_cost_probe.py` on an H200: `cuMemCreate` 10 µs, `cuMemMap`
//!   2 µs, `cuMemSetAccess` 40 µs for 2 MiB to 256 MiB; 116 µs in all for
//!   786 MiB; one `cuMemSetAccess` over n handles costs about as much as n
//!   calls), so a growth of at most [`MAX_UNIT`] bytes is one unit, and a
//!   larger one is cut at every [`MAX_UNIT`] bytes from its range's base:
//!   few handles, and a large idle hole still holds whole units a reclaim
//!   can take. (Units of one growth each: the fewest
//!   handles, but a hole left inside a large unit by a smaller block could
//!   never be unmapped, and gpt2_train's ratio rose to 1.072; PyTorch's
//!   fixed 20 MiB units: 2.5x the handles.)
//! - Nothing is unmapped on free. Idle units (mapped, wholly under free
//!   blocks) are unmapped in a batch, highest addresses first (next to
//!   where ranges grow, so the next growth maps the hole again and the
//!   memory below stays in long mapped runs), only when it matters:
//!   a mapping would take the cache's reserved bytes past its budget
//!   (the peak reserved so far, or the peak allocated bytes plus
//!   1/[`IDLE_BUDGET`] of them, whichever is higher), the device limit
//!   (`memory_fraction`) or the device is full, or `empty_cache`.
//! - A budget reclaim leaves **kept** units alone: units mapped over pages
//!   that an earlier budget reclaim unmapped while the peak allocated bytes
//!   were what they are now (`Arena::mark_mapped`). A workload repeating
//!   under its peak that needs such pages again would otherwise trade them
//!   back and forth every pass (unet_train: a 2 MiB growth unmapped an idle
//!   unit of 14 MiB that later growths mapped again piece by piece;
//!   gpt2_generate: its small and large ranges traded pages), so the
//!   budget in effect grows by what churned, up to the hard cap below;
//!   past it, and under real pressure, kept units go like any other. While
//!   the peak still rises (a first pass growing, or the request the growth
//!   is for raising it), nothing is kept. A unit stays kept until it is
//!   unmapped, past later peaks too (kept only while their peak stood,
//!   unet_train's ratio went back to 1.114 with 22 warm maps, and
//!   gpt2_generate's warm passes to 29 maps and 23 unmaps).
//! - Before unmapping units, the work queued on their stream before their
//!   blocks were freed must be done. A reclaim for the **budget** never
//!   waits for it (a wait would drain the pipeline: the CPU blocks until
//!   the GPU is done, then the GPU idles while the CPU queues work again):
//!   it unmaps only idle runs known to be free of their stream's work, by
//!   a fence (`fences.rs`: an event recorded at an earlier attempt after
//!   their free and found complete, without waiting) or because the
//!   stream is idle; for the others it records a fence, and leaves them
//!   mapped (reserved bytes may pass the budget a while; the next attempt
//!   finds them safe), up to a hard cap: past the peak allocated bytes plus
//!   1/[`HARD_CAP`] of them, at least [`HARD_CAP_FLOOR`] (or past the
//!   budget, if higher) the reclaim
//!   waits, so a device running far behind the CPU cannot make the cache
//!   hold more than that (`examples/lagged_replay.rs` simulates one: without
//!   the cap, vartrans_step reached 1.27 at a lag of 10 events). Under
//!   **real pressure** (the device limit, a full
//!   device, the out-of-memory retry, `empty_cache`) memory must go now:
//!   the reclaim waits for the streams of the runs not yet known safe, as
//!   PyTorch synchronizes before `cuMemUnmap`. With no work queued (the
//!   host backend in the replay tool), both unmap the same runs as a wait
//!   would. A stream being captured is never waited on nor fenced (no wait
//!   can end a capture): its units stay mapped.
//!
//! A repeating workload therefore settles: once a pass has mapped what it
//! needs, the next pass finds its blocks in mapped memory. Host replay
//! (`replay --runs 3 --json`, warm calls summed over 3 warm passes): the
//! training traces (gpt2_train, resnet50_train, gpt2_step, vartrans_step,
//! lstm_train, unet_train) make no warm mapping call; gpt2_generate makes
//! 25 maps and 18 unmaps, none after its fourth warm pass (its small blocks
//! peak before its large ones, and the budget trades pages between the two
//! ranges until they are kept; before kept units, 29 and 23 and about 6
//! more each pass, and unet_train 21 and 10 with a cold ratio of 1.114,
//! 1.089 now); sidestream_train makes 3 and 2 in its first warm pass only. Before stale placement and highest-first
//! reclaims, gpt2_train made 15 and 6 (a 785 MiB logits block found no
//! mapped hole: a warm pass starts from the holes the cold pass's reclaims
//! unmapped, and best fit placed its blocks differently), gpt2_step 2
//! and 1.

use super::{Device, Shortfall};
use crate::arena::{Arena, Carved, Class, Growth, IdleRun, StreamTag};
use crate::backend::BackendError;
use crate::history::Action;
use crate::stats::Side;
use crate::sync::{AtomicU64, Ordering};
use std::time::Instant;

/// The cache may hold up to 1/IDLE_BUDGET of its peak allocated bytes
/// mapped but idle (above the peak itself) before a mapping unmaps idle
/// pages first.
const IDLE_BUDGET: usize = 32;

/// A budget reclaim never waits for stream work: the idle runs whose
/// streams may still use them stay mapped. That overshoot is capped: a
/// growth that would take the cache's reserved bytes past its peak
/// allocated bytes plus 1/HARD_CAP of them (or past the budget, if that is
/// higher) waits for those streams and unmaps down to the cap, so deferrals
/// alone never take the fragmentation ratio past 1 + 1/HARD_CAP once the
/// peak passes 24 x [`HARD_CAP_FLOOR`] (3 GiB). Kept units (see the module
/// docs) go down to the same cap, without a wait.
const HARD_CAP: usize = 24;

/// ... and a cache never waits to hold fewer than this many idle bytes
/// over its peak: small caches keep their pipeline full.
const HARD_CAP_FLOOR: usize = 128 << 20;

/// Growth maps at least this many bytes at once when the budget allows
/// (PyTorch's `large_segment_size` is 20 MB; 16 MiB packs resnet50_train
/// tighter): fewer, larger calls.
const GROWTH_GRANULE: usize = 16 << 20;

/// ... but no more than 1/GRANULE_SHARE of what the cache already maps: a
/// small cache's units stay small, so that the few long-lived blocks in a
/// partly used unit hold little idle memory that no reclaim can take
/// (gpt2_generate, 0.66 GB at its peak: 1.062 with 16 MiB from the start,
/// 1.044 with this).
const GRANULE_SHARE: usize = 16;

/// The largest mapping unit: a larger growth is mapped in units cut at
/// multiples of this many bytes, so that a reclaim can unmap part of a large idle block
/// (a unit goes only whole).
const MAX_UNIT: usize = 128 << 20;

/// The most address space one expandable segment reserves.
const MAX_RANGE: usize = 1 << 46;

/// What a reclaim may do about work still queued on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reclaim {
    /// For the idle budget: never wait; runs not known to be free of their
    /// stream's work stay mapped for a later attempt, and so do units
    /// mapped again after a budget reclaim took their pages (kept).
    Budget,
    /// Past the hard cap: as [`Reclaim::Budget`], kept units too.
    Cap,
    /// Under real pressure (the limit, a full device, the out-of-memory
    /// retry, `empty_cache`): wait for the streams whose work may still
    /// use the runs.
    Now,
}

/// Mapping calls of one device, for [`MappingStats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    maps: AtomicU64,
    unmaps: AtomicU64,
    map_ns: AtomicU64,
    unmap_ns: AtomicU64,
    mapped_bytes: AtomicU64,
    unmapped_bytes: AtomicU64,
    waits: AtomicU64,
    wait_ns: AtomicU64,
    fences: AtomicU64,
    deferred_unmaps: AtomicU64,
}

impl Counters {
    /// Counts a fence recorded.
    pub(super) fn fence_recorded(&self) {
        self.fences.fetch_add(1, Ordering::Relaxed);
    }
}

/// The mapping calls made for expandable segments (`Backend::map` and
/// `Backend::unmap`), and the time spent in them, since the allocator was
/// built. See [`crate::Allocator::mapping_stats`]. Laid out for C as
/// `GraphallocMappingStats` (every field a `uint64_t`, in this order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// Calls that mapped memory into an address range.
    pub maps: u64,
    /// Calls that unmapped memory.
    pub unmaps: u64,
    /// Nanoseconds spent in map calls.
    pub map_ns: u64,
    /// Nanoseconds spent in unmap calls.
    pub unmap_ns: u64,
    /// Bytes mapped, in all.
    pub mapped_bytes: u64,
    /// Bytes unmapped, in all.
    pub unmapped_bytes: u64,
    /// Waits for a stream's work before unmapping its pages (real
    /// pressure: the limit, a full device, `empty_cache`, the allocator
    /// going away). A reclaim for the idle budget never waits.
    pub waits: u64,
    /// Nanoseconds spent in those waits.
    pub wait_ns: u64,
    /// Fences recorded: events a budget reclaim recorded on a stream, to
    /// learn later, without waiting, when idle pages are free of its work.
    pub fences: u64,
    /// Idle runs a budget reclaim left mapped because the work of their
    /// stream might still use them (each attempt counts the runs it saw).
    pub deferred_unmaps: u64,
}

impl MappingStats {
    /// Adds `other`'s counts to these (saturating at the type's maximum).
    pub fn add(&mut self, other: &MappingStats) {
        self.maps = self.maps.saturating_add(other.maps);
        self.unmaps = self.unmaps.saturating_add(other.unmaps);
        self.map_ns = self.map_ns.saturating_add(other.map_ns);
        self.unmap_ns = self.unmap_ns.saturating_add(other.unmap_ns);
        self.mapped_bytes = self.mapped_bytes.saturating_add(other.mapped_bytes);
        self.unmapped_bytes = self.unmapped_bytes.saturating_add(other.unmapped_bytes);
        self.waits = self.waits.saturating_add(other.waits);
        self.wait_ns = self.wait_ns.saturating_add(other.wait_ns);
        self.fences = self.fences.saturating_add(other.fences);
        self.deferred_unmaps = self.deferred_unmaps.saturating_add(other.deferred_unmaps);
    }

    /// The counts made since `earlier` (taken from the same allocator).
    pub fn since(&self, earlier: &MappingStats) -> MappingStats {
        MappingStats {
            maps: self.maps.saturating_sub(earlier.maps),
            unmaps: self.unmaps.saturating_sub(earlier.unmaps),
            map_ns: self.map_ns.saturating_sub(earlier.map_ns),
            unmap_ns: self.unmap_ns.saturating_sub(earlier.unmap_ns),
            mapped_bytes: self.mapped_bytes.saturating_sub(earlier.mapped_bytes),
            unmapped_bytes: self.unmapped_bytes.saturating_sub(earlier.unmapped_bytes),
            waits: self.waits.saturating_sub(earlier.waits),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            fences: self.fences.saturating_sub(earlier.fences),
            deferred_unmaps: self.deferred_unmaps.saturating_sub(earlier.deferred_unmaps),
        }
    }
}

impl Device {
    /// The mapping calls made on this device so far.
    pub(crate) fn mapping_stats(&self) -> MappingStats {
        let c = &self.mapping;
        MappingStats {
            maps: c.maps.load(Ordering::Relaxed),
            unmaps: c.unmaps.load(Ordering::Relaxed),
            map_ns: c.map_ns.load(Ordering::Relaxed),
            unmap_ns: c.unmap_ns.load(Ordering::Relaxed),
            mapped_bytes: c.mapped_bytes.load(Ordering::Relaxed),
            unmapped_bytes: c.unmapped_bytes.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            wait_ns: c.wait_ns.load(Ordering::Relaxed),
            fences: c.fences.load(Ordering::Relaxed),
            deferred_unmaps: c.deferred_unmaps.load(Ordering::Relaxed),
        }
    }

    /// Serves a request that no mapped free block fits: maps pages where
    /// they make room at least cost (in a fresh address range if none
    /// can), within the budget, and carves the block. On failure every
    /// figure is as before, except idle pages a reclaim may have unmapped.
    pub(super) fn grow(
        &self,
        arena: &mut Arena,
        side: Side,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Result<Carved, Shortfall> {
        let mut fresh = None;
        let need = match arena.plan_growth(stream, rounded) {
            Some(growth) => growth,
            None => {
                let page = self
                    .backend
                    .vmm()
                    .and_then(|v| v.page_size())
                    .map_err(Shortfall::Backend)?;
                // Twice the device (address space is cheap), so that the
                // range's fragmentation never stands in for a full device.
                let size = self
                    .capacity()
                    .saturating_mul(2)
                    .min(MAX_RANGE)
                    .checked_next_multiple_of(page)
                    .ok_or(Shortfall::Overflow)?;
                if rounded > size {
                    return Err(Shortfall::Exhausted);
                }
                let base = self
                    .backend
                    .vmm()
                    .and_then(|v| v.reserve_range(size))
                    .map_err(Shortfall::from)?;
                let class = Class::of(rounded);
                fresh = Some(arena.add_expandable_segment(base, size, stream, class, page));
                arena
                    .plan_growth(stream, rounded)
                    .expect("a fresh range holds any request it is not smaller than")
            }
        };
        let stats = &arena.stats;
        let peak = stats
            .peak_allocated_bytes
            .max(stats.allocated_bytes + rounded);
        let budget = stats.peak_reserved_bytes.max(peak + peak / IDLE_BUDGET);
        let reserved = stats.reserved_bytes;
        let mut growth = need;
        if reserved + need.len > budget {
            // Best effort: what cannot be unmapped only leaves more mapped.
            let excess = reserved + need.len - budget;
            let deferred = self.mapping.deferred_unmaps.load(Ordering::Relaxed);
            let _ = self.reclaim(arena, side, excess, &need.keep, Reclaim::Budget);
            // Runs skipped because their streams' work may still run leave
            // the cache over its budget; past the hard cap (or past the
            // budget, if that is higher) a reclaim waits for them.
            let cap = budget.max(peak + (peak / HARD_CAP).max(HARD_CAP_FLOOR));
            // Kept units go too, past the cap.
            let over = (arena.stats.reserved_bytes + need.len).saturating_sub(cap);
            if over > 0 {
                let _ = self.reclaim(arena, side, over, &need.keep, Reclaim::Cap);
            }
            let over = (arena.stats.reserved_bytes + need.len).saturating_sub(cap);
            let skipped = self.mapping.deferred_unmaps.load(Ordering::Relaxed) > deferred;
            if skipped && over > 0 {
                let _ = self.reclaim(arena, side, over, &need.keep, Reclaim::Now);
            }
        } else {
            growth.widen(
                GROWTH_GRANULE
                    .min(reserved / GRANULE_SHARE)
                    .saturating_sub(need.len)
                    .min(budget - reserved - need.len),
            );
        }
        let mut mapped = self.map_growth(arena, side, &growth, MAX_UNIT);
        if let Err((BackendError::OutOfMemory { .. }, false)) = mapped {
            // The limit or the device is full: unmap idle pages, then map
            // just what the request needs (if that can change anything).
            let freed = self
                .reclaim(arena, side, need.len, &need.keep, Reclaim::Now)
                .unwrap_or(0);
            if freed > 0 || growth != need {
                growth = need;
                mapped = self.map_growth(arena, side, &growth, MAX_UNIT);
            }
        }
        if let Err((e, _)) = mapped {
            if let Some(range) = fresh.and_then(|seg| arena.remove_fresh_segment(seg)) {
                let vmm = self.backend.vmm();
                // SAFETY: the range was reserved by this call and taken out
                // of the arena only because nothing was ever mapped in it
                // (`remove_fresh_segment`): no block was carved from it, so
                // no address in it was handed out or used by device work.
                let _ = vmm.and_then(|v| unsafe { v.release_range(range.base, range.size) });
            }
            return Err(Shortfall::from(e));
        }
        arena.mark_mapped(&growth, &growth.units(MAX_UNIT));
        self.book.reserved(side, growth.len);
        self.note(Action::SegmentMap, side, stream, growth.len, growth.addr);
        let carved = arena
            .try_alloc(stream, rounded, requested)
            .expect("the pages just mapped make room for the request");
        self.note_allocated(side, carved.size);
        Ok(carved)
    }

    /// Maps `growth`, one call per mapping unit of at most `cap` bytes. All
    /// or nothing: if a unit fails, the units mapped before it are unmapped
    /// again (no block uses them yet). Only if that fails too do some stay
    /// mapped: they are booked then (reserved, idle), and the error says
    /// the arena changed (`true`).
    fn map_growth(
        &self,
        arena: &mut Arena,
        side: Side,
        growth: &Growth,
        cap: usize,
    ) -> Result<(), (BackendError, bool)> {
        let units = growth.units(cap);
        let mut done = 0;
        for (i, &(addr, len)) in units.iter().enumerate() {
            let Err(e) = self.map_pages(addr, len) else {
                done += len;
                continue;
            };
            if i == 0 {
                return Err((e, false));
            }
            // SAFETY: `[growth.addr, growth.addr + done)` is the units this
            // call just mapped, before any block was carved from them: no
            // address in them was handed out or used by device work.
            let gone = match unsafe { self.unmap_pages(growth.addr, done) } {
                Ok(()) => done,
                Err(undo) => undo.unmapped_bytes().min(done),
            };
            self.reserved.fetch_sub(gone, Ordering::SeqCst);
            if gone == done {
                return Err((e, false));
            }
            // Units past `gone` are still mapped: booked as idle memory.
            let kept = growth.part(growth.addr + gone as u64, done - gone);
            let kept_units: Vec<(u64, usize)> = units[..i]
                .iter()
                .copied()
                .filter(|u| u.0 >= kept.addr)
                .collect();
            arena.mark_mapped(&kept, &kept_units);
            self.book.reserved(side, kept.len);
            self.note(Action::SegmentMap, side, growth.stream, kept.len, kept.addr);
            return Err((e, true));
        }
        Ok(())
    }

    /// Unmaps idle units of `arena`'s expandable segments, at least
    /// `at_least` bytes if there are (`usize::MAX`: all), lowest
    /// addresses first and none in the blocks of `keep`, only once the
    /// work queued on their streams before their free has completed: for
    /// [`Reclaim::Budget`], runs not known to be free of it yet are skipped
    /// (never a wait); for [`Reclaim::Now`], their streams are waited for.
    /// Returns the bytes unmapped, or the first error (units whose
    /// unmapping failed stay mapped and booked).
    pub(super) fn reclaim(
        &self,
        arena: &mut Arena,
        side: Side,
        at_least: usize,
        keep: &[Option<u32>],
        how: Reclaim,
    ) -> Result<usize, BackendError> {
        let runs = arena.idle_runs(keep, how == Reclaim::Budget);
        let stamps: Vec<u64> = runs.iter().map(|r| arena.freed_tick(r.slot)).collect();
        let mut first_error = None;
        // Per stream met: (stream, whether its runs may go at all: not
        // while it is captured, whether it was brought up to date).
        let mut streams: Vec<(StreamTag, bool, bool)> = Vec::new();
        let mut chosen: Vec<IdleRun> = Vec::new();
        let mut total = 0usize;
        let mut deferred = 0u64;
        for (run, &freed) in runs.iter().zip(&stamps) {
            if total >= at_least {
                break;
            }
            let at = match streams.iter().position(|s| s.0 == run.stream) {
                Some(at) => at,
                None => {
                    let usable = match self.capturing(run.stream) {
                        Ok(capturing) => !capturing,
                        // A stream that no longer exists has no work left.
                        Err(BackendError::UnknownStream { .. }) => {
                            self.stream_drained(arena, run.stream);
                            true
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                            false
                        }
                    };
                    streams.push((run.stream, usable, false));
                    streams.len() - 1
                }
            };
            let (stream, usable, fresh) = streams[at];
            if usable && !fresh && !arena.fences.safe(stream, freed) {
                streams[at].2 = true;
                // The newest free among the stream's runs: one fence for all.
                let newest = runs
                    .iter()
                    .zip(&stamps)
                    .filter(|(r, _)| r.stream == stream)
                    .map(|(_, &t)| t)
                    .max()
                    .unwrap_or(freed);
                if let Err(e) = self.catch_up(arena, stream, newest, how) {
                    first_error.get_or_insert(e);
                }
            }
            if !usable || !arena.fences.safe(stream, freed) {
                deferred += 1;
                continue;
            }
            // Part of a run: its top units, leaving the mapped rest in place.
            let run = run.top(at_least - total);
            total += run.len;
            chosen.push(run);
        }
        if deferred > 0 && how != Reclaim::Now {
            self.mapping
                .deferred_unmaps
                .fetch_add(deferred, Ordering::Relaxed);
        }
        let mut unmapped = 0;
        for run in &chosen {
            // What went: all of the run, or the units a failing call
            // unmapped before it stopped (the rest stays booked as mapped:
            // the books follow the device exactly).
            // SAFETY: the run is whole mapping units inside a free block
            // (`idle_runs`: no live block lies in it), and the work queued on
            // its stream before its free is done (`fences.safe` above); work
            // of other streams that used it finished before it joined the
            // free index (deferred frees wait for their events).
            let gone = match unsafe { self.unmap_pages(run.addr, run.len) } {
                Ok(()) => run.prefix(run.len),
                Err(e) => {
                    let part = run.prefix(e.unmapped_bytes());
                    first_error.get_or_insert(e);
                    part
                }
            };
            if gone.len > 0 {
                arena.mark_unmapped(&gone, how != Reclaim::Now);
                self.note(Action::SegmentUnmap, side, run.stream, gone.len, gone.addr);
                self.reserved.fetch_sub(gone.len, Ordering::SeqCst);
                self.book.released(side, gone.len);
                unmapped += gone.len;
            }
        }
        // Any failure is reported (the books above already hold what went).
        first_error.map_or(Ok(unmapped), Err)
    }

    /// Brings what `arena` knows of the work of `stream` (not being
    /// captured) up to date, so that memory stamped `newest` or lower may
    /// be found free of it: without waiting (fences polled, the stream
    /// queried, a fence recorded), unless `how` is [`Reclaim::Now`] and
    /// that is not enough: then the stream is waited for.
    fn catch_up(
        &self,
        arena: &mut Arena,
        stream: StreamTag,
        newest: u64,
        how: Reclaim,
    ) -> Result<(), BackendError> {
        let budget = how != Reclaim::Now;
        let refreshed = self.refresh_fences(arena, stream, newest, budget);
        if budget || arena.fences.safe(stream, newest) {
            return refreshed;
        }
        if self.drain_stream(stream)? {
            self.stream_drained(arena, stream);
        }
        Ok(())
    }

    /// Waits until the work queued on `stream` so far has completed, and
    /// says so; `false` for a stream being captured, which no wait can
    /// drain (its pages then stay mapped). A stream that no longer exists
    /// has no work left. Counts the wait.
    pub(super) fn drain_stream(&self, stream: StreamTag) -> Result<bool, BackendError> {
        match self.capturing(stream) {
            Ok(true) => return Ok(false),
            Ok(false) => {}
            Err(BackendError::UnknownStream { .. }) => return Ok(true),
            Err(e) => return Err(e),
        }
        let event = self.record_on(stream)?;
        let start = Instant::now();
        let waited = self.backend.streams().and_then(|v| v.wait_event(event));
        let c = &self.mapping;
        c.wait_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.waits.fetch_add(1, Ordering::Relaxed);
        self.recycle_event(event);
        waited.map(|()| true)
    }

    /// Maps `[addr, addr + len)`, within the limit, counting the call.
    pub(super) fn map_pages(&self, addr: u64, len: usize) -> Result<(), BackendError> {
        let claimed = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(len).filter(|&n| n <= self.limit())
            });
        if claimed.is_err() {
            return Err(BackendError::OutOfMemory { requested: len });
        }
        let start = Instant::now();
        let result = self.backend.vmm().and_then(|v| v.map(addr, len));
        let c = &self.mapping;
        c.map_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.maps.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                c.mapped_bytes.fetch_add(len as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reserved.fetch_sub(len, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Unmaps `[addr, addr + len)`, counting the call (the reserved
    /// figures are the caller's).
    ///
    /// # Safety
    /// As [`crate::backend::VirtualMemory::unmap`]: nothing (no live block,
    /// no pending device work) accesses the range while it is unmapped.
    pub(super) unsafe fn unmap_pages(&self, addr: u64, len: usize) -> Result<(), BackendError> {
        let start = Instant::now();
        let vmm = self.backend.vmm();
        // SAFETY: this function's contract, passed on.
        let result = vmm.and_then(|v| unsafe { v.unmap(addr, len) });
        let c = &self.mapping;
        c.unmap_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.unmaps.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            c.unmapped_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        result
    }
}
