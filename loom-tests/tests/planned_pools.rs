//! Model 8: a planned pool serves the next planned block while another
//! thread frees the block whose memory the plan reuses for it. Either the
//! free came first (the block is served at its planned place) or not (the
//! pool falls back to growth for the rest of the capture); never does the
//! served block overlap a live one, and the counts add up.
#![cfg(loom)]

use graphalloc::DevicePtr;
use loom::thread;
use loom_tests::{explore, host_allocator};

const SIZE: usize = 1024;

fn disjoint(a: DevicePtr, b: DevicePtr) -> bool {
    a.addr() + SIZE as u64 <= b.addr() || b.addr() + SIZE as u64 <= a.addr()
}

#[test]
fn planned_serve_races_the_free_it_reuses() {
    let tally = explore("8 planned serve races a free", None, |tally| {
        let (alloc, _host) = host_allocator();
        // The run: a and b live together, a freed, c reuses a's memory.
        let step = |free_a_first: bool| {
            let a = alloc.allocate(SIZE, 512).unwrap();
            let b = alloc.allocate(SIZE, 512).unwrap();
            if free_a_first {
                alloc.free(a).unwrap();
            }
            (a, b)
        };
        let ((a, b), rec) = alloc.record(|| {
            let (_, b) = step(true);
            let c = alloc.allocate(SIZE, 512).unwrap();
            (c, b)
        });
        alloc.free(a).unwrap();
        alloc.free(b).unwrap();
        let pool = alloc.create_planned_pool(&[&rec]).unwrap();
        assert_eq!(pool.plan_stats().unwrap().planned_bytes, 2 * SIZE);

        // The capture: a's free moves to another thread, racing c.
        let guard = alloc.enter_graph_mode(&pool).unwrap();
        let (a, b) = step(false);
        let freer = {
            let alloc = alloc.clone();
            thread::spawn(move || alloc.free(a).unwrap())
        };
        let c = alloc.allocate(SIZE, 512).unwrap();
        drop(guard);
        let s = pool.plan_stats().unwrap();
        let planned = c == a;
        tally.note(if planned {
            "c served at its planned place"
        } else {
            "c served by growth"
        });
        assert!(disjoint(c, b), "c overlaps the live b");
        if planned {
            assert_eq!((s.planned_hits, s.fallbacks), (3, 0));
        } else {
            // a may still have been live: c must not overlap it either.
            assert!(disjoint(c, a));
            assert_eq!(
                (s.planned_hits, s.fallbacks, s.fallback_allocations),
                (2, 1, 1)
            );
        }
        freer.join().unwrap();
        alloc.free(b).unwrap();
        alloc.free(c).unwrap();
        let ps = pool.stats();
        assert_eq!((ps.allocations, ps.frees, ps.live_blocks), (3, 3, 0));
        assert_eq!(alloc.live_pointers(), 0);
    });
    tally.expect(&["c served at its planned place", "c served by growth"]);
}
