//! Graph mode's thread caches (`src/graph_pool/slots.rs`): a pool block
//! freed in graph mode waits in the thread's cache for the pool, its
//! record kept, until the thread asks for that size again or a flush gives
//! it back to the pool's arena. What the user sees must not change: the
//! pool's figures exact at every read, `reset`, double frees, the pool's
//! lifetime, placement, the memory history.

mod support;

use graphalloc::history::Action;
use graphalloc::{Allocator, DevicePtr, Error, GraphModeGuard, GraphPool};
use support::{host_allocator, MIB};

/// An allocator, a pool of it, and the calling thread in graph mode on it
/// (drop in reverse order: the guard first).
fn in_graph_mode() -> (Allocator, GraphPool, GraphModeGuard) {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let guard = alloc.enter_graph_mode(&pool).unwrap();
    (alloc, pool, guard)
}

/// A block of `size` bytes allocated and freed into the calling thread's
/// cache for its graph-mode pool (made first: [`open_cache`]).
fn freed_into_the_cache(alloc: &Allocator, size: usize) -> DevicePtr {
    open_cache(alloc, size);
    let p = alloc.allocate(size, 512).unwrap();
    alloc.free(p).unwrap();
    p
}

/// Makes the calling thread's cache for the pool of its graph-mode guard:
/// the first free of a pool block under a guard asks for one, and the
/// guard's next allocation makes it. One allocation and one free of
/// `size` bytes.
fn open_cache(alloc: &Allocator, size: usize) {
    let p = alloc.allocate(size, 512).unwrap();
    alloc.free(p).unwrap();
}

#[test]
fn a_block_freed_in_graph_mode_comes_back_with_exact_figures_at_every_read() {
    let (alloc, pool, _g) = in_graph_mode();
    let a = freed_into_the_cache(&alloc, 1000);
    // Freed: not live for anyone, though its block waits in this thread's
    // cache.
    assert_eq!(alloc.live_pointers(), 0);
    assert_eq!(alloc.requested_size(a), None);
    assert_eq!(alloc.pool_of(a), None);
    let s = pool.stats();
    assert_eq!((s.allocations, s.frees, s.live_blocks), (2, 2, 0));
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
    assert_eq!(s.peak_allocated_bytes, 1024);
    for round in 1..4u64 {
        let b = alloc.allocate(700, 512).unwrap();
        assert_eq!(b, a, "the thread's freed block, handed out again");
        assert_eq!(alloc.requested_size(b), Some(700));
        assert_eq!(alloc.pool_of(b), Some(pool.id()));
        let s = pool.stats();
        assert_eq!((s.allocations, s.frees), (2 + round, 1 + round));
        assert_eq!(
            (s.live_blocks, s.allocated_bytes, s.requested_bytes),
            (1, 1024, 700)
        );
        alloc.free(b).unwrap();
    }
    let totals = alloc.stats();
    assert_eq!((totals.pools.allocations, totals.pools.frees), (5, 5));
    assert_eq!(
        (totals.pools.allocated_bytes, totals.total.allocated_bytes),
        (0, 0)
    );
    assert_eq!(totals.pools.peak_allocated_bytes, 1024);
}

#[test]
fn a_miss_after_a_cached_block_of_another_size_keeps_the_peak_exact() {
    // The 1 KiB block waits in the cache when 2 KiB are asked for: the
    // arena takes it back first, so the peak is one block, not both (and
    // the 2 KiB block is placed where it would be without the cache).
    let (alloc, pool, _g) = in_graph_mode();
    let a = freed_into_the_cache(&alloc, 1024);
    let b = alloc.allocate(2048, 512).unwrap();
    assert_eq!(
        b, a,
        "the freed space, merged back, serves the larger block"
    );
    let s = pool.stats();
    assert_eq!((s.allocated_bytes, s.peak_allocated_bytes), (2048, 2048));
    assert_eq!(alloc.stats().pools.peak_allocated_bytes, 2048);
    alloc.free(b).unwrap();
    // Over-aligned requests take the pool's full path, which flushes too:
    // 1 KiB aligned to 4 KiB is a block of 1 KiB + 3.5 KiB of padding, the
    // peak that block alone (not with the 2 KiB block in the cache).
    let c = alloc.allocate(1024, 4096).unwrap();
    let s = pool.stats();
    assert_eq!((s.allocated_bytes, s.peak_allocated_bytes), (4608, 4608));
    alloc.free(c).unwrap();
}

#[test]
fn the_pool_resets_while_its_freed_blocks_wait_in_a_guards_cache() {
    let (alloc, pool, g) = in_graph_mode();
    open_cache(&alloc, MIB);
    let blocks: Vec<_> = (0..4).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
    for &p in &blocks {
        alloc.free(p).unwrap();
    }
    pool.reset().unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.live_blocks, s.allocated_bytes, s.peak_allocated_bytes),
        (0, 0, 0)
    );
    // After the reset the blocks come from the arena again, at the same
    // places.
    let again: Vec<_> = (0..4).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
    let (mut want, mut got) = (blocks.clone(), again.clone());
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // Busy while one is live, from another thread too.
    std::thread::scope(|s| {
        s.spawn(|| assert!(matches!(pool.reset(), Err(Error::PoolBusy { .. }))));
    });
    for &p in &again {
        alloc.free(p).unwrap();
    }
    drop(g);
    pool.reset().unwrap();
}

