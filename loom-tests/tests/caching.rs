//! Models 1 and 1b: the caching allocator (one shard, then two) under two
//! threads.
#![cfg(loom)]

use graphalloc::{Config, DevicePtr, SMALL_SEGMENT};
use loom::thread;
use loom_tests::{explore, host_allocator, host_allocator_with};
use std::collections::HashSet;

/// Ghost state of the model, outside loom: the addresses handed out and not
/// yet given back. A std mutex adds no loom scheduling point, and loom runs
/// one thread at a time, so it never blocks and never changes what loom
/// explores. An address is added after `allocate` returns and removed before
/// `free` is called, so finding it already present means the allocator
/// handed out a block that was live.
#[derive(Default)]
struct Live(std::sync::Mutex<HashSet<u64>>);

impl Live {
    fn add(&self, p: DevicePtr) {
        let fresh = self.0.lock().unwrap().insert(p.addr());
        assert!(fresh, "block {:#x} handed out twice while live", p.addr());
    }
    fn remove(&self, p: DevicePtr) {
        assert!(self.0.lock().unwrap().remove(&p.addr()));
    }
}

/// Allocates two blocks (both live at once), then frees them.
/// Returns the first block's address.
fn worker(alloc: &graphalloc::Allocator, live: &Live, sizes: [usize; 2]) -> u64 {
    let a = alloc.allocate(sizes[0], 512).unwrap();
    live.add(a);
    let b = alloc.allocate(sizes[1], 512).unwrap();
    live.add(b);
    live.remove(a);
    alloc.free(a).unwrap();
    live.remove(b);
    alloc.free(b).unwrap();
    a.addr()
}

/// Preemption bound of model 1: the gauges' relaxed atomics make the
/// unbounded state space too large. (Bound 5 was 10,242 interleavings
/// before the thread caches of freed blocks; with them, bound 3 explores
/// 29,303 in 5-17 s on 2 cores, and bound 5 runs for many minutes.)
const BOUND: usize = 3;

/// Model 1: two threads allocate and free concurrently through the caching
/// allocator of one device. No block is handed out twice, and the
/// statistics are exact at the end.
#[test]
fn caching_two_threads_allocate_and_free() {
    let tally = explore(
        "1 caching: two threads allocate and free",
        Some(BOUND),
        |tally| {
            let (alloc, host) = host_allocator();
            let live = std::sync::Arc::new(Live::default());
            let other = {
                let (alloc, live) = (alloc.clone(), live.clone());
                thread::spawn(move || worker(&alloc, &live, [1000, 3000]))
            };
            let mine = worker(&alloc, &live, [2000, 512]);
            let theirs = other.join().unwrap();
            tally.note(if mine < theirs {
                "main's first block below the other's"
            } else {
                "main's first block above the other's"
            });

            let stats = alloc.stats();
            let c = stats.caching;
            assert_eq!(c.allocations, 4);
            assert_eq!(c.frees, 4);
            assert_eq!(c.allocated_bytes, 0);
            assert_eq!(c.requested_bytes, 0);
            assert_eq!(c.live_blocks, 0);
            // The arena lock serialises the carving, so exactly one small
            // segment was reserved, and it stays cached.
            assert_eq!(c.segments, 1);
            assert_eq!(c.reserved_bytes, SMALL_SEGMENT);
            assert_eq!(stats.pools.allocations, 0);
            assert_eq!(stats.total.allocated_bytes, 0);
            assert_eq!(stats.total.live_blocks, 0);
            assert_eq!(alloc.live_pointers(), 0);
            assert_eq!(host.outstanding_bytes(), SMALL_SEGMENT);
            assert_eq!(host.releases(), 0);
            assert_eq!(alloc.empty_cache().unwrap(), SMALL_SEGMENT);
            assert_eq!(host.outstanding_bytes(), 0);
            assert_eq!(host.releases(), 1);
        },
    );
    tally.expect(&[
        "main's first block below the other's",
        "main's first block above the other's",
    ]);
}

/// Model 1b: a cache of two shards (`shards: 2`). Each thread allocates
/// from its own shard; a block of thread A's shard freed on thread B goes
/// back to A's shard (by the shard recorded at allocation, not B's), racing
/// A's next allocation from that shard. No block is handed out twice; the
/// statistics are exact; each shard reserved one segment.
///
/// Shards are assigned to threads round robin from a process-wide counter
/// (plain std, outside loom). Each execution assigns exactly two numbers,
/// main's first (it allocates before spawning), so main and B always get
/// different shards; no other model in this binary uses several shards.
#[test]
fn sharded_cache_cross_thread_free() {
    let tally = explore(
        "1b sharded cache: cross-thread free back to the owning shard",
        None,
        |tally| {
            let config = Config {
                shards: 2,
                ..Config::default()
            };
            let (alloc, host) = host_allocator_with(&config);
            let live = std::sync::Arc::new(Live::default());
            let a = alloc.allocate(1000, 512).unwrap();
            live.add(a);
            let b_thread = {
                let (alloc, live) = (alloc.clone(), live.clone());
                thread::spawn(move || {
                    let b = alloc.allocate(2000, 512).unwrap();
                    live.add(b);
                    live.remove(a);
                    alloc.free(a).unwrap();
                    live.remove(b);
                    alloc.free(b).unwrap();
                })
            };
            let c = alloc.allocate(3000, 512).unwrap();
            live.add(c);
            // Whether B's free of `a` reached main's shard before main's
            // second allocation there: then `c` may reuse `a`'s address.
            tally.note(if c == a {
                "main reused the block B freed"
            } else {
                "main's block is new"
            });
            live.remove(c);
            alloc.free(c).unwrap();
            b_thread.join().unwrap();

            let stats = alloc.stats();
            let cs = stats.caching;
            assert_eq!((cs.allocations, cs.frees), (3, 3));
            assert_eq!(
                (cs.live_blocks, cs.allocated_bytes, cs.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!(cs.segments, 2, "one segment per shard");
            assert_eq!(cs.reserved_bytes, 2 * SMALL_SEGMENT);
            assert_eq!(alloc.live_pointers(), 0);
            assert_eq!(host.outstanding_bytes(), 2 * SMALL_SEGMENT);
            assert_eq!(alloc.empty_cache().unwrap(), 2 * SMALL_SEGMENT);
            assert_eq!((host.outstanding_bytes(), host.releases()), (0, 2));
        },
    );
    tally.expect(&["main reused the block B freed", "main's block is new"]);
}
