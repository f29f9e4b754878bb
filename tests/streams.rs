//! Stream-ordered safety on the host backend: same-stream reuse, cross-stream
//! use with `record_stream`, capture-aware routing and deferred frees.

use graphalloc::{Allocator, Backend, Error, HostBackend};
use std::sync::Arc;

fn setup() -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, 1 << 30));
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 1.0).unwrap();
    (host, alloc)
}

#[test]
fn same_stream_reuse_is_immediate() {
    let (host, alloc) = setup();
    let a = host.create_stream();
    let p = alloc.allocate_on(0, a, 4096, 512).unwrap();
    alloc.free(p).unwrap();
    let q = alloc.allocate_on(0, a, 4096, 512).unwrap();
    assert_eq!(p, q, "a block freed on its own stream is reused at once");
    alloc.free(q).unwrap();
}

#[test]
fn other_streams_get_other_blocks() {
    let (host, alloc) = setup();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 4096, 512).unwrap();
    alloc.free(p).unwrap();
    let q = alloc.allocate_on(0, b, 4096, 512).unwrap();
    assert_ne!(
        p, q,
        "a block cached for stream A is not handed to stream B"
    );
    alloc.free(q).unwrap();
}

#[test]
fn recorded_stream_blocks_reuse_until_its_event_completes() {
    let (host, alloc) = setup();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 1 << 16, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.caching.live_blocks, 0, "freed in the books at once");
    assert_eq!(stats.caching.pending_frees, 1, "but waiting for stream B");

    let q = alloc.allocate_on(0, a, 1 << 16, 512).unwrap();
    assert_ne!(p, q, "not reused while B's work may still read it");

    host.complete_stream(b);
    let r = alloc.allocate_on(0, a, 1 << 16, 512).unwrap();
    assert_eq!(alloc.stats().caching.pending_frees, 0);
    assert_eq!(p, r, "reused once B's event completed: the only exact fit");
    alloc.free(q).unwrap();
    alloc.free(r).unwrap();
}

#[test]
fn work_queued_after_the_free_does_not_hold_the_block() {
    let (host, alloc) = setup();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 8192, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap();
    host.complete_stream(b);
    // More work on B after the free: the event was recorded at free time,
    // so it has completed already.
    let other = alloc.allocate_on(0, b, 512, 512).unwrap();
    alloc.record_stream(other, a).unwrap();
    let q = alloc.allocate_on(0, a, 8192, 512).unwrap();
    assert_eq!(p, q);
    alloc.free(q).unwrap();
    alloc.free(other).unwrap();
}

#[test]
fn empty_cache_waits_for_pending_events_and_returns_everything() {
    let (host, alloc) = setup();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 1 << 20, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap();
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().caching.pending_frees, 0);
    assert_eq!(alloc.stats().caching.reserved_bytes, 0);
    assert_eq!(host.outstanding_bytes(), 0);
}

#[test]
fn out_of_memory_waits_for_pending_events_before_failing() {
    let host = Arc::new(HostBackend::new(0, 20 << 20));
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 1.0).unwrap();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 18 << 20, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap();
    // The only room is the pending block's segment: the allocator must wait
    // for B, release the segment and retry.
    let q = alloc.allocate_on(0, b, 18 << 20, 512).unwrap();
    assert_eq!(alloc.stats().caching.oom_retries, 1);
    alloc.free(q).unwrap();
}

#[test]
fn allocations_on_a_capturing_stream_land_in_its_pool() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    let id = host.begin_capture(s);
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    let pool = alloc
        .capture_pool(0, id)
        .expect("a pool made for the capture");
    assert_eq!(pool.stats().live_blocks, 1);
    assert_eq!(alloc.stats().caching.live_blocks, 0);
    host.end_capture(s);
    // After the capture, eager work on the stream uses the cache again.
    let q = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(alloc.stats().caching.live_blocks, 1);
    alloc.free(p).unwrap();
    alloc.free(q).unwrap();
    assert_eq!(pool.stats().live_blocks, 0);
    assert_eq!(alloc.release_capture_pools(), 1);
}

/// The allocator asks for a stream's capture status on every allocation
/// (a capture can begin through the driver, unseen): a capture that begins
/// after pairs on the stream went through the cache's fast path still gets
/// the capture's pool, and the cache again once it ends.
#[test]
fn a_capture_begun_after_cached_pairs_still_routes_to_its_pool() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    for _ in 0..3 {
        let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
        assert_eq!(alloc.pool_of(p), None);
        alloc.free(p).unwrap();
    }
    let id = host.begin_capture(s);
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    let pool = alloc
        .capture_pool(0, id)
        .expect("a pool made for the capture");
    assert_eq!(alloc.pool_of(p), Some(pool.id()));
    alloc.free(p).unwrap();
    host.end_capture(s);
    let q = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(alloc.pool_of(q), None, "eager work uses the cache again");
    alloc.free(q).unwrap();
}

