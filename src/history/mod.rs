//! Memory history: a bounded ring buffer of what the allocator did.
//!
//! While recording ([`crate::Allocator::record_history`], or
//! `GRAPHALLOC_CONF=history:N`), every allocation, free request, completed
//! free (after the stream work a block waited for), segment reserve and
//! release, page map and unmap, and out-of-memory failure is kept as a
//! [`HistoryEvent`], the last N of them. When recording is off, each place
//! that would record costs one relaxed atomic load.
//!
//! The ring itself (this file) imports nothing above the ground layer, so the
//! device code below the pools records into it; `snapshot.rs` (the front
//! layer) reads it with the segments into a [`Snapshot`], written in
//! PyTorch's memory snapshot format ([`pickle`]), as a page of its own
//! (`view.rs`), or as a replay trace.

pub mod pickle;
pub(crate) mod snapshot;
mod view;

pub use snapshot::{BlockSnapshot, BlockState, SegmentSnapshot, Snapshot};

use crate::sync::{thread_local, AtomicBool, Mutex, Ordering};
use std::cell::RefCell;
use std::collections::VecDeque;

/// The most events a history keeps: 2^26 (about 4 GiB of events at most).
pub const MAX_HISTORY: usize = 1 << 26;

/// What happened, in the words of PyTorch's memory snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A block was handed out (`size` = bytes requested).
    Alloc,
    /// A block was freed by its user (`size` = bytes requested).
    FreeRequested,
    /// A freed block became reusable: at once, or after the stream work it
    /// waited for (`addr` = the block's start, `size` = its bytes).
    FreeCompleted,
    /// A segment was reserved from the device (`size` = its bytes).
    SegmentAlloc,
    /// A segment was released to the device.
    SegmentFree,
    /// Pages were mapped into an expandable segment.
    SegmentMap,
    /// Pages of an expandable segment were unmapped.
    SegmentUnmap,
    /// An allocation failed for want of memory (`size` = bytes requested,
    /// `addr` = the device's free bytes then).
    Oom,
}

impl Action {
    /// The action's name in a PyTorch snapshot's `device_traces`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Alloc => "alloc",
            Action::FreeRequested => "free_requested",
            Action::FreeCompleted => "free_completed",
            Action::SegmentAlloc => "segment_alloc",
            Action::SegmentFree => "segment_free",
            Action::SegmentMap => "segment_map",
            Action::SegmentUnmap => "segment_unmap",
            Action::Oom => "oom",
        }
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// The event's number since recording first started (gaps tell of
    /// events the ring dropped).
    pub seq: u64,
    /// What happened.
    pub action: Action,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    /// The device.
    pub device: usize,
    /// The stream of the block or segment.
    pub stream: u64,
    /// Bytes (see [`Action`] for which).
    pub size: usize,
    /// The pointer, block or segment address (see [`Action`]).
    pub addr: u64,
    /// Who owns the memory: `None` for the device's caching allocator,
    /// `Some(id)` for graph pool `id`; `Some(0)` for a graph pool's block
    /// or segment event recorded below the level that knows which pool.
    pub pool: Option<u64>,
    /// The calling thread's context string ([`set_context`]) and, with
    /// backtraces on, the captured backtrace.
    pub extra: Option<std::sync::Arc<EventContext>>,
}

/// What a caller said about an event, kept only while recording.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventContext {
    /// The context string set on the calling thread ([`set_context`]).
    pub context: Option<String>,
    /// The Rust backtrace at the event, with `history_backtraces` on.
    pub backtrace: Option<String>,
}

