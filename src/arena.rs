//! The block arena: segments of device memory cut into blocks.
//!
//! One mechanism serves both the caching allocator and every graph pool; they
//! differ only in policy (when segments are reserved and released). An arena
//! never talks to a device: its owner reserves a segment, hands it over with
//! [`Arena::add_segment`], and takes back fully free segments with
//! [`Arena::take_free_segments`].
//!
//! Invariants, kept by every method:
//! - The blocks of a segment tile it exactly, in address order, linked by
//!   `prev`/`next`; the lowest block of a segment (its `head`) is never
//!   removed, only grown by merging.
//! - No two neighbouring blocks of a segment are both free (free neighbours
//!   are merged at once).
//! - A block is in the free index of its segment's stream (its lane) iff it
//!   is free; the index is ordered by (size, address), so the first entry
//!   at or above `size` is the best fit, lowest address first.
//! - `stats` equal the sums over the arena's blocks and segments.
//!
//! Freed small blocks (of small segments, at most [`SMALL_REQUEST_MAX`]) first
//! go to a quick bin for their exact (stream, size), from which a request of
//! that size takes them back lowest address first, as best fit would (so
//! placement does not depend on the order of frees), without touching the
//! free index (training loops ask for the same sizes again and again). A
//! request that finds no exact fit there first merges the quick blocks back
//! into the index, so the best-fit search sees every free byte coalesced.
//! Large blocks, where placement decides fragmentation, always go through
//! best fit.

mod books;
mod expandable;
mod index;
#[cfg(test)]
mod invariants;

pub(crate) use books::Books;
pub(crate) use expandable::{Growth, IdleRun};

mod place;
mod slots;
mod walk;

pub(crate) use walk::{WalkState, WalkedSegment};

use crate::stats::PoolStats;
use index::{FreeIndex, FreeKey};
use rustc_hash::FxHashMap;
use slab::Slab;
use slots::Blocks;

/// Blocks a quick bin holds at most; more are merged into the free index.
const QUICK_BIN_CAPACITY: usize = 64;

/// Every block size is a multiple of this, and every block address too.
pub const BLOCK_ROUND: usize = 512;
/// Requests up to this size are served from small segments.
pub const SMALL_REQUEST_MAX: usize = 1 << 20;
/// The size of a small segment.
pub const SMALL_SEGMENT: usize = 2 << 20;
/// Large requests below this size get a [`LARGE_SEGMENT`] of their own.
pub const LARGE_SEGMENT_THRESHOLD: usize = 10 << 20;
/// The segment size for large requests below [`LARGE_SEGMENT_THRESHOLD`].
pub const LARGE_SEGMENT: usize = 20 << 20;
/// Larger requests get a segment of their size rounded up to this.
pub const LARGE_SEGMENT_ROUND: usize = 2 << 20;

/// A stream handle as the arena sees it: an opaque tag. Blocks are reused
/// only by requests on the stream of their segment.
pub type StreamTag = u64;

/// The size class of a request or segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Small = 0,
    Large = 1,
}

impl Class {
    pub(crate) fn of(rounded: usize) -> Class {
        if rounded <= SMALL_REQUEST_MAX {
            Class::Small
        } else {
            Class::Large
        }
    }

    /// Whether `remaining` bytes left after carving a block are worth a block
    /// of their own (PyTorch's rule: any remainder in small segments, more
    /// than [`SMALL_REQUEST_MAX`] in large ones).
    fn should_split(self, remaining: usize) -> bool {
        match self {
            Class::Small => remaining >= BLOCK_ROUND,
            Class::Large => remaining > SMALL_REQUEST_MAX,
        }
    }
}

/// `size` rounded up to [`BLOCK_ROUND`], or `None` on overflow.
pub(crate) fn round_size(size: usize) -> Option<usize> {
    Some(size.checked_add(BLOCK_ROUND - 1)? & !(BLOCK_ROUND - 1))
}

