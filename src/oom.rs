//! Out-of-memory reports: what [`Error::OutOfMemory`] says beyond its
//! figures, and the observers called on each failure.
//!
//! The report is gathered on the failure path only, after the failed
//! request has let go of every lock: each arena's books are read under
//! that arena's lock ([`crate::arena::Books`]), the device's free and total
//! memory from the backend, and the message is built from them afterwards.
//! Nothing the allocator does changes: no segment is released, no block
//! moves. The observers ([`Allocator::on_out_of_memory`]) are then called,
//! in the order they were added, with no lock of the allocator held (an
//! observer may allocate, free or read [`Allocator::stats`]), exactly once
//! per failed request, before the error returns.

use crate::allocator::Allocator;
use crate::arena::Books;
use crate::caching::CachingAllocator;
use crate::error::Error;
use crate::graph_pool::PoolRegistry;
use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, RwLock};

thread_local! {
    /// Whether the calling thread is running out-of-memory observers.
    static NOTIFYING: Cell<bool> = const { Cell::new(false) };
}

/// How many of the largest live blocks a report lists.
pub const OOM_LARGEST_LIVE: usize = 4;

/// Which allocator of a device ran out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OomOwner {
    /// The device's caching allocator (eager allocations).
    #[default]
    Cache,
    /// A graph pool (graph mode, or a stream being captured): its id.
    GraphPool(u64),
    /// A planned pool being created
    /// ([`Allocator::create_planned_pool`]): reserving its planned memory.
    NewPlannedPool,
}

/// Everything an out-of-memory error knows: where it happened, the device's
/// memory, graphalloc's books on that device, and what to try. (`Default`:
/// all zero, for tests that build an expected error.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OomReport {
    /// Device ordinal.
    pub device: usize,
    /// Bytes asked for.
    pub requested: usize,
    /// The allocator that ran out.
    pub owner: OomOwner,
    /// Free device memory as the driver reports it.
    pub device_free: usize,
    /// Total device memory as the driver reports it.
    pub device_total: usize,
    /// graphalloc's limit on this device (`memory_fraction`), if any.
    pub limit: Option<usize>,
    /// Bytes graphalloc holds on the device (caches and pools).
    pub reserved: usize,
    /// Bytes in live blocks on the device (caches and pools).
    pub allocated: usize,
    /// Bytes the caching allocator holds but no live block uses (after the
    /// release of its idle segments that preceded the error, what remains
    /// is free space inside segments that also hold live blocks).
    pub cache_idle: usize,
    /// Bytes graph pools on the device hold but no live block uses.
    pub pool_idle: usize,
    /// The largest free block (caches and pools of the device).
    pub largest_free_block: usize,
    /// The largest live blocks on the device, `(address, size)`, largest
    /// first; at most [`OOM_LARGEST_LIVE`].
    pub largest_live: Vec<(u64, usize)>,
    /// What to try, most relevant first.
    pub hints: Vec<String>,
}

/// Bytes with a binary unit, for people: `1.50 GiB`.
struct Human(usize);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.2} {}", UNITS[unit])
    }
}

impl fmt::Display for OomOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OomOwner::Cache => write!(f, "the caching allocator"),
            OomOwner::GraphPool(id) => write!(f, "graph pool {id}"),
            OomOwner::NewPlannedPool => write!(f, "a planned pool being created"),
        }
    }
}

impl fmt::Display for OomReport {
    /// The part of the error message after its figures: owner, idle bytes,
    /// largest free block, largest live blocks, hints (one line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "; {} of device {} ran out ({} requested, {} free of {} on the device{}); \
             reserved but idle: {} in the cache, {} in graph pools; largest free block {}",
            self.owner,
            self.device,
            Human(self.requested),
            Human(self.device_free),
            Human(self.device_total),
            match self.limit {
                Some(limit) => format!(", graphalloc's limit {}", Human(limit)),
                None => String::new(),
            },
            Human(self.cache_idle),
            Human(self.pool_idle),
            Human(self.largest_free_block),
        )?;
        if !self.largest_live.is_empty() {
            write!(f, "; largest live blocks:")?;
            for (i, (addr, size)) in self.largest_live.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{} at {addr:#x}", Human(*size))?;
            }
        }
        for hint in &self.hints {
            write!(f, "; try: {hint}")?;
        }
        Ok(())
    }
}

impl OomReport {
    /// What to try, from the figures: memory outside graphalloc, a limit,
    /// idle pool memory, fragmentation, and the pool-specific options.
    fn hints(&self, expandable: bool) -> Vec<String> {
        let mut hints = Vec::new();
        if let Some(limit) = self.limit {
            if self.reserved + self.requested > limit {
                hints.push(format!(
                    "a larger `memory_fraction` in GRAPHALLOC_CONF (graphalloc may hold {} here)",
                    Human(limit)
                ));
            }
        }
        let outside = self
            .device_total
            .saturating_sub(self.device_free + self.reserved);
        if outside >= self.requested {
            hints.push(format!(
                "freeing memory held outside graphalloc ({} of the device: other processes \
                 or libraries)",
                Human(outside)
            ));
        }
        if self.pool_idle > 0 {
            hints.push(format!(
                "dropping or resetting graph pools no longer replayed ({} idle in them), \
                 or a planned pool (`create_planned_pool`) sized to the workload",
                Human(self.pool_idle)
            ));
        }
        if self.owner != OomOwner::Cache {
            hints.push(
                "`empty_cache()` before the capture (a graph pool cannot use the cache's \
                 memory, only the device's free memory), or a planned pool reserved up front"
                    .to_string(),
            );
        }
        if self.cache_idle >= self.requested && !expandable {
            hints.push(format!(
                "`expandable_segments:true` in GRAPHALLOC_CONF: {} is free in the cache but \
                 split between segments that hold live blocks",
                Human(self.cache_idle)
            ));
        }
        if hints.is_empty() {
            hints.push(
                "smaller or fewer live blocks (the device is full of live memory); \
                 `empty_cache()` releases only idle memory, which the retry already did"
                    .to_string(),
            );
        }
        hints
    }
}

