//! [`Snapshot`]: every segment with its blocks plus the history, and the
//! allocator's history API. Written as PyTorch's memory snapshot pickle
//! (what `torch.cuda.memory._dump_snapshot` writes), so PyTorch's memory
//! viewer and `torch.cuda._memory_viz` read it.

use super::pickle::{self, dict, Value};
use super::{Action, History, HistoryEvent};
use crate::allocator::Allocator;
use crate::arena::{WalkState, WalkedSegment};
use crate::error::{Error, Result};
use crate::graph_pool::PoolCore;
use crate::ownership::{Owner, Record};
use std::collections::HashMap;
use std::path::Path;

/// The state of a block, in PyTorch's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// Handed out and not freed (`active_allocated`).
    ActiveAllocated,
    /// Freed, waiting for stream work before reuse (`active_pending_free`).
    ActivePendingFree,
    /// Free (`inactive`).
    Inactive,
}

impl BlockState {
    /// PyTorch's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            BlockState::ActiveAllocated => "active_allocated",
            BlockState::ActivePendingFree => "active_pending_free",
            BlockState::Inactive => "inactive",
        }
    }
}

/// One block of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSnapshot {
    /// The block's start (a pointer handed out for an over-aligned request
    /// may lie above it).
    pub address: u64,
    /// Bytes in the block.
    pub size: usize,
    /// Bytes requested for it (0 unless active and allocated).
    pub requested_size: usize,
    /// Its state.
    pub state: BlockState,
}

/// One segment: memory from the device, tiled by its blocks. An expandable
/// segment appears as one segment per run of mapped pages (its unmapped
/// address space holds no memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSnapshot {
    /// The device.
    pub device: usize,
    /// The first byte.
    pub address: u64,
    /// Bytes (the sum of its blocks' sizes).
    pub total_size: usize,
    /// The stream whose blocks it holds.
    pub stream: u64,
    /// Whether it holds small blocks (≤ 1 MiB requests).
    pub small: bool,
    /// `None` for the device's caching allocator, else the graph pool's id.
    pub pool: Option<u64>,
    /// Whether it is (part of) an expandable segment.
    pub expandable: bool,
    /// Its blocks, in address order.
    pub blocks: Vec<BlockSnapshot>,
}

impl SegmentSnapshot {
    /// Bytes of its blocks in `state`.
    pub fn bytes_in(&self, state: BlockState) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.state == state)
            .fold(0usize, |sum, b| sum.saturating_add(b.size))
    }
}

/// The allocator's memory at one moment, and its history up to then; see
/// [`Allocator::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every segment of every device, caches and graph pools.
    pub segments: Vec<SegmentSnapshot>,
    /// The history events held, oldest first (empty unless recorded).
    pub history: Vec<HistoryEvent>,
    /// Events the history dropped to stay within its capacity.
    pub dropped_events: u64,
    /// Number of devices.
    pub devices: usize,
    /// The history's capacity (0 if it never recorded).
    pub history_capacity: usize,
}

impl History {
    /// Records an allocation (`pool`: the graph pool that served it).
    #[inline]
    pub(crate) fn alloc(
        &self,
        device: usize,
        stream: u64,
        size: usize,
        ptr: u64,
        pool: Option<&PoolCore>,
    ) {
        if self.on() {
            self.record(Action::Alloc, device, stream, size, ptr, pool.map(|p| p.id));
        }
    }

    /// Records a free request of `ptr`, whose ownership record was claimed.
    #[inline]
    pub(crate) fn free_requested(&self, record: &Record, ptr: u64) {
        if self.on() {
            let pool = match &record.owner {
                Owner::Cache { .. } => None,
                Owner::Pool(p) => Some(p.get().id),
            };
            let (device, stream) = (record.device(), record.stream);
            self.record(
                Action::FreeRequested,
                device,
                stream,
                record.requested(),
                ptr,
                pool,
            );
        }
    }
}

