//! The C ABI's out-of-memory observer (`graphalloc_set_oom_observer`) on
//! the host backend, called as C would: once per failed
//! `graphalloc_malloc`, with a report that agrees with `graphalloc_stats`,
//! outside the allocator's locks (the observer itself calls
//! `graphalloc_stats` and `graphalloc_malloc`). One test: the process-wide
//! allocator is built once.

use graphalloc::ffi::*;
use std::ffi::{c_void, CStr};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const MIB: isize = 1 << 20;

/// What the observer saw: the report's figures, its message, and the
/// total statistics read from inside the observer.
#[derive(Debug, Clone)]
struct Seen {
    report: GraphallocOomReport,
    message: String,
    stats: GraphallocStats,
}

// SAFETY: the report's `message` pointer is set to null before a `Seen`
// is stored (the text is copied into `message`); nothing else in it is a
// pointer.
unsafe impl Send for Seen {}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

unsafe extern "C" fn observer(report: *const GraphallocOomReport, user_data: *mut c_void) {
    // SAFETY: graphalloc passes a report valid for the call, and the
    // user data given below: a pointer to a static counter.
    let (mut report, calls) = unsafe { (*report, &*(user_data as *const AtomicUsize)) };
    calls.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the message is NUL-terminated and valid during the call.
    let message = unsafe { CStr::from_ptr(report.message) }
        .to_string_lossy()
        .into_owned();
    report.message = std::ptr::null();
    let mut stats = GraphallocStats::default();
    // SAFETY: `stats` is writable.
    assert_eq!(unsafe { graphalloc_stats(&mut stats) }, 0);
    // SAFETY: null stream on the host backend.
    let p = unsafe { graphalloc_malloc(4096, 0, null_mut()) };
    assert!(!p.is_null(), "a small block fits");
    graphalloc_free(p, 4096, 0, null_mut());
    SEEN.lock().unwrap().push(Seen {
        report,
        message,
        stats,
    });
}

#[test]
fn the_c_observer_is_called_once_per_failed_malloc() {
    std::env::set_var("GRAPHALLOC_CONF", "backend:host,host_capacity:64MiB");
    graphalloc_set_log_errors(0);
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let user_data = &CALLS as *const AtomicUsize as *mut c_void;
    // SAFETY: `observer` may run on any thread with this user data (a
    // static), and does not unwind on these inputs.
    assert_eq!(
        unsafe { graphalloc_set_oom_observer(Some(observer), user_data) },
        0
    );
    // SAFETY (every malloc below): a null stream on the host backend.
    let big = unsafe { graphalloc_malloc(40 * MIB, 0, null_mut()) };
    assert!(!big.is_null());
    for _ in 0..3 {
        assert!(unsafe { graphalloc_malloc(40 * MIB, 0, null_mut()) }.is_null());
    }
    assert_eq!(CALLS.load(Ordering::SeqCst), 3, "once per failure");
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let Seen {
        report: r,
        message,
        stats: s,
    } = &seen[0];
    assert_eq!((r.device, r.owner, r.pool), (0, 0, 0));
    assert_eq!(r.requested, 40 << 20);
    assert_eq!(r.device_total, 64 << 20);
    assert_eq!(r.allocated, s.total.allocated_bytes);
    assert_eq!(r.reserved, s.total.reserved_bytes);
    assert_eq!(
        r.cache_idle,
        s.caching.reserved_bytes - s.caching.allocated_bytes
    );
    assert_eq!(r.largest_live_count, 1);
    assert_eq!(
        (r.largest_live_addr[0], r.largest_live_size[0]),
        (big as u64, 40 << 20)
    );
    assert!(message.contains("largest live blocks: 40.00 MiB") && message.contains("try:"));
    // Cleared: no more calls.
    // SAFETY: null clears the observer.
    assert_eq!(unsafe { graphalloc_set_oom_observer(None, null_mut()) }, 0);
    assert!(unsafe { graphalloc_malloc(40 * MIB, 0, null_mut()) }.is_null());
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    graphalloc_free(big, 0, 0, null_mut());
    // The process-wide allocator lives as long as the process: give its
    // cached segments back, so that a leak checker (Miri) finds nothing
    // held at exit.
    assert!(graphalloc_empty_cache() >= 0);
}
