//! [`FreeIndex`]: an ordered set of free-block keys, as a sorted `Vec`
//! while small and a `BTreeSet` once large.
//!
//! Best fit asks the index (its stream's, of its class) for the first key
//! at or above a size and then replaces it with what a split leaves (in
//! place, when that sorts between the same neighbours): a few operations
//! on every large allocation and free. Most arenas hold few free blocks per
//! stream and class, where a binary search and a short `memmove` in one contiguous
//! buffer beat the B-tree's node walks; an arena with many free blocks keeps
//! the B-tree's logarithmic cost. Both forms hold the same keys in the same
//! order, so every search returns what a `BTreeSet` would: placement does
//! not depend on the form.
//!
//! The arena's keys are [`FreeKey`]s, whose order is the tuple (size,
//! address) compared as one number; the `Vec`'s searches ask only `<`.

use super::Block;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// A free block as the index holds it, ordered by size, then address.
/// The slot rides along: it takes no part in the order or in equality (no
/// two blocks of an arena share an address).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreeKey {
    pub(crate) size: usize,
    pub(crate) addr: u64,
    pub(crate) slot: u32,
}

impl FreeKey {
    /// The key of the free block `slot`.
    #[inline]
    pub(crate) fn of(slot: u32, b: &Block) -> FreeKey {
        FreeKey {
            size: b.size,
            addr: b.addr,
            slot,
        }
    }

    /// The first key at or above `size` bytes.
    #[inline]
    pub(crate) fn from(size: usize) -> FreeKey {
        FreeKey {
            size,
            addr: 0,
            slot: 0,
        }
    }

    /// The last key there can be.
    pub(crate) fn last() -> FreeKey {
        FreeKey {
            size: usize::MAX,
            addr: u64::MAX,
            slot: u32::MAX,
        }
    }

    /// Size and address as one number, in their order: one 128-bit compare
    /// costs fewer instructions than two in a row, and no branch.
    #[inline(always)]
    fn size_addr(&self) -> u128 {
        ((self.size as u128) << 64) | self.addr as u128
    }
}

impl PartialEq for FreeKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.size_addr() == other.size_addr()
    }
}

impl Eq for FreeKey {}

impl Ord for FreeKey {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.size_addr().cmp(&other.size_addr())
    }
}

impl PartialOrd for FreeKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }

    // What the searches ask.
    #[inline]
    fn lt(&self, other: &Self) -> bool {
        self.size_addr() < other.size_addr()
    }
}

/// Where `key` is in the sorted `v`, or where it would go: as
/// `binary_search`, asking only `<` (cheaper than a three-way compare).
#[inline]
fn search<K: Ord>(v: &[K], key: &K) -> Result<usize, usize> {
    let at = v.partition_point(|k| k < key);
    match v.get(at) {
        Some(k) if k == key => Ok(at),
        _ => Err(at),
    }
}

/// Entries above which the sorted `Vec` becomes a `BTreeSet`.
const GROW_AT: usize = 256;
/// Entries below which the `BTreeSet` becomes a sorted `Vec` again (less
/// than [`GROW_AT`], so that a set near the limit does not switch back and
/// forth).
const SHRINK_AT: usize = 64;

/// An ordered set of keys; see the module docs.
#[derive(Debug)]
pub(crate) enum FreeIndex<K: Ord + Copy> {
    /// Sorted, no duplicates.
    Small(Vec<K>),
    Large(BTreeSet<K>),
}

impl<K: Ord + Copy> Default for FreeIndex<K> {
    fn default() -> Self {
        FreeIndex::Small(Vec::new())
    }
}

/// The keys of a [`FreeIndex`] in a range, in order.
pub(crate) enum Iter<'a, K> {
    Small(std::slice::Iter<'a, K>),
    Large(std::collections::btree_set::Range<'a, K>),
}

impl<'a, K> Iterator for Iter<'a, K> {
    type Item = &'a K;
    #[inline]
    fn next(&mut self) -> Option<&'a K> {
        match self {
            Iter::Small(it) => it.next(),
            Iter::Large(it) => it.next(),
        }
    }
}

