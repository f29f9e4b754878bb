//! Expandable segments on the host backend: address space reserved once,
//! memory mapped in pages as blocks need it, idle pages unmapped.

use graphalloc::backend::StreamOrder;
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
    // `a` takes pages [0, 2) whole (a remainder of 1 MiB is not split off
    // a large block, PyTorch's rule), `b` the next three pages.
    assert_eq!(
        b.addr(),
        a.addr() + 4 * MIB as u64,
        "carved back to back from one range"
    );
    let stats = alloc.stats().caching;
    assert_eq!(stats.segments, 1);
    // 10 MiB of pages mapped, not two 20 MiB segments.
    assert_eq!(stats.reserved_bytes, 10 * MIB);
    assert_eq!(host.outstanding_bytes(), 10 * MIB);
    fill(a, 3 * MIB, 0xa1);
    fill(b, 5 * MIB, 0xb2);
    assert!(check(a, 3 * MIB, 0xa1) && check(b, 5 * MIB, 0xb2));
    alloc.free(a).unwrap();
    alloc.free(b).unwrap();
    assert_eq!(
        alloc.stats().caching.reserved_bytes,
        10 * MIB,
        "kept cached"
    );
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

/// A host-backend allocator with an extra simulated stream.
fn with_stream(capacity: usize) -> (Arc<HostBackend>, Allocator, u64) {
    let (host, alloc) = setup(capacity);
    let stream = host.create_stream();
    (host, alloc, stream)
}

/// Work queued on a stream before its block was freed (an event recorded
/// on the stream stands for it) must be complete before the block's pages
/// are unmapped: `empty_cache` waits for the stream first. Fails if the
/// reclaim unmaps without waiting (the event stays incomplete).
#[test]
fn empty_cache_waits_for_the_stream_before_unmapping() {
    let (host, alloc, s) = with_stream(256 * MIB);
    let x = alloc.allocate_on(0, s, 12 * MIB, 512).unwrap();
    let kernel = host.create_event().unwrap();
    host.record_event(kernel, s).unwrap(); // a kernel using x, still queued
    alloc.free(x).unwrap();
    assert!(
        !host.event_complete(kernel).unwrap(),
        "the kernel is queued"
    );
    let unmaps = alloc.mapping_stats().unmaps;
    alloc.empty_cache().unwrap();
    assert!(
        alloc.mapping_stats().unmaps > unmaps,
        "x's pages were unmapped"
    );
    assert!(
        host.event_complete(kernel).unwrap(),
        "the unmap waited for the work queued on x's stream"
    );
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Two streams take turns holding the same memory, each in its own range:
/// under the budget (the peak reserved), each turn unmapped the other's
/// idle pages to map its own, every pass (2 maps and 2 unmaps). Pages that
/// a budget reclaim unmapped and a growth maps again at the same peak
/// allocated bytes are kept from budget reclaims: from the third pass on,
/// none makes a mapping call, the cache holding both turns' memory (within
/// the hard cap); `empty_cache` still unmaps it all.
#[test]
fn memory_traded_between_streams_at_one_peak_is_kept() {
    let (host, alloc, s) = with_stream(1024 * MIB);
    let pass = |alloc: &Allocator| {
        for stream in [0, s] {
            let p = alloc.allocate_on(0, stream, 48 * MIB, 512).unwrap();
            fill(p, 48 * MIB, 0x5a);
            alloc.free(p).unwrap();
        }
    };
    pass(&alloc);
    let cold = alloc.mapping_stats();
    assert_eq!((cold.maps, cold.unmaps), (2, 1), "cold: {cold:?}");
    pass(&alloc);
    let second = alloc.mapping_stats().since(&cold);
    assert_eq!((second.maps, second.unmaps), (2, 1), "{second:?}");
    let settled = alloc.mapping_stats();
    for _ in 0..3 {
        pass(&alloc);
    }
    let warm = alloc.mapping_stats().since(&settled);
    assert_eq!((warm.maps, warm.unmaps), (0, 0), "warm passes: {warm:?}");
    assert_eq!(alloc.stats().caching.reserved_bytes, 96 * MIB);
    alloc.empty_cache().unwrap();
    assert_eq!(
        host.outstanding_bytes(),
        0,
        "real pressure takes kept pages"
    );
}

// A reclaim forced by the idle budget never waits for a stream: see
// tests/expandable_fences.rs.

/// No wait can drain a stream being captured: its idle pages stay mapped
/// (and the call does not fail) until the capture has ended.
#[test]
fn pages_of_a_capturing_stream_stay_mapped() {
    let (host, alloc, s) = with_stream(256 * MIB);
    let x = alloc.allocate_on(0, s, 12 * MIB, 512).unwrap();
    alloc.free(x).unwrap();
    host.begin_capture(s);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().caching.reserved_bytes, 12 * MIB);
    host.end_capture(s);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().caching.reserved_bytes, 0);
    assert_eq!(host.outstanding_bytes(), 0);
}

