//! The C ABI of out-of-memory observers (declared in
//! `include/graphalloc.h`): a function the process-wide allocator calls
//! with the report of each failed allocation ([`crate::OomReport`]), before
//! the failing call returns.
//!
//! The rules of the boundary are those of [`crate::ffi`]: no panic crosses
//! it, errors are `-1` with the reason in [`super::graphalloc_last_error`].

use super::{allocator, ffi_call, Log};
use crate::{Error, OomOwner, OomReport, OOM_LARGEST_LIVE};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

/// An out-of-memory report for C: the figures of [`OomReport`] and the
/// whole error message.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GraphallocOomReport {
    /// Device ordinal.
    pub device: i32,
    /// Which allocator ran out: 0 the device's cache, 1 the graph pool
    /// `pool`, 2 a planned pool being created.
    pub owner: i32,
    /// The graph pool's id for `owner == 1`, else 0.
    pub pool: u64,
    /// Bytes asked for.
    pub requested: u64,
    /// Free device memory as the driver reports it.
    pub device_free: u64,
    /// Total device memory as the driver reports it.
    pub device_total: u64,
    /// graphalloc's limit on the device (`memory_fraction`), 0 if none.
    pub limit: u64,
    /// Bytes graphalloc holds on the device.
    pub reserved: u64,
    /// Bytes in live blocks on the device.
    pub allocated: u64,
    /// Bytes the cache holds that no live block uses.
    pub cache_idle: u64,
    /// Bytes graph pools hold that no live block uses.
    pub pool_idle: u64,
    /// The largest free block.
    pub largest_free_block: u64,
    /// How many entries of the two arrays below are filled.
    pub largest_live_count: u64,
    /// Addresses of the largest live blocks, largest first.
    pub largest_live_addr: [u64; OOM_LARGEST_LIVE],
    /// Their sizes.
    pub largest_live_size: [u64; OOM_LARGEST_LIVE],
    /// The error message (figures, idle bytes, largest blocks, what to
    /// try), NUL-terminated; valid only during the call.
    pub message: *const c_char,
}

/// The observer: called with the report (valid only during the call) and
/// the `user_data` given to [`graphalloc_set_oom_observer`].
pub type GraphallocOomObserver =
    Option<unsafe extern "C" fn(report: *const GraphallocOomReport, user_data: *mut c_void)>;

/// The allocator's id of the observer set through C, if any.
static C_OBSERVER: Mutex<Option<u64>> = Mutex::new(None);

/// Calls `observer` as C expects.
fn call_observer(
    observer: unsafe extern "C" fn(*const GraphallocOomReport, *mut c_void),
    user_data: usize,
    r: &OomReport,
) {
    // Not called again for a failure of its own allocations: the
    // allocator does not notify its observers re-entrantly (`oom.rs`).
    let message = Error::from(r.clone()).to_string().replace('\0', " ");
    let message = CString::new(message).unwrap_or_default();
    let (owner, pool) = match r.owner {
        OomOwner::Cache => (0, 0),
        OomOwner::GraphPool(id) => (1, id),
        _ => (2, 0),
    };
    let mut report = GraphallocOomReport {
        device: i32::try_from(r.device).unwrap_or(i32::MAX),
        owner,
        pool,
        requested: r.requested as u64,
        device_free: r.device_free as u64,
        device_total: r.device_total as u64,
        limit: r.limit.unwrap_or(0) as u64,
        reserved: r.reserved as u64,
        allocated: r.allocated as u64,
        cache_idle: r.cache_idle as u64,
        pool_idle: r.pool_idle as u64,
        largest_free_block: r.largest_free_block as u64,
        largest_live_count: r.largest_live.len() as u64,
        largest_live_addr: [0; OOM_LARGEST_LIVE],
        largest_live_size: [0; OOM_LARGEST_LIVE],
        message: message.as_ptr(),
    };
    for (i, &(addr, size)) in r.largest_live.iter().take(OOM_LARGEST_LIVE).enumerate() {
        report.largest_live_addr[i] = addr;
        report.largest_live_size[i] = size as u64;
    }
    // SAFETY: the caller of graphalloc_set_oom_observer promised that the
    // function may be called from any thread with this user data until it
    // is replaced or cleared; `report` and its message live across the call.
    unsafe { observer(&report, user_data as *mut c_void) };
}

/// Sets the process-wide allocator's out-of-memory observer, replacing the
/// one set before (null clears it). The observer is called once per failed
/// allocation (of any thread, through C or Rust), before the failing call
/// returns, with no lock of the allocator held: it may call any
/// `graphalloc_*` function, `graphalloc_stats` and `graphalloc_malloc`
/// included (an allocation of its own that fails returns its error but is
/// not reported to the observer again, which could recurse without end).
/// Returns 0, or -1 if the allocator cannot be built.
///
/// # Safety
///
/// `observer` (if not null) must be safe to call from any thread that
/// allocates, with `user_data`, until it is replaced or cleared; a failure
/// being reported on another thread while it is replaced may still call
/// it once more. It must not unwind (a C function cannot).
#[no_mangle]
pub unsafe extern "C" fn graphalloc_set_oom_observer(
    observer: GraphallocOomObserver,
    user_data: *mut c_void,
) -> c_int {
    let user_data = user_data as usize;
    ffi_call("graphalloc_set_oom_observer", -1, Log::Quiet, || {
        let alloc = allocator()?;
        let mut current = C_OBSERVER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = current.take() {
            alloc.remove_out_of_memory_observer(id);
        }
        if let Some(f) = observer {
            *current = Some(alloc.on_out_of_memory(move |r| call_observer(f, user_data, r)));
        }
        Ok(0)
    })
}
