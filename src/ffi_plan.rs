//! The C ABI of planned graph pools (declared in `include/graphalloc.h`):
//! record the allocations of a run on a stream, make a pool planned from
//! one or more recordings, pick the plan a capture follows, read the
//! plan's figures. A planned pool's id works with every `graphalloc_pool_*`
//! function and with graph mode and capture routing, like any pool's.
//!
//! The rules of the boundary are those of [`crate::ffi`]: no panic crosses
//! it, errors are a zero id or `-1` with the reason in
//! [`super::graphalloc_last_error`].

use super::{allocator, device_index, ffi_call, non_null, pools, registered_pool, Log};
use crate::graph_pool::plan::PlanStats;
use crate::graph_pool::record::{Recording, RecordingGuard};
use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A planned pool's figures ([`PlanStats`]) for C: every field a `uint64_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphallocPlanStats {
    /// Recordings planned together.
    pub plans: u64,
    /// Allocations planned, all plans together.
    pub planned_allocations: u64,
    /// The lower bound: the most bytes a recording had live at once.
    pub peak_live_bytes: u64,
    /// Bytes reserved for the plan.
    pub planned_bytes: u64,
    /// Allocations served at their planned place.
    pub planned_hits: u64,
    /// Captures that left their plan and grew the pool.
    pub fallbacks: u64,
    /// Allocations served by growth after a fallback.
    pub fallback_allocations: u64,
}

impl From<PlanStats> for GraphallocPlanStats {
    fn from(s: PlanStats) -> Self {
        GraphallocPlanStats {
            plans: s.plans as u64,
            planned_allocations: s.planned_allocations as u64,
            peak_live_bytes: s.peak_live_bytes as u64,
            planned_bytes: s.planned_bytes as u64,
            planned_hits: s.planned_hits,
            fallbacks: s.fallbacks,
            fallback_allocations: s.fallback_allocations,
        }
    }
}

/// One allocation of a recording, for C ([`graphalloc_plan_record_allocations`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphallocRecordedAlloc {
    /// Bytes requested.
    pub size: u64,
    /// The stream it was made on.
    pub stream: u64,
    /// The recording's clock at the allocation.
    pub start: u64,
    /// The clock at its free, or `u64::MAX` if it outlived the recording.
    pub end: u64,
}

/// A recording made through the C ABI: still running, or ended.
enum Held {
    Running(RecordingGuard<'static>),
    Ended(Recording),
}

/// The recordings of [`graphalloc_plan_record_begin`], by id.
static RECORDINGS: Mutex<BTreeMap<u64, Held>> = Mutex::new(BTreeMap::new());

fn recordings() -> MutexGuard<'static, BTreeMap<u64, Held>> {
    // No code panics while holding this lock with the map half-updated.
    RECORDINGS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts recording the allocations on `stream` of `device`, from any
/// thread, and the frees of those blocks (allocations are served as usual).
/// Returns the recording's id (never 0), or 0 on error (invalid device).
#[no_mangle]
pub extern "C" fn graphalloc_plan_record_begin(device: c_int, stream: *mut c_void) -> u64 {
    ffi_call("graphalloc_plan_record_begin", 0, Log::Quiet, || {
        let alloc = allocator()?;
        let device = device_index(alloc, device)?;
        let guard = alloc
            .start_recording_on(device, stream as usize as u64)
            .map_err(|e| e.to_string())?;
        let id = crate::sync::next_id();
        recordings().insert(id, Held::Running(guard));
        Ok(id)
    })
}

/// Ends recording `recording`; blocks still live outlive it. Returns the
/// number of allocations recorded, or -1 (unknown id, already ended).
#[no_mangle]
pub extern "C" fn graphalloc_plan_record_end(recording: u64) -> i64 {
    ffi_call("graphalloc_plan_record_end", -1, Log::Quiet, || {
        let mut map = recordings();
        let held = map
            .remove(&recording)
            .ok_or_else(|| format!("unknown recording {recording}"))?;
        let rec = match held {
            Held::Running(guard) => guard.finish(),
            Held::Ended(rec) => {
                map.insert(recording, Held::Ended(rec));
                return Err(format!("recording {recording} has already ended"));
            }
        };
        let len = rec.len();
        map.insert(recording, Held::Ended(rec));
        Ok(i64::try_from(len).unwrap_or(i64::MAX))
    })
}

/// Renames stream `from` to `to` in ended recording `recording`, for a
/// capture that repeats the recorded work on another stream (a framework
/// that makes a new stream for each capture). Returns the number of
/// allocations renamed, or -1 (unknown or running recording, or both
/// `from` and `to` streams of the recording: merging two streams would let
/// their blocks share memory).
#[no_mangle]
pub extern "C" fn graphalloc_plan_record_rename_stream(
    recording: u64,
    from: *mut c_void,
    to: *mut c_void,
) -> i64 {
    ffi_call(
        "graphalloc_plan_record_rename_stream",
        -1,
        Log::Quiet,
        || {
            let mut map = recordings();
            let rec = match map.get_mut(&recording) {
                Some(Held::Ended(rec)) => rec,
                Some(Held::Running(_)) => {
                    return Err(format!("recording {recording} has not ended"))
                }
                None => return Err(format!("unknown recording {recording}")),
            };
            let (from, to) = (from as usize as u64, to as usize as u64);
            let renamed = rec.rename_stream(from, to).ok_or_else(|| {
                format!(
                    "streams {from:#x} and {to:#x} are both in recording {recording}: not merged"
                )
            })?;
            Ok(i64::try_from(renamed).unwrap_or(i64::MAX))
        },
    )
}

/// Copies the first `capacity` allocations of ended recording `recording`,
/// in order, to `out` (to compare a capture with its recording). Returns
/// how many the recording has (more than `capacity`: `out` got the first
/// `capacity`), or -1 (unknown or running recording, null `out` with a
/// non-zero `capacity`).
///
/// # Safety
/// `out` is null (with `capacity` 0) or writable for `capacity`
/// `GraphallocRecordedAlloc`.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_plan_record_allocations(
    recording: u64,
    out: *mut GraphallocRecordedAlloc,
    capacity: usize,
) -> i64 {
    ffi_call("graphalloc_plan_record_allocations", -1, Log::Quiet, || {
        if out.is_null() && capacity != 0 {
            return Err("null out with a non-zero capacity".into());
        }
        let map = recordings();
        let rec = match map.get(&recording) {
            Some(Held::Ended(rec)) => rec,
            Some(Held::Running(_)) => return Err(format!("recording {recording} has not ended")),
            None => return Err(format!("unknown recording {recording}")),
        };
        for (i, a) in rec.allocs.iter().take(capacity).enumerate() {
            let entry = GraphallocRecordedAlloc {
                size: a.size as u64,
                stream: a.stream,
                start: u64::from(a.start),
                end: a.end.map_or(u64::MAX, u64::from),
            };
            // SAFETY: `out` is not null here (capacity > i >= 0) and, as the
            // caller guarantees, writable for `capacity` entries.
            unsafe { out.add(i).write(entry) };
        }
        Ok(i64::try_from(rec.len()).unwrap_or(i64::MAX))
    })
}

