//! Who owns each live pointer: the map that routes every free.
//!
//! A free is routed by what the pointer *is*, never by the mode of the
//! freeing thread: a block allocated in graph mode goes back to its pool even
//! when freed after the guard ended, from another thread, or after the
//! pool's last handle was dropped.

use crate::arena::{BlockRef, Carved};
use crate::caching::Origin;
use crate::graph_pool::PoolPtr;
use crate::sync::{thread_local, AtomicBool, AtomicUsize, ConcurrentMap, Ordering, ScrambledKey};
use std::cell::{RefCell, UnsafeCell};
use std::ptr::NonNull;

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

/// What the map records for one live pointer, boxed: the map moves only
/// a pointer, and a thread cache can revive the record of a block it holds
/// in place, at its fixed address ([`RecordRef`]), without the map.
///
/// The fields a revival writes (`requested`, `held`, `cached`) are atomics:
/// a revival writes them without the map's lock, while any thread may read
/// the record under that lock (a free, a query). A revival's block is in no
/// other thread's hands until the caller passes its pointer on, with
/// whatever synchronisation that takes; but a stray free of the old pointer
/// (a double free, safe code) may race it. So the revival publishes
/// `cached = false` last, with `Release`, and every read of `cached` is
/// `Acquire`: a reader that sees the record live sees its new `held` and
/// `requested` (else a plain free could take a block that the revival gave
/// to an owning handle, which then reads and writes memory handed out
/// again), and its free of the box comes after the revival's writes.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) owner: Owner,
    pub(crate) block: BlockRef,
    /// The block's size.
    pub(crate) size: usize,
    requested: AtomicUsize,
    /// The stream the block was allocated on.
    pub(crate) stream: u64,
    /// Other streams that used the block (`record_stream`): boxed, as few
    /// blocks have any, behind a thin pointer to keep the record small.
    /// Written only by [`OwnershipMap::add_use`], under the map's write
    /// lock of the record; read only under that lock or by the record's
    /// owner once it is out of the map (see [`Record::uses`]).
    uses: UnsafeCell<Option<Box<Uses>>>,
    /// Whether an owning handle (a `DeviceBuffer`) holds the block: then
    /// only that handle frees it ([`OwnershipMap::claim`] with `held`).
    held: AtomicBool,
    /// The block sits in the cache of the thread that allocated it: free
    /// for the user (not live), its record kept so that the thread's next
    /// hit revives it in place ([`OwnershipMap::revive_kept`]) instead of an
    /// insert and a remove per pair. Only that thread's hit revives it, and
    /// only a flush of its cache removes it ([`OwnershipMap::forget_cached`]).
    cached: AtomicBool,
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
            requested: AtomicUsize::new(requested),
            stream,
            uses: UnsafeCell::new(None),
            held: AtomicBool::new(held),
            cached: AtomicBool::new(false),
        }
    }

    /// The bytes requested for the block.
    #[inline]
    pub(crate) fn requested(&self) -> usize {
        self.requested.load(Ordering::Relaxed)
    }

    #[inline]
    fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// (`Acquire`: see the type's docs.)
    #[inline]
    fn cached(&self) -> bool {
        self.cached.load(Ordering::Acquire)
    }

    /// Marks the kept record live again, for `requested` bytes, held or not.
    #[inline]
    fn revive(&self, requested: usize, held: bool) {
        debug_assert!(self.cached(), "revived a live pointer");
        self.requested.store(requested, Ordering::Relaxed);
        self.held.store(held, Ordering::Relaxed);
        // Last, and `Release`: see the type's docs.
        self.cached.store(false, Ordering::Release);
    }

    /// The other streams that used the block.
    #[inline]
    pub(crate) fn uses(&self) -> &[u64] {
        // SAFETY: `uses` is written only under the map's write lock of the
        // record (`add_use`), and every `&Record` is reached under that
        // lock (read or write) or through the record's own box once out of
        // the map; a thread cache's `RecordRef` reaches only the atomics.
        let uses = unsafe { &*self.uses.get() };
        uses.as_deref().map_or(&[], |u| u.0.as_slice())
    }

    /// Notes that `stream` used the block, unless it is the block's own.
    ///
    /// # Safety
    ///
    /// The caller holds the map's write lock of the record, which is live
    /// (so no `&[u64]` from [`Record::uses`] is held elsewhere).
    unsafe fn add_use(&self, stream: u64) {
        // SAFETY: the caller's contract: no other access to `uses` now.
        let uses = unsafe { &mut *self.uses.get() };
        let known = uses.as_deref().is_some_and(|u| u.0.contains(&stream));
        if self.stream != stream && !known {
            uses.get_or_insert_with(Box::default).0.push(stream);
        }
    }

    /// The device the block is on.
    pub(crate) fn device(&self) -> usize {
        match &self.owner {
            Owner::Cache { device, .. } => *device,
            Owner::Pool(pool) => pool.get().device(),
        }
    }
}