/// The segments of one walked arena as snapshot segments.
fn segments_of(
    walked: Vec<WalkedSegment>,
    device: usize,
    pool: Option<u64>,
    live: &HashMap<u64, usize>,
    out: &mut Vec<SegmentSnapshot>,
) {
    for seg in walked {
        let mut current: Option<SegmentSnapshot> = None;
        for b in seg.blocks {
            let state = match b.state {
                WalkState::Unmapped => {
                    // The end of a mapped run of an expandable segment.
                    out.extend(current.take());
                    continue;
                }
                WalkState::Live => BlockState::ActiveAllocated,
                WalkState::Pending => BlockState::ActivePendingFree,
                WalkState::Free => BlockState::Inactive,
            };
            let requested_size = match state {
                BlockState::ActiveAllocated => live.get(&b.addr).copied().unwrap_or(b.size),
                _ => 0,
            };
            let s = current.get_or_insert_with(|| SegmentSnapshot {
                device,
                address: b.addr,
                total_size: 0,
                stream: seg.stream,
                small: seg.small,
                pool,
                expandable: seg.expandable,
                blocks: Vec::new(),
            });
            s.total_size += b.size;
            s.blocks.push(BlockSnapshot {
                address: b.addr,
                size: b.size,
                requested_size,
                state,
            });
        }
        out.extend(current);
    }
}

impl Allocator {
    /// Starts (or resizes) the memory history: from now on the allocator
    /// keeps the last `capacity` events (allocations, free requests,
    /// completed frees, segment reserves and releases, page maps and
    /// unmaps, out-of-memory failures), at most [`super::MAX_HISTORY`]. As
    /// `GRAPHALLOC_CONF=history:N` does from the start.
    ///
    /// ```
    /// use graphalloc::{history::Action, Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30))?;
    /// alloc.record_history(1000)?;
    /// let p = alloc.allocate(4096, 256)?;
    /// alloc.free(p)?;
    /// alloc.stop_history();
    /// let actions: Vec<Action> = alloc.history().iter().map(|e| e.action).collect();
    /// // Pages mapped into an expandable segment (the default), the block
    /// // handed out, its free requested and completed.
    /// assert_eq!(
    ///     actions,
    ///     [Action::SegmentMap, Action::Alloc, Action::FreeRequested, Action::FreeCompleted]
    /// );
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// Errors: [`Error::Config`] for a capacity of 0 or above the maximum.
    pub fn record_history(&self, capacity: usize) -> Result<()> {
        if capacity == 0 || capacity > super::MAX_HISTORY {
            return Err(Error::Config {
                key: "history".into(),
                value: capacity.to_string(),
                reason: format!("expected 1 to {} events", super::MAX_HISTORY),
            });
        }
        self.history.start(capacity);
        Ok(())
    }

    /// Stops recording the history; the events held stay readable.
    pub fn stop_history(&self) {
        self.history.stop();
    }

    /// Whether the history is recording.
    pub fn is_recording_history(&self) -> bool {
        self.history.on()
    }

    /// Makes each history event capture a Rust backtrace (slow) or not.
    pub fn set_history_backtraces(&self, on: bool) {
        self.history.set_backtraces(on);
    }

    /// Forgets the history events held.
    pub fn clear_history(&self) {
        self.history.clear();
    }

    /// The history events held, oldest first.
    pub fn history(&self) -> Vec<HistoryEvent> {
        self.history.events().0
    }

    /// Every segment of every device (caching allocators and graph pools)
    /// with its blocks, and the history. Each part is read under its own
    /// lock: with other threads allocating, the parts may be of slightly
    /// different moments; a quiet allocator's snapshot agrees with
    /// [`Allocator::stats`] byte for byte.
    pub fn snapshot(&self) -> Snapshot {
        let (caches, ownership, pools) = self.snapshot_parts();
        let live = ownership.live_blocks();
        let mut segments = Vec::new();
        for (device, cache) in caches.iter().enumerate() {
            segments_of(cache.walk(), device, None, &live, &mut segments);
        }
        for (id, device, walked) in pools.walk() {
            segments_of(walked, device, Some(id), &live, &mut segments);
        }
        let (history, dropped_events) = self.history.events();
        Snapshot {
            segments,
            history,
            dropped_events,
            devices: caches.len(),
            history_capacity: self.history.capacity(),
        }
    }
}

/// A history event's frames (PyTorch's `frames`: `filename`, `line`,
/// `name`): the context string as one frame, then the backtrace's.
fn frames(e: &HistoryEvent) -> Value {
    let mut out = Vec::new();
    let frame = |filename: &str, line: usize, name: &str| {
        dict([
            ("filename", filename.into()),
            ("line", line.into()),
            ("name", name.into()),
        ])
    };
    if let Some(extra) = &e.extra {
        if let Some(context) = &extra.context {
            out.push(frame("<context>", 0, context));
        }
        if let Some(bt) = &extra.backtrace {
            // "  N: function" lines, each maybe followed by "at file:line:col".
            for line in bt.lines().map(str::trim) {
                if let Some(at) = line.strip_prefix("at ") {
                    let mut parts = at.rsplitn(3, ':');
                    let (_col, line_no, file) = (parts.next(), parts.next(), parts.next());
                    if let (Some(Value::Dict(last)), Some(file)) = (out.last_mut(), file) {
                        last.insert("filename".into(), file.into());
                        let n = line_no.and_then(|l| l.parse::<usize>().ok()).unwrap_or(0);
                        last.insert("line".into(), n.into());
                    }
                } else if let Some((_, name)) = line.split_once(": ") {
                    out.push(frame("??", 0, name));
                }
            }
        }
    }
    Value::List(out)
}

