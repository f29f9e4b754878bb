//! [`Player`]: runs a trace's events through an allocator, timed or sampled
//! ([`Series`]), with the one event loop both share.

use super::trace::{Event, Trace};
use crate::allocator::Allocator;
use crate::arena::BLOCK_ROUND;
use crate::device_ptr::DevicePtr;
use crate::error::Error;
use crate::stream::LAST_BUILTIN_STREAM;
use std::time::{Duration, Instant};

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
    /// The allocator could not make a stream for one of the trace's streams
    /// ([`Allocator::create_stream`]).
    #[error("making a stream for the trace's stream {stream}: {source}")]
    Stream {
        /// The trace's stream tag.
        stream: u64,
        /// The allocator's error.
        #[source]
        source: Error,
    },
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
///
/// The trace's stream tags 0, 1 and 2 are the allocator's built-in streams;
/// every other tag (a recorded `cudaStream_t`, say) gets a stream of its own
/// from the allocator ([`Allocator::create_stream`]), made before the first
/// pass on each allocator, outside the timing. So blocks stay on their
/// streams as they did in the recorded run: a block freed on one stream is
/// reused at once only on that stream.
#[derive(Debug)]
pub struct Player<'t> {
    trace: &'t Trace,
    live: Vec<Option<DevicePtr>>,
    holding: bool,
    device: usize,
    align: usize,
    /// (trace tag, allocator stream) of every tag past the built-in ones,
    /// sorted by tag.
    streams: Vec<(u64, u64)>,
    /// The allocator `streams` were made on (its id), 0 before any.
    streams_of: u64,
}

impl<'t> Player<'t> {
    /// A player allocating on device 0 with 512-byte alignment.
    pub fn new(trace: &'t Trace) -> Self {
        Player::with_placement(trace, 0, BLOCK_ROUND)
    }

    /// A player allocating on `device` with alignment `align`.
    pub fn with_placement(trace: &'t Trace, device: usize, align: usize) -> Self {
        let mut tags: Vec<u64> = (trace.events().iter())
            .filter_map(|e| match *e {
                Event::Alloc { stream, .. } if stream > LAST_BUILTIN_STREAM => Some(stream),
                _ => None,
            })
            .collect();
        tags.sort_unstable();
        tags.dedup();
        Player {
            trace,
            live: vec![None; trace.allocations()],
            holding: false,
            device,
            align,
            streams: tags.into_iter().map(|t| (t, t)).collect(),
            streams_of: 0,
        }
    }

    /// Makes a stream on `alloc` for each of the trace's tags past the
    /// built-in ones, unless they were made on `alloc` already. On failure
    /// the streams are as before (those of the allocator they were made on).
    fn open_streams(&mut self, alloc: &Allocator) -> Result<(), ReplayError> {
        if self.streams.is_empty() || self.streams_of == alloc.id() {
            return Ok(());
        }
        let made = (self.streams.iter())
            .map(|&(tag, _)| match alloc.create_stream(self.device) {
                Ok(stream) => Ok((tag, stream)),
                Err(source) => Err(ReplayError::Stream {
                    stream: tag,
                    source,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.streams = made;
        self.streams_of = alloc.id();
        Ok(())
    }

    /// Runs every event once through `alloc`; returns the time the events
    /// took. Blocks left live by an earlier pass are freed first, outside the
    /// timing.
    pub fn play(&mut self, alloc: &Allocator) -> Result<Duration, ReplayError> {
        self.free_all(alloc)?;
        self.open_streams(alloc)?;
        let start = Instant::now();
        self.run(alloc, |_| {})?;
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
        self.open_streams(alloc)?;
        let events = self.trace.len();
        let bucket = events.div_ceil(points.max(1)).max(1);
        let mut series = Series {
            bucket,
            points: Vec::with_capacity(events.div_ceil(bucket)),
        };
        let mut current: Option<SeriesPoint> = None;
        self.run(alloc, |i| {
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
        })?;
        series.points.extend(current);
        Ok(series)
    }

    /// Runs every event once through `alloc`, untimed, calling
    /// `after_event` with each event's 0-based index after it (to read
    /// statistics or take a snapshot at a chosen event). Blocks left live by
    /// an earlier pass are freed first.
    pub fn play_observed(
        &mut self,
        alloc: &Allocator,
        after_event: impl FnMut(usize),
    ) -> Result<(), ReplayError> {
        self.free_all(alloc)?;
        self.open_streams(alloc)?;
        self.run(alloc, after_event)
    }

    /// The event loop of every pass: runs each event through `alloc`, then
    /// calls `after_event` with its 0-based index. The caller has freed what
    /// an earlier pass left live.
    fn run(
        &mut self,
        alloc: &Allocator,
        mut after_event: impl FnMut(usize),
    ) -> Result<(), ReplayError> {
        self.holding = true;
        let (trace, device, align) = (self.trace, self.device, self.align);
        let (live, streams) = (&mut self.live[..], &self.streams[..]);
        for (i, &event) in trace.events().iter().enumerate() {
            match event {
                Event::Alloc { slot, size, stream } => {
                    let stream = match stream {
                        0..=LAST_BUILTIN_STREAM => stream,
                        tag => streams[streams.partition_point(|&(t, _)| t < tag)].1,
                    };
                    let ptr = alloc
                        .allocate_on(device, stream, size, align)
                        .map_err(|source| ReplayError::Allocate {
                            event: i + 1,
                            id: trace.ids[slot as usize],
                            size,
                            source,
                        })?;
                    live[slot as usize] = Some(ptr);
                }
                Event::Free { slot } => {
                    if let Some(ptr) = live[slot as usize].take() {
                        alloc.free(ptr).map_err(|source| ReplayError::Free {
                            event: i + 1,
                            id: trace.ids[slot as usize],
                            source,
                        })?;
                    }
                }
            }
            after_event(i);
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
