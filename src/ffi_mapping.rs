//! The C ABI of the mapping statistics of expandable segments (declared
//! in `include/graphalloc.h`): the map and unmap calls made, the waits for
//! streams before unmapping and the fences recorded instead, with the time
//! spent in them ([`crate::MappingStats`]).
//!
//! The rules of the boundary are those of [`crate::ffi`]: no panic crosses
//! it, errors are `-1` with the reason in [`super::graphalloc_last_error`].

use super::{allocator, ffi_call, non_null, Log};
use crate::MappingStats;
use std::ffi::c_int;

/// [`MappingStats`] for C: every field a `uint64_t`, summed over devices.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphallocMappingStats {
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
    /// Waits for a stream's work before unmapping (real pressure only).
    pub waits: u64,
    /// Nanoseconds spent in those waits.
    pub wait_ns: u64,
    /// Fences (events) recorded by reclaims for the idle budget.
    pub fences: u64,
    /// Idle runs a budget reclaim left mapped, their stream's work not
    /// known to be done.
    pub deferred_unmaps: u64,
}

impl From<MappingStats> for GraphallocMappingStats {
    fn from(s: MappingStats) -> Self {
        GraphallocMappingStats {
            maps: s.maps,
            unmaps: s.unmaps,
            map_ns: s.map_ns,
            unmap_ns: s.unmap_ns,
            mapped_bytes: s.mapped_bytes,
            unmapped_bytes: s.unmapped_bytes,
            waits: s.waits,
            wait_ns: s.wait_ns,
            fences: s.fences,
            deferred_unmaps: s.deferred_unmaps,
        }
    }
}

/// Writes the process-wide allocator's mapping statistics (all devices)
/// to `*out`. Returns 0, or -1 on error (null `out`, allocator cannot be
/// built).
///
/// # Safety
/// `out` must be null or valid for writing one `GraphallocMappingStats`.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_mapping_stats(out: *mut GraphallocMappingStats) -> c_int {
    ffi_call("graphalloc_mapping_stats", -1, Log::Quiet, || {
        let out = non_null(out)?;
        let stats = allocator()?.mapping_stats();
        // SAFETY: `out` is not null, and the caller promises it is valid for
        // writing one `GraphallocMappingStats`; `write` needs no initialised
        // value.
        unsafe { out.write(stats.into()) };
        Ok(0)
    })
}
