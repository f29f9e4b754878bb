//! Graph mode on the host backend: the per-thread, per-allocator stack of
//! pools kept by `GraphModeGuard`, `graph_mode` and `with_graph_mode`.

mod support;

use graphalloc::{
    graph_mode, is_graph_mode, with_graph_mode, Allocator, DeviceAllocator, DevicePtr, Error,
    GraphModeGuard, GraphPool, PoolStats,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Barrier;
use support::{host_allocator, MIB};

// ---------------------------------------------------------------------------
// Compile-time check: `GraphModeGuard` is neither `Send` nor `Sync`.
//
// `<T as AmbiguousIfX<_>>` resolves only if exactly one impl applies: the
// blanket one. If `T` were `Send` (or `Sync`), the second impl would apply
// too and this file would fail to compile with "type annotations needed".
// ---------------------------------------------------------------------------

trait AmbiguousIfSend<A> {
    fn some_item() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
#[allow(dead_code)]
struct IsSend;
impl<T: ?Sized + Send> AmbiguousIfSend<IsSend> for T {}

trait AmbiguousIfSync<A> {
    fn some_item() {}
}
impl<T: ?Sized> AmbiguousIfSync<()> for T {}
#[allow(dead_code)]
struct IsSync;
impl<T: ?Sized + Sync> AmbiguousIfSync<IsSync> for T {}

const _: fn() = || {
    let _ = <GraphModeGuard as AmbiguousIfSend<_>>::some_item;
    let _ = <GraphModeGuard as AmbiguousIfSync<_>>::some_item;
};

#[test]
fn graph_mode_guard_is_not_send() {
    // The check is the `const _` above; this test only documents it and
    // makes sure the pools themselves can be shared between threads.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GraphPool>();
    assert_send_sync::<Allocator>();
}

/// Allocates 4 KiB and tells whether it came from `pool` (by its live count).
fn allocate_counting(alloc: &Allocator, pool: &GraphPool) -> (DevicePtr, bool) {
    let before = pool.stats().allocations;
    let p = alloc.allocate(4096, 512).unwrap();
    (p, pool.stats().allocations == before + 1)
}

#[test]
fn is_graph_mode_is_true_only_inside_the_guard() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    assert!(!is_graph_mode());
    assert!(!alloc.is_graph_mode());
    assert!(!DeviceAllocator::is_graph_mode(&alloc));
    assert!(!alloc.stats().in_graph_mode);
    {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        assert!(is_graph_mode());
        assert!(alloc.is_graph_mode());
        assert!(DeviceAllocator::is_graph_mode(&alloc));
        assert!(alloc.stats().in_graph_mode);
    }
    assert!(!is_graph_mode());
    assert!(!alloc.is_graph_mode());
    assert!(!alloc.stats().in_graph_mode);
    {
        // The free function works for any allocator's pool.
        let _g = graph_mode(&pool);
        assert!(is_graph_mode());
        assert!(alloc.is_graph_mode());
        let (p, pooled) = allocate_counting(&alloc, &pool);
        assert!(pooled);
        alloc.free(p).unwrap();
    }
    assert!(!is_graph_mode());
    assert!(!alloc.is_graph_mode());
}

#[test]
fn graph_mode_is_per_thread() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let barrier = Barrier::new(2);
    let mut eager = None;
    std::thread::scope(|s| {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        let other = s.spawn(|| {
            barrier.wait(); // the main thread is in graph mode now
            assert!(!is_graph_mode());
            assert!(!alloc.is_graph_mode());
            assert!(!alloc.stats().in_graph_mode);
            let p = alloc.allocate(4096, 512).unwrap();
            barrier.wait(); // still in graph mode over there
            p
        });
        barrier.wait();
        let (p, pooled) = allocate_counting(&alloc, &pool);
        assert!(pooled, "this thread allocates from the pool");
        barrier.wait();
        eager = Some(other.join().unwrap());
        assert!(
            alloc.is_graph_mode(),
            "the other thread did not end our mode"
        );
        alloc.free(p).unwrap();
    });
    let s = alloc.stats();
    assert_eq!(
        s.caching.live_blocks, 1,
        "the other thread got a cache block"
    );
    assert_eq!(s.caching.allocations, 1);
    assert_eq!(pool.stats().allocations, 1);
    alloc.free(eager.unwrap()).unwrap();
}

