//! The C ABI: graphalloc as a PyTorch pluggable allocator.
//!
//! `cargo build --release` builds `target/release/libgraphalloc.so`, which
//! exports the functions of this module under their own names (declared for C
//! in `include/graphalloc.h`). [`graphalloc_malloc`] and [`graphalloc_free`]
//! have the signatures PyTorch's `torch.cuda.memory.CUDAPluggableAllocator`
//! loads; the rest read statistics, release the cache, manage graph pools and
//! enter graph mode from C.
//!
//! Every function works on the process-wide allocator ([`crate::try_global`]),
//! built from `GRAPHALLOC_CONF` on first use.
//!
//! # Rules of the boundary
//!
//! - **No panic crosses it.** Every body runs under
//!   [`std::panic::catch_unwind`]; a panic is reported as an error like any
//!   other (this needs the default `panic = "unwind"`). The error reports on
//!   stderr are written inside the catch too, with a write that ignores its
//!   own failure, so a closed or broken stderr changes nothing.
//! - **Errors** are a null pointer, a zero pool id or a nonzero (`-1`) return,
//!   with the reason readable through [`graphalloc_last_error`]: a
//!   thread-local string, cleared on entry to every other `graphalloc_*` call
//!   of the thread, so it always describes the thread's latest call.
//!   [`graphalloc_malloc`] and [`graphalloc_free`] also print their errors to
//!   stderr (see [`graphalloc_set_log_errors`]): PyTorch does not look at
//!   anything but the pointer, so that is the only place its users see why.
//! - **Device ordinals** are honoured as given: a block comes from the device
//!   the caller names, and an ordinal the allocator does not have is an error.
//! - **Streams** (`cudaStream_t`, a pointer) are used by address, as the
//!   stream tag of [`crate::Allocator::allocate_on`]; the null (legacy
//!   default) stream is tag 0. The caller promises that a stream passed to
//!   [`graphalloc_malloc`] or [`graphalloc_record_stream`] is null or a live
//!   stream of the block's device, and stays live while a block allocated or
//!   recorded on it is live or waiting to be reused (PyTorch's own contract);
//!   on that promise each is registered on first sight
//!   ([`crate::Allocator::register_raw_stream`]).
//! - **Zero-byte requests** return null and are *not* an error (the last
//!   error stays empty), as PyTorch's own caching allocator does for size 0.
//!   [`graphalloc_free`] of null is a no-op.
//!
//! The error-reporting functions keep no lock across the call into the
//! allocator, so any function may be called from any thread.

// The loom build has no process-wide allocator; the C ABI exists only in the
// normal build.
#![cfg(not(all(loom, feature = "loom")))]

use crate::allocator::Allocator;
use crate::device_ptr::DevicePtr;
use crate::graph_pool::GraphPool;
use crate::mode::GraphModeGuard;
use crate::stats::PoolStats;
use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[path = "ffi_plan.rs"]
pub mod plan;

#[path = "ffi_oom.rs"]
mod oom;
pub use oom::{graphalloc_set_oom_observer, GraphallocOomObserver, GraphallocOomReport};

#[path = "ffi_history.rs"]
pub mod history;

#[path = "ffi_mapping.rs"]
mod mapping;
pub use mapping::{graphalloc_mapping_stats, GraphallocMappingStats};

/// The version of this C ABI, as [`graphalloc_abi_version`] reports it.
/// Raised whenever a signature or a `#[repr(C)]` layout changes.
pub const ABI_VERSION: u32 = 2;

/// The alignment of every block [`graphalloc_malloc`] hands out (that of
/// PyTorch's caching allocator).
pub const MALLOC_ALIGNMENT: usize = 512;

