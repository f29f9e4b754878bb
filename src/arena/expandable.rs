//! The pages of expandable segments, as the arena books them.
//!
//! An expandable segment is address space with memory mapped into it in
//! mapping units: each growth ([`Arena::mark_mapped`]) is one unit, mapped
//! by one call (one physical handle on CUDA), and a unit is unmapped only
//! whole (CUDA cannot unmap part of a mapping). Its free blocks are either
//! mapped (memory behind every page they touch) or unmapped (page-aligned,
//! no memory at all), and free blocks of different states are never
//! merged. So `try_alloc`, searching mapped free blocks only, reuses
//! mapped-but-free memory first and never needs a mapping call; a miss asks
//! [`Arena::plan_growth`] for the cheapest pages to map, and a reclaim
//! unmaps idle units (whole units under no live block) found by
//! [`Arena::idle_runs`] (for the idle budget, none of the units it keeps:
//! [`Arena::mark_mapped`]). The arena only books: its owner makes the mapping
//! calls in between.

use super::{Arena, Block, Class, FreeIndex, FreeKey, Pages, Segment, StreamTag};
use slab::Slab;

/// Where to map pages so that a request fits: `len` bytes at `addr`, inside
/// the unmapped free block `slot`. Together with the mapped free blocks
/// beside it (`keep`, which a reclaim must leave alone), they hold the
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Growth {
    pub(crate) slot: u32,
    pub(crate) addr: u64,
    pub(crate) len: usize,
    pub(crate) keep: [Option<u32>; 2],
    pub(crate) stream: StreamTag,
    /// The unmapped block's bounds, for [`Growth::widen`].
    lo: u64,
    hi: u64,
    /// Whether the pages extend from a mapped block below (so widening
    /// goes up) rather than one above.
    upward: bool,
    page: usize,
    /// The segment's base, which unit bounds are counted from.
    base: u64,
    /// The peak allocated bytes once the request is served: what
    /// [`Arena::mark_mapped`] compares with a scar's.
    peak: usize,
}

impl Growth {
    /// Maps up to `extra` more bytes (whole pages) in the direction the
    /// growth goes, within the unmapped block: a larger granule, so the
    /// next misses nearby find memory already mapped.
    pub(crate) fn widen(&mut self, extra: usize) {
        let extra = (extra / self.page * self.page) as u64;
        if self.upward {
            let end = (self.addr + self.len as u64 + extra).min(self.hi);
            self.len = (end - self.addr) as usize;
        } else {
            let start = self.addr.saturating_sub(extra).max(self.lo);
            self.len += (self.addr - start) as usize;
            self.addr = start;
        }
    }

    /// The mapping units to map the growth in: one unit if it is at most
    /// `cap` bytes (a multiple of the page size); else its pages cut at
    /// every multiple of `cap` from the segment's base, so that no unit is
    /// larger than `cap`. (A growth of at most `cap` bytes is not cut where
    /// it crosses such a multiple: a unit costs one physical handle, about
    /// 40 µs on an H200 whatever its size, and cutting those crossings
    /// made gpt2_train's cold pass map 222 units instead of 191, at the same
    /// fragmentation on every trace.)
    pub(crate) fn units(&self, cap: usize) -> Vec<(u64, usize)> {
        let cap = cap.max(self.page) as u64;
        let end = self.addr + self.len as u64;
        if self.len as u64 <= cap {
            return vec![(self.addr, self.len)];
        }
        let mut out = Vec::new();
        let mut at = self.addr;
        while at < end {
            let off = at - self.base;
            let next = (off / cap + 1)
                .checked_mul(cap)
                .and_then(|n| self.base.checked_add(n))
                .map_or(end, |n| n.min(end));
            out.push((at, (next - at) as usize));
            at = next;
        }
        out
    }

    /// The part `[addr, addr + len)` of the growth, as a growth.
    pub(crate) fn part(&self, addr: u64, len: usize) -> Growth {
        Growth { addr, len, ..*self }
    }
}

/// Idle memory: whole mapping units lying end to end inside the mapped free
/// block `slot`, `[addr, addr + len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdleRun {
    pub(crate) slot: u32,
    pub(crate) addr: u64,
    pub(crate) len: usize,
    pub(crate) stream: StreamTag,
    /// The units' sizes, in address order (they sum to `len`).
    units: Vec<usize>,
}

