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

/// The allocations of one "step": two temporaries and an output.
fn step() -> *mut c_void {
    let a = c_malloc(4 * MIB, 0, null_mut());
    let b = c_malloc(MIB, 0, null_mut());
    assert!(!a.is_null() && !b.is_null(), "{}", last_error());
    graphalloc_free(a, 0, 0, null_mut());
    let out = c_malloc(2 * MIB, 0, null_mut());
    graphalloc_free(b, 0, 0, null_mut());
    out
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
}
