//! The allocator: routes allocations by mode and capture, and frees by
//! ownership. The process-wide instance lives in `global.rs`.

use crate::arena::{round_size, tight_segment_size, AddressKind, BLOCK_ROUND, LARGE_SEGMENT_ROUND};
use crate::backend::{
    cuda_driver_available, Backend, BackendError, BackendKind, CudaBackend, HostBackend,
};
use crate::caching::{keep, CachingAllocator, Origin};
use crate::config::{BackendChoice, Config};
use crate::device::Device;
use crate::device_ptr::DevicePtr;
use crate::error::{Error, Result};
use crate::graph_pool::record::Recorders;
use crate::graph_pool::{GraphPool, PoolCore, PoolHandle, PoolPtr, PoolRegistry};
use crate::history::History;
use crate::mode::{self, GraphModeGuard};
use crate::ownership::{self, Claim, Owner, OwnershipMap, Record};
use crate::stats::{CachingSums, MemoryUsageStats, PoolStats, StatsBook};
use crate::stream::{current_stream, StreamRegistry};
use crate::sync::{next_id, Arc, ConcurrentMap};

mod failure;
mod hot;
mod streams;
use failure::Failed;

/// The largest alignment [`Allocator::allocate`] serves: the granularity of
/// large segments (2 MiB). Blocks are always aligned to 512 bytes; larger
/// alignments cost up to `align - 512` bytes of padding.
pub const MAX_ALIGNMENT: usize = LARGE_SEGMENT_ROUND;

/// The stream tag of the default (null) stream.
pub const DEFAULT_STREAM: u64 = 0;

/// A device-memory allocator over one or more devices: a caching allocator
/// per device, graph pools, and the ownership map that routes every free.
///
/// Usually there is one per process, installed with [`crate::install`] and
/// reached through [`crate::global`]; tests build their own.
///
/// ```
/// use graphalloc::{Allocator, Config};
/// let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
/// let p = alloc.allocate(1000, 256).unwrap();
/// assert_eq!(p.addr() % 256, 0);
/// alloc.free(p).unwrap();
/// assert!(alloc.free(p).is_err()); // double free: a typed error, nothing changes
/// ```
#[derive(Debug)]
pub struct Allocator {
    id: u64,
    caches: Vec<Arc<CachingAllocator>>,
    ownership: Arc<OwnershipMap>,
    book: Arc<StatsBook>,
    /// The live graph pools of this allocator and the counts of dropped ones.
    pools: Arc<PoolRegistry>,
    kind: BackendKind,
    /// (device, stream) → the pool registered for captures on that stream.
    stream_pools: ConcurrentMap<(usize, u64), GraphPool>,
    /// (device, capture id) → the pool made on demand for that capture.
    capture_pools: ConcurrentMap<(usize, u64), GraphPool>,
    /// The active recordings of allocation sequences (planned pools).
    pub(crate) recorders: Recorders,
    /// The stream handles accepted beside the built-in ones, per device.
    streams: StreamRegistry,
    /// Out-of-memory observers (`oom.rs`).
    pub(crate) oom: crate::oom::Observers,
    /// The memory history (`history.rs`), shared with the devices.
    pub(crate) history: Arc<History>,
}

/// The error for a zero size or an alignment [`Allocator::allocate`] does
/// not serve.
#[cold]
#[inline(never)]
fn bad_request(size: usize, align: usize) -> Error {
    if size == 0 {
        Error::ZeroSize
    } else {
        Error::InvalidAlignment {
            align,
            max: MAX_ALIGNMENT,
        }
    }
}

/// The error for a request larger than any segment `cache`'s device can hold.
#[cold]
#[inline(never)]
fn too_large(cache: &CachingAllocator, size: usize) -> Error {
    Error::TooLarge {
        requested: size,
        limit: cache.device.capacity(),
    }
}

