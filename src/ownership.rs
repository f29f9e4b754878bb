//! Who owns each live pointer: the map that routes every free.
//!
//! A free is routed by what the pointer *is*, never by the mode of the
//! freeing thread: a block allocated in graph mode goes back to its pool even
//! when freed after the guard ended, from another thread, or after the
//! pool's last handle was dropped.

use crate::arena::{BlockRef, Carved};
use crate::caching::Origin;
use crate::graph_pool::PoolPtr;
use crate::sync::{ConcurrentMap, ScrambledKey};

/// The owner of a live block.
#[derive(Debug)]
pub(crate) enum Owner {
    /// The caching allocator of a device (index into the allocator's
    /// devices), and where in it the block came from.
    Cache { device: usize, origin: Origin },
    /// A graph pool, which stays alive while the block is live (no
    /// reference count: see [`PoolPtr`]).
    Pool(PoolPtr),
}

/// What the map records for one live pointer: 88 bytes, moved into the map
/// on every allocation and out of it on every free, so kept small (a thin
/// pointer for the rare `uses`). (Packing the device into a `u32`, or
/// aligning the record to 16 bytes, measured slower on the host.)
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) owner: Owner,
    pub(crate) block: BlockRef,
    /// The block's size.
    pub(crate) size: usize,
    pub(crate) requested: usize,
    /// The stream the block was allocated on.
    pub(crate) stream: u64,
    /// Other streams that used the block (`record_stream`): boxed, as few
    /// blocks have any, behind a thin pointer to keep the record small.
    pub(crate) uses: Option<Box<Uses>>,
    /// Whether an owning handle (a `DeviceBuffer`) holds the block: then
    /// only that handle frees it ([`OwnershipMap::claim`] with `held`).
    pub(crate) held: bool,
    /// The block sits in the cache of the thread that allocated it: free
    /// for the user (not live), its record kept so that the thread's next
    /// hit revives it in place ([`OwnershipMap::revive`]) instead of an
    /// insert and a remove per pair. Only that thread's hit revives it, and
    /// only a flush of its cache removes it ([`OwnershipMap::forget_cached`]).
    pub(crate) cached: bool,
}

impl Record {
    /// The record of a block just carved (`carved`) for `requested` bytes
    /// on `stream`.
    #[inline]
    pub(crate) fn new(
        owner: Owner,
        carved: Carved,
        requested: usize,
        stream: u64,
        held: bool,
    ) -> Self {
        Record {
            owner,
            block: carved.block,
            size: carved.size,
            requested,
            stream,
            uses: None,
            held,
            cached: false,
        }
    }

    /// The other streams that used the block.
    #[inline]
    pub(crate) fn uses(&self) -> &[u64] {
        Uses::of(&self.uses)
    }

    /// The device the block is on.
    pub(crate) fn device(&self) -> usize {
        match &self.owner {
            Owner::Cache { device, .. } => *device,
            Owner::Pool(pool) => pool.get().device(),
        }
    }
}

/// The other streams that used a block: a `Vec` behind the record's thin
/// pointer.
#[derive(Debug, Default)]
pub(crate) struct Uses(Vec<u64>);

impl Uses {
    /// The streams of a record's `uses` field (borrowing that field only,
    /// so a free can take the record's owner by value meanwhile).
    #[inline]
    pub(crate) fn of(uses: &Option<Box<Uses>>) -> &[u64] {
        uses.as_deref().map_or(&[], |u| u.0.as_slice())
    }
}

/// What [`OwnershipMap::claim`] found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The pointer's record, removed: the caller frees the block.
    Claimed(Record),
    /// The pointer is freed: `keep` put its block into the calling thread's
    /// cache, and its record stays in the map, marked cached.
    Kept(Kept),
    /// The pointer is live but held by an owning handle, which alone may
    /// free it; nothing changed.
    Held,
    /// The pointer is not live.
    NotLive,
}

/// What the free of a block kept in a thread cache records.
#[derive(Debug)]
pub(crate) struct Kept {
    /// The block's device.
    pub(crate) device: usize,
    /// The stream it was allocated on.
    pub(crate) stream: u64,
    /// The bytes requested.
    pub(crate) requested: usize,
    /// The block's size.
    pub(crate) size: usize,
    /// The block's address.
    pub(crate) block: u64,
}

