//! Model 14: the memory history's ring under concurrent recording (issue 18).
#![cfg(loom)]

use graphalloc::history::Action;
use loom::thread;
use loom_tests::{explore, host_allocator};

/// Model 14a: two threads allocate and free while the ring holds fewer
/// events than they cause. The ring stays within its capacity, its events
/// are numbered in the order they entered, and it ends with the newest.
#[test]
fn two_threads_record_into_a_small_ring() {
    let tally = explore(
        "12a two threads record into a ring of 3",
        Some(3),
        |tally| {
            let (alloc, _host) = host_allocator();
            alloc.record_history(3).unwrap();
            let other = {
                let alloc = alloc.clone();
                thread::spawn(move || {
                    let p = alloc.allocate(1000, 512).unwrap();
                    alloc.free(p).unwrap();
                })
            };
            let q = alloc.allocate(2000, 512).unwrap();
            alloc.free(q).unwrap();
            other.join().unwrap();
            let h = alloc.history();
            assert_eq!(h.len(), 3);
            assert!(h.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{h:?}");
            assert_eq!(h[2].action, Action::FreeCompleted);
            tally.note("bounded, in order");
        },
    );
    tally.expect(&["bounded, in order"]);
}

/// Model 14b: `stop_history` races an allocation and its free. Either
/// event may be cut off, but never the allocation alone while its free is
/// kept: once stopped, nothing more is recorded.
#[test]
fn stopping_races_an_allocation_and_its_free() {
    let tally = explore("12b stop races alloc and free", None, |tally| {
        let (alloc, _host) = host_allocator();
        let warm = alloc.allocate(1000, 512).unwrap(); // the segment exists
        alloc.free(warm).unwrap();
        alloc.record_history(100).unwrap();
        let stopper = {
            let alloc = alloc.clone();
            thread::spawn(move || alloc.stop_history())
        };
        let p = alloc.allocate(1000, 512).unwrap();
        alloc.free(p).unwrap();
        stopper.join().unwrap();
        let actions: Vec<Action> = alloc.history().iter().map(|e| e.action).collect();
        let a = actions.contains(&Action::Alloc);
        let f = actions.contains(&Action::FreeRequested);
        assert!(
            a || !f,
            "a free recorded without its allocation: {actions:?}"
        );
        tally.note(match (a, f) {
            (true, true) => "both",
            (true, false) => "allocation only",
            _ => "none",
        });
    });
    tally.expect(&["both", "allocation only", "none"]);
}