#[test]
fn a_pool_of_one_allocator_does_not_put_another_in_graph_mode() {
    let (_hx, x) = host_allocator(64 * MIB);
    let (_hy, y) = host_allocator(64 * MIB);
    let pool = x.create_pool();
    let _g = graph_mode(&pool);
    assert!(is_graph_mode(), "the thread is in graph mode");
    assert!(x.is_graph_mode());
    assert!(!y.is_graph_mode(), "but not for allocator Y");
    assert!(!y.stats().in_graph_mode);
    let p = y.allocate(4096, 512).unwrap();
    assert_eq!(
        y.stats().caching.live_blocks,
        1,
        "Y allocates from its cache"
    );
    assert_eq!(y.stats().pools.live_blocks, 0);
    assert_eq!(pool.stats(), PoolStats::default());
    y.free(p).unwrap();
}

#[test]
fn entering_graph_mode_with_a_foreign_pool_is_an_error() {
    let (_hx, x) = host_allocator(64 * MIB);
    let (_hy, y) = host_allocator(64 * MIB);
    let pool = x.create_pool();
    let foreign = Error::ForeignPool { pool: pool.id() };
    assert_eq!(y.enter_graph_mode(&pool).unwrap_err(), foreign);
    assert_eq!(
        DeviceAllocator::enter_graph_mode(&y, &pool).unwrap_err(),
        foreign
    );
    let mut ran = false;
    assert_eq!(
        y.with_graph_mode(&pool, || ran = true),
        Err(foreign.clone())
    );
    assert!(!ran, "f does not run for a foreign pool");
    assert_eq!(y.set_capture_pool(0x5757_0000, &pool), Err(foreign));
    assert!(!is_graph_mode(), "nothing was pushed");
    assert!(!x.is_graph_mode() && !y.is_graph_mode());
}

#[test]
fn nested_guards_inner_pool_wins_and_outer_is_restored() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let (outer, inner) = (alloc.create_pool(), alloc.create_pool());
    let _o = alloc.enter_graph_mode(&outer).unwrap();
    let (a, in_outer) = allocate_counting(&alloc, &outer);
    assert!(in_outer);
    {
        let _i = alloc.enter_graph_mode(&inner).unwrap();
        let (b, in_inner) = allocate_counting(&alloc, &inner);
        assert!(in_inner, "the inner pool wins");
        assert_eq!(outer.stats().allocations, 1);
        alloc.free(b).unwrap();
    }
    assert!(alloc.is_graph_mode(), "the outer guard still holds");
    let (c, in_outer) = allocate_counting(&alloc, &outer);
    assert!(in_outer, "the outer pool is current again");
    assert_eq!(inner.stats().allocations, 1);
    drop(_o);
    assert!(!alloc.is_graph_mode());
    let (d, in_outer) = allocate_counting(&alloc, &outer);
    assert!(!in_outer);
    assert_eq!(alloc.stats().caching.live_blocks, 1);
    for p in [a, c, d] {
        alloc.free(p).unwrap();
    }
}

#[test]
fn the_same_pool_entered_twice_stays_current_until_both_guards_drop() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let g1 = alloc.enter_graph_mode(&pool).unwrap();
    let g2 = alloc.enter_graph_mode(&pool).unwrap();
    drop(g2);
    assert!(alloc.is_graph_mode());
    let (p, pooled) = allocate_counting(&alloc, &pool);
    assert!(pooled);
    drop(g1);
    assert!(!alloc.is_graph_mode());
    alloc.free(p).unwrap();
}