/// Forgets recording `recording` (ending it if it runs). Returns 0, or -1
/// for an unknown id.
#[no_mangle]
pub extern "C" fn graphalloc_plan_record_release(recording: u64) -> c_int {
    ffi_call("graphalloc_plan_record_release", -1, Log::Quiet, || {
        let removed = recordings().remove(&recording);
        removed
            .map(|_| 0)
            .ok_or_else(|| format!("unknown recording {recording}"))
    })
}

/// Makes a graph pool on `device` planned from the `count` ended recordings
/// at `recordings` (graphs that share the pool and never run concurrently):
/// its memory is reserved now. Returns the pool's id (never 0), to release
/// with `graphalloc_pool_release`, or 0 on error (unknown or running
/// recording, invalid device, out of memory).
///
/// # Safety
/// `recordings` points to `count` readable `uint64_t` (it may be null when
/// `count` is 0).
#[no_mangle]
pub unsafe extern "C" fn graphalloc_plan_pool_create(
    device: c_int,
    recordings: *const u64,
    count: usize,
) -> u64 {
    ffi_call("graphalloc_plan_pool_create", 0, Log::Quiet, || {
        let ids: &[u64] = if count == 0 {
            &[]
        } else if recordings.is_null() {
            return Err("null recordings array".into());
        } else {
            // SAFETY: the caller guarantees `count` readable u64 at
            // `recordings`, which is not null.
            unsafe { std::slice::from_raw_parts(recordings, count) }
        };
        let alloc = allocator()?;
        let device = device_index(alloc, device)?;
        let owned: Vec<Recording> = {
            let map = self::recordings();
            ids.iter()
                .map(|id| match map.get(id) {
                    Some(Held::Ended(rec)) => Ok(rec.clone()),
                    Some(Held::Running(_)) => Err(format!("recording {id} has not ended")),
                    None => Err(format!("unknown recording {id}")),
                })
                .collect::<Result<_, String>>()?
        };
        let refs: Vec<&Recording> = owned.iter().collect();
        let pool = alloc
            .create_planned_pool_on(device, &refs)
            .map_err(|e| e.to_string())?;
        let id = pool.id();
        pools().insert(id, pool);
        Ok(id)
    })
}

/// Makes the next allocations from planned pool `pool` follow plan `plan`
/// (the index of its recording) from its first entry: call it before each
/// capture. Returns 0, or -1 (unknown pool, no such plan).
#[no_mangle]
pub extern "C" fn graphalloc_plan_start(pool: u64, plan: usize) -> c_int {
    ffi_call("graphalloc_plan_start", -1, Log::Quiet, || {
        registered_pool(pool)?
            .start_plan(plan)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Fills `*out` with planned pool `pool`'s figures. Returns 0, or -1
/// (unknown pool, a pool made without a plan, null `out`).
///
/// # Safety
/// `out` is null or points to writable memory for a `GraphallocPlanStats`.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_plan_stats(pool: u64, out: *mut GraphallocPlanStats) -> c_int {
    ffi_call("graphalloc_plan_stats", -1, Log::Quiet, || {
        let out = non_null(out)?;
        let stats = registered_pool(pool)?
            .plan_stats()
            .ok_or_else(|| format!("graph pool {pool} was made without a plan"))?;
        // SAFETY: `out` is not null and, as the caller guarantees, valid for
        // a write of one GraphallocPlanStats.
        unsafe { out.write(stats.into()) };
        Ok(0)
    })
}
