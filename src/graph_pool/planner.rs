//! The offline placement of recorded blocks: interval packing of their
//! lifetimes in one address range, as the static memory planners of
//! TFLite and XNNPACK do ("greedy by size": the largest block first, each at
//! the best-fitting gap among the blocks already placed whose lifetimes
//! overlap its own, else above them all).
//!
//! Pure arithmetic: nothing here knows about devices, streams or locks.

/// One block to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval {
    /// Bytes, a multiple of 512.
    pub(crate) size: usize,
    /// The recording (group) it belongs to.
    pub(crate) group: usize,
    /// Event time of its allocation within its group.
    pub(crate) start: u32,
    /// Event time of its free within its group (exclusive); `u32::MAX` when
    /// it is never freed within the group.
    pub(crate) end: u32,
    /// Whether it outlives its group's recording: then it stays live while
    /// every other group's graph runs, and conflicts with all their blocks.
    pub(crate) outlives: bool,
}

impl Interval {
    /// Whether two blocks may be live at once, so that they must not share
    /// memory. Blocks of one group conflict when their lifetimes overlap;
    /// blocks of different groups (graphs that never run concurrently) only
    /// when one of them outlives its graph.
    pub(crate) fn conflicts(&self, other: &Interval) -> bool {
        if self.group == other.group {
            self.start < other.end && other.start < self.end
        } else {
            self.outlives || other.outlives
        }
    }
}

/// The lower bound of any placement: over the groups, the most bytes one
/// group has live at once, plus the bytes the other groups' blocks that
/// outlive their graphs hold.
/// Saturates at `usize::MAX` (the sums are taken in `u128`, which no number
/// of recorded blocks can overflow: `Recording::peak_live_bytes` sees
/// recordings of any size, unlike the planner, whose callers bound the
/// total first).
pub(crate) fn peak_live(items: &[Interval]) -> usize {
    let groups = items.iter().map(|i| i.group + 1).max().unwrap_or(0);
    let mut outliving = vec![0u128; groups];
    for i in items.iter().filter(|i| i.outlives) {
        outliving[i.group] += i.size as u128;
    }
    let all_outliving: u128 = outliving.iter().sum();
    let mut best = 0;
    for (g, own_outliving) in outliving.iter().enumerate() {
        let mut events: Vec<(u32, bool, usize)> = Vec::new();
        for i in items.iter().filter(|i| i.group == g) {
            events.push((i.start, true, i.size));
            if i.end != u32::MAX {
                events.push((i.end, false, i.size));
            }
        }
        // At equal times frees come first: a block freed at time t and one
        // allocated at t are not live together.
        events.sort_by_key(|&(t, alloc, _)| (t, alloc));
        let (mut live, mut peak) = (0u128, 0u128);
        for (_, alloc, size) in events {
            if alloc {
                live += size as u128;
                peak = peak.max(live);
            } else {
                live -= size as u128;
            }
        }
        best = best.max(peak + all_outliving - own_outliving);
    }
    usize::try_from(best).unwrap_or(usize::MAX)
}

/// Places `items` in one range: returns each item's offset (a multiple of
/// 512, like every size) and the range's size. Conflicting items never
/// overlap. Runs greedy-by-size with two tie orders and keeps the smaller.
pub(crate) fn pack(items: &[Interval]) -> (Vec<usize>, usize) {
    let mut best: Option<(Vec<usize>, usize)> = None;
    for order in [
        Order::SizeThenStart,
        Order::SizeThenLength,
        Order::GroupThenSize,
    ] {
        let placed = greedy(items, order);
        if best.as_ref().is_none_or(|b| placed.1 < b.1) {
            best = Some(placed);
        }
    }
    best.unwrap_or_default()
}

#[derive(Clone, Copy)]
enum Order {
    /// Larger first; among equals, the earlier allocation.
    SizeThenStart,
    /// Larger first; among equals, the longer lifetime.
    SizeThenLength,
    /// The group with the highest peak first, each group larger first: the
    /// largest graph lays out the range and the others fill it in.
    GroupThenSize,
}

