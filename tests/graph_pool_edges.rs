//! Graph pools at their edges, from the review of the pools' plain-pointer
//! ownership and pending statistics: the first three failed before their
//! fixes (a pool's own pending free counted in the peak next to a new
//! segment or a deferred free; a backend entering graph mode during a
//! graph-mode allocation panicked on the thread's stack). Each test states
//! the claim it checks and where it is made.

mod support;

use graphalloc::backend::StreamOrder;
use graphalloc::{Allocator, Backend, BackendError, BackendKind, GraphPool, HostBackend, MemInfo};
use std::sync::{Arc, OnceLock};
use support::{host_allocator, MIB};

/// README (Use, "Exactness"), `MemoryUsageStats` docs and
/// `graph_pool/pending.rs`: the pools' allocated peak is "above [the true
/// peak] by at most the latest free of each other pool whose last call was
/// a free"; "exact with one pool in use". With one pool, a free kept
/// pending followed by an allocation that takes `device.carve`'s path (a
/// new segment here) adds the new block to the gauges without folding the
/// pool's own pending free: the peak counts the freed block too.
#[test]
fn one_pool_peak_is_exact_after_a_pending_free_and_a_new_segment() {
    let (_host, alloc) = host_allocator(1 << 30);
    let pool = alloc.create_pool();
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    let a = alloc.allocate(MIB, 512).unwrap(); // small segment (2 MiB)
    alloc.free(a).unwrap(); // kept pending: gauge still 1 MiB
    let b = alloc.allocate(4 * MIB, 512).unwrap(); // new large segment: carve's path
    let s = alloc.stats();
    assert_eq!(s.pools.allocated_bytes, 4 * MIB);
    assert_eq!(
        pool.stats().peak_allocated_bytes,
        4 * MIB,
        "the pool's own peak"
    );
    // True peak: 4 MiB (1 MiB was freed before the 4 MiB block existed).
    assert_eq!(
        (s.pools.peak_allocated_bytes, s.total.peak_allocated_bytes),
        (4 * MIB, 4 * MIB),
        "pools/total allocated peak with one pool in use"
    );
    alloc.free(b).unwrap();
}

/// The same with a deferred free in the pool's arena: every allocation then
/// goes through `device.carve` (applied directly), every free folds the one
/// before and keeps itself pending, so the gauge runs one block above the
/// true sum for as long as the deferred block waits, and every peak taken
/// meanwhile is over by that block, with one pool and one size.
#[test]
fn one_pool_peak_is_exact_while_a_block_waits_for_a_stream() {
    let (host, alloc) = host_allocator(1 << 30);
    let side = host.create_stream();
    let pool = alloc.create_pool();
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    let x = alloc.allocate(512, 512).unwrap();
    alloc.record_stream(x, side).unwrap();
    alloc.free(x).unwrap(); // deferred: the side stream's work is pending
    alloc.reset_peak_stats();
    for _ in 0..4 {
        let p = alloc.allocate(MIB, 512).unwrap();
        alloc.free(p).unwrap();
    }
    let s = alloc.stats();
    assert_eq!(s.pools.allocated_bytes, 0);
    assert_eq!(
        s.pools.peak_allocated_bytes, MIB,
        "one 1 MiB block live at a time, one pool"
    );
}

/// A backend whose `reserve` enters and leaves graph mode (here on a pool
/// of another allocator; think of a backend implemented over a parent
/// graphalloc allocator). `mode.rs` promises "Nothing panics", and before
/// the merge the graph-mode stack was not borrowed while the allocation
/// ran; now `with_current_pool` keeps it borrowed across the backend call,
/// so the nested `graph_mode` panics with a `BorrowMutError`.
#[derive(Debug)]
struct NestingBackend {
    inner: Arc<HostBackend>,
    other: Arc<OnceLock<GraphPool>>,
}

impl Backend for NestingBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn ordinal(&self) -> usize {
        self.inner.ordinal()
    }
    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        if let Some(pool) = self.other.get() {
            let _g = graphalloc::graph_mode(pool);
        }
        self.inner.reserve(size)
    }
    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        // SAFETY: the caller's contract for `release`, passed on.
        unsafe { self.inner.release(addr, size) }
    }
    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        self.inner.mem_info()
    }
    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        self.inner.as_stream_order()
    }
}

#[test]
fn a_backend_entering_graph_mode_during_a_graph_mode_allocation_does_not_panic() {
    let (_other_host, other_alloc) = host_allocator(64 * MIB);
    let slot = Arc::new(OnceLock::new());
    slot.set(other_alloc.create_pool()).unwrap();
    let backend = NestingBackend {
        inner: Arc::new(HostBackend::new(0, 256 * MIB)),
        other: slot.clone(),
    };
    let alloc = Allocator::from_backends(vec![Arc::new(backend) as Arc<dyn Backend>], 1.0).unwrap();
    let pool = alloc.create_pool();
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    // The pool's first block reserves a segment: the backend runs.
    let p = alloc.allocate(MIB, 512).unwrap();
    alloc.free(p).unwrap();
}

/// Coverage the merge's tests lack (expected to pass): capture pools let go
/// by `release_capture_pools` and `clear_capture_pool` while their blocks
/// live, racing allocations on the capturing stream (which hold the pool
/// only through `pool_for_capture`'s clone), park and are released once,
/// with their last block.
#[test]
fn capture_pools_released_while_blocks_live_race_and_go_with_their_last_block() {
    let (host, alloc) = host_allocator(1 << 30);
    let s = host.create_stream();
    for round in 0..40 {
        let id = host.begin_capture(s);
        let registered = alloc.create_pool();
        if round % 2 == 1 {
            alloc.set_capture_pool(s, &registered).unwrap();
        }
        drop(registered);
        let blocks = std::thread::scope(|sc| {
            let alloc = &alloc;
            let a = sc.spawn(move || {
                (0..32)
                    .map(|i| alloc.allocate_on(0, s, [4096, 64 << 10, 3 << 20][i % 3], 512))
                    .collect::<Vec<_>>()
            });
            sc.spawn(move || {
                for _ in 0..8 {
                    alloc.release_capture_pools();
                    drop(alloc.clear_capture_pool(0, s));
                    std::thread::yield_now();
                }
            });
            a.join().unwrap()
        });
        host.end_capture(s);
        let _ = id;
        drop(alloc.clear_capture_pool(0, s));
        alloc.release_capture_pools();
        for p in blocks {
            let p = p.unwrap();
            touch(p, 4096);
            alloc.free(p).unwrap();
        }
        let st = alloc.stats();
        assert_eq!(
            (st.pools.reserved_bytes, st.pools.segments),
            (0, 0),
            "round {round}"
        );
    }
    assert_eq!(
        host.outstanding_bytes(),
        alloc.stats().caching.reserved_bytes
    );
}

fn touch(p: graphalloc::DevicePtr, size: usize) {
    // SAFETY: a live host block of at least `size` bytes, only this thread's.
    let bytes = unsafe { support::host_bytes(p, size) };
    bytes.fill(0x77);
    assert!(bytes.iter().all(|&b| b == 0x77));
}