/// One owner's figures ([`PoolStats`]) for C: every field a `uint64_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphallocPoolStats {
    /// Bytes in live blocks (requests rounded up to 512 B).
    pub allocated_bytes: u64,
    /// The highest `allocated_bytes` reached.
    pub peak_allocated_bytes: u64,
    /// Bytes asked for by the live allocations, before rounding.
    pub requested_bytes: u64,
    /// Bytes of device memory held in segments.
    pub reserved_bytes: u64,
    /// The highest `reserved_bytes` reached.
    pub peak_reserved_bytes: u64,
    /// Live blocks.
    pub live_blocks: u64,
    /// Allocations served, ever.
    pub allocations: u64,
    /// Frees served, ever.
    pub frees: u64,
    /// Times an allocation found the device full, released cached segments
    /// and retried.
    pub oom_retries: u64,
    /// Segments held now.
    pub segments: u64,
    /// Segments reserved from the device, ever.
    pub segments_reserved: u64,
    /// Freed blocks not yet reusable: they wait for events on the streams
    /// that used them ([`graphalloc_record_stream`]), or for a capture on
    /// their stream to end. Added in ABI version 2.
    pub pending_frees: u64,
}

impl From<PoolStats> for GraphallocPoolStats {
    fn from(s: PoolStats) -> Self {
        GraphallocPoolStats {
            allocated_bytes: s.allocated_bytes as u64,
            peak_allocated_bytes: s.peak_allocated_bytes as u64,
            requested_bytes: s.requested_bytes as u64,
            reserved_bytes: s.reserved_bytes as u64,
            peak_reserved_bytes: s.peak_reserved_bytes as u64,
            live_blocks: s.live_blocks as u64,
            allocations: s.allocations,
            frees: s.frees,
            oom_retries: s.oom_retries,
            segments: s.segments as u64,
            segments_reserved: s.segments_reserved,
            pending_frees: s.pending_frees as u64,
        }
    }
}

/// The process-wide allocator's statistics ([`crate::MemoryUsageStats`]) for
/// C.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphallocStats {
    /// The caching allocators, summed over devices.
    pub caching: GraphallocPoolStats,
    /// The graph pools, summed (also those already released).
    pub pools: GraphallocPoolStats,
    /// Everything.
    pub total: GraphallocPoolStats,
    /// 1 if the calling thread is in graph mode, else 0.
    pub in_graph_mode: i32,
    /// Number of devices the allocator manages.
    pub device_count: i32,
}

// ---------------------------------------------------------------------------
// Errors and the panic-free call wrapper.

thread_local! {
    /// The latest error of this thread's latest `graphalloc_*` call.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// The graph-mode guards entered through [`graphalloc_begin_graph_mode`]
    /// on this thread, innermost last.
    static GUARDS: RefCell<Vec<GraphModeGuard>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`graphalloc_malloc`] and [`graphalloc_free`] print their errors.
static LOG_ERRORS: AtomicBool = AtomicBool::new(true);

/// Whether a failed nonzero [`graphalloc_malloc`] aborts the process.
static ABORT_ON_MALLOC_FAILURE: AtomicBool = AtomicBool::new(false);

/// The graph pools created through [`graphalloc_pool_create`], by id.
static POOLS: Mutex<BTreeMap<u64, GraphPool>> = Mutex::new(BTreeMap::new());

fn pools() -> MutexGuard<'static, BTreeMap<u64, GraphPool>> {
    // No code panics while holding this lock with the map half-updated.
    POOLS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn clear_error() {
    // During thread teardown the slot may be gone; there is nothing to clear.
    let _ = LAST_ERROR.try_with(|e| e.borrow_mut().take());
}

fn set_error(message: String) {
    let text = CString::new(message).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|&b| b != 0);
        CString::new(bytes).unwrap_or_default()
    });
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = Some(text));
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Drops a caught panic's payload. Dropping one could itself panic: that
/// panic is caught too, and its payload leaked rather than risk another.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Whether an exported call logs its errors to stderr.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Log {
    Quiet,
    Stderr,
}

/// Writes `graphalloc: {message}` to stderr without ever panicking: a
/// closed pipe or a full disk must not turn an error report into a panic at
/// the C boundary (`eprintln!` panics when the write fails).
fn print_error(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "graphalloc: {message}");
}

