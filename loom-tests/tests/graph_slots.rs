//! Models 17 and 18: graph mode's thread caches (`src/graph_pool/slots.rs`):
//! a block freed in graph mode stays in the thread's cache for the pool,
//! its record kept in the map, until the thread takes it back or a flush
//! (a reader of the pool's figures, or any allocation from the pool's
//! arena) gives it back to the arena.
#![cfg(loom)]

use graphalloc::{Allocator, GraphModeGuard, GraphPool, PoolStats};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{explore, host_allocator};

/// An allocator, a pool of it, and the model's main thread in graph mode
/// on it, having asked for its guard's cache ([`ask_for_a_cache`]).
fn in_graph_mode() -> (Arc<Allocator>, GraphPool, GraphModeGuard) {
    let (alloc, _host) = host_allocator();
    let pool = alloc.create_pool();
    let guard = alloc.enter_graph_mode(&pool).unwrap();
    ask_for_a_cache(&alloc);
    (alloc, pool, guard)
}

/// In graph mode: a pair of 1000 B, whose free (of a pool block, under a
/// guard with no cache yet) asks for the guard's cache, which the guard's
/// next allocation makes (`src/mode.rs`, `EntrySlot`).
fn ask_for_a_cache(alloc: &Allocator) {
    let p = alloc.allocate(1000, 512).unwrap();
    alloc.free(p).unwrap();
}

/// Preemption bound of model 18 (two threads in graph mode, each
/// allocating and freeing twice).
const BOUND_MODEL_18: usize = 5;

/// The pool's figures are exact whenever read: the counts agree with the
/// live blocks, and the peak is exactly one block (one was allocated
/// before the race).
fn check_exact(s: &PoolStats) {
    assert_eq!(s.allocations - s.frees, s.live_blocks as u64, "{s:?}");
    assert_eq!(s.allocated_bytes, 1024 * s.live_blocks, "{s:?}");
    assert!(s.live_blocks <= 1, "{s:?}");
    assert_eq!(s.peak_allocated_bytes, 1024, "{s:?}");
}

/// Model 17: main, in graph mode on a pool (and having asked for a cache
/// before the race), allocates a block (the arena's, after making its
/// cache), frees it into the cache, allocates that size again (a hit,
/// unless the block was flushed meanwhile) and frees it; another thread reads the
/// pool's figures (which flushes main's cache) and then resets the pool.
/// Checks: every figure the reader sees is exact (counts, live bytes, the
/// peak); the reset succeeds exactly when no block is live (a block in
/// main's cache is not); at the end exact counts, nothing live, no pointer
/// known, one segment, and the pool resets.
#[test]
fn a_graph_mode_cache_races_a_stats_read_and_a_reset() {
    let tally = explore(
        "17 graph-mode cache: a free into it races a stats read and a reset",
        None,
        |tally| {
            let (alloc, pool, guard) = in_graph_mode();
            let other = {
                let pool = pool.clone();
                thread::spawn(move || {
                    let s = pool.stats();
                    check_exact(&s);
                    (s, pool.reset().is_ok())
                })
            };
            let a = alloc.allocate(1000, 512).unwrap();
            alloc.free(a).unwrap();
            let b = alloc.allocate(1000, 512).unwrap();
            assert_eq!(alloc.live_pointers(), 1);
            alloc.free(b).unwrap();
            let (seen, reset) = other.join().unwrap();
            // (The reset comes after the read: in any state but the last
            // it may find a block live or none.)
            tally.note(match (seen.allocations, seen.frees, reset) {
                (1, 1, _) => "read before the first allocation",
                (2, 1, _) => "read with the first block live",
                (2, 2, _) => "read with the first block in the cache",
                (3, 2, _) => "read with the second block live",
                (3, 3, true) => "read and reset after both frees",
                other => panic!("read {seen:?}, reset {other:?}"),
            });
            let s = pool.stats();
            assert_eq!((s.allocations, s.frees), (3, 3));
            assert_eq!(
                (s.live_blocks, s.allocated_bytes, s.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!(s.segments, 1);
            // The peak restarts at a reset: one block, unless the reset
            // came after both frees (then nothing since).
            match (reset, s.peak_allocated_bytes) {
                (_, 1024) | (true, 0) => {}
                other => panic!("peak after reset {other:?}"),
            }
            assert_eq!(alloc.live_pointers(), 0);
            pool.reset().unwrap();
            drop(guard);
            let totals = alloc.stats().pools;
            assert_eq!((totals.allocated_bytes, totals.live_blocks), (0, 0));
        },
    );
    tally.expect(&[
        "read before the first allocation",
        "read with the first block live",
        "read with the first block in the cache",
        "read with the second block live",
        "read and reset after both frees",
    ]);
}

/// Model 18: main and another thread are both in graph mode on one pool.
/// Main (having asked for a cache before the race) allocates a block and
/// frees it into its cache, then allocates that
/// size again and keeps it; the other thread allocates that size (a miss
/// of its own empty cache: the pool's arena, which first takes back the
/// blocks of every thread's cache, main's included), keeps it and leaves
/// graph mode. Checks:
/// the two live blocks differ (main's cached block is handed out once: by
/// main's hit or by the arena after the flush); two live pointers; the
/// pool's figures exact with both live (peak two blocks); after main frees
/// both blocks into its cache and drops its guard (which flushes it), exact
/// counts, nothing live or known, one segment, and the pool resets.
#[test]
fn a_graph_mode_cache_is_flushed_by_another_threads_allocation() {
    let tally = explore(
        "18 graph-mode cache: flushed by another thread's allocation from the pool",
        Some(BOUND_MODEL_18),
        |tally| {
            let (alloc, pool, guard) = in_graph_mode();
            let other = {
                let (alloc, pool) = (alloc.clone(), pool.clone());
                thread::spawn(move || {
                    let _guard = alloc.enter_graph_mode(&pool).unwrap();
                    alloc.allocate(1000, 512).unwrap()
                })
            };
            let a = alloc.allocate(1000, 512).unwrap();
            alloc.free(a).unwrap();
            let b = alloc.allocate(1000, 512).unwrap();
            let p = other.join().unwrap();
            assert_ne!(b, p, "one block handed out twice");
            tally.note(if p == a {
                "the other thread got main's cached block"
            } else if b == a {
                "main got its cached block back"
            } else {
                panic!("main's first block {a:?} reused by neither: {b:?}, {p:?}")
            });
            assert_eq!(alloc.live_pointers(), 2);
            let s = pool.stats();
            assert_eq!((s.allocations, s.frees, s.live_blocks), (4, 2, 2));
            assert_eq!((s.allocated_bytes, s.peak_allocated_bytes), (2048, 2048));
            alloc.free(b).unwrap();
            alloc.free(p).unwrap();
            drop(guard);
            let s = pool.stats();
            assert_eq!((s.allocations, s.frees, s.live_blocks), (4, 4, 0));
            assert_eq!((s.allocated_bytes, s.peak_allocated_bytes), (0, 2048));
            assert_eq!(s.segments, 1);
            assert_eq!(alloc.live_pointers(), 0);
            pool.reset().unwrap();
        },
    );
    tally.expect(&[
        "the other thread got main's cached block",
        "main got its cached block back",
    ]);
}
