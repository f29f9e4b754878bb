//! Models 2 to 5: graph pools, graph mode and free routing under two threads.
#![cfg(loom)]

use graphalloc::{Allocator, DevicePtr, Error, GraphPool, SMALL_SEGMENT};
use loom::thread;
use loom_tests::{explore, host_allocator};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Preemption bound of model 2: the gauges' relaxed atomics make the
/// unbounded state space too large (bound 8: 269,603 interleavings, 23 s).
const BOUND_MODEL_2: usize = 5;

/// A ghost flag, outside loom: a std atomic adds no loom scheduling point,
/// and loom runs one thread at a time, so it shows exactly how far the
/// thread that sets it has got.
fn flag() -> std::sync::Arc<AtomicBool> {
    std::sync::Arc::new(AtomicBool::new(false))
}

/// Allocates one block from `pool`, in graph mode on the calling thread for
/// just that allocation.
fn allocate_in(alloc: &Allocator, pool: &GraphPool, size: usize) -> DevicePtr {
    let _guard = alloc.enter_graph_mode(pool).unwrap();
    alloc.allocate(size, 512).unwrap()
}

/// Model 2: thread A in graph mode allocates from a pool while thread B
/// allocates outside graph mode. A's block comes from the pool and B's from
/// the cache, whatever the interleaving.
#[test]
fn graph_mode_is_per_thread() {
    let tally = explore(
        "2 graph mode belongs to its thread",
        Some(BOUND_MODEL_2),
        |tally| {
            let (alloc, _host) = host_allocator();
            let pool = alloc.create_pool();
            let b = {
                let alloc = alloc.clone();
                thread::spawn(move || {
                    assert!(!alloc.is_graph_mode());
                    alloc.allocate(1000, 512).unwrap()
                })
            };
            // This thread is A. It looks at the cache's count (under the
            // cache's lock, so loom orders B's allocation around it) before
            // and after its own allocation, to tally where B's fell.
            let cache_allocations = || alloc.device_stats(0).unwrap().allocations;
            let guard = alloc.enter_graph_mode(&pool).unwrap();
            assert!(alloc.is_graph_mode());
            let before = cache_allocations();
            let p = alloc.allocate(1000, 512).unwrap();
            tally.note(match (before, cache_allocations()) {
                (1, _) => "B allocated before A's graph-mode allocation",
                (0, 1) => "B allocated during A's graph-mode allocation",
                (0, 0) => "B allocated after A's graph-mode allocation",
                other => panic!("cache allocation counts {other:?}"),
            });
            let q = b.join().unwrap();
            assert_ne!(p, q);

            let ps = pool.stats();
            assert_eq!((ps.allocations, ps.live_blocks), (1, 1));
            let stats = alloc.stats();
            let cs = stats.caching;
            assert_eq!((cs.allocations, cs.live_blocks), (1, 1));
            // Both blocks are live now, so the peaks are exact whatever the
            // interleaving (the gauges are shared by both sides' threads).
            assert_eq!(cs.peak_allocated_bytes, 1024);
            assert_eq!(stats.pools.peak_allocated_bytes, 1024);
            assert_eq!(stats.total.peak_allocated_bytes, 2048);
            // Each free goes back where its block came from, whatever the
            // freeing thread's mode: B's block freed by A in graph mode goes
            // to the cache, A's pool block freed out of graph mode to the pool.
            alloc.free(q).unwrap();
            drop(guard);
            alloc.free(p).unwrap();
            let ps = pool.stats();
            assert_eq!((ps.frees, ps.live_blocks, ps.allocated_bytes), (1, 0, 0));
            let cs = alloc.stats().caching;
            assert_eq!((cs.frees, cs.live_blocks, cs.allocated_bytes), (1, 0, 0));
        },
    );
    tally.expect(&[
        "B allocated before A's graph-mode allocation",
        "B allocated during A's graph-mode allocation",
        "B allocated after A's graph-mode allocation",
    ]);
}

/// Model 3: a pool block allocated on thread A is freed on thread B while
/// A drops its graph-mode guard (and then allocates from the cache). The
/// free is routed to the pool by ownership, not by either thread's mode.
#[test]
fn cross_thread_free_goes_to_the_pool() {
    let tally = explore("3 cross-thread free of a pool block", None, |tally| {
        let (alloc, _host) = host_allocator();
        let pool = alloc.create_pool();
        let guard = alloc.enter_graph_mode(&pool).unwrap();
        let p = alloc.allocate(1000, 512).unwrap();
        let b = {
            let alloc = alloc.clone();
            thread::spawn(move || alloc.free(p).unwrap())
        };
        // The pool's free count, read under the pool's lock (so loom orders
        // B's free around each read), tallies where the free fell.
        let before = pool.stats().frees;
        drop(guard);
        let after_drop = pool.stats().frees;
        // Out of graph mode now: from the cache.
        let q = alloc.allocate(1000, 512).unwrap();
        tally.note(match (before, after_drop) {
            (1, _) => "free done before the guard drop",
            (0, 1) => "free done during the guard drop",
            (0, 0) => "free done after the guard drop",
            other => panic!("pool free counts {other:?}"),
        });
        b.join().unwrap();

        let ps = pool.stats();
        assert_eq!(ps.allocations, 1);
        assert_eq!(ps.frees, 1, "the free went to the pool");
        assert_eq!(ps.live_blocks, 0);
        assert_eq!(ps.allocated_bytes, 0);
        let cs = alloc.stats().caching;
        assert_eq!(
            (cs.allocations, cs.frees, cs.live_blocks),
            (1, 0, 1),
            "the cache saw A's second allocation and no free"
        );
        alloc.free(q).unwrap();
        let cs = alloc.stats().caching;
        assert_eq!((cs.frees, cs.live_blocks, cs.allocated_bytes), (1, 0, 0));
        assert_eq!(alloc.live_pointers(), 0);
    });
    tally.expect(&[
        "free done before the guard drop",
        "free done during the guard drop",
        "free done after the guard drop",
    ]);
}

