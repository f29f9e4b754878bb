//! Trace replay: parse allocation traces and replay them through an allocator.
//!
//! A trace is a text file, usually gzip'd, recorded from a real workload
//! (see `traces/`). Lines starting with `#` are comments and blank lines are
//! skipped; every other line is one event in program order:
//!
//! ```text
//! a ID SIZE STREAM    allocate SIZE bytes on STREAM as block ID
//! f ID                free block ID
//! ```
//!
//! [`Trace`] parses the whole file first into a compact [`Vec`] of
//! [`Event`]s, with each block ID mapped to a dense slot, so that a replay
//! spends its time in the allocator, not in parsing or hashing. [`Player`]
//! runs the events through an [`Allocator`] once; [`replay`] does the full
//! measurement: cold passes (each on a fresh allocator, so each starts from
//! an empty cache), warm passes (again on a cache that already holds the
//! segments of a pass), and optionally the allocated and reserved bytes over
//! the trace ([`Series`]), in an untimed pass of its own.
//!
//! ```
//! use graphalloc::replay::{replay, ReplayOptions, Trace};
//! use graphalloc::{Allocator, Config};
//!
//! let trace = Trace::parse_str("demo", "# demo\na 0 4096 0\na 1 512 0\nf 0\nf 1\n")?;
//! let options = ReplayOptions { runs: 3, ..ReplayOptions::default() };
//! let report = replay(&trace, &options, || Allocator::new(Config::host(1 << 30)), |_| {})?;
//! assert_eq!(report.events, 4);
//! assert_eq!(report.peak_allocated, 4096 + 512);
//! assert!(report.peak_reserved >= report.peak_allocated);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::backend::BackendKind;
use crate::device_ptr::DevicePtr;
use crate::error::Error;
use crate::global::Allocator;
use rustc_hash::FxHashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest piece of a bad line that an error quotes.
const QUOTE_MAX: usize = 160;

/// One event of a trace. Blocks are named by dense slots (`0..Trace::slots()`)
/// in the order the trace allocates them, not by the trace's own IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Allocate `size` bytes on `stream` as block `slot`.
    Alloc {
        /// The block's slot.
        slot: u32,
        /// Bytes requested (never zero).
        size: usize,
        /// The stream tag.
        stream: u64,
    },
    /// Free block `slot`, allocated by an earlier event.
    Free {
        /// The block's slot.
        slot: u32,
    },
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The file could not be opened or read (or is not valid gzip).
    #[error("cannot read trace {}: {source}", path.display())]
    Io {
        /// The file, or `<reader>` when parsing from a reader.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line that is not a comment, a blank line, `a ID SIZE STREAM` or `f ID`.
    #[error("line {line}: {reason}: {text:?}")]
    Malformed {
        /// The 1-based line number.
        line: usize,
        /// The line (without its line break; long lines are cut short).
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `a` line whose ID was already allocated earlier in the trace.
    #[error("line {line}: block id {id} allocated again (first allocated on line {first_line}): {text:?}")]
    DuplicateId {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The block ID.
        id: u64,
        /// The line that allocated it first.
        first_line: usize,
    },
    /// An `f` line whose ID was never allocated.
    #[error("line {line}: free of unknown block id {id}: {text:?}")]
    UnknownId {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The block ID.
        id: u64,
    },
    /// An `f` line whose block was already freed.
    #[error(
        "line {line}: block id {id} freed again (already freed on line {freed_line}): {text:?}"
    )]
    DoubleFree {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The block ID.
        id: u64,
        /// The line that freed it first.
        freed_line: usize,
    },
    /// More blocks than a replay can index (`u32::MAX`).
    #[error("line {line}: more than {} allocations", u32::MAX)]
    TooManyBlocks {
        /// The 1-based line number.
        line: usize,
    },
    /// The trace has no events at all.
    #[error("trace {name} has no events")]
    Empty {
        /// The trace's name.
        name: String,
    },
}

impl TraceError {
    /// The 1-based line number the error is about, if it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            TraceError::Malformed { line, .. }
            | TraceError::DuplicateId { line, .. }
            | TraceError::UnknownId { line, .. }
            | TraceError::DoubleFree { line, .. }
            | TraceError::TooManyBlocks { line } => Some(*line),
            TraceError::Io { .. } | TraceError::Empty { .. } => None,
        }
    }
}

/// A parsed trace: its events in program order.
///
/// Parsing checks that the trace can be replayed: every ID is allocated once,
/// and freed at most once, after its allocation. Blocks still live at the end
/// are allowed (a recording stops while the program still holds memory).
#[derive(Debug, Clone)]
pub struct Trace {
    name: String,
    events: Vec<Event>,
    /// The trace's own ID of each slot.
    ids: Vec<u64>,
    frees: usize,
    peak_requested: usize,
}