/// Runs `body` as the body of the exported function `name`: clears the last
/// error, catches any panic, and turns an error or a panic into `on_error`
/// plus a last-error message. Everything it does, the error report on stderr
/// included, runs inside `catch_unwind`, so nothing can unwind out of it.
fn ffi_call<T>(name: &str, on_error: T, log: Log, body: impl FnOnce() -> Result<T, String>) -> T {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        clear_error();
        let message = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(reason)) => format!("{name}: {reason}"),
            Err(payload) => {
                let text = format!("{name}: panicked: {}", panic_message(&*payload));
                drop_payload(payload);
                text
            }
        };
        if log == Log::Stderr && LOG_ERRORS.load(Ordering::Relaxed) {
            print_error(format_args!("{message}"));
        }
        set_error(message);
        None
    }));
    match outcome {
        Ok(Some(value)) => value,
        Ok(None) => on_error,
        Err(payload) => {
            // Only reporting the error can get here (formatting, say); the
            // error value is still the right answer.
            drop_payload(payload);
            on_error
        }
    }
}

fn allocator() -> Result<&'static Allocator, String> {
    crate::global::try_global().map_err(|e| format!("cannot build the process-wide allocator: {e}"))
}

fn device_index(alloc: &Allocator, device: c_int) -> Result<usize, String> {
    let count = alloc.device_count();
    usize::try_from(device)
        .ok()
        .filter(|&d| d < count)
        .ok_or_else(|| {
            format!("device {device} does not exist: the allocator has {count} device(s)")
        })
}

fn registered_pool(pool: u64) -> Result<GraphPool, String> {
    pools()
        .get(&pool)
        .cloned()
        .ok_or_else(|| format!("unknown graph pool {pool}"))
}

