//! A graph pool's lifetime without a reference count per block: the
//! ownership record of a pool block names its pool by a plain pointer, and
//! a pool whose last handle goes while blocks of it are live is parked
//! until its last block is freed (`src/graph_pool/mod.rs`, `PoolPtr`). These
//! tests drop handles, guards, blocks and allocators in every order, also
//! from racing threads, and check that each pool's segments go back exactly
//! once, never while a block of it is live. Also: the pools' sums, whose
//! latest free per pool is kept pending (`src/graph_pool/pending.rs`).

mod support;

use graphalloc::{Allocator, DevicePtr, GraphPool, HostBackend};
use std::sync::Barrier;
use support::{host_allocator, MIB};

/// Allocates `n` blocks of `size` bytes from `pool`, in graph mode.
fn allocate_in(alloc: &Allocator, pool: &GraphPool, n: usize, size: usize) -> Vec<DevicePtr> {
    let _g = alloc.enter_graph_mode(pool).unwrap();
    (0..n).map(|_| alloc.allocate(size, 512).unwrap()).collect()
}

/// Writes and reads back every byte of a live host block: the memory is
/// still the pool's (a released segment would be unmapped or reused).
fn touch(p: DevicePtr, size: usize, byte: u8) {
    // SAFETY: `p` is a live host block of at least `size` bytes, which only
    // the calling thread touches.
    let bytes = unsafe { support::host_bytes(p, size) };
    bytes.fill(byte);
    assert!(bytes.iter().all(|&b| b == byte));
}

#[test]
fn a_pool_whose_handle_goes_while_a_guard_lives_serves_the_guard_then_waits_for_its_blocks() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let guard = alloc.enter_graph_mode(&pool).unwrap();
    let id = pool.id();
    drop(pool);
    // The guard still holds the pool: allocations come from it.
    let blocks: Vec<DevicePtr> = (0..8).map(|_| alloc.allocate(MIB, 512).unwrap()).collect();
    for &p in &blocks {
        assert_eq!(alloc.pool_of(p), Some(id));
        touch(p, MIB, 0x5a);
    }
    let releases = host.releases();
    drop(guard);
    // No handle is left, blocks are: parked, segments kept.
    assert_eq!(host.releases(), releases);
    assert!(alloc.stats().pools.reserved_bytes > 0);
    std::thread::scope(|s| {
        let alloc = &alloc;
        for chunk in blocks.chunks(2) {
            s.spawn(move || {
                for &p in chunk {
                    touch(p, MIB, 0xa5);
                    alloc.free(p).unwrap();
                }
            });
        }
    });
    assert!(host.releases() > releases, "released with its last block");
    let s = alloc.stats();
    assert_eq!((s.pools.reserved_bytes, s.pools.allocated_bytes), (0, 0));
    assert_eq!(
        host.outstanding_bytes(),
        alloc.stats().caching.reserved_bytes
    );
}

/// Drops `handles` (the last ones of their pool) and frees `blocks` (the
/// last of the pool, of `size` bytes, checked live until freed), each
/// handle and each chunk of `chunk` blocks on a thread of its own, all
/// starting at once; then checks that the pool's segments went back once.
fn race(
    host: &HostBackend,
    alloc: &Allocator,
    handles: Vec<GraphPool>,
    blocks: &[DevicePtr],
    chunk: usize,
    size: usize,
) {
    let segments = handles[0].stats().segments as u64;
    let releases = host.releases();
    let start = Barrier::new(handles.len() + blocks.len().div_ceil(chunk));
    std::thread::scope(|s| {
        let start = &start;
        for h in handles {
            s.spawn(move || {
                start.wait();
                drop(h);
            });
        }
        for chunk in blocks.chunks(chunk) {
            s.spawn(move || {
                start.wait();
                for &p in chunk {
                    touch(p, size, 0x3c);
                    alloc.free(p).unwrap();
                }
            });
        }
    });
    assert_eq!(host.releases(), releases + segments);
    assert_eq!(alloc.stats().pools.reserved_bytes, 0);
}

