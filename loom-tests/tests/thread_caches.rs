//! Models 12 and 13: the per-thread caches of freed blocks
//! (`src/thread_cache.rs`): a block in one thread's cache raced by a drain
//! from another thread, and the out-of-memory path draining another live
//! thread's cache.
#![cfg(loom)]

use graphalloc::{Config, Error, SMALL_SEGMENT};
use loom::thread;
use loom_tests::{explore, host_allocator, host_allocator_with, CAPACITY};

/// Preemption bound of model 13 (136 interleavings; model 12 saturates, so
/// it runs unbounded: 80 interleavings).
const BOUND: usize = 3;

/// Model 12: main frees a block into its own thread cache, then takes a
/// block of that size again (from its cache, or carved anew if it was
/// drained) and frees it, while another thread empties the cache (draining
/// every thread's cache into the arena and releasing idle segments): the
/// block is either reused by main or stolen by the drain, never both. No
/// block is handed out twice, and the statistics are exact at the end.
#[test]
fn a_cached_block_races_a_drain() {
    let tally = explore(
        "12 thread caches: a cached block races a drain",
        None,
        |tally| {
            let (alloc, host) = host_allocator();
            let a = alloc.allocate(1000, 512).unwrap();
            alloc.free(a).unwrap(); // into main's cache
            let drainer = {
                let alloc = alloc.clone();
                thread::spawn(move || alloc.empty_cache().unwrap())
            };
            let b = alloc.allocate(1000, 512).unwrap();
            let stats = alloc.stats().caching;
            assert_eq!((stats.live_blocks, stats.allocated_bytes), (1, 1024));
            alloc.free(b).unwrap();
            let released = drainer.join().unwrap();
            let s = alloc.stats().caching;
            // The drain found the block in main's cache before main took it
            // back (`b` then came from a new segment, or, if the drain was
            // still giving it back to the arena, from the same segment, which
            // then stayed), or after main's last free (nothing is left), or
            // while `b` was live (nothing went).
            tally.note(match (released, s.reserved_bytes) {
                (0, SMALL_SEGMENT) if a == b => "main reused its cached block",
                (0, SMALL_SEGMENT) => "the drain took the block while main carved another",
                (SMALL_SEGMENT, SMALL_SEGMENT) => "the drain took the block first",
                (SMALL_SEGMENT, 0) => "the drain came after main's last free",
                other => panic!("released, reserved: {other:?}"),
            });
            assert_eq!((s.allocations, s.frees), (2, 2));
            assert_eq!(
                (s.live_blocks, s.allocated_bytes, s.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!(s.peak_allocated_bytes, 1024);
            assert_eq!(host.outstanding_bytes(), s.reserved_bytes);
            assert_eq!(alloc.empty_cache().unwrap(), s.reserved_bytes);
            assert_eq!(host.outstanding_bytes(), 0);
        },
    );
    tally.expect(&[
        "main reused its cached block",
        "the drain took the block first",
        "the drain came after main's last free",
    ]);
}

/// Model 13: the device has room for a 12 MiB segment and a little more
/// (plain segments). Main allocates 1 MiB (a 2 MiB segment), frees it into
/// its cache and allocates it again, while another thread asks for 12 MiB
/// (a 12 MiB segment: no room until the 2 MiB one goes) and keeps it. The
/// other thread's out-of-memory path drains main's cache and releases the
/// idle segment. Exactly one request fails, the one made while the other
/// thread held the memory: never for want of a block that sits unused in a
/// cache.
#[test]
fn out_of_memory_drains_another_threads_cache() {
    // At least 10 MiB: its segment is its size rounded to 2 MiB, with no
    // smaller segment to fall back to.
    const BIG: usize = 12 << 20;
    const SMALL: usize = 1 << 20;
    let tally = explore(
        "13 thread caches: out of memory drains every thread's cache",
        Some(BOUND),
        |tally| {
            let config = Config {
                memory_fraction: (BIG + SMALL_SEGMENT / 2) as f64 / CAPACITY as f64,
                expandable_segments: false,
                ..Config::default()
            };
            let (alloc, host) = host_allocator_with(&config);
            let a = alloc.allocate(SMALL, 512).unwrap();
            alloc.free(a).unwrap(); // into main's cache
                                    // The other thread keeps its block: main frees it after the join.
            let other = {
                let alloc = alloc.clone();
                thread::spawn(move || alloc.allocate(BIG, 512))
            };
            let mine = alloc.allocate(SMALL, 512);
            let theirs = other.join().unwrap();
            let outcome = match (&mine, &theirs) {
                (Ok(_), Err(Error::OutOfMemory { .. })) => "main kept its block, the other ran out",
                (Err(Error::OutOfMemory { .. }), Ok(_)) => {
                    "the other drained main's cache, main ran out"
                }
                (m, t) => panic!("main: {m:?}, other: {t:?}"),
            };
            tally.note(outcome);
            for p in [&mine, &theirs].into_iter().flatten() {
                alloc.free(*p).unwrap();
            }
            let s = alloc.stats().caching;
            assert_eq!(
                (s.live_blocks, s.allocated_bytes, s.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!((s.allocations, s.frees), (2, 2));
            alloc.empty_cache().unwrap();
            assert_eq!(host.outstanding_bytes(), 0);
        },
    );
    tally.expect(&[
        "main kept its block, the other ran out",
        "the other drained main's cache, main ran out",
    ]);
}
