//! Concurrency on the host backend: many threads allocating, writing,
//! checking and freeing (also each other's blocks), graph mode on some
//! threads only, racing frees, and pools released by whichever thread frees
//! their last block.

mod support;

use graphalloc::{Allocator, Backend, Config, DevicePtr, Error, GraphPool, HostBackend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Barrier, Mutex};
use support::{host_bytes, MIB};

const THREADS: usize = 8;

/// A live block as the test knows it.
#[derive(Debug, Clone, Copy)]
struct Block {
    ptr: DevicePtr,
    size: usize,
    /// The byte every byte of the block was set to.
    pattern: u8,
}

/// Live intervals `start -> (end, thread)`, checked for overlap on insert.
#[derive(Default)]
struct Intervals(Mutex<BTreeMap<u64, (u64, usize)>>);

impl Intervals {
    fn insert(&self, b: &Block, thread: usize) {
        let (start, end) = (b.ptr.addr(), b.ptr.addr() + b.size as u64);
        let mut map = self.0.lock().unwrap();
        if let Some((&s, &(e, t))) = map.range(..=start).next_back() {
            assert!(
                e <= start,
                "thread {thread}'s block {start:#x}..{end:#x} overlaps thread {t}'s {s:#x}..{e:#x}"
            );
        }
        if let Some((&s, &(e, t))) = map.range(start..).next() {
            assert!(
                end <= s,
                "thread {thread}'s block {start:#x}..{end:#x} overlaps thread {t}'s {s:#x}..{e:#x}"
            );
        }
        map.insert(start, (end, thread));
    }

    /// Must be called *before* the block is freed, so a later allocation
    /// of the same memory is not mistaken for an overlap.
    fn remove(&self, b: &Block) {
        let removed = self.0.lock().unwrap().remove(&b.ptr.addr());
        assert!(removed.is_some(), "{:?} was not live", b.ptr);
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

fn fill(b: &Block) {
    // SAFETY: `b` is a live block of a host-backend allocator, handed out to
    // this test and not yet freed; only the thread holding `b` touches it.
    unsafe { host_bytes(b.ptr, b.size) }.fill(b.pattern);
}

fn check_and_free(alloc: &Allocator, live: &Intervals, b: Block) {
    // SAFETY: as in `fill`; the block moved to this thread through a mutex
    // (or never left it), so the writer's bytes are visible here.
    let bytes = unsafe { host_bytes(b.ptr, b.size) };
    if let Some(i) = bytes.iter().position(|&x| x != b.pattern) {
        panic!(
            "{:?} ({} bytes): byte {i} is {:#x}, expected {:#x}: another block overlapped it",
            b.ptr, b.size, bytes[i], b.pattern
        );
    }
    live.remove(&b);
    alloc.free(b.ptr).unwrap();
}

fn random_size(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..70 => rng.random_range(1..=4096),
        70..96 => rng.random_range(4097..=256 * 1024),
        _ => rng.random_range(256 * 1024..=3 * MIB),
    }
}

/// An allocator over one host device of `capacity` bytes whose cache has
/// `shards` arenas.
fn sharded_allocator(capacity: usize, shards: usize) -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let config = Config {
        shards,
        ..Config::host(capacity)
    };
    let alloc = Allocator::from_backends_with(vec![host.clone() as Arc<dyn Backend>], &config)
        .expect("an allocator over one host backend");
    (host, alloc)
}

#[test]
fn eight_threads_allocate_write_and_free_without_overlap() {
    allocate_write_and_free_without_overlap(1);
}

#[test]
fn eight_threads_on_a_sharded_cache_allocate_write_and_free_without_overlap() {
    allocate_write_and_free_without_overlap(4);
}