/// The last handle's drop and the last block's free race (each on its own
/// thread, many times): whichever comes second releases the pool, exactly
/// once, and never while the block is live.
#[test]
fn the_last_handle_and_the_last_block_race_and_the_pool_is_released_once() {
    let (host, alloc) = host_allocator(256 * MIB);
    for round in 0..300 {
        let pool = alloc.create_pool();
        let size = [4096, MIB, 3 * MIB][round % 3];
        let blocks = allocate_in(&alloc, &pool, 1 + round % 2, size);
        race(&host, &alloc, vec![pool], &blocks, 2, size);
    }
    assert_eq!(
        host.outstanding_bytes(),
        alloc.stats().caching.reserved_bytes
    );
}

/// Clones of the last handle dropped on several threads while other threads
/// free the blocks: one release.
#[test]
fn handles_and_blocks_dropped_on_many_threads_release_the_pool_once() {
    let (host, alloc) = host_allocator(512 * MIB);
    for _ in 0..50 {
        let pool = alloc.create_pool();
        let blocks = allocate_in(&alloc, &pool, 16, 64 << 10);
        let handles: Vec<GraphPool> = (0..4).map(|_| pool.clone()).collect();
        drop(pool);
        race(&host, &alloc, handles, &blocks, 4, 64 << 10);
    }
}

#[test]
fn a_parked_pool_is_released_when_its_allocator_goes() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let blocks = allocate_in(&alloc, &pool, 3, MIB);
    drop(pool);
    touch(blocks[0], MIB, 1);
    assert!(host.outstanding_bytes() > 0);
    drop(alloc);
    assert_eq!(host.outstanding_bytes(), 0);
}

/// An allocator dropped first clears its records: the pool no longer waits
/// for blocks nobody can free, and goes with its last handle.
#[test]
fn a_pool_outliving_its_allocator_goes_with_its_last_handle() {
    let (host, alloc) = host_allocator(256 * MIB);
    let pool = alloc.create_pool();
    let _blocks = allocate_in(&alloc, &pool, 3, MIB);
    drop(alloc);
    assert_eq!(host.outstanding_bytes(), pool.stats().reserved_bytes);
    assert!(host.outstanding_bytes() > 0);
    drop(pool);
    assert_eq!(host.outstanding_bytes(), 0);
}

/// The sums' figures with each pool's latest free pending: current figures
/// exact at every `stats()`; peaks exact with one pool in use, and at most
/// one block per other pool above the true peak otherwise.
#[test]
fn pool_sums_stay_exact_at_every_stats_call_with_frees_pending() {
    let (_host, alloc) = host_allocator(1 << 30);
    let (p1, p2) = (alloc.create_pool(), alloc.create_pool());
    let mut live = 0;
    let mut peak = 0;
    for (i, size) in [512, 64 << 10, MIB, 16 * MIB, 512, 512, 3 * MIB]
        .into_iter()
        .enumerate()
    {
        let a = allocate_in(&alloc, &p1, 1, size)[0];
        live += size;
        peak = usize::max(peak, live);
        let s = alloc.stats();
        assert_eq!(s.pools.allocated_bytes, live, "step {i}");
        assert_eq!(s.pools.peak_allocated_bytes, peak, "step {i}");
        assert_eq!(s.total.peak_allocated_bytes, peak, "step {i}");
        alloc.free(a).unwrap();
        live -= size;
        assert_eq!(alloc.stats().pools.allocated_bytes, live, "step {i}");
        if i % 2 == 0 {
            // A block kept live across the next steps.
            let _keep = allocate_in(&alloc, &p1, 1, 512);
            live += 512;
            peak = usize::max(peak, live);
        }
    }
    alloc.reset_peak_stats();
    let base = alloc.stats().pools.allocated_bytes;
    assert_eq!(base, live);
    // Pool 1's latest free stays pending while pool 2 allocates: pool 2's
    // peak check sees at most that block more than the true sum.
    let a = allocate_in(&alloc, &p1, 1, MIB)[0];
    alloc.free(a).unwrap();
    let b = allocate_in(&alloc, &p2, 1, 2 * MIB)[0];
    let s = alloc.stats();
    assert_eq!(s.pools.allocated_bytes, base + 2 * MIB);
    let true_peak = base + 2 * MIB;
    assert!(s.pools.peak_allocated_bytes >= true_peak);
    assert!(s.pools.peak_allocated_bytes <= true_peak + MIB);
    alloc.free(b).unwrap();
    let s = alloc.stats();
    assert_eq!(
        (s.pools.allocated_bytes, s.total.allocated_bytes),
        (base, base)
    );
}