/// Maps a backend error about a stream argument to the allocator's error.
fn stream_error(e: BackendError, stream: u64) -> Error {
    match e {
        BackendError::UnknownStream { .. } => Error::UnknownStream { stream },
        other => Error::Backend(other),
    }
}

impl Allocator {
    /// Builds an allocator as `config` says. Touches no device yet.
    ///
    /// A hand-built `config` with `host_devices` (host backend) or `shards`
    /// above 64 is an [`Error::Config`], as the same text would be.
    pub fn new(config: Config) -> Result<Self> {
        let backend = match config.backend {
            BackendChoice::Auto if cuda_driver_available() => BackendChoice::Cuda,
            BackendChoice::Auto => BackendChoice::Host,
            other => other,
        };
        config.check_counts(backend != BackendChoice::Cuda)?;
        let backends: Vec<std::sync::Arc<dyn Backend>> = match backend {
            BackendChoice::Cuda => {
                let count = CudaBackend::device_count();
                if count == 0 {
                    return Err(BackendError::Unavailable("no CUDA driver or device".into()).into());
                }
                (0..count)
                    .map(|d| {
                        Ok(std::sync::Arc::new(CudaBackend::new(d)?)
                            as std::sync::Arc<dyn Backend>)
                    })
                    .collect::<Result<_, BackendError>>()?
            }
            _ => (0..config.host_devices)
                .map(|d| {
                    std::sync::Arc::new(HostBackend::new(d, config.host_capacity))
                        as std::sync::Arc<dyn Backend>
                })
                .collect(),
        };
        Allocator::from_backends_with(backends, &config)
    }

    /// Builds an allocator over the given backends, one per device, in
    /// ordinal order, with `memory_fraction` and otherwise default settings.
    /// Tests use this to keep a handle on a [`HostBackend`].
    ///
    /// Fails with [`Error::BackendOrder`] unless backend `i` has ordinal `i`.
    pub fn from_backends(
        backends: Vec<std::sync::Arc<dyn Backend>>,
        memory_fraction: f64,
    ) -> Result<Self> {
        let config = Config {
            memory_fraction,
            ..Config::default()
        };
        Allocator::from_backends_with(backends, &config)
    }

    /// Builds an allocator over the given backends, one per device, with
    /// the settings of `config` (its backend keys are not used; `shards`
    /// above 64 is an [`Error::Config`]).
    pub fn from_backends_with(
        backends: Vec<std::sync::Arc<dyn Backend>>,
        config: &Config,
    ) -> Result<Self> {
        config.check_counts(false)?;
        let Some(first) = backends.first() else {
            return Err(BackendError::Unavailable("no device backends given".into()).into());
        };
        // Devices are indexed by ordinal everywhere (ownership records,
        // capture pools): the list must be the ordinals in order.
        if let Some((position, b)) = backends.iter().enumerate().find(|(i, b)| b.ordinal() != *i) {
            return Err(Error::BackendOrder {
                position,
                ordinal: b.ordinal(),
            });
        }
        let kind = first.kind();
        let sums = match (backends.len(), config.shards) {
            (_, shards) if shards > 1 => CachingSums::Sharded,
            (1, _) => CachingSums::OneArena,
            _ => CachingSums::Gauged,
        };
        let book = Arc::new(StatsBook::new(sums));
        let history = Arc::new(History::new(config.history, config.history_backtraces));
        let ownership = Arc::new(OwnershipMap::new());
        let caches = backends
            .into_iter()
            .map(|b| {
                let device = Device::new(
                    b,
                    book.clone(),
                    config.memory_fraction,
                    config.expandable_segments,
                    history.clone(),
                );
                let owners = ownership.clone();
                let cache = CachingAllocator::new(Arc::new(device), config.shards, owners);
                Arc::new(cache)
            })
            .collect();
        let pools = Arc::new(PoolRegistry::new(ownership.clone(), book.clone()));
        Ok(Allocator {
            id: next_id(),
            caches,
            ownership,
            book,
            pools,
            kind,
            stream_pools: ConcurrentMap::new(),
            capture_pools: ConcurrentMap::new(),
            recorders: Recorders::new(),
            streams: StreamRegistry::new(),
            oom: Default::default(),
            history,
        })
    }

