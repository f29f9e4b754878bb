//! The checking oracle shared by the reliability tests (`tests/stress.rs`,
//! `tests/faults.rs`, `tests/bad_input.rs`) and by the fuzz target in
//! `fuzz/`, which includes this file with `#[path]`.
//!
//! It keeps a model of what must be true of an [`Allocator`] on the host
//! backend and checks the allocator against it:
//!
//! - [`TrackingBackend`] is the library's tracking adaptor over a fault
//!   adaptor over a [`HostBackend`]: it records every segment the allocator
//!   reserves and releases, so the oracle can check that every live block
//!   lies inside one reserved segment, that segments never overlap, and that
//!   every release names exactly a segment that was reserved (base and
//!   size), once.
//! - [`Model`] mirrors every live block as an interval `[ptr, ptr + extent)`
//!   (`extent` = the request rounded up to 512 B, which the block is
//!   guaranteed to cover) with its owner (the caching allocator or a pool),
//!   checks each new block against its neighbours as it is recorded, and
//!   [`Model::check`] asserts the whole picture: no overlap, containment in
//!   segments, and the statistics equal to the model's sums.
//! - [`Harness`] drives one allocator from one thread through the model and
//!   checks every call's effect on the statistics (an error changes nothing).
//! - [`run_ops`] decodes a byte string into operations on a [`Harness`]: the
//!   body of the fuzz target, also driven by seeded random bytes on stable.
//!
//! Nothing here needs a crate beyond `graphalloc` and `std`, so the fuzz crate
//! can include it as is.
#![allow(dead_code)]

use graphalloc::backend::{FaultAdaptor, TrackingAdaptor};
use graphalloc::{
    Allocator, Backend, BackendError, DevicePtr, Error, GraphModeGuard, GraphPool, HostBackend,
    MemoryUsageStats, PoolStats, BLOCK_ROUND, MAX_ALIGNMENT, SMALL_REQUEST_MAX,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// One KiB.
pub const KIB: usize = 1 << 10;
/// One MiB.
pub const MIB: usize = 1 << 20;
/// One GiB.
pub const GIB: usize = 1 << 30;

/// Locks a std mutex, ignoring poisoning (a panicking test thread fails the
/// test anyway; the others should still report).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` rounded up to a multiple of `to` (a power of two).
pub fn round_up(n: usize, to: usize) -> usize {
    (n + to - 1) & !(to - 1)
}

/// The segment size graphalloc reserves for a request of `rounded` bytes
/// (mirrors `arena::segment_size`, which is private): 2 MiB for small
/// requests, 20 MiB for large ones under 10 MiB, else the request rounded up
/// to 2 MiB.
pub fn expected_segment_size(rounded: usize) -> usize {
    if rounded <= SMALL_REQUEST_MAX {
        2 * MIB
    } else if rounded < 10 * MIB {
        20 * MIB
    } else {
        round_up(rounded, 2 * MIB)
    }
}

/// The smallest block graphalloc may carve for `size` bytes aligned to
/// `align`: the request plus alignment padding, rounded up to 512 B.
pub fn min_block_size(size: usize, align: usize) -> usize {
    round_up(size + align.saturating_sub(BLOCK_ROUND), BLOCK_ROUND)
}

/// A barrier for test threads that fails instead of hanging when one of
/// them has panicked (the panicking thread calls [`Rendezvous::abort`]).
pub struct Rendezvous {
    state: Mutex<(usize, u64)>,
    cv: Condvar,
    n: usize,
    aborted: AtomicBool,
}

impl Rendezvous {
    /// A barrier for `n` threads.
    pub fn new(n: usize) -> Self {
        Rendezvous {
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            n,
            aborted: AtomicBool::new(false),
        }
    }

    /// Makes every waiting and later `wait` panic.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// Waits for all `n` threads; returns `true` in exactly one of them.
    pub fn wait(&self) -> bool {
        let mut st = lock(&self.state);
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.n {
            st.0 = 0;
            st.1 += 1;
            self.cv.notify_all();
            return true;
        }
        while st.1 == generation {
            assert!(
                !self.aborted.load(Ordering::SeqCst),
                "another test thread failed"
            );
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        false
    }
}

/// Runs `body(t)` on `n` scoped threads; a panic in one aborts `barrier`
/// (so the others fail instead of waiting forever) and is re-raised here.
pub fn run_threads(n: usize, barrier: &Rendezvous, body: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let body = &body;
                s.spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(t)));
                    if let Err(panic) = result {
                        barrier.abort();
                        std::panic::resume_unwind(panic);
                    }
                })
            })
            .collect();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// The tracking backend
// ---------------------------------------------------------------------------

/// The layers the oracle runs on: a [`HostBackend`] behind a [`FaultAdaptor`]
/// (so tests can fail chosen reservations) behind the library's
/// [`TrackingAdaptor`].
type Tracked = TrackingAdaptor<FaultAdaptor<HostBackend>>;

/// The backend the oracle runs on: it records every segment, range and page
/// the allocator holds (the allocator does not list them) and every call it
/// makes wrong (a release of a segment it does not hold, with the wrong
/// size, twice; an overlap) as a violation instead of reaching the host. It
/// derefs to the tracking adaptor (`segments`, `violations`, `contains`).
pub struct TrackingBackend {
    tracked: Arc<Tracked>,
}

