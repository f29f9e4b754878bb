//! Edges of graph mode's thread caches (`src/graph_pool/slots.rs`), from a
//! review of the merge that brought them: what a cached pool block must
//! never do (be handed out twice, reach another stream, survive a flush
//! point, break a figure), checked where the caches meet the rest of the
//! allocator: revived blocks freed through the arena, `record_stream`,
//! nested guards, full caches, large and over-aligned blocks, a full
//! device, `empty_cache`, readers on other threads, and threads racing.

mod support;

use graphalloc::history::{BlockSnapshot, BlockState};
use graphalloc::{Allocator, DevicePtr, Error, GraphModeGuard, GraphPool, HostBackend};
use std::sync::Arc;
use support::{host_allocator, host_bytes, MIB};

/// Opens the calling thread's cache for its graph-mode pool: the first
/// free of a pool block under a guard asks for one, the guard's next
/// allocation makes it (then freed again, into the cache).
fn open_cache(alloc: &Allocator) {
    let p = alloc.allocate(512, 512).unwrap();
    alloc.free(p).unwrap();
    let p = alloc.allocate(512, 512).unwrap();
    alloc.free(p).unwrap();
}

/// An allocator over a host device of `capacity` bytes, a pool of it, and
/// the calling thread in graph mode on it with its cache open (drop in
/// reverse order: the guard first).
fn cached_mode(capacity: usize) -> (Arc<HostBackend>, Allocator, GraphPool, GraphModeGuard) {
    let (host, alloc) = host_allocator(capacity);
    let pool = alloc.create_pool();
    let guard = alloc.enter_graph_mode(&pool).unwrap();
    open_cache(&alloc);
    (host, alloc, pool, guard)
}

/// The pool's figures that every test checks at quiescence:
/// (live blocks, allocated bytes, requested bytes, allocations - frees).
fn at_rest(pool: &GraphPool) -> (usize, usize, usize, u64) {
    let s = pool.stats();
    let net = s.allocations.wrapping_sub(s.frees);
    (s.live_blocks, s.allocated_bytes, s.requested_bytes, net)
}

/// The pool at rest (see [`at_rest`]), then reset: nothing of it is live.
#[track_caller]
fn rests_and_resets(pool: &GraphPool) {
    assert_eq!(at_rest(pool), (0, 0, 0, 0));
    pool.reset().unwrap();
}

/// A block revived from the cache for a larger request of the same block
/// size, then freed through the pool's arena while the cache is still open
/// (by a thread outside graph mode, or with a use on another stream): the
/// arena still counts the request it handed the block out for (the
/// cache's counts fold at the next flush), so its free took more requested
/// bytes off than the arena held. That subtraction overflowed: a panic in
/// a debug build ("attempt to subtract with overflow" in
/// `PoolStats::on_free`), a wrapped figure until the next flush in a
/// release build.
#[test]
fn a_block_revived_for_a_larger_request_then_freed_to_the_arena_keeps_requested_exact() {
    let (host, alloc, pool, _g) = cached_mode(256 * MIB);
    let side = host.create_stream();
    let revived = || {
        let a = alloc.allocate(600, 512).unwrap(); // a 1 KiB block, 600 asked
        alloc.free(a).unwrap(); // into the cache
        let b = alloc.allocate(1000, 512).unwrap(); // the same, 1000 asked
        assert_eq!(b, a);
        b
    };
    let b = revived();
    std::thread::scope(|s| {
        s.spawn(|| alloc.free(b).unwrap()); // no guard there: to the arena
    });
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    // With a use on another stream (the arena's deferred path).
    let b = revived();
    alloc.record_stream(b, side).unwrap();
    alloc.free(b).unwrap();
    host.complete_stream(side);
    rests_and_resets(&pool);
}

/// A pool block used on another stream is not cached: it waits for that
/// stream's work in the arena, and the thread's next request of its size
/// does not get it back before then.
#[test]
fn a_block_with_a_stream_use_skips_the_cache_and_waits_for_its_stream() {
    let (host, alloc, pool, _g) = cached_mode(256 * MIB);
    let side = host.create_stream();
    let x = alloc.allocate(4096, 512).unwrap();
    alloc.record_stream(x, side).unwrap();
    alloc.free(x).unwrap();
    let y = alloc.allocate(4096, 512).unwrap();
    assert_ne!(y, x, "reused before the side stream's work is done");
    alloc.free(y).unwrap(); // into the cache
    host.complete_stream(side);
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    // The cached block comes back first (the thread's cache before the
    // arena), then the settled one.
    let z = alloc.allocate(4096, 512).unwrap();
    assert_eq!(z, y);
    alloc.free(z).unwrap();
    assert_eq!(pool.stats().pending_frees, 0);
    pool.reset().unwrap();
}