impl<K: Ord + Copy> FreeIndex<K> {
    /// The first key at or above `from`, with its place (a hint for
    /// [`FreeIndex::replace`]).
    #[inline]
    pub(crate) fn first_from(&self, from: &K) -> Option<(K, usize)> {
        match self {
            FreeIndex::Small(v) => {
                let at = v.partition_point(|k| k < from);
                v.get(at).map(|&k| (k, at))
            }
            FreeIndex::Large(s) => s.range(from..).next().map(|&k| (k, usize::MAX)),
        }
    }

    /// The keys in `range`, in order (none if it is empty).
    pub(crate) fn range(&self, range: RangeInclusive<K>) -> Iter<'_, K> {
        if range.start() > range.end() {
            return Iter::Small([].iter());
        }
        match self {
            FreeIndex::Small(v) => {
                let start = v.partition_point(|k| k < range.start());
                let end = v.partition_point(|k| k <= range.end());
                Iter::Small(v[start..end].iter())
            }
            FreeIndex::Large(s) => Iter::Large(s.range(range)),
        }
    }

    /// Every key, in order.
    pub(crate) fn iter(&self) -> Iter<'_, K> {
        match self {
            FreeIndex::Small(v) => Iter::Small(v.iter()),
            FreeIndex::Large(s) => Iter::Large(s.range(..)),
        }
    }

    /// Inserts `key`; returns whether it was absent.
    #[inline(always)]
    pub(crate) fn insert(&mut self, key: K) -> bool {
        match self {
            FreeIndex::Small(v) => match search(v, &key) {
                Ok(_) => false,
                Err(at) => {
                    v.insert(at, key);
                    if v.len() > GROW_AT {
                        *self = FreeIndex::Large(v.drain(..).collect());
                    }
                    true
                }
            },
            FreeIndex::Large(s) => s.insert(key),
        }
    }

    /// Replaces `old`, which must be present, with `new`, which must be
    /// absent: as `remove(old)` then `insert(new)`, but in the `Vec` one
    /// rotation of the entries between their places instead of two shifts
    /// of everything after them. (A split or a merge replaces one free
    /// block by another of the same stream.) `at`, if given, is where
    /// [`FreeIndex::first_from`] found `old`, with nothing changed since:
    /// then `old` is not searched for again.
    #[inline(always)]
    pub(crate) fn replace(&mut self, old: &K, at: Option<usize>, new: K) {
        match self {
            FreeIndex::Small(v) => {
                let found = match at {
                    Some(at) => Ok(at),
                    None => search(v, old),
                };
                let Ok(i) = found else {
                    debug_assert!(false, "replaced key missing");
                    self.insert(new);
                    return;
                };
                debug_assert!(v[i] == *old, "replaced key not at its place");
                // Most often the new key sorts between the old one's
                // neighbours (a split's rest, a block merged with a small
                // one): it takes the old one's place, nothing moves.
                let above = |k: &K| *k < new;
                if (i == 0 || above(&v[i - 1])) && v.get(i + 1).is_none_or(|k| new < *k) {
                    v[i] = new;
                } else if new < *old {
                    let j = v[..i].partition_point(|k| *k < new);
                    debug_assert!(v.get(j) != Some(&new), "new key present");
                    v.copy_within(j..i, j + 1);
                    v[j] = new;
                } else {
                    let j = i + 1 + v[i + 1..].partition_point(|k| *k < new);
                    debug_assert!(v.get(j) != Some(&new), "new key present");
                    v.copy_within(i + 1..j, i);
                    v[j - 1] = new;
                }
            }
            FreeIndex::Large(s) => {
                let removed = s.remove(old);
                debug_assert!(removed, "replaced key missing");
                s.insert(new);
            }
        }
    }

    /// Removes `key`; returns whether it was present.
    #[inline]
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        self.remove_at(key, None)
    }

    /// Removes `key`, where [`FreeIndex::first_from`] found it if `at` is
    /// given (with nothing changed since); returns whether it was present.
    #[inline(always)]
    pub(crate) fn remove_at(&mut self, key: &K, at: Option<usize>) -> bool {
        match self {
            FreeIndex::Small(v) => match at.map_or_else(|| search(v, key), Ok) {
                Ok(at) => {
                    debug_assert!(v[at] == *key, "removed key not at its place");
                    v.remove(at);
                    true
                }
                Err(_) => false,
            },
            FreeIndex::Large(s) => {
                let removed = s.remove(key);
                if s.len() < SHRINK_AT {
                    // A `BTreeSet` iterates in order: the `Vec` is sorted.
                    *self = FreeIndex::Small(std::mem::take(s).into_iter().collect());
                }
                removed
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, key: &K) -> bool {
        match self {
            FreeIndex::Small(v) => search(v, key).is_ok(),
            FreeIndex::Large(s) => s.contains(key),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            FreeIndex::Small(v) => v.len(),
            FreeIndex::Large(s) => s.len(),
        }
    }

    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        *self = FreeIndex::default();
    }
}

