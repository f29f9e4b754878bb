//! The per-thread caches of freed blocks (`src/thread_cache.rs`) on the host
//! backend: reuse on the freeing thread, exact statistics, errors for frees
//! of cached blocks, stream order, and the drains (a miss, another thread's
//! reservation or out-of-memory, `empty_cache`, a thread's exit).

use graphalloc::{Allocator, Backend, Config, Error, HostBackend, SMALL_SEGMENT};
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn setup(capacity: usize) -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 1.0).unwrap();
    (host, alloc)
}

#[test]
fn a_freed_block_comes_back_to_its_thread_and_the_books_stay_exact() {
    let (_host, alloc) = setup(1 << 30);
    let p = alloc.allocate(MIB, 512).unwrap();
    alloc.free(p).unwrap();
    let s = alloc.stats().caching;
    assert_eq!(
        (s.allocated_bytes, s.requested_bytes, s.live_blocks),
        (0, 0, 0)
    );
    assert_eq!((s.allocations, s.frees), (1, 1));
    assert_eq!(s.peak_allocated_bytes, MIB);
    let q = alloc.allocate(MIB - 100, 512).unwrap();
    assert_eq!(p, q, "the thread's cache gave the block back");
    let s = alloc.stats();
    assert_eq!(s.caching.allocated_bytes, MIB);
    assert_eq!(s.caching.requested_bytes, MIB - 100);
    assert_eq!(s.caching.live_blocks, 1);
    assert_eq!(s.total.allocated_bytes, MIB);
    let r = alloc.allocate(512, 512).unwrap();
    alloc.free(q).unwrap();
    alloc.free(r).unwrap();
    let s = alloc.stats();
    assert_eq!(s.caching.peak_allocated_bytes, MIB + 512, "the exact peak");
    assert_eq!(s.total.peak_allocated_bytes, MIB + 512);
    assert_eq!(
        alloc.device_stats(0).unwrap().peak_allocated_bytes,
        MIB + 512
    );
    assert_eq!((s.caching.allocations, s.caching.frees), (3, 3));
    assert_eq!(s.caching.allocated_bytes, 0);
}

/// A peak reached and left by cache hits alone, between two reads of the
/// statistics: the hits' changes of allocated bytes stay pending in the
/// thread's cache (no shared write) and cancel out before any fold, so only
/// the hit's own peak check (the shared value plus its pending change) can
/// see the peak; with one thread it is exact.
#[test]
fn a_peak_reached_by_cache_hits_alone_is_exact() {
    let (_host, alloc) = setup(1 << 30);
    let blocks: Vec<_> = (0..3).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
    for &p in &blocks {
        alloc.free(p).unwrap(); // into the thread's cache
    }
    alloc.reset_peak_stats();
    assert_eq!(alloc.stats().caching.peak_allocated_bytes, 0);
    for round in 1..=3 {
        let again: Vec<_> = (0..round)
            .map(|_| alloc.allocate(MIB, 512).unwrap())
            .collect();
        for p in again {
            assert!(blocks.contains(&p), "a cache hit");
            alloc.free(p).unwrap();
        }
    }
    let s = alloc.stats();
    assert_eq!(s.caching.allocated_bytes, 0);
    assert_eq!(s.caching.peak_allocated_bytes, 3 * MIB, "the exact peak");
    assert_eq!(s.total.peak_allocated_bytes, 3 * MIB);
    assert_eq!(alloc.device_stats(0).unwrap().peak_allocated_bytes, 3 * MIB);
}

#[test]
fn a_cached_block_freed_again_is_a_double_free() {
    let (_host, alloc) = setup(1 << 30);
    let p = alloc.allocate(4096, 512).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    let inside = graphalloc::DevicePtr::new(p.addr() + 512);
    assert!(matches!(
        alloc.free(inside),
        Err(Error::DoubleFree { .. } | Error::UnknownPointer { .. })
    ));
    assert_eq!(alloc.stats().caching.frees, 1, "nothing changed");
}

#[test]
fn empty_cache_releases_a_segment_whose_block_sits_in_a_thread_cache() {
    let (host, alloc) = setup(1 << 30);
    let p = alloc.allocate(4096, 512).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(alloc.empty_cache().unwrap(), SMALL_SEGMENT);
    assert_eq!(host.outstanding_bytes(), 0);
    assert_eq!(alloc.stats().caching.reserved_bytes, 0);
}

#[test]
fn a_block_freed_during_its_streams_capture_never_enters_a_thread_cache() {
    let (host, alloc) = setup(1 << 30);
    let s = host.create_stream();
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    host.begin_capture(s);
    alloc.free(p).unwrap();
    assert_eq!(
        alloc.stats().caching.pending_frees,
        1,
        "waits for the capture"
    );
    host.end_capture(s);
    // Not in the thread's cache (which would hand it out at once): the
    // arena records an event on the stream now and waits for it.
    let q = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_ne!(p, q, "not reused before the capture's work completed");
    host.complete_stream(s);
    let r = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(alloc.stats().caching.pending_frees, 0);
    assert_eq!(p, r, "reused once the event completed");
    alloc.free(q).unwrap();
    alloc.free(r).unwrap();
}

#[test]
fn a_block_freed_by_another_thread_goes_back_to_the_arena() {
    let (_host, alloc) = setup(1 << 30);
    let p = alloc.allocate(4096, 512).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| alloc.free(p).unwrap());
    });
    // The arena has it (not the other thread's cache, which may not even
    // be gone yet): this thread's next request of that size gets it.
    let q = alloc.allocate(4096, 512).unwrap();
    assert_eq!(p, q);
    alloc.free(q).unwrap();
}