/// The state of one block ID while parsing.
struct IdState {
    slot: u32,
    size: usize,
    alloc_line: usize,
    freed_line: Option<usize>,
}

impl Trace {
    /// Reads a trace file, gzip'd or plain text (told apart by the gzip magic
    /// bytes, not by the file name). The trace is named after the file, less
    /// `.gz`, `.trace` and `.txt` endings.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Trace, TraceError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
            path: path.to_owned(),
            source,
        })?;
        Trace::read(&trace_name(path), path, file)
    }

    /// Reads a trace from `reader`, gzip'd or plain text.
    pub fn from_reader(name: &str, reader: impl Read) -> Result<Trace, TraceError> {
        Trace::read(name, Path::new("<reader>"), reader)
    }

    /// Parses a trace held in a string.
    pub fn parse_str(name: &str, text: &str) -> Result<Trace, TraceError> {
        Trace::from_reader(name, text.as_bytes())
    }

    fn read(name: &str, path: &Path, reader: impl Read) -> Result<Trace, TraceError> {
        let io_error = |source| TraceError::Io {
            path: path.to_owned(),
            source,
        };
        let mut buffered = BufReader::with_capacity(1 << 16, reader);
        let head = buffered.fill_buf().map_err(io_error)?;
        if head.starts_with(&[0x1f, 0x8b]) {
            let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
            Trace::parse_lines(name, path, BufReader::with_capacity(1 << 16, decoder))
        } else {
            Trace::parse_lines(name, path, buffered)
        }
    }

    fn parse_lines(name: &str, path: &Path, mut input: impl BufRead) -> Result<Trace, TraceError> {
        let mut events = Vec::new();
        let mut ids = Vec::new();
        let mut states: FxHashMap<u64, IdState> = FxHashMap::default();
        let mut frees = 0;
        let mut live_requested = 0usize;
        let mut peak_requested = 0usize;
        let mut raw = Vec::with_capacity(64);
        let mut line = 0usize;
        loop {
            raw.clear();
            let n = input
                .read_until(b'\n', &mut raw)
                .map_err(|source| TraceError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            line += 1;
            let Ok(text) = std::str::from_utf8(&raw) else {
                return Err(TraceError::Malformed {
                    line,
                    text: quote(&String::from_utf8_lossy(&raw)),
                    reason: "not valid UTF-8".into(),
                });
            };
            let text = text.trim_end_matches(['\n', '\r']);
            let body = text.trim();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| TraceError::Malformed {
                line,
                text: quote(text),
                reason: reason.into(),
            };
            let mut fields = body.split_ascii_whitespace();
            let op = fields.next().expect("a non-blank line has a field");
            let number = |field: Option<&str>, what: &str| -> Result<u64, TraceError> {
                let field = field.ok_or_else(|| malformed(&format!("missing {what}")))?;
                field
                    .parse::<u64>()
                    .map_err(|_| malformed(&format!("{what} {field:?} is not a whole number")))
            };
            match op {
                "a" => {
                    let id = number(fields.next(), "block id")?;
                    let size = number(fields.next(), "size")?;
                    let stream = number(fields.next(), "stream")?;
                    if fields.next().is_some() {
                        return Err(malformed("extra fields after `a ID SIZE STREAM`"));
                    }
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|&s| s > 0)
                        .ok_or_else(|| malformed("size must be positive"))?;
                    let slot =
                        u32::try_from(ids.len()).map_err(|_| TraceError::TooManyBlocks { line })?;
                    if let Some(first) = states.get(&id) {
                        return Err(TraceError::DuplicateId {
                            line,
                            text: quote(text),
                            id,
                            first_line: first.alloc_line,
                        });
                    }
                    states.insert(
                        id,
                        IdState {
                            slot,
                            size,
                            alloc_line: line,
                            freed_line: None,
                        },
                    );
                    ids.push(id);
                    live_requested = live_requested.saturating_add(size);
                    peak_requested = peak_requested.max(live_requested);
                    events.push(Event::Alloc { slot, size, stream });
                }
                "f" => {
                    let id = number(fields.next(), "block id")?;
                    if fields.next().is_some() {
                        return Err(malformed("extra fields after `f ID`"));
                    }
                    let Some(state) = states.get_mut(&id) else {
                        return Err(TraceError::UnknownId {
                            line,
                            text: quote(text),
                            id,
                        });
                    };
                    if let Some(freed_line) = state.freed_line {
                        return Err(TraceError::DoubleFree {
                            line,
                            text: quote(text),
                            id,
                            freed_line,
                        });
                    }
                    state.freed_line = Some(line);
                    let slot = state.slot;
                    live_requested -= state.size;
                    frees += 1;
                    events.push(Event::Free { slot });
                }
                _ => return Err(malformed("expected `a ID SIZE STREAM` or `f ID`")),
            }
        }
        if events.is_empty() {
            return Err(TraceError::Empty { name: name.into() });
        }
        events.shrink_to_fit();
        Ok(Trace {
            name: name.into(),
            events,
            ids,
            frees,
            peak_requested,
        })
    }

    /// The trace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The events, in program order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events (the lines that are neither comments nor blank).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the trace has no events (never true for a parsed trace).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Number of `a` events, which is also the number of slots.
    pub fn allocations(&self) -> usize {
        self.ids.len()
    }

    /// Number of `f` events.
    pub fn frees(&self) -> usize {
        self.frees
    }

    /// Blocks the trace allocates and never frees.
    pub fn left_live(&self) -> usize {
        self.ids.len() - self.frees
    }

    /// The trace's own ID of a slot.
    pub fn id_of(&self, slot: u32) -> Option<u64> {
        self.ids.get(slot as usize).copied()
    }

    /// The highest sum of requested bytes live at once: what a perfect
    /// allocator with no rounding would have to hold.
    pub fn peak_requested(&self) -> usize {
        self.peak_requested
    }
}

