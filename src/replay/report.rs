//! [`replay`]: the full measurement of a trace (cold, warm and series
//! passes) and its [`ReplayReport`].

use super::player::{Player, ReplayError, Series};
use super::trace::Trace;
use crate::allocator::Allocator;
use crate::arena::BLOCK_ROUND;
use crate::backend::BackendKind;
use crate::device::MappingStats;
use crate::error::Error;
use std::fmt;
use std::time::Duration;

/// How [`replay`] measures a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Cold passes, each on a fresh allocator (so from an empty cache); the
    /// report gives their median. At least 1.
    pub runs: usize,
    /// Whether to time warm passes too (`runs` of them, the report gives
    /// their median): on the allocator of the last cold pass, each after
    /// freeing what the pass before left live, without emptying the cache.
    pub warm: bool,
    /// About how many points of allocated and reserved bytes to record over
    /// the trace, in an extra untimed pass on a fresh allocator; 0 for none.
    pub series_points: usize,
    /// The device to allocate on.
    pub device: usize,
    /// The alignment of every allocation.
    pub align: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            runs: 5,
            warm: true,
            series_points: 0,
            device: 0,
            align: BLOCK_ROUND,
        }
    }
}

impl ReplayOptions {
    /// The number of passes [`replay`] makes (and of calls to its progress
    /// callback).
    pub fn passes(&self) -> usize {
        let runs = self.runs.max(1);
        runs + if self.warm { runs } else { 0 } + usize::from(self.series_points > 0)
    }
}

/// A pass of [`replay`], as told to its progress callback when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Cold pass `run` (1-based) of `runs`.
    Cold {
        /// This pass.
        run: usize,
        /// All cold passes.
        runs: usize,
    },
    /// Warm pass `run` (1-based) of `runs`.
    Warm {
        /// This pass.
        run: usize,
        /// All warm passes.
        runs: usize,
    },
    /// The untimed pass recording the series.
    Series,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Cold { run, runs } => write!(f, "cold pass {run}/{runs}"),
            Phase::Warm { run, runs } => write!(f, "warm pass {run}/{runs}"),
            Phase::Series => f.write_str("series pass"),
        }
    }
}

/// What [`replay`] measured on one trace.
///
/// Memory figures come from the first cold pass, read from
/// `stats().total` of its fresh allocator right after the last event.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// The trace's name.
    pub trace: String,
    /// The backend of the allocators replayed on.
    pub backend: BackendKind,
    /// Events in the trace.
    pub events: usize,
    /// Allocations in the trace.
    pub allocations: usize,
    /// Frees in the trace.
    pub frees: usize,
    /// Blocks the trace leaves live at its end.
    pub left_live: usize,
    /// The highest sum of requested bytes live at once (a property of the
    /// trace, before any rounding).
    pub peak_requested: usize,
    /// Nanoseconds per event of each cold pass, in the order run.
    pub cold_runs_ns_per_event: Vec<f64>,
    /// The median of `cold_runs_ns_per_event`.
    pub ns_per_event: f64,
    /// Nanoseconds per event of each warm pass, in the order run.
    pub warm_runs_ns_per_event: Vec<f64>,
    /// The median of `warm_runs_ns_per_event`, if warm passes were run.
    pub warm_ns_per_event: Option<f64>,
    /// Segments the warm passes had to reserve (0 when the cache left by the
    /// cold pass served every request), if warm passes were run.
    pub warm_segments_created: Option<u64>,
    /// The highest allocated bytes (live blocks, rounded sizes).
    pub peak_allocated: usize,
    /// The highest reserved bytes (segments held).
    pub peak_reserved: usize,
    /// `peak_reserved / peak_allocated`: the fragmentation overhead.
    pub ratio: f64,
    /// Segments reserved from the device during the pass.
    pub segments_created: u64,
    /// Times an allocation found the device full, released cached segments
    /// and retried.
    pub oom_retries: u64,
    /// Allocated bytes after the last pass and freeing every block it left
    /// live (0 unless the allocator lost track of a block).
    pub allocated_after_free: usize,
    /// Reserved bytes after that and emptying the cache (0 likewise).
    pub reserved_after_empty: usize,
    /// Mapping calls (expandable segments) of the first cold pass.
    pub maps: MappingStats,
    /// Mapping calls of all warm passes together, if warm passes were run.
    pub warm_maps: Option<MappingStats>,
    /// Allocated and reserved bytes over the trace, if asked for.
    pub series: Option<Series>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn ns_per_event(elapsed: Duration, events: usize) -> f64 {
    elapsed.as_nanos() as f64 / events.max(1) as f64
}