impl IdleRun {
    /// The top units of the run that hold at least `bytes` (all of it if
    /// it holds less): what a reclaim takes, leaving the rest mapped.
    pub(crate) fn top(&self, bytes: usize) -> IdleRun {
        let mut len = 0;
        let mut taken = 0;
        for &unit in self.units.iter().rev() {
            if len >= bytes {
                break;
            }
            len += unit;
            taken += 1;
        }
        IdleRun {
            addr: self.addr + (self.len - len) as u64,
            len,
            units: self.units[self.units.len() - taken..].to_vec(),
            ..*self
        }
    }

    /// The whole units among the run's first `bytes` (what a failed unmap
    /// says went), as a run; its `len` is 0 if none.
    pub(crate) fn prefix(&self, bytes: usize) -> IdleRun {
        let mut len = 0;
        let mut taken = 0;
        for &unit in &self.units {
            if len + unit > bytes {
                break;
            }
            len += unit;
            taken += 1;
        }
        IdleRun {
            len,
            units: self.units[..taken].to_vec(),
            ..*self
        }
    }
}

/// A stale free block at least this many times a request is a loose fit
/// for it (see [`Arena::place`]).
const LOOSE_FIT: usize = 8;

impl Arena {
    /// Where a request of `rounded` bytes of `class` goes, given `best`, the
    /// best fit among the mapped free blocks: `best`, unless it is stale
    /// and a loose fit (at least [`LOOSE_FIT`] times the request); then
    /// the lowest-addressed free block that holds the request
    /// (address-ordered first fit).
    ///
    /// A repeating workload that frees everything it holds (a warm pass of
    /// a replayed trace, a program run again in one process) starts over
    /// in a cache whose mapped memory is all free: a few long runs between
    /// the holes the last pass's reclaims unmapped, marked stale when the
    /// segment's last live block went (`Arena::block_gone`). The cache
    /// that grew during the first pass placed its blocks bottom up (growth
    /// maps pages above what it holds); best fit would put the first
    /// blocks of the next pass into the shortest run that holds them,
    /// scattering the long-lived ones, so that a large block later found
    /// no mapped hole and memory was unmapped in one place to be mapped in
    /// another (gpt2_train: 15 maps and 6 unmaps in its first warm pass).
    /// First fit for loose fits in stale memory fills it bottom up, as the
    /// growing cache did; snug fits stay best fit. A cache that never
    /// empties a segment has no stale block, and places as before. (First
    /// fit for every loose fit, stale or not, also settled gpt2_train, but
    /// changed the first pass: resnet50_train's ratio rose from 1.0153 to
    /// 1.028 at 5 times, and the workload of `tests/expandable.rs` mapped
    /// again at 8.) From 6 to 8 times, every warm pass of our training
    /// traces and of that test makes no mapping call; at 4, that test maps
    /// in its first warm pass; at 12, vartrans_step does.
    pub(super) fn place(
        &self,
        index: &FreeIndex<FreeKey>,
        best: FreeKey,
        rounded: usize,
    ) -> FreeKey {
        if !self.blocks[best.slot as usize].stale || best.size / LOOSE_FIT < rounded {
            return best;
        }
        index
            .range(FreeKey::from(rounded)..=FreeKey::last())
            .min_by_key(|k| k.addr)
            .copied()
            .unwrap_or(best)
    }

    /// Counts one block of `segment` gone back to the free blocks; when the
    /// segment (expandable) holds none any more, marks its mapped free
    /// blocks stale (see [`Arena::place`]).
    pub(super) fn block_gone(&mut self, segment: u32) {
        let seg = &mut self.segments[segment as usize];
        seg.live -= 1;
        if seg.live > 0 || seg.pages.is_none() {
            return;
        }
        let mut slot = Some(seg.head);
        while let Some(at) = slot {
            let b = &mut self.blocks[at as usize];
            b.stale = b.mapped;
            slot = b.next;
        }
    }

    /// The free neighbour of `slot` (before or after) if it is mapped.
    fn mapped_free(&self, neighbour: Option<u32>) -> Option<(u32, usize)> {
        let n = neighbour?;
        let b = &self.blocks[n as usize];
        (!b.allocated && b.mapped).then_some((n, b.size))
    }