/// `text` cut to [`QUOTE_MAX`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A trace's name from its file name: `dir/resnet50_train.trace.gz` →
/// `resnet50_train`.
pub fn trace_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    for ending in [".gz", ".txt", ".trace"] {
        if let Some(stem) = name.strip_suffix(ending) {
            if !stem.is_empty() {
                name = stem.to_owned();
            }
        }
    }
    name
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The factory could not build an allocator.
    #[error("cannot build an allocator for the replay: {0}")]
    Build(#[source] Error),
    /// An allocation of the trace failed (out of memory, most likely).
    #[error("event #{event}: allocating {size} bytes as block {id} failed: {source}")]
    Allocate {
        /// The 1-based number of the event in the trace.
        event: usize,
        /// The trace's ID of the block.
        id: u64,
        /// Bytes requested.
        size: usize,
        /// The allocator's error.
        #[source]
        source: Error,
    },
    /// A free of the trace failed (which would be a bug in the allocator).
    #[error("event #{event}: freeing block {id} failed: {source}")]
    Free {
        /// The 1-based number of the event in the trace, or 0 when freeing
        /// what a pass left live.
        event: usize,
        /// The trace's ID of the block.
        id: u64,
        /// The allocator's error.
        #[source]
        source: Error,
    },
    /// Releasing the cache after a pass failed.
    #[error("releasing the cache after a pass failed: {0}")]
    Release(#[source] Error),
}

/// The allocated and reserved bytes over one stretch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeriesPoint {
    /// The 0-based index of the stretch's first event.
    pub first_event: usize,
    /// One past the index of its last event.
    pub end_event: usize,
    /// The least allocated bytes after any event of the stretch.
    pub allocated_min: usize,
    /// The most allocated bytes after any event of the stretch.
    pub allocated_max: usize,
    /// The most reserved bytes after any event of the stretch.
    pub reserved_max: usize,
}

/// Allocated and reserved bytes over a trace, in stretches of `bucket`
/// events, so that no peak is lost between samples.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Series {
    /// Events per stretch (the last stretch may be shorter).
    pub bucket: usize,
    /// One point per stretch, in trace order.
    pub points: Vec<SeriesPoint>,
}

impl Series {
    /// The highest allocated bytes of the series.
    pub fn peak_allocated(&self) -> usize {
        self.points
            .iter()
            .map(|p| p.allocated_max)
            .max()
            .unwrap_or(0)
    }

    /// The highest reserved bytes of the series.
    pub fn peak_reserved(&self) -> usize {
        self.points
            .iter()
            .map(|p| p.reserved_max)
            .max()
            .unwrap_or(0)
    }
}

/// Runs a trace's events through an allocator, keeping the pointers of the
/// blocks it holds between events.
///
/// A pass leaves the blocks the trace never frees live; [`Player::free_all`]
/// frees them. Each pass starts by freeing what the previous one left (not
/// timed).
#[derive(Debug)]
pub struct Player<'t> {
    trace: &'t Trace,
    live: Vec<Option<DevicePtr>>,
    holding: bool,
    device: usize,
    align: usize,
}

impl<'t> Player<'t> {
    /// A player allocating on device 0 with 512-byte alignment.
    pub fn new(trace: &'t Trace) -> Self {
        Player::with_placement(trace, 0, crate::BLOCK_ROUND)
    }

    /// A player allocating on `device` with alignment `align`.
    pub fn with_placement(trace: &'t Trace, device: usize, align: usize) -> Self {
        Player {
            trace,
            live: vec![None; trace.allocations()],
            holding: false,
            device,
            align,
        }
    }

