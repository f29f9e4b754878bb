//! Models 12 and 13: the per-thread caches of freed blocks
//! (`src/thread_cache.rs`): a block in one thread's cache raced by a drain
//! from another thread, and the out-of-memory path draining another live
//! thread's cache.
#![cfg(loom)]

use graphalloc::{Config, Error, SMALL_SEGMENT};
use loom::thread;
use loom_tests::{explore, host_allocator, host_allocator_with, CAPACITY};

/// Preemption bound of model 12 (its registry, cache and arena locks make
/// the unbounded space large).
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
        Some(BOUND),
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
            // The drain either found the block in main's cache (its segment
            // went back to the device, and `b` came from a new one) or came
            // after main took it back (the segment was busy: nothing went).
            tally.note(if released == 0 {
                "main reused its cached block"
            } else {
                assert_eq!(released, SMALL_SEGMENT);
                "the drain took the block"
            });
            if released == 0 {
                assert_eq!(a, b, "main's cache gave the block back");
            }
            let s = alloc.stats().caching;
            assert_eq!((s.allocations, s.frees), (2, 2));
            assert_eq!(
                (s.live_blocks, s.allocated_bytes, s.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!(s.peak_allocated_bytes, 1024);
            assert_eq!(s.reserved_bytes, SMALL_SEGMENT);
            assert_eq!(host.outstanding_bytes(), SMALL_SEGMENT);
            assert_eq!(alloc.empty_cache().unwrap(), SMALL_SEGMENT);
            assert_eq!(host.outstanding_bytes(), 0);
        },
    );
    tally.expect(&["main reused its cached block", "the drain took the block"]);
}

/// Model 13: the device has room for one 20 MiB segment (plain segments). Main allocates a
/// 3 MiB block (a 20 MiB segment), frees it into its cache and allocates
/// it again, while another thread asks for 1 KiB (a new small segment: no
/// room until the 20 MiB one goes). The other thread's out-of-memory path
/// drains main's cache and releases the idle segment (main's own
/// out-of-memory path likewise drains the other's). A request fails only
/// while the other thread holds the memory: never both, and never for want
/// of a block that sits unused in a cache.
#[test]
fn out_of_memory_drains_another_threads_cache() {
    const BIG: usize = 3 << 20;
    const LARGE_SEGMENT: usize = 20 << 20;
    let tally = explore(
        "13 thread caches: out of memory drains every thread's cache",
        Some(BOUND),
        |tally| {
            let config = Config {
                memory_fraction: (LARGE_SEGMENT + SMALL_SEGMENT / 2) as f64 / CAPACITY as f64,
                expandable_segments: false,
                ..Config::default()
            };
            let (alloc, host) = host_allocator_with(&config);
            let a = alloc.allocate(BIG, 512).unwrap();
            alloc.free(a).unwrap(); // into main's cache
            let other = {
                let alloc = alloc.clone();
                thread::spawn(move || {
                    let r = alloc.allocate(1024, 512);
                    if let Ok(p) = r {
                        alloc.free(p).unwrap();
                    }
                    r.map(|_| ())
                })
            };
            let mine = alloc.allocate(BIG, 512);
            if let Ok(p) = mine {
                alloc.free(p).unwrap();
            }
            let served = 1 + u64::from(mine.is_ok());
            let theirs = other.join().unwrap();
            let outcome = match (&mine, &theirs) {
                (Ok(_), Ok(())) => "one after the other, both served",
                (Ok(_), Err(Error::OutOfMemory { .. })) => "main kept its block, the other ran out",
                (Err(Error::OutOfMemory { .. }), Ok(())) => {
                    "the other drained main's cache, main ran out"
                }
                (m, t) => panic!("main: {m:?}, other: {t:?}"),
            };
            tally.note(outcome);
            let s = alloc.stats().caching;
            assert_eq!(
                (s.live_blocks, s.allocated_bytes, s.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!(s.allocations, served + u64::from(theirs.is_ok()));
            alloc.empty_cache().unwrap();
            assert_eq!(host.outstanding_bytes(), 0);
        },
    );
    tally.expect(&[
        "main kept its block, the other ran out",
        "the other drained main's cache, main ran out",
    ]);
}
