//! Expandable segments on the host backend: address space reserved once,
//! memory mapped in pages as blocks need it, idle pages unmapped.

use graphalloc::{Allocator, Backend, Config, HostBackend};
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn setup(capacity: usize) -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let config = Config {
        expandable_segments: true,
        ..Config::host(capacity)
    };
    let backend: Arc<dyn Backend> = host.clone();
    (
        host.clone(),
        Allocator::from_backends_with(vec![backend], &config).unwrap(),
    )
}

fn fill(p: graphalloc::DevicePtr, len: usize, byte: u8) {
    // SAFETY: `p` is a live host-backend block of at least `len` bytes owned
    // by the test.
    unsafe { std::ptr::write_bytes(p.addr() as *mut u8, byte, len) };
}

fn check(p: graphalloc::DevicePtr, len: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`.
    let s = unsafe { std::slice::from_raw_parts(p.addr() as *const u8, len) };
    s.iter().all(|&b| b == byte)
}

#[test]
fn large_blocks_share_one_range_and_only_touched_pages_are_reserved() {
    let (host, alloc) = setup(256 * MIB);
    let a = alloc.allocate(3 * MIB, 512).unwrap();
    let b = alloc.allocate(5 * MIB, 512).unwrap();
    assert_eq!(
        b.addr(),
        a.addr() + 3 * MIB as u64,
        "carved back to back from one range"
    );
    let stats = alloc.stats().caching;
    assert_eq!(stats.segments, 1);
    // 8 MiB of blocks over pages [0, 4): 8 MiB mapped, not a 20 MiB segment.
    assert_eq!(stats.reserved_bytes, 8 * MIB);
    assert_eq!(host.outstanding_bytes(), 8 * MIB);
    fill(a, 3 * MIB, 0xa1);
    fill(b, 5 * MIB, 0xb2);
    assert!(check(a, 3 * MIB, 0xa1) && check(b, 5 * MIB, 0xb2));
    alloc.free(a).unwrap();
    alloc.free(b).unwrap();
    assert_eq!(alloc.stats().caching.reserved_bytes, 8 * MIB, "kept cached");
    alloc.empty_cache().unwrap();
    assert_eq!(
        alloc.stats().caching.reserved_bytes,
        0,
        "idle pages unmapped"
    );
    assert_eq!(host.outstanding_bytes(), 0);
}

#[test]
fn growth_past_the_peak_reuses_idle_pages_first() {
    let (_host, alloc) = setup(256 * MIB);
    // Two 6 MiB blocks, the first freed: a 6 MiB hole of mapped pages.
    let a = alloc.allocate(6 * MIB, 512).unwrap();
    let b = alloc.allocate(6 * MIB, 512).unwrap();
    alloc.free(a).unwrap();
    let peak = alloc.stats().caching.peak_reserved_bytes;
    // 8 MiB does not fit the hole: it goes after b. Mapping it would pass
    // the peak, so the hole's idle pages are unmapped first.
    let c = alloc.allocate(8 * MIB, 512).unwrap();
    let stats = alloc.stats().caching;
    assert!(
        stats.reserved_bytes <= peak + 2 * MIB,
        "{} vs peak {}",
        stats.reserved_bytes,
        peak
    );
    fill(c, 8 * MIB, 0x33);
    fill(b, 6 * MIB, 0x22);
    assert!(check(c, 8 * MIB, 0x33));
    // The hole is still usable: its pages are mapped again on demand.
    let d = alloc.allocate(6 * MIB, 512).unwrap();
    assert_eq!(d, a);
    fill(d, 6 * MIB, 0x44);
    assert!(check(b, 6 * MIB, 0x22) && check(c, 8 * MIB, 0x33) && check(d, 6 * MIB, 0x44));
    for p in [b, c, d] {
        alloc.free(p).unwrap();
    }
}

#[test]
fn small_requests_keep_plain_segments() {
    let (_host, alloc) = setup(256 * MIB);
    let p = alloc.allocate(4096, 512).unwrap();
    assert_eq!(alloc.stats().caching.reserved_bytes, 2 * MIB);
    alloc.free(p).unwrap();
}

#[test]
fn out_of_memory_unmaps_idle_pages_and_retries() {
    let (host, alloc) = setup(64 * MIB);
    let a = alloc.allocate(40 * MIB, 512).unwrap();
    alloc.free(a).unwrap();
    let b = alloc.allocate(30 * MIB, 512).unwrap(); // reuses a's pages
    let c = alloc.allocate(30 * MIB, 512).unwrap(); // needs a's idle tail pages
    assert!(host.outstanding_bytes() <= 64 * MIB);
    alloc.free(b).unwrap();
    alloc.free(c).unwrap();
    assert!(alloc.allocate(128 * MIB, 512).is_err());
}

#[test]
fn dropping_the_allocator_returns_every_page_and_range() {
    let (host, alloc) = setup(256 * MIB);
    let keep = alloc.allocate(12 * MIB, 512).unwrap();
    let _ = alloc.allocate(3 * MIB, 512).unwrap();
    assert!(host.outstanding_bytes() > 0);
    let _ = keep;
    drop(alloc);
    assert_eq!(host.outstanding_bytes(), 0);
}

#[test]
fn replayed_trace_reserves_close_to_what_it_allocates() {
    let trace = graphalloc::replay::Trace::from_path("traces/resnet50_train.trace.gz").unwrap();
    let config = Config {
        expandable_segments: true,
        ..Config::host(80 << 30)
    };
    let alloc = Allocator::new(config).unwrap();
    let mut player = graphalloc::replay::Player::new(&trace);
    player.play(&alloc).unwrap();
    let stats = alloc.stats().total;
    player.free_all(&alloc).unwrap();
    let ratio = stats.peak_reserved_bytes as f64 / stats.peak_allocated_bytes as f64;
    // Plain segments give 1.185 on this trace (PyTorch's default too).
    assert!(ratio < 1.05, "peak reserved / peak allocated = {ratio:.4}");
}