// SAFETY: the fields of a record that change while others may read it are
// atomics, or `uses`, whose accesses the map's lock orders (see the field).
unsafe impl Sync for Record {}

impl Owner {
    /// What stays in a record whose owner was moved out (the record is
    /// no longer in the map: nothing reads it).
    pub(crate) const SPENT: Owner = Owner::Cache {
        device: usize::MAX,
        origin: Origin::SPENT,
    };
}

/// The other streams that used a block: a `Vec` behind the record's thin
/// pointer.
#[derive(Debug, Default)]
pub(crate) struct Uses(Vec<u64>);

/// What [`OwnershipMap::claim`] found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The pointer's record, removed: the caller frees the block.
    Claimed(Box<Record>),
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

thread_local! {
    /// Boxes of records this thread's frees took out of the map, for its
    /// next records: an allocation from the arena then costs no `malloc`
    /// and its free no `free` (a box's old contents are dropped when it is
    /// reused).
    // The boxes themselves are kept (their addresses are what is reused).
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Record>>> = const { RefCell::new(Vec::new()) };
}

/// Spare boxes a thread keeps at most.
const SPARE_MAX: usize = 1024;

/// `record` in a box: a spare one of the thread's, else a new one.
#[inline]
fn boxed(record: Record) -> RecordBox {
    let spare = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten();
    let boxed = match spare {
        Some(mut b) => {
            *b = record;
            b
        }
        None => Box::new(record),
    };
    RecordBox(NonNull::from(Box::leak(boxed)))
}

/// A record of the map, owned (a `Box` turned into a pointer): at a fixed
/// address, which a thread cache may reach through a [`RecordRef`] while
/// the map holds it. (A `Box` would claim its record unique wherever the
/// map moves it; this only shares it, as `Arc` does its contents.)
#[derive(Debug)]
pub(crate) struct RecordBox(NonNull<Record>);

// SAFETY: it owns its record as a `Box` would, and `Record` is `Send`.
unsafe impl Send for RecordBox {}
// SAFETY: it gives only shared access to its record, which is `Sync`.
unsafe impl Sync for RecordBox {}

impl RecordBox {
    /// The record back in a `Box`, once out of the map (a claimed record
    /// is live: no thread cache holds its address).
    fn into_box(self) -> Box<Record> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the pointer came from `Box::leak` and is owned by `this`,
        // which is not dropped: ownership moves to the new box.
        unsafe { Box::from_raw(this.0.as_ptr()) }
    }
}

impl std::ops::Deref for RecordBox {
    type Target = Record;
    #[inline]
    fn deref(&self) -> &Record {
        // SAFETY: the record lives until this box is dropped.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for RecordBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak`, and is dropped once.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Keeps the box of a record taken out of the map ([`Claim::Claimed`]),
/// once read, for the thread's next record.
#[inline]
pub(crate) fn recycle(record: Box<Record>) {
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_MAX {
            s.push(record);
        }
    });
}

/// The address of a record a thread cache keeps with its block
/// ([`Cached`](crate::thread_cache::Cached)), for
/// [`OwnershipMap::revive_kept`]: a record's box stays put while it is in
/// the map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef(NonNull<Record>);

// SAFETY: a `RecordRef` is only an address until `revive_kept` dereferences
// it, on the thread that took its block out of a cache, while the record is
// alive (that function's contract); the record is `Sync` (its fields that
// change after it is made are atomics, the others are written only under
// the map's lock).
unsafe impl Send for RecordRef {}
// SAFETY: as for `Send`: shared, it is only an address.
unsafe impl Sync for RecordRef {}

