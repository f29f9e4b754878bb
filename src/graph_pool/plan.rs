//! Planned graph pools: a pool whose memory is placed ahead of the capture
//! from a recording of the same run, so that it holds barely more than the
//! run's peak of live bytes.
//!
//! A plan gives each recorded allocation an offset in one segment per
//! stream, reserved when the pool is made ([`super::planner`] packs the
//! lifetimes). Blocks of different streams never share memory; blocks of
//! one stream share it only when their lifetimes do not overlap, which is
//! the rule that makes reuse inside a capture safe today (a block freed on
//! its own stream is reused by that stream's later work, in stream order).
//!
//! Serving: the capture's i-th allocation gets the i-th planned block if
//! its block size, alignment and stream are the plan's and that memory is
//! free in the pool's arena (which the arena checks, so a planned block can
//! never overlap a live one). On the first mismatch the pool serves the
//! rest of that capture by ordinary growth (new segments, or free memory of
//! the planned ones), and counts it ([`PlanStats`]).

use super::planner::{self, Interval};
use super::record::Recording;
use super::GraphPool;
use crate::allocator::Allocator;
use crate::arena::{Arena, Carved, Class, StreamTag, BLOCK_ROUND, LARGE_SEGMENT_ROUND};
use crate::backend::BackendError;
use crate::caching::CachingAllocator;
use crate::device::{Device, Shortfall};
use crate::error::{Error, Result};
use crate::stats::Side;

/// What a planned pool reports about its plan and how its captures went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Recordings planned together (graphs sharing the pool).
    pub plans: usize,
    /// Allocations planned, all plans together.
    pub planned_allocations: usize,
    /// The lower bound: the most bytes any one recording had live at once
    /// (plus what the other recordings' outliving blocks hold).
    pub peak_live_bytes: usize,
    /// Bytes reserved for the plan when the pool was made.
    pub planned_bytes: usize,
    /// Allocations served at their planned place.
    pub planned_hits: u64,
    /// Captures that left their plan (a different size, alignment or
    /// stream, more allocations than planned, or planned memory still in
    /// use) and grew the pool for the rest of the capture.
    pub fallbacks: u64,
    /// Allocations served by ordinary growth after a fallback.
    pub fallback_allocations: u64,
}

/// One planned allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    stream: StreamTag,
    rounded: usize,
    align: usize,
    /// Index of its stream's region.
    region: usize,
    offset: usize,
}

/// The recorded allocations of `recordings` on `device` as intervals (only
/// those on `stream`, when given); group = recording index.
pub(crate) fn intervals(
    recordings: &[&Recording],
    device: usize,
    stream: Option<StreamTag>,
) -> Vec<Interval> {
    let mut out = Vec::new();
    for (group, rec) in recordings.iter().enumerate() {
        for a in rec.allocs.iter().filter(|a| a.device == device) {
            if stream.is_some_and(|s| s != a.stream) {
                continue;
            }
            out.push(Interval {
                size: a.rounded,
                group,
                start: a.start,
                // A block other streams used is not reused within its run.
                end: a.end.filter(|_| !a.shared).unwrap_or(u32::MAX),
                outlives: a.end.is_none(),
            });
        }
    }
    out
}

/// A placement of several recordings in per-stream regions.
#[derive(Debug)]
struct Plan {
    /// (stream, bytes) of each region.
    regions: Vec<(StreamTag, usize)>,
    /// Per recording, its allocations in order.
    entries: Vec<Vec<Planned>>,
    peak_live: usize,
}

impl Plan {
    fn new(recordings: &[&Recording], device: usize) -> Plan {
        let mut streams: Vec<StreamTag> = recordings
            .iter()
            .flat_map(|r| r.allocs.iter())
            .filter(|a| a.device == device)
            .map(|a| a.stream)
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let mut entries: Vec<Vec<Option<Planned>>> = recordings
            .iter()
            .map(|r| vec![None; r.allocs.iter().filter(|a| a.device == device).count()])
            .collect();
        let mut regions = Vec::new();
        for (region, &stream) in streams.iter().enumerate() {
            let items = intervals(recordings, device, Some(stream));
            let (offsets, size) = planner::pack(&items);
            regions.push((stream, size));
            // Walk the same order `intervals` produced, to match offsets.
            let mut k = 0;
            for (group, rec) in recordings.iter().enumerate() {
                let on_device = rec.allocs.iter().filter(|a| a.device == device);
                for (i, a) in on_device.enumerate() {
                    if a.stream == stream {
                        entries[group][i] = Some(Planned {
                            stream,
                            rounded: a.rounded,
                            align: a.align,
                            region,
                            offset: offsets[k],
                        });
                        k += 1;
                    }
                }
            }
        }
        Plan {
            regions,
            entries: entries
                .into_iter()
                .map(|e| e.into_iter().flatten().collect())
                .collect(),
            peak_live: planner::peak_live(&intervals(recordings, device, None)),
        }
    }
}