thread_local! {
    /// The calling thread's context string for the events it causes.
    static CONTEXT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Sets (or with `None` clears) the calling thread's context string: every
/// event the thread causes while a history records carries it (C and Python
/// set it to name what a step is doing, e.g. `"forward"`).
pub fn set_context(context: Option<&str>) {
    // Late in thread teardown the slot may be gone: nothing to set then.
    let _ = CONTEXT.try_with(|c| *c.borrow_mut() = context.map(str::to_owned));
}

/// The calling thread's context string.
pub fn context() -> Option<String> {
    CONTEXT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The ring: the last `capacity` events.
#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<HistoryEvent>,
    capacity: usize,
    next_seq: u64,
    dropped: u64,
}

/// The history of one allocator, shared with its devices.
#[derive(Debug)]
pub(crate) struct History {
    /// Whether events are recorded: the one load the hot path pays.
    on: AtomicBool,
    /// Whether each event captures a backtrace.
    backtraces: AtomicBool,
    ring: Mutex<Ring>,
}

/// The time now, in microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl History {
    /// A history that records the last `capacity` events (0: off).
    pub(crate) fn new(capacity: usize, backtraces: bool) -> Self {
        let history = History {
            on: AtomicBool::new(false),
            backtraces: AtomicBool::new(backtraces),
            ring: Mutex::new(Ring::default()),
        };
        if capacity > 0 {
            history.start(capacity);
        }
        history
    }

    /// Whether events are being recorded.
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts recording the last `capacity` events (clamped to
    /// [`MAX_HISTORY`]), keeping the newest of those already held.
    pub(crate) fn start(&self, capacity: usize) {
        let capacity = capacity.clamp(1, MAX_HISTORY);
        let mut ring = self.ring.lock();
        ring.capacity = capacity;
        while ring.events.len() > capacity {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        self.on.store(true, Ordering::Relaxed);
    }

    /// Stops recording; the events held stay readable.
    pub(crate) fn stop(&self) {
        self.on.store(false, Ordering::Relaxed);
    }

    pub(crate) fn set_backtraces(&self, on: bool) {
        self.backtraces.store(on, Ordering::Relaxed);
    }

    /// Forgets the events held (the numbering goes on).
    pub(crate) fn clear(&self) {
        let mut ring = self.ring.lock();
        ring.events.clear();
        ring.dropped = 0;
    }

    /// The events held, oldest first, and how many were dropped to keep
    /// the ring bounded.
    pub(crate) fn events(&self) -> (Vec<HistoryEvent>, u64) {
        let ring = self.ring.lock();
        (ring.events.iter().cloned().collect(), ring.dropped)
    }

    /// The capacity set last (0 if never started).
    pub(crate) fn capacity(&self) -> usize {
        self.ring.lock().capacity
    }

    /// Records an event if recording is on: a relaxed load otherwise.
    #[inline]
    pub(crate) fn record(
        &self,
        action: Action,
        device: usize,
        stream: u64,
        size: usize,
        addr: u64,
        pool: Option<u64>,
    ) {
        if self.on() {
            self.push(HistoryEvent {
                seq: 0,
                action,
                time_us: 0,
                device,
                stream,
                size,
                addr,
                pool,
                extra: None,
            });
        }
    }

    /// Stamps `event` (number, time, context, backtrace) and keeps it.
    #[cold]
    #[inline(never)]
    fn push(&self, mut event: HistoryEvent) {
        let context = context();
        let backtrace = self
            .backtraces
            .load(Ordering::Relaxed)
            .then(|| std::backtrace::Backtrace::force_capture().to_string());
        event.extra = (context.is_some() || backtrace.is_some())
            .then(|| std::sync::Arc::new(EventContext { context, backtrace }));
        event.time_us = now_us();
        let mut ring = self.ring.lock();
        // Stopped while this thread was on its way here: drop the event.
        if ring.capacity == 0 || !self.on() {
            return;
        }
        event.seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        ring.events.push_back(event);
    }
}

/// The history events as a replay trace (`a ID SIZE STREAM` and `f ID`
/// lines, see [`crate::replay::Trace`]): each allocation gets the next ID,
/// each free request frees the block its address names. Frees of blocks
/// allocated before the events begin are left out, and so is everything
/// but allocations and free requests.
pub fn to_trace_text(name: &str, events: &[HistoryEvent]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let _ = writeln!(out, "# {name} (recorded by graphalloc's history)");
    let mut live: std::collections::HashMap<(usize, u64), u64> = Default::default();
    let mut next_id = 0u64;
    for e in events {
        match e.action {
            Action::Alloc => {
                let id = next_id;
                next_id += 1;
                live.insert((e.device, e.addr), id);
                let _ = writeln!(out, "a {id} {} {}", e.size, e.stream);
            }
            Action::FreeRequested => {
                if let Some(id) = live.remove(&(e.device, e.addr)) {
                    let _ = writeln!(out, "f {id}");
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn events(h: &History) -> Vec<u64> {
        h.events().0.iter().map(|e| e.addr).collect()
    }

    #[test]
    fn off_records_nothing_and_on_keeps_the_last_n() {
        let h = History::new(0, false);
        h.record(Action::Alloc, 0, 0, 512, 1, None);
        assert!(events(&h).is_empty());
        h.start(3);
        for addr in 0..5 {
            h.record(Action::Alloc, 0, 0, 512, addr, None);
        }
        assert_eq!(events(&h), [2, 3, 4]);
        assert_eq!(h.events().1, 2);
        assert_eq!(h.events().0[0].seq, 2);
        h.stop();
        h.record(Action::Alloc, 0, 0, 512, 9, None);
        assert_eq!(events(&h), [2, 3, 4]);
        h.start(2);
        assert_eq!(events(&h), [3, 4]);
    }

    #[test]
    fn context_and_backtrace_ride_along() {
        let h = History::new(4, true);
        set_context(Some("forward"));
        h.record(Action::Alloc, 0, 0, 512, 1, Some(7));
        set_context(None);
        let e = &h.events().0[0];
        let extra = e.extra.as_ref().expect("context recorded");
        assert_eq!(extra.context.as_deref(), Some("forward"));
        assert!(extra.backtrace.is_some());
        assert_eq!(e.pool, Some(7));
    }

    #[test]
    fn trace_text_pairs_frees_with_their_allocations() {
        let h = History::new(16, false);
        h.record(Action::FreeRequested, 0, 0, 512, 99, None); // before the start
        h.record(Action::Alloc, 0, 3, 1000, 10, None);
        h.record(Action::SegmentAlloc, 0, 3, 1 << 21, 10, None);
        h.record(Action::Alloc, 0, 0, 24, 20, None);
        h.record(Action::FreeRequested, 0, 3, 1000, 10, None);
        h.record(Action::Alloc, 0, 0, 8, 10, None);
        let text = to_trace_text("t", &h.events().0);
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            ["a 0 1000 3", "a 1 24 0", "f 0", "a 2 8 0"]
        );
        let trace = crate::replay::Trace::parse_str("t", &text).unwrap();
        assert_eq!((trace.len(), trace.left_live()), (4, 2));
    }
}
