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

/// [`MappingStats`] for C: every field a `uint64_t`, summed over devices
/// (the same `#[repr(C)]` struct).
pub type GraphallocMappingStats = MappingStats;

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
        unsafe { out.write(stats) };
        Ok(0)
    })
}