#[test]
fn with_graph_mode_nests_and_restores() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let (outer, inner) = (alloc.create_pool(), alloc.create_pool());
    let ptrs = with_graph_mode(&outer, || {
        assert!(alloc.is_graph_mode());
        let a = alloc.allocate(4096, 512).unwrap();
        let b = alloc
            .with_graph_mode(&inner, || {
                assert!(is_graph_mode());
                alloc.allocate(4096, 512).unwrap()
            })
            .unwrap();
        assert!(alloc.is_graph_mode(), "outer restored");
        let c = alloc.allocate(4096, 512).unwrap();
        [a, b, c]
    });
    assert!(!is_graph_mode());
    assert!(!alloc.is_graph_mode());
    assert_eq!(outer.stats().live_blocks, 2);
    assert_eq!(inner.stats().live_blocks, 1);
    assert_eq!(alloc.stats().caching.allocations, 0);
    for p in ptrs {
        alloc.free(p).unwrap();
    }
}

#[test]
fn the_guard_restores_the_mode_when_the_scope_panics() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let (outer, inner) = (alloc.create_pool(), alloc.create_pool());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _g = alloc.enter_graph_mode(&inner).unwrap();
        assert!(alloc.is_graph_mode());
        panic!("boom inside graph mode");
    }));
    assert!(result.is_err());
    assert!(!is_graph_mode(), "out of graph mode after the panic");
    assert!(!alloc.is_graph_mode());

    // Nested under a guard that survives: the outer mode is restored.
    let _o = alloc.enter_graph_mode(&outer).unwrap();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _g = alloc.enter_graph_mode(&inner).unwrap();
        panic!("boom");
    }));
    assert!(result.is_err());
    assert!(alloc.is_graph_mode());
    let (p, in_outer) = allocate_counting(&alloc, &outer);
    assert!(in_outer, "the outer pool is current again");
    drop(_o);
    assert!(!is_graph_mode());
    alloc.free(p).unwrap();
}

#[test]
fn with_graph_mode_restores_the_mode_when_f_panics() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let result = catch_unwind(AssertUnwindSafe(|| {
        with_graph_mode::<()>(&pool, || panic!("boom in with_graph_mode"))
    }));
    assert!(result.is_err());
    assert!(!is_graph_mode());
    let result = catch_unwind(AssertUnwindSafe(|| {
        alloc.with_graph_mode::<()>(&pool, || panic!("boom in Allocator::with_graph_mode"))
    }));
    assert!(result.is_err());
    assert!(!is_graph_mode());
    assert!(!alloc.is_graph_mode());
    let p = alloc.allocate(4096, 512).unwrap();
    assert_eq!(pool.stats().allocations, 0);
    alloc.free(p).unwrap();
}

#[test]
fn guards_dropped_out_of_order_remove_their_own_entry() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let (a, b, c) = (
        alloc.create_pool(),
        alloc.create_pool(),
        alloc.create_pool(),
    );
    let ga = alloc.enter_graph_mode(&a).unwrap();
    let gb = alloc.enter_graph_mode(&b).unwrap();
    let gc = alloc.enter_graph_mode(&c).unwrap();
    let mut live = Vec::new();

    // Drop the middle one: the innermost (c) stays current.
    drop(gb);
    let (p, in_c) = allocate_counting(&alloc, &c);
    assert!(in_c);
    live.push(p);

    // Drop the outermost one: c is still current.
    drop(ga);
    let (p, in_c) = allocate_counting(&alloc, &c);
    assert!(in_c);
    live.push(p);
    assert!(alloc.is_graph_mode());

    drop(gc);
    assert!(!alloc.is_graph_mode(), "no entry left behind");
    assert!(!is_graph_mode());
    assert_eq!(a.stats().allocations, 0);
    assert_eq!(b.stats().allocations, 0);

    // Now the innermost first, out of order the other way round.
    let ga = alloc.enter_graph_mode(&a).unwrap();
    let gb = alloc.enter_graph_mode(&b).unwrap();
    drop(gb);
    let (p, in_a) = allocate_counting(&alloc, &a);
    assert!(in_a, "dropping the inner guard restores the outer pool");
    live.push(p);
    drop(ga);
    assert!(!is_graph_mode());
    for p in live {
        alloc.free(p).unwrap();
    }
}

