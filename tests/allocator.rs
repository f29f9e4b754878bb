//! Host-backend integration tests of the allocator core: where allocations
//! come from, exact statistics, routing of frees, graph pools, bad inputs,
//! out-of-memory handling, `empty_cache` and alignment.

mod support;

use graphalloc::{
    Allocator, BackendError, Config, DevicePtr, Error, MemoryUsageStats, PoolStats, DEFAULT_STREAM,
    MAX_ALIGNMENT, SMALL_REQUEST_MAX, SMALL_SEGMENT,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{host_allocator, host_bytes, round512, small_block_size, MIB};

/// Everything an erroneous call must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    stats: MemoryUsageStats,
    live_pointers: usize,
    outstanding: usize,
    reservations: u64,
    releases: u64,
}

fn snapshot(host: &graphalloc::HostBackend, alloc: &Allocator) -> Snapshot {
    Snapshot {
        stats: alloc.stats(),
        live_pointers: alloc.live_pointers(),
        outstanding: host.outstanding_bytes(),
        reservations: host.reservations(),
        releases: host.releases(),
    }
}

// ---------------------------------------------------------------------------
// Where allocations come from
// ---------------------------------------------------------------------------

#[test]
fn regular_allocation_comes_from_the_cache() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let p = alloc.allocate(1000, 256).unwrap();
    let s = alloc.stats();
    assert_eq!(s.caching.live_blocks, 1);
    assert_eq!(s.caching.requested_bytes, 1000);
    assert_eq!(s.caching.allocated_bytes, 1024);
    assert_eq!(s.caching.reserved_bytes, SMALL_SEGMENT);
    assert_eq!(s.pools.live_blocks, 0);
    assert_eq!(s.pools.reserved_bytes, 0);
    assert_eq!(pool.stats(), PoolStats::default(), "the pool is untouched");
    assert_eq!(alloc.requested_size(p), Some(1000));
    assert_eq!(alloc.device_of(p), Some(0));
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().caching.live_blocks, 0);
}

#[test]
fn graph_allocation_comes_from_the_pool() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let p = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        alloc.allocate(1000, 256).unwrap()
    };
    let ps = pool.stats();
    assert_eq!(ps.live_blocks, 1);
    assert_eq!(ps.allocated_bytes, 1024);
    assert_eq!(ps.requested_bytes, 1000);
    assert_eq!(ps.reserved_bytes, SMALL_SEGMENT);
    assert_eq!(ps.allocations, 1);
    let s = alloc.stats();
    assert_eq!(s.pools, ps, "the allocator's pool figures are the pool's");
    assert_eq!(s.caching.live_blocks, 0, "nothing came from the cache");
    assert_eq!(s.caching.reserved_bytes, 0);
    assert_eq!(s.total.live_blocks, 1);
    alloc.free(p).unwrap();
    assert_eq!(pool.stats().live_blocks, 0);
    assert_eq!(pool.stats().frees, 1);
}

