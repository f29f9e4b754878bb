//! Fault injection in expandable segments: a failed map (`cuMemCreate`,
//! `cuMemMap` or `cuMemSetAccess`: the backend undoes its own part; a
//! growth of several mapping units undoes the units mapped before) or a
//! failed unmap (of one unit or in the middle of several) leaves the books
//! exact (reserved bytes, the arena's page
//! states, the device's gauges) and leaks nothing. The oracle
//! (`tests/oracle/mod.rs`) checks every block against the pages the
//! tracking backend really has mapped.

mod oracle;

use graphalloc::{BackendError, Error};
use oracle::{assert_unchanged_but_reclaim, Harness, GIB, MIB};

/// A harness with expandable segments (the default).
fn harness() -> Harness {
    Harness::with_config(64 * GIB, 1, &graphalloc::Config::default())
}

/// The books agree with the pages the backend has mapped.
fn assert_books_exact(h: &Harness) {
    h.check();
    let s = h.alloc.stats();
    assert_eq!(s.caching.reserved_bytes, h.backend.mapped_bytes(), "{s}");
    assert_eq!(s.total.reserved_bytes, h.backend.mapped_bytes(), "{s}");
}

/// A request of `size` bytes is served from memory left mapped, without a
/// map call; then `empty_cache` unmaps everything, with exact books.
fn reuse_without_a_map_then_empty(h: &mut Harness, size: usize) {
    let maps = h.alloc.mapping_stats().maps;
    let b = h.allocate(size, 512).unwrap();
    assert_eq!(h.alloc.mapping_stats().maps, maps, "no map call");
    h.free_block(b.ptr);
    h.alloc.empty_cache().unwrap();
    assert_eq!(h.backend.mapped_bytes(), 0);
    assert_books_exact(h);
}

/// A map that fails when the cache grows changes no figure, peaks
/// included, and maps nothing.
#[test]
fn a_failed_growth_changes_nothing() {
    let mut h = harness();
    let a = h.allocate(12 * MIB, 512).unwrap();
    let before = h.alloc.stats();
    let mapped = h.backend.mapped_bytes();
    h.backend.faults().fail_reservation(1);
    let err = h.alloc.allocate(30 * MIB, 512).unwrap_err();
    assert!(matches!(err, Error::Backend(BackendError::Injected { .. })));
    assert_eq!(before, h.alloc.stats());
    assert_eq!(mapped, h.backend.mapped_bytes());
    assert_books_exact(&h);
    let b = h.allocate(30 * MIB, 512).unwrap();
    h.free_block(a.ptr);
    h.free_block(b.ptr);
    h.teardown();
}

/// A map that fails after the budget made the request unmap idle pages:
/// those pages are gone (a reclaim, as `Error` allows), everything else is
/// as before, and the books match the backend's pages.
#[test]
fn a_failed_growth_after_a_reclaim_keeps_the_books_exact() {
    let mut h = harness();
    let a = h.allocate(12 * MIB, 512).unwrap();
    let b = h.allocate(12 * MIB, 512).unwrap();
    h.free_block(a.ptr);
    let before = h.alloc.stats();
    let unmaps = h.alloc.mapping_stats().unmaps;
    h.backend.faults().fail_reservation(1);
    // 40 MiB more would pass the budget: a's idle pages go first.
    let err = h.alloc.allocate(40 * MIB, 512).unwrap_err();
    assert!(matches!(err, Error::Backend(BackendError::Injected { .. })));
    assert!(
        h.alloc.mapping_stats().unmaps > unmaps,
        "a reclaim happened"
    );
    assert_unchanged_but_reclaim(&before, &h.alloc.stats(), "failed growth");
    assert_books_exact(&h);
    let c = h.allocate(40 * MIB, 512).unwrap();
    assert_books_exact(&h);
    h.free_block(b.ptr);
    h.free_block(c.ptr);
    h.teardown();
}