/// A planned pool's plan, its reserved regions, and where the current
/// capture is in it. Lives under its own lock, taken before the arena's.
#[derive(Debug)]
pub(crate) struct PlanCursor {
    plan: Plan,
    /// Per region: the arena segment holding it and its base address.
    bases: Vec<(u32, u64)>,
    /// The plan being served.
    active: usize,
    /// The next entry of it.
    next: usize,
    /// Whether the current capture left its plan.
    fell_back: bool,
    stats: PlanStats,
}

impl PlanCursor {
    /// Serves the next allocation from the plan, or `None` when it does not
    /// match (then the caller grows the pool as usual).
    pub(crate) fn serve(
        &mut self,
        device: &Device,
        arena: &mut Arena,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
        align: usize,
    ) -> Option<Carved> {
        if !self.fell_back {
            let entry = self
                .plan
                .entries
                .get(self.active)
                .and_then(|e| e.get(self.next))
                .copied();
            let want = entry.filter(|e| (e.stream, e.rounded, e.align) == (stream, rounded, align));
            if let Some(e) = want {
                if !arena.deferred.is_empty() {
                    let _ = device.settle(arena, false);
                }
                let (segment, base) = self.bases[e.region];
                if let Some(carved) =
                    arena.alloc_at(segment, base + e.offset as u64, rounded, requested)
                {
                    self.next += 1;
                    self.stats.planned_hits += 1;
                    return Some(carved);
                }
            }
            self.fell_back = true;
            self.stats.fallbacks += 1;
        }
        self.stats.fallback_allocations += 1;
        None
    }

    /// Serves plan `k` from its first entry for the next allocations.
    fn restart(&mut self, k: usize) {
        self.active = k;
        self.next = 0;
        self.fell_back = false;
    }

    pub(crate) fn rewind(&mut self) {
        self.restart(self.active);
    }
}

impl GraphPool {
    /// Whether the pool was made from recordings
    /// ([`Allocator::create_planned_pool`]).
    pub fn is_planned(&self) -> bool {
        self.core.plan.is_some()
    }

    /// The plan's figures and how the captures followed it; `None` for a
    /// pool made without a plan.
    pub fn plan_stats(&self) -> Option<PlanStats> {
        self.core.plan.as_ref().map(|p| p.lock().stats)
    }

    /// Makes the next allocations from the pool follow plan `plan` (the
    /// index of its recording) from its first entry: call it before each
    /// capture. A new pool starts at plan 0, and [`GraphPool::reset`]
    /// restarts the current plan.
    ///
    /// Fails with [`Error::NoSuchPlan`] for a pool without that plan.
    pub fn start_plan(&self, plan: usize) -> Result<()> {
        let no_plan = |plans| Error::NoSuchPlan {
            pool: self.core.id,
            plan,
            plans,
        };
        let mut cursor = self.core.plan.as_ref().ok_or(no_plan(0))?.lock();
        if plan >= cursor.plan.entries.len() {
            return Err(no_plan(cursor.plan.entries.len()));
        }
        cursor.restart(plan);
        Ok(())
    }
}

/// Reserves a segment for a region of `size` bytes; returns its base and
/// size. Blocks start on 512 B, and CUDA promises only 256 B for small
/// allocations: a misaligned segment goes back, and one rounded up to
/// 2 MiB (the granularity every other segment has) is taken instead.
fn reserve_region(
    cache: &CachingAllocator,
    size: usize,
    alloc: &Allocator,
) -> Result<(u64, usize)> {
    let device = &cache.device;
    let reserve = |size: usize| {
        let base = match device.reserve(size) {
            Err(Shortfall::Exhausted) => {
                // Room may be sitting idle in the device's cache.
                let _ = cache.empty_cache();
                device.reserve(size)
            }
            other => other,
        };
        base.map_err(|e| match e {
            Shortfall::Backend(e) => Error::Backend(e),
            _ => alloc.out_of_memory(device.ordinal(), size),
        })
    };
    let give_back = |base: u64, size: usize| {
        let mut scratch = Arena::new();
        scratch.add_segment(base, size, 0, Class::Large);
        device.book.reserved(Side::Pools, size);
        let _ = device.release_all(&mut scratch, Side::Pools);
    };
    let base = reserve(size)?;
    if base % BLOCK_ROUND as u64 == 0 {
        return Ok((base, size));
    }
    give_back(base, size);
    let size = size.next_multiple_of(LARGE_SEGMENT_ROUND);
    let base = reserve(size)?;
    if base % BLOCK_ROUND as u64 != 0 {
        give_back(base, size);
        return Err(Error::Backend(BackendError::Unavailable(format!(
            "the device returned a segment at {base:#x}, not aligned to {BLOCK_ROUND} bytes"
        ))));
    }
    Ok((base, size))
}