/// Reads the books of `device` and builds the error for a failed request
/// of `requested` bytes by `owner`. Takes each arena's lock in turn, never
/// two at once; the caller holds none.
pub(crate) fn gather(
    cache: &CachingAllocator,
    pools: &PoolRegistry,
    requested: usize,
    owner: OomOwner,
) -> OomReport {
    let d = &cache.device;
    let device = d.ordinal();
    let info = d.mem_info();
    // Blocks freed into thread caches since the failed request's own drain
    // are free, not live: give them back before reading the books.
    cache.drain_threads();
    let cached = cache.books(OOM_LARGEST_LIVE);
    let pooled = pools.books(device, OOM_LARGEST_LIVE);
    let (cache_idle, pool_idle) = (
        cached.reserved.saturating_sub(cached.allocated),
        pooled.reserved.saturating_sub(pooled.allocated),
    );
    let mut all = cached;
    all.merge(pooled, OOM_LARGEST_LIVE);
    let Books {
        allocated,
        largest_free,
        largest_live,
        ..
    } = all;
    let limit = Some(d.limit()).filter(|&l| l != usize::MAX);
    let mut report = OomReport {
        device,
        requested,
        owner,
        device_free: info.free,
        device_total: info.total,
        limit,
        reserved: d.reserved(),
        allocated,
        cache_idle,
        pool_idle,
        largest_free_block: largest_free,
        largest_live,
        hints: Vec::new(),
    };
    report.hints = report.hints(d.expandable());
    report
}

impl From<OomReport> for Error {
    fn from(report: OomReport) -> Self {
        Error::OutOfMemory {
            device: report.device,
            requested: report.requested,
            reserved: report.reserved,
            allocated: report.allocated,
            device_free: report.device_free,
            device_total: report.device_total,
            report: Box::new(report),
        }
    }
}

/// An observer of out-of-memory failures.
pub type OomObserver = dyn Fn(&OomReport) + Send + Sync;

/// The observers of one allocator: (id, observer), in the order added.
#[derive(Default)]
pub(crate) struct Observers {
    list: RwLock<Vec<(u64, Arc<OomObserver>)>>,
}

impl fmt::Debug for Observers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.read().map_or(0, |l| l.len());
        write!(f, "Observers({n})")
    }
}

impl Observers {
    /// Calls every observer with `report`, holding no lock while they run
    /// (the list is copied first, so an observer may add or remove one).
    pub(crate) fn notify(&self, report: &OomReport) {
        // A failure of an allocation an observer makes itself is not
        // reported again on that thread: an observer that retries the
        // failed request would otherwise recurse until the stack overflows.
        // (A thread-local without a destructor stays reachable in teardown;
        // were it not, the report would be skipped rather than risk that.)
        if NOTIFYING
            .try_with(|inside| inside.replace(true))
            .unwrap_or(true)
        {
            return;
        }
        let _leave = scopeguard::guard((), |()| {
            let _ = NOTIFYING.try_with(|inside| inside.set(false));
        });
        let list: Vec<Arc<OomObserver>> = match self.list.read() {
            Ok(list) => list.iter().map(|(_, o)| o.clone()).collect(),
            Err(poisoned) => poisoned.get_ref().iter().map(|(_, o)| o.clone()).collect(),
        };
        for observer in list {
            observer(report);
        }
    }

    fn add(&self, observer: Arc<OomObserver>) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        list.push((id, observer));
        id
    }

    fn remove(&self, id: u64) -> bool {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        list.len() != before
    }
}

impl Allocator {
    /// Calls `observer` with the report of every out-of-memory failure of
    /// this allocator, once per failed request, before the error returns.
    /// Returns an id for [`Allocator::remove_out_of_memory_observer`].
    ///
    /// Observers run on the failing thread with no lock of the allocator
    /// held: they may allocate, free, or read [`Allocator::stats`]; a
    /// failure of an allocation an observer makes returns its error to the
    /// observer but is not reported to the observers again (an observer that
    /// retries the failed request would otherwise recurse without end). A
    /// panic in an observer propagates out of the failed call (nothing is
    /// left half-done: the request had already failed).
    ///
    /// ```
    /// use graphalloc::{Allocator, Config, Error, OomOwner};
    /// use std::sync::{Arc, Mutex};
    /// let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// alloc.on_out_of_memory(move |r| log.lock().unwrap().push((r.owner, r.requested)));
    /// let live = alloc.allocate(40 << 20, 512).unwrap();
    /// let err = alloc.allocate(40 << 20, 512).unwrap_err();
    /// assert!(matches!(err, Error::OutOfMemory { .. }));
    /// assert!(err.to_string().contains("largest live blocks: 40.00 MiB"));
    /// assert_eq!(*seen.lock().unwrap(), [(OomOwner::Cache, 40 << 20)]);
    /// alloc.free(live).unwrap();
    /// ```
    pub fn on_out_of_memory(&self, observer: impl Fn(&OomReport) + Send + Sync + 'static) -> u64 {
        self.oom.add(Arc::new(observer))
    }

    /// Removes an observer added by [`Allocator::on_out_of_memory`];
    /// returns whether it was there.
    pub fn remove_out_of_memory_observer(&self, id: u64) -> bool {
        self.oom.remove(id)
    }
}