impl Snapshot {
    /// The snapshot as PyTorch's snapshot dict: `segments` (each with
    /// `device`, `address`, `total_size`, `allocated_size`, `active_size`,
    /// `requested_size`, `stream`, `segment_type`, `segment_pool_id`,
    /// `is_expandable`, `frames`, `blocks`), `device_traces` (a list of
    /// events per device) and `allocator_settings`.
    pub fn to_value(&self) -> Value {
        let segments = self
            .segments
            .iter()
            .map(|s| {
                let blocks = s
                    .blocks
                    .iter()
                    .map(|b| {
                        dict([
                            ("address", b.address.into()),
                            ("size", b.size.into()),
                            ("requested_size", b.requested_size.into()),
                            ("state", b.state.name().into()),
                            ("frames", Value::List(Vec::new())),
                        ])
                    })
                    .collect::<Vec<_>>();
                let allocated = s.bytes_in(BlockState::ActiveAllocated);
                let requested =
                    (s.blocks.iter()).fold(0usize, |sum, b| sum.saturating_add(b.requested_size));
                dict([
                    ("device", s.device.into()),
                    ("address", s.address.into()),
                    ("total_size", s.total_size.into()),
                    ("allocated_size", allocated.into()),
                    (
                        "active_size",
                        (allocated + s.bytes_in(BlockState::ActivePendingFree)).into(),
                    ),
                    ("requested_size", requested.into()),
                    ("stream", s.stream.into()),
                    (
                        "segment_type",
                        if s.small { "small" } else { "large" }.into(),
                    ),
                    (
                        "segment_pool_id",
                        Value::List(vec![0u64.into(), s.pool.unwrap_or(0).into()]),
                    ),
                    ("is_expandable", s.expandable.into()),
                    ("frames", Value::List(Vec::new())),
                    ("blocks", blocks.into()),
                ])
            })
            .collect::<Vec<_>>();
        let mut traces = vec![Vec::new(); self.devices.max(1)];
        for e in &self.history {
            let mut event = dict([
                ("action", e.action.name().into()),
                ("addr", e.addr.into()),
                ("size", e.size.into()),
                ("stream", e.stream.into()),
                ("time_us", e.time_us.into()),
                ("frames", frames(e)),
                ("pool_id", e.pool.into()),
            ]);
            if let (Action::Oom, Value::Dict(d)) = (e.action, &mut event) {
                d.insert("device_free".into(), e.addr.into());
            }
            if let Some(t) = traces.get_mut(e.device) {
                t.push(event);
            }
        }
        let conf = std::env::var(crate::config::ENV_VAR).ok();
        dict([
            ("segments", segments.into()),
            (
                "device_traces",
                Value::List(traces.into_iter().map(Value::List).collect()),
            ),
            (
                "allocator_settings",
                dict([
                    ("allocator", "graphalloc".into()),
                    ("GRAPHALLOC_CONF", conf.into()),
                    ("history_capacity", self.history_capacity.into()),
                    ("dropped_events", self.dropped_events.into()),
                ]),
            ),
        ])
    }

    /// The snapshot in PyTorch's pickle format (load it with
    /// `pickle.load`, open it in PyTorch's memory viewer or with
    /// `torch.cuda._memory_viz`).
    pub fn to_pickle(&self) -> Vec<u8> {
        pickle::write(&self.to_value())
    }

    /// Writes [`Snapshot::to_pickle`] to `path`.
    pub fn write_pickle(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_pickle())
    }

    /// The history as a replay trace; see [`super::to_trace_text`].
    pub fn to_trace_text(&self, name: &str) -> String {
        super::to_trace_text(name, &self.history)
    }

    /// Bytes in segments, all devices and owners together.
    pub fn reserved_bytes(&self) -> usize {
        (self.segments.iter()).fold(0usize, |sum, s| sum.saturating_add(s.total_size))
    }

    /// Bytes of blocks in `state`, all segments together.
    pub fn bytes_in(&self, state: BlockState) -> usize {
        (self.segments.iter()).fold(0usize, |sum, s| sum.saturating_add(s.bytes_in(state)))
    }
}
