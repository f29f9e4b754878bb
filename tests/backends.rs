//! The backend layer on its own: the host backend checks what it is given
//! against what it handed out (issue 13, item 2), the allocator destroys the
//! events it pooled, and the adaptors (limit, faults, tracking) wrap any
//! backend and keep exact books.

use graphalloc::backend::{FaultAdaptor, LimitAdaptor, TrackingAdaptor};
use graphalloc::{Allocator, Backend, BackendError, HostBackend};
use std::sync::Arc;

const MIB: usize = 1 << 20;
const PAGE: usize = 2 * MIB;

fn invalid(e: BackendError) -> &'static str {
    match e {
        BackendError::InvalidAddress { why, .. } => why,
        other => panic!("expected InvalidAddress, got {other:?}"),
    }
}

#[test]
fn host_release_of_an_address_never_handed_out_is_refused() {
    let host = HostBackend::new(0, 64 * MIB);
    let seg = host.reserve(4096).unwrap();
    // SAFETY (each block below): nothing ever reads or writes `seg` or
    // 0x1000; the refused calls change nothing.
    // Before: `dealloc` of 0x1000 crashed the process.
    assert_eq!(
        invalid(unsafe { host.release(0x1000, 4096) }.unwrap_err()),
        "not a held segment"
    );
    assert_eq!(
        invalid(unsafe { host.release(seg, 8192) }.unwrap_err()),
        "reserved with another size"
    );
    assert_eq!(host.outstanding_bytes(), 4096);
    unsafe { host.release(seg, 4096) }.unwrap();
    assert_eq!(
        invalid(unsafe { host.release(seg, 4096) }.unwrap_err()),
        "not a held segment"
    );
    assert_eq!((host.outstanding_bytes(), host.releases()), (0, 1));
}

/// Address ranges and segments of sizes near the top of `usize` (a device
/// whose capacity is near 2^63 or unbounded asks for such ranges): an
/// out-of-memory error, never an overflow (the range adds a page of
/// alignment slack to the size) and nothing held after.
#[test]
#[cfg_attr(miri, ignore = "mmap")]
fn host_ranges_and_segments_of_absurd_sizes_are_out_of_memory() {
    let host = HostBackend::new(0, usize::MAX);
    let vmm = host.vmm().unwrap();
    let sizes = [
        usize::MAX,
        usize::MAX - PAGE + 1,
        usize::MAX - PAGE,
        usize::MAX - 2 * PAGE + 1,
        1 << 63,
        (1 << 63) - PAGE,
        isize::MAX as usize,
    ];
    for size in sizes {
        assert_eq!(
            vmm.reserve_range(size),
            Err(BackendError::OutOfMemory { requested: size }),
            "reserve_range({size:#x})"
        );
        assert_eq!(
            host.reserve(size),
            Err(BackendError::OutOfMemory { requested: size }),
            "reserve({size:#x})"
        );
    }
    assert_eq!(host.outstanding_bytes(), 0);
    // Page arithmetic at the top of the address space is refused too.
    let last = u64::MAX - PAGE as u64 + 1;
    let below = last - PAGE as u64;
    assert_eq!(
        invalid(vmm.map(below, PAGE).unwrap_err()),
        "not inside a reserved range"
    );
    assert_eq!(
        invalid(vmm.map(last, PAGE).unwrap_err()),
        "past the address space"
    );
    // SAFETY: refused (past the address space): nothing is unmapped.
    assert_eq!(
        invalid(unsafe { vmm.unmap(below, 2 * PAGE) }.unwrap_err()),
        "past the address space"
    );
}

#[test]
fn host_unmap_of_a_heap_page_is_refused_and_the_page_stays_readable() {
    let host = HostBackend::new(0, 64 * MIB);
    // A segment of plain host memory with a page-aligned page inside it.
    let seg = host.reserve(2 * PAGE).unwrap();
    let page = seg.next_multiple_of(PAGE as u64);
    // Before: Ok, the page lost its protection and the read below crashed.
    // SAFETY: the call must be refused (that is what this test checks);
    // were it not, the read below would be the access the contract forbids,
    // as the bug this pins down was.
    assert_eq!(
        invalid(unsafe { host.vmm().unwrap().unmap(page, PAGE) }.unwrap_err()),
        "not inside a reserved range"
    );
    // SAFETY: `page` lies inside the live segment `seg` that this test owns.
    let byte = unsafe { std::ptr::read_volatile(page as *const u8) };
    let _ = byte;
    assert_eq!(host.outstanding_bytes(), 2 * PAGE);
    // SAFETY: `seg` is not read after this.
    unsafe { host.release(seg, 2 * PAGE) }.unwrap();
}