    /// Runs every event once through `alloc`; returns the time the events
    /// took. Blocks left live by an earlier pass are freed first, outside the
    /// timing.
    pub fn play(&mut self, alloc: &Allocator) -> Result<Duration, ReplayError> {
        self.free_all(alloc)?;
        self.holding = true;
        let (device, align) = (self.device, self.align);
        let live = &mut self.live[..];
        let start = Instant::now();
        for (i, event) in self.trace.events.iter().enumerate() {
            match *event {
                Event::Alloc { slot, size, stream } => {
                    match alloc.allocate_on(device, stream, size, align) {
                        Ok(ptr) => live[slot as usize] = Some(ptr),
                        Err(source) => {
                            return Err(ReplayError::Allocate {
                                event: i + 1,
                                id: self.trace.ids[slot as usize],
                                size,
                                source,
                            })
                        }
                    }
                }
                Event::Free { slot } => {
                    if let Some(ptr) = live[slot as usize].take() {
                        if let Err(source) = alloc.free(ptr) {
                            return Err(ReplayError::Free {
                                event: i + 1,
                                id: self.trace.ids[slot as usize],
                                source,
                            });
                        }
                    }
                }
            }
        }
        Ok(start.elapsed())
    }

    /// Runs every event once through `alloc`, untimed, recording the
    /// allocated and reserved bytes (`alloc.stats().total`) after every event
    /// into about `points` stretches. Blocks left live by an earlier pass are
    /// freed first.
    pub fn play_sampled(
        &mut self,
        alloc: &Allocator,
        points: usize,
    ) -> Result<Series, ReplayError> {
        self.free_all(alloc)?;
        self.holding = true;
        let events = self.trace.len();
        let bucket = events.div_ceil(points.max(1)).max(1);
        let mut series = Series {
            bucket,
            points: Vec::with_capacity(events.div_ceil(bucket)),
        };
        let mut current: Option<SeriesPoint> = None;
        for (i, event) in self.trace.events.iter().enumerate() {
            self.step(alloc, i, *event)?;
            let total = alloc.stats().total;
            let (allocated, reserved) = (total.allocated_bytes, total.reserved_bytes);
            let point = current.get_or_insert(SeriesPoint {
                first_event: i,
                end_event: i,
                allocated_min: allocated,
                allocated_max: allocated,
                reserved_max: reserved,
            });
            point.end_event = i + 1;
            point.allocated_min = point.allocated_min.min(allocated);
            point.allocated_max = point.allocated_max.max(allocated);
            point.reserved_max = point.reserved_max.max(reserved);
            if point.end_event - point.first_event == bucket {
                series.points.extend(current.take());
            }
        }
        series.points.extend(current);
        Ok(series)
    }

    fn step(&mut self, alloc: &Allocator, i: usize, event: Event) -> Result<(), ReplayError> {
        match event {
            Event::Alloc { slot, size, stream } => {
                let ptr = alloc
                    .allocate_on(self.device, stream, size, self.align)
                    .map_err(|source| ReplayError::Allocate {
                        event: i + 1,
                        id: self.trace.ids[slot as usize],
                        size,
                        source,
                    })?;
                self.live[slot as usize] = Some(ptr);
            }
            Event::Free { slot } => {
                if let Some(ptr) = self.live[slot as usize].take() {
                    alloc.free(ptr).map_err(|source| ReplayError::Free {
                        event: i + 1,
                        id: self.trace.ids[slot as usize],
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Blocks held now.
    pub fn live_blocks(&self) -> usize {
        self.live.iter().filter(|p| p.is_some()).count()
    }

    /// Frees every block held now; returns how many there were.
    pub fn free_all(&mut self, alloc: &Allocator) -> Result<usize, ReplayError> {
        if !self.holding {
            return Ok(0);
        }
        let mut freed = 0;
        for (slot, entry) in self.live.iter_mut().enumerate() {
            if let Some(ptr) = entry.take() {
                alloc.free(ptr).map_err(|source| ReplayError::Free {
                    event: 0,
                    id: self.trace.ids[slot],
                    source,
                })?;
                freed += 1;
            }
        }
        self.holding = false;
        Ok(freed)
    }

    /// Frees every block held now and releases `alloc`'s cached segments,
    /// leaving it as it was before the first pass (and still usable, unlike
    /// dropping it, which releases its segments too).
    pub fn teardown(&mut self, alloc: &Allocator) -> Result<(), ReplayError> {
        self.free_all(alloc)?;
        alloc.empty_cache().map_err(ReplayError::Release)?;
        Ok(())
    }
}

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
            align: crate::BLOCK_ROUND,
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
    pub maps: crate::MappingStats,
    /// Mapping calls of all warm passes together, if warm passes were run.
    pub warm_maps: Option<crate::MappingStats>,
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