    /// The fewest pages to map in `stream`'s expandable segments of
    /// `rounded`'s class so that a block of `rounded` bytes fits, counting
    /// the mapped free blocks beside each unmapped one; ties go to the
    /// lowest address. `None` if no unmapped block can make room.
    pub(crate) fn plan_growth(&self, stream: StreamTag, rounded: usize) -> Option<Growth> {
        let class = Class::of(rounded);
        let mut best: Option<Growth> = None;
        let lane = &self.lanes[self.lane(stream)?];
        for &FreeKey { size, addr, slot } in &lane.unmapped[class as usize] {
            let b = &self.blocks[slot as usize];
            let seg = &self.segments[b.segment as usize];
            let page = seg
                .pages
                .as_ref()
                .expect("unmapped blocks are in expandable segments")
                .page;
            let below = self.mapped_free(b.prev);
            let above = self.mapped_free(b.next);
            let (l, r) = (below.map_or(0, |n| n.1), above.map_or(0, |n| n.1));
            let end = addr + size as u64;
            let need = |have: usize| {
                (rounded.saturating_sub(have))
                    .checked_next_multiple_of(page)
                    .unwrap_or(usize::MAX)
            };
            // Up from the block below (or from the start), down from the
            // block above, or the whole block between both.
            let options = [
                (need(l) <= size).then(|| (addr, need(l), true)),
                (above.is_some() && need(r) <= size)
                    .then(|| (end - need(r) as u64, need(r), false)),
                (l + size + r >= rounded).then_some((addr, size, true)),
            ];
            let Some((at, len, upward)) = options.into_iter().flatten().min_by_key(|o| o.1) else {
                continue;
            };
            if best.is_some_and(|g| (g.len, g.addr) <= (len, at)) {
                continue;
            }
            best = Some(Growth {
                slot,
                addr: at,
                len,
                keep: [below.map(|n| n.0), above.map(|n| n.0)],
                stream,
                lo: addr,
                hi: end,
                upward,
                page,
                base: seg.base,
                peak: (self.stats.peak_allocated_bytes)
                    .max(self.stats.allocated_bytes.saturating_add(rounded)),
            });
        }
        best
    }

    /// Books `growth`'s pages as mapped, in the mapping units `units`
    /// (which tile it): they join the mapped free blocks beside them, and
    /// count as reserved. A unit mapped over part of a range that a budget
    /// reclaim unmapped while the peak allocated bytes were what they are
    /// now, the request the growth is for included, is kept: a workload
    /// repeating under its peak needed that memory again, so
    /// [`Arena::idle_runs`] leaves it out of budget reclaims (a request
    /// raising the peak keeps nothing).
    pub(crate) fn mark_mapped(&mut self, growth: &Growth, units: &[(u64, usize)]) {
        let seg = self.blocks[growth.slot as usize].segment;
        self.book_pages(growth.slot, growth.addr, growth.len, true);
        let peak_now = growth.peak;
        let pages = pages_mut(&mut self.segments, seg);
        pages.units.extend(units.iter().copied());
        let end = growth.addr + growth.len as u64;
        let first = pages
            .scars
            .range(..growth.addr)
            .next_back()
            .filter(|(&at, &(len, _))| at + len as u64 > growth.addr)
            .map_or(growth.addr, |s| *s.0);
        let scars: Vec<(u64, (usize, usize))> = pages
            .scars
            .range(first..end)
            .map(|(&a, &s)| (a, s))
            .collect();
        for (addr, (len, peak)) in scars {
            // What the growth did not map stays a scar.
            let scar_end = addr + len as u64;
            pages.scars.remove(&addr);
            if addr < growth.addr {
                pages
                    .scars
                    .insert(addr, ((growth.addr - addr) as usize, peak));
            }
            if scar_end > end {
                pages.scars.insert(end, ((scar_end - end) as usize, peak));
            }
            if peak_now > peak {
                continue;
            }
            for &(start, len) in units {
                if start < scar_end && addr < start + len as u64 {
                    pages.kept.insert(start);
                }
            }
        }
    }

