//! The C ABI of planned pools (`graphalloc::ffi::plan`) on the host backend,
//! called as C would call it: record a run on a stream, plan a pool from
//! it, capture the run again in graph mode on the pool, read the figures;
//! and the errors. One test: the process-wide allocator is built once.

use graphalloc::ffi::plan::*;
use graphalloc::ffi::*;
use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};

const MIB: isize = 1 << 20;

/// `graphalloc_malloc` on the host backend.
fn c_malloc(size: isize, device: i32, stream: *mut c_void) -> *mut c_void {
    // SAFETY: the process-wide allocator is on the host backend, whose
    // stream handles are tags it checks and never dereferences.
    unsafe { graphalloc_malloc(size, device, stream) }
}

fn last_error() -> String {
    // SAFETY: graphalloc_last_error returns a NUL-terminated string that
    // stays valid until this thread's next graphalloc call; copied now.
    unsafe { CStr::from_ptr(graphalloc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The allocations of one "step" on `stream`: two temporaries and an output.
fn step_on(stream: *mut c_void) -> *mut c_void {
    let a = c_malloc(4 * MIB, 0, stream);
    let b = c_malloc(MIB, 0, stream);
    assert!(!a.is_null() && !b.is_null(), "{}", last_error());
    graphalloc_free(a, 0, 0, stream);
    let out = c_malloc(2 * MIB, 0, stream);
    graphalloc_free(b, 0, 0, stream);
    out
}

fn step() -> *mut c_void {
    step_on(null_mut())
}

fn plan_stats(pool: u64) -> GraphallocPlanStats {
    let mut out = GraphallocPlanStats::default();
    // SAFETY: `out` is a valid, writable GraphallocPlanStats.
    let rc = unsafe { graphalloc_plan_stats(pool, &mut out) };
    assert_eq!(rc, 0, "{}", last_error());
    out
}

#[test]
fn planned_pools_through_the_c_abi() {
    std::env::set_var("GRAPHALLOC_CONF", "backend:host,host_capacity:1GiB");
    let rec = graphalloc_plan_record_begin(0, null_mut());
    assert_ne!(rec, 0, "{}", last_error());
    // A running recording cannot be planned yet.
    // SAFETY: one readable u64.
    assert_eq!(unsafe { graphalloc_plan_pool_create(0, &rec, 1) }, 0);
    assert!(last_error().contains("has not ended"), "{}", last_error());
    let eager_out = step();
    assert_eq!(graphalloc_plan_record_end(rec), 3);
    assert_eq!(graphalloc_plan_record_end(rec), -1);
    graphalloc_free(eager_out, 0, 0, null_mut());
    let mut seen = [GraphallocRecordedAlloc::default(); 2];
    // SAFETY: null with capacity 0; `seen` is writable for 2 entries.
    unsafe {
        assert_eq!(graphalloc_plan_record_allocations(rec, null_mut(), 0), 3);
        assert_eq!(graphalloc_plan_record_allocations(rec, null_mut(), 1), -1);
        assert_eq!(
            graphalloc_plan_record_allocations(rec, seen.as_mut_ptr(), 2),
            3
        );
        assert_eq!(
            graphalloc_plan_record_allocations(999, seen.as_mut_ptr(), 2),
            -1
        );
    }
    let mib = MIB as u64;
    let a = GraphallocRecordedAlloc {
        size: 4 * mib,
        stream: 0,
        start: 0,
        end: 2,
    };
    let b = GraphallocRecordedAlloc {
        size: mib,
        stream: 0,
        start: 1,
        end: 4,
    };
    assert_eq!(seen, [a, b]); // the output (2 MiB at clock 3) outlives: end u64::MAX

    // SAFETY: one readable u64.
    let pool = unsafe { graphalloc_plan_pool_create(0, &rec, 1) };
    assert_ne!(pool, 0, "{}", last_error());
    let s = plan_stats(pool);
    assert_eq!((s.plans, s.planned_allocations), (1, 3));
    assert_eq!(s.peak_live_bytes, 5 << 20);
    assert_eq!(s.planned_bytes, 5 << 20);

    for round in 1..=2u64 {
        assert_eq!(graphalloc_plan_start(pool, 0), 0, "{}", last_error());
        assert_eq!(graphalloc_begin_graph_mode(pool), 0);
        let out = step();
        assert_eq!(graphalloc_end_graph_mode(), 0);
        let s = plan_stats(pool);
        assert_eq!((s.planned_hits, s.fallbacks), (3 * round, 0));
        graphalloc_free(out, 0, 0, null_mut());
    }
    let mut ps = GraphallocPoolStats::default();
    // SAFETY: `ps` is a valid, writable GraphallocPoolStats.
    assert_eq!(unsafe { graphalloc_pool_stats(pool, &mut ps) }, 0);
    assert_eq!(ps.peak_reserved_bytes, 5 << 20);

    // The same work captured on another stream (PyTorch makes a new stream
    // for each make_graphed_callables call): renamed, the plan is followed.
    let other = std::ptr::without_provenance_mut::<c_void>(1); // a built-in stream handle
    let rec2 = graphalloc_plan_record_begin(0, null_mut());
    graphalloc_free(step(), 0, 0, null_mut());
    assert_eq!(graphalloc_plan_record_end(rec2), 3);
    assert_eq!(
        graphalloc_plan_record_rename_stream(rec2, null_mut(), other),
        3
    );
    // SAFETY: one readable u64.
    let pool2 = unsafe { graphalloc_plan_pool_create(0, &rec2, 1) };
    assert_ne!(pool2, 0, "{}", last_error());
    assert_eq!(graphalloc_begin_graph_mode(pool2), 0);
    let out = step_on(other);
    assert_eq!(graphalloc_end_graph_mode(), 0);
    let s = plan_stats(pool2);
    assert_eq!((s.planned_hits, s.fallbacks), (3, 0));
    graphalloc_free(out, 0, 0, other);
    // (Merging two streams of a recording is refused: see Recording::rename_stream.)
    let rec3 = graphalloc_plan_record_begin(0, null_mut());
    assert_eq!(
        graphalloc_plan_record_rename_stream(rec3, null_mut(), other),
        -1
    );
    assert!(last_error().contains("has not ended"), "{}", last_error());
    let x = c_malloc(MIB, 0, null_mut());
    assert_eq!(graphalloc_plan_record_end(rec3), 1);
    assert_eq!(graphalloc_plan_record_rename_stream(rec2, other, other), 3);
    assert_eq!(
        graphalloc_plan_record_rename_stream(rec3, other, null_mut()),
        0
    );
    assert_eq!(
        graphalloc_plan_record_rename_stream(12345, null_mut(), other),
        -1
    );
    assert!(
        last_error().contains("unknown recording"),
        "{}",
        last_error()
    );
    graphalloc_free(x, 0, 0, null_mut());
    assert_eq!(graphalloc_plan_record_release(rec2), 0);
    assert_eq!(graphalloc_plan_record_release(rec3), 0);
    assert_eq!(graphalloc_pool_release(pool2), 0);

    // Errors.
    assert_eq!(graphalloc_plan_start(pool, 1), -1);
    assert!(last_error().contains("no plan 1"), "{}", last_error());
    let plain = graphalloc_pool_create(0);
    let mut out = GraphallocPlanStats::default();
    // SAFETY: `out` is valid and writable; null is refused.
    unsafe {
        assert_eq!(graphalloc_plan_stats(plain, &mut out), -1);
        assert_eq!(graphalloc_plan_stats(pool, null_mut()), -1);
        assert_eq!(graphalloc_plan_pool_create(0, null(), 1), 0);
        assert_eq!(graphalloc_plan_pool_create(0, &12345, 1), 0);
        assert_eq!(graphalloc_plan_pool_create(7, &rec, 1), 0);
    }
    assert_eq!(graphalloc_plan_record_begin(7, null_mut()), 0);
    assert_eq!(graphalloc_plan_record_release(rec), 0);
    assert_eq!(graphalloc_plan_record_release(rec), -1);
    assert_eq!(graphalloc_pool_release(pool), 0);
    assert_eq!(graphalloc_pool_release(plain), 0);
    // The process-wide allocator lives as long as the process: give its
    // cached segments back, so that a leak checker (Miri) finds nothing
    // held at exit.
    assert!(graphalloc_empty_cache() >= 0, "{}", last_error());
}