impl std::ops::Deref for TrackingBackend {
    type Target = Tracked;

    fn deref(&self) -> &Tracked {
        &self.tracked
    }
}

impl TrackingBackend {
    /// A tracked host device 0 of `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_ordinal(0, capacity)
    }

    /// A tracked host device `ordinal` of `capacity` bytes.
    pub fn with_ordinal(ordinal: usize, capacity: usize) -> Arc<Self> {
        let host = HostBackend::new(ordinal, capacity);
        Arc::new(TrackingBackend {
            tracked: Arc::new(TrackingAdaptor::new(FaultAdaptor::new(host))),
        })
    }

    /// The backend to build an allocator on.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.tracked.clone()
    }

    /// The fault-injecting layer (`fail_reservation`, `reservations`).
    pub fn faults(&self) -> &FaultAdaptor<HostBackend> {
        self.tracked.inner()
    }

    /// The simulated device (`outstanding_bytes`, streams).
    pub fn host(&self) -> &HostBackend {
        self.tracked.inner().inner()
    }
}

/// An allocator over one tracked host device.
pub fn tracked_allocator(capacity: usize) -> (Allocator, Arc<TrackingBackend>) {
    tracked_allocator_with_fraction(capacity, 1.0)
}

/// An allocator over one tracked host device, with the settings of `config`
/// (its backend keys unused): sharded caches, expandable segments.
pub fn tracked_allocator_with(
    capacity: usize,
    config: &graphalloc::Config,
) -> (Allocator, Arc<TrackingBackend>) {
    let backend = TrackingBackend::new(capacity);
    let alloc =
        Allocator::from_backends_with(vec![backend.backend()], config).expect("one backend given");
    (alloc, backend)
}

/// An allocator over one tracked host device, with a memory fraction.
pub fn tracked_allocator_with_fraction(
    capacity: usize,
    memory_fraction: f64,
) -> (Allocator, Arc<TrackingBackend>) {
    let backend = TrackingBackend::new(capacity);
    let config = plain(memory_fraction);
    let alloc =
        Allocator::from_backends_with(vec![backend.backend()], &config).expect("one backend given");
    (alloc, backend)
}

/// Plain segments under a memory fraction.
pub fn plain(memory_fraction: f64) -> graphalloc::Config {
    graphalloc::Config {
        memory_fraction,
        expandable_segments: false,
        ..graphalloc::Config::default()
    }
}

// ---------------------------------------------------------------------------
// Byte patterns
// ---------------------------------------------------------------------------

/// Writes `tag` into the first byte of `[ptr, ptr + size)` and `!tag` into
/// its last byte (a one-byte block gets `tag`).
///
/// The caller must own the live block `[ptr, ptr + size)` of a host-backend
/// allocator, and no other thread may access those bytes.
pub fn stamp(ptr: u64, size: usize, tag: u8) {
    assert!(size > 0);
    let first = ptr as usize as *mut u8;
    let last = (ptr as usize + size - 1) as *mut u8;
    // SAFETY: on the host backend a live block is host memory inside a
    // segment from `std::alloc`; `ptr..ptr + size` is the caller's live block
    // (the oracle checked it lies inside a held segment), so both bytes are
    // valid for writes and no one else touches them.
    unsafe {
        last.write_volatile(!tag);
        first.write_volatile(tag);
    }
}

/// Checks the bytes [`stamp`] wrote; panics naming the block if they changed.
pub fn verify_stamp(ptr: u64, size: usize, tag: u8) {
    let first = ptr as usize as *const u8;
    let last = (ptr as usize + size - 1) as *const u8;
    // SAFETY: as in `stamp`: the caller's live block, written by `stamp`.
    let (a, b) = unsafe { (first.read_volatile(), last.read_volatile()) };
    let want_last = if size == 1 { tag } else { !tag };
    assert_eq!(
        (a, b),
        (tag, want_last),
        "byte pattern of block {ptr:#x}+{size} was overwritten"
    );
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// Who must own a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// Device 0's caching allocator.
    Cache,
    /// The graph pool with this id.
    Pool(u64),
}

/// A live block as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The pointer handed out.
    pub ptr: u64,
    /// The bytes requested.
    pub size: usize,
    /// The alignment requested.
    pub align: usize,
    /// Who must own it.
    pub owner: Owner,
    /// The byte pattern written into it.
    pub tag: u8,
}

impl Block {
    /// Bytes from `ptr` that the block is guaranteed to cover exclusively:
    /// the request rounded up to 512 B (blocks start and end on 512 B).
    pub fn extent(&self) -> usize {
        round_up(self.size, BLOCK_ROUND)
    }

    /// The end of the guaranteed extent.
    pub fn end(&self) -> u64 {
        self.ptr + self.extent() as u64
    }

    /// Writes the block's byte pattern.
    pub fn stamp(&self) {
        stamp(self.ptr, self.size, self.tag)
    }

    /// Checks the block's byte pattern.
    pub fn verify(&self) {
        verify_stamp(self.ptr, self.size, self.tag)
    }
}

/// Sums over a set of blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    /// Blocks.
    pub count: usize,
    /// Bytes requested.
    pub requested: usize,
    /// Lower bound of the bytes allocated (see [`min_block_size`]).
    pub min_allocated: usize,
}

impl Sums {
    fn add(&mut self, b: &Block) {
        self.count += 1;
        self.requested += b.size;
        self.min_allocated += min_block_size(b.size, b.align);
    }
}