/// `size` rounded up to [`BLOCK_ROUND`], unchecked: for a size of at most
/// [`SMALL_REQUEST_MAX`] (the hot path's requests), which cannot overflow.
#[inline(always)]
pub(crate) fn round_small(size: usize) -> usize {
    debug_assert!(size <= SMALL_REQUEST_MAX, "round_small({size})");
    (size + BLOCK_ROUND - 1) & !(BLOCK_ROUND - 1)
}

/// The size of the segment to reserve for a `rounded` request that no
/// cached block can serve, or `None` on overflow.
pub(crate) fn segment_size(rounded: usize) -> Option<usize> {
    match Class::of(rounded) {
        Class::Small => Some(SMALL_SEGMENT),
        Class::Large if rounded < LARGE_SEGMENT_THRESHOLD => Some(LARGE_SEGMENT),
        Class::Large => {
            Some(rounded.checked_add(LARGE_SEGMENT_ROUND - 1)? & !(LARGE_SEGMENT_ROUND - 1))
        }
    }
}

/// The smallest segment that serves a `rounded` request, or `None` on
/// overflow.
pub(crate) fn tight_segment_size(rounded: usize) -> Option<usize> {
    match Class::of(rounded) {
        Class::Small => Some(SMALL_SEGMENT),
        Class::Large => rounded.checked_next_multiple_of(LARGE_SEGMENT_ROUND),
    }
}

/// A handle to a live block: its slot and its address (checked on free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRef {
    slot: u32,
    addr: u64,
}

impl BlockRef {
    pub(crate) fn addr(self) -> u64 {
        self.addr
    }
}

/// What an allocation got.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Carved {
    pub(crate) block: BlockRef,
    /// The block's size (at least the rounded request).
    pub(crate) size: usize,
}

/// A segment taken out of the arena, to be released to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FreedSegment {
    pub(crate) base: u64,
    pub(crate) size: usize,
    /// For an expandable segment: the mapped runs to unmap before its
    /// address range is released. `None` for a plain segment.
    pub(crate) mapped: Option<Vec<(u64, usize)>>,
    /// The stream whose work may still use its memory.
    pub(crate) stream: StreamTag,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    addr: u64,
    size: usize,
    segment: u32,
    allocated: bool,
    /// Whether memory backs the block: always for live blocks and for
    /// blocks of plain segments; a free block of an expandable segment may
    /// be unmapped (then it starts and ends on page boundaries).
    mapped: bool,
    /// For a free block: the tick of its latest free (merged blocks: the
    /// highest; memory never used: 0), which says when it may be unmapped
    /// (`device/fences.rs`).
    freed: u64,
    /// For a mapped free block of an expandable segment: untouched since
    /// its segment last held no live block (`Arena::place`).
    stale: bool,
    prev: Option<u32>,
    next: Option<u32>,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    size: usize,
    stream: StreamTag,
    /// The lane of `stream` in `Arena::lanes`.
    lane: u32,
    class: Class,
    head: u32,
    /// Its blocks marked allocated (quick-binned and deferred ones too).
    live: usize,
    /// For an expandable segment (address space reserved, memory mapped in
    /// pages on demand): its page size and mapped bytes. `None` for a plain
    /// segment, all of which is memory.
    pages: Option<Pages>,
}

/// The pages of an expandable segment. Every page is mapped except those
/// under its unmapped free blocks; the mapped pages are tiled by mapping
/// units (what one map call mapped, unmapped only whole).
#[derive(Debug)]
struct Pages {
    page: usize,
    mapped: usize,
    /// Mapping units: start → size.
    units: std::collections::BTreeMap<u64, usize>,
    /// Ranges a budget reclaim unmapped that no growth has mapped since:
    /// start → (size, the peak allocated bytes when they went).
    scars: std::collections::BTreeMap<u64, (usize, usize)>,
    /// The starts of the units mapped over part of such a range at the
    /// same peak, which budget reclaims keep (see `Arena::mark_mapped`).
    kept: std::collections::BTreeSet<u64>,
}