/// Guards on two pools, nested: a block of the outer pool freed while the
/// inner guard is current goes to the outer guard's cache, never to the
/// inner pool's requests; each pool's figures stay its own.
#[test]
fn nested_guards_on_two_pools_keep_each_pools_blocks_apart() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let (p, q) = (alloc.create_pool(), alloc.create_pool());
    let outer = alloc.enter_graph_mode(&p).unwrap();
    open_cache(&alloc);
    let a = alloc.allocate(8192, 512).unwrap();
    assert_eq!(alloc.pool_of(a), Some(p.id()));
    let inner = alloc.enter_graph_mode(&q).unwrap();
    alloc.free(a).unwrap(); // p's block, into the outer guard's cache
    open_cache(&alloc); // q's cache
    let b = alloc.allocate(8192, 512).unwrap();
    assert_eq!(alloc.pool_of(b), Some(q.id()), "q served from p's cache");
    alloc.free(b).unwrap(); // into q's cache
    let c = alloc.allocate(8192, 512).unwrap();
    assert_eq!(c, b);
    assert_eq!(at_rest(&p), (0, 0, 0, 0));
    let s = q.stats();
    assert_eq!((s.live_blocks, s.allocated_bytes), (1, 8192));
    drop(inner);
    // Back on p: its block comes back from the outer guard's cache.
    let d = alloc.allocate(8192, 512).unwrap();
    assert_eq!(d, a);
    assert_eq!(alloc.pool_of(d), Some(p.id()));
    alloc.free(c).unwrap(); // q's block, q's guard gone: to q's arena
    alloc.free(d).unwrap();
    drop(outer);
    assert_eq!(at_rest(&p), (0, 0, 0, 0));
    assert_eq!(at_rest(&q), (0, 0, 0, 0));
    let totals = alloc.stats();
    assert_eq!(
        (totals.pools.allocated_bytes, totals.pools.live_blocks),
        (0, 0)
    );
    assert_eq!(totals.pools.allocations, totals.pools.frees);
    p.reset().unwrap();
    q.reset().unwrap();
}

/// Two guards on one pool dropped out of order: the outer one (dropped
/// first) gives its cached blocks back, the inner one keeps working.
#[test]
fn nested_guards_on_one_pool_dropped_out_of_order_give_their_blocks_back() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let outer = alloc.enter_graph_mode(&pool).unwrap();
    open_cache(&alloc);
    let a = alloc.allocate(2048, 512).unwrap();
    alloc.free(a).unwrap(); // the outer guard's cache
    let inner = alloc.enter_graph_mode(&pool).unwrap();
    drop(outer); // out of order: its cache goes back to the arena
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    assert_eq!(alloc.free(a), Err(Error::DoubleFree { ptr: a.addr() }));
    assert!(alloc.is_graph_mode());
    open_cache(&alloc); // the inner guard's cache
    let b = alloc.allocate(2048, 512).unwrap();
    alloc.free(b).unwrap(); // into it
    let c = alloc.allocate(2048, 512).unwrap();
    assert_eq!(c, b, "the inner guard's cache serves");
    assert_eq!(alloc.pool_of(c), Some(pool.id()));
    alloc.free(c).unwrap();
    drop(inner);
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    assert!(!alloc.is_graph_mode());
    pool.reset().unwrap();
}

/// A cache holds 8 blocks of a size: the ninth free goes to the arena,
/// and every figure stays exact.
#[test]
fn a_full_cache_sends_further_frees_to_the_arena() {
    let (_host, alloc, pool, _g) = cached_mode(256 * MIB);
    let blocks: Vec<_> = (0..12)
        .map(|_| alloc.allocate(4096, 512).unwrap())
        .collect();
    for &p in &blocks {
        alloc.free(p).unwrap();
    }
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    // Twelve again: eight from the cache, four from the arena (which
    // takes the cached ones back first only when it hands one out).
    let again: Vec<_> = (0..12)
        .map(|_| alloc.allocate(4096, 512).unwrap())
        .collect();
    let mut seen = again.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 12, "a block handed out twice");
    let s = pool.stats();
    assert_eq!((s.live_blocks, s.allocated_bytes), (12, 12 * 4096));
    assert_eq!(s.peak_allocated_bytes, 12 * 4096);
    for &p in &again {
        alloc.free(p).unwrap();
    }
    rests_and_resets(&pool);
}