    /// The backend kind of device 0.
    pub fn backend_kind(&self) -> BackendKind {
        self.kind
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.caches.len()
    }

    /// The backend of `device`, for copies into and out of its blocks.
    pub fn backend(&self, device: usize) -> Result<&std::sync::Arc<dyn Backend>> {
        Ok(&self.cache(device)?.device.backend)
    }

    /// The id of the graph pool that owns a live pointer ([`GraphPool::id`]),
    /// or `None` if the pointer is not live or belongs to a caching allocator.
    pub fn pool_of(&self, ptr: DevicePtr) -> Option<u64> {
        self.ownership.pool_id(ptr.addr()).flatten()
    }

    /// The device that owns a live pointer, or `None` if it is not live.
    pub fn device_of(&self, ptr: DevicePtr) -> Option<usize> {
        self.ownership.device(ptr.addr())
    }

    /// What a new pool on `device` is made of: this allocator's id, the
    /// device's cache, and the pool registry.
    pub(crate) fn pool_parts(
        &self,
        device: usize,
    ) -> Result<(u64, &Arc<CachingAllocator>, &Arc<PoolRegistry>)> {
        Ok((self.id, self.cache(device)?, &self.pools))
    }

    /// This allocator's process-unique id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn cache(&self, device: usize) -> Result<&Arc<CachingAllocator>> {
        match self.caches.get(device) {
            Some(cache) => Ok(cache),
            None => Err(self.invalid_device(device)),
        }
    }

    /// Allocates `size` bytes aligned to `align` on the calling thread's
    /// current stream ([`crate::use_stream`]; the default stream unless set):
    /// from the thread's current graph pool in graph mode (on the pool's
    /// device), else from device 0.
    pub fn allocate(&self, size: usize, align: usize) -> Result<DevicePtr> {
        self.allocate_routed(None, current_stream(), size, align, false)
    }

    /// As [`Allocator::allocate`], for an owning handle (a `DeviceBuffer`):
    /// the block is marked held, so [`Allocator::free`] refuses it and only
    /// [`Allocator::free_held`] (the handle's drop) frees it.
    pub(crate) fn allocate_held(&self, size: usize, align: usize) -> Result<DevicePtr> {
        self.allocate_routed(None, current_stream(), size, align, true)
    }

    /// Allocates `size` bytes aligned to `align` on `device` for use on
    /// `stream`. The block comes from, in this order:
    /// 1. the calling thread's graph pool for that device: the innermost
    ///    graph-mode guard on a pool of `device` (guards on pools of other
    ///    devices are looked through; the explicit way, it wins when both
    ///    apply);
    /// 2. a graph pool for the capture, while `stream` is being captured into
    ///    a CUDA graph: the pool registered for the stream with
    ///    [`Allocator::set_capture_pool`], else one made on demand per
    ///    capture ([`Allocator::capture_pool`]); so a framework capturing a
    ///    graph without knowing graphalloc still gets graph-safe memory;
    /// 3. the device's caching allocator. A block is reused at once only by
    ///    requests on its own stream.
    ///
    /// `stream` must be a built-in stream (0, 1, 2) or one registered on
    /// `device` ([`Allocator::register_stream`]): no other handle reaches the
    /// driver.
    ///
    /// Errors: [`Error::ZeroSize`], [`Error::InvalidAlignment`],
    /// [`Error::InvalidDevice`], [`Error::UnknownStream`] (not registered on
    /// `device`; [`BackendError::ForeignStream`] if registered on another),
    /// [`Error::TooLarge`], [`Error::OutOfMemory`] (after releasing the
    /// device's cache and retrying once), [`Error::Backend`].
    pub fn allocate_on(
        &self,
        device: usize,
        stream: u64,
        size: usize,
        align: usize,
    ) -> Result<DevicePtr> {
        self.allocate_routed(Some(device), stream, size, align, false)
    }

    /// [`Allocator::allocate_on`]; `held` marks the block as an owning
    /// handle's. `graph` is the calling thread's graph-mode pool that
    /// applies, borrowed from its graph-mode stack (looked up once by the
    /// caller: one thread-local access per call, no reference count);
    /// `device` is the device asked for, else the pool's, else 0;
    /// `looked`: the thread's cache was looked at already (a miss).
    #[allow(clippy::too_many_arguments)]
    fn allocate_as(
        &self,
        graph: Option<&PoolCore>,
        device: Option<usize>,
        stream: u64,
        size: usize,
        align: usize,
        held: bool,
        looked: bool,
    ) -> std::result::Result<DevicePtr, Failed> {
        if size == 0 || !align.is_power_of_two() || align > MAX_ALIGNMENT {
            return Err(bad_request(size, align).into());
        }
        let device = device.unwrap_or_else(|| graph.map_or(0, PoolCore::device));
        let Some(cache) = self.caches.get(device) else {
            return Err(self.invalid_device(device).into());
        };
        self.check_stream(device, stream)?;
        let padding = align.saturating_sub(BLOCK_ROUND);
        // A request that can never fit fails before it can flush any cache.
        let rounded = size
            .checked_add(padding)
            .and_then(round_size)
            .filter(|&r| tight_segment_size(r).is_some_and(|s| s <= cache.device.capacity()));
        let Some(rounded) = rounded else {
            return Err(too_large(cache, size).into());
        };
        // A capture's pool is held (its handle cloned) until the block is
        // recorded; a graph-mode pool is held by the borrowed stack.
        let capture;
        let pool = match graph {
            Some(pool) => Some(pool),
            // The default stream is never captured: no look-up at all.
            None if stream == DEFAULT_STREAM => None,
            None => {
                capture = self.pool_for_capture(device, stream)?;
                capture.as_deref().map(|handle| &**handle)
            }
        };
        // The error paths are out of line, so that the common path moves
        // no error value around.
        let (origin, carved, kept) = match pool {
            Some(pool) => match pool.allocate(stream, rounded, size, align) {
                Ok(carved) => (Origin::default(), carved, None),
                Err(s) => return Err(self.shortfall(s, cache, device, size, Some(pool))),
            },
            None => match cache.allocate(stream, rounded, size, !looked) {
                Ok(carved) => carved,
                Err(s) => return Err(self.shortfall(s, cache, device, size, None)),
            },
        };
        // `align` is a power of two: a mask, not the division of
        // `next_multiple_of` (no overflow: blocks lie far below 2^64).
        let mask = align as u64 - 1;
        let addr = (carved.block.addr() + mask) & !mask;
        if self.recorders.any() {
            self.recorders
                .on_alloc(device, stream, size, align, rounded, addr);
        }
        self.history.alloc(device, stream, size, addr, pool);
        let owner = match pool {
            // SAFETY: `pool` is borrowed from a handle held until this
            // returns (graph mode's stack, or `capture`), its arena just
            // counted the block live, and the pointer goes into the block's
            // record below.
            Some(pool) => Owner::Pool(unsafe { PoolPtr::for_block(pool) }),
            // Device indices come from a `Vec` of backends: far below 2^32.
            None => Owner::Cache { device, origin },
        };
        let record = move || Record::new(owner, carved, size, stream, held);
        self.ownership.hand_out(kept, addr, size, held, record);
        Ok(DevicePtr::new(addr))
    }

    /// The error for a request on a device this allocator does not have.
    #[cold]
    #[inline(never)]
    fn invalid_device(&self, device: usize) -> Error {
        Error::InvalidDevice {
            device,
            count: self.caches.len(),
        }
    }

    /// The pool that allocations on `stream` go to while it is being
    /// captured, or `None` when it is not.
    fn pool_for_capture(&self, device: usize, stream: u64) -> Result<Option<Arc<PoolHandle>>> {
        let capture = self.caches[device]
            .device
            .capture_id(stream)
            .map_err(|e| stream_error(e, stream))?;
        let Some(capture) = capture else {
            return Ok(None);
        };
        if let Some(core) = self
            .stream_pools
            .with(&(device, stream), |p| p.core.clone())
        {
            return Ok(Some(core));
        }
        if let Some(core) = self
            .capture_pools
            .with(&(device, capture), |p| p.core.clone())
        {
            return Ok(Some(core));
        }
        let pool = GraphPool::create(self.id, self.caches[device].clone(), &self.pools);
        let core = pool.core.clone();
        if !self.capture_pools.insert_new((device, capture), pool) {
            // Another thread made it first: use theirs (ours is dropped empty).
            return Ok(self
                .capture_pools
                .with(&(device, capture), |p| p.core.clone()));
        }
        Ok(Some(core))
    }

    /// Routes allocations on `stream` of `pool`'s device to `pool` whenever
    /// that stream is being captured and no graph-mode guard applies.
    /// Replaces an earlier registration for the stream.
    pub fn set_capture_pool(&self, stream: u64, pool: &GraphPool) -> Result<()> {
        if pool.core.allocator_id != self.id {
            return Err(Error::ForeignPool { pool: pool.id() });
        }
        // One step: an allocation meanwhile sees the old pool or the new
        // one, never none.
        let replaced = self
            .stream_pools
            .replace((pool.device(), stream), pool.clone());
        drop(replaced);
        Ok(())
    }

    /// Ends the registration of [`Allocator::set_capture_pool`] for `stream`
    /// on `device`; returns the pool that was registered.
    pub fn clear_capture_pool(&self, device: usize, stream: u64) -> Option<GraphPool> {
        self.stream_pools.remove(&(device, stream))
    }

    /// The pool made on demand for capture `capture_id` on `device`, if any.
    pub fn capture_pool(&self, device: usize, capture_id: u64) -> Option<GraphPool> {
        self.capture_pools
            .with(&(device, capture_id), GraphPool::clone)
    }

    /// Drops the allocator's handles on the pools made on demand for
    /// captures. Call it when the graphs captured into them are destroyed:
    /// each pool's segments go back to the device once its last block is
    /// freed. Returns how many pools were let go.
    pub fn release_capture_pools(&self) -> usize {
        let mut keys = Vec::new();
        self.capture_pools.for_each(|k, _| keys.push(*k));
        keys.iter()
            .filter(|k| self.capture_pools.remove(k).is_some())
            .count()
    }

    /// Marks the live block at `ptr` as used by `stream` (besides the stream
    /// it was allocated on), like PyTorch's `record_stream`: when it is
    /// freed, it is not reused until the work queued on `stream` by then has
    /// completed (an event is recorded on `stream` at free time).
    ///
    /// Errors, changing nothing: [`Error::UnknownStream`] (`stream` is not
    /// registered on the block's device: see [`Allocator::register_stream`]),
    /// [`BackendError::ForeignStream`], and for a pointer that is not live
    /// the errors of [`Allocator::free`].
    pub fn record_stream(&self, ptr: DevicePtr, stream: u64) -> Result<()> {
        let Some(device) = self.ownership.device(ptr.addr()) else {
            return Err(self.diagnose(ptr.addr()));
        };
        self.check_stream(device, stream)?;
        self.caches[device]
            .device
            .capturing(stream)
            .map_err(|e| stream_error(e, stream))?;
        if self.ownership.add_use(ptr.addr(), stream) {
            Ok(())
        } else {
            Err(self.diagnose(ptr.addr()))
        }
    }

    /// Frees a pointer from [`Allocator::allocate`], routed to its owner (a
    /// device's caching allocator or a graph pool) whatever the calling
    /// thread's mode. A pointer that is not live is a typed error
    /// ([`Error::UnknownPointer`], [`Error::DoubleFree`],
    /// [`Error::InteriorPointer`]) and changes nothing. Of two threads that
    /// free one pointer at once, exactly one succeeds; the other gets
    /// `DoubleFree`, or `UnknownPointer` if it looks while the block is
    /// between its owner's map and its arena.
    ///
    /// The block of a live [`crate::tensor::DeviceBuffer`] (or `Tensor`)
    /// belongs to the buffer, which frees it when dropped: `free` of its
    /// pointer is [`Error::BufferHeld`] and changes nothing, so safe code
    /// cannot free memory a buffer still reads and writes.
    ///
    /// ```
    /// use graphalloc::{tensor::DeviceBuffer, Allocator, Config, Error};
    /// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    /// let buf = DeviceBuffer::from_slice(&alloc, &[1u32, 2, 3]).unwrap();
    /// let p = buf.device_ptr();
    /// assert_eq!(alloc.free(p), Err(Error::BufferHeld { ptr: p.addr() }));
    /// drop(buf); // frees the block
    /// assert!(alloc.free(p).is_err());
    /// ```
    pub fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.free_as(ptr, false)
    }

    /// Frees the block of an owning handle (from [`Allocator::allocate_held`]).
    pub(crate) fn free_held(&self, ptr: DevicePtr) -> Result<()> {
        self.free_as(ptr, true)
    }

    fn free_as(&self, ptr: DevicePtr, held: bool) -> Result<()> {
        let addr = ptr.addr();
        // Into the thread's cache if it may, in the map's one step (`keep`).
        // Or, a graph pool's block, into the thread's cache for the pool
        // (`pooled`: the pool's id).
        let (mut orphans, mut pooled) = (Vec::new(), None);
        let keep = |r: &Record| match &r.owner {
            Owner::Pool(pool) => {
                let kept = pool.get().keep(r, addr);
                if kept {
                    pooled = Some(pool.get().id);
                }
                kept
            }
            Owner::Cache { .. } => keep(&self.caches, r, addr, &mut orphans),
        };
        let claim = self.ownership.claim(addr, held, keep);
        let mut record = match claim {
            Claim::Claimed(record) => record,
            Claim::Kept(kept) => {
                if self.recorders.any() {
                    self.recorders.on_free(addr, false);
                }
                match pooled {
                    Some(pool) => self.pool_kept(&kept, pool, addr),
                    None => self.caches[kept.device].kept(&kept, addr, orphans),
                }
                return Ok(());
            }
            other => return Err(self.unclaimed(other, addr)),
        };
        if self.recorders.any() {
            self.recorders
                .on_free(ptr.addr(), !record.uses().is_empty());
        }
        self.history.free_requested(&record, ptr.addr());
        let (block, requested, stream) = (record.block, record.requested(), record.stream);
        // The owner moves out (a pool's pointer is used up by its free);
        // the box goes back to the thread's spares.
        let owner = std::mem::replace(&mut record.owner, Owner::SPENT);
        let uses = record.uses();
        match owner {
            Owner::Cache { device, origin } => {
                self.caches[device].free_to_arena(origin, block, stream, uses, orphans)
            }
            Owner::Pool(pool) => pool.free(block, requested, stream, uses),
        }
        ownership::recycle(record);
        Ok(())
    }

    /// The error for a free whose claim took nothing.
    #[cold]
    #[inline(never)]
    fn unclaimed(&self, claim: Claim, addr: u64) -> Error {
        match claim {
            Claim::Held => Error::BufferHeld { ptr: addr },
            _ => self.diagnose(addr),
        }
    }

    /// Why `addr` is not a live pointer (slow; only on the error path).
    fn diagnose(&self, addr: u64) -> Error {
        let mut kinds: Vec<AddressKind> = self.caches.iter().map(|c| c.classify(addr)).collect();
        kinds.extend(self.pools.classify(addr));
        for kind in kinds {
            match kind {
                AddressKind::Inside {
                    block,
                    allocated: true,
                } => {
                    // An address in the padding before an over-aligned
                    // pointer is inside no block the caller was given.
                    return match self.handed_out_in(block, addr) {
                        Some(block) => Error::InteriorPointer { ptr: addr, block },
                        None => Error::UnknownPointer { ptr: addr },
                    };
                }
                AddressKind::Inside {
                    allocated: false, ..
                }
                | AddressKind::FreeBlockStart => return Error::DoubleFree { ptr: addr },
                AddressKind::LiveBlockStart | AddressKind::Outside => {}
            }
        }
        Error::UnknownPointer { ptr: addr }
    }

    /// The pointer handed out for the live block that starts at `block` and
    /// contains `addr`: the block start, or for an over-aligned request the
    /// first multiple of its alignment in the block.
    fn handed_out_in(&self, block: u64, addr: u64) -> Option<u64> {
        let mut align = BLOCK_ROUND as u64;
        while align <= MAX_ALIGNMENT as u64 {
            let candidate = block.next_multiple_of(align);
            if candidate <= addr && self.ownership.requested(candidate).is_some() {
                return Some(candidate);
            }
            align *= 2;
        }
        None
    }

    /// The requested size of a live pointer, or `None` if it is not live.
    pub fn requested_size(&self, ptr: DevicePtr) -> Option<usize> {
        self.ownership.requested(ptr.addr())
    }

    /// Number of live pointers, all owners together.
    pub fn live_pointers(&self) -> usize {
        self.ownership.len()
    }

    /// A new, empty graph pool on device 0.
    pub fn create_pool(&self) -> GraphPool {
        GraphPool::create(self.id, self.caches[0].clone(), &self.pools)
    }

    /// A new, empty graph pool on `device`.
    pub fn create_pool_on(&self, device: usize) -> Result<GraphPool> {
        Ok(GraphPool::create(
            self.id,
            self.cache(device)?.clone(),
            &self.pools,
        ))
    }

    /// Enters graph mode on `pool` for the calling thread; see
    /// [`crate::graph_mode`]. Fails with [`Error::ForeignPool`] if the pool
    /// was made by another allocator.
    pub fn enter_graph_mode(&self, pool: &GraphPool) -> Result<GraphModeGuard> {
        if pool.core.allocator_id != self.id {
            return Err(Error::ForeignPool { pool: pool.id() });
        }
        Ok(mode::enter(pool))
    }

    /// Runs `f` in graph mode on `pool`; see [`crate::with_graph_mode`].
    pub fn with_graph_mode<R>(&self, pool: &GraphPool, f: impl FnOnce() -> R) -> Result<R> {
        let _guard = self.enter_graph_mode(pool)?;
        Ok(f())
    }

    /// Whether the calling thread is in graph mode on a pool of this allocator.
    pub fn is_graph_mode(&self) -> bool {
        mode::in_graph_mode_for(self.id)
    }

    /// Resets `pool` for a new capture; see [`GraphPool::reset`].
    pub fn reset_graph_pool(&self, pool: &GraphPool) -> Result<()> {
        if pool.core.allocator_id != self.id {
            return Err(Error::ForeignPool { pool: pool.id() });
        }
        pool.reset()
    }

    /// Releases every cached, unused segment of every device's caching
    /// allocator. Graph pools keep theirs. Returns the bytes released, or,
    /// if a device failed, the first error, after every device was tried.
    pub fn empty_cache(&self) -> Result<usize> {
        let mut released = 0;
        let mut first_error = None;
        for cache in &self.caches {
            match cache.empty_cache() {
                Ok(bytes) => released += bytes,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(released), |e| Err(e.into()))
    }

    /// Restarts the peaks of [`Allocator::stats`] from now: the caching
    /// allocators', the pools' sum and the total. (Each pool's own peaks, in
    /// [`GraphPool::stats`], restart with [`GraphPool::reset`].)
    pub fn reset_peak_stats(&self) {
        for cache in &self.caches {
            cache.reset_peaks();
        }
        self.pools.fold(&self.book);
        self.book.caching.reset_peaks();
        self.book.pools.reset_peaks();
        self.book.total.reset_peaks();
    }

    /// Statistics of this allocator; see [`MemoryUsageStats`].
    pub fn stats(&self) -> MemoryUsageStats {
        let mut caching = PoolStats::default();
        for cache in &self.caches {
            caching.add(&cache.stats());
        }
        self.pools.fold(&self.book);
        let pools = self.pools.stats(None, true);
        self.book.summarize(caching, pools, self.is_graph_mode())
    }

    /// The mapping calls made for expandable segments on every device, and
    /// the time spent in them (all zero with `expandable_segments:false`).
    pub fn mapping_stats(&self) -> crate::device::MappingStats {
        let mut sum = crate::device::MappingStats::default();
        for cache in &self.caches {
            sum.add(&cache.device.mapping_stats());
        }
        sum
    }

    /// What a snapshot reads: the caching allocators, the ownership map
    /// and the pool registry.
    pub(crate) fn snapshot_parts(
        &self,
    ) -> (&[Arc<CachingAllocator>], &OwnershipMap, &PoolRegistry) {
        (&self.caches, &self.ownership, &self.pools)
    }

    /// Statistics of one device's caching allocator.
    pub fn device_stats(&self, device: usize) -> Result<PoolStats> {
        Ok(self.cache(device)?.stats())
    }
}

