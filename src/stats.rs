//! Memory statistics: per owner ([`PoolStats`]), summed ([`MemoryUsageStats`]).
//!
//! Each owner of blocks (a device's caching allocator, a graph pool) keeps a
//! [`PoolStats`] under the same lock as its blocks, so its figures are exact.
//! Sums across owners are taken when asked, except the peaks of sums, which
//! no per-owner figure can give: those come from gauges, one atomic
//! counter each whose successive values are totally ordered, so the recorded
//! peak is the exact maximum the sum ever reached.

use crate::sync::{AtomicUsize, Ordering};
use std::fmt;

/// Figures for one owner of blocks, or a sum of owners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in live blocks (block sizes: requests rounded up to 512 B, plus
    /// any unsplit remainder).
    pub allocated_bytes: usize,
    /// The highest `allocated_bytes` reached (since the allocator was built
    /// or [`crate::Allocator::reset_peak_stats`]). Exact for graph pools,
    /// and for a caching allocator while one thread uses it; with T threads
    /// using a device's cache, within (T - 1) MiB of the true peak (see
    /// [`MemoryUsageStats`]). Never below `allocated_bytes` when read with
    /// no call in flight.
    pub peak_allocated_bytes: usize,
    /// Bytes asked for by the live allocations, before rounding.
    pub requested_bytes: usize,
    /// Bytes of device memory held in segments.
    pub reserved_bytes: usize,
    /// The highest `reserved_bytes` reached.
    pub peak_reserved_bytes: usize,
    /// Live blocks.
    pub live_blocks: usize,
    /// Allocations served, ever.
    pub allocations: u64,
    /// Frees served, ever.
    pub frees: u64,
    /// Times an allocation found the device full, released cached segments
    /// and retried.
    pub oom_retries: u64,
    /// Segments held now.
    pub segments: usize,
    /// Segments reserved from the device, ever.
    pub segments_reserved: u64,
    /// Freed blocks not yet reusable: they wait for events on the streams
    /// that used them, or for a capture on their stream to end.
    pub pending_frees: usize,
}

impl PoolStats {
    pub(crate) fn on_alloc(&mut self, block: usize, requested: usize) {
        self.allocated_bytes += block;
        self.peak_allocated_bytes = self.peak_allocated_bytes.max(self.allocated_bytes);
        // Wrapping: see `on_free`.
        self.requested_bytes = self.requested_bytes.wrapping_add(requested);
        self.live_blocks += 1;
        self.allocations += 1;
    }

    pub(crate) fn on_free(&mut self, block: usize, requested: usize) {
        self.allocated_bytes -= block;
        // Wrapping: a pool's arena may still count the request a block was
        // first handed out for while a graph-mode cache's unfolded counts
        // hold the change since (a block revived there for a larger
        // request, then freed to the arena); every reader of a pool's
        // figures folds those counts first (`graph_pool/slots.rs`).
        self.requested_bytes = self.requested_bytes.wrapping_sub(requested);
        self.live_blocks -= 1;
        self.frees += 1;
    }

    pub(crate) fn on_reserve(&mut self, bytes: usize) {
        self.reserved_bytes += bytes;
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(self.reserved_bytes);
        self.segments += 1;
        self.segments_reserved += 1;
    }

    pub(crate) fn on_release(&mut self, bytes: usize) {
        self.reserved_bytes -= bytes;
        self.segments -= 1;
    }

    /// Takes back an [`PoolStats::on_reserve`] of a segment that was never
    /// used (its bytes, if any, were unmapped already).
    pub(crate) fn on_reserve_undone(&mut self) {
        self.segments -= 1;
        self.segments_reserved -= 1;
    }

    /// Pages of an expandable segment mapped: `bytes` more reserved.
    pub(crate) fn on_map(&mut self, bytes: usize) {
        self.reserved_bytes += bytes;
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(self.reserved_bytes);
    }

    /// Pages of an expandable segment unmapped: `bytes` less reserved.
    pub(crate) fn on_unmap(&mut self, bytes: usize) {
        self.reserved_bytes -= bytes;
    }

    /// A freed block waits for stream work before it is reusable.
    pub(crate) fn on_defer(&mut self) {
        self.pending_frees += 1;
    }

    /// A waiting freed block became reusable.
    pub(crate) fn on_deferred_done(&mut self) {
        self.pending_frees -= 1;
    }

    /// Every block is gone with its segments (the owner is going away):
    /// no live or pending block remains.
    pub(crate) fn on_blocks_dropped(&mut self) {
        self.allocated_bytes = 0;
        self.requested_bytes = 0;
        self.live_blocks = 0;
        self.pending_frees = 0;
    }