#[test]
fn graph_mode_on_a_pool_of_device_1_allocates_on_device_1() {
    let config = Config {
        host_devices: 2,
        expandable_segments: false,
        ..Config::host(64 * MIB)
    };
    let alloc = Allocator::new(config).unwrap();
    let pool = alloc.create_pool_on(1).unwrap();
    assert_eq!(pool.device(), 1);
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    let p = alloc.allocate(1000, 1).unwrap();
    assert_eq!(alloc.device_of(p), Some(1));
    assert_eq!(pool.stats().live_blocks, 1);
    // An explicit allocation on device 0 is not served by a device-1 pool.
    let q = alloc.allocate_on(0, DEFAULT_STREAM, 1000, 1).unwrap();
    assert_eq!(alloc.device_of(q), Some(0));
    assert_eq!(alloc.device_stats(0).unwrap().live_blocks, 1);
    assert_eq!(alloc.device_stats(1).unwrap().live_blocks, 0);
    assert_eq!(pool.stats().live_blocks, 1);
    alloc.free(p).unwrap();
    alloc.free(q).unwrap();
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Model {
    allocated: usize,
    requested: usize,
    live: usize,
    allocations: u64,
    frees: u64,
    peak: usize,
}

impl Model {
    fn alloc(&mut self, block: usize, requested: usize) {
        self.allocated += block;
        self.requested += requested;
        self.live += 1;
        self.allocations += 1;
        self.peak = self.peak.max(self.allocated);
    }
    fn free(&mut self, block: usize, requested: usize) {
        self.allocated -= block;
        self.requested -= requested;
        self.live -= 1;
        self.frees += 1;
    }
    fn check(&self, what: &str, step: usize, s: &PoolStats) {
        assert_eq!(
            s.allocated_bytes, self.allocated,
            "{what} allocated, step {step}"
        );
        assert_eq!(
            s.requested_bytes, self.requested,
            "{what} requested, step {step}"
        );
        assert_eq!(s.live_blocks, self.live, "{what} live, step {step}");
        assert_eq!(
            s.allocations, self.allocations,
            "{what} allocations, step {step}"
        );
        assert_eq!(s.frees, self.frees, "{what} frees, step {step}");
        assert_eq!(
            s.peak_allocated_bytes, self.peak,
            "{what} peak, step {step}"
        );
        assert_eq!(
            s.reserved_bytes,
            s.segments * SMALL_SEGMENT,
            "{what} segments"
        );
        assert!(s.peak_reserved_bytes >= s.reserved_bytes);
        assert!(s.reserved_bytes >= s.allocated_bytes);
    }
}

#[test]
fn stats_are_exact_after_a_random_mix_of_cache_and_pool_traffic() {
    let (host, alloc) = host_allocator(1 << 30);
    let pool = alloc.create_pool();
    let mut rng = StdRng::seed_from_u64(0x5747_0001);
    let (mut cache, mut pools) = (Model::default(), Model::default());
    let mut total_peak = 0;
    // (pointer, requested, block size, from the pool)
    let mut live: Vec<(DevicePtr, usize, usize, bool)> = Vec::new();
    for step in 0..2000 {
        let op = rng.random_range(0..10);
        if op < 6 || live.is_empty() {
            let align = [1, 8, 256, 512, 1024, 4096][rng.random_range(0..6)];
            let size = if rng.random_bool(0.5) {
                rng.random_range(1..=4096)
            } else {
                rng.random_range(1..=SMALL_REQUEST_MAX - 4096)
            };
            let block = small_block_size(size, align);
            let in_pool = (4..6).contains(&op);
            let p = if in_pool {
                let _g = alloc.enter_graph_mode(&pool).unwrap();
                alloc.allocate(size, align).unwrap()
            } else {
                alloc.allocate(size, align).unwrap()
            };
            assert_eq!(p.addr() % align as u64, 0);
            let side = if in_pool { &mut pools } else { &mut cache };
            side.alloc(block, size);
            live.push((p, size, block, in_pool));
        } else {
            let (p, size, block, in_pool) = live.swap_remove(rng.random_range(0..live.len()));
            alloc.free(p).unwrap();
            let side = if in_pool { &mut pools } else { &mut cache };
            side.free(block, size);
        }
        total_peak = total_peak.max(cache.allocated + pools.allocated);

        let s = alloc.stats();
        cache.check("caching", step, &s.caching);
        pools.check("pools", step, &s.pools);
        assert_eq!(s.pools, pool.stats(), "one pool: its figures are the sum");
        assert_eq!(s.total.allocated_bytes, cache.allocated + pools.allocated);
        assert_eq!(s.total.requested_bytes, cache.requested + pools.requested);
        assert_eq!(s.total.live_blocks, cache.live + pools.live);
        assert_eq!(s.total.allocations, cache.allocations + pools.allocations);
        assert_eq!(s.total.frees, cache.frees + pools.frees);
        assert_eq!(s.total.peak_allocated_bytes, total_peak, "step {step}");
        assert_eq!(
            s.total.reserved_bytes,
            s.caching.reserved_bytes + s.pools.reserved_bytes
        );
        assert_eq!(s.total.reserved_bytes, host.outstanding_bytes());
        assert_eq!(s.total.segments, s.caching.segments + s.pools.segments);
        assert!(!s.in_graph_mode);
        assert_eq!(alloc.live_pointers(), live.len());
    }
    for (p, size, block, in_pool) in live.drain(..) {
        alloc.free(p).unwrap();
        let side = if in_pool { &mut pools } else { &mut cache };
        side.free(block, size);
    }
    let s = alloc.stats();
    cache.check("caching", usize::MAX, &s.caching);
    pools.check("pools", usize::MAX, &s.pools);
    assert_eq!(s.total.allocated_bytes, 0);
    assert_eq!(s.total.requested_bytes, 0);
    assert_eq!(s.total.live_blocks, 0);
    assert!(
        cache.allocations > 500 && pools.allocations > 200,
        "both sides exercised"
    );
}

#[test]
fn peaks_keep_the_highest_figures_per_side() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let a = alloc.allocate(MIB, 512).unwrap();
    let b = alloc.allocate(MIB, 512).unwrap();
    alloc.free(a).unwrap();
    let c = alloc.allocate(512, 512).unwrap();
    let (d, e) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        (
            alloc.allocate(3 * MIB, 512).unwrap(),
            alloc.allocate(4096, 512).unwrap(),
        )
    };
    alloc.free(d).unwrap();
    let s = alloc.stats();
    assert_eq!(s.caching.allocated_bytes, MIB + 512);
    assert_eq!(s.caching.peak_allocated_bytes, 2 * MIB);
    assert_eq!(s.pools.allocated_bytes, 4096);
    assert_eq!(s.pools.peak_allocated_bytes, 3 * MIB + 4096);
    assert_eq!(s.total.allocated_bytes, MIB + 512 + 4096);
    // Highest sum: 1 MiB + 512 (cache) + 3 MiB + 4 KiB (pool).
    assert_eq!(s.total.peak_allocated_bytes, MIB + 512 + 3 * MIB + 4096);
    // Cache: one 2 MiB small segment holds a and b; c reuses a's room.
    assert_eq!(s.caching.reserved_bytes, SMALL_SEGMENT);
    // Pool: a 20 MiB large segment for d, a 2 MiB small one for e.
    assert_eq!(s.pools.reserved_bytes, 20 * MIB + SMALL_SEGMENT);
    assert_eq!(s.pools.peak_reserved_bytes, 20 * MIB + SMALL_SEGMENT);
    assert_eq!(s.total.peak_reserved_bytes, 22 * MIB + SMALL_SEGMENT);
    for p in [b, c, e] {
        alloc.free(p).unwrap();
    }
    let s = alloc.stats();
    assert_eq!(s.total.allocated_bytes, 0);
    assert_eq!(s.total.peak_allocated_bytes, MIB + 512 + 3 * MIB + 4096);
}

fn reset_peak_stats_restarts_the_caching_peaks_on(alloc: &Allocator) {
    let big = alloc.allocate(4 * MIB, 512).unwrap();
    alloc.free(big).unwrap();
    let small = alloc.allocate(1000, 512).unwrap();
    assert_eq!(alloc.stats().caching.peak_allocated_bytes, 4 * MIB);
    alloc.reset_peak_stats();
    assert_eq!(
        alloc.device_stats(0).unwrap().peak_allocated_bytes,
        1024,
        "the device's own figures restart"
    );
    let s = alloc.stats();
    assert_eq!(
        s.caching.peak_allocated_bytes, 1024,
        "stats().caching peak restarts from the current figure"
    );
    assert_eq!(s.caching.peak_reserved_bytes, s.caching.reserved_bytes);
    alloc.free(small).unwrap();
}

#[test]
fn reset_peak_stats_restarts_the_caching_peaks() {
    let (_host, alloc) = host_allocator(256 * MIB);
    reset_peak_stats_restarts_the_caching_peaks_on(&alloc);
}

#[test]
fn reset_peak_stats_restarts_the_caching_peaks_with_two_devices() {
    let alloc = Allocator::new(Config {
        host_devices: 2,
        expandable_segments: false,
        ..Config::host(256 * MIB)
    })
    .unwrap();
    reset_peak_stats_restarts_the_caching_peaks_on(&alloc);
}