impl Drop for Allocator {
    /// Returns every segment to its device: the caching allocators' segments
    /// at once, live blocks included (pointers still held become dangling,
    /// as with any allocator that goes away); each graph pool's segments
    /// when the pool's last handle is dropped (at once if the allocator held
    /// the last ones).
    fn drop(&mut self) {
        self.stream_pools.clear();
        self.capture_pools.clear();
        self.ownership.clear();
        // No record names a pool any more: the parked pools go now.
        drop(self.pools.close());
        for cache in &self.caches {
            cache.release_all();
        }
    }
}

/// What [`Allocator`] offers, as a trait, so callers can be written against
/// an allocator they do not construct.
///
/// ```
/// use graphalloc::{Allocator, Config, DeviceAllocator};
/// fn scratch(a: &dyn DeviceAllocator) -> graphalloc::Result<()> {
///     let p = a.allocate(4096, 256)?;
///     a.free(p)
/// }
/// scratch(&Allocator::new(Config::host(1 << 30)).unwrap()).unwrap();
/// ```
pub trait DeviceAllocator {
    /// Allocates `size` bytes aligned to `align`, from the current graph pool
    /// in graph mode, else from the caching allocator.
    fn allocate(&self, size: usize, align: usize) -> Result<DevicePtr>;
    /// Frees a pointer, routed by ownership.
    fn free(&self, ptr: DevicePtr) -> Result<()>;
    /// Enters graph mode on `pool` for the calling thread.
    fn enter_graph_mode(&self, pool: &GraphPool) -> Result<GraphModeGuard>;
    /// Whether the calling thread is in graph mode.
    fn is_graph_mode(&self) -> bool;
    /// Statistics.
    fn stats(&self) -> MemoryUsageStats;
}

impl DeviceAllocator for Allocator {
    fn allocate(&self, size: usize, align: usize) -> Result<DevicePtr> {
        Allocator::allocate(self, size, align)
    }
    fn free(&self, ptr: DevicePtr) -> Result<()> {
        Allocator::free(self, ptr)
    }
    fn enter_graph_mode(&self, pool: &GraphPool) -> Result<GraphModeGuard> {
        Allocator::enter_graph_mode(self, pool)
    }
    fn is_graph_mode(&self) -> bool {
        Allocator::is_graph_mode(self)
    }
    fn stats(&self) -> MemoryUsageStats {
        Allocator::stats(self)
    }
}