/// Blocks over 1 MiB, and a request padded for its alignment, stay out of
/// the cache or come back only for their exact block size.
#[test]
fn large_and_over_aligned_blocks_keep_exact_figures() {
    let (_host, alloc, pool, _g) = cached_mode(256 * MIB);
    let big = alloc.allocate(3 * MIB, 512).unwrap();
    alloc.free(big).unwrap();
    assert_eq!(pool.stats().live_blocks, 0);
    let odd = alloc.allocate(1000, 4096).unwrap();
    assert_eq!(odd.addr() % 4096, 0);
    alloc.free(odd).unwrap();
    assert_eq!(alloc.free(odd), Err(Error::DoubleFree { ptr: odd.addr() }));
    let plain = alloc.allocate(1000, 512).unwrap();
    assert_eq!(alloc.requested_size(plain), Some(1000));
    alloc.free(plain).unwrap();
    rests_and_resets(&pool);
}

/// With the device full, a request the cache cannot serve is placed in
/// the cached blocks' space (they go back to the arena first) instead of
/// failing for want of a new segment.
#[test]
fn a_full_device_serves_a_miss_from_the_cached_blocks_space() {
    let (_host, alloc, pool, _g) = cached_mode(2 * MIB);
    let (a, b) = (
        alloc.allocate(MIB, 512).unwrap(),
        alloc.allocate(MIB, 512).unwrap(),
    );
    alloc.free(a).unwrap();
    alloc.free(b).unwrap(); // both cached, the one segment full for the arena
    let c = alloc.allocate(768 << 10, 512).unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.segments, s.live_blocks, s.allocated_bytes),
        (1, 1, 768 << 10)
    );
    // Out of memory with blocks cached: the report's figures are flushed.
    let d = alloc.allocate(256 << 10, 512).unwrap();
    alloc.free(d).unwrap(); // cached
    match alloc.allocate(3 * MIB / 2, 512) {
        Err(Error::OutOfMemory { allocated, .. }) => assert_eq!(allocated, 768 << 10),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let s = pool.stats();
    assert_eq!((s.live_blocks, s.allocated_bytes), (1, 768 << 10));
    alloc.free(c).unwrap();
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
}

/// `empty_cache` leaves the pool's segments (graphs replay into them) and
/// the cached blocks usable; the figures stay exact.
#[test]
fn empty_cache_leaves_cached_pool_blocks_usable() {
    let (_host, alloc, pool, _g) = cached_mode(256 * MIB);
    let a = alloc.allocate(64 << 10, 512).unwrap();
    alloc.free(a).unwrap();
    let reserved = pool.stats().reserved_bytes;
    alloc.empty_cache().unwrap();
    assert_eq!(pool.stats().reserved_bytes, reserved);
    let b = alloc.allocate(64 << 10, 512).unwrap();
    assert_eq!(alloc.pool_of(b), Some(pool.id()));
    alloc.free(b).unwrap();
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    let s = alloc.stats();
    assert_eq!((s.pools.allocated_bytes, s.total.allocated_bytes), (0, 0));
}

/// Readers on another thread see exact figures while a thread in graph
/// mode holds cached blocks (every reader flushes); a flushed block's
/// second free is still a double free.
#[test]
fn readers_on_another_thread_flush_the_caches() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let (to_reader, from_owner) = std::sync::mpsc::channel::<DevicePtr>();
    let (to_owner, from_reader) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (alloc, pool) = (&alloc, &pool);
        s.spawn(move || {
            let _g = alloc.enter_graph_mode(pool).unwrap();
            open_cache(alloc);
            let held: Vec<_> = (0..5).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
            for &p in &held {
                alloc.free(p).unwrap();
            }
            to_reader.send(held[0]).unwrap();
            from_reader.recv().unwrap();
            // Flushed by the reader: served from the arena again.
            let p = alloc.allocate(MIB, 512).unwrap();
            alloc.free(p).unwrap();
        });
        let freed = from_owner.recv().unwrap();
        let st = alloc.stats();
        assert_eq!((st.pools.allocated_bytes, st.pools.live_blocks), (0, 0));
        assert_eq!(st.total.allocated_bytes, 0);
        assert_eq!(st.pools.peak_allocated_bytes, 5 * MIB);
        assert_eq!(
            alloc.free(freed),
            Err(Error::DoubleFree { ptr: freed.addr() })
        );
        to_owner.send(()).unwrap();
    });
    rests_and_resets(&pool);
}