#[test]
fn display_shows_megabytes_with_two_decimals() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let p = alloc.allocate(1536 * 1024, 512).unwrap();
    let q = alloc.with_graph_mode(&pool, || alloc.allocate(MIB / 4, 512).unwrap());
    let q = q.unwrap();
    let text = alloc.stats().to_string();
    assert!(
        text.contains(
            "caching: allocated 1.50 MB (peak 1.50 MB), reserved 20.00 MB (peak 20.00 MB), \
             1 live blocks, 1 allocations, 0 frees, 0 OOM retries"
        ),
        "{text}"
    );
    assert!(
        text.contains("pools:   allocated 0.25 MB (peak 0.25 MB), reserved 2.00 MB"),
        "{text}"
    );
    assert!(
        text.contains("total:   allocated 1.75 MB (peak 1.75 MB), reserved 22.00 MB"),
        "{text}"
    );
    assert!(text.ends_with("graph mode: false"), "{text}");
    let in_mode = alloc
        .with_graph_mode(&pool, || alloc.stats().to_string())
        .unwrap();
    assert!(in_mode.ends_with("graph mode: true"), "{in_mode}");
    alloc.free(p).unwrap();
    alloc.free(q).unwrap();
}

// ---------------------------------------------------------------------------
// Routing of frees
// ---------------------------------------------------------------------------

#[test]
fn pool_block_freed_after_the_guard_ended_goes_back_to_the_pool() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let p = alloc
        .with_graph_mode(&pool, || alloc.allocate(4096, 512))
        .unwrap()
        .unwrap();
    let eager = alloc.allocate(4096, 512).unwrap();
    assert!(!alloc.is_graph_mode());
    alloc.free(p).unwrap();
    assert_eq!(pool.stats().live_blocks, 0);
    assert_eq!(pool.stats().frees, 1);
    let s = alloc.stats();
    assert_eq!(s.caching.live_blocks, 1, "the cache's block is untouched");
    assert_eq!(s.caching.frees, 0);
    alloc.free(eager).unwrap();
}

#[test]
fn cache_block_freed_in_graph_mode_goes_back_to_the_cache() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let eager = alloc.allocate(4096, 512).unwrap();
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    alloc.free(eager).unwrap();
    let s = alloc.stats();
    assert_eq!(s.caching.frees, 1);
    assert_eq!(s.caching.live_blocks, 0);
    assert_eq!(pool.stats(), PoolStats::default());
}

#[test]
fn blocks_freed_from_another_thread_go_back_to_their_owner() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let (p, q) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        (
            alloc.allocate(4096, 512).unwrap(),
            alloc.allocate(MIB, 512).unwrap(),
        )
    };
    let eager = alloc.allocate(8192, 512).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(!alloc.is_graph_mode());
            alloc.free(p).unwrap();
            alloc.free(eager).unwrap();
        });
        s.spawn(|| {
            // A thread in graph mode on the same pool frees into it too.
            let _g = alloc.enter_graph_mode(&pool).unwrap();
            alloc.free(q).unwrap();
        });
    });
    let ps = pool.stats();
    assert_eq!((ps.live_blocks, ps.frees, ps.allocated_bytes), (0, 2, 0));
    let s = alloc.stats();
    assert_eq!((s.caching.live_blocks, s.caching.frees), (0, 1));
    assert_eq!(alloc.live_pointers(), 0);
}

#[test]
fn pool_block_freed_after_the_last_pool_handle_drops_releases_the_pool() {
    let (host, alloc) = host_allocator(64 * MIB);
    let eager = alloc.allocate(1000, 512).unwrap();
    let pool = alloc.create_pool();
    let guard = alloc.enter_graph_mode(&pool).unwrap();
    let small = alloc.allocate(3000, 512).unwrap();
    let large = alloc.allocate(5 * MIB, 512).unwrap();
    drop(guard);
    drop(pool);
    // The live blocks keep the pool, and its segments, alive.
    assert_eq!(
        host.outstanding_bytes(),
        SMALL_SEGMENT + SMALL_SEGMENT + 20 * MIB
    );
    let s = alloc.stats();
    assert_eq!(s.pools.live_blocks, 2);
    assert_eq!(s.pools.reserved_bytes, SMALL_SEGMENT + 20 * MIB);
    let releases = host.releases();

    alloc.free(small).unwrap();
    assert_eq!(host.releases(), releases, "one block still holds the pool");
    assert_eq!(alloc.stats().pools.live_blocks, 1);

    alloc.free(large).unwrap();
    assert_eq!(host.releases(), releases + 2, "both pool segments released");
    let s = alloc.stats();
    assert_eq!(host.outstanding_bytes(), s.caching.reserved_bytes);
    assert_eq!(host.outstanding_bytes(), SMALL_SEGMENT);
    assert_eq!(s.pools.reserved_bytes, 0);
    assert_eq!(s.pools.live_blocks, 0);
    assert_eq!(s.pools.segments, 0);
    assert_eq!(
        (
            s.pools.allocations,
            s.pools.frees,
            s.pools.segments_reserved
        ),
        (2, 2, 2),
        "a dropped pool's counts stay in the books"
    );
    assert_eq!(s.caching.live_blocks, 1);
    assert_eq!(
        alloc.free(large),
        Err(Error::UnknownPointer { ptr: large.addr() }),
        "its memory is gone"
    );
    alloc.free(eager).unwrap();
}

// ---------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------

#[test]
fn cloned_pool_handles_share_one_pool() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let other = alloc.create_pool();
    let shared = pool.clone();
    assert!(pool.same_pool(&shared));
    assert!(shared.same_pool(&pool));
    assert!(!pool.same_pool(&other));
    assert_eq!(pool.id(), shared.id());
    assert_ne!(pool.id(), other.id());

    let a = alloc
        .with_graph_mode(&pool, || alloc.allocate(4096, 512).unwrap())
        .unwrap();
    let b = alloc
        .with_graph_mode(&shared, || alloc.allocate(8192, 512).unwrap())
        .unwrap();
    assert_eq!(pool.stats(), shared.stats());
    assert_eq!(pool.stats().live_blocks, 2);
    assert_eq!(pool.stats().allocated_bytes, 4096 + 8192);
    assert_eq!(pool.stats().segments, 1, "both carved from one segment");
    assert_eq!(other.stats(), PoolStats::default());

    // A block freed by one "graph" is reused by the other.
    alloc.free(a).unwrap();
    let c = alloc
        .with_graph_mode(&shared, || alloc.allocate(4096, 512).unwrap())
        .unwrap();
    assert_eq!(c, a);

    // Dropping one handle keeps the pool.
    drop(pool);
    assert_eq!(shared.stats().live_blocks, 2);
    alloc.free(b).unwrap();
    alloc.free(c).unwrap();
    assert_eq!(shared.stats().live_blocks, 0);
    assert_eq!(shared.stats().frees, 3);
}