/// Reserves the regions of `plan` as segments of `arena` (a new pool's),
/// taking memory from `cache`'s device. On an error the caller releases
/// what was reserved.
fn reserve_plan(
    plan: Plan,
    cache: &CachingAllocator,
    arena: &mut Arena,
    alloc: &Allocator,
) -> Result<PlanCursor> {
    let device = &cache.device;
    let mut bases = Vec::new();
    let mut reserved = 0;
    for &(stream, size) in &plan.regions {
        let (base, size) = reserve_region(cache, size, alloc)?;
        let segment = arena.add_segment(base, size, stream, Class::Large);
        device.book.reserved(Side::Pools, size);
        bases.push((segment, base));
        reserved += size;
    }
    let stats = PlanStats {
        plans: plan.entries.len(),
        planned_allocations: plan.entries.iter().map(Vec::len).sum(),
        peak_live_bytes: plan.peak_live,
        planned_bytes: reserved,
        ..PlanStats::default()
    };
    Ok(PlanCursor {
        plan,
        bases,
        active: 0,
        next: 0,
        fell_back: false,
        stats,
    })
}

impl Allocator {
    /// A graph pool on device 0 planned from `recordings`; see
    /// [`Allocator::create_planned_pool_on`].
    pub fn create_planned_pool(&self, recordings: &[&Recording]) -> Result<GraphPool> {
        self.create_planned_pool_on(0, recordings)
    }

    /// A graph pool on `device` whose memory is placed ahead of time for
    /// the runs in `recordings` (their allocations on `device`): one segment
    /// per stream, reserved now, sized by packing the recorded lifetimes.
    /// Several recordings share the memory (graphs that share the pool and
    /// never run concurrently): the pool needs about the largest of their
    /// peaks, not the sum. Blocks that outlive their recording (a graph's
    /// outputs) get memory no other recording uses.
    ///
    /// Captures follow plan 0 first; [`GraphPool::start_plan`] picks another
    /// ([`Allocator::capture_planned`] does both).
    ///
    /// ```
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    /// let step = || {
    ///     let a = alloc.allocate(3 << 20, 512).unwrap();
    ///     let b = alloc.allocate(1 << 20, 512).unwrap();
    ///     alloc.free(a).unwrap();
    ///     let c = alloc.allocate(2 << 20, 512).unwrap();
    ///     alloc.free(b).unwrap();
    ///     alloc.free(c).unwrap();
    /// };
    /// let ((), rec) = alloc.record(step); // eager: real memory, from the cache
    /// let pool = alloc.create_planned_pool(&[&rec]).unwrap();
    /// alloc.capture_planned(&pool, 0, step).unwrap(); // e.g. inside a CUDA capture
    /// let plan = pool.plan_stats().unwrap();
    /// assert_eq!(plan.peak_live_bytes, 4 << 20);
    /// assert_eq!(plan.planned_bytes, 4 << 20);
    /// assert_eq!((plan.planned_hits, plan.fallbacks), (3, 0));
    /// assert_eq!(pool.stats().reserved_bytes, 4 << 20);
    /// ```
    pub fn create_planned_pool_on(
        &self,
        device: usize,
        recordings: &[&Recording],
    ) -> Result<GraphPool> {
        let (allocator_id, cache, registry) = self.pool_parts(device)?;
        let plan = Plan::new(recordings, device);
        GraphPool::create_with(allocator_id, cache.clone(), registry, |cache, arena| {
            reserve_plan(plan, cache, arena, self)
        })
    }

    /// Runs `f` in graph mode on `pool` following plan `plan` from its start
    /// ([`GraphPool::start_plan`]); for a capture, `f` begins and ends it.
    pub fn capture_planned<R>(
        &self,
        pool: &GraphPool,
        plan: usize,
        f: impl FnOnce() -> R,
    ) -> Result<R> {
        let guard = self.enter_graph_mode(pool)?;
        pool.start_plan(plan)?;
        let result = f();
        drop(guard);
        Ok(result)
    }

    /// Record, plan and capture in one call: runs `record` while recording
    /// the calling thread's allocations (an eager run of the work, or a
    /// capture to throw away), plans a pool on device 0 from it, and runs
    /// `capture` in graph mode on that pool (the real capture of the same
    /// work). Returns the pool and both results.
    pub fn plan_and_capture<R, C>(
        &self,
        record: impl FnOnce() -> R,
        capture: impl FnOnce() -> C,
    ) -> Result<(GraphPool, R, C)> {
        let (recorded, recording) = self.record(record);
        let pool = self.create_planned_pool(&[&recording])?;
        let captured = self.capture_planned(&pool, 0, capture)?;
        Ok((pool, recorded, captured))
    }
}