/// Threads in graph mode on one pool, allocating, filling, checking and
/// freeing blocks of many sizes, a third of them through a shared mailbox
/// that any thread (or, at the end, the main thread outside graph mode)
/// frees: no block is ever handed out twice (its contents would change
/// under its owner), and every figure is exact at the end.
#[test]
fn threads_in_graph_mode_on_one_pool_never_share_a_block() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 300;
    type Block = (DevicePtr, usize, u8);
    let (_host, alloc) = host_allocator(1 << 30);
    let pool = alloc.create_pool();
    let mailbox = std::sync::Mutex::new(Vec::<Block>::new());
    let check = |(p, size, tag): Block| {
        // SAFETY: `p` is a live host block of `size` bytes, owned by the
        // caller (taken from its list or the mailbox) until it frees it.
        let bytes = unsafe { host_bytes(p, size) };
        assert!(bytes.iter().all(|&b| b == tag), "block {p:?} shared");
        p
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (alloc, pool, mailbox) = (&alloc, &pool, &mailbox);
            s.spawn(move || {
                let _g = alloc.enter_graph_mode(pool).unwrap();
                let mut mine: Vec<Block> = Vec::new();
                for round in 0..ROUNDS {
                    let size = [512, 1000, 4096, 64 << 10, MIB][(round * 7 + t) % 5];
                    let p = alloc.allocate(size, 512).unwrap();
                    let tag = (t * 61 + round) as u8;
                    // SAFETY: `p` is a live host block of `size` bytes,
                    // owned by this thread until freed.
                    unsafe { host_bytes(p, size) }.fill(tag);
                    mine.push((p, size, tag));
                    if round % 5 == 0 {
                        let other = mailbox.lock().unwrap().pop();
                        if let Some(b) = other {
                            alloc.free(check(b)).unwrap();
                        }
                    }
                    if mine.len() > 6 {
                        let b = mine.remove(round % mine.len());
                        if round % 3 == 0 {
                            mailbox.lock().unwrap().push(b);
                        } else {
                            alloc.free(check(b)).unwrap();
                        }
                    }
                }
                for b in mine {
                    alloc.free(check(b)).unwrap();
                }
            });
        }
    });
    for b in mailbox.into_inner().unwrap() {
        alloc.free(check(b)).unwrap();
    }
    assert_eq!(at_rest(&pool), (0, 0, 0, 0));
    let st = alloc.stats();
    assert_eq!((st.pools.allocated_bytes, st.pools.live_blocks), (0, 0));
    assert_eq!(st.pools.allocations, st.pools.frees);
    assert_eq!(alloc.live_pointers(), 0);
    pool.reset().unwrap();
}

/// The same life with expandable segments (the default; the other tests
/// keep plain segments): cached blocks come back, a miss takes them back
/// first, `reset` and the pool's drop leave nothing behind.
#[test]
fn expandable_segments_keep_cached_blocks_exact_and_released() {
    let host = Arc::new(HostBackend::new(0, 256 * MIB));
    let backend = host.clone() as Arc<dyn graphalloc::Backend>;
    let alloc = Allocator::from_backends_with(vec![backend], &graphalloc::Config::default())
        .expect("an allocator over one host backend");
    let pool = alloc.create_pool();
    let g = alloc.enter_graph_mode(&pool).unwrap();
    open_cache(&alloc);
    let blocks: Vec<_> = (0..4).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
    for &p in &blocks {
        alloc.free(p).unwrap();
    }
    let again = alloc.allocate(MIB, 512).unwrap();
    assert!(blocks.contains(&again));
    let other = alloc.allocate(3000, 512).unwrap(); // a miss: the rest go back
    let s = pool.stats();
    assert_eq!((s.live_blocks, s.allocated_bytes), (2, MIB + 3072));
    assert_eq!(s.peak_allocated_bytes, 4 * MIB);
    alloc.free(again).unwrap();
    alloc.free(other).unwrap();
    rests_and_resets(&pool);
    drop(g);
    drop(pool);
    assert_eq!(alloc.stats().pools.reserved_bytes, 0);
    drop(alloc);
    assert_eq!(host.outstanding_bytes(), 0);
}