#[test]
fn out_of_memory_drains_another_live_threads_cache() {
    // Room for a 12 MiB segment and a little more (plain segments: the
    // sizes are known).
    let host = Arc::new(HostBackend::new(0, 13 * MIB));
    let config = Config {
        expandable_segments: false,
        ..Config::default()
    };
    let alloc =
        Allocator::from_backends_with(vec![host.clone() as Arc<dyn Backend>], &config).unwrap();
    let (freed_tx, freed_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let alloc = &alloc;
        s.spawn(move || {
            let p = alloc.allocate(MIB, 512).unwrap(); // a 2 MiB segment
            alloc.free(p).unwrap(); // into this live thread's cache
            freed_tx.send(()).unwrap();
            done_rx.recv().unwrap(); // stay alive until the other is served
        });
        freed_rx.recv().unwrap();
        // 12 MiB fit only after the idle 2 MiB segment (whose block sits in
        // the other thread's cache) goes.
        let q = alloc
            .allocate(12 * MIB, 512)
            .expect("served after the drain");
        alloc.free(q).unwrap();
        done_tx.send(()).unwrap();
    });
    let s = alloc.stats().caching;
    assert_eq!(s.oom_retries, 1);
    assert_eq!(s.reserved_bytes, 12 * MIB);
}

#[test]
fn large_blocks_go_back_to_best_fit_at_once() {
    let (_host, alloc) = setup(1 << 30);
    let p = alloc.allocate(3 * MIB, 512).unwrap();
    alloc.free(p).unwrap();
    // Not cached: another thread's request of another size reuses it at once.
    let q = std::thread::scope(|s| {
        s.spawn(|| alloc.allocate(2 * MIB, 512).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(p, q, "best fit, lowest address");
    alloc.free(q).unwrap();
}

#[test]
fn an_exited_threads_cached_block_is_not_lost() {
    let (_host, alloc) = setup(1 << 30);
    // Reserve the segment from this thread, so both threads carve from it.
    let first = alloc.allocate(512, 512).unwrap();
    let p = std::thread::scope(|s| {
        s.spawn(|| {
            let p = alloc.allocate(8192, 512).unwrap();
            alloc.free(p).unwrap(); // into this thread's cache, which exits
            p
        })
        .join()
        .unwrap()
    });
    // The thread's exit (its thread-locals' destruction) may end after the
    // join: wait for the orphaned cache to be flushed by a carve.
    let mut q = alloc.allocate(8192, 512).unwrap();
    for _ in 0..1000 {
        if q == p {
            break;
        }
        alloc.free(q).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
        alloc.empty_cache().unwrap();
        q = alloc.allocate(8192, 512).unwrap();
    }
    assert_eq!(q, p, "the exited thread's block came back to the arena");
    alloc.free(q).unwrap();
    alloc.free(first).unwrap();
    let s = alloc.stats().caching;
    assert_eq!((s.live_blocks, s.allocated_bytes), (0, 0));
}

#[test]
fn many_threads_and_allocators_keep_exact_counts() {
    for _ in 0..3 {
        let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let alloc = &alloc;
                s.spawn(move || {
                    for i in 0..200 {
                        let p = alloc.allocate(512 * (1 + (i + t) % 3), 512).unwrap();
                        alloc.free(p).unwrap();
                    }
                });
            }
        });
        let s = alloc.stats().caching;
        assert_eq!((s.allocations, s.frees), (800, 800));
        assert_eq!(
            (s.live_blocks, s.allocated_bytes, s.requested_bytes),
            (0, 0, 0)
        );
    }
}

#[test]
fn a_cached_block_drained_during_its_streams_capture_is_free_and_completed_once() {
    let (host, alloc) = setup(1 << 30);
    alloc.record_history(1000).unwrap();
    let s = host.create_stream();
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    alloc.free(p).unwrap(); // into this thread's cache: a completed free
    host.begin_capture(s);
    alloc.empty_cache().unwrap(); // drains the thread caches mid-capture
    assert_eq!(
        alloc.stats().caching.pending_frees,
        0,
        "freed before the capture: nothing to wait for"
    );
    host.end_capture(s);
    let q = alloc.allocate_on(0, s, 4096, 512).unwrap();
    let completed = alloc
        .history()
        .iter()
        .filter(|e| e.action == graphalloc::history::Action::FreeCompleted && e.addr == p.addr())
        .count();
    assert_eq!(completed, 1, "one free, one completion");
    alloc.free(q).unwrap();
}

/// Another thread's frees can take a gauge below zero while the thread that
/// allocated holds a change pending (a cache hit): the next allocation's
/// peak must not be the wrapped value (it was about 2^64; found in review).
#[test]
fn frees_by_another_thread_during_a_pending_hit_keep_the_peak_sane() {
    let (_host, alloc) = setup(1 << 30);
    let (q, r) = {
        let p = alloc.allocate(4096, 512).unwrap();
        alloc.free(p).unwrap(); // into this thread's cache: -4 KiB pending
        let q = alloc.allocate(8192, 512).unwrap(); // a miss: folds
        let r = alloc.allocate(4096, 512).unwrap(); // a hit: +4 KiB pending
        (q.addr(), r.addr())
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            // Not this thread's blocks: to the arena, folded at once.
            alloc.free(graphalloc::DevicePtr::new(q)).unwrap();
            alloc.free(graphalloc::DevicePtr::new(r)).unwrap();
            let x = alloc.allocate(512, 512).unwrap();
            alloc.free(x).unwrap();
        });
    });
    let peak = alloc.stats().caching.peak_allocated_bytes;
    assert!(peak <= 16 << 20, "peak {peak}");
    alloc.reset_peak_stats();
    let peak = alloc.stats().total.peak_allocated_bytes;
    assert!(peak <= 16 << 20, "peak after a reset {peak}");
}
