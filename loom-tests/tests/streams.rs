//! Model 7: stream-ordered reuse under two threads.
#![cfg(loom)]

use loom::thread;
use loom_tests::{explore, host_allocator};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Model 7: a block freed after `record_stream(b)` waits for an event on
/// stream `b`. One thread completes `b`'s work (the event completes) while
/// another allocates on the block's stream. The block is never handed out
/// again before the event has completed, whatever the interleaving; and once
/// it has, an allocation gets it back.
#[test]
fn an_event_completing_races_an_allocation() {
    let tally = explore(
        "7 event completes while another thread allocates",
        None,
        |tally| {
            let (alloc, host) = host_allocator();
            let (a, b) = (host.create_stream(), host.create_stream());
            let p = alloc.allocate_on(0, a, 4096, 512).unwrap();
            alloc.record_stream(p, b).unwrap();
            alloc.free(p).unwrap();

            // Ghost flag, outside loom: set just before the work on `b` is
            // declared done, so "reused while the flag is unset" would mean
            // "reused before the event completed".
            let done = std::sync::Arc::new(AtomicBool::new(false));
            let completer = {
                let (host, done) = (host.clone(), done.clone());
                thread::spawn(move || {
                    done.store(true, SeqCst);
                    host.complete_stream(b);
                })
            };
            let q = alloc.allocate_on(0, a, 4096, 512).unwrap();
            if q == p {
                assert!(done.load(SeqCst), "block reused before its event completed");
                tally.note("reused after the event");
            } else {
                tally.note("not yet reusable");
            }
            completer.join().unwrap();
            // The event has completed: the next allocation from the arena
            // may take the block. (`q` is freed after it: freed first, it
            // would sit in this thread's cache and serve the request
            // without the arena, which settles deferred frees.)
            let r = alloc.allocate_on(0, a, 4096, 512).unwrap();
            assert_eq!(alloc.stats().caching.pending_frees, 0);
            alloc.free(q).unwrap();
            alloc.free(r).unwrap();
        },
    );
    tally.expect(&["reused after the event", "not yet reusable"]);
}