/// A pool block of a stream being captured never enters the cache (only
/// default-stream blocks do, and the default stream is never captured):
/// the capture reuses it from the pool, and a default-stream request never
/// gets it, during the capture or after.
#[test]
fn a_block_freed_on_a_captured_stream_stays_on_its_stream() {
    let (host, alloc, pool, _g) = cached_mode(256 * MIB);
    let side = host.create_stream();
    host.begin_capture(side);
    let x = {
        let _s = graphalloc::use_stream(side);
        let x = alloc.allocate(4096, 512).unwrap();
        alloc.free(x).unwrap();
        let y = alloc.allocate(4096, 512).unwrap();
        assert_eq!(y, x, "the capture reuses its freed block from the pool");
        alloc.free(y).unwrap();
        x
    };
    let d = alloc.allocate(4096, 512).unwrap();
    assert_ne!(d, x, "a default-stream request got the capture's block");
    alloc.free(d).unwrap(); // into the cache
    host.end_capture(side);
    let e = alloc.allocate(4096, 512).unwrap();
    assert_eq!(e, d);
    assert_ne!(e, x);
    alloc.free(e).unwrap();
    rests_and_resets(&pool);
}

/// A snapshot shows a cached block free (the pool's walk flushes first),
/// and a revived one allocated for its new request; its allocated bytes
/// agree with the pool's figures.
#[test]
fn a_snapshot_shows_cached_blocks_free_and_revived_ones_live() {
    let (_host, alloc, pool, _g) = cached_mode(256 * MIB);
    let a = alloc.allocate(3000, 512).unwrap();
    alloc.free(a).unwrap();
    let blocks_of = |alloc: &Allocator| -> Vec<BlockSnapshot> {
        let snap = alloc.snapshot();
        let pooled = snap
            .segments
            .into_iter()
            .filter(|s| s.pool == Some(pool.id()));
        pooled.flat_map(|s| s.blocks).collect()
    };
    let blocks = blocks_of(&alloc);
    assert!(blocks.iter().all(|b| b.state == BlockState::Inactive));
    let b = alloc.allocate(2900, 512).unwrap();
    assert_eq!(b, a, "the same block, from the arena (the walk flushed it)");
    alloc.free(b).unwrap(); // into the cache again
    let c = alloc.allocate(2900, 512).unwrap(); // a hit
    let live: Vec<_> = (blocks_of(&alloc).into_iter())
        .filter(|b| b.state == BlockState::ActiveAllocated)
        .map(|b| (b.address, b.size, b.requested_size))
        .collect();
    assert_eq!(live, [(c.addr(), 3072, 2900)]);
    assert_eq!(pool.stats().allocated_bytes, 3072);
    alloc.free(c).unwrap();
    rests_and_resets(&pool);
}

/// A reader racing a thread whose pairs hit its cache: every read of the
/// pool's figures is consistent (the counts agree with the live blocks,
/// all of one size), and the peak never passes the two blocks held.
#[test]
fn reads_racing_cache_hits_see_consistent_figures() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let done = std::sync::atomic::AtomicBool::new(false);
    let opened = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _g = alloc.enter_graph_mode(&pool).unwrap();
            open_cache(&alloc); // 512 B blocks, before the reads
            opened.wait();
            for _ in 0..20_000 {
                let a = alloc.allocate(4096, 512).unwrap();
                let b = alloc.allocate(4096, 512).unwrap();
                alloc.free(a).unwrap();
                alloc.free(b).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        opened.wait();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let st = pool.stats();
            let net = st.allocations - st.frees;
            assert_eq!(net, st.live_blocks as u64, "{st:?}");
            assert!(st.live_blocks <= 2, "{st:?}");
            assert_eq!(st.allocated_bytes % 4096, 0, "{st:?}");
            assert!(st.peak_allocated_bytes <= 2 * 4096, "{st:?}");
            let all = alloc.stats();
            assert!(
                all.pools.allocated_bytes <= all.pools.reserved_bytes,
                "{all:?}"
            );
        }
    });
    rests_and_resets(&pool);
}