/// Every live block, by pointer.
#[derive(Debug, Default)]
pub struct Model {
    live: BTreeMap<u64, Block>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Model::default()
    }

    /// Records a block just handed out, after checking that its pointer is
    /// aligned and that it overlaps no live block. Panics otherwise.
    ///
    /// Record a block only *after* the allocator returned it, and remove it
    /// *before* freeing it: then the recorded set is a subset of the really
    /// live blocks even with many threads, and any overlap seen is real.
    pub fn insert(&mut self, b: Block) {
        assert!(b.ptr != 0, "null pointer handed out: {b:?}");
        assert_eq!(b.ptr % b.align as u64, 0, "misaligned pointer: {b:?}");
        assert_eq!(b.ptr % BLOCK_ROUND as u64, 0, "pointer not on 512 B: {b:?}");
        if let Some((_, prev)) = self.live.range(..=b.ptr).next_back() {
            assert!(
                prev.end() <= b.ptr,
                "new block {b:?} overlaps live {prev:?}"
            );
        }
        if let Some((_, next)) = self.live.range(b.ptr + 1..).next() {
            assert!(
                b.end() <= next.ptr,
                "new block {b:?} overlaps live {next:?}"
            );
        }
        self.live.insert(b.ptr, b);
    }

    /// Removes a live block from the model (before freeing it).
    pub fn remove(&mut self, ptr: u64) -> Option<Block> {
        self.live.remove(&ptr)
    }

    /// The live block at `ptr`.
    pub fn get(&self, ptr: u64) -> Option<&Block> {
        self.live.get(&ptr)
    }

    /// The live block whose guaranteed extent contains `addr`.
    pub fn containing(&self, addr: u64) -> Option<&Block> {
        self.live
            .range(..=addr)
            .next_back()
            .map(|(_, b)| b)
            .filter(|b| addr < b.end())
    }

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The live blocks, by address.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.live.values()
    }

    /// The `i`th live block by address (`i` taken modulo the count).
    pub fn nth(&self, i: usize) -> Option<Block> {
        if self.live.is_empty() {
            return None;
        }
        self.live.values().nth(i % self.live.len()).copied()
    }

    /// Sums over the blocks of one owner (`Some`) or of all pools (`None`
    /// with `pools_only`), or of everything.
    pub fn sums(&self, filter: impl Fn(Owner) -> bool) -> Sums {
        let mut s = Sums::default();
        for b in self.live.values().filter(|b| filter(b.owner)) {
            s.add(b);
        }
        s
    }

    /// Live blocks of pool `id`.
    pub fn pool_blocks(&self, id: u64) -> usize {
        self.live
            .values()
            .filter(|b| b.owner == Owner::Pool(id))
            .count()
    }

    /// Checks the allocator against the model; panics on the first mismatch.
    /// Call only when no allocation or free is in flight.
    ///
    /// `pools` are pool handles whose own figures are checked too (pools
    /// without a handle are checked through the pools' sum only).
    pub fn check(&self, alloc: &Allocator, backend: &TrackingBackend, pools: &[&GraphPool]) {
        let violations = backend.violations();
        assert!(violations.is_empty(), "backend violations: {violations:?}");

        // 1. No two live blocks overlap; 2. each lies inside one segment.
        let segments = backend.segments();
        let mut prev: Option<&Block> = None;
        for b in self.live.values() {
            if let Some(p) = prev {
                assert!(p.end() <= b.ptr, "live blocks overlap: {p:?} and {b:?}");
            }
            prev = Some(b);
            let seg = segments.range(..=b.ptr).next_back();
            assert!(
                matches!(seg, Some((&base, &size)) if b.end() <= base + size as u64)
                    || backend.contains(b.ptr, b.extent()),
                "live block {b:?} is not inside a held segment (nearest below: {seg:?})"
            );
        }

        // Segments never overlap either.
        let mut seg_end = 0u64;
        for (&base, &size) in &segments {
            assert!(base >= seg_end, "segments overlap at {base:#x}");
            seg_end = base + size as u64;
        }

        // 3. The statistics equal the model's sums.
        let s = alloc.stats();
        let all = self.sums(|_| true);
        let cache = self.sums(|o| o == Owner::Cache);
        let pooled = self.sums(|o| o != Owner::Cache);
        let ctx = || format!("\nmodel: {all:?} cache {cache:?} pools {pooled:?}\nstats:\n{s}");
        assert_eq!(
            s.total.requested_bytes,
            all.requested,
            "total requested{}",
            ctx()
        );
        assert_eq!(s.total.live_blocks, all.count, "total live{}", ctx());
        assert_eq!(
            s.caching.requested_bytes,
            cache.requested,
            "caching requested{}",
            ctx()
        );
        assert_eq!(s.caching.live_blocks, cache.count, "caching live{}", ctx());
        assert_eq!(
            s.pools.requested_bytes,
            pooled.requested,
            "pools requested{}",
            ctx()
        );
        assert_eq!(s.pools.live_blocks, pooled.count, "pools live{}", ctx());
        assert!(
            s.caching.allocated_bytes >= cache.min_allocated,
            "caching allocated below the model's bound{}",
            ctx()
        );
        assert!(
            s.pools.allocated_bytes >= pooled.min_allocated,
            "pools allocated below the model's bound{}",
            ctx()
        );
        for p in pools {
            let ps = p.stats();
            let own = self.sums(|o| o == Owner::Pool(p.id()));
            assert_eq!(ps.live_blocks, own.count, "pool {} live{}", p.id(), ctx());
            assert_eq!(
                ps.requested_bytes,
                own.requested,
                "pool {} requested{}",
                p.id(),
                ctx()
            );
            assert!(ps.allocated_bytes >= own.min_allocated);
            assert!(ps.allocated_bytes <= ps.reserved_bytes);
            assert_eq!(ps.allocations - ps.frees, ps.live_blocks as u64);
            check_peaks(&ps, "pool");
        }
        for (name, side) in [("caching", &s.caching), ("pools", &s.pools)] {
            assert!(
                side.allocated_bytes <= side.reserved_bytes,
                "{name}: allocated > reserved{}",
                ctx()
            );
            assert_eq!(
                side.allocations - side.frees,
                side.live_blocks as u64,
                "{name}: allocations - frees != live blocks{}",
                ctx()
            );
            check_peaks(side, name);
        }
        check_peaks(&s.total, "total");
        let sum = |f: fn(&PoolStats) -> usize| f(&s.caching) + f(&s.pools);
        assert_eq!(s.total.allocated_bytes, sum(|p| p.allocated_bytes));
        assert_eq!(s.total.reserved_bytes, sum(|p| p.reserved_bytes));
        assert_eq!(s.total.segments, sum(|p| p.segments));
        assert_eq!(
            s.total.allocations,
            s.caching.allocations + s.pools.allocations
        );
        assert_eq!(s.total.frees, s.caching.frees + s.pools.frees);

        // Reserved bytes agree with the segments (and mapped pages) the
        // backend holds.
        let seg_bytes: usize = segments.values().sum::<usize>() + backend.mapped_bytes();
        assert_eq!(
            s.total.reserved_bytes,
            seg_bytes,
            "reserved vs held segments{}",
            ctx()
        );
        // Each expandable segment is one address range.
        assert_eq!(
            s.total.segments,
            segments.len() + backend.ranges().len(),
            "segment count{}",
            ctx()
        );
        assert_eq!(backend.host().outstanding_bytes(), seg_bytes);

        // 4. The ownership map agrees: count, sizes, device.
        assert_eq!(alloc.live_pointers(), all.count, "live_pointers{}", ctx());
        for b in self.live.values() {
            assert_eq!(
                alloc.requested_size(DevicePtr::new(b.ptr)),
                Some(b.size),
                "{b:?}"
            );
            assert_eq!(alloc.device_of(DevicePtr::new(b.ptr)), Some(0), "{b:?}");
        }
    }
}