#[test]
fn host_unmap_of_pages_not_mapped_cannot_underflow_the_used_count() {
    let host = HostBackend::new(0, 64 * MIB);
    let vmm = host.vmm().unwrap();
    let range = vmm.reserve_range(4 * PAGE).unwrap();
    vmm.map(range, PAGE).unwrap();
    assert_eq!(host.outstanding_bytes(), PAGE);
    // SAFETY (each block below): nothing ever reads or writes `range`.
    // Before: Ok, and `used` went from 2 MiB to 2 MiB - 4 MiB (wrapped).
    assert_eq!(
        invalid(unsafe { vmm.unmap(range, 2 * PAGE) }.unwrap_err()),
        "pages not mapped"
    );
    assert_eq!(host.outstanding_bytes(), PAGE);
    // A second map of a mapped page is refused too (it was counted twice).
    assert_eq!(
        invalid(vmm.map(range, PAGE).unwrap_err()),
        "pages already mapped"
    );
    assert_eq!(host.outstanding_bytes(), PAGE);
    // Unaligned, empty, outside: refused, nothing changes.
    for (addr, len) in [
        (range + 1, PAGE),
        (range, 0),
        (range + 4 * PAGE as u64, PAGE),
    ] {
        assert!(vmm.map(addr, len).is_err(), "{addr:#x}+{len}");
        assert!(unsafe { vmm.unmap(addr, len) }.is_err(), "{addr:#x}+{len}");
    }
    // A range with pages mapped cannot be released.
    assert_eq!(
        invalid(unsafe { vmm.release_range(range, 4 * PAGE) }.unwrap_err()),
        "pages still mapped"
    );
    unsafe { vmm.unmap(range, PAGE) }.unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
    unsafe { vmm.release_range(range, 4 * PAGE) }.unwrap();
    assert!(unsafe { vmm.release_range(range, 4 * PAGE) }.is_err());
}

/// What one map call mapped (a mapping unit) is unmapped whole or not at
/// all, as on CUDA: part of it, or a range ending inside one, is refused
/// and changes nothing; several whole units end to end go in one call.
#[test]
fn host_unmap_of_part_of_a_mapping_unit_is_refused() {
    let host = HostBackend::new(0, 64 * MIB);
    let vmm = host.vmm().unwrap();
    let range = vmm.reserve_range(8 * PAGE).unwrap();
    let at = |pages: usize| range + (pages * PAGE) as u64;
    vmm.map(range, 3 * PAGE).unwrap();
    vmm.map(at(3), PAGE).unwrap();
    // SAFETY (each block below): nothing ever reads or writes `range`.
    for (addr, len) in [(range, PAGE), (at(1), 2 * PAGE), (at(2), 2 * PAGE)] {
        assert_eq!(
            invalid(unsafe { vmm.unmap(addr, len) }.unwrap_err()),
            "part of a mapping unit",
            "{addr:#x}+{len}"
        );
    }
    assert_eq!(
        invalid(vmm.map(at(2), PAGE).unwrap_err()),
        "pages already mapped"
    );
    assert_eq!(host.outstanding_bytes(), 4 * PAGE);
    // Both units in one call.
    unsafe { vmm.unmap(range, 4 * PAGE) }.unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
    unsafe { vmm.release_range(range, 8 * PAGE) }.unwrap();
}

#[test]
fn host_events_unknown_or_destroyed_are_typed_errors() {
    let host = HostBackend::new(0, 64 * MIB);
    let streams = host.streams().unwrap();
    // Before: `event_complete(999)` panicked (index out of bounds).
    for event in [999, u64::MAX] {
        assert_eq!(
            streams.event_complete(event),
            Err(BackendError::UnknownEvent { event })
        );
        assert!(streams.wait_event(event).is_err());
        assert!(streams.record_event(event, 0).is_err());
        assert!(streams.destroy_event(event).is_err());
    }
    let e = streams.create_event().unwrap();
    assert_eq!(host.live_events(), 1);
    streams.destroy_event(e).unwrap();
    assert_eq!(host.live_events(), 0);
    assert_eq!(
        streams.event_complete(e),
        Err(BackendError::UnknownEvent { event: e })
    );
}

/// An allocator over `host` that has used events: one free waited on an
/// event that completed (pooled), one is still waiting when it is dropped.
fn allocator_with_events(host: &Arc<HostBackend>) -> Allocator {
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 1.0).unwrap();
    let (a, b) = (host.create_stream(), host.create_stream());
    for _ in 0..2 {
        let p = alloc.allocate_on(0, a, MIB, 512).unwrap();
        alloc.record_stream(p, b).unwrap();
        alloc.free(p).unwrap();
    }
    alloc.empty_cache().unwrap(); // waits: both events go back to the pool
    let p = alloc.allocate_on(0, a, MIB, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap(); // waits on a pooled event, still pending
    assert!(host.live_events() >= 1);
    alloc
}

