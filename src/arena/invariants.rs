//! The arena's invariants, checked by tests after every step
//! ([`Arena::check_invariants`]).

use super::{Arena, FreeIndex};

impl Arena {
    /// Checks every invariant in the module docs; panics on a violation.
    /// For tests.
    pub(crate) fn check_invariants(&self) {
        let mut allocated = 0;
        let mut live = 0;
        let mut reserved = 0;
        let mut free_blocks = 0;
        for (_, seg) in &self.segments {
            reserved += match &seg.pages {
                Some(pages) => pages.mapped,
                None => seg.size,
            };
            let mut unmapped = 0;
            let mut slot = Some(seg.head);
            let mut expect_addr = seg.base;
            let mut prev: Option<u32> = None;
            let mut prev_free = false;
            while let Some(s) = slot {
                let b = &self.blocks[s as usize];
                assert_eq!(b.addr, expect_addr, "blocks tile the segment");
                assert_eq!(b.prev, prev);
                assert!(
                    !prev_free
                        || b.allocated
                        || prev.is_some_and(|p| self.blocks[p as usize].mapped != b.mapped),
                    "free neighbours merged"
                );
                let key = self.key(s);
                let lane = &self.lanes[seg.lane as usize];
                assert_eq!(lane.stream, seg.stream, "the stream's lane");
                let (index, other) = match b.mapped {
                    true => (&lane.free, &lane.unmapped),
                    false => (&lane.unmapped, &lane.free),
                };
                let indexed = index[seg.class as usize].contains(&key);
                assert_eq!(indexed, !b.allocated, "free index matches");
                assert!(!other[seg.class as usize].contains(&key), "one index");
                assert!(b.mapped || !b.allocated, "live blocks are mapped");
                if !b.mapped {
                    let page = seg.pages.as_ref().expect("expandable").page as u64;
                    assert_eq!((b.addr % page, b.size as u64 % page), (0, 0));
                    unmapped += b.size;
                }
                if b.allocated {
                    allocated += b.size;
                    live += 1;
                } else {
                    free_blocks += 1;
                }
                prev_free = !b.allocated;
                expect_addr += b.size as u64;
                prev = Some(s);
                slot = b.next;
            }
            assert_eq!(expect_addr, seg.base + seg.size as u64, "segment covered");
            self.check_live(seg);
            if let Some(pages) = &seg.pages {
                assert_eq!(pages.mapped + unmapped, seg.size, "mapped bytes");
                self.check_units(seg.head, pages);
            }
        }
        let indexed: usize = self
            .lanes
            .iter()
            .flat_map(|lane| lane.free.iter().chain(&lane.unmapped))
            .map(FreeIndex::len)
            .sum();
        assert_eq!(indexed, free_blocks);
        let deferred: usize = self
            .deferred
            .iter()
            .map(|d| self.blocks[d.block.slot as usize].size)
            .sum();
        let quick_bytes: usize = self
            .quick
            .iter()
            .map(|((_, size), bin)| size * bin.slots.len())
            .sum();
        assert_eq!(
            self.stats.allocated_bytes + deferred + quick_bytes,
            allocated
        );
        assert_eq!(
            self.stats.live_blocks + self.deferred.len() + self.quick_blocks,
            live
        );
        let quick: usize = self.quick.values().map(|bin| bin.slots.len()).sum();
        assert_eq!(quick, self.quick_blocks);
        assert_eq!(self.stats.pending_frees, self.deferred.len());
        assert_eq!(self.stats.reserved_bytes, reserved);
        assert_eq!(self.stats.segments, self.segments.len());
    }
}