#[test]
fn a_registered_pool_serves_its_streams_captures() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    let pool = alloc.create_pool();
    alloc.set_capture_pool(s, &pool).unwrap();
    let id = host.begin_capture(s);
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(pool.stats().live_blocks, 1);
    assert!(alloc.capture_pool(0, id).is_none());
    host.end_capture(s);
    alloc.free(p).unwrap();
    assert!(alloc.clear_capture_pool(0, s).is_some());
}

#[test]
fn the_guard_wins_over_capture_routing() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    let explicit = alloc.create_pool();
    let id = host.begin_capture(s);
    let p = {
        let _g = alloc.enter_graph_mode(&explicit).unwrap();
        alloc.allocate_on(0, s, 4096, 512).unwrap()
    };
    assert_eq!(explicit.stats().live_blocks, 1);
    assert!(alloc.capture_pool(0, id).is_none());
    host.end_capture(s);
    alloc.free(p).unwrap();
}

#[test]
fn a_capture_time_free_is_not_handed_to_eager_work() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap(); // eager, from the cache
    host.begin_capture(s);
    alloc.free(p).unwrap(); // freed while the capture may still use it
    assert_eq!(alloc.stats().caching.pending_frees, 1);
    host.end_capture(s);
    // The capture has ended, but the event recorded now has not completed.
    let q = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_ne!(p, q);
    host.complete_stream(s);
    let r = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(
        p, r,
        "reusable once the stream's work after the capture is done"
    );
    alloc.free(q).unwrap();
    alloc.free(r).unwrap();
}

#[test]
fn pool_blocks_freed_during_their_capture_are_reused_by_it() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    let id = host.begin_capture(s);
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    alloc.free(p).unwrap();
    let q = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(p, q, "reuse inside one capture's pool is immediate");
    assert_eq!(alloc.capture_pool(0, id).unwrap().stats().live_blocks, 1);
    host.end_capture(s);
    alloc.free(q).unwrap();
}

#[test]
fn bad_stream_input_is_a_typed_error_and_changes_nothing() {
    let (host, alloc) = setup();
    let before = alloc.stats();
    assert_eq!(
        alloc.allocate_on(0, 0xdead, 512, 512).unwrap_err(),
        Error::UnknownStream { stream: 0xdead }
    );
    let p = alloc.allocate_on(0, 0, 512, 512).unwrap();
    assert_eq!(
        alloc.record_stream(p, 0xbeef).unwrap_err(),
        Error::UnknownStream { stream: 0xbeef }
    );
    let unknown = graphalloc::DevicePtr::new(0x10);
    assert_eq!(
        alloc.record_stream(unknown, 0).unwrap_err(),
        Error::UnknownPointer { ptr: 0x10 }
    );
    alloc.free(p).unwrap();
    assert_eq!(
        alloc.record_stream(p, host.create_stream()).unwrap_err(),
        Error::DoubleFree { ptr: p.addr() }
    );
    let after = alloc.stats();
    assert_eq!(after.caching.live_blocks, before.caching.live_blocks);
    assert_eq!(after.caching.pending_frees, 0);
}

#[test]
fn allocate_uses_the_threads_current_stream() {
    let (host, alloc) = setup();
    let s = host.create_stream();
    let p = {
        let _s = graphalloc::use_stream(s);
        alloc.allocate(4096, 512).unwrap()
    };
    alloc.free(p).unwrap();
    // Cached for stream s: a default-stream request gets another block,
    // a request on s gets it back.
    let on_default = alloc.allocate(4096, 512).unwrap();
    assert_ne!(on_default, p);
    let on_s = alloc.allocate_on(0, s, 4096, 512).unwrap();
    assert_eq!(on_s, p);
    alloc.free(on_default).unwrap();
    alloc.free(on_s).unwrap();
}

#[test]
fn a_second_free_of_a_block_waiting_for_events_is_a_double_free() {
    let (host, alloc) = setup();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 1 << 16, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().caching.pending_frees, 1, "waiting for B");
    let before = alloc.stats();
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    assert_eq!(alloc.stats(), before, "and changes nothing");
    host.complete_stream(b);
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
}