fn allocate_write_and_free_without_overlap(shards: usize) {
    const OPS: usize = 1500;
    let (host, alloc) = sharded_allocator(2 << 30, shards);
    let pool = alloc.create_pool();
    let live = Intervals::default();
    let mailbox: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    let allocated = AtomicU64::new(0);
    let passed_on = AtomicU64::new(0);
    let start = Barrier::new(THREADS);

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (alloc, pool, live, mailbox, host) = (&alloc, &pool, &live, &mailbox, &host);
            let (allocated, passed_on, start) = (&allocated, &passed_on, &start);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x5747_0100 + t as u64);
                let mut mine: Vec<Block> = Vec::new();
                start.wait();
                for seq in 0..OPS {
                    let op = rng.random_range(0..100);
                    if op < 45 || mine.is_empty() {
                        let size = random_size(&mut rng);
                        let align = [1, 16, 256, 512, 4096, 65536][rng.random_range(0..6)];
                        // Even threads capture into the shared pool now and then.
                        let ptr = if t % 2 == 0 && rng.random_bool(0.3) {
                            let _g = alloc.enter_graph_mode(pool).unwrap();
                            alloc.allocate(size, align).unwrap()
                        } else {
                            alloc.allocate(size, align).unwrap()
                        };
                        assert_eq!(ptr.addr() % align as u64, 0);
                        allocated.fetch_add(1, Ordering::Relaxed);
                        let pattern = ((t as u8) << 5) | ((seq % 31) as u8 + 1);
                        let b = Block { ptr, size, pattern };
                        live.insert(&b, t);
                        fill(&b);
                        mine.push(b);
                    } else if op < 80 {
                        let b = mine.swap_remove(rng.random_range(0..mine.len()));
                        check_and_free(alloc, live, b);
                    } else if op < 90 {
                        let b = mine.swap_remove(rng.random_range(0..mine.len()));
                        mailbox.lock().unwrap().push(b);
                        passed_on.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let theirs = mailbox.lock().unwrap().pop();
                        if let Some(b) = theirs {
                            check_and_free(alloc, live, b);
                        }
                    }
                    if seq % 64 == 0 {
                        let st = alloc.stats();
                        assert!(st.caching.allocated_bytes <= st.caching.reserved_bytes);
                        assert!(st.pools.allocated_bytes <= st.pools.reserved_bytes);
                        assert!(st.total.allocated_bytes <= st.total.reserved_bytes);
                        assert!(host.outstanding_bytes() <= host.capacity());
                    }
                }
                for b in mine {
                    check_and_free(alloc, live, b);
                }
            });
        }
    });
    for b in mailbox.into_inner().unwrap() {
        check_and_free(&alloc, &live, b);
    }
    assert!(live.is_empty());
    assert!(
        passed_on.load(Ordering::Relaxed) > 500,
        "blocks crossed threads"
    );

    let n = allocated.load(Ordering::Relaxed);
    let s = alloc.stats();
    assert_eq!(alloc.live_pointers(), 0);
    for (what, side) in [
        ("caching", s.caching),
        ("pools", s.pools),
        ("total", s.total),
    ] {
        assert_eq!(side.live_blocks, 0, "{what}");
        assert_eq!(side.allocated_bytes, 0, "{what}");
        assert_eq!(side.requested_bytes, 0, "{what}");
        assert_eq!(side.allocations, side.frees, "{what}");
        assert_eq!(side.pending_frees, 0, "{what}");
    }
    assert_eq!(s.total.allocations, n);
    assert!(s.pools.allocations > 200, "the pool was used");
    assert_eq!(pool.stats(), s.pools);
    assert_eq!(
        s.total.reserved_bytes,
        host.outstanding_bytes(),
        "the books match the backend"
    );

    drop(pool);
    assert_eq!(
        alloc.stats().pools.reserved_bytes,
        0,
        "an idle pool goes at once"
    );
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().total.reserved_bytes, 0);
    assert_eq!(host.outstanding_bytes(), 0, "every segment went back");
}

#[test]
fn graph_mode_threads_and_eager_threads_do_not_mix() {
    graph_mode_threads_and_eager_threads_do_not_mix_with(1);
    graph_mode_threads_and_eager_threads_do_not_mix_with(3);
}

fn graph_mode_threads_and_eager_threads_do_not_mix_with(shards: usize) {
    const N: u64 = 400;
    let (_host, alloc) = sharded_allocator(1 << 30, shards);
    let pools: Vec<GraphPool> = (0..THREADS / 2).map(|_| alloc.create_pool()).collect();
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (alloc, pools, start) = (&alloc, &pools, &start);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(0x5747_0200 + t as u64);
                let _g = (t < pools.len()).then(|| alloc.enter_graph_mode(&pools[t]).unwrap());
                start.wait();
                let mut mine = Vec::new();
                for _ in 0..N {
                    assert_eq!(alloc.is_graph_mode(), t < pools.len());
                    mine.push(alloc.allocate(random_size(&mut rng), 512).unwrap());
                    if rng.random_bool(0.5) {
                        let p = mine.swap_remove(rng.random_range(0..mine.len()));
                        alloc.free(p).unwrap();
                    }
                }
                for p in mine {
                    alloc.free(p).unwrap();
                }
            });
        }
    });
    for (i, pool) in pools.iter().enumerate() {
        let ps = pool.stats();
        assert_eq!(
            ps.allocations, N,
            "pool {i} got exactly its thread's blocks"
        );
        assert_eq!(ps.frees, N);
        assert_eq!(ps.live_blocks, 0);
    }
    let s = alloc.stats();
    assert_eq!(s.caching.allocations, N * (THREADS - pools.len()) as u64);
    assert_eq!(s.caching.frees, s.caching.allocations);
    assert_eq!(s.total.live_blocks, 0);
}

#[test]
fn racing_frees_of_one_pointer_succeed_exactly_once() {
    racing_frees_of_one_pointer_succeed_exactly_once_with(1);
    racing_frees_of_one_pointer_succeed_exactly_once_with(8);
}