/// A repeating training-like workload settles: weights, then per step
/// activations of varied sizes (with short-lived temporaries) freed in
/// reverse while gradients are made, optimizer state from the first step
/// on. The first pass maps what it needs; later passes find every block in
/// mapped memory and make no mapping call, and reserved memory stays within
/// 5% of the peak allocated.
#[test]
fn a_repeating_workload_makes_no_mapping_call_once_warm() {
    let (_host, alloc) = setup(8192 * MIB);
    let weights = [
        9 * MIB,
        2 * MIB + 512,
        36 * MIB,
        600 * 1024,
        144 * MIB,
        3 * MIB,
    ];
    let acts = [
        48 * MIB,
        6 * MIB,
        24 * MIB,
        785 * MIB,
        12 * MIB,
        96 * MIB,
        200 * 1024,
    ];
    let pass = |alloc: &Allocator| {
        let mut held = Vec::new();
        for &w in &weights {
            held.push(alloc.allocate(w, 512).unwrap());
        }
        for step in 0..3 {
            let mut stack = Vec::new();
            for (i, &a) in acts.iter().cycle().take(20).enumerate() {
                stack.push(alloc.allocate(a + 4096 * i, 512).unwrap());
                let tmp = alloc.allocate(a / 2 + 512, 512).unwrap();
                alloc.free(tmp).unwrap();
            }
            let mut grads = Vec::new();
            while let Some(p) = stack.pop() {
                alloc.free(p).unwrap();
                if grads.len() < weights.len() {
                    grads.push(alloc.allocate(weights[grads.len()], 512).unwrap());
                }
            }
            if step == 0 {
                for &w in &weights {
                    held.push(alloc.allocate(w, 512).unwrap());
                }
            }
            for g in grads {
                alloc.free(g).unwrap();
            }
        }
        for p in held {
            alloc.free(p).unwrap();
        }
    };
    pass(&alloc);
    let cold = alloc.mapping_stats();
    assert!(cold.maps > 0);
    for _ in 0..3 {
        pass(&alloc);
    }
    let warm = alloc.mapping_stats().since(&cold);
    assert_eq!((warm.maps, warm.unmaps), (0, 0), "warm passes: {warm:?}");
    let stats = alloc.stats().caching;
    assert!(
        stats.peak_reserved_bytes as f64 <= stats.peak_allocated_bytes as f64 * 1.05,
        "{stats:?}"
    );
}

/// Near a memory limit, idle pages are unmapped (in one batch) to make
/// room, rather than the request failing or releasing the whole cache.
#[test]
fn the_limit_reclaims_idle_pages_instead_of_failing() {
    let host = Arc::new(HostBackend::new(0, 256 * MIB));
    let config = Config {
        memory_fraction: 0.5,
        ..Config::host(256 * MIB)
    };
    let backend: Arc<dyn Backend> = host.clone();
    let alloc = Allocator::from_backends_with(vec![backend], &config).unwrap();
    let a = alloc.allocate(60 * MIB, 512).unwrap();
    let b = alloc.allocate(60 * MIB, 512).unwrap();
    alloc.free(a).unwrap();
    // 120 MiB mapped of a 128 MiB limit; a 64 MiB request does not fit a's
    // 60 MiB hole, so the hole's pages go first.
    let c = alloc.allocate(64 * MIB, 512).unwrap();
    assert!(host.outstanding_bytes() <= 128 * MIB);
    assert_eq!(
        alloc.stats().caching.oom_retries,
        0,
        "no full release needed"
    );
    alloc.free(b).unwrap();
    alloc.free(c).unwrap();
}

/// An allocator going away unmaps the pages it still holds only after the
/// work queued on their streams (plain segments' `cuMemFree` waits too).
#[test]
fn dropping_the_allocator_waits_for_the_streams_before_unmapping() {
    let (host, alloc, s) = with_stream(256 * MIB);
    let x = alloc.allocate_on(0, s, 12 * MIB, 512).unwrap();
    let kernel = host.create_event().unwrap();
    host.record_event(kernel, s).unwrap();
    alloc.free(x).unwrap();
    drop(alloc);
    assert!(
        host.event_complete(kernel).unwrap(),
        "waited for the stream"
    );
    assert_eq!(host.outstanding_bytes(), 0);
}

// Kept units (see `src/device/mapping.rs`): pages a budget reclaim unmapped
// and a growth mapped again at the same peak allocated bytes stay mapped
// through later budget reclaims, but only up to the hard cap: a repeating
// workload of several streams taking turns cannot make the cache hold ever
// more idle memory.

/// The hard cap's floor (`HARD_CAP_FLOOR` in `src/device/mapping.rs`).
const CAP_FLOOR: usize = 128 * MIB;

/// A small deterministic generator (a 64-bit LCG, its high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = (self.0)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 29
    }

    /// A block size: mostly small, some large (whole MiB or odd sizes).
    fn size(&mut self) -> usize {
        match self.next() % 8 {
            0 => (1 + self.next() % 96) as usize * MIB,
            1 | 2 => (1 + self.next() % 8) as usize * MIB + 512,
            _ => (1 + self.next() % 512) as usize * 4096,
        }
    }
}