/// A freed block that may not be reused yet (see [`Arena::defer_free`]).
#[derive(Debug)]
pub(crate) struct Deferred {
    pub(crate) block: BlockRef,
    /// Events recorded on the streams that used the block; it is reusable
    /// once all have completed.
    pub(crate) events: Vec<u64>,
    /// Streams that used the block but were being captured at free time: an
    /// event is recorded on each once its capture has ended.
    pub(crate) unrecorded: Vec<StreamTag>,
}

/// Freed blocks of one (stream, size), taken back lowest address first.
#[derive(Debug, Default)]
struct QuickBin {
    /// (address, slot), ordered by address from highest to lowest.
    slots: Vec<(u64, u32)>,
    /// Whether the bin is in `Arena::quick_listed`.
    listed: bool,
}

/// The free blocks of one stream's segments. (Blocks are reused only on
/// the stream of their segment: one index per stream, so that no search
/// compares streams.)
#[derive(Debug, Default)]
struct Lane {
    stream: StreamTag,
    /// Free blocks with memory behind them, per class: what `try_alloc` searches.
    free: [FreeIndex<FreeKey>; 2],
    /// Unmapped free blocks of expandable segments, per class.
    unmapped: [FreeIndex<FreeKey>; 2],
}

/// Segments cut into blocks; see the module docs for its invariants.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    blocks: Blocks,
    segments: Slab<Segment>,
    /// The free blocks, per stream (lanes are never removed but with every
    /// segment: an arena serves few streams).
    lanes: Vec<Lane>,
    /// Freed blocks waiting for stream work; still "allocated" inside the
    /// arena (so never handed out or merged), no longer in the stats' live figures.
    pub(crate) deferred: Vec<Deferred>,
    /// (stream, block size) → freed small blocks of exactly that size;
    /// "allocated" inside the arena like deferred blocks.
    quick: FxHashMap<(StreamTag, usize), QuickBin>,
    /// The bins that got a block since the last flush (each listed once).
    quick_listed: Vec<(StreamTag, usize)>,
    /// Blocks in the quick bins.
    quick_blocks: usize,
    pub(crate) stats: PoolStats,
    /// The tick free blocks are stamped with, and the fences recorded on
    /// the streams of its expandable segments.
    pub(crate) fences: crate::device::Fences,
}

/// What `free` of an address tells about it, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressKind {
    /// Not inside any segment of this arena.
    Outside,
    /// The start of a free block.
    FreeBlockStart,
    /// Inside a block (live or free) that starts at the given address.
    Inside { block: u64, allocated: bool },
    /// The start of a live block.
    LiveBlockStart,
}

impl Arena {
    pub(crate) fn new() -> Self {
        Arena::default()
    }

    fn key(&self, slot: u32) -> FreeKey {
        FreeKey::of(slot, &self.blocks[slot as usize])
    }

    /// The lane of `stream`, if it has one.
    #[inline]
    fn lane(&self, stream: StreamTag) -> Option<usize> {
        self.lanes.iter().position(|l| l.stream == stream)
    }

    /// The index a free block belongs in: its segment's lane, mapped or
    /// unmapped, by class.
    fn index_of(&mut self, slot: u32) -> &mut FreeIndex<FreeKey> {
        let b = &self.blocks[slot as usize];
        let seg = &self.segments[b.segment as usize];
        let lane = &mut self.lanes[seg.lane as usize];
        let class = seg.class as usize;
        if b.mapped {
            &mut lane.free[class]
        } else {
            &mut lane.unmapped[class]
        }
    }

    fn index_insert(&mut self, slot: u32) {
        let key = self.key(slot);
        self.index_of(slot).insert(key);
    }