    /// Books an idle run (whole units) as unmapped: it becomes an unmapped
    /// free block; `scar`: a budget reclaim unmapped it (see
    /// [`Arena::mark_mapped`]).
    pub(crate) fn mark_unmapped(&mut self, run: &IdleRun, scar: bool) {
        if run.len == 0 {
            return;
        }
        let seg = self.blocks[run.slot as usize].segment;
        self.book_pages(run.slot, run.addr, run.len, false);
        if scar {
            let peak = self.stats.peak_allocated_bytes;
            pages_mut(&mut self.segments, seg)
                .scars
                .insert(run.addr, (run.len, peak));
        }
    }

    /// Gives `[addr, addr + len)` of the free block `slot` the mapped state
    /// `mapped`, in the blocks, the segment's mapped bytes and the stats.
    fn book_pages(&mut self, slot: u32, addr: u64, len: usize, mapped: bool) {
        let seg = self.blocks[slot as usize].segment;
        self.set_state(slot, addr, len, mapped);
        let pages = pages_mut(&mut self.segments, seg);
        if mapped {
            pages.mapped += len;
            self.stats.on_map(len);
        } else {
            pages.mapped -= len;
            let end = addr + len as u64;
            let gone: Vec<u64> = pages.units.range(addr..end).map(|u| *u.0).collect();
            for start in gone {
                pages.units.remove(&start);
                pages.kept.remove(&start);
            }
            self.stats.on_unmap(len);
        }
    }

    /// Cuts `[addr, addr + len)` out of the free block `slot` (which holds
    /// it) and gives it the mapped state `mapped`, merging it with free
    /// neighbours of that state.
    fn set_state(&mut self, slot: u32, addr: u64, len: usize, mapped: bool) {
        self.index_remove(slot);
        let mut mid = slot;
        if self.blocks[slot as usize].addr < addr {
            mid = self.split_free(slot, addr);
            self.index_insert(slot);
        }
        let b = &self.blocks[mid as usize];
        if addr + (len as u64) < b.addr + b.size as u64 {
            let rest = self.split_free(mid, addr + len as u64);
            self.index_insert(rest);
        }
        // Pages mapped or unmapped now hold no memory any work used.
        let b = &mut self.blocks[mid as usize];
        b.mapped = mapped;
        b.freed = 0;
        b.stale = false;
        self.merge_and_index(mid);
    }

    /// Splits the unindexed block `slot` (free, or being carved) at `at`;
    /// returns the new block above: free, unindexed, in the same mapped
    /// state.
    #[inline(always)]
    pub(super) fn split_free(&mut self, slot: u32, at: u64) -> u32 {
        let (addr, size, segment, mapped, freed, stale, next) = {
            let b = &self.blocks[slot as usize];
            (
                b.addr, b.size, b.segment, b.mapped, b.freed, b.stale, b.next,
            )
        };
        let rest = self.blocks.insert(Block {
            addr: at,
            size: size - (at - addr) as usize,
            segment,
            allocated: false,
            mapped,
            freed,
            stale,
            prev: Some(slot),
            next,
        }) as u32;
        if let Some(n) = next {
            self.blocks[n as usize].prev = Some(rest);
        }
        let b = &mut self.blocks[slot as usize];
        b.size = (at - addr) as usize;
        b.next = Some(rest);
        rest
    }

    /// The tick of the latest free in the free block `slot` (see
    /// `device/fences.rs`).
    pub(crate) fn freed_tick(&self, slot: u32) -> u64 {
        self.blocks[slot as usize].freed
    }