fn racing_frees_of_one_pointer_succeed_exactly_once_with(shards: usize) {
    const ROUNDS: usize = 100;
    let (_host, alloc) = sharded_allocator(64 * MIB, shards);
    let pool = alloc.create_pool();
    let barrier = Barrier::new(THREADS);
    let ptr = Mutex::new(DevicePtr::new(0));
    let wins = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (alloc, pool, barrier, ptr, wins) = (&alloc, &pool, &barrier, &ptr, &wins);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    if t == 0 {
                        let p = if round % 2 == 0 {
                            alloc.allocate(4096, 512).unwrap()
                        } else {
                            let _g = alloc.enter_graph_mode(pool).unwrap();
                            alloc.allocate(4096, 512).unwrap()
                        };
                        *ptr.lock().unwrap() = p;
                    }
                    barrier.wait();
                    let p = *ptr.lock().unwrap();
                    match alloc.free(p) {
                        Ok(()) => {
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                        // A loser that looks while the winner is still
                        // inside `free` may find the block not yet free.
                        Err(Error::DoubleFree { ptr }) | Err(Error::UnknownPointer { ptr }) => {
                            assert_eq!(ptr, p.addr())
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                    barrier.wait();
                }
            });
        }
    });
    assert_eq!(wins.load(Ordering::Relaxed), ROUNDS as u64);
    let s = alloc.stats();
    assert_eq!(s.total.frees, ROUNDS as u64, "each pointer freed once");
    assert_eq!(s.caching.frees, (ROUNDS / 2) as u64);
    assert_eq!(pool.stats().frees, (ROUNDS / 2) as u64);
    assert_eq!(s.total.live_blocks, 0);
    assert_eq!(alloc.live_pointers(), 0);
}

#[test]
fn a_dropped_pool_is_released_once_by_whichever_thread_frees_its_last_block() {
    let (host, alloc) = sharded_allocator(256 * MIB, 1);
    let pool = alloc.create_pool();
    let mut rng = StdRng::seed_from_u64(0x5747_0300);
    let blocks: Vec<DevicePtr> = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        (0..THREADS * 16)
            .map(|_| alloc.allocate(random_size(&mut rng), 512).unwrap())
            .collect()
    };
    let segments = pool.stats().segments as u64;
    assert!(segments >= 2);
    assert_eq!(host.outstanding_bytes(), pool.stats().reserved_bytes);
    let releases = host.releases();
    drop(pool);

    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for chunk in blocks.chunks(16) {
            let (alloc, start) = (&alloc, &start);
            s.spawn(move || {
                start.wait();
                for &p in chunk {
                    alloc.free(p).unwrap();
                }
            });
        }
    });
    assert_eq!(
        host.releases(),
        releases + segments,
        "each segment released once"
    );
    assert_eq!(host.outstanding_bytes(), 0);
    let s = alloc.stats();
    assert_eq!(s.pools.reserved_bytes, 0);
    assert_eq!(s.pools.allocations, (THREADS * 16) as u64);
    assert_eq!(s.pools.frees, (THREADS * 16) as u64);
}

#[test]
fn a_block_freed_by_another_thread_returns_to_the_shard_that_handed_it_out() {
    let (host, alloc) = sharded_allocator(256 * MIB, 8);
    let sizes = [3000, 70_000, 3 * MIB];
    std::thread::scope(|s| {
        let alloc = &alloc;
        s.spawn(move || {
            let first: Vec<DevicePtr> = sizes
                .iter()
                .map(|&n| alloc.allocate(n, 512).unwrap())
                .collect();
            // Freed by other threads (most likely other shards).
            std::thread::scope(|s| {
                for &p in &first {
                    s.spawn(move || alloc.free(p).unwrap());
                }
            });
            let again: Vec<DevicePtr> = sizes
                .iter()
                .map(|&n| alloc.allocate(n, 512).unwrap())
                .collect();
            assert_eq!(again, first, "this thread's shard got its blocks back");
            for p in again {
                alloc.free(p).unwrap();
            }
        });
    });
    let s = alloc.stats();
    assert_eq!(s.caching.live_blocks, 0);
    assert_eq!(s.caching.allocations, 6);
    assert_eq!(s.caching.frees, 6);
    assert_eq!(s.caching.reserved_bytes, host.outstanding_bytes());
    alloc.empty_cache().unwrap();
    assert_eq!(
        host.outstanding_bytes(),
        0,
        "every shard's segments released"
    );
}

#[test]
fn out_of_memory_releases_the_idle_segments_of_every_shard() {
    // With many shards, two threads almost surely use different ones; if
    // they share one, the second request is served from the cache instead.
    let (host, alloc) = sharded_allocator(64 * MIB, 64);
    std::thread::scope(|s| {
        s.spawn(|| {
            let p = alloc.allocate(40 * MIB, 512).unwrap();
            alloc.free(p).unwrap();
        });
    });
    assert_eq!(
        host.outstanding_bytes(),
        40 * MIB,
        "cached in the first shard"
    );
    let reservations = host.reservations();
    std::thread::scope(|s| {
        s.spawn(|| {
            let p = alloc.allocate(40 * MIB, 512).unwrap();
            alloc.free(p).unwrap();
        });
    });
    let s = alloc.stats();
    if host.reservations() > reservations {
        assert_eq!(s.caching.oom_retries, 1, "found the device full once");
        assert_eq!(host.releases(), 1, "the other shard's segment went back");
    }
    assert_eq!(host.outstanding_bytes(), 40 * MIB);
    assert_eq!(s.caching.reserved_bytes, 40 * MIB);
    assert_eq!((s.caching.allocations, s.caching.frees), (2, 2));
}