#[test]
fn two_pools_keep_separate_blocks_and_segments() {
    let (host, alloc) = host_allocator(64 * MIB);
    let (p1, p2) = (alloc.create_pool(), alloc.create_pool());
    let a = alloc
        .with_graph_mode(&p1, || alloc.allocate(4096, 512).unwrap())
        .unwrap();
    alloc.free(a).unwrap();
    // p1 has a free 2 MiB segment now; p2 must not use it.
    let b = alloc
        .with_graph_mode(&p2, || alloc.allocate(4096, 512).unwrap())
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(host.outstanding_bytes(), 2 * SMALL_SEGMENT);
    assert_eq!(p1.stats().live_blocks, 0);
    assert_eq!(p1.stats().reserved_bytes, SMALL_SEGMENT);
    assert_eq!(p2.stats().live_blocks, 1);
    assert_eq!(p2.stats().reserved_bytes, SMALL_SEGMENT);
    let s = alloc.stats();
    assert_eq!(s.pools.reserved_bytes, 2 * SMALL_SEGMENT);
    assert_eq!(s.pools.live_blocks, 1);
    assert_eq!(s.pools.allocations, 2);
    // Freed in graph mode on p1, the block still goes to p2.
    alloc
        .with_graph_mode(&p1, || alloc.free(b).unwrap())
        .unwrap();
    assert_eq!(p2.stats().frees, 1);
    assert_eq!(p1.stats().frees, 1);
}

#[test]
fn a_pool_reuses_its_freed_blocks_and_the_cache_does_not() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let sizes = [700, 4096, 100_000, 3 * MIB];
    let first: Vec<DevicePtr> = alloc
        .with_graph_mode(&pool, || {
            sizes
                .iter()
                .map(|&s| alloc.allocate(s, 512).unwrap())
                .collect()
        })
        .unwrap();
    for &p in &first {
        alloc.free(p).unwrap();
    }
    let reservations = host.reservations();
    // The cache gets memory of its own, not the pool's free blocks.
    let eager: Vec<DevicePtr> = sizes
        .iter()
        .map(|&s| alloc.allocate(s, 512).unwrap())
        .collect();
    assert!(host.reservations() > reservations, "the cache reserved");
    for p in &eager {
        assert!(!first.contains(p), "the cache handed out a pool block");
    }
    let reservations = host.reservations();
    // The pool hands its blocks out again, at the same addresses.
    let again: Vec<DevicePtr> = alloc
        .with_graph_mode(&pool, || {
            sizes
                .iter()
                .map(|&s| alloc.allocate(s, 512).unwrap())
                .collect()
        })
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(host.reservations(), reservations, "no new segment");
    for p in again.into_iter().chain(eager) {
        alloc.free(p).unwrap();
    }
}

#[test]
fn pool_reset_refuses_while_busy_and_succeeds_when_idle() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let (a, b) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        (
            alloc.allocate(1000, 512).unwrap(),
            alloc.allocate(5000, 512).unwrap(),
        )
    };
    let before = snapshot(&host, &alloc);
    let busy = Error::PoolBusy {
        pool: pool.id(),
        live_blocks: 2,
        allocated: 1024 + 5120,
    };
    assert_eq!(pool.reset(), Err(busy.clone()));
    assert_eq!(alloc.reset_graph_pool(&pool), Err(busy));
    assert_eq!(
        snapshot(&host, &alloc),
        before,
        "a refused reset changes nothing"
    );

    alloc.free(a).unwrap();
    assert!(matches!(
        pool.reset(),
        Err(Error::PoolBusy {
            live_blocks: 1,
            allocated: 5120,
            ..
        })
    ));
    alloc.free(b).unwrap();
    assert_eq!(pool.stats().peak_allocated_bytes, 1024 + 5120);
    pool.reset().unwrap();
    alloc.reset_graph_pool(&pool).unwrap();
    let ps = pool.stats();
    assert_eq!(ps.peak_allocated_bytes, 0, "peaks restart");
    assert_eq!(ps.reserved_bytes, SMALL_SEGMENT, "segments stay reserved");
    assert_eq!(ps.peak_reserved_bytes, SMALL_SEGMENT);
    // The pool serves the next capture from its segment.
    let reservations = host.reservations();
    let c = alloc
        .with_graph_mode(&pool, || alloc.allocate(1000, 512).unwrap())
        .unwrap();
    assert_eq!(c, a);
    assert_eq!(host.reservations(), reservations);
    alloc.free(c).unwrap();
}

#[test]
fn reset_graph_pool_refuses_a_foreign_pool() {
    let (_h1, x) = host_allocator(64 * MIB);
    let (_h2, y) = host_allocator(64 * MIB);
    let pool = x.create_pool();
    assert_eq!(
        y.reset_graph_pool(&pool),
        Err(Error::ForeignPool { pool: pool.id() })
    );
    x.reset_graph_pool(&pool).unwrap();
}

// ---------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------

/// An allocator with some state worth preserving: live and cached blocks in
/// the cache and in a pool.
fn busy_allocator() -> (
    std::sync::Arc<graphalloc::HostBackend>,
    Allocator,
    graphalloc::GraphPool,
    Vec<DevicePtr>,
) {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let live = make_busy(&alloc, &pool);
    assert_eq!(
        host.outstanding_bytes(),
        12 * MIB + 20 * MIB + 2 * SMALL_SEGMENT
    );
    (host, alloc, pool, live)
}

/// Live and cached blocks in the cache and in `pool`; returns the live ones.
fn make_busy(alloc: &Allocator, pool: &graphalloc::GraphPool) -> Vec<DevicePtr> {
    let idle = alloc.allocate(12 * MIB, 512).unwrap(); // a segment of its own
    let cached = alloc.allocate(3 * MIB, 512).unwrap();
    let live = vec![
        alloc.allocate(1000, 512).unwrap(),
        alloc.allocate(2 * MIB, 4096).unwrap(),
        alloc
            .with_graph_mode(pool, || alloc.allocate(7000, 512).unwrap())
            .unwrap(),
    ];
    alloc.free(cached).unwrap();
    alloc.free(idle).unwrap();
    live
}