    /// The idle memory of the expandable segments: in each mapped free
    /// block (quick-bin blocks merged back first) not in `keep`, the whole
    /// mapping units inside it (with `skip_kept`, none that
    /// [`Arena::mark_mapped`] kept), highest addresses first.
    pub(crate) fn idle_runs(&mut self, keep: &[Option<u32>], skip_kept: bool) -> Vec<IdleRun> {
        if self.quick_blocks > 0 {
            self.flush_quick();
        }
        let mut out = Vec::new();
        let free = self
            .lanes
            .iter()
            .flat_map(|lane| lane.free.iter().flatten().map(|k| (lane.stream, k)));
        for (stream, &FreeKey { size, addr, slot }) in free {
            let seg = &self.segments[self.blocks[slot as usize].segment as usize];
            let Some(pages) = &seg.pages else { continue };
            if keep.contains(&Some(slot)) {
                continue;
            }
            // The units starting in the block and ending in it lie end to
            // end (the block is mapped all through, and units tile what is
            // mapped).
            let end = addr + size as u64;
            let units: Vec<(u64, usize)> = pages
                .units
                .range(addr..end)
                .map(|(&start, &len)| (start, len))
                .take_while(|&(start, len)| start + len as u64 <= end)
                .collect();
            let kept = |u: &(u64, usize)| skip_kept && pages.kept.contains(&u.0);
            for units in units.split(kept) {
                if let Some(&(first, _)) = units.first() {
                    out.push(IdleRun {
                        slot,
                        addr: first,
                        len: units.iter().map(|u| u.1).sum(),
                        stream,
                        units: units.iter().map(|u| u.1).collect(),
                    });
                }
            }
        }
        // Highest first, next to where ranges grow: the holes a reclaim
        // leaves are where the next growth maps again (it maps the fewest
        // pages, counting the mapped free blocks beside a hole), and what
        // lies below stays in long mapped runs. (Lowest first left holes
        // that the first warm pass of gpt2_generate filled by trading
        // pages with the small range, raising its ratio to 1.053;
        // vartrans_step's first pass reached 1.0298, 1.0267 now.)
        out.sort_by_key(|r| std::cmp::Reverse(r.addr));
        out
    }

    /// Checks `seg`'s count of live blocks, and that only mapped free blocks
    /// are stale. For tests.
    #[cfg(test)]
    pub(super) fn check_live(&self, seg: &super::Segment) {
        let mut live = 0;
        let mut slot = Some(seg.head);
        while let Some(s) = slot {
            let b = &self.blocks[s as usize];
            live += usize::from(b.allocated);
            assert!(
                !b.stale || (b.mapped && !b.allocated),
                "stale: mapped, free"
            );
            slot = b.next;
        }
        assert_eq!(live, seg.live, "live blocks");
    }

    /// Checks that the mapping units of the segment whose first block is
    /// `head` tile its mapped runs exactly. For tests.
    #[cfg(test)]
    pub(super) fn check_units(&self, head: u32, pages: &super::Pages) {
        let mut covered = 0;
        for (addr, len) in self.mapped_runs(head) {
            let units = crate::backend::whole_units(&pages.units, |&n| n, addr, addr + len as u64);
            assert!(units.is_ok(), "units tile the mapped run {addr:#x}+{len}");
            covered += len;
        }
        let total: usize = pages.units.values().sum();
        assert_eq!((covered, total), (pages.mapped, pages.mapped), "units");
        // Kept units are units; scars lie in unmapped space, one apart.
        assert!(
            pages.kept.iter().all(|u| pages.units.contains_key(u)),
            "kept"
        );
        let runs = self.mapped_runs(head);
        let mut last_end = 0;
        for (&at, &(len, _)) in &pages.scars {
            let end = at + len as u64;
            assert!(len > 0 && at >= last_end, "scars apart: {at:#x}+{len}");
            let mapped = runs.iter().any(|&(a, l)| a < end && at < a + l as u64);
            assert!(!mapped, "scar {at:#x}+{len} unmapped");
            last_end = end;
        }
    }

    /// The mapped runs of the segment whose first block is `head`, in
    /// address order: everything but its unmapped free blocks.
    pub(super) fn mapped_runs(&self, head: u32) -> Vec<(u64, usize)> {
        let mut out: Vec<(u64, usize)> = Vec::new();
        let mut slot = Some(head);
        while let Some(s) = slot {
            let b = &self.blocks[s as usize];
            if b.mapped {
                match out.last_mut() {
                    Some(run) if run.0 + run.1 as u64 == b.addr => run.1 += b.size,
                    _ => out.push((b.addr, b.size)),
                }
            }
            slot = b.next;
        }
        out
    }
}

/// The page books of expandable segment `segment` (a plain segment has
/// none: a caller reaching here for one is a bug). Borrows only the
/// segments, so the arena's other fields stay usable beside it.
fn pages_mut(segments: &mut Slab<Segment>, segment: u32) -> &mut Pages {
    segments[segment as usize]
        .pages
        .as_mut()
        .expect("expandable")
}

#[cfg(test)]
mod tests {
    use super::super::{Arena, Class};

    const MIB: usize = 1 << 20;
    const PAGE: usize = 2 * MIB;