#[test]
fn interleaved_guards_of_two_allocators_each_see_their_own_pool() {
    let (_hx, x) = host_allocator(64 * MIB);
    let (_hy, y) = host_allocator(64 * MIB);
    let (px, py) = (x.create_pool(), y.create_pool());
    let gx = x.enter_graph_mode(&px).unwrap();
    let gy = y.enter_graph_mode(&py).unwrap();
    // Y's pool is innermost, but X looks only at its own pools.
    let (a, in_px) = allocate_counting(&x, &px);
    assert!(in_px);
    let (b, in_py) = allocate_counting(&y, &py);
    assert!(in_py);
    drop(gx);
    assert!(!x.is_graph_mode());
    assert!(y.is_graph_mode());
    let (c, in_px) = allocate_counting(&x, &px);
    assert!(!in_px, "X is back on its cache");
    drop(gy);
    assert!(!is_graph_mode());
    x.free(a).unwrap();
    x.free(c).unwrap();
    y.free(b).unwrap();
}

#[test]
fn a_guard_keeps_its_pool_alive_after_the_last_handle_drops() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let g = alloc.enter_graph_mode(&pool).unwrap();
    drop(pool);
    let p = alloc.allocate(MIB, 512).unwrap();
    let s = alloc.stats();
    assert_eq!(s.pools.live_blocks, 1, "still allocated from the pool");
    assert_eq!(s.caching.live_blocks, 0);
    alloc.free(p).unwrap();
    assert_eq!(
        host.outstanding_bytes(),
        2 * MIB,
        "the guard holds the pool"
    );
    drop(g);
    assert_eq!(host.outstanding_bytes(), 0, "the pool went with its guard");
    assert_eq!(alloc.stats().pools.allocations, 1);
}

#[test]
fn a_forgotten_guard_keeps_only_its_own_thread_in_graph_mode() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::mem::forget(alloc.enter_graph_mode(&pool).unwrap());
            assert!(alloc.is_graph_mode());
            let p = alloc.allocate(4096, 512).unwrap();
            alloc.free(p).unwrap();
            assert!(alloc.is_graph_mode(), "for good, on this thread");
        });
    });
    assert!(!alloc.is_graph_mode());
    assert_eq!(pool.stats().allocations, 1);
    let p = alloc.allocate(4096, 512).unwrap();
    assert_eq!(pool.stats().allocations, 1);
    alloc.free(p).unwrap();
}

// ---------------------------------------------------------------------------
// Late thread-local destructors (issue 13, item 8)
// ---------------------------------------------------------------------------

/// Allocates and frees one block when dropped, and says how that went.
struct AllocatesOnDrop {
    alloc: std::sync::Arc<Allocator>,
    pool: GraphPool,
    outcome: std::sync::mpsc::Sender<Result<Option<u64>, String>>,
}

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        let run = catch_unwind(AssertUnwindSafe(|| {
            let _g = graph_mode(&self.pool); // does nothing this late
            let p = self.alloc.allocate(4096, 512).unwrap();
            let pool = self.alloc.pool_of(p);
            self.alloc.free(p).unwrap();
            pool
        }));
        let _ = self.outcome.send(run.map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    }
}

thread_local! {
    static LATE: std::cell::RefCell<Option<AllocatesOnDrop>> =
        const { std::cell::RefCell::new(None) };
}

#[test]
fn allocating_from_a_late_thread_local_destructor_does_not_panic() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let alloc = std::sync::Arc::new(alloc);
    let pool = alloc.create_pool();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let alloc = alloc.clone();
        let pool = pool.clone();
        move || {
            // Registered first, so destroyed after graphalloc's own
            // thread-locals, which the graph-mode use below registers.
            LATE.with(|l| {
                *l.borrow_mut() = Some(AllocatesOnDrop {
                    alloc: alloc.clone(),
                    pool: pool.clone(),
                    outcome: tx,
                })
            });
            let _g = alloc.enter_graph_mode(&pool).unwrap();
            let p = alloc.allocate(4096, 512).unwrap();
            alloc.free(p).unwrap();
        }
    })
    .join()
    .unwrap();
    let outcome = rx.recv().expect("the destructor ran");
    assert_eq!(
        outcome,
        Ok(None),
        "served from the cache: the thread's graph mode is gone"
    );
    assert_eq!(alloc.live_pointers(), 0);
}