#[test]
fn zero_size_is_rejected_and_changes_nothing() {
    let (host, alloc, pool, _live) = busy_allocator();
    let before = snapshot(&host, &alloc);
    assert_eq!(alloc.allocate(0, 512), Err(Error::ZeroSize));
    assert_eq!(alloc.allocate(0, 1), Err(Error::ZeroSize));
    assert_eq!(
        alloc.allocate_on(0, DEFAULT_STREAM, 0, 256),
        Err(Error::ZeroSize)
    );
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    let pool_before = pool.stats();
    assert_eq!(alloc.allocate(0, 512), Err(Error::ZeroSize));
    assert_eq!(pool.stats(), pool_before);
    drop(_g);
    assert_eq!(snapshot(&host, &alloc), before);
}

#[test]
fn bad_alignments_are_rejected_and_change_nothing() {
    let (host, alloc, pool, _live) = busy_allocator();
    let before = snapshot(&host, &alloc);
    for align in [0, 3, 24, 1000, 3 << 20, MAX_ALIGNMENT * 2, usize::MAX] {
        assert_eq!(
            alloc.allocate(4096, align),
            Err(Error::InvalidAlignment {
                align,
                max: MAX_ALIGNMENT
            }),
            "align {align}"
        );
        let in_pool = alloc
            .with_graph_mode(&pool, || alloc.allocate(4096, align))
            .unwrap();
        assert!(matches!(in_pool, Err(Error::InvalidAlignment { .. })));
    }
    assert_eq!(snapshot(&host, &alloc), before);
}

#[test]
fn sizes_that_overflow_are_too_large_and_change_nothing() {
    let (host, alloc, _pool, _live) = busy_allocator();
    let before = snapshot(&host, &alloc);
    for (size, align) in [
        (usize::MAX, 1),
        (usize::MAX, 512),
        (usize::MAX - 100, MAX_ALIGNMENT),
        (usize::MAX - 511, 1),
    ] {
        assert_eq!(
            alloc.allocate(size, align),
            Err(Error::TooLarge {
                requested: size,
                limit: 64 * MIB
            }),
            "size {size:#x} align {align}"
        );
    }
    assert_eq!(snapshot(&host, &alloc), before);
}

#[test]
fn a_request_beyond_capacity_is_too_large() {
    let (_host, alloc) = host_allocator(64 * MIB);
    for size in [64 * MIB + 1, 65 * MIB, 1 << 40] {
        assert_eq!(
            alloc.allocate(size, 512),
            Err(Error::TooLarge {
                requested: size,
                limit: 64 * MIB
            })
        );
    }
    // Exactly the capacity fits.
    let p = alloc.allocate(64 * MIB, 512).unwrap();
    alloc.free(p).unwrap();
}

#[test]
fn a_request_beyond_capacity_changes_nothing() {
    let (host, alloc, pool, _live) = busy_allocator();
    let before = snapshot(&host, &alloc);
    assert!(before.stats.caching.reserved_bytes > before.stats.caching.allocated_bytes);
    assert!(matches!(
        alloc.allocate(64 * MIB + 1, 512),
        Err(Error::TooLarge { .. })
    ));
    let in_pool = alloc
        .with_graph_mode(&pool, || alloc.allocate(1 << 40, 512))
        .unwrap();
    assert!(matches!(in_pool, Err(Error::TooLarge { .. })));
    assert_eq!(
        snapshot(&host, &alloc),
        before,
        "TooLarge must neither count an OOM retry nor empty the cache"
    );
}

#[test]
fn unknown_pointers_are_rejected_and_change_nothing() {
    let (host, alloc, _pool, live) = busy_allocator();
    let (_h2, other) = host_allocator(64 * MIB);
    let foreign = other.allocate(4096, 512).unwrap();
    let before = snapshot(&host, &alloc);
    for ptr in [
        DevicePtr::new(0),
        DevicePtr::new(0xdead_0000),
        DevicePtr::new(u64::MAX),
        foreign,
    ] {
        assert_eq!(
            alloc.free(ptr),
            Err(Error::UnknownPointer { ptr: ptr.addr() }),
            "{ptr:?}"
        );
    }
    assert_eq!(snapshot(&host, &alloc), before);
    assert_eq!(
        other.live_pointers(),
        1,
        "the other allocator keeps its block"
    );
    other.free(foreign).unwrap();
    for p in live {
        alloc.free(p).unwrap();
    }
}

#[test]
fn double_free_is_rejected_and_changes_nothing() {
    let (host, alloc, pool, live) = busy_allocator();
    let (c, pooled) = (live[0], live[2]);
    alloc.free(c).unwrap();
    alloc.free(pooled).unwrap();
    let before = snapshot(&host, &alloc);
    assert_eq!(alloc.free(c), Err(Error::DoubleFree { ptr: c.addr() }));
    assert_eq!(
        alloc.free(pooled),
        Err(Error::DoubleFree { ptr: pooled.addr() }),
        "a pool block freed twice"
    );
    let in_mode = alloc.with_graph_mode(&pool, || alloc.free(pooled)).unwrap();
    assert_eq!(in_mode, Err(Error::DoubleFree { ptr: pooled.addr() }));
    assert_eq!(snapshot(&host, &alloc), before);
}

#[test]
fn interior_pointers_are_rejected_and_change_nothing() {
    let (host, alloc, _pool, live) = busy_allocator();
    let before = snapshot(&host, &alloc);
    for &p in &live {
        let size = alloc.requested_size(p).unwrap() as u64;
        for off in [1, 8, 512, size - 1] {
            let ptr = p.addr() + off;
            assert_eq!(
                alloc.free(DevicePtr::new(ptr)),
                Err(Error::InteriorPointer {
                    ptr,
                    block: p.addr()
                }),
                "{p:?} + {off}"
            );
        }
    }
    assert_eq!(snapshot(&host, &alloc), before);
    for p in live {
        alloc.free(p).unwrap();
    }
}

#[test]
fn interior_pointer_of_an_over_aligned_block_names_the_pointer_handed_out() {
    let (_host, alloc) = host_allocator(64 * MIB);
    // A 512-byte block first, so the next block starts 512 bytes into the
    // (page-aligned) segment and needs padding to reach 4096.
    let first = alloc.allocate(512, 512).unwrap();
    let p = alloc.allocate(100, 4096).unwrap();
    assert_eq!(p.addr() % 4096, 0);
    let ptr = p.addr() + 8;
    assert_eq!(
        alloc.free(DevicePtr::new(ptr)),
        Err(Error::InteriorPointer {
            ptr,
            block: p.addr()
        })
    );
    alloc.free(p).unwrap();
    alloc.free(first).unwrap();
}