fn non_null<T>(out: *mut T) -> Result<*mut T, String> {
    if out.is_null() {
        Err("null output pointer".into())
    } else {
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Allocation.

/// Allocates `size` bytes on `device` for use on `stream`; PyTorch's
/// `CUDAPluggableAllocator` allocation function.
///
/// Returns a pointer aligned to 512 bytes, or null: for `size == 0` (not an
/// error), or on an error (negative size, invalid device, out of memory, ...)
/// whose reason [`graphalloc_last_error`] gives and which is also printed to
/// stderr. In graph mode on a pool of `device`, or while `stream` is being
/// captured into a CUDA graph, the block comes from a graph pool.
///
/// After [`graphalloc_set_abort_on_malloc_failure`]`(1)` an error aborts the
/// process instead, after printing it.
///
/// # Safety
///
/// `stream` is null or a live stream of `device` (a `cudaStream_t` on
/// CUDA), and stays live while a block allocated or recorded on it is live
/// or waiting to be reused (module docs, **Streams**): it is registered on
/// first sight and later handed to the driver. Any size and device are
/// safe (refused with an error).
#[no_mangle]
pub unsafe extern "C" fn graphalloc_malloc(
    size: isize,
    device: c_int,
    stream: *mut c_void,
) -> *mut c_void {
    // SAFETY: this function's contract on `stream`, passed on.
    let ptr = unsafe { malloc_body(size, device, stream) };
    if ptr.is_null() && size != 0 && ABORT_ON_MALLOC_FAILURE.load(Ordering::Relaxed) {
        // Nothing here may panic (a panic cannot unwind out of this
        // function): the reports use a write that ignores its errors.
        if !LOG_ERRORS.load(Ordering::Relaxed) {
            // Not printed by the wrapper: print it now, it is the last word.
            let reason = graphalloc_last_error();
            // SAFETY: graphalloc_last_error returns a NUL-terminated string
            // that stays valid until this thread's next graphalloc call.
            let reason = unsafe { std::ffi::CStr::from_ptr(reason) };
            print_error(format_args!("{}", reason.to_string_lossy()));
        }
        print_error(format_args!(
            "aborting: graphalloc_malloc({size}, device {device}) failed \
             and abort-on-failure is set (PyTorch cannot handle a failed allocation)"
        ));
        std::process::abort();
    }
    ptr
}

/// # Safety
///
/// As [`graphalloc_malloc`]'s.
unsafe fn malloc_body(size: isize, device: c_int, stream: *mut c_void) -> *mut c_void {
    ffi_call(
        "graphalloc_malloc",
        std::ptr::null_mut(),
        Log::Stderr,
        || {
            let alloc = allocator()?;
            let device = device_index(alloc, device)?;
            let size = usize::try_from(size).map_err(|_| format!("negative size {size}"))?;
            if size == 0 {
                return Ok(std::ptr::null_mut());
            }
            // SAFETY: the caller's contract on `stream` (graphalloc_malloc's).
            let stream = unsafe { accept_stream(alloc, device, stream) };
            let ptr = alloc
                .allocate_on(device, stream, size, MALLOC_ALIGNMENT)
                .map_err(|e| e.to_string())?;
            Ok(ptr.addr() as usize as *mut c_void)
        },
    )
}

/// Frees a pointer from [`graphalloc_malloc`]; PyTorch's
/// `CUDAPluggableAllocator` free function.
///
/// The block goes back to its owner (a device's cache or a graph pool) by
/// its address alone: `size`, `device` and `stream` are accepted for
/// PyTorch's signature and not needed. Null is a no-op. A pointer graphalloc
/// does not know (unknown, already freed, interior) changes nothing and is
/// reported through [`graphalloc_last_error`] and stderr.
#[no_mangle]
pub extern "C" fn graphalloc_free(
    ptr: *mut c_void,
    size: isize,
    device: c_int,
    stream: *mut c_void,
) {
    let _ = (size, device, stream);
    ffi_call("graphalloc_free", (), Log::Stderr, || {
        if ptr.is_null() {
            return Ok(());
        }
        let alloc = allocator()?;
        alloc
            .free(DevicePtr::new(ptr as usize as u64))
            .map_err(|e| e.to_string())
    })
}

// ---------------------------------------------------------------------------
// Errors, version, statistics, cache.

/// The reason for the calling thread's latest failed `graphalloc_*` call, or
/// an empty string if that call succeeded. Never null.
///
/// The string stays valid until the thread's next `graphalloc_*` call (other
/// than this one). Errors are per thread: an error of a call PyTorch made on
/// another thread (its autograd threads, say) is not visible here, but
/// [`graphalloc_malloc`] and [`graphalloc_free`] print theirs to stderr.
#[no_mangle]
pub extern "C" fn graphalloc_last_error() -> *const c_char {
    const EMPTY: &[u8] = b"\0";
    let found = catch_unwind(|| {
        LAST_ERROR
            .try_with(|e| e.borrow().as_ref().map(|s| s.as_ptr()))
            .ok()
            .flatten()
    });
    match found {
        // The CString lives in the thread-local slot until it is replaced or
        // cleared, which only this thread's next graphalloc call does.
        Ok(Some(ptr)) => ptr,
        _ => EMPTY.as_ptr().cast(),
    }
}

/// Whether [`graphalloc_malloc`] and [`graphalloc_free`] print their errors
/// to stderr (`enabled != 0`, the default) or only record them.
#[no_mangle]
pub extern "C" fn graphalloc_set_log_errors(enabled: c_int) {
    ffi_call("graphalloc_set_log_errors", (), Log::Quiet, || {
        LOG_ERRORS.store(enabled != 0, Ordering::Relaxed);
        Ok(())
    })
}

/// Whether a [`graphalloc_malloc`] of a nonzero size that fails aborts the
/// process (`enabled != 0`) after printing why, instead of returning null
/// (the default).
///
/// For PyTorch: its `CUDAPluggableAllocator` (2.11) does not check the
/// pointer, so a null from an allocation that failed becomes a tensor at
/// address 0 and, at its first use, an "illegal memory access" that breaks
/// the CUDA context. Aborting at once with the reason is the clearer end;
/// `graphalloc.torch.use()` turns it on.
#[no_mangle]
pub extern "C" fn graphalloc_set_abort_on_malloc_failure(enabled: c_int) {
    ffi_call(
        "graphalloc_set_abort_on_malloc_failure",
        (),
        Log::Quiet,
        || {
            ABORT_ON_MALLOC_FAILURE.store(enabled != 0, Ordering::Relaxed);
            Ok(())
        },
    )
}

/// The version of this C ABI ([`ABI_VERSION`]).
#[no_mangle]
pub extern "C" fn graphalloc_abi_version() -> u32 {
    ffi_call("graphalloc_abi_version", ABI_VERSION, Log::Quiet, || {
        Ok(ABI_VERSION)
    })
}

/// Number of devices the process-wide allocator manages, or -1 on error
/// (when the allocator cannot be built).
#[no_mangle]
pub extern "C" fn graphalloc_device_count() -> c_int {
    ffi_call("graphalloc_device_count", -1, Log::Quiet, || {
        let count = allocator()?.device_count();
        c_int::try_from(count).map_err(|_| format!("{count} devices do not fit an int"))
    })
}

/// Writes the process-wide allocator's statistics to `*out`. Returns 0, or
/// -1 on error (null `out`, allocator cannot be built).
///
/// # Safety
/// `out` must be null or valid for writing one `GraphallocStats`.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_stats(out: *mut GraphallocStats) -> c_int {
    ffi_call("graphalloc_stats", -1, Log::Quiet, || {
        let out = non_null(out)?;
        let alloc = allocator()?;
        let s = alloc.stats();
        let stats = GraphallocStats {
            caching: s.caching.into(),
            pools: s.pools.into(),
            total: s.total.into(),
            in_graph_mode: i32::from(s.in_graph_mode),
            device_count: i32::try_from(alloc.device_count()).unwrap_or(i32::MAX),
        };
        // SAFETY: `out` is not null, and the caller promises it is valid for
        // writing one `GraphallocStats`; `write` needs no initialised value.
        unsafe { out.write(stats) };
        Ok(0)
    })
}

/// Writes the statistics of `device`'s caching allocator to `*out`. Returns
/// 0, or -1 on error (null `out`, invalid device).
///
/// # Safety
/// `out` must be null or valid for writing one `GraphallocPoolStats`.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_device_stats(
    device: c_int,
    out: *mut GraphallocPoolStats,
) -> c_int {
    ffi_call("graphalloc_device_stats", -1, Log::Quiet, || {
        let out = non_null(out)?;
        let alloc = allocator()?;
        let device = device_index(alloc, device)?;
        let stats = alloc.device_stats(device).map_err(|e| e.to_string())?;
        // SAFETY: `out` is not null, and the caller promises it is valid for
        // writing one `GraphallocPoolStats`.
        unsafe { out.write(stats.into()) };
        Ok(0)
    })
}