fn check_peaks(p: &PoolStats, name: &str) {
    assert!(
        p.peak_allocated_bytes >= p.allocated_bytes,
        "{name}: peak allocated below allocated: {p:?}"
    );
    assert!(
        p.peak_reserved_bytes >= p.reserved_bytes,
        "{name}: peak reserved below reserved: {p:?}"
    );
}

/// Asserts that an allocator is back to nothing: no live block, no reserved
/// byte, no segment held by the backend.
pub fn assert_empty(alloc: &Allocator, backend: &TrackingBackend) {
    let s = alloc.stats();
    for (name, p) in [
        ("caching", s.caching),
        ("pools", s.pools),
        ("total", s.total),
    ] {
        assert_eq!(p.allocated_bytes, 0, "{name} allocated\n{s}");
        assert_eq!(p.requested_bytes, 0, "{name} requested\n{s}");
        assert_eq!(p.reserved_bytes, 0, "{name} reserved\n{s}");
        assert_eq!(p.live_blocks, 0, "{name} live\n{s}");
        assert_eq!(p.segments, 0, "{name} segments\n{s}");
        assert_eq!(p.pending_frees, 0, "{name} pending frees\n{s}");
        assert_eq!(p.allocations, p.frees, "{name} allocations vs frees\n{s}");
    }
    assert_eq!(alloc.live_pointers(), 0);
    assert_eq!(
        backend.host().outstanding_bytes(),
        0,
        "host bytes outstanding"
    );
    assert!(backend.segments().is_empty(), "segments still held");
    assert_eq!(backend.mapped_bytes(), 0, "pages still mapped");
    assert!(backend.ranges().is_empty(), "address ranges still held");
    let violations = backend.violations();
    assert!(violations.is_empty(), "backend violations: {violations:?}");
}

