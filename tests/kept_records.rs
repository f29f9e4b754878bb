//! A block freed into its thread's cache keeps its ownership record in the
//! map, marked cached: the next hit of that thread revives it in place (or
//! under a new pointer when the request's alignment moves it), and a flush
//! of the cache removes it. While cached the pointer is not live for anyone.

use graphalloc::{Allocator, Config, Error};

fn host() -> Allocator {
    Allocator::new(Config::host(1 << 30)).expect("host allocator")
}

#[test]
fn a_cached_block_is_not_live_and_a_second_free_is_a_double_free() {
    let alloc = host();
    let p = alloc.allocate(512, 512).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(alloc.live_pointers(), 0);
    assert_eq!(alloc.requested_size(p), None);
    assert_eq!(alloc.device_of(p), None);
    assert!(alloc.record_stream(p, 1).is_err());
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    // From another thread (whose cache the block is not in) too: the record
    // says cached, so that thread cannot take the block to the arena.
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() })));
    });
    // The cache still hands the block out, once.
    let q = alloc.allocate(512, 512).unwrap();
    assert_eq!(q, p);
    assert_eq!(alloc.requested_size(q), Some(512));
    assert_eq!(alloc.live_pointers(), 1);
    alloc.free(q).unwrap();
    assert_eq!(alloc.stats().total.allocated_bytes, 0);
}

#[test]
fn a_hit_under_another_alignment_moves_the_record_to_the_new_pointer() {
    let alloc = host();
    // A 512 B block first, so that the next block starts at an odd 512.
    let pad = alloc.allocate(512, 512).unwrap();
    let p = alloc.allocate(1024, 512).unwrap();
    assert_ne!(p.addr() % 1024, 0, "test set-up: p is not 1 KiB aligned");
    alloc.free(p).unwrap();
    // 100 bytes at 1 KiB alignment round to the same 1 KiB block size.
    let q = alloc.allocate(100, 1024).unwrap();
    assert_eq!(q.addr(), p.addr().next_multiple_of(1024));
    assert_eq!(alloc.requested_size(q), Some(100));
    assert_eq!(alloc.requested_size(p), None);
    assert_eq!(alloc.live_pointers(), 2);
    assert!(alloc.free(p).is_err());
    alloc.free(q).unwrap();
    // And back under the first pointer.
    let r = alloc.allocate(1024, 512).unwrap();
    assert_eq!(r, p);
    alloc.free(r).unwrap();
    alloc.free(pad).unwrap();
    let stats = alloc.stats().total;
    assert_eq!((stats.allocated_bytes, stats.live_blocks), (0, 0));
    assert_eq!(alloc.live_pointers(), 0);
}

#[test]
fn a_flush_forgets_the_cached_records_so_the_arena_may_hand_the_pointers_out_again() {
    let alloc = host();
    let ptrs: Vec<_> = (0..4).map(|_| alloc.allocate(4096, 512).unwrap()).collect();
    for &p in &ptrs {
        alloc.free(p).unwrap();
    }
    // Memory to map: every thread's cache is flushed into the arena first.
    let big = alloc.allocate(64 << 20, 512).unwrap();
    for &p in &ptrs {
        assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    }
    // Another size carved from where the cached blocks were: fresh records
    // under the same pointers (a stale record would make the insert fail).
    let again: Vec<_> = (0..8).map(|_| alloc.allocate(2048, 512).unwrap()).collect();
    assert!(again.contains(&ptrs[0]));
    assert_eq!(alloc.live_pointers(), 9);
    for p in again {
        alloc.free(p).unwrap();
    }
    alloc.free(big).unwrap();
    assert_eq!(alloc.stats().total.allocated_bytes, 0);
}

#[test]
fn a_block_freed_by_another_thread_goes_to_the_arena_and_is_freed_once() {
    let alloc = host();
    let p = alloc.allocate(512, 512).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| alloc.free(p).unwrap());
    });
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    assert_eq!(alloc.live_pointers(), 0);
    let stats = alloc.stats().total;
    assert_eq!((stats.allocated_bytes, stats.frees), (0, 1));
}

/// A hit revives the kept record in place, through the address the cache
/// kept (no map look-up): the revival must carry the new request's `held`,
/// so that a plain free of the pointer, from any thread, is refused while
/// the buffer that took the block back holds it. On the caching side and
/// in a graph pool's thread cache alike.
#[test]
fn a_block_taken_back_by_a_buffer_is_held_for_every_thread() {
    use graphalloc::tensor::DeviceBuffer;
    let alloc = host();
    let pool = alloc.create_pool();
    for graph in [false, true] {
        let _guard = graph.then(|| alloc.enter_graph_mode(&pool).unwrap());
        // Twice: a graph-mode entry's cache is made by the allocation
        // after a free that found none.
        let mut p = alloc.allocate(4000, 512).unwrap();
        alloc.free(p).unwrap();
        p = alloc.allocate(4000, 512).unwrap();
        alloc.free(p).unwrap(); // into this thread's cache
        let buf = DeviceBuffer::from_slice(&alloc, &[5u8; 4000]).unwrap();
        assert_eq!(buf.device_ptr(), p, "a hit (graph mode: {graph})");
        assert_eq!(alloc.requested_size(p), Some(4000));
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(alloc.free(p), Err(Error::BufferHeld { ptr: p.addr() })));
        });
        assert_eq!(alloc.free(p), Err(Error::BufferHeld { ptr: p.addr() }));
        assert_eq!(buf.to_vec().unwrap(), vec![5u8; 4000]);
        drop(buf);
        assert_eq!(alloc.live_pointers(), 0);
        assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    }
    let s = alloc.stats();
    assert_eq!((s.caching.allocations, s.caching.frees), (3, 3));
    assert_eq!((s.pools.allocations, s.pools.frees), (3, 3));
    assert_eq!((s.pools.allocated_bytes, s.caching.allocated_bytes), (0, 0));
}