    fn index_remove(&mut self, slot: u32) {
        let key = self.key(slot);
        let removed = self.index_of(slot).remove(&key);
        debug_assert!(removed, "free block missing from the index");
    }

    /// Carves a block of `rounded` bytes for `stream` out of the best-fitting
    /// free block, or returns `None` if no free block is large enough.
    #[inline]
    pub(crate) fn try_alloc(
        &mut self,
        stream: StreamTag,
        rounded: usize,
        requested: usize,
    ) -> Option<Carved> {
        if let Some((_, slot)) = self
            .quick
            .get_mut(&(stream, rounded))
            .and_then(|bin| bin.slots.pop())
        {
            self.quick_blocks -= 1;
            let b = &self.blocks[slot as usize];
            let carved = Carved {
                block: BlockRef { slot, addr: b.addr },
                size: b.size,
            };
            self.stats.on_alloc(carved.size, requested);
            return Some(carved);
        }
        self.best_fit(stream, rounded, requested)
    }

    /// [`Arena::try_alloc`] past the quick bins.
    #[inline(never)]
    fn best_fit(&mut self, stream: StreamTag, rounded: usize, requested: usize) -> Option<Carved> {
        // No exact fit in a quick bin: merge the quick bins back, so the
        // search sees every free byte, coalesced, as plain best fit would.
        if self.quick_blocks > 0 {
            self.flush_quick();
        }
        let class = Class::of(rounded);
        // The first key at or above `rounded` in the stream's lane is the
        // best fit.
        let lane = self.lane(stream)?;
        let index = &self.lanes[lane].free[class as usize];
        let (best, at) = index.first_from(&FreeKey::from(rounded))?;
        let found = self.place(index, best, rounded);
        let at = (found.slot == best.slot).then_some(at);
        let slot = found.slot;
        let remaining = found.size - rounded;
        if class.should_split(remaining) {
            // What is left takes the found block's place in the same index
            // (same stream, class and mapped state).
            let at_addr = found.addr + rounded as u64;
            let rest = self.split_free(slot, at_addr);
            let rest_key = FreeKey {
                size: remaining,
                addr: at_addr,
                slot: rest,
            };
            self.lanes[lane].free[class as usize].replace(&found, at, rest_key);
        } else {
            let removed = self.lanes[lane].free[class as usize].remove_at(&found, at);
            debug_assert!(removed, "best fit missing from the index");
        }
        let b = &mut self.blocks[slot as usize];
        (b.allocated, b.stale) = (true, false);
        self.segments[b.segment as usize].live += 1;
        let carved = Carved {
            block: BlockRef { slot, addr: b.addr },
            size: b.size,
        };
        self.stats.on_alloc(carved.size, requested);
        Some(carved)
    }

    /// Adds a fresh segment `[base, base + size)` tagged with `stream`, as one
    /// free block. `size` must come from [`segment_size`] (so its class is right).
    pub(crate) fn add_segment(
        &mut self,
        base: u64,
        size: usize,
        stream: StreamTag,
        class: Class,
    ) -> u32 {
        let id = self.insert_segment(base, size, stream, class, None);
        self.stats.on_reserve(size);
        id
    }

    /// Adds an expandable segment: `size` bytes of address space at `base`
    /// (page-aligned, a multiple of `page`) with no memory yet: one
    /// unmapped free block, mapped later as blocks need it
    /// ([`Arena::plan_growth`]). Only mapped pages count as reserved.
    pub(crate) fn add_expandable_segment(
        &mut self,
        base: u64,
        size: usize,
        stream: StreamTag,
        class: Class,
        page: usize,
    ) -> u32 {
        let pages = Pages {
            page,
            mapped: 0,
            units: Default::default(),
            scars: Default::default(),
            kept: Default::default(),
        };
        let id = self.insert_segment(base, size, stream, class, Some(pages));
        self.stats.on_reserve(0);
        id
    }