/// Asserts the figures an error may not change are unchanged: everything,
/// except that a request that found the device full may have released the
/// caching allocator's idle segments and counted one OOM retry (the
/// documented exception, `Error`'s docs).
pub fn assert_unchanged_but_reclaim(
    before: &MemoryUsageStats,
    after: &MemoryUsageStats,
    what: &str,
) {
    let sides = [
        ("caching", &before.caching, &after.caching),
        ("pools", &before.pools, &after.pools),
        ("total", &before.total, &after.total),
    ];
    for (name, b, a) in sides {
        let msg = || format!("{what}: {name} changed\nbefore:\n{before}\nafter:\n{after}");
        assert_eq!(a.allocated_bytes, b.allocated_bytes, "{}", msg());
        assert_eq!(a.requested_bytes, b.requested_bytes, "{}", msg());
        assert_eq!(a.live_blocks, b.live_blocks, "{}", msg());
        assert_eq!(a.allocations, b.allocations, "{}", msg());
        assert_eq!(a.frees, b.frees, "{}", msg());
        assert_eq!(a.peak_allocated_bytes, b.peak_allocated_bytes, "{}", msg());
        assert_eq!(a.peak_reserved_bytes, b.peak_reserved_bytes, "{}", msg());
        assert_eq!(a.segments_reserved, b.segments_reserved, "{}", msg());
        assert!(a.reserved_bytes <= b.reserved_bytes, "{}", msg());
        assert!(a.segments <= b.segments, "{}", msg());
        assert!(
            a.oom_retries == b.oom_retries || a.oom_retries == b.oom_retries + 1,
            "{}",
            msg()
        );
    }
    // Only the caching allocator's idle segments may go.
    assert_eq!(after.pools.reserved_bytes, before.pools.reserved_bytes);
    assert_eq!(after.in_graph_mode, before.in_graph_mode);
}

// ---------------------------------------------------------------------------
// The single-thread harness
// ---------------------------------------------------------------------------

/// One allocator over a tracked host device, driven from one thread through
/// the model. Every call checks its effect on the statistics.
pub struct Harness {
    /// The tracked device.
    pub backend: Arc<TrackingBackend>,
    /// The allocator under test.
    pub alloc: Allocator,
    /// The live blocks.
    pub model: Model,
    /// Pool handles (a slot may be replaced by a fresh pool).
    pub pools: Vec<GraphPool>,
    /// Active graph-mode guards, oldest first, with their pool ids.
    guards: Vec<(GraphModeGuard, u64)>,
    next_tag: u8,
}

impl Harness {
    /// A harness over a device of `capacity` bytes with `pools` graph pools.
    /// Plain segments (`expandable_segments:false`): the harness's
    /// expectations of segment sizes are theirs; `with_config` for others.
    pub fn new(capacity: usize, pools: usize) -> Self {
        Harness::with_config(capacity, pools, &plain(1.0))
    }

    /// A harness whose allocator has the settings of `config`.
    pub fn with_config(capacity: usize, pools: usize, config: &graphalloc::Config) -> Self {
        let (alloc, backend) = tracked_allocator_with(capacity, config);
        let pools = (0..pools).map(|_| alloc.create_pool()).collect();
        Harness {
            backend,
            alloc,
            model: Model::new(),
            pools,
            guards: Vec::new(),
            next_tag: 1,
        }
    }

    /// The owner an allocation made now must get: the pool of the innermost
    /// live guard (guards dropped out of order remove only their own entry,
    /// `src/mode.rs`), else the caching allocator.
    pub fn current_owner(&self) -> Owner {
        self.guards
            .last()
            .map_or(Owner::Cache, |(_, id)| Owner::Pool(*id))
    }

    /// Graph-mode depth.
    pub fn depth(&self) -> usize {
        self.guards.len()
    }

    /// Allocates through the allocator; on success records, stamps and checks
    /// the block and the statistics' deltas; on error checks that nothing
    /// changed (but a reclaim, for errors that may come after one).
    pub fn allocate(&mut self, size: usize, align: usize) -> Result<Block, Error> {
        let before = self.alloc.stats();
        let owner = self.current_owner();
        match self.alloc.allocate(size, align) {
            Ok(ptr) => {
                let tag = self.next_tag;
                self.next_tag = self.next_tag.wrapping_add(1).max(1);
                let b = Block {
                    ptr: ptr.addr(),
                    size,
                    align,
                    owner,
                    tag,
                };
                self.model.insert(b);
                assert!(
                    self.backend.contains(b.ptr, b.extent()),
                    "{b:?} outside every held segment"
                );
                b.stamp();
                let after = self.alloc.stats();
                let (side_b, side_a, other_b, other_a) = match owner {
                    Owner::Cache => (before.caching, after.caching, before.pools, after.pools),
                    Owner::Pool(_) => (before.pools, after.pools, before.caching, after.caching),
                };
                assert_eq!(
                    side_a.live_blocks,
                    side_b.live_blocks + 1,
                    "routed to {owner:?}"
                );
                assert_eq!(side_a.requested_bytes, side_b.requested_bytes + size);
                assert_eq!(side_a.allocations, side_b.allocations + 1);
                assert!(
                    side_a.allocated_bytes >= side_b.allocated_bytes + min_block_size(size, align)
                );
                assert_eq!(
                    other_a.live_blocks, other_b.live_blocks,
                    "routed to {owner:?}"
                );
                assert_eq!(other_a.allocations, other_b.allocations);
                Ok(b)
            }
            Err(e) => {
                let after = self.alloc.stats();
                match &e {
                    Error::ZeroSize | Error::InvalidAlignment { .. } => {
                        assert_eq!(before, after, "{e}: stats changed")
                    }
                    _ => assert_unchanged_but_reclaim(&before, &after, &e.to_string()),
                }
                Err(e)
            }
        }
    }