#[test]
fn invalid_device_is_rejected_and_changes_nothing() {
    let (host, alloc, _pool, _live) = busy_allocator();
    let before = snapshot(&host, &alloc);
    let invalid = |device| Error::InvalidDevice { device, count: 1 };
    assert_eq!(
        alloc.allocate_on(1, DEFAULT_STREAM, 4096, 512),
        Err(invalid(1))
    );
    assert_eq!(
        alloc.allocate_on(usize::MAX, DEFAULT_STREAM, 4096, 512),
        Err(invalid(usize::MAX))
    );
    assert_eq!(alloc.create_pool_on(2).unwrap_err(), invalid(2));
    assert_eq!(alloc.device_stats(1), Err(invalid(1)));
    assert_eq!(alloc.backend(3).unwrap_err(), invalid(3));
    assert_eq!(alloc.device_count(), 1);
    assert_eq!(snapshot(&host, &alloc), before);

    let two = Allocator::new(Config {
        host_devices: 2,
        expandable_segments: false,
        ..Config::host(8 * MIB)
    })
    .unwrap();
    assert_eq!(
        two.allocate_on(2, DEFAULT_STREAM, 64, 64),
        Err(Error::InvalidDevice {
            device: 2,
            count: 2
        })
    );
}

#[test]
fn an_injected_backend_fault_is_a_typed_error_and_changes_nothing() {
    use graphalloc::backend::FaultAdaptor;
    let faults = std::sync::Arc::new(FaultAdaptor::new(graphalloc::HostBackend::new(0, 64 * MIB)));
    let backend = faults.clone() as std::sync::Arc<dyn graphalloc::Backend>;
    // Plain segments: with expandable ones, growth may first unmap idle
    // cached pages (tests/expandable_faults.rs covers that path).
    let alloc = Allocator::from_backends_with(vec![backend], &plain(1.0)).unwrap();
    let pool = alloc.create_pool();
    let _live = make_busy(&alloc, &pool);
    // Nothing cached fits 25 MiB, so a reservation is needed.
    let before = snapshot(faults.inner(), &alloc);
    faults.fail_reservation(1);
    let nth = faults.reservations() + 1;
    assert_eq!(
        alloc.allocate(25 * MIB, 512),
        Err(Error::Backend(BackendError::Injected { nth }))
    );
    // The fault never reached the device.
    assert_eq!(snapshot(faults.inner(), &alloc), before);

    faults.fail_reservation(1);
    let nth = faults.reservations() + 1;
    let in_pool = alloc
        .with_graph_mode(&pool, || alloc.allocate(25 * MIB, 512))
        .unwrap();
    assert_eq!(in_pool, Err(Error::Backend(BackendError::Injected { nth })));
    assert_eq!(alloc.stats(), before.stats);

    // The fault was one-shot.
    let p = alloc.allocate(25 * MIB, 512).unwrap();
    assert_eq!(alloc.stats().caching.oom_retries, 0);
    alloc.free(p).unwrap();
}

// ---------------------------------------------------------------------------
// Out of memory
// ---------------------------------------------------------------------------

#[test]
fn out_of_memory_releases_the_cache_and_retries_once() {
    let (host, alloc) = host_allocator(64 * MIB);
    // Fill the cache: ten 2 MiB small segments and one 30 MiB large one.
    let small: Vec<DevicePtr> = (0..20).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
    let large = alloc.allocate(30 * MIB, 512).unwrap();
    for p in small.into_iter().chain([large]) {
        alloc.free(p).unwrap();
    }
    assert_eq!(host.outstanding_bytes(), 50 * MIB);
    let s = alloc.stats();
    assert_eq!(
        (s.caching.segments, s.caching.reserved_bytes),
        (11, 50 * MIB)
    );
    let releases = host.releases();

    // 40 MiB fits no cached block and only fits the device once the cache
    // is released.
    let p = alloc.allocate(40 * MIB, 512).unwrap();
    let s = alloc.stats();
    assert_eq!(s.caching.oom_retries, 1);
    assert_eq!(s.total.oom_retries, 1);
    assert_eq!(host.releases(), releases + 11);
    assert_eq!(s.caching.reserved_bytes, 40 * MIB);
    assert_eq!(s.caching.segments, 1);
    assert_eq!(s.caching.segments_reserved, 12);
    assert_eq!(s.caching.peak_reserved_bytes, 50 * MIB);
    assert_eq!(host.outstanding_bytes(), 40 * MIB);
    alloc.free(p).unwrap();
}

#[test]
fn pool_allocation_on_a_full_device_empties_the_cache_first() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let cached = alloc.allocate(40 * MIB, 512).unwrap();
    alloc.free(cached).unwrap();
    let p = alloc
        .with_graph_mode(&pool, || alloc.allocate(40 * MIB, 512))
        .unwrap()
        .unwrap();
    assert_eq!(pool.stats().oom_retries, 1);
    assert_eq!(alloc.stats().pools.oom_retries, 1);
    assert_eq!(alloc.stats().caching.reserved_bytes, 0);
    assert_eq!(host.outstanding_bytes(), 40 * MIB);
    alloc.free(p).unwrap();
}