/// The map key of a pointer: a bijection (multiplication by an odd
/// constant) that spreads the pointers of one segment over the map's
/// shards and its buckets. The map's hasher ([`ScrambledKey`]) only folds
/// the key's high bits onto its low ones: `DashMap` picks a shard from the
/// hash's bits 47..57, hashbrown its tag from the top 7 and its bucket from
/// the lowest. With the pointer itself as key, every thread working in one
/// small segment of the default, unsharded cache would meet on one shard's
/// lock.
#[inline]
fn key(ptr: u64) -> u64 {
    ptr.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(all(test, target_pointer_width = "64"))]
mod layout {
    /// The record stays at 88 bytes (it was 96): every allocation moves one
    /// into the map and every free one out.
    #[test]
    fn record_is_small() {
        assert_eq!(std::mem::size_of::<super::Record>(), 88);
    }
}

/// Shards of the ownership map (128 bytes of lock each, and a table
/// allocated on first use).
const MAP_SHARDS: usize = 1024;

/// Live pointer → owner. Removing a pointer's entry is what claims the right
/// to free it, so of two racing frees of one pointer exactly one proceeds.
#[derive(Debug)]
pub(crate) struct OwnershipMap {
    map: ConcurrentMap<u64, Record, ScrambledKey>,
}

impl OwnershipMap {
    /// With [`MAP_SHARDS`] shards: every allocation and free writes the
    /// shard of its pointer, so `T` threads each reusing one block meet on a
    /// shard with probability about 1 - e^(-T(T-1) / (2 x MAP_SHARDS)) (16 threads: 11%,
    /// against 85% with `DashMap`'s default of 64 shards on 16 cores).
    pub(crate) fn new() -> Self {
        OwnershipMap {
            map: ConcurrentMap::with_shards(MAP_SHARDS),
        }
    }

    /// Records a pointer just handed out. A pointer is live at most once:
    /// the arena never hands out a live block's address.
    #[inline(always)]
    pub(crate) fn insert(&self, ptr: u64, record: Record) {
        let fresh = self.map.insert_new(key(ptr), record);
        assert!(fresh, "pointer {ptr:#x} handed out twice");
    }

    /// Claims a pointer for freeing. `held` says who frees: the owning
    /// handle of a held block (`true`), or a plain `free` (`false`), which
    /// may not take a held block. `keep` runs on the live record, under its
    /// shard's lock (so it takes no lock that is ever held while this map
    /// is used, and uses the map not at all): when it put the block into
    /// the calling thread's cache it says `true`, and the record stays,
    /// marked cached ([`Claim::Kept`]); else the record is removed
    /// ([`Claim::Claimed`]). Either way, of two racing frees exactly one
    /// claims the pointer.
    #[inline]
    pub(crate) fn claim(&self, ptr: u64, held: bool, keep: impl FnOnce(&Record) -> bool) -> Claim {
        let mut kept = None;
        let removed = self.map.remove_if_mut(&key(ptr), |r| {
            if r.cached || r.held != held {
                return false;
            }
            if keep(r) {
                r.cached = true;
                kept = Some(Kept {
                    device: r.device(),
                    stream: r.stream,
                    requested: r.requested,
                    size: r.size,
                    block: r.block.addr(),
                });
                return false;
            }
            true
        });
        if let Some(kept) = kept {
            return Claim::Kept(kept);
        }
        match removed {
            Some(record) => Claim::Claimed(record),
            None => self.unclaimed(ptr, held),
        }
    }

    /// Records a pointer just handed out, for `requested` bytes, held by an
    /// owning handle or not: `kept`, the pointer a block from the thread's
    /// cache was last handed out as (its record is still in the map, and
    /// is revived in place: `record` is then not even built), else none
    /// (a fresh insert of `record()`).
    #[inline]
    pub(crate) fn hand_out(
        &self,
        kept: Option<u64>,
        ptr: u64,
        requested: usize,
        held: bool,
        record: impl FnOnce() -> Record,
    ) {
        match kept {
            Some(old) if old == ptr && self.revive(ptr, requested, held) => {}
            Some(old) => self.moved(old, ptr, record()),
            None => self.insert(ptr, record()),
        }
    }