#[test]
fn dropping_an_allocator_destroys_its_events() {
    let host = Arc::new(HostBackend::new(0, 64 * MIB));
    let alloc = allocator_with_events(&host);
    assert_eq!(alloc.stats().caching.pending_frees, 1);
    // Before: events were never destroyed (on CUDA, each dropped allocator
    // leaked them).
    drop(alloc);
    assert_eq!(host.live_events(), 0);
    assert_eq!(host.outstanding_bytes(), 0);
}

#[test]
fn the_limit_adaptor_counts_segments_and_mapped_pages() {
    let limited = LimitAdaptor::new(HostBackend::new(0, 64 * MIB), 3 * PAGE);
    let seg = limited.reserve(PAGE).unwrap();
    let vmm = limited.vmm().unwrap();
    let range = vmm.reserve_range(8 * PAGE).unwrap(); // address space: free
    vmm.map(range, PAGE).unwrap();
    vmm.map(range + PAGE as u64, PAGE).unwrap();
    assert_eq!(limited.held(), 3 * PAGE);
    assert_eq!(
        vmm.map(range + 2 * PAGE as u64, PAGE),
        Err(BackendError::OutOfMemory { requested: PAGE })
    );
    assert!(limited.reserve(1).is_err());
    assert_eq!(limited.inner().outstanding_bytes(), 3 * PAGE);
    // SAFETY (each block below): nothing ever reads or writes `seg` or
    // `range`.
    // A refused unmap gives nothing back.
    assert!(unsafe { vmm.unmap(range + 4 * PAGE as u64, PAGE) }.is_err());
    assert_eq!(limited.held(), 3 * PAGE);
    unsafe { vmm.unmap(range, PAGE) }.unwrap();
    unsafe { limited.release(seg, PAGE) }.unwrap();
    assert_eq!(limited.held(), PAGE);
    unsafe { vmm.unmap(range + PAGE as u64, PAGE) }.unwrap();
    unsafe { vmm.release_range(range, 8 * PAGE) }.unwrap();
    assert_eq!(
        (limited.held(), limited.inner().outstanding_bytes()),
        (0, 0)
    );
    // A fraction of the device's total.
    let half = LimitAdaptor::with_fraction(HostBackend::new(0, 64 * MIB), 0.5);
    assert_eq!(half.limit(), Some(32 * MIB));
    assert!(half.reserve(32 * MIB + 1).is_err());
    assert_eq!(
        half.mem_info().unwrap().total,
        64 * MIB,
        "the device's own figures"
    );
}

#[test]
fn an_allocator_memory_fraction_is_a_limit_adaptor() {
    let host = Arc::new(HostBackend::new(0, 64 * MIB));
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 0.5).unwrap();
    let p = alloc.allocate(30 * MIB, 512).unwrap();
    assert!(alloc.allocate(4 * MIB, 512).is_err());
    assert_eq!(host.outstanding_bytes(), 30 * MIB);
    alloc.free(p).unwrap();
    // The copies go through the adaptor to the host.
    let q = alloc.allocate(4096, 512).unwrap();
    let copies = alloc.backend(0).unwrap().copies().unwrap();
    let mut out = [0u8; 4];
    // SAFETY: `q` is a live block of 4096 bytes that this test owns.
    unsafe {
        copies.copy_to_device(q.addr(), &[1, 2, 3, 4]).unwrap();
        copies.copy_to_host(q.addr(), &mut out).unwrap();
    }
    assert_eq!(out, [1, 2, 3, 4]);
    alloc.free(q).unwrap();
}

#[test]
fn the_fault_adaptor_fails_chosen_reservations_and_mappings_only() {
    let faulty = FaultAdaptor::new(HostBackend::new(0, 64 * MIB));
    faulty.fail_reservation(2);
    let seg = faulty.reserve(4096).unwrap();
    let vmm = faulty.vmm().unwrap();
    let range = vmm.reserve_range(2 * PAGE).unwrap(); // not a reservation
    assert_eq!(vmm.map(range, PAGE), Err(BackendError::Injected { nth: 2 }));
    vmm.map(range, PAGE).unwrap();
    assert_eq!(faulty.reservations(), 3);
    assert_eq!(
        faulty.inner().reservations(),
        2,
        "the injected one never reached it"
    );
    faulty.fail_reservation(1);
    faulty.clear_faults();
    // SAFETY: nothing ever reads or writes `seg` or `range`.
    unsafe {
        vmm.unmap(range, PAGE).unwrap();
        vmm.release_range(range, 2 * PAGE).unwrap();
        faulty.release(seg, 4096).unwrap();
    }
    assert_eq!(faulty.inner().outstanding_bytes(), 0);
}