    /// Takes out an expandable segment just added by
    /// [`Arena::add_expandable_segment`] if nothing was ever mapped in it
    /// (one unmapped free block), undoing its count, and returns its range
    /// for release.
    pub(crate) fn remove_fresh_segment(&mut self, id: u32) -> Option<FreedSegment> {
        let seg = self.segments.get(id as usize)?;
        let head = &self.blocks[seg.head as usize];
        if seg.pages.as_ref()?.mapped != 0 || head.allocated || head.size != seg.size {
            return None;
        }
        let head = seg.head;
        self.index_remove(head);
        self.blocks.remove(head as usize);
        let seg = self.segments.remove(id as usize);
        self.stats.on_reserve_undone();
        Some(FreedSegment {
            base: seg.base,
            size: seg.size,
            mapped: Some(Vec::new()),
            stream: seg.stream,
        })
    }

    /// Adds a segment as one free block; returns its slot.
    fn insert_segment(
        &mut self,
        base: u64,
        size: usize,
        stream: StreamTag,
        class: Class,
        pages: Option<Pages>,
    ) -> u32 {
        let segment = self.segments.vacant_key() as u32;
        let lane = self.lane(stream).unwrap_or_else(|| {
            self.lanes.push(Lane {
                stream,
                ..Lane::default()
            });
            self.lanes.len() - 1
        }) as u32;
        let head = self.blocks.insert(Block {
            addr: base,
            size,
            segment,
            allocated: false,
            mapped: pages.is_none(),
            freed: 0,
            stale: false,
            prev: None,
            next: None,
        }) as u32;
        self.segments.insert(Segment {
            base,
            size,
            stream,
            lane,
            class,
            head,
            live: 0,
            pages,
        });
        self.index_insert(head);
        segment
    }

    /// Frees a live block, merging it with free neighbours. Returns the
    /// block's size. `block` must come from this arena's `try_alloc` and not
    /// have been freed since (the ownership map guarantees that).
    pub(crate) fn free(&mut self, block: BlockRef, requested: usize) -> usize {
        let size = self.account_free(block, requested);
        let segment = &self.segments[self.blocks[block.slot as usize].segment as usize];
        if segment.class == Class::Small && size <= SMALL_REQUEST_MAX {
            let key = (segment.stream, size);
            let bin = self.quick.entry(key).or_default();
            if bin.slots.len() < QUICK_BIN_CAPACITY {
                let at = bin.slots.partition_point(|&(addr, _)| addr > block.addr);
                bin.slots.insert(at, (block.addr, block.slot));
                if !bin.listed {
                    bin.listed = true;
                    self.quick_listed.push(key);
                }
                self.quick_blocks += 1;
                return size;
            }
        }
        self.recycle(block);
        size
    }

    /// Merges every block of the quick bins into the free index. Touches
    /// only the bins that got blocks since the last flush.
    fn flush_quick(&mut self) {
        let mut flushed: Vec<(u64, u32)> = Vec::with_capacity(self.quick_blocks);
        for key in std::mem::take(&mut self.quick_listed) {
            let Some(bin) = self.quick.get_mut(&key) else {
                continue;
            };
            bin.listed = false;
            // `append` leaves the bin its buffer for the next frees.
            flushed.append(&mut bin.slots);
        }
        self.quick_blocks = 0;
        // Blocks lying end to end go back as one (each would merge with the
        // one before it anyway): one index update per run instead of one per
        // block. The result is what recycling them one by one leaves.
        flushed.sort_unstable_by_key(|&(addr, _)| addr);
        let tick = self.fences.tick();
        let mut runs = flushed.iter().peekable();
        while let Some(&(_, first)) = runs.next() {
            let b = &mut self.blocks[first as usize];
            (b.allocated, b.freed, b.stale) = (false, tick, false);
            let segment = b.segment;
            let mut gone = 1;
            while let Some(&&(_, next)) = runs.peek() {
                if self.blocks[first as usize].next != Some(next) {
                    break;
                }
                // A quick block is live (never stale) and freed before now.
                self.absorb_next(first);
                runs.next();
                gone += 1;
            }
            self.merge_and_index(first);
            // The segment's live count drops only now: when it reaches 0,
            // every block of the segment is free and merged, as after the
            // last of one-by-one recycles.
            for _ in 0..gone {
                self.block_gone(segment);
            }
        }
    }