impl RecordRef {
    /// The address of `record`, a record in the map (boxed).
    #[inline]
    pub(crate) fn of(record: &Record) -> Self {
        RecordRef(NonNull::from(record))
    }
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

/// Shards of the ownership map (128 bytes of lock each, and a table
/// allocated on first use).
const MAP_SHARDS: usize = 1024;

/// Live pointer → owner. Removing a pointer's entry is what claims the right
/// to free it, so of two racing frees of one pointer exactly one proceeds.
#[derive(Debug)]
pub(crate) struct OwnershipMap {
    map: ConcurrentMap<u64, RecordBox, ScrambledKey>,
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
        let fresh = self.map.insert_new(key(ptr), boxed(record));
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
        let removed = self.map.remove_if(&key(ptr), |r| {
            let r: &Record = r;
            if r.cached() || r.held() != held {
                return false;
            }
            if keep(r) {
                r.cached.store(true, Ordering::Relaxed);
                kept = Some(Kept {
                    device: r.device(),
                    stream: r.stream,
                    requested: r.requested(),
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
            Some(record) => Claim::Claimed(record.into_box()),
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
            .with(&key(ptr), |r| r.revive(requested, held))
            .is_some()
    }

    /// [`OwnershipMap::revive`] of the record a thread cache held with its
    /// block (`record`, taken from the [`Cached`](crate::thread_cache::Cached)
    /// just taken out of the cache): in place, without the map.
    ///
    /// # Safety
    ///
    /// `record` is that of a block the caller just took out of its thread's
    /// cache (and has not handed out since): its record is then in the map,
    /// marked cached, at that address. (Only a flush removes a cached
    /// record, and only after taking its block out of the cache; a claim
    /// leaves a cached record alone; a record's box does not move.)
    #[inline]
    pub(crate) unsafe fn revive_kept(&self, record: RecordRef, requested: usize, held: bool) {
        // SAFETY: the caller's contract: the box behind `record` is alive.
        unsafe { record.0.as_ref() }.revive(requested, held);
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
        let _ = self.map.remove_if(&key(ptr), |r| r.cached());
    }

    /// Why [`OwnershipMap::claim`] found nothing to take (off the hot path).
    #[cold]
    #[inline(never)]
    fn unclaimed(&self, ptr: u64, held: bool) -> Claim {
        match self.map.with(&key(ptr), |r| r.held() && !r.cached()) {
            Some(true) if !held => Claim::Held,
            _ => Claim::NotLive,
        }
    }

    /// Notes that `stream` uses the live pointer `ptr`; `false` if `ptr` is
    /// not live.
    pub(crate) fn add_use(&self, ptr: u64, stream: u64) -> bool {
        self.map
            .with_mut(&key(ptr), |r| {
                if r.cached() {
                    return false;
                }
                // SAFETY: `with_mut` holds the map's write lock of the
                // record, which is live.
                unsafe { r.add_use(stream) };
                true
            })
            .unwrap_or(false)
    }

    /// The requested size of a live pointer.
    pub(crate) fn requested(&self, ptr: u64) -> Option<usize> {
        self.map
            .with(&key(ptr), |r| (!r.cached()).then(|| r.requested()))
            .flatten()
    }

    /// The device of a live pointer.
    pub(crate) fn device(&self, ptr: u64) -> Option<usize> {
        self.map
            .with(&key(ptr), |r| (!r.cached()).then(|| r.device()))
            .flatten()
    }

    /// For a live pointer: the id of its pool, or `None` for the cache.
    pub(crate) fn pool_id(&self, ptr: u64) -> Option<Option<u64>> {
        self.map
            .with(&key(ptr), |r| {
                (!r.cached()).then(|| match &r.owner {
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
            named |= !r.cached()
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
            if !r.cached() {
                out.insert(r.block.addr(), r.requested());
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
        self.map.for_each(|_, r| live += usize::from(!r.cached()));
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::{Arena, Class};

    /// A live record of a 4 KiB block carved from a fresh arena.
    fn record(arena: &mut Arena, requested: usize) -> Record {
        let carved = arena.try_alloc(0, 4096, requested).expect("carve");
        let owner = Owner::Cache {
            device: 0,
            origin: Origin::default(),
        };
        Record::new(owner, carved, requested, 0, false)
    }

    fn arena() -> Arena {
        let mut arena = Arena::new();
        arena.add_segment(0x1000_0000, 2 << 20, 0, Class::Small);
        arena
    }

    /// A map holding one record (4000 bytes requested, at 0x1000_0000)
    /// that a free kept for its thread's cache: the claim, and the address
    /// the cache took.
    fn kept_one(map: &OwnershipMap) -> (Claim, RecordRef) {
        map.insert(0x1000_0000, record(&mut arena(), 4000));
        let mut taken = None;
        let claim = map.claim(0x1000_0000, false, |r| {
            taken = Some(RecordRef::of(r));
            true
        });
        (claim, taken.expect("kept"))
    }

    /// A kept record is revived in place through the address the thread
    /// cache took, without the map: live again, with the new request.
    #[test]
    fn a_kept_record_revives_in_place_through_its_address() {
        let map = OwnershipMap::new();
        let (claim, kept) = kept_one(&map);
        assert!(matches!(claim, Claim::Kept(ref k) if k.requested == 4000));
        // Kept: not live (a second free is refused, nothing is removed).
        assert_eq!(map.requested(0x1000_0000), None);
        assert!(matches!(
            map.claim(0x1000_0000, false, |_| false),
            Claim::NotLive
        ));
        // SAFETY: the record is kept (cached) in the map; nothing removes it.
        unsafe { map.revive_kept(kept, 1000, false) };
        assert_eq!(map.requested(0x1000_0000), Some(1000));
        assert!(
            matches!(map.claim(0x1000_0000, false, |_| false), Claim::Claimed(r) if r.requested() == 1000)
        );
        assert_eq!(map.len(), 0);
    }

    /// A double free racing a revival through the kept address (another
    /// thread's, without the map's lock) never takes the record: it finds
    /// it cached, or live and held, never live and not yet held. (Under
    /// Miri, whose weak-memory emulation lets a relaxed load see an older
    /// store, this failed with the revival's stores all relaxed; loom
    /// model 19 checks it on the allocator.)
    #[test]
    fn a_double_free_racing_a_revival_finds_it_cached_or_held() {
        for _ in 0..20 {
            let map = OwnershipMap::new();
            let (_, kept) = kept_one(&map);
            std::thread::scope(|s| {
                // SAFETY: the record stays in the map, cached, until revived
                // (the racing claim takes only a live record not held).
                s.spawn(|| unsafe { map.revive_kept(kept, 1000, true) });
                s.spawn(|| {
                    let claim = map.claim(0x1000_0000, false, |_| false);
                    assert!(matches!(claim, Claim::NotLive | Claim::Held), "{claim:?}");
                });
            });
            assert_eq!(map.requested(0x1000_0000), Some(1000));
            assert!(matches!(
                map.claim(0x1000_0000, true, |_| false),
                Claim::Claimed(_)
            ));
        }
    }

    /// A claimed record's box, recycled, holds the thread's next record:
    /// the new record's own figures, not the old ones.
    #[test]
    fn a_recycled_box_holds_the_next_record_afresh() {
        let map = OwnershipMap::new();
        let mut arena = arena();
        map.insert(0x1000_0000, record(&mut arena, 4000));
        let Claim::Claimed(first) = map.claim(0x1000_0000, false, |_| false) else {
            panic!("claimed");
        };
        let address: *const Record = &*first;
        recycle(first);
        let next = record(&mut arena, 10);
        let at = next.block.addr();
        map.insert(at, next);
        let reused = map.map.with(&key(at), |r| std::ptr::eq(&**r, address));
        assert_eq!(reused, Some(true), "the spare box was reused");
        assert_eq!(map.requested(at), Some(10));
        assert!(map.add_use(at, 7));
        let Claim::Claimed(second) = map.claim(at, false, |_| false) else {
            panic!("claimed");
        };
        assert_eq!(second.uses(), &[7]);
    }
}
