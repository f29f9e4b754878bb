//! Models 8 to 10: statistics and capture-pool registration racing with
//! allocations and pool drops (issue 13, items 5 to 7).
#![cfg(loom)]

use loom::thread;
use loom_tests::{explore, host_allocator};

/// Model 8: `reset_peak_stats` races with an allocation. Before the race the
/// total's peak is one block above its current value (0), so the
/// allocation's gauge update sees a peak at least as high as its new value
/// and leaves it; the reset must not then lower the peak below the current
/// value.
#[test]
fn reset_peak_stats_races_an_allocation() {
    let tally = explore("8 peak reset races an allocation", None, |tally| {
        let (alloc, _host) = host_allocator();
        let p = alloc.allocate(1000, 512).unwrap();
        alloc.free(p).unwrap();
        let resetter = {
            let alloc = alloc.clone();
            thread::spawn(move || alloc.reset_peak_stats())
        };
        let q = alloc.allocate(1000, 512).unwrap();
        resetter.join().unwrap();
        let total = alloc.stats().total;
        assert_eq!(total.allocated_bytes, 1024);
        assert!(
            total.peak_allocated_bytes >= total.allocated_bytes,
            "peak {} below current {}",
            total.peak_allocated_bytes,
            total.allocated_bytes
        );
        tally.note("peak at or above current");
        alloc.free(q).unwrap();
    });
    tally.expect(&["peak at or above current"]);
}

/// Model 9: `set_capture_pool` replaces a stream's pool while another
/// thread allocates on that stream during a capture. The allocation lands in
/// the old pool or the new one, never in a pool made on demand.
#[test]
fn replacing_a_capture_pool_races_an_allocation() {
    let tally = explore(
        "9 capture pool replaced during an allocation",
        None,
        |tally| {
            let (alloc, host) = host_allocator();
            let s = host.create_stream();
            let (old, new) = (alloc.create_pool(), alloc.create_pool());
            alloc.set_capture_pool(s, &old).unwrap();
            host.begin_capture(s);
            let replacer = {
                let (alloc, new) = (alloc.clone(), new.clone());
                thread::spawn(move || alloc.set_capture_pool(s, &new).unwrap())
            };
            let p = alloc.allocate_on(0, s, 1000, 512).unwrap();
            replacer.join().unwrap();
            let pool = alloc.pool_of(p);
            tally.note(match pool {
                Some(id) if id == old.id() => "the old pool",
                Some(id) if id == new.id() => "the new pool",
                other => panic!("allocation went to {other:?}, not a registered pool"),
            });
            alloc.free(p).unwrap();
            host.end_capture(s);
        },
    );
    tally.expect(&["the old pool", "the new pool"]);
}

/// Model 10: the last handle of a pool is dropped while another thread reads
/// the statistics. The pools' cumulative counts never go down: the dropped
/// pool is counted once, live or retired.
#[test]
fn dropping_a_pool_races_a_stats_read() {
    let tally = explore("10 pool drop races a stats read", None, |tally| {
        let (alloc, _host) = host_allocator();
        let pool = alloc.create_pool();
        let p = alloc
            .with_graph_mode(&pool, || alloc.allocate(1000, 512).unwrap())
            .unwrap();
        alloc.free(p).unwrap();
        let dropper = thread::spawn(move || drop(pool));
        let pools = alloc.stats().pools;
        assert_eq!(
            (pools.allocations, pools.frees),
            (1, 1),
            "the dropped pool's counts, exactly once"
        );
        tally.note("counted once");
        dropper.join().unwrap();
        assert_eq!(alloc.stats().pools.allocations, 1);
    });
    tally.expect(&["counted once"]);
}