    /// Maps room for `size` bytes, in one unit, and carves it.
    fn grow_and_alloc(a: &mut Arena, size: usize) -> super::super::Carved {
        let g = a.plan_growth(0, size).unwrap();
        a.mark_mapped(&g, &g.units(usize::MAX));
        a.try_alloc(0, size, 1).unwrap()
    }

    fn arena() -> Arena {
        let mut a = Arena::new();
        a.add_expandable_segment(0x4000_0000, 64 * PAGE, 0, Class::Large, PAGE);
        a.check_invariants();
        a
    }

    /// A growth no larger than the cap is one unit even where it crosses a
    /// multiple of the cap; a larger one is cut at those multiples.
    #[test]
    fn units_cut_only_growths_larger_than_the_cap() {
        let mut a = arena();
        let first = grow_and_alloc(&mut a, 3 * PAGE);
        assert_eq!(first.block.addr(), 0x4000_0000);
        // 8 pages above the 3 mapped ones: across the 8-page multiple.
        let g = a.plan_growth(0, 8 * PAGE).unwrap();
        assert_eq!((g.addr, g.len), (0x4000_0000 + 3 * PAGE as u64, 8 * PAGE));
        assert_eq!(g.units(8 * PAGE), vec![(g.addr, 8 * PAGE)], "one unit");
        assert_eq!(
            g.units(4 * PAGE),
            vec![
                (g.addr, PAGE),
                (g.addr + PAGE as u64, 4 * PAGE),
                (g.addr + 5 * PAGE as u64, 3 * PAGE)
            ],
            "cut at every 4 pages from the base"
        );
    }