    /// Frees a block the model knows: checks its pattern, removes it from
    /// the model, frees it (which must succeed) and checks the deltas.
    pub fn free_block(&mut self, ptr: u64) {
        let b = self
            .model
            .remove(ptr)
            .expect("freeing a block the model knows");
        b.verify();
        let before = self.alloc.stats();
        self.alloc
            .free(DevicePtr::new(ptr))
            .unwrap_or_else(|e| panic!("free of live {b:?}: {e}"));
        let after = self.alloc.stats();
        let (side_b, side_a) = match b.owner {
            Owner::Cache => (before.caching, after.caching),
            Owner::Pool(_) => (before.pools, after.pools),
        };
        assert_eq!(side_a.live_blocks + 1, side_b.live_blocks, "free of {b:?}");
        assert_eq!(side_a.requested_bytes + b.size, side_b.requested_bytes);
        assert_eq!(side_a.frees, side_b.frees + 1);
    }

    /// Frees a pointer the model does not hold live: must fail, changing
    /// nothing. Returns the error.
    pub fn free_bad(&mut self, ptr: u64) -> Error {
        assert!(self.model.get(ptr).is_none(), "{ptr:#x} is live");
        let before = self.alloc.stats();
        let live = self.alloc.live_pointers();
        let err = self
            .alloc
            .free(DevicePtr::new(ptr))
            .expect_err("free of a pointer that is not live must fail");
        assert_eq!(
            before,
            self.alloc.stats(),
            "bad free {ptr:#x} changed stats"
        );
        assert_eq!(live, self.alloc.live_pointers());
        err
    }

    /// Enters graph mode on pool slot `i`.
    pub fn enter(&mut self, i: usize) {
        let pool = &self.pools[i % self.pools.len()];
        let id = pool.id();
        let guard = self
            .alloc
            .enter_graph_mode(pool)
            .expect("own pool: enter must succeed");
        self.guards.push((guard, id));
        assert!(self.alloc.is_graph_mode());
    }

    /// Drops the guard at position `i` of the stack (the last one = in
    /// order; any other = out of order).
    pub fn exit(&mut self, i: usize) {
        if self.guards.is_empty() {
            return;
        }
        let i = i % self.guards.len();
        drop(self.guards.remove(i));
        assert_eq!(self.alloc.is_graph_mode(), !self.guards.is_empty());
    }

    /// Drops every guard, innermost first.
    pub fn exit_all(&mut self) {
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
        assert!(!self.alloc.is_graph_mode());
    }

    /// Resets pool slot `i`: must succeed iff the model holds no live block
    /// of it, else fail with the exact `PoolBusy`; changes no figure but the
    /// pool's peaks.
    pub fn reset(&mut self, i: usize) -> Result<(), Error> {
        let pool = &self.pools[i % self.pools.len()];
        let live = self.model.pool_blocks(pool.id());
        let ps = pool.stats();
        let result = self.alloc.reset_graph_pool(pool);
        if live == 0 {
            assert_eq!(result, Ok(()), "reset of an idle pool");
            let after = pool.stats();
            assert_eq!(after.peak_allocated_bytes, after.allocated_bytes);
            assert_eq!(
                after.reserved_bytes, ps.reserved_bytes,
                "reset keeps segments"
            );
        } else {
            assert_eq!(
                result,
                Err(Error::PoolBusy {
                    pool: pool.id(),
                    live_blocks: live,
                    allocated: ps.allocated_bytes,
                })
            );
            assert_eq!(pool.stats(), ps, "a refused reset changes nothing");
        }
        result
    }

    /// Replaces pool slot `i` by a fresh pool. The old pool lives on while
    /// guards or live blocks hold it, and retires when both are gone.
    pub fn replace_pool(&mut self, i: usize) {
        let i = i % self.pools.len();
        self.pools[i] = self.alloc.create_pool();
    }

    /// Empties the cache: the bytes released must be exactly the drop in
    /// the caching allocator's reserved bytes; pools keep theirs.
    pub fn empty_cache(&mut self) -> usize {
        let before = self.alloc.stats();
        let released = self.alloc.empty_cache().expect("host release never fails");
        let after = self.alloc.stats();
        assert_eq!(
            released,
            before.caching.reserved_bytes - after.caching.reserved_bytes
        );
        assert_eq!(after.pools.reserved_bytes, before.pools.reserved_bytes);
        assert_eq!(
            after.caching.allocated_bytes,
            before.caching.allocated_bytes
        );
        released
    }

    /// Runs the full oracle check.
    pub fn check(&self) {
        let pools: Vec<&GraphPool> = self.pools.iter().collect();
        self.model.check(&self.alloc, &self.backend, &pools);
    }

    /// Frees everything, leaves graph mode, drops the pools, empties the
    /// cache, and asserts that nothing is left: no block, no reserved byte,
    /// no segment held by the backend.
    pub fn teardown(mut self) {
        self.backend.faults().clear_faults();
        self.exit_all();
        let ptrs: Vec<u64> = self.model.blocks().map(|b| b.ptr).collect();
        for p in ptrs {
            self.free_block(p);
        }
        self.check();
        self.pools.clear();
        self.empty_cache();
        assert_empty(&self.alloc, &self.backend);
    }
}

// ---------------------------------------------------------------------------
// The fuzz body: bytes → operations
// ---------------------------------------------------------------------------

/// Capacity of the device in [`run_ops`]: small enough that large requests
/// run it out of memory, and that segments are cheap to reserve and release
/// under the fuzzer's AddressSanitizer.
pub const OPS_CAPACITY: usize = 64 * MIB;
/// At most this many operations per input.
pub const OPS_MAX: usize = 2000;