/// Runs `f` on a fresh allocator from `factory`, then tears it down (also
/// when `f` fails), returning what `f` returned.
fn with_fresh<R>(
    factory: &mut impl FnMut() -> Result<Allocator, Error>,
    player: &mut Player<'_>,
    f: impl FnOnce(&Allocator, &mut Player<'_>) -> Result<R, ReplayError>,
) -> Result<(R, Allocator), ReplayError> {
    let alloc = factory().map_err(ReplayError::Build)?;
    match f(&alloc, player) {
        Ok(r) => Ok((r, alloc)),
        Err(e) => {
            // Best effort: the error being reported matters more.
            let _ = player.teardown(&alloc);
            Err(e)
        }
    }
}

/// Measures `trace` as [`ReplayOptions`] say; see the module docs.
///
/// `factory` builds a fresh, empty allocator for each cold pass (and for the
/// series pass); every allocator is torn down ([`Player::teardown`]) before
/// the next is built, so no two hold device memory at once. `progress` is told
/// of every pass when it is done.
pub fn replay(
    trace: &Trace,
    options: &ReplayOptions,
    mut factory: impl FnMut() -> Result<Allocator, Error>,
    mut progress: impl FnMut(Phase),
) -> Result<ReplayReport, ReplayError> {
    let runs = options.runs.max(1);
    let events = trace.len();
    let mut player = Player::with_placement(trace, options.device, options.align);
    let mut cold = Vec::with_capacity(runs);
    let mut first = None;
    let mut last: Option<Allocator> = None;
    for run in 1..=runs {
        if let Some(alloc) = last.take() {
            player.teardown(&alloc)?;
        }
        let ((elapsed, total), alloc) = with_fresh(&mut factory, &mut player, |alloc, player| {
            let elapsed = player.play(alloc)?;
            Ok((elapsed, alloc.stats().total))
        })?;
        cold.push(ns_per_event(elapsed, events));
        first.get_or_insert((total, alloc.backend_kind(), alloc.mapping_stats()));
        last = Some(alloc);
        progress(Phase::Cold { run, runs });
    }
    let alloc = last.expect("at least one cold pass");
    let (total, backend, maps) = first.expect("at least one cold pass");

    let mut warm = Vec::new();
    let mut warm_created = None;
    let mut warm_maps = None;
    if options.warm {
        let before = alloc.stats().total.segments_reserved;
        let maps_before = alloc.mapping_stats();
        for run in 1..=runs {
            match player.play(&alloc) {
                Ok(elapsed) => warm.push(ns_per_event(elapsed, events)),
                Err(e) => {
                    let _ = player.teardown(&alloc);
                    return Err(e);
                }
            }
            progress(Phase::Warm { run, runs });
        }
        warm_created = Some(alloc.stats().total.segments_reserved - before);
        warm_maps = Some(alloc.mapping_stats().since(&maps_before));
    }
    player.free_all(&alloc)?;
    let allocated_after_free = alloc.stats().total.allocated_bytes;
    player.teardown(&alloc)?;
    let reserved_after_empty = alloc.stats().total.reserved_bytes;
    drop(alloc);

    let mut series = None;
    if options.series_points > 0 {
        let (s, alloc) = with_fresh(&mut factory, &mut player, |alloc, player| {
            player.play_sampled(alloc, options.series_points)
        })?;
        player.teardown(&alloc)?;
        series = Some(s);
        progress(Phase::Series);
    }

    let (peak_allocated, peak_reserved) = (total.peak_allocated_bytes, total.peak_reserved_bytes);
    Ok(ReplayReport {
        trace: trace.name().to_owned(),
        backend,
        events,
        allocations: trace.allocations(),
        frees: trace.frees(),
        left_live: trace.left_live(),
        peak_requested: trace.peak_requested(),
        ns_per_event: median(&cold),
        cold_runs_ns_per_event: cold,
        warm_ns_per_event: (!warm.is_empty()).then(|| median(&warm)),
        warm_runs_ns_per_event: warm,
        warm_segments_created: warm_created,
        peak_allocated,
        peak_reserved,
        ratio: peak_reserved as f64 / peak_allocated.max(1) as f64,
        segments_created: total.segments_reserved,
        oom_retries: total.oom_retries,
        allocated_after_free,
        reserved_after_empty,
        maps,
        warm_maps,
        series,
    })
}