/// Model 4: `reset()` of a pool races the free of its last live block.
/// Either reset refuses with `PoolBusy` (the free had not happened yet) or
/// it succeeds after the free; the block is never lost or owned twice.
#[test]
fn reset_races_last_free() {
    let tally = explore("4 reset races the last free", None, |tally| {
        let (alloc, _host) = host_allocator();
        let pool = alloc.create_pool();
        let p = allocate_in(&alloc, &pool, 1000);
        let started = flag();
        let b = {
            let (alloc, started) = (alloc.clone(), started.clone());
            thread::spawn(move || {
                started.store(true, SeqCst);
                alloc.free(p).unwrap();
            })
        };
        let reset = pool.reset();
        let started_after = started.load(SeqCst);
        match reset {
            Ok(()) => {
                assert!(
                    started_after,
                    "reset succeeded while the pool's block was live (its free had not begun)"
                );
                tally.note("reset succeeded after the free");
            }
            Err(Error::PoolBusy {
                live_blocks,
                allocated,
                ..
            }) => {
                assert_eq!(live_blocks, 1);
                assert_eq!(allocated, 1024);
                tally.note("reset refused: pool busy");
            }
            Err(e) => panic!("unexpected reset error: {e}"),
        }
        b.join().unwrap();

        let ps = pool.stats();
        assert_eq!((ps.allocations, ps.frees), (1, 1));
        assert_eq!(
            (ps.live_blocks, ps.allocated_bytes, ps.requested_bytes),
            (0, 0, 0)
        );
        assert_eq!((ps.segments, ps.reserved_bytes), (1, SMALL_SEGMENT));
        assert_eq!(alloc.live_pointers(), 0);
        // The block is gone for good: a second free is a typed error.
        assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
        // Idle now, so reset succeeds; the pool hands its memory out again,
        // each block once.
        pool.reset().unwrap();
        let x = allocate_in(&alloc, &pool, 1000);
        let y = allocate_in(&alloc, &pool, 1000);
        assert_ne!(x, y);
        assert_eq!(pool.stats().live_blocks, 2);
        assert_eq!(pool.stats().segments, 1);
        alloc.free(x).unwrap();
        alloc.free(y).unwrap();
        assert_eq!(pool.stats().live_blocks, 0);
        assert_eq!(alloc.stats().caching.allocations, 0);
    });
    tally.expect(&["reset succeeded after the free", "reset refused: pool busy"]);
}

/// Model 5: dropping the last handle of a pool races the free of its last
/// live block. Whichever comes last releases the pool's segment, exactly
/// once; nothing leaks.
#[test]
fn last_handle_drop_races_last_free() {
    let tally = explore(
        "5 last pool handle drop races the last free",
        None,
        |tally| {
            let (alloc, host_backend) = host_allocator();
            let pool = alloc.create_pool();
            let p = allocate_in(&alloc, &pool, 1000);
            assert_eq!(host_backend.outstanding_bytes(), SMALL_SEGMENT);
            assert_eq!(host_backend.releases(), 0);
            // Each side reads the release count (a loom atomic) once it is
            // done: whoever's drop was last released the segment before its
            // read; a side that sees no release cannot have been last.
            let b = {
                let (alloc, host_backend) = (alloc.clone(), host_backend.clone());
                thread::spawn(move || {
                    alloc.free(p).unwrap();
                    host_backend.releases()
                })
            };
            drop(pool);
            let seen_by_drop = host_backend.releases();
            let seen_by_free = b.join().unwrap();
            tally.note(match (seen_by_drop, seen_by_free) {
                (1, 0) => "the handle drop was last",
                (0, 1) => "the free was last",
                (1, 1) => "either",
                other => panic!("release counts {other:?}"),
            });

            assert_eq!(
                host_backend.releases(),
                1,
                "the pool's segment is released once"
            );
            assert_eq!(host_backend.outstanding_bytes(), 0, "nothing leaked");
            let stats = alloc.stats();
            assert_eq!(stats.pools.reserved_bytes, 0);
            assert_eq!(stats.pools.segments, 0);
            assert_eq!((stats.pools.allocations, stats.pools.frees), (1, 1));
            assert_eq!(
                (stats.pools.live_blocks, stats.pools.allocated_bytes),
                (0, 0)
            );
            assert_eq!(stats.caching.allocations, 0);
            assert_eq!(stats.total.reserved_bytes, 0);
            assert_eq!(alloc.live_pointers(), 0);
            assert!(alloc.free(p).is_err());
            assert_eq!(host_backend.releases(), 1);
        },
    );
    tally.expect(&["the handle drop was last", "the free was last"]);
}
