//! Model 19: the ownership record of a block in a thread cache is revived
//! by a hit through the address the cache kept, without the map's lock
//! (`src/ownership.rs`, `OwnershipMap::revive_kept`), while another thread
//! frees the pointer through the map.
#![cfg(loom)]

use graphalloc::tensor::DeviceBuffer;
use graphalloc::Error;
use loom::thread;
use loom_tests::{explore, host_allocator};

/// Model 19: main frees a block into its own thread cache, then takes it
/// back for an owning handle (a `DeviceBuffer`: the hit revives the record
/// in place, held), while another thread frees the old pointer (a double
/// free racing the revival). The other free never succeeds: before the
/// revival it finds the record cached (`DoubleFree`, or `UnknownPointer`
/// while the block is out of the cache but not yet revived), after it the record
/// held (`BufferHeld`), never live and not held (a revival's `held` must be
/// seen with its `cached`). The buffer then frees its block exactly once,
/// and the statistics are exact at the end.
#[test]
fn a_revival_through_the_kept_address_races_a_double_free() {
    let tally = explore(
        "19 kept records: a revival through the kept address races a double free",
        None,
        |tally| {
            let (alloc, host) = host_allocator();
            let a = alloc.allocate(1000, 512).unwrap();
            alloc.free(a).unwrap(); // into main's cache
            let other = {
                let alloc = alloc.clone();
                thread::spawn(move || alloc.free(a))
            };
            // SAFETY: nothing reads the buffer.
            let buf = unsafe { DeviceBuffer::<u8>::uninit(&alloc, 1000) }.unwrap();
            assert_eq!(buf.device_ptr(), a, "a hit of main's cache");
            let theirs = other.join().unwrap();
            tally.note(match theirs {
                // (`UnknownPointer` while main holds the block between its
                // cache and the revival: in no cache, its record cached.)
                Err(Error::DoubleFree { ptr } | Error::UnknownPointer { ptr })
                    if ptr == a.addr() =>
                {
                    "the free came first"
                }
                Err(Error::BufferHeld { ptr }) if ptr == a.addr() => "the revival came first",
                other => panic!("the double free of a revived pointer: {other:?}"),
            });
            assert_eq!(alloc.live_pointers(), 1);
            drop(buf);
            let s = alloc.stats().caching;
            assert_eq!((s.allocations, s.frees), (2, 2));
            assert_eq!(
                (s.live_blocks, s.allocated_bytes, s.requested_bytes),
                (0, 0, 0)
            );
            assert_eq!(alloc.live_pointers(), 0);
            assert_eq!(alloc.empty_cache().unwrap(), s.reserved_bytes);
            assert_eq!(host.outstanding_bytes(), 0);
        },
    );
    tally.expect(&["the free came first", "the revival came first"]);
}