#[test]
fn out_of_memory_error_reports_exact_figures() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    // 20 MiB live in the cache, 20 MiB live in a pool, 2 MiB cached idle.
    let eager = alloc.allocate(20 * MIB, 512).unwrap();
    let pooled = alloc
        .with_graph_mode(&pool, || alloc.allocate(20 * MIB, 512).unwrap())
        .unwrap();
    let idle = alloc.allocate(1000, 512).unwrap();
    alloc.free(idle).unwrap();
    assert_eq!(host.outstanding_bytes(), 42 * MIB);

    let err = alloc.allocate(30 * MIB, 512).unwrap_err();
    let Error::OutOfMemory {
        device,
        requested,
        reserved,
        allocated,
        device_free,
        device_total,
        ..
    } = err.clone()
    else {
        panic!("expected OutOfMemory, got {err:?}");
    };
    assert_eq!(
        (
            device,
            requested,
            reserved,
            allocated,
            device_free,
            device_total
        ),
        (0, 30 * MIB, 40 * MIB, 40 * MIB, 24 * MIB, 64 * MIB)
    );
    let text = err.to_string();
    assert!(text.contains(&(30 * MIB).to_string()), "{text}");
    let s = alloc.stats();
    assert_eq!(s.caching.oom_retries, 1, "the retry is counted");
    assert_eq!(
        s.caching.reserved_bytes,
        20 * MIB,
        "the idle segment went back"
    );
    assert_eq!(s.total.live_blocks, 2, "live blocks untouched");
    assert_eq!(alloc.live_pointers(), 2);

    // The same in graph mode: the pool's request fails alike.
    let err = alloc
        .with_graph_mode(&pool, || alloc.allocate(30 * MIB, 512))
        .unwrap()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::OutOfMemory {
            requested,
            reserved,
            allocated,
            device_free,
            ..
        } if requested == 30 * MIB && reserved == 40 * MIB && allocated == 40 * MIB
            && device_free == 24 * MIB
    ));
    alloc.free(eager).unwrap();
    alloc.free(pooled).unwrap();
    // Now it fits (the cache's 20 MiB is released on the way).
    let p = alloc.allocate(30 * MIB, 512).unwrap();
    alloc.free(p).unwrap();
}

// ---------------------------------------------------------------------------
// empty_cache
// ---------------------------------------------------------------------------

#[test]
fn empty_cache_returns_cached_segments_but_pools_keep_theirs() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let pooled = alloc
        .with_graph_mode(&pool, || alloc.allocate(1000, 512).unwrap())
        .unwrap();
    alloc.free(pooled).unwrap();
    let keep = alloc.allocate(12 * MIB, 512).unwrap(); // its own 12 MiB segment
    let a = alloc.allocate(5 * MIB, 512).unwrap(); // a 20 MiB segment
    let b = alloc.allocate(1000, 512).unwrap(); // a 2 MiB segment
    alloc.free(a).unwrap();
    alloc.free(b).unwrap();
    assert_eq!(
        host.outstanding_bytes(),
        2 * MIB + 12 * MIB + 20 * MIB + 2 * MIB
    );

    assert_eq!(alloc.empty_cache(), Ok(22 * MIB));
    assert_eq!(host.outstanding_bytes(), 2 * MIB + 12 * MIB);
    let s = alloc.stats();
    assert_eq!(
        s.caching.reserved_bytes,
        12 * MIB,
        "a live block's segment stays"
    );
    assert_eq!(
        s.pools.reserved_bytes, SMALL_SEGMENT,
        "the pool keeps its segment"
    );
    assert_eq!(pool.stats().reserved_bytes, SMALL_SEGMENT);
    assert_eq!(alloc.empty_cache(), Ok(0), "nothing left to release");

    // The pool still serves from its segment without a reservation.
    let reservations = host.reservations();
    let again = alloc
        .with_graph_mode(&pool, || alloc.allocate(1000, 512).unwrap())
        .unwrap();
    assert_eq!(again, pooled);
    assert_eq!(host.reservations(), reservations);
    alloc.free(again).unwrap();
    alloc.free(keep).unwrap();
    assert_eq!(alloc.empty_cache(), Ok(12 * MIB));
    assert_eq!(host.outstanding_bytes(), SMALL_SEGMENT);
    drop(pool);
    assert_eq!(
        host.outstanding_bytes(),
        0,
        "a dropped idle pool releases at once"
    );
}

#[test]
fn dropping_the_allocator_returns_its_cached_segments() {
    let (host, alloc) = host_allocator(64 * MIB);
    let p = alloc.allocate(4 * MIB, 512).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(host.outstanding_bytes(), 20 * MIB);
    drop(alloc);
    assert_eq!(host.outstanding_bytes(), 0);
}

// ---------------------------------------------------------------------------
// Alignment
// ---------------------------------------------------------------------------

#[test]
fn every_pointer_is_aligned_as_requested() {
    let (_host, alloc) = host_allocator(4 << 30);
    let pool = alloc.create_pool();
    let sizes = [1, 100, 512, 513, 4000, 70_000, MIB - 1, 3 * MIB];
    let mut live: Vec<(u64, u64)> = Vec::new();
    let mut ptrs = Vec::new();
    let mut align = 1;
    while align <= MAX_ALIGNMENT {
        for &size in &sizes {
            for in_pool in [false, true] {
                let p = if in_pool {
                    alloc
                        .with_graph_mode(&pool, || alloc.allocate(size, align))
                        .unwrap()
                } else {
                    alloc.allocate(size, align)
                }
                .unwrap_or_else(|e| panic!("size {size} align {align}: {e}"));
                assert_eq!(p.addr() % align as u64, 0, "size {size} align {align}");
                assert_eq!(p.addr() % 512, 0, "blocks are 512-aligned");
                // SAFETY: `p..p + size` is a live host-backend block that
                // only this thread touches.
                let bytes = unsafe { host_bytes(p, size) };
                bytes[0] = 0xa5;
                bytes[size - 1] = 0x5a;
                live.push((p.addr(), p.addr() + size as u64));
                ptrs.push(p);
            }
        }
        align *= 2;
    }
    live.sort();
    for w in live.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "blocks overlap: {:x?} and {:x?}",
            w[0],
            w[1]
        );
    }
    // Accounting includes the padding.
    let total_requested: usize = ptrs.iter().map(|&p| alloc.requested_size(p).unwrap()).sum();
    assert_eq!(alloc.stats().total.requested_bytes, total_requested);
    for p in ptrs {
        alloc.free(p).unwrap();
    }
    let s = alloc.stats();
    assert_eq!((s.total.live_blocks, s.total.allocated_bytes), (0, 0));
}

