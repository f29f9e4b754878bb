//! Models 12, 13, 15 and 16: the per-thread caches of freed blocks
//! (`src/thread_cache.rs`): a block in one thread's cache raced by a drain
//! from another thread, the out-of-memory path draining another live
//! thread's cache, and the statistics' pending changes (a free into a
//! cache and a cache hit racing another thread's allocation and `stats()`).
#![cfg(loom)]

use graphalloc::{Config, Error, SMALL_REQUEST_MAX, SMALL_SEGMENT};
use loom::thread;
use loom_tests::{explore, host_allocator, host_allocator_with, CAPACITY};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Ghost counts of live bytes, outside loom (loom runs one thread at a
/// time, so std atomics add no scheduling point and never race): `hi` counts
/// a block from before its allocation to after its free, `lo` from after
/// its allocation to before its free; their peaks bracket the true peak.
#[derive(Default)]
struct Ghost {
    hi: AtomicUsize,
    hi_peak: AtomicUsize,
    lo: AtomicUsize,
    lo_peak: AtomicUsize,
}

impl Ghost {
    fn up(now: &AtomicUsize, peak: &AtomicUsize, bytes: usize) {
        let v = now.fetch_add(bytes, Ordering::SeqCst) + bytes;
        peak.fetch_max(v, Ordering::SeqCst);
    }
    fn allocate(&self, alloc: &graphalloc::Allocator, bytes: usize) -> graphalloc::DevicePtr {
        Self::up(&self.hi, &self.hi_peak, bytes);
        let p = alloc.allocate(bytes, 512).unwrap();
        Self::up(&self.lo, &self.lo_peak, bytes);
        p
    }
    fn free(&self, alloc: &graphalloc::Allocator, p: graphalloc::DevicePtr, bytes: usize) {
        self.lo.fetch_sub(bytes, Ordering::SeqCst);
        alloc.free(p).unwrap();
        self.hi.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Model 15: the statistics' pending changes. Blocks are of the largest
/// cacheable size, the slack (1 MiB), so that a thread's pending change
/// reaches it. Main allocates a block (from the arena: counted at once),
/// then, while another thread allocates one (from the arena), reads
/// `stats()` and frees it into its own cache, main frees its block into its
/// cache and allocates it again (a hit: both only pending). Every `stats()`
/// reports a peak at least its current allocated figure; at quiescence the
/// current figures are exact and the peak is within one slack (two threads:
/// (T - 1) x 1 MiB) of the true peak, bracketed by ghost counts. The bound
/// is reached: when the other thread's whole run falls between main's free
/// and its hit, its allocation folds while main's free is still pending,
/// and the peak reads 2 MiB for a true peak of 1 MiB (tallied "above").
#[test]
fn pending_statistics_race_an_allocation_and_a_stats_read() {
    const M: usize = SMALL_REQUEST_MAX;
    let tally = explore(
        "15 thread caches: pending statistics race another thread's allocation and stats()",
        Some(BOUND),
        |tally| {
            let config = Config {
                expandable_segments: false,
                ..Config::default()
            };
            let (alloc, _host) = host_allocator_with(&config);
            let ghost = std::sync::Arc::new(Ghost::default());
            let p = ghost.allocate(&alloc, M);
            let other = {
                let (alloc, ghost) = (alloc.clone(), ghost.clone());
                thread::spawn(move || {
                    let q = ghost.allocate(&alloc, M);
                    let s = alloc.stats();
                    for side in [s.caching, s.total] {
                        assert!(
                            side.peak_allocated_bytes >= side.allocated_bytes,
                            "mid-race peak {} below current {}",
                            side.peak_allocated_bytes,
                            side.allocated_bytes
                        );
                    }
                    ghost.free(&alloc, q, M); // into this thread's cache
                })
            };
            ghost.free(&alloc, p, M); // into main's cache
                                      // A scheduling point between the ghost's end of `p` and its
                                      // start of `r` (ghost updates are none), so that the other
                                      // thread's whole run can fall between them.
            thread::yield_now();
            let r = ghost.allocate(&alloc, M); // main's cache hit
            other.join().unwrap();
            let s = alloc.stats();
            assert_eq!(s.caching.allocated_bytes, M);
            assert_eq!((s.caching.allocations, s.caching.frees), (3, 2));
            assert_eq!(s.caching.live_blocks, 1);
            let (lo, hi) = (
                ghost.lo_peak.load(Ordering::SeqCst),
                ghost.hi_peak.load(Ordering::SeqCst),
            );
            for side in [s.caching, s.total] {
                let peak = side.peak_allocated_bytes;
                assert!(peak >= side.allocated_bytes, "peak {peak} below current");
                assert!(
                    peak + M >= lo && peak <= hi + M,
                    "peak {peak} not within one slack of the true peak (in [{lo}, {hi}])"
                );
            }
            let peak = s.total.peak_allocated_bytes;
            tally.note(if lo == hi && peak == lo {
                "exact"
            } else if peak > hi {
                "above the true peak by another thread's pending free"
            } else if peak < lo {
                "below the true peak by another thread's pending allocation"
            } else {
                "within the ghost bracket"
            });
            ghost.free(&alloc, r, M);
            let s = alloc.stats().caching;
            assert_eq!((s.allocated_bytes, s.live_blocks, s.frees), (0, 0, 3));
        },
    );
    tally.expect(&[
        "exact",
        "above the true peak by another thread's pending free",
    ]);
}

/// Model 16: the ownership record of a block in a thread cache stays in the
/// map, marked cached (`src/ownership.rs`). Main frees its block while
/// another thread frees the same pointer (a double free racing the free
/// into main's cache), then main allocates that size again and frees it.
/// Exactly one of the racing frees succeeds, the other is `DoubleFree`
/// (`UnknownPointer` only while the block is between the map and the
/// arena); the block is never freed twice nor handed out twice, and the
/// statistics are exact at the end.
#[test]
fn a_free_into_the_cache_races_a_free_of_the_same_pointer() {
    let tally = explore(
        "16 thread caches: a free into the cache races a free of the same pointer",
        Some(BOUND),
        |tally| {
            let (alloc, host) = host_allocator();
            let a = alloc.allocate(1000, 512).unwrap();
            let other = {
                let alloc = alloc.clone();
                thread::spawn(move || alloc.free(a))
            };
            let mine = alloc.free(a);
            let theirs = other.join().unwrap();
            let ok_or_lost = |r: &Result<(), Error>| match r {
                Ok(()) => true,
                Err(Error::DoubleFree { ptr } | Error::UnknownPointer { ptr }) => {
                    assert_eq!(*ptr, a.addr());
                    false
                }
                Err(e) => panic!("unexpected {e:?}"),
            };
            tally.note(match (ok_or_lost(&mine), ok_or_lost(&theirs)) {
                (true, false) => "main kept the block in its cache",
                (false, true) => "the other thread gave the block to the arena",
                other => panic!("both or neither freed: {other:?}"),
            });
            let b = alloc.allocate(1000, 512).unwrap();
            assert_eq!(alloc.live_pointers(), 1);
            alloc.free(b).unwrap();
            let s = alloc.stats().caching;
            assert_eq!((s.allocations, s.frees), (2, 2));
            assert_eq!((s.live_blocks, s.allocated_bytes), (0, 0));
            assert_eq!(alloc.live_pointers(), 0);
            assert_eq!(alloc.empty_cache().unwrap(), s.reserved_bytes);
            assert_eq!(host.outstanding_bytes(), 0);
        },
    );
    tally.expect(&[
        "main kept the block in its cache",
        "the other thread gave the block to the arena",
    ]);
}