    fn is_quick(&self, slot: u32) -> bool {
        let b = &self.blocks[slot as usize];
        let stream = self.segments[b.segment as usize].stream;
        self.quick
            .get(&(stream, b.size))
            .is_some_and(|bin| bin.slots.iter().any(|&(_, s)| s == slot))
    }

    /// Frees a live block in the books but keeps it out of reuse until the
    /// owner calls [`Arena::complete_deferred`] for it. Returns its size.
    pub(crate) fn defer_free(&mut self, deferred: Deferred, requested: usize) -> usize {
        let size = self.account_free(deferred.block, requested);
        self.stats.on_defer();
        self.deferred.push(deferred);
        size
    }

    /// Makes a block deferred by [`Arena::defer_free`] reusable.
    pub(crate) fn complete_deferred(&mut self, block: BlockRef) {
        self.stats.on_deferred_done();
        self.recycle(block);
    }

    fn account_free(&mut self, block: BlockRef, requested: usize) -> usize {
        let b = &self.blocks[block.slot as usize];
        assert!(
            b.allocated && b.addr == block.addr,
            "arena free of a block that is not live: ownership map out of sync"
        );
        let size = b.size;
        self.stats.on_free(size, requested);
        size
    }

    /// Returns a block to the free index, merged with free neighbours.
    #[inline(always)]
    fn recycle(&mut self, block: BlockRef) {
        let b = &mut self.blocks[block.slot as usize];
        b.allocated = false;
        b.freed = self.fences.tick();
        b.stale = false;
        let segment = b.segment;
        self.merge_and_index(block.slot);
        self.block_gone(segment);
    }

    /// Indexes the free block `slot` (not indexed yet), merged first with
    /// free neighbours in the same mapped state. Returns the merged slot.
    #[inline(always)]
    fn merge_and_index(&mut self, slot: u32) -> u32 {
        let b = &self.blocks[slot as usize];
        let (mapped, prev, next) = (b.mapped, b.prev, b.next);
        let seg = &self.segments[b.segment as usize];
        let (lane, class) = (seg.lane as usize, seg.class as usize);
        let blocks = &self.blocks;
        let joining = |n: Option<u32>| {
            let n = n?;
            let b = &blocks[n as usize];
            (!b.allocated && b.mapped == mapped).then(|| FreeKey::of(n, b))
        };
        let (prev_key, next_key) = (joining(prev), joining(next));
        if next_key.is_some() {
            self.absorb_next(slot);
        }
        let merged = match prev_key {
            Some(p) => {
                self.absorb_next(p.slot);
                p.slot
            }
            None => slot,
        };
        let new = FreeKey::of(merged, &self.blocks[merged as usize]);
        let lane = &mut self.lanes[lane];
        let index = match mapped {
            true => &mut lane.free[class],
            false => &mut lane.unmapped[class],
        };
        // The merged block takes the place of one merged neighbour in the
        // index (the same one: same segment, same mapped state).
        match (prev_key, next_key) {
            (Some(p), Some(n)) => {
                let removed = index.remove(&n);
                debug_assert!(removed, "free block missing from the index");
                index.replace(&p, None, new);
            }
            (Some(old), None) | (None, Some(old)) => index.replace(&old, None, new),
            (None, None) => {
                index.insert(new);
            }
        }
        merged
    }