    /// An allocation found the device full and retried.
    pub(crate) fn on_oom_retry(&mut self) {
        self.oom_retries += 1;
    }

    /// Sets both peaks to figures known exactly elsewhere (a sum's gauges).
    fn set_peaks(&mut self, allocated: usize, reserved: usize) {
        self.peak_allocated_bytes = allocated;
        self.peak_reserved_bytes = reserved;
    }

    /// Restarts both peaks from the current figures.
    pub(crate) fn reset_peaks(&mut self) {
        self.peak_allocated_bytes = self.allocated_bytes;
        self.peak_reserved_bytes = self.reserved_bytes;
    }

    /// Adds `other` field by field. Peaks add too, which bounds the peak of
    /// the sum from above; callers that know the exact peak overwrite them.
    pub(crate) fn add(&mut self, other: &PoolStats) {
        self.allocated_bytes += other.allocated_bytes;
        self.peak_allocated_bytes += other.peak_allocated_bytes;
        self.requested_bytes += other.requested_bytes;
        self.reserved_bytes += other.reserved_bytes;
        self.peak_reserved_bytes += other.peak_reserved_bytes;
        self.live_blocks += other.live_blocks;
        self.allocations += other.allocations;
        self.frees += other.frees;
        self.oom_retries += other.oom_retries;
        self.segments += other.segments;
        self.segments_reserved += other.segments_reserved;
        self.pending_frees += other.pending_frees;
    }

    /// The fold of a retired owner: its cumulative counts only.
    pub(crate) fn add_counts(&mut self, other: &PoolStats) {
        self.allocations += other.allocations;
        self.frees += other.frees;
        self.oom_retries += other.oom_retries;
        self.segments_reserved += other.segments_reserved;
    }
}