#[test]
fn small_over_aligned_requests_account_their_padding() {
    let (_host, alloc) = host_allocator(64 * MIB);
    for (size, align, block) in [
        (1, 1, 512),
        (1, 512, 512),
        (1, 1024, 1024),
        (600, 1024, round512(600 + 512)),
        (100, 4096, 4096),
        (5000, 8192, round512(5000 + 8192 - 512)),
    ] {
        let p = alloc.allocate(size, align).unwrap();
        let s = alloc.stats().caching;
        assert_eq!(s.allocated_bytes, block, "size {size} align {align}");
        assert_eq!(s.requested_bytes, size);
        alloc.free(p).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Memory limit (memory_fraction)
// ---------------------------------------------------------------------------

/// An allocator over one 64 MiB host device limited to `fraction` of it.
/// Plain segments (these tests check their layout) under a memory fraction.
fn plain(memory_fraction: f64) -> Config {
    Config {
        memory_fraction,
        expandable_segments: false,
        ..Config::default()
    }
}

fn limited_allocator(fraction: f64) -> (std::sync::Arc<graphalloc::HostBackend>, Allocator) {
    let host = std::sync::Arc::new(graphalloc::HostBackend::new(0, 64 * MIB));
    let backend = host.clone() as std::sync::Arc<dyn graphalloc::Backend>;
    (
        host,
        Allocator::from_backends_with(vec![backend], &plain(fraction)).unwrap(),
    )
}

#[test]
fn a_request_above_the_memory_limit_is_too_large_and_changes_nothing() {
    let (host, alloc) = limited_allocator(0.5);
    let cached = alloc.allocate(1000, 512).unwrap();
    alloc.free(cached).unwrap();
    let before = snapshot(&host, &alloc);
    assert_eq!(
        alloc.allocate(32 * MIB + 1, 512),
        Err(Error::TooLarge {
            requested: 32 * MIB + 1,
            limit: 32 * MIB
        })
    );
    assert_eq!(snapshot(&host, &alloc), before);
    // Exactly the limit fits (after the cache gives back its 2 MiB).
    let p = alloc.allocate(30 * MIB, 512).unwrap();
    let q = alloc.allocate(MIB, 512).unwrap();
    assert!(
        matches!(alloc.allocate(2 * MIB, 512), Err(Error::OutOfMemory { .. })),
        "the limit holds although the device has room"
    );
    assert!(host.outstanding_bytes() <= 32 * MIB);
    alloc.free(p).unwrap();
    alloc.free(q).unwrap();
}

#[test]
fn a_request_below_the_memory_limit_succeeds_on_an_empty_device() {
    // A 16 MiB limit: a 5 MiB request would get a 20 MiB segment by the
    // size classes, which can never fit, although 16 MiB requests do.
    let (_host, alloc) = limited_allocator(0.25);
    let big = alloc.allocate(16 * MIB, 512).unwrap();
    alloc.free(big).unwrap();
    alloc.empty_cache().unwrap();
    let p = alloc
        .allocate(5 * MIB, 512)
        .expect("5 MiB on an empty device with a 16 MiB limit");
    alloc.free(p).unwrap();
}

#[test]
fn a_request_whose_smallest_segment_exceeds_the_limit_is_too_large_and_changes_nothing() {
    // 15/64 of 64 MiB: a 15 MiB limit, not a multiple of the 2 MiB segment
    // granularity (as `memory_fraction` of a real device's total rarely is).
    let (host, alloc) = limited_allocator(15.0 / 64.0);
    let cached = alloc.allocate(1000, 512).unwrap();
    alloc.free(cached).unwrap();
    let before = snapshot(&host, &alloc);
    let size = 14 * MIB + MIB / 2; // rounds to a 16 MiB segment at best
    assert_eq!(
        alloc.allocate(size, 512),
        Err(Error::TooLarge {
            requested: size,
            limit: 15 * MIB
        })
    );
    assert_eq!(snapshot(&host, &alloc), before);
}

#[test]
fn dropping_the_allocator_releases_live_blocks_too_and_pools_when_their_handles_go() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let _live_cache = alloc.allocate(4 * MIB, 512).unwrap(); // 20 MiB segment
    let _live_pool = alloc
        .with_graph_mode(&pool, || alloc.allocate(1000, 512).unwrap())
        .unwrap(); // 2 MiB pool segment
    let idle_pool = alloc.create_pool();
    let p = alloc
        .with_graph_mode(&idle_pool, || alloc.allocate(1000, 512).unwrap())
        .unwrap();
    alloc.free(p).unwrap();
    assert_eq!(host.outstanding_bytes(), 24 * MIB);
    drop(alloc);
    assert_eq!(
        host.outstanding_bytes(),
        4 * MIB,
        "the cache's segments went back; the pools still have handles"
    );
    assert_eq!(pool.stats().reserved_bytes, SMALL_SEGMENT);
    drop(idle_pool);
    assert_eq!(host.outstanding_bytes(), 2 * MIB);
    drop(pool);
    assert_eq!(
        host.outstanding_bytes(),
        0,
        "the last pool's live block went too"
    );
}

#[test]
fn a_pointer_in_the_padding_before_an_over_aligned_block_names_no_unseen_address() {
    let (_host, alloc) = host_allocator(64 * MIB);
    let first = alloc.allocate(512, 512).unwrap();
    let p = alloc.allocate(100, 4096).unwrap();
    // The block behind `p` starts right after `first`; `p` is the next
    // multiple of 4096 in it. The bytes between were never handed out.
    assert!(p.addr() > first.addr() + 512);
    let ptr = first.addr() + 1024;
    match alloc.free(DevicePtr::new(ptr)) {
        Err(Error::UnknownPointer { ptr: q }) => assert_eq!(q, ptr),
        Err(Error::InteriorPointer { ptr: q, block }) => {
            assert_eq!(q, ptr);
            assert_eq!(block, p.addr(), "names an address never handed out");
        }
        other => panic!("free of a padding address: {other:?}"),
    }
    alloc.free(p).unwrap();
    alloc.free(first).unwrap();
}

#[test]
fn peaks_stay_consistent_after_reset_peak_stats() {
    let (_host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let p = alloc
        .with_graph_mode(&pool, || alloc.allocate(8 * MIB, 512).unwrap())
        .unwrap();
    alloc.free(p).unwrap();
    let q = alloc.allocate(MIB, 512).unwrap();
    alloc.reset_peak_stats();
    let s = alloc.stats();
    assert!(
        s.total.peak_allocated_bytes >= s.pools.peak_allocated_bytes,
        "total peak {} below the pools' peak {}",
        s.total.peak_allocated_bytes,
        s.pools.peak_allocated_bytes
    );
    assert!(s.total.peak_reserved_bytes >= s.pools.peak_reserved_bytes);
    assert!(s.total.peak_allocated_bytes >= s.caching.peak_allocated_bytes);
    alloc.free(q).unwrap();
}
