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
use crate::arena::{Arena, Carved, Class, StreamTag, BLOCK_ROUND, LARGE_SEGMENT_ROUND};
use crate::backend::BackendError;
use crate::caching::CachingAllocator;
use crate::device::{Device, Shortfall};
use crate::error::{Error, Result};
use crate::history::Action;
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
pub(crate) struct Plan {
    /// (stream, bytes) of each region.
    regions: Vec<(StreamTag, usize)>,
    /// Per recording, its allocations in order.
    entries: Vec<Vec<Planned>>,
    peak_live: usize,
}

impl Plan {
    /// Plans `recordings`' allocations on `device`. Fails with the
    /// recordings' total bytes (saturated) when they add past `isize::MAX`:
    /// no device holds that, and below it no sum the planner makes (every
    /// offset plus size, every peak, is at most the total) can overflow.
    pub(crate) fn new(recordings: &[&Recording], device: usize) -> Result<Plan, usize> {
        let total = recordings
            .iter()
            .flat_map(|r| r.allocs.iter())
            .filter(|a| a.device == device)
            .try_fold(0usize, |sum, a| sum.checked_add(a.rounded))
            .filter(|&t| t <= isize::MAX as usize);
        if total.is_none() {
            let saturated = recordings
                .iter()
                .flat_map(|r| r.allocs.iter())
                .filter(|a| a.device == device)
                .fold(0usize, |sum, a| sum.saturating_add(a.rounded));
            return Err(saturated);
        }
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
        Ok(Plan {
            regions,
            entries: entries
                .into_iter()
                .map(|e| e.into_iter().flatten().collect())
                .collect(),
            peak_live: planner::peak_live(&intervals(recordings, device, None)),
        })
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
                    let _ = device.settle(arena, Side::Pools, false);
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
    /// ([`Allocator::create_planned_pool`](crate::Allocator::create_planned_pool)).
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
    oom: &dyn Fn(usize, usize) -> Error,
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
        base.inspect(|&base| device.note(Action::SegmentAlloc, Side::Pools, 0, size, base))
            .map_err(|e| match e {
                Shortfall::Backend(e) => Error::Backend(e),
                _ => oom(device.ordinal(), size),
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
/// taking memory from `cache`'s device (`oom` makes the error for a full
/// device). On an error the caller releases what was reserved.
pub(crate) fn reserve_plan(
    plan: Plan,
    cache: &CachingAllocator,
    arena: &mut Arena,
    oom: &dyn Fn(usize, usize) -> Error,
) -> Result<PlanCursor> {
    let device = &cache.device;
    let mut bases = Vec::new();
    let mut reserved = 0;
    for &(stream, size) in &plan.regions {
        let (base, size) = reserve_region(cache, size, oom)?;
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