/// A failed unmap in `empty_cache` is reported, and its pages stay mapped
/// and booked as reserved; the next `empty_cache` unmaps them.
#[test]
fn a_failed_unmap_leaves_the_pages_mapped_and_booked() {
    let mut h = harness();
    let a = h.allocate(12 * MIB, 512).unwrap();
    h.free_block(a.ptr);
    h.backend.faults().fail_unmap(1, 0);
    let err = h.alloc.empty_cache().unwrap_err();
    assert!(
        matches!(err, Error::Backend(BackendError::Injected { .. })),
        "{err:?}"
    );
    assert_eq!(h.alloc.stats().caching.reserved_bytes, 12 * MIB);
    assert_books_exact(&h);
    // Still usable: the pages serve the next request without a map.
    reuse_without_a_map_then_empty(&mut h, 12 * MIB);
    h.teardown();
}

/// A failed unmap during a budget reclaim: the pages stay mapped and
/// booked, and the request is served all the same.
#[test]
fn a_failed_unmap_in_a_budget_reclaim_keeps_the_books_exact() {
    let mut h = harness();
    let a = h.allocate(12 * MIB, 512).unwrap();
    let b = h.allocate(12 * MIB, 512).unwrap();
    h.free_block(a.ptr);
    h.backend.faults().fail_unmap(1, 0);
    let c = h.allocate(40 * MIB, 512).unwrap();
    assert_books_exact(&h);
    assert_eq!(
        h.alloc.stats().caching.reserved_bytes,
        64 * MIB,
        "a's pages kept"
    );
    h.free_block(b.ptr);
    h.free_block(c.ptr);
    h.teardown();
}

/// A block of 300 MiB is mapped as three units (cut every 128 MiB from the
/// range's base): three map calls.
const BIG: usize = 300 * MIB;

/// An unmap that fails in the middle of a multi-unit run (after its first
/// unit, as `cuMemUnmap` failing on the second handle would): the first
/// unit is gone and booked so, the others stay mapped and booked as
/// reserved, and the next `empty_cache` unmaps them.
#[test]
fn a_failure_in_the_middle_of_a_multi_unit_unmap_keeps_the_books_exact() {
    let mut h = harness();
    let maps = h.alloc.mapping_stats().maps;
    let a = h.allocate(BIG, 512).unwrap();
    assert_eq!(h.alloc.mapping_stats().maps - maps, 3, "three units");
    let reserved = h.alloc.stats().caching.reserved_bytes;
    h.free_block(a.ptr);
    h.backend.faults().fail_unmap(1, 1);
    let err = h.alloc.empty_cache().unwrap_err();
    assert!(
        matches!(err, Error::Backend(BackendError::PartlyUnmapped { .. })),
        "{err:?}"
    );
    assert_eq!(
        h.alloc.stats().caching.reserved_bytes,
        reserved - 128 * MIB,
        "the first unit went"
    );
    assert_books_exact(&h);
    h.alloc.empty_cache().unwrap();
    assert_eq!(h.backend.mapped_bytes(), 0);
    assert_books_exact(&h);
    h.teardown();
}

/// A growth of several units whose second map fails: the unit mapped
/// before it is unmapped again, and nothing else changed.
#[test]
fn a_failed_unit_of_a_multi_unit_growth_is_undone() {
    let mut h = harness();
    let unmaps = h.alloc.mapping_stats().unmaps;
    h.backend.faults().fail_reservation(2);
    // (`Harness::allocate` checks that a failure changed nothing but a
    // reclaim.)
    let err = h.allocate(BIG, 512).unwrap_err();
    assert!(matches!(err, Error::Backend(BackendError::Injected { .. })));
    assert_eq!(h.alloc.mapping_stats().unmaps, unmaps + 1, "the undo");
    assert_eq!(h.backend.mapped_bytes(), 0);
    assert_books_exact(&h);
    let a = h.allocate(BIG, 512).unwrap();
    h.free_block(a.ptr);
    h.teardown();
}