/// A byte count shared by several owners, with the exact peak of its value.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    pub(crate) fn add(&self, bytes: usize) {
        // Acquire on the increment: see `reset_peak`. (On x86 it costs what
        // Relaxed costs: a locked add either way.)
        // The value may be below zero while thread caches hold changes
        // pending (see `fold`): it wraps, and a value below zero is never a
        // peak.
        let now = self
            .current
            .fetch_add(bytes, Ordering::AcqRel)
            .wrapping_add(bytes);
        if (now as isize) > 0 && now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Restarts the peak from the current value, never leaving it below the
    /// current value.
    ///
    /// An `add` racing with the reset may raise `current` after the first
    /// read here and see the old, higher peak (so skip its `fetch_max`)
    /// before the store lowers it. The second read of `current` is an
    /// AcqRel read-modify-write, so it reads the latest value: either it
    /// includes that `add`, and the peak is raised to it; or the `add`'s own
    /// increment comes later and reads from it (Acquire on Release), so the
    /// store happens before the `add` looks at the peak, and the `add` then
    /// raises the peak itself. (Plain loads would allow the store-buffering
    /// outcome where both sides miss each other.)
    pub(crate) fn reset_peak(&self) {
        // A value below zero (changes still pending elsewhere) reads as 0.
        let read = || (self.current.fetch_add(0, Ordering::AcqRel) as isize).max(0) as usize;
        self.peak.store(read(), Ordering::Relaxed);
        self.peak.fetch_max(read(), Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Applies a signed change of bytes kept pending elsewhere (a thread
    /// cache's, see [`crate::thread_cache`]) and raises the peak to the new
    /// value. While other changes are still pending the value may be below
    /// zero: it wraps, and is read as signed.
    #[inline]
    pub(crate) fn fold(&self, delta: isize) {
        if delta > 0 {
            self.add(delta as usize);
        } else if delta < 0 {
            self.sub(delta.unsigned_abs());
        }
    }

    /// Raises the peak, if needed, to the value plus `pending`, a change
    /// not applied yet: a cache hit's peak check. Two loads and no write
    /// unless the peak rises, so threads that only check share the gauge's
    /// line read-only.
    #[inline]
    pub(crate) fn observe(&self, pending: isize) {
        let now = (self.current.load(Ordering::Relaxed) as isize).wrapping_add(pending);
        if now > 0 && now as usize > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now as usize, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// The allocated and reserved gauges of one group of owners, on cache lines
/// of their own: the thread caches' hits read the caching side's gauges,
/// which the pools' allocations (another group) must not keep writing.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct GaugePair {
    pub(crate) allocated: Gauge,
    pub(crate) reserved: Gauge,
}

impl GaugePair {
    /// Restarts both peaks from the current values.
    pub(crate) fn reset_peaks(&self) {
        for g in [&self.allocated, &self.reserved] {
            g.reset_peak();
        }
    }

    fn apply_peaks(&self, stats: &mut PoolStats) {
        stats.set_peaks(self.allocated.peak(), self.reserved.peak());
    }
}

/// An allocator's shared book of sums: gauges for the caching allocators,
/// for all pools, and for everything.
#[derive(Debug)]
pub(crate) struct StatsBook {
    pub(crate) caching: GaugePair,
    pub(crate) pools: GaugePair,
    pub(crate) total: GaugePair,
    /// Which gauges the caching side keeps.
    caching_sums: CachingSums,
}

/// How the caching side's sums are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CachingSums {
    /// One device, one shard: the caching peaks are the device's own
    /// (its allocated gauge and its arena's reserved peak), exact; only the
    /// total gauge is kept here.
    OneArena,
    /// Several devices, one shard each: the caching and total gauges are kept.
    Gauged,
    /// Sharded caches: no gauge on the caching side, so threads share no
    /// counter; caching and total peaks are sums of peaks (upper bounds).
    Sharded,
}

/// Which side of the book an owner is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Caching,
    Pools,
}

impl StatsBook {
    pub(crate) fn new(caching_sums: CachingSums) -> Self {
        StatsBook {
            caching: GaugePair::default(),
            pools: GaugePair::default(),
            total: GaugePair::default(),
            caching_sums,
        }
    }

    /// The gauges that an event of `side` updates: its group's, where
    /// kept, and the total's, where kept.
    #[inline]
    fn gauges(&self, side: Side) -> [Option<&GaugePair>; 2] {
        match (side, self.caching_sums) {
            (Side::Caching, CachingSums::Sharded) => [None, None],
            (Side::Caching, CachingSums::OneArena) => [None, Some(&self.total)],
            (Side::Caching, CachingSums::Gauged) => [Some(&self.caching), Some(&self.total)],
            (Side::Pools, CachingSums::Sharded) => [Some(&self.pools), None],
            (Side::Pools, _) => [Some(&self.pools), Some(&self.total)],
        }
    }
    /// A block of `side` left its arena. The caching side's gauges follow
    /// the user's allocations instead ([`StatsBook::caching_allocated`]): a
    /// block in a thread cache is out of its arena but free for the user.
    pub(crate) fn allocated(&self, side: Side, bytes: usize) {
        if side == Side::Pools {
            self.pool_allocated(bytes);
        }
    }
    /// A block of `side` went back to its arena; see [`StatsBook::allocated`].
    pub(crate) fn freed(&self, side: Side, bytes: usize) {
        if side == Side::Pools {
            for g in self.gauges(side).into_iter().flatten() {
                g.allocated.sub(bytes);
            }
        }
    }
    fn pool_allocated(&self, bytes: usize) {
        for g in self.gauges(Side::Pools).into_iter().flatten() {
            g.allocated.add(bytes);
        }
    }
    /// The allocated-bytes gauges the pools' changes go to (the pools'
    /// sum's, and the total's where kept): graph pools keep their latest
    /// free pending and fold it into these (`graph_pool/pending.rs`).
    #[inline]
    pub(crate) fn pools_allocated(&self) -> impl Iterator<Item = &Gauge> {
        self.allocated_gauges(Side::Pools)
    }
    #[inline]
    fn allocated_gauges(&self, side: Side) -> impl Iterator<Item = &Gauge> {
        self.gauges(side)
            .into_iter()
            .flatten()
            .map(|g| &g.allocated)
    }
    /// The allocated-bytes gauges the caching side keeps here (none, the
    /// total's, or the caching sum's and the total's): the thread caches
    /// fold the user's allocations and frees into them.
    #[inline]
    pub(crate) fn caching_allocated(&self) -> impl Iterator<Item = &Gauge> {
        self.allocated_gauges(Side::Caching)
    }
    pub(crate) fn reserved(&self, side: Side, bytes: usize) {
        for g in self.gauges(side).into_iter().flatten() {
            g.reserved.add(bytes);
        }
    }
    pub(crate) fn released(&self, side: Side, bytes: usize) {
        for g in self.gauges(side).into_iter().flatten() {
            g.reserved.sub(bytes);
        }
    }

    /// Builds the summed view from per-owner figures: the caching
    /// allocators' sum and the pools' (live pools' figures plus the counts
    /// of those dropped).
    pub(crate) fn summarize(
        &self,
        caching: PoolStats,
        pools: PoolStats,
        in_graph_mode: bool,
    ) -> MemoryUsageStats {
        let (mut caching, mut pools) = (caching, pools);
        if self.caching_sums == CachingSums::Gauged {
            self.caching.apply_peaks(&mut caching);
        }
        self.pools.apply_peaks(&mut pools);
        let mut total = caching;
        total.add(&pools);
        if self.caching_sums != CachingSums::Sharded {
            self.total.apply_peaks(&mut total);
        }
        MemoryUsageStats {
            caching,
            pools,
            total,
            in_graph_mode,
        }
    }
}

/// An allocator's statistics: the caching allocators (all devices), the
/// graph pools (all pools, also those already dropped), and both summed.
///
/// Current figures are exact whenever no allocation or free is in flight
/// (the caching side's allocated, requested, live-block, allocation and
/// free figures are per-thread counts summed when asked; a block in a
/// thread's cache of freed blocks counts as freed, and as cached in
/// `reserved_bytes`). Peaks cover the time since the allocator was built or since
/// [`crate::Allocator::reset_peak_stats`]. The reserved peaks are exact.
/// The pools' allocated peak is never below the true peak: each pool keeps
/// its latest free pending (so that a graph-mode allocate/free pair writes
/// no shared counter), and a peak may count the pending frees of the pools
/// other than the one allocating, at most one block each (each pool's own
/// peaks, [`crate::GraphPool::stats`], are exact). The total's may count
/// them too. The caching and total allocated peaks come from
/// gauges into which each thread's cache folds its changes of allocated
/// bytes in batches (so that a cache hit writes no line another thread
/// writes): a thread keeps up to 1 MiB ([`crate::SMALL_REQUEST_MAX`], the
/// largest cacheable block) of changes pending, and checks the peak on a
/// hit against the shared value plus its own pending change. So these peaks
/// are exact while one thread uses the caching allocators (a single-threaded
/// program, or threads taking turns with the statistics read in between);
/// with T threads' caches (threads x devices used) they are within
/// (T - 1) MiB of the true peak, above or below; and read with no call in
/// flight they are never below the current figure. With a sharded cache
/// (`shards` > 1), the caching and total peaks are the sums of the shards'
/// peaks, an upper bound.
///
/// ```
/// let alloc = graphalloc::Allocator::new(graphalloc::Config::host(1 << 30)).unwrap();
/// let p = alloc.allocate(1000, 1).unwrap();
/// let stats = alloc.stats();
/// assert_eq!(stats.caching.requested_bytes, 1000);
/// assert_eq!(stats.caching.allocated_bytes, 1024);
/// alloc.free(p).unwrap();
/// println!("{stats}");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsageStats {
    /// The caching allocators, summed over devices.
    pub caching: PoolStats,
    /// The graph pools, summed.
    pub pools: PoolStats,
    /// Everything.
    pub total: PoolStats,
    /// Whether the calling thread was in graph mode for this allocator.
    pub in_graph_mode: bool,
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocated {:.2} MB (peak {:.2} MB), reserved {:.2} MB (peak {:.2} MB), \
             {} live blocks, {} allocations, {} frees, {} OOM retries",
            mb(self.allocated_bytes),
            mb(self.peak_allocated_bytes),
            mb(self.reserved_bytes),
            mb(self.peak_reserved_bytes),
            self.live_blocks,
            self.allocations,
            self.frees,
            self.oom_retries,
        )
    }
}

