//! The arena's unit tests (placement, splitting and coalescing, quick
//! bins); the expandable and carving ones live beside their code.

use super::*;

const MIB: usize = 1 << 20;

fn arena_with(size: usize) -> Arena {
    let mut a = Arena::new();
    a.add_segment(0x1000_0000, size, 0, Class::of(size.min(SMALL_REQUEST_MAX)));
    a
}

#[test]
fn rounds_to_512_and_picks_segment_sizes_like_pytorch() {
    assert_eq!(round_size(1), Some(512));
    assert_eq!(round_size(512), Some(512));
    assert_eq!(round_size(513), Some(1024));
    assert_eq!(round_size(usize::MAX), None);
    assert_eq!(segment_size(512), Some(SMALL_SEGMENT));
    assert_eq!(segment_size(MIB), Some(SMALL_SEGMENT));
    assert_eq!(segment_size(MIB + 512), Some(LARGE_SEGMENT));
    assert_eq!(segment_size(10 * MIB), Some(10 * MIB));
    assert_eq!(segment_size(11 * MIB), Some(12 * MIB));
}

#[test]
fn splits_and_coalesces_back_to_one_block() {
    let mut a = arena_with(SMALL_SEGMENT);
    let x = a.try_alloc(0, 512, 500).unwrap();
    let y = a.try_alloc(0, 1024, 1000).unwrap();
    let z = a.try_alloc(0, 512, 512).unwrap();
    assert_eq!(x.block.addr() + 512, y.block.addr());
    assert_eq!(y.block.addr() + 1024, z.block.addr());
    a.check_invariants();
    // Free the middle, then the ends: every order must end in one block.
    a.free(y.block, 1000);
    a.check_invariants();
    a.free(x.block, 500);
    a.check_invariants();
    a.free(z.block, 512);
    a.check_invariants();
    assert_eq!(a.take_free_segments().len(), 1);
    a.check_invariants();
    assert_eq!(a.stats.reserved_bytes, 0);
}

#[test]
fn best_fit_prefers_the_smallest_sufficient_block() {
    let mut a = arena_with(SMALL_SEGMENT);
    let blocks: Vec<_> = [4096, 512, 2048, 512, 1024, 512]
        .iter()
        .map(|&s| a.try_alloc(0, s, s).unwrap())
        .collect();
    // Free 4096 (first) and 2048 (third): holes of 4096 and 2048.
    a.free(blocks[0].block, 4096);
    a.free(blocks[2].block, 2048);
    let got = a.try_alloc(0, 1536, 1536).unwrap();
    assert_eq!(
        got.block.addr(),
        blocks[2].block.addr(),
        "took the 2048 hole"
    );
    a.check_invariants();
}

#[test]
fn exact_size_reuse_takes_the_lowest_address_whatever_the_free_order() {
    let mut a = arena_with(SMALL_SEGMENT);
    let [x, y, _z] = [(); 3].map(|()| a.try_alloc(0, 512, 512).unwrap().block);
    a.free(x, 512); // the lowest first: most recent first would give `y`
    a.free(y, 512);
    for expected in [x, y] {
        assert_eq!(a.try_alloc(0, 512, 512).unwrap().block, expected);
    }
    a.check_invariants();
}

/// Quick blocks lying end to end go back to the index as one run when
/// a miss flushes the bins, merged with free neighbours on both sides.
#[test]
fn a_flush_merges_runs_of_quick_blocks() {
    let mut a = arena_with(SMALL_SEGMENT);
    let sizes = [512, 1024, 512, 2048, 512, 1536, 512];
    let blocks: Vec<_> = sizes
        .iter()
        .map(|&s| a.try_alloc(0, s, s).unwrap())
        .collect();
    // The second block goes to the index by a flush of its own (a
    // miss), its neighbours still live.
    a.free(blocks[1].block, 1024);
    let miss = a.try_alloc(0, 4096, 4096).unwrap();
    assert_eq!(miss.block.addr(), blocks[6].block.addr() + 512);
    a.free(miss.block, 4096);
    // All but the fifth freed: quick runs around the indexed second
    // block (0, then 2 and 3: 4096 bytes with it) and 5, 6 and the
    // 4096 bytes above, then the free rest of the segment.
    for i in [0, 2, 3, 5, 6] {
        a.free(blocks[i].block, sizes[i]);
    }
    a.check_invariants();
    // A miss flushes: 8 KiB fit only in the second run with the rest.
    let big = a.try_alloc(0, 8192, 8192).unwrap();
    a.check_invariants();
    assert_eq!(big.block.addr(), blocks[5].block.addr());
    let first_run = a.try_alloc(0, 4096, 4096).unwrap();
    assert_eq!(first_run.block.addr(), blocks[0].block.addr(), "merged");
    for (c, size) in [(big, 8192), (first_run, 4096), (blocks[4], 512)] {
        a.free(c.block, size);
    }
    a.check_invariants();
    assert_eq!(a.take_free_segments().len(), 1, "all merged back");
    a.check_invariants();
}

#[test]
fn other_streams_do_not_reuse_a_segment() {
    let mut a = arena_with(SMALL_SEGMENT);
    assert!(a.try_alloc(7, 512, 512).is_none());
    assert!(a.try_alloc(0, 512, 512).is_some());
}

#[test]
fn large_blocks_keep_small_remainders() {
    let mut a = Arena::new();
    a.add_segment(0x1000_0000, LARGE_SEGMENT, 0, Class::Large);
    // 19.5 MiB leaves 0.5 MiB: not worth a block in a large segment.
    let got = a.try_alloc(0, LARGE_SEGMENT - MIB / 2, 1).unwrap();
    assert_eq!(got.size, LARGE_SEGMENT);
    a.check_invariants();
}

#[test]
fn classify_tells_interior_and_free_starts() {
    let mut a = arena_with(SMALL_SEGMENT);
    let x = a.try_alloc(0, 1024, 1024).unwrap();
    let base = x.block.addr();
    assert_eq!(a.classify(base), AddressKind::LiveBlockStart);
    assert_eq!(
        a.classify(base + 8),
        AddressKind::Inside {
            block: base,
            allocated: true
        }
    );
    assert_eq!(a.classify(base + 1024), AddressKind::FreeBlockStart);
    assert_eq!(a.classify(base - 1), AddressKind::Outside);
}