    /// Hands out again, as `ptr` (the pointer it was last handed out as),
    /// a block whose record [`Claim::Kept`] kept in the map: marks it live
    /// with the new request's figures, in place. `false` if it is gone
    /// (it cannot be: only this thread's flush removes it).
    #[inline]
    pub(crate) fn revive(&self, ptr: u64, requested: usize, held: bool) -> bool {
        self.map
            .with_mut(&key(ptr), |r| {
                debug_assert!(r.cached, "revived a live pointer");
                r.cached = false;
                r.requested = requested;
                r.held = held;
            })
            .is_some()
    }

    /// The request's alignment moved the pointer of a block from the
    /// thread's cache (kept under `old`): its record goes under the new key
    /// (off the hot path).
    #[cold]
    #[inline(never)]
    pub(crate) fn moved(&self, old: u64, ptr: u64, record: Record) {
        self.forget_cached(old);
        self.insert(ptr, record);
    }

    /// Removes the record of a block leaving a thread's cache for the
    /// arena (a flush): from then on the pointer is not known at all.
    pub(crate) fn forget_cached(&self, ptr: u64) {
        let _ = self.map.remove_if(&key(ptr), |r| r.cached);
    }

    /// Why [`OwnershipMap::claim`] found nothing to take (off the hot path).
    #[cold]
    #[inline(never)]
    fn unclaimed(&self, ptr: u64, held: bool) -> Claim {
        match self.map.with(&key(ptr), |r| r.held && !r.cached) {
            Some(true) if !held => Claim::Held,
            _ => Claim::NotLive,
        }
    }

    /// Notes that `stream` uses the live pointer `ptr`; `false` if `ptr` is
    /// not live.
    pub(crate) fn add_use(&self, ptr: u64, stream: u64) -> bool {
        self.map
            .with_mut(&key(ptr), |r| {
                if r.cached {
                    return false;
                }
                if r.stream != stream && !r.uses().contains(&stream) {
                    r.uses.get_or_insert_with(Box::default).0.push(stream);
                }
                true
            })
            .unwrap_or(false)
    }

    /// The requested size of a live pointer.
    pub(crate) fn requested(&self, ptr: u64) -> Option<usize> {
        self.map
            .with(&key(ptr), |r| (!r.cached).then_some(r.requested))
            .flatten()
    }

    /// The device of a live pointer.
    pub(crate) fn device(&self, ptr: u64) -> Option<usize> {
        self.map
            .with(&key(ptr), |r| (!r.cached).then(|| r.device()))
            .flatten()
    }

    /// For a live pointer: the id of its pool, or `None` for the cache.
    pub(crate) fn pool_id(&self, ptr: u64) -> Option<Option<u64>> {
        self.map
            .with(&key(ptr), |r| {
                (!r.cached).then(|| match &r.owner {
                    Owner::Cache { .. } => None,
                    Owner::Pool(pool) => Some(pool.get().id),
                })
            })
            .flatten()
    }

    /// Whether a live pointer of `device` was allocated on `stream` or
    /// records a use by it (slow: a scan, for unregistering a stream).
    pub(crate) fn names_stream(&self, device: usize, stream: u64) -> bool {
        let mut named = false;
        self.map.for_each(|_, r| {
            named |= !r.cached
                && r.device() == device
                && (r.stream == stream || r.uses().contains(&stream));
        });
        named
    }

    /// Block address → bytes requested, of every live pointer (slow: a copy
    /// of the map, for snapshots). (The map's keys are scrambled pointers,
    /// see `key`: the block's address comes from the record.)
    pub(crate) fn live_blocks(&self) -> std::collections::HashMap<u64, usize> {
        let mut out = std::collections::HashMap::new();
        self.map.for_each(|_, r| {
            if !r.cached {
                out.insert(r.block.addr(), r.requested);
            }
        });
        out
    }

    /// Forgets every live pointer (the allocator is going away).
    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    /// Number of live pointers (slow: a scan, as records of cached blocks
    /// are not live).
    pub(crate) fn len(&self) -> usize {
        let mut live = 0;
        self.map.for_each(|_, r| live += usize::from(!r.cached));
        live
    }
}