impl fmt::Display for MemoryUsageStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "caching: {}", self.caching)?;
        writeln!(f, "pools:   {}", self.pools)?;
        writeln!(f, "total:   {}", self.total)?;
        write!(f, "graph mode: {}", self.in_graph_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gauge below zero (other threads' changes still pending) wraps;
    /// an addition that leaves it below zero, and a reset then, must not
    /// take the peak to the wrapped value (it did: about 2^64).
    #[test]
    fn a_gauge_below_zero_is_never_a_peak() {
        let g = Gauge::default();
        g.add(8192);
        g.fold(-12288);
        g.add(512);
        assert_eq!(g.peak(), 8192);
        g.reset_peak();
        assert_eq!(g.peak(), 0);
        g.add(8192);
        assert_eq!(g.peak(), 4608);
    }

    #[test]
    fn display_uses_fractional_megabytes() {
        let stats = PoolStats {
            allocated_bytes: 1536 * 1024,
            peak_allocated_bytes: 512 * 1024,
            ..PoolStats::default()
        };
        let text = stats.to_string();
        assert!(text.contains("allocated 1.50 MB"), "{text}");
        assert!(text.contains("peak 0.50 MB"), "{text}");
    }

    #[test]
    fn gauge_keeps_the_peak_of_its_value() {
        let g = Gauge::default();
        g.add(10);
        g.add(5);
        g.sub(12);
        g.add(4);
        assert_eq!(g.current(), 7);
        assert_eq!(g.peak(), 15);
    }
}