/// The same, with the undo failing too: the first unit stays mapped, and
/// is booked as reserved idle memory (nothing leaked, nothing lost), which
/// the next request and `empty_cache` use as any other.
#[test]
fn a_failed_undo_of_a_multi_unit_growth_books_what_stays_mapped() {
    let mut h = harness();
    h.backend.faults().fail_reservation(2);
    h.backend.faults().fail_unmap(1, 0);
    let err = h.alloc.allocate(BIG, 512).unwrap_err();
    assert!(matches!(err, Error::Backend(BackendError::Injected { .. })));
    assert_eq!(h.backend.mapped_bytes(), 128 * MIB);
    assert_eq!(h.alloc.stats().caching.reserved_bytes, 128 * MIB);
    assert_eq!(h.alloc.stats().caching.allocated_bytes, 0);
    assert_books_exact(&h);
    // 100 MiB fits in the unit left mapped: no map call.
    reuse_without_a_map_then_empty(&mut h, 100 * MIB);
    h.teardown();
}

/// Runs the scripted workload with the `fault`th map failing (if any);
/// returns whether it fired and the maps made.
fn workload(fault: Option<u64>) -> (bool, u64) {
    let sizes = [
        3 * MIB,
        40 * MIB,
        100_000,
        7 * MIB,
        96 * MIB,
        1,
        33 * MIB,
        2 * MIB,
    ];
    let mut h = harness();
    if let Some(n) = fault {
        h.backend.faults().fail_reservation(n);
    }
    let mut live = Vec::new();
    let mut fired = false;
    for (i, &size) in sizes.iter().cycle().take(24).enumerate() {
        // (`Harness::allocate` checks that a failure changed nothing but a
        // reclaim.)
        match h.allocate(size, 512) {
            Ok(b) => live.push(b),
            Err(Error::Backend(BackendError::Injected { .. })) => {
                assert!(!fired, "fault {fault:?} fired twice");
                fired = true;
            }
            Err(e) => panic!("fault {fault:?}, request {i}: {e:?}"),
        }
        if i % 3 == 2 {
            let b = live.remove(0);
            h.free_block(b.ptr);
        }
        assert_books_exact(&h);
    }
    for b in live {
        h.free_block(b.ptr);
    }
    let maps = h.alloc.mapping_stats().maps;
    h.teardown();
    (fired, maps)
}

/// Every map of a scripted workload can fail, one at a time: each failure
/// is a typed error that leaves the books exact, and the workload goes on
/// and ends with nothing left.
#[test]
fn every_map_of_a_workload_can_fail() {
    let (_, maps) = workload(None);
    assert!(maps >= 5, "the workload maps {maps} times");
    for fault in 1..=maps {
        assert!(workload(Some(fault)).0, "fault {fault} fired");
    }
}

/// Kept units under failing unmaps: four streams trade 48 MiB in turns at
/// one peak, so budget reclaims keep what they unmapped before and the
/// hard cap (the peak plus 128 MiB) takes kept units; the `n`th unmap fails
/// (a budget, cap or final reclaim). The books stay exact after every
/// turn, and `empty_cache` then unmaps everything.
#[test]
fn failed_unmaps_among_kept_units_keep_the_books_exact() {
    for n in 1..=12 {
        let h = harness();
        let host = h.backend.host();
        let streams = [
            0,
            host.create_stream(),
            host.create_stream(),
            host.create_stream(),
        ];
        h.backend.faults().fail_unmap(n, 0);
        for _ in 0..4 {
            for &s in &streams {
                let p = h.alloc.allocate_on(0, s, 48 * MIB, 512).unwrap();
                h.alloc.free(p).unwrap();
                assert_books_exact(&h);
            }
        }
        if let Err(e) = h.alloc.empty_cache() {
            let injected = matches!(e, Error::Backend(BackendError::Injected { .. }));
            assert!(injected, "{e:?}");
            assert_books_exact(&h);
            h.alloc.empty_cache().unwrap();
        }
        assert_eq!(h.backend.mapped_bytes(), 0, "fault {n}");
        assert_books_exact(&h);
        h.teardown();
    }
}