    #[test]
    fn growth_maps_the_fewest_pages_next_to_mapped_free_memory() {
        let mut a = arena();
        assert!(a.try_alloc(0, 3 * MIB, 1).is_none(), "nothing mapped yet");
        let g = a.plan_growth(0, 3 * MIB).unwrap();
        assert_eq!((g.addr, g.len), (0x4000_0000, 2 * PAGE));
        a.mark_mapped(&g, &g.units(usize::MAX));
        a.check_invariants();
        let x = a.try_alloc(0, 3 * MIB, 1).unwrap();
        assert_eq!(x.block.addr(), 0x4000_0000);
        // x took both pages (a 1 MiB remainder is not split off a large
        // block, PyTorch's rule), so 5 MiB more needs 3 pages right above.
        let y_plan = a.plan_growth(0, 5 * MIB).unwrap();
        assert_eq!(
            (y_plan.addr, y_plan.len),
            (0x4000_0000 + 4 * MIB as u64, 3 * PAGE)
        );
        a.mark_mapped(&y_plan, &y_plan.units(usize::MAX));
        let y = a.try_alloc(0, 5 * MIB, 1).unwrap();
        assert_eq!(y.block.addr(), 0x4000_0000 + 4 * MIB as u64);
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 5 * PAGE);
        // A hole below a live block with mapped free memory above it.
        a.free(x.block, 1);
        let z = a.plan_growth(0, 40 * MIB).unwrap();
        assert_eq!(
            z.addr,
            0x4000_0000 + 10 * MIB as u64,
            "above y, the range's top"
        );
    }

    #[test]
    fn idle_units_unmap_and_map_again_with_exact_books() {
        let mut a = arena();
        // Two mapping units, one per block.
        let x = grow_and_alloc(&mut a, 12 * MIB);
        let y = grow_and_alloc(&mut a, 12 * MIB);
        a.check_invariants();
        a.free(x.block, 1);
        a.check_invariants();
        let runs = a.idle_runs(&[], false);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].addr, runs[0].len), (x.block.addr(), 12 * MIB));
        a.mark_unmapped(&runs[0], false);
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 12 * MIB);
        assert!(
            a.try_alloc(0, 12 * MIB, 1).is_none(),
            "x's hole is unmapped"
        );
        // The hole is the cheapest place: mapped again there.
        let again = a.plan_growth(0, 12 * MIB).unwrap();
        assert_eq!((again.addr, again.len), (x.block.addr(), 12 * MIB));
        a.mark_mapped(&again, &again.units(usize::MAX));
        a.check_invariants();
        assert_eq!(a.try_alloc(0, 12 * MIB, 1).unwrap().block, x.block);
        a.free(y.block, 1);
        a.free(x.block, 1);
        let all = a.idle_runs(&[], false);
        for run in &all {
            a.mark_unmapped(run, false);
        }
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 0);
        assert_eq!(
            a.take_free_segments().len(),
            1,
            "the range goes once unmapped"
        );
    }

    /// Once a segment holds no live block, its mapped free memory is stale:
    /// a request that fits a stale block only loosely goes to the lowest
    /// address that holds it (as the growing cache placed blocks), a snug
    /// one stays best fit; before, best fit throughout.
    #[test]
    fn an_emptied_segment_is_filled_bottom_up() {
        let mut a = arena();
        let base = 0x4000_0000u64;
        let [x, y, z, w] = [40, 8, 16, 2].map(|mib| grow_and_alloc(&mut a, mib * MIB));
        assert_eq!(w.block.addr(), base + 64 * MIB as u64);
        a.free(y.block, 1);
        let hole = a.idle_runs(&[], false);
        assert_eq!((hole.len(), hole[0].addr), (1, y.block.addr()));
        a.mark_unmapped(&hole[0], false);
        a.free(x.block, 1);
        a.free(z.block, 1);
        a.check_invariants();
        // Runs of 40 and 16 MiB, w still live: best fit.
        let t = a.try_alloc(0, 2 * MIB, 1).unwrap();
        assert_eq!(t.block.addr(), z.block.addr(), "the 16 MiB run");
        a.free(t.block, 1);
        // w goes: the segment is empty, its runs of 40 and 18 MiB stale.
        a.free(w.block, 1);
        a.check_invariants();
        let t = a.try_alloc(0, 2 * MIB, 1).unwrap();
        assert_eq!(t.block.addr(), base, "loose: the lowest address");
        let u = a.try_alloc(0, 16 * MIB, 1).unwrap();
        assert_eq!(u.block.addr(), z.block.addr(), "snug: best fit");
        a.check_invariants();
        // Freed memory is not stale: it merges into a block that is not.
        a.free(t.block, 1);
        a.check_invariants();
        let k = a.lanes[0].free[1].iter().find(|k| k.addr == base).unwrap();
        let (size, slot) = (k.size, k.slot);
        assert_eq!((size, a.blocks[slot as usize].stale), (40 * MIB, false));
    }

    /// A unit mapped over part of a range that a budget reclaim unmapped is
    /// kept from budget reclaims if the peak allocated bytes are still what
    /// they were then; the rest of the range stays a scar; a unit mapped
    /// over it after a new peak is not kept.
    #[test]
    fn units_mapped_again_at_one_peak_are_kept() {
        let mut a = arena();
        let _x = grow_and_alloc(&mut a, 8 * MIB);
        let y = grow_and_alloc(&mut a, 8 * MIB);
        a.free(y.block, 1);
        let runs = a.idle_runs(&[], true);
        assert_eq!((runs.len(), runs[0].addr), (1, y.block.addr()));
        a.mark_unmapped(&runs[0], true);
        // The lower half of y's pages again, at the same peak: kept.
        let g = a.plan_growth(0, 4 * MIB).unwrap();
        assert_eq!((g.addr, g.len), (y.block.addr(), 4 * MIB));
        a.mark_mapped(&g, &g.units(usize::MAX));
        a.check_invariants();
        assert!(a.idle_runs(&[], true).is_empty(), "kept");
        assert_eq!(a.idle_runs(&[], false).len(), 1);
        // The upper half after a new peak: not kept.
        a.stats.peak_allocated_bytes += MIB;
        let g = a.plan_growth(0, 8 * MIB).unwrap();
        assert_eq!((g.addr, g.len), (y.block.addr() + 4 * MIB as u64, 4 * MIB));
        a.mark_mapped(&g, &g.units(usize::MAX));
        let runs = a.idle_runs(&[], true);
        assert_eq!(
            (runs.len(), runs[0].addr, runs[0].len),
            (1, g.addr, 4 * MIB)
        );
        // Real pressure takes both; nothing stays kept or scarred.
        for run in a.idle_runs(&[], false) {
            a.mark_unmapped(&run, false);
        }
        a.check_invariants();
        let pages = a.segments[0].pages.as_ref().unwrap();
        assert!(pages.kept.is_empty() && pages.scars.is_empty());
    }

    /// A kept unit between idle units of one free block splits its idle
    /// memory into two runs of the same block; a budget reclaim unmaps
    /// both (the upper first), a failed unmap only part of one, with the
    /// books (kept units, scars) exact after each step.
    #[test]
    fn a_kept_unit_inside_a_free_block_splits_its_idle_runs() {
        let mut a = arena();
        let [x, y, z] = [8, 8, 8].map(|mib| grow_and_alloc(&mut a, mib * MIB));
        let _top = grow_and_alloc(&mut a, 2 * MIB);
        a.free(y.block, 1);
        let runs = a.idle_runs(&[], true);
        a.mark_unmapped(&runs[0], true);
        assert_eq!(grow_and_alloc(&mut a, 8 * MIB).block, y.block);
        a.check_invariants();
        for c in [x, y, z] {
            a.free(c.block, 1);
        }
        let runs = a.idle_runs(&[], true);
        let at: Vec<_> = runs.iter().map(|r| (r.slot, r.addr, r.len)).collect();
        let slot = runs[0].slot;
        assert_eq!(
            at,
            [
                (slot, z.block.addr(), 8 * MIB),
                (slot, x.block.addr(), 8 * MIB)
            ]
        );
        a.mark_unmapped(&runs[0], true);
        a.check_invariants();
        // The lower run's unmap fails before its unit went: nothing went.
        a.mark_unmapped(&runs[1].prefix(4 * MIB), true);
        a.mark_unmapped(&runs[1], true);
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 8 * MIB + 2 * MIB);
        // Both scars mapped again at the same peak: kept, with the middle.
        let again = [
            a.try_alloc(0, 8 * MIB, 1).unwrap(),
            grow_and_alloc(&mut a, 8 * MIB),
            grow_and_alloc(&mut a, 8 * MIB),
        ];
        a.check_invariants();
        for c in again {
            a.free(c.block, 1);
        }
        let pages = a.segments[0].pages.as_ref().unwrap();
        assert_eq!((pages.kept.len(), pages.scars.len()), (3, 0));
        assert!(a.idle_runs(&[], true).is_empty());
        for run in a.idle_runs(&[], false) {
            a.mark_unmapped(&run, false);
        }
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 2 * MIB);
    }

    #[test]
    fn only_whole_units_are_idle() {
        let mut a = arena();
        // One unit of 24 MiB under two blocks: freeing one leaves no whole
        // unit idle (CUDA cannot unmap part of a mapping).
        let x = grow_and_alloc(&mut a, 24 * MIB);
        a.free(x.block, 1);
        let x = a.try_alloc(0, 12 * MIB, 1).unwrap();
        let y = a.try_alloc(0, 12 * MIB, 1).unwrap();
        a.free(x.block, 1);
        assert!(
            a.idle_runs(&[], false).is_empty(),
            "half a unit is not idle"
        );
        // Three more units above, all idle once y goes: one run of four,
        // of which a reclaim of 5 MiB takes the top two (4 + 2 MiB).
        for len in [8 * MIB, 2 * MIB, 4 * MIB] {
            let g = a.plan_growth(0, 36 * MIB).unwrap();
            let mut g = g;
            g.len = len;
            g.addr = 0x4000_0000 + a.stats.reserved_bytes as u64;
            a.mark_mapped(&g, &g.units(usize::MAX));
            a.check_invariants();
        }
        a.free(y.block, 1);
        let runs = a.idle_runs(&[], false);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].addr, runs[0].len), (0x4000_0000, 38 * MIB));
        let top = runs[0].top(5 * MIB);
        assert_eq!(
            (top.addr, top.len),
            (0x4000_0000 + 32 * MIB as u64, 6 * MIB)
        );
        // A failure after the first unit (2 MiB) of the top: that unit went.
        let part = top.prefix(3 * MIB);
        assert_eq!((part.addr, part.len), (top.addr, 2 * MIB));
        a.mark_unmapped(&part, false);
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 36 * MIB);
        let rest = a.idle_runs(&[], false);
        assert_eq!(
            rest.iter().map(|r| r.len).collect::<Vec<_>>(),
            [4 * MIB, 32 * MIB],
            "highest first"
        );
        for run in &rest {
            a.mark_unmapped(run, false);
        }
        a.check_invariants();
        assert_eq!(a.stats.reserved_bytes, 0);
    }
}