/// Writes the statistics of graph pool `pool` to `*out`. Returns 0, or -1 on
/// error (null `out`, unknown pool).
///
/// # Safety
/// `out` must be null or valid for writing one `GraphallocPoolStats`.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_pool_stats(pool: u64, out: *mut GraphallocPoolStats) -> c_int {
    ffi_call("graphalloc_pool_stats", -1, Log::Quiet, || {
        let out = non_null(out)?;
        let stats = registered_pool(pool)?.stats();
        // SAFETY: `out` is not null, and the caller promises it is valid for
        // writing one `GraphallocPoolStats`.
        unsafe { out.write(stats.into()) };
        Ok(0)
    })
}

/// Restarts the peaks of every device's caching allocator from now. Returns
/// 0, or -1 on error.
#[no_mangle]
pub extern "C" fn graphalloc_reset_peak_stats() -> c_int {
    ffi_call("graphalloc_reset_peak_stats", -1, Log::Quiet, || {
        allocator()?.reset_peak_stats();
        Ok(0)
    })
}

/// Releases every cached, unused segment of every device's caching
/// allocator (graph pools keep theirs). Returns the bytes released, or -1 on
/// error.
#[no_mangle]
pub extern "C" fn graphalloc_empty_cache() -> i64 {
    ffi_call("graphalloc_empty_cache", -1, Log::Quiet, || {
        let released = allocator()?.empty_cache().map_err(|e| e.to_string())?;
        Ok(i64::try_from(released).unwrap_or(i64::MAX))
    })
}

// ---------------------------------------------------------------------------
// Graph pools and graph mode.

