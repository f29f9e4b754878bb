//! Kept units (see `src/device/mapping.rs`): pages a budget reclaim
//! unmapped and a growth mapped again at the same peak allocated bytes stay
//! mapped through later budget reclaims, but only up to the hard cap: a
//! repeating workload of several streams taking turns cannot make the cache
//! hold ever more idle memory.

use graphalloc::{Allocator, Backend, Config, HostBackend};
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// The hard cap's floor (`HARD_CAP_FLOOR` in `src/device/mapping.rs`).
const CAP_FLOOR: usize = 128 * MIB;

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

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
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
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for turn in 0..streams * 3 {
            let stream = tags[turn % streams];
            let mut live = Vec::new();
            let mut held = 0;
            while held < turn_bytes {
                let size = rng.size();
                live.push((alloc.allocate_on(0, stream, size, 512).unwrap(), size));
                held += size;
                if rng.next() % 3 == 0 {
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