/// What one [`run_ops`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpsSummary {
    /// Operations decoded and run.
    pub ops: usize,
    /// Successful allocations.
    pub allocations: usize,
    /// Successful frees.
    pub frees: usize,
    /// Calls that returned a typed error, as expected.
    pub errors: usize,
    /// Injected faults that fired.
    pub faults: usize,
}

/// A fuzz input, read a byte at a time (zeros past its end).
pub struct Bytes<'a> {
    data: &'a [u8],
    /// The next byte to read.
    pub pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

/// Decodes `data` into a sequence of operations on a fresh allocator (two
/// graph pools, a 64 MiB device; the first byte picks the settings: the
/// defaults, a sharded cache, expandable segments, or both) and runs them, checking every step with
/// the oracle; at the end frees everything and checks that nothing is left.
/// Panics on any violation. The body of the fuzz target `ops`.
///
/// Each operation is one byte (its kind, modulo 12) and its arguments:
/// allocate (size class + size + alignment), free, bad free (interior,
/// double, unknown), enter graph mode, leave graph mode (any guard, so also
/// out of order), reset a pool, empty the cache, arm an injected fault,
/// replace a pool, and odd requests (size 0, huge, bad alignments).
pub fn run_ops(data: &[u8]) -> OpsSummary {
    let mut bytes = Bytes { data, pos: 0 };
    // The first byte picks the allocator's settings.
    let text = match bytes.u8() % 4 {
        0 => "expandable_segments:false",
        1 => "shards:2,expandable_segments:false",
        2 => "",
        _ => "shards:3",
    };
    let config = graphalloc::Config::parse(text).expect("a valid configuration");
    let mut h = Harness::with_config(OPS_CAPACITY, 2, &config);
    // GRAPHALLOC_OPS_TRACE=1 prints each operation (to replay a failure).
    let trace = std::env::var_os("GRAPHALLOC_OPS_TRACE").is_some();
    if trace {
        eprintln!("settings: {text:?}");
    }
    let mut sum = OpsSummary::default();
    // Absolute reservation numbers armed to fail and not yet seen failing.
    let mut armed: BTreeSet<u64> = BTreeSet::new();
    let mut freed: Vec<u64> = Vec::new();

    while !bytes.done() && sum.ops < OPS_MAX {
        sum.ops += 1;
        let op = bytes.u8() % 12;
        if trace {
            let s = h.alloc.stats();
            eprintln!(
                "op {op:2} at byte {}: depth {}, live {}, caching reserved {} (peak {}), \
                 pools reserved {}, mapped {}, reservations {}",
                bytes.pos - 1,
                h.depth(),
                h.model.len(),
                s.caching.reserved_bytes,
                s.caching.peak_reserved_bytes,
                s.pools.reserved_bytes,
                h.backend.mapped_bytes(),
                h.backend.faults().reservations()
            );
        }
        match op {
            0..=3 => {
                let class = bytes.u8();
                let raw = bytes.u16() as usize;
                let size = 1 + match class % 8 {
                    0..=2 => raw % 256,
                    3 | 4 => raw,
                    5 => raw << 4,
                    6 => raw << 6,
                    _ => raw << 8,
                };
                let align = 1usize << (bytes.u8() % 22);
                allocate_op(&mut h, &mut sum, &mut armed, size, align);
            }
            4 | 5 => {
                let i = bytes.u16() as usize;
                if let Some(b) = h.model.nth(i) {
                    h.free_block(b.ptr);
                    freed.push(b.ptr);
                    if freed.len() > 64 {
                        freed.remove(0);
                    }
                    sum.frees += 1;
                }
            }
            6 => {
                let kind = bytes.u8();
                let arg = bytes.u16() as usize;
                bad_free_op(&mut h, &freed, kind, arg);
                sum.errors += 1;
            }
            7 => {
                let i = bytes.u8() as usize;
                if h.depth() < 4 {
                    h.enter(i);
                }
            }
            8 => {
                let i = bytes.u8() as usize;
                h.exit(i);
            }
            9 => {
                let what = bytes.u8();
                match what % 4 {
                    0 | 1 => {
                        if h.reset(what as usize / 4).is_err() {
                            sum.errors += 1;
                        }
                    }
                    2 => {
                        h.empty_cache();
                    }
                    _ => h.replace_pool(what as usize / 4),
                }
            }
            10 => {
                let n = 1 + (bytes.u8() % 4) as u64;
                armed.insert(h.backend.faults().reservations() + n);
                h.backend.faults().fail_reservation(n);
            }
            _ => {
                let which = bytes.u8();
                if odd_request_op(&mut h, &mut armed, which) {
                    sum.faults += 1;
                }
                sum.errors += 1;
            }
        }
        // Every armed fault whose reservation has come must have surfaced
        // as an error (seen in `allocate_op`).
        let reached = h.backend.faults().reservations();
        assert!(
            armed.iter().all(|&n| n > reached),
            "an injected fault fired without surfacing: armed {armed:?}, reservations {reached}"
        );
        h.check();
    }
    h.teardown();
    sum
}