/// Creates a graph pool on `device` and returns its id (never 0), or 0 on
/// error (invalid device). The pool lives until [`graphalloc_pool_release`].
#[no_mangle]
pub extern "C" fn graphalloc_pool_create(device: c_int) -> u64 {
    ffi_call("graphalloc_pool_create", 0, Log::Quiet, || {
        let alloc = allocator()?;
        let device = device_index(alloc, device)?;
        let pool = alloc.create_pool_on(device).map_err(|e| e.to_string())?;
        let id = pool.id();
        pools().insert(id, pool);
        Ok(id)
    })
}

/// Drops the C handle of graph pool `pool`. Returns 0, or -1 if the id is
/// unknown (never created, or already released).
///
/// Like dropping a [`GraphPool`]: blocks still live in the pool stay valid
/// and free normally, a thread still in graph mode on it keeps allocating
/// from it, and the pool's memory goes back to the device once neither is
/// left.
#[no_mangle]
pub extern "C" fn graphalloc_pool_release(pool: u64) -> c_int {
    ffi_call("graphalloc_pool_release", -1, Log::Quiet, || {
        // Dropped after the registry lock is released: dropping the last
        // handle releases the pool's segments.
        let removed = pools().remove(&pool);
        match removed {
            Some(_) => Ok(0),
            None => Err(format!("unknown graph pool {pool}")),
        }
    })
}