    /// Merges the block after `slot` into `slot` and removes it.
    #[inline(always)]
    fn absorb_next(&mut self, slot: u32) {
        let next = self.blocks[slot as usize].next.expect("has a next block");
        let gone = self.blocks.remove(next as usize);
        if let Some(after) = gone.next {
            self.blocks[after as usize].prev = Some(slot);
        }
        let b = &mut self.blocks[slot as usize];
        b.size += gone.size;
        b.freed = b.freed.max(gone.freed);
        b.stale &= gone.stale;
        b.next = gone.next;
    }

    /// Removes every segment, live blocks and all, and returns them: for an
    /// owner that is going away.
    pub(crate) fn take_all_segments(&mut self) -> Vec<FreedSegment> {
        let mapped_runs: Vec<Option<Vec<(u64, usize)>>> = self
            .segments
            .iter()
            .map(|(_, s)| s.pages.as_ref().map(|_| self.mapped_runs(s.head)))
            .collect();
        let segments = self
            .segments
            .drain()
            .zip(mapped_runs)
            .map(|(s, mapped)| FreedSegment {
                base: s.base,
                size: s.size,
                mapped,
                stream: s.stream,
            })
            .collect::<Vec<_>>();
        for s in &segments {
            let held = match &s.mapped {
                Some(runs) => runs.iter().map(|r| r.1).sum(),
                None => s.size,
            };
            self.stats.on_release(held);
        }
        self.blocks.clear();
        self.lanes.clear();
        self.quick.clear();
        self.quick_listed.clear();
        self.quick_blocks = 0;
        self.deferred.clear();
        self.stats.on_blocks_dropped();
        segments
    }

    /// Removes every segment that is one free block and returns them, for
    /// the owner to release to the device.
    pub(crate) fn take_free_segments(&mut self) -> Vec<FreedSegment> {
        self.flush_quick();
        let idle: Vec<usize> = self
            .segments
            .iter()
            .filter(|(_, s)| {
                let head = &self.blocks[s.head as usize];
                // An expandable segment goes only once its pages are all
                // unmapped (idle pages are unmapped first): then just its
                // address range is left to release.
                let unmapped = s.pages.as_ref().is_none_or(|pages| pages.mapped == 0);
                unmapped && !head.allocated && head.size == s.size
            })
            .map(|(id, _)| id)
            .collect();
        idle.into_iter()
            .map(|id| {
                let head = self.segments[id].head;
                self.index_remove(head);
                self.blocks.remove(head as usize);
                let s = self.segments.remove(id);
                let expandable = s.pages.is_some();
                self.stats.on_release(if expandable { 0 } else { s.size });
                FreedSegment {
                    base: s.base,
                    size: s.size,
                    mapped: expandable.then(Vec::new),
                    stream: s.stream,
                }
            })
            .collect()
    }

    /// Whether no block is live (deferred frees may still be pending).
    pub(crate) fn is_idle(&self) -> bool {
        self.stats.live_blocks == 0
    }

    /// Classifies `addr` against this arena's segments (slow: for error
    /// reports only).
    pub(crate) fn classify(&self, addr: u64) -> AddressKind {
        let Some((_, seg)) = self
            .segments
            .iter()
            .find(|(_, s)| s.base <= addr && addr < s.base + s.size as u64)
        else {
            return AddressKind::Outside;
        };
        let mut slot = Some(seg.head);
        while let Some(s) = slot {
            let b = &self.blocks[s as usize];
            if b.addr <= addr && addr < b.addr + b.size as u64 {
                // Quick-binned and deferred blocks are freed, though not
                // yet back in the free index.
                let allocated = b.allocated
                    && !self.is_quick(s)
                    && !self.deferred.iter().any(|d| d.block.slot == s);
                return match (b.addr == addr, allocated) {
                    (true, true) => AddressKind::LiveBlockStart,
                    (true, false) => AddressKind::FreeBlockStart,
                    (false, allocated) => AddressKind::Inside {
                        block: b.addr,
                        allocated,
                    },
                };
            }
            slot = b.next;
        }
        AddressKind::Outside
    }
}

#[cfg(test)]
mod tests;