#[test]
fn the_tracking_adaptor_records_misuse_without_passing_it_on() {
    let tracked = TrackingAdaptor::new(HostBackend::new(0, 64 * MIB));
    let seg = tracked.reserve(4096).unwrap();
    assert!(tracked.contains(seg, 4096));
    assert!(!tracked.contains(seg, 4097));
    let vmm = tracked.vmm().unwrap();
    let range = vmm.reserve_range(4 * PAGE).unwrap();
    vmm.map(range + PAGE as u64, PAGE).unwrap();
    assert_eq!(tracked.mapped_bytes(), PAGE);
    assert!(tracked.contains(range + PAGE as u64, PAGE));
    assert!(!tracked.contains(range, 1));
    assert!(tracked.in_address_space(range));
    // SAFETY: nothing ever reads or writes `seg` or `range`; the first
    // three calls are refused and change nothing.
    unsafe {
        assert!(vmm.unmap(range, PAGE).is_err());
        assert!(tracked.release(seg + 512, 4096).is_err());
        assert!(vmm.release_range(range, PAGE).is_err());
        assert_eq!(tracked.violations().len(), 3, "{:?}", tracked.violations());
        vmm.unmap(range + PAGE as u64, PAGE).unwrap();
        vmm.release_range(range, 4 * PAGE).unwrap();
        tracked.release(seg, 4096).unwrap();
    }
    assert!(tracked.segments().is_empty() && tracked.ranges().is_empty());
    assert_eq!(tracked.inner().outstanding_bytes(), 0);
}

/// A backend with no capability beyond segments still serves an allocator:
/// the default stream only, no expandable segments, no copies.
#[derive(Debug)]
struct SegmentsOnly(HostBackend);

impl Backend for SegmentsOnly {
    fn kind(&self) -> graphalloc::BackendKind {
        self.0.kind()
    }

    fn ordinal(&self) -> usize {
        0
    }

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.0.reserve(size)
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        // SAFETY: the caller's contract for `release`, passed on.
        unsafe { self.0.release(addr, size) }
    }

    fn mem_info(&self) -> Result<graphalloc::MemInfo, BackendError> {
        self.0.mem_info()
    }
}

#[test]
fn a_backend_of_segments_only_serves_the_default_stream() {
    let backend = Arc::new(SegmentsOnly(HostBackend::new(0, 64 * MIB)));
    let alloc = Allocator::from_backends(vec![backend.clone() as Arc<dyn Backend>], 1.0).unwrap();
    let p = alloc.allocate(MIB, 512).unwrap();
    assert!(alloc.allocate_on(0, 0x5757_0000, MIB, 512).is_err());
    assert!(alloc.record_stream(p, 0x5757_0000).is_err());
    assert!(matches!(
        alloc.backend(0).unwrap().copies(),
        Err(BackendError::Unsupported { .. })
    ));
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().caching.live_blocks, 0);
}

#[test]
fn a_partly_failed_unmap_is_booked_exactly_by_every_layer() {
    let stack = TrackingAdaptor::new(LimitAdaptor::new(
        FaultAdaptor::new(HostBackend::new(0, 64 * MIB)),
        64 * MIB,
    ));
    let faults = stack.inner().inner();
    let vmm = stack.vmm().unwrap();
    let range = vmm.reserve_range(4 * PAGE).unwrap();
    for i in 0..3 {
        vmm.map(range + (i * PAGE) as u64, PAGE).unwrap(); // three units
    }
    faults.fail_unmap(1, 1);
    // SAFETY (each block below): nothing ever reads or writes `range`.
    let e = unsafe { vmm.unmap(range, 3 * PAGE) }.unwrap_err();
    assert_eq!(
        e,
        BackendError::PartlyUnmapped {
            unmapped: PAGE,
            requested: 3 * PAGE,
            cause: Box::new(BackendError::Injected { nth: 1 }),
        }
    );
    assert_eq!(faults.inner().outstanding_bytes(), 2 * PAGE);
    assert_eq!(stack.inner().held(), 2 * PAGE);
    assert_eq!(stack.mapped_bytes(), 2 * PAGE);
    assert!(!stack.contains(range, 1) && stack.contains(range + PAGE as u64, 2 * PAGE));
    // A fault with no page first changes nothing.
    faults.fail_unmap(1, 0);
    let rest = range + PAGE as u64;
    assert_eq!(
        unsafe { vmm.unmap(rest, 2 * PAGE) },
        Err(BackendError::Injected { nth: 2 })
    );
    assert_eq!(stack.inner().held(), 2 * PAGE);
    unsafe { vmm.unmap(rest, 2 * PAGE) }.unwrap();
    unsafe { vmm.release_range(range, 4 * PAGE) }.unwrap();
    assert_eq!(
        (stack.inner().held(), faults.inner().outstanding_bytes()),
        (0, 0)
    );
    assert!(stack.violations().is_empty(), "{:?}", stack.violations());
}