/// Makes graph pool `pool` reusable for a new capture ([`GraphPool::reset`]).
/// Returns 0, or -1 on error (unknown pool, or blocks of it still live).
#[no_mangle]
pub extern "C" fn graphalloc_pool_reset(pool: u64) -> c_int {
    ffi_call("graphalloc_pool_reset", -1, Log::Quiet, || {
        let pool = registered_pool(pool)?;
        allocator()?
            .reset_graph_pool(&pool)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Puts the calling thread in graph mode on `pool`: until the matching
/// [`graphalloc_end_graph_mode`], this thread's [`graphalloc_malloc`] calls
/// for the pool's device are served from the pool. Calls nest. Returns 0, or
/// -1 on error (unknown pool).
///
/// Graph mode is per thread: allocations PyTorch makes on other threads
/// (the autograd engine's, during `backward`) are not affected.
#[no_mangle]
pub extern "C" fn graphalloc_begin_graph_mode(pool: u64) -> c_int {
    ffi_call("graphalloc_begin_graph_mode", -1, Log::Quiet, || {
        let pool = registered_pool(pool)?;
        let guard = allocator()?
            .enter_graph_mode(&pool)
            .map_err(|e| e.to_string())?;
        GUARDS
            .try_with(|g| g.borrow_mut().push(guard))
            .map_err(|_| "the thread is shutting down".to_string())?;
        Ok(0)
    })
}

/// Leaves the calling thread's innermost graph mode entered with
/// [`graphalloc_begin_graph_mode`]. Returns 0, or -1 if this thread has none.
#[no_mangle]
pub extern "C" fn graphalloc_end_graph_mode() -> c_int {
    ffi_call("graphalloc_end_graph_mode", -1, Log::Quiet, || {
        let guard = GUARDS
            .try_with(|g| g.borrow_mut().pop())
            .map_err(|_| "the thread is shutting down".to_string())?;
        match guard {
            Some(guard) => {
                drop(guard);
                Ok(0)
            }
            None => Err("the calling thread is not in graph mode \
                         (no graphalloc_begin_graph_mode to end)"
                .into()),
        }
    })
}

/// How many [`graphalloc_begin_graph_mode`] calls of the calling thread are
/// not yet ended.
#[no_mangle]
pub extern "C" fn graphalloc_graph_mode_depth() -> c_int {
    ffi_call("graphalloc_graph_mode_depth", -1, Log::Quiet, || {
        let depth = GUARDS.try_with(|g| g.borrow().len()).unwrap_or(0);
        Ok(c_int::try_from(depth).unwrap_or(c_int::MAX))
    })
}

// ---------------------------------------------------------------------------
// Streams and captures.

/// Marks the live block at `ptr` as used by `stream` as well as the stream it
/// was allocated on (PyTorch's `record_stream`): when it is freed, it is not
/// reused until the work queued on `stream` by then has completed. Returns
/// 0, or -1 on error (pointer not live, unknown stream).
///
/// # Safety
///
/// `stream` is null or a live stream of the block's device, and stays live
/// while the block is live or waiting to be reused (module docs,
/// **Streams**): it is registered on first sight and later handed to the
/// driver. Any `ptr` is safe (one that is not live is refused).
#[no_mangle]
pub unsafe extern "C" fn graphalloc_record_stream(ptr: *mut c_void, stream: *mut c_void) -> c_int {
    ffi_call("graphalloc_record_stream", -1, Log::Quiet, || {
        let (alloc, ptr) = (allocator()?, DevicePtr::new(ptr as usize as u64));
        let stream = match alloc.device_of(ptr) {
            // SAFETY: this function's contract on `stream`.
            Some(device) => unsafe { accept_stream(alloc, device, stream) },
            None => stream as usize as u64, // refused below: not live
        };
        alloc
            .record_stream(ptr, stream)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Registers a `cudaStream_t` from C on `device` (idempotent) and returns
/// its tag.
///
/// # Safety
///
/// As [`graphalloc_malloc`]'s: `stream` is null or a live stream of `device`
/// while blocks name it.
unsafe fn accept_stream(alloc: &Allocator, device: usize, stream: *mut c_void) -> u64 {
    let stream = stream as usize as u64;
    // SAFETY: the caller's contract (this function's, passed on from the
    // unsafe C entry points). `device` is one of the allocator's, so this
    // cannot fail.
    let _ = unsafe { alloc.register_raw_stream(device, stream) };
    stream
}

/// Routes allocations on `stream` (on the pool's device) to graph pool
/// `pool` whenever that stream is being captured into a CUDA graph and the
/// thread is not in graph mode; replaces an earlier registration for the
/// stream. Without one, each capture gets a pool made on demand. Returns 0,
/// or -1 on error (unknown pool).
#[no_mangle]
pub extern "C" fn graphalloc_set_capture_pool(pool: u64, stream: *mut c_void) -> c_int {
    ffi_call("graphalloc_set_capture_pool", -1, Log::Quiet, || {
        let pool = registered_pool(pool)?;
        allocator()?
            .set_capture_pool(stream as usize as u64, &pool)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Ends the registration of [`graphalloc_set_capture_pool`] for `stream` on
/// `device`. Returns 0, or -1 on error (invalid device, or no pool was
/// registered for the stream).
#[no_mangle]
pub extern "C" fn graphalloc_clear_capture_pool(device: c_int, stream: *mut c_void) -> c_int {
    ffi_call("graphalloc_clear_capture_pool", -1, Log::Quiet, || {
        let alloc = allocator()?;
        let device = device_index(alloc, device)?;
        let stream = stream as usize as u64;
        match alloc.clear_capture_pool(device, stream) {
            Some(_) => Ok(0),
            None => Err(format!(
                "no capture pool is registered for stream {stream:#x} on device {device}"
            )),
        }
    })
}

/// Lets go of the pools made on demand for captures (those not registered
/// with [`graphalloc_set_capture_pool`]); call it once the graphs captured
/// into them are destroyed (PyTorch does not tell a pluggable allocator).
/// Each pool's memory goes back to the device once its last block is freed.
/// Returns how many pools were let go, or -1 on error.
#[no_mangle]
pub extern "C" fn graphalloc_release_capture_pools() -> i64 {
    ffi_call("graphalloc_release_capture_pools", -1, Log::Quiet, || {
        let released = allocator()?.release_capture_pools();
        Ok(i64::try_from(released).unwrap_or(i64::MAX))
    })
}

// ---------------------------------------------------------------------------
// Test hook.

/// Panics inside the same wrapper every exported function uses, and returns
/// what a caught panic turns into: -1, with the panic message as the last
/// error.
///
/// Exported so that integration tests (which see no `cfg(test)` code of the
/// library) and C callers can check that no panic crosses the boundary. It
/// touches no allocator state. Not part of the supported API.
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn graphalloc_test_panic() -> c_int {
    ffi_call("graphalloc_test_panic", -1, Log::Quiet, || {
        panic!("graphalloc_test_panic: deliberate panic")
    })
}