fn allocate_op(
    h: &mut Harness,
    sum: &mut OpsSummary,
    armed: &mut BTreeSet<u64>,
    size: usize,
    align: usize,
) {
    let owner = h.current_owner();
    if std::env::var_os("GRAPHALLOC_OPS_TRACE").is_some() {
        eprintln!("  allocate({size}, {align}) in {owner:?}");
    }
    match h.allocate(size, align) {
        Ok(b) => {
            assert_eq!(b.owner, owner);
            sum.allocations += 1;
        }
        Err(Error::Backend(BackendError::Injected { nth })) => {
            assert!(armed.remove(&nth), "fault {nth} fired but was not armed");
            sum.faults += 1;
            sum.errors += 1;
        }
        Err(Error::OutOfMemory {
            device,
            requested,
            device_total,
            ..
        }) => {
            assert_eq!((device, requested, device_total), (0, size, OPS_CAPACITY));
            // Genuine: the segment this request needs does not fit in what
            // the device has left after the reclaim.
            let seg = expected_segment_size(min_block_size(size, align));
            let left = OPS_CAPACITY - h.backend.host().outstanding_bytes();
            assert!(
                seg > left,
                "OOM for {size} B (segment {seg}) with {left} B free on the device"
            );
            sum.errors += 1;
        }
        Err(e) => panic!("allocate({size}, {align}) in {owner:?}: unexpected {e:?}"),
    }
}

fn bad_free_op(h: &mut Harness, freed: &[u64], kind: u8, arg: usize) {
    match kind % 4 {
        // Interior pointer of a live block with no alignment padding, whose
        // block therefore starts at the pointer.
        0 => {
            let Some(b) = h.model.nth(arg).filter(|b| b.align <= BLOCK_ROUND) else {
                return;
            };
            let off = 1 + (arg / 7) % (b.extent() - 1).max(1);
            if off >= b.extent() {
                return;
            }
            let ptr = b.ptr + off as u64;
            let err = h.free_bad(ptr);
            assert_eq!(err, Error::InteriorPointer { ptr, block: b.ptr });
        }
        // A pointer freed before (not live now).
        1 => {
            let Some(&ptr) = freed.get(arg % freed.len().max(1)) else {
                return;
            };
            if h.model.get(ptr).is_some() {
                return; // handed out again: freeing it would be legitimate
            }
            let err = h.free_bad(ptr);
            if let Some(b) = h.model.containing(ptr) {
                assert!(
                    matches!(err, Error::InteriorPointer { ptr: p, .. } if p == ptr),
                    "{ptr:#x} inside live {b:?}: got {err:?}"
                );
            } else {
                assert!(
                    matches!(err, Error::DoubleFree { ptr: p } | Error::UnknownPointer { ptr: p }
                        | Error::InteriorPointer { ptr: p, .. } if p == ptr),
                    "double free of {ptr:#x}: {err:?}"
                );
                if !h.backend.in_address_space(ptr) {
                    assert_eq!(err, Error::UnknownPointer { ptr });
                }
            }
        }
        // An address in no segment.
        2 => {
            let ptr = match arg % 4 {
                0 => 0,
                1 => u64::MAX,
                2 => 0x10 + arg as u64,
                _ => u64::MAX - 4095 - arg as u64,
            };
            if h.backend.in_address_space(ptr) {
                return;
            }
            assert_eq!(h.free_bad(ptr), Error::UnknownPointer { ptr });
        }
        // An address just past a live block's guaranteed extent (a free
        // remainder, the next block, or another segment): never Ok.
        _ => {
            let Some(b) = h.model.nth(arg) else { return };
            let ptr = b.end();
            if h.model.get(ptr).is_some() {
                return;
            }
            let err = h.free_bad(ptr);
            assert!(
                matches!(
                    err,
                    Error::DoubleFree { .. }
                        | Error::UnknownPointer { .. }
                        | Error::InteriorPointer { .. }
                ),
                "{err:?}"
            );
        }
    }
}

/// Returns whether an armed fault fired instead (a request over the
/// capacity still asks the backend, which fails it with the fault first).
fn odd_request_op(h: &mut Harness, armed: &mut BTreeSet<u64>, which: u8) -> bool {
    let (size, align, expect) = match which % 6 {
        0 => (0, 1, (Error::ZeroSize)),
        1 => (0, 3, (Error::ZeroSize)),
        2 => (
            64,
            3,
            (Error::InvalidAlignment {
                align: 3,
                max: MAX_ALIGNMENT,
            }),
        ),
        3 => (
            64,
            2 * MAX_ALIGNMENT,
            (Error::InvalidAlignment {
                align: 2 * MAX_ALIGNMENT,
                max: MAX_ALIGNMENT,
            }),
        ),
        4 => (
            usize::MAX,
            1,
            (Error::TooLarge {
                requested: usize::MAX,
                limit: OPS_CAPACITY,
            }),
        ),
        // Over the capacity: TooLarge (possibly after a reclaim, see the
        // ignored bug test in tests/bad_input.rs).
        _ => (
            OPS_CAPACITY + 1,
            1,
            (Error::TooLarge {
                requested: OPS_CAPACITY + 1,
                limit: OPS_CAPACITY,
            }),
        ),
    };
    match (h.allocate(size, align), expect) {
        (Err(Error::Backend(BackendError::Injected { nth })), _) if size == OPS_CAPACITY + 1 => {
            assert!(armed.remove(&nth), "fault {nth} fired but was not armed");
            true
        }
        (Err(e), x) => {
            assert_eq!(e, x, "allocate({size}, {align})");
            false
        }
        (got, _) => panic!("allocate({size}, {align}): {got:?}"),
    }
}