impl<'a, K: Ord + Copy> IntoIterator for &'a FreeIndex<K> {
    type Item = &'a K;
    type IntoIter = Iter<'a, K>;
    fn into_iter(self) -> Iter<'a, K> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The index answers every query as a `BTreeSet` does, through many
    /// switches between its two forms.
    #[test]
    fn answers_as_a_btreeset_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut index = FreeIndex::default();
        let mut model = BTreeSet::new();
        let (mut grew, mut shrank) = (0, 0);
        for step in 0..40_000 {
            // Phases that fill and drain, so both forms and both switches occur.
            let filling = (step / 2_000) % 2 == 0;
            let key: (u64, u32) = (rng.random_range(0..2), rng.random_range(0..200));
            let was_large = matches!(index, FreeIndex::Large(_));
            if rng.random_bool(if filling { 0.9 } else { 0.1 }) {
                assert_eq!(index.insert(key), model.insert(key));
            } else {
                assert_eq!(index.remove(&key), model.remove(&key));
            }
            match (was_large, matches!(index, FreeIndex::Large(_))) {
                (false, true) => grew += 1,
                (true, false) => shrank += 1,
                _ => {}
            }
            // A replacement of a present key by an absent one.
            if let Some(&old) = model.iter().nth(rng.random_range(0..model.len().max(1))) {
                let new = (rng.random_range(0..2), rng.random_range(0..200));
                if !model.contains(&new) {
                    index.replace(&old, None, new);
                    model.remove(&old);
                    model.insert(new);
                }
            }
            let probe = (rng.random_range(0..2), rng.random_range(0..204));
            let first = index.first_from(&probe);
            assert_eq!(first.map(|f| f.0), model.range(probe..).next().copied());
            if let Some((key, at)) = first.filter(|_| rng.random_bool(0.05)) {
                // Removed where it was found.
                assert!(index.remove_at(&key, Some(at)));
                assert!(model.remove(&key));
            } else if let Some((key, at)) = first.filter(|_| rng.random_bool(0.5)) {
                // Replaced where it was found: as `replace` without the hint.
                let new = (key.0, rng.random_range(0..200));
                if !model.contains(&new) {
                    index.replace(&key, Some(at), new);
                    model.remove(&key);
                    model.insert(new);
                }
            }
            assert_eq!(index.contains(&probe), model.contains(&probe));
            let hi = (probe.0, rng.random_range(0..204));
            let got: Vec<_> = index.range(probe..=hi).collect();
            let want: Vec<_> = if probe <= hi {
                model.range(probe..=hi).collect()
            } else {
                Vec::new()
            };
            assert_eq!(got, want);
            assert_eq!(index.len(), model.len());
        }
        assert!(index.iter().eq(model.iter()));
        assert!(grew > 0 && shrank > 0, "both forms were exercised");
        index.clear();
        assert_eq!(index.len(), 0);
    }

    /// `FreeKey` orders as the tuple (size, address) does, through `cmp`
    /// and `<` alike, whatever its slot.
    #[test]
    fn free_keys_order_by_stream_size_address() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut pick = |edge: &[u64]| {
            if rng.random_bool(0.5) {
                edge[rng.random_range(0..edge.len())]
            } else {
                rng.random()
            }
        };
        let edge = [0, 1, u64::MAX - 1, u64::MAX, 1 << 63, (1 << 63) - 1];
        for _ in 0..20_000 {
            let [a, b] = [(); 2].map(|()| FreeKey {
                size: pick(&edge) as usize,
                addr: pick(&edge),
                slot: pick(&edge) as u32,
            });
            let tuple = |k: &FreeKey| (k.size, k.addr);
            assert_eq!(a.cmp(&b), tuple(&a).cmp(&tuple(&b)));
            assert_eq!(a < b, tuple(&a) < tuple(&b));
            assert_eq!(a == b, tuple(&a) == tuple(&b));
        }
    }
}