fn greedy(items: &[Interval], order: Order) -> (Vec<usize>, usize) {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    match order {
        Order::SizeThenStart => idx.sort_by_key(|&i| {
            (
                std::cmp::Reverse(items[i].size),
                items[i].group,
                items[i].start,
            )
        }),
        Order::SizeThenLength => idx.sort_by_key(|&i| {
            let it = &items[i];
            let len = if it.outlives {
                u32::MAX
            } else {
                it.end.saturating_sub(it.start)
            };
            (
                std::cmp::Reverse(it.size),
                std::cmp::Reverse(len),
                it.group,
                it.start,
            )
        }),
        Order::GroupThenSize => {
            let groups = items.iter().map(|i| i.group + 1).max().unwrap_or(0);
            let peaks: Vec<usize> = (0..groups)
                .map(|g| {
                    let own: Vec<Interval> =
                        items.iter().filter(|i| i.group == g).copied().collect();
                    peak_live(&own)
                })
                .collect();
            idx.sort_by_key(|&i| {
                let it = &items[i];
                let g = it.group;
                (
                    std::cmp::Reverse(peaks[g]),
                    g,
                    std::cmp::Reverse(it.size),
                    it.start,
                )
            })
        }
    }
    let mut offsets = vec![usize::MAX; items.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(items.len());
    let mut total = 0;
    let mut near: Vec<(usize, usize)> = Vec::new();
    for &i in &idx {
        let it = &items[i];
        near.clear();
        near.extend(
            placed
                .iter()
                .filter(|&&j| it.conflicts(&items[j]))
                .map(|&j| (offsets[j], offsets[j] + items[j].size)),
        );
        near.sort_unstable();
        // The smallest gap between conflicting blocks that fits, else the
        // top of them all.
        let (mut top, mut best): (usize, Option<(usize, usize)>) = (0, None);
        for &(lo, hi) in &near {
            if lo > top {
                let gap = lo - top;
                if gap >= it.size && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, top));
                }
            }
            top = top.max(hi);
        }
        let offset = best.map_or(top, |(_, at)| at);
        offsets[i] = offset;
        total = total.max(offset + it.size);
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(size: usize, group: usize, start: u32, end: u32) -> Interval {
        Interval {
            size: size * 512,
            group,
            start,
            end,
            outlives: end == u32::MAX,
        }
    }

    fn check(items: &[Interval]) -> (usize, usize) {
        let (offsets, total) = pack(items);
        for (a, ia) in items.iter().enumerate() {
            assert_eq!(offsets[a] % 512, 0);
            assert!(offsets[a] + ia.size <= total);
            for (b, ib) in items.iter().enumerate().skip(a + 1) {
                if ia.conflicts(ib) {
                    let apart =
                        offsets[a] + ia.size <= offsets[b] || offsets[b] + ib.size <= offsets[a];
                    assert!(
                        apart,
                        "{ia:?}@{} overlaps {ib:?}@{}",
                        offsets[a], offsets[b]
                    );
                }
            }
        }
        let lower = peak_live(items);
        assert!(total >= lower, "placement below the lower bound");
        assert!(total <= items.iter().map(|i| i.size).sum());
        (lower, total)
    }

    #[test]
    fn a_chain_of_temporaries_packs_to_its_peak() {
        // a, b live together; a freed; c with b; b freed; d with c.
        let items = [
            iv(4, 0, 0, 2),
            iv(2, 0, 1, 4),
            iv(4, 0, 3, 6),
            iv(2, 0, 5, 7),
        ];
        assert_eq!(check(&items), (6 * 512, 6 * 512));
    }

    #[test]
    fn groups_share_memory_but_not_with_outliving_blocks() {
        // Group 0: a temporary and an output; group 1: two temporaries.
        let items = [
            iv(8, 0, 0, 2),
            iv(1, 0, 1, u32::MAX),
            iv(6, 1, 0, 3),
            iv(6, 1, 1, 2),
        ];
        let (lower, total) = check(&items);
        assert_eq!(lower, 13 * 512); // group 1's 12 plus group 0's output
        assert_eq!(total, 13 * 512);
    }

    #[test]
    fn random_lifetimes_never_overlap_in_memory() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let n = (next() % 40) as usize + 1;
            let items: Vec<Interval> = (0..n)
                .map(|_| {
                    let start = (next() % 60) as u32;
                    let end = if next() % 8 == 0 {
                        u32::MAX
                    } else {
                        start + 1 + (next() % 20) as u32
                    };
                    iv(
                        (next() % 64) as usize + 1,
                        (next() % 3) as usize,
                        start,
                        end,
                    )
                })
                .collect();
            check(&items);
        }
    }
}