/// Streams take turns: each turn allocates on its stream until it holds
/// about `turn_bytes` (some blocks freed as it goes), then frees the rest,
/// while `long_lived` blocks on stream 0 outlive a few turns each. The turns
/// of each pass are drawn from the same seed, so the passes repeat; after
/// every event, the reserved bytes must stay within the peak allocated bytes
/// plus the hard cap's idle share, plus the idle memory no reclaim can take
/// (units partly under live blocks: at most a unit per live block's ends,
/// bounded here by `frag`).
fn turns(streams: usize, turn_bytes: usize, passes: usize, long_lived: bool, frag: usize) {
    let (host, alloc) = setup(64 << 30);
    let mut tags = vec![0u64];
    tags.extend((1..streams).map(|_| host.create_stream()));
    let mut worst = (0usize, 0usize, 0usize);
    let mut held_long: Vec<graphalloc::DevicePtr> = Vec::new();
    for pass in 0..passes {
        let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
        for turn in 0..streams * 3 {
            let stream = tags[turn % streams];
            let mut live = Vec::new();
            let mut held = 0;
            while held < turn_bytes {
                let size = rng.size();
                live.push((alloc.allocate_on(0, stream, size, 512).unwrap(), size));
                held += size;
                if rng.next().is_multiple_of(3) {
                    let (p, size) = live.swap_remove((rng.next() as usize) % live.len());
                    alloc.free(p).unwrap();
                    held -= size;
                }
                let s = alloc.stats().caching;
                let bound =
                    s.peak_allocated_bytes + (s.peak_allocated_bytes / 24).max(CAP_FLOOR) + frag;
                if s.reserved_bytes > worst.0 {
                    worst = (s.reserved_bytes, s.peak_allocated_bytes, pass);
                }
                assert!(
                    s.reserved_bytes <= bound,
                    "pass {pass} turn {turn}: reserved {} MiB > bound {} MiB \
                     (peak allocated {} MiB)",
                    s.reserved_bytes / MIB,
                    bound / MIB,
                    s.peak_allocated_bytes / MIB
                );
            }
            if long_lived {
                if held_long.len() > 4 {
                    alloc.free(held_long.remove(0)).unwrap();
                }
                held_long.push(alloc.allocate(2 * MIB + 4096, 512).unwrap());
            }
            for (p, _) in live {
                alloc.free(p).unwrap();
            }
        }
    }
    eprintln!(
        "worst reserved {} MiB at peak allocated {} MiB (pass {}); {:?}",
        worst.0 / MIB,
        worst.1 / MIB,
        worst.2,
        alloc.mapping_stats()
    );
    for p in held_long {
        alloc.free(p).unwrap();
    }
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

#[test]
fn streams_taking_turns_hold_idle_memory_within_the_hard_cap() {
    turns(4, 256 * MIB, 6, false, 0);
}

#[test]
fn streams_taking_turns_past_the_cap_floor_stay_within_it() {
    // Peak over 24 x 128 MiB: the cap is a share of the peak.
    turns(3, 3200 * MIB, 3, false, 64 * MIB);
}

#[test]
fn streams_taking_turns_around_long_lived_blocks_stay_within_the_cap() {
    turns(4, 256 * MIB, 6, true, 64 * MIB);
}

/// A unit mapped over pages a budget reclaim unmapped is kept only if the
/// peak allocated bytes have not risen since: not if the request it is
/// mapped for raises the peak (a pass still growing keeps nothing). Here
/// `r` maps the pages of `y` again while raising the peak; after `r` is
/// freed, the next growth past the budget must be able to unmap them.
#[test]
fn pages_mapped_again_by_a_request_raising_the_peak_are_not_kept() {
    let (_host, alloc) = setup(1 << 30);
    let [x, y, w, t] = [16, 16, 16, 16].map(|mib| alloc.allocate(mib * MIB, 512).unwrap());
    alloc.free(y).unwrap();
    alloc.free(t).unwrap();
    // 24 MiB: t's pages and 8 more; over the budget, y's pages go.
    let u = alloc.allocate(24 * MIB, 512).unwrap();
    let s = alloc.stats().caching;
    assert_eq!(
        (s.reserved_bytes, s.peak_allocated_bytes),
        (56 * MIB, 64 * MIB)
    );
    // y's pages again, for a request that raises the peak to 72 MiB.
    let r = alloc.allocate(16 * MIB, 512).unwrap();
    assert_eq!(r.addr(), y.addr());
    alloc.free(r).unwrap();
    // Past the budget again: y's idle pages are unmapped first.
    let v = alloc.allocate(20 * MIB, 512).unwrap();
    let s = alloc.stats().caching;
    let budget = s.peak_allocated_bytes + s.peak_allocated_bytes / 32;
    assert!(
        s.reserved_bytes <= budget.max(72 * MIB),
        "reserved {} MiB, budget {} MiB",
        s.reserved_bytes / MIB,
        budget / MIB
    );
    for p in [x, w, u, v] {
        alloc.free(p).unwrap();
    }
}