#[test]
fn a_second_free_of_a_cached_block_is_a_double_free_from_any_thread() {
    let (alloc, pool, _g) = in_graph_mode();
    let a = freed_into_the_cache(&alloc, 4096);
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(alloc.free(a), Err(Error::DoubleFree { ptr: a.addr() })));
    });
    let b = alloc.allocate(4096, 512).unwrap();
    alloc.free(b).unwrap();
    assert_eq!(alloc.free(b), Err(Error::DoubleFree { ptr: b.addr() }));
    let s = pool.stats();
    assert_eq!((s.allocations, s.frees, s.live_blocks), (3, 3, 0));
}

#[test]
fn a_thread_that_exits_in_graph_mode_gives_its_cached_blocks_back() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let reserved = std::thread::scope(|s| {
        s.spawn(|| {
            // Left in graph mode for good: the thread's exit ends it.
            std::mem::forget(alloc.enter_graph_mode(&pool).unwrap());
            open_cache(&alloc, 64 << 10);
            let p = alloc.allocate(64 << 10, 512).unwrap();
            alloc.free(p).unwrap();
            pool.stats().reserved_bytes
        })
        .join()
        .unwrap()
    });
    assert!(reserved > 0);
    let s = pool.stats();
    assert_eq!((s.allocations, s.frees, s.live_blocks), (2, 2, 0));
    pool.reset().unwrap();
    let before = host.outstanding_bytes();
    drop(pool);
    assert_eq!(host.outstanding_bytes(), before - reserved);
}

#[test]
fn a_pool_held_only_by_a_guard_is_released_when_the_guard_goes_with_blocks_cached() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let g = alloc.enter_graph_mode(&pool).unwrap();
    drop(pool);
    open_cache(&alloc, MIB);
    let p = alloc.allocate(MIB, 512).unwrap();
    alloc.free(p).unwrap();
    assert!(host.outstanding_bytes() > 0);
    drop(g);
    assert_eq!(host.outstanding_bytes(), 0, "the pool went with its guard");
    assert_eq!(alloc.stats().pools.segments, 0);
}

#[test]
fn a_block_freed_by_another_thread_in_graph_mode_goes_to_that_threads_cache() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let a = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        alloc.allocate(8192, 512).unwrap()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let _g = alloc.enter_graph_mode(&pool).unwrap();
            alloc.free(a).unwrap();
            assert_eq!(pool.stats().live_blocks, 0);
            for _ in 0..3 {
                // The first free asked for this thread's cache, the first
                // allocation made it; then the block cycles through it.
                assert_eq!(alloc.allocate(8192, 512).unwrap(), a);
                alloc.free(a).unwrap();
            }
        });
    });
    let s = pool.stats();
    assert_eq!((s.allocations, s.frees, s.live_blocks), (4, 4, 0));
    pool.reset().unwrap();
}

#[test]
fn frees_into_the_cache_are_recorded_in_the_history_as_pool_frees() {
    let (_host, alloc) = host_allocator(256 * MIB);
    alloc.record_history(100).unwrap();
    let pool = alloc.create_pool();
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    // The first free goes to the arena, the next ones into the cache
    // (made by the second allocation): recorded alike.
    for _ in 0..3 {
        let a = alloc.allocate(1000, 512).unwrap();
        alloc.free(a).unwrap();
    }
    let a = alloc.allocate(1000, 512).unwrap();
    let h = alloc.history();
    let events: Vec<_> = (h.iter().filter(|e| e.action != Action::SegmentAlloc))
        .map(|e| (e.action, e.addr, e.pool.is_some()))
        .collect();
    let (alloc_, requested, completed) = (
        (Action::Alloc, a.addr(), true),
        (Action::FreeRequested, a.addr(), true),
        (Action::FreeCompleted, a.addr(), true),
    );
    let mut want = [alloc_, requested, completed].repeat(3);
    want.push(alloc_);
    assert_eq!(events, want);
    assert!(h
        .iter()
        .filter(|e| e.action != Action::SegmentAlloc && e.action != Action::FreeCompleted)
        .all(|e| e.pool == Some(pool.id())));
}

#[test]
fn an_allocator_dropped_while_a_guard_holds_cached_blocks_leaves_the_guard_to_release_the_pool() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let g = alloc.enter_graph_mode(&pool).unwrap();
    let p = freed_into_the_cache(&alloc, MIB);
    assert!(host.outstanding_bytes() > 0);
    drop(alloc);
    drop(pool);
    // The guard still holds the pool, and its cache the block.
    assert!(host.outstanding_bytes() > 0);
    drop(g);
    assert_eq!(
        host.outstanding_bytes(),
        0,
        "{p:?}'s pool released with the guard"
    );
}
