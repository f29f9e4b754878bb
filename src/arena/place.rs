//! Carving a block at a given address (how a planned pool serves its
//! plan), and the split both kinds of carving use.

use super::{Arena, BlockRef, Carved};

impl Arena {
    /// Carves exactly `[addr, addr + size)` out of segment `segment` if that
    /// range lies inside one free block, splitting off what is left on
    /// either side as free blocks. Returns `None`, changing nothing, if any
    /// byte of the range is not free (live, deferred, or in a quick bin) or
    /// lies outside the segment. `addr` and `size` are multiples of 512.
    pub(crate) fn alloc_at(
        &mut self,
        segment: u32,
        addr: u64,
        size: usize,
        requested: usize,
    ) -> Option<Carved> {
        let seg = self.segments.get(segment as usize)?;
        let end = addr.checked_add(size as u64)?;
        if addr < seg.base || end > seg.base + seg.size as u64 || size == 0 {
            return None;
        }
        let mut slot = seg.head;
        loop {
            let b = &self.blocks[slot as usize];
            if addr < b.addr + b.size as u64 {
                break;
            }
            slot = b.next?;
        }
        let (b_addr, b_end, allocated) = {
            let b = &self.blocks[slot as usize];
            (b.addr, b.addr + b.size as u64, b.allocated)
        };
        if allocated || end > b_end {
            return None;
        }
        self.index_remove(slot);
        let (front, after) = ((addr - b_addr) as usize, (b_end - end) as usize);
        if front > 0 {
            // The block keeps the front (a segment's head is never
            // removed); the carved block follows it.
            let carved = self.split_free(slot, addr);
            self.index_insert(slot);
            slot = carved;
        }
        if after > 0 {
            let rest = self.split_free(slot, end);
            self.index_insert(rest);
        }
        let b = &mut self.blocks[slot as usize];
        (b.allocated, b.stale) = (true, false);
        self.segments[segment as usize].live += 1;
        self.stats.on_alloc(size, requested);
        Some(Carved {
            block: BlockRef { slot, addr },
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Arena, Class};

    #[test]
    fn carves_at_an_address_and_refuses_busy_ranges() {
        let mut a = Arena::new();
        let seg = a.add_segment(0x1000_0000, 64 << 10, 0, Class::Large);
        let mid = a.alloc_at(seg, 0x1000_0000 + 8192, 4096, 4096).unwrap();
        assert_eq!((mid.block.addr(), mid.size), (0x1000_0000 + 8192, 4096));
        a.check_invariants();
        // Overlapping the live block, or past the segment: refused.
        assert!(a.alloc_at(seg, 0x1000_0000 + 4096, 8192, 1).is_none());
        assert!(a.alloc_at(seg, 0x1000_0000 + (60 << 10), 8192, 1).is_none());
        let head = a.alloc_at(seg, 0x1000_0000, 8192, 8192).unwrap();
        let tail = a
            .alloc_at(seg, 0x1000_0000 + 12288, 52 << 10, 52 << 10)
            .unwrap();
        a.check_invariants();
        for b in [mid, head, tail] {
            a.free(b.block, b.size);
            a.check_invariants();
        }
        assert_eq!(a.take_free_segments().len(), 1);
    }
}
