//! Recording a run's allocation sequence, the first pass of a planned pool.
//!
//! A recording watches the allocations of one thread (or of one stream,
//! from any thread) while it runs, and every free of a block it saw. It does
//! not serve anything: the recorded run gets its memory as it would anyway
//! (from the cache in an eager run), so it computes real results.
//!
//! The allocator keeps the active recorders ([`Recorders`]); its allocation
//! and free paths look at one atomic count and do nothing more while no
//! recording is active.

use crate::arena::StreamTag;
use crate::sync::{next_id, thread_local, Arc, AtomicUsize, Mutex, Ordering};
use std::cell::Cell;
use std::collections::HashMap;

thread_local! {
    /// The calling thread's recording token, assigned on first use.
    static THREAD_TOKEN: Cell<u64> = const { Cell::new(0) };
}

pub(crate) fn thread_token() -> u64 {
    THREAD_TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(next_id());
        }
        t.get()
    })
}

/// One allocation of a recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordedAlloc {
    /// The device it was made on.
    pub(crate) device: usize,
    /// The stream it was made for.
    pub(crate) stream: StreamTag,
    /// Bytes requested.
    pub(crate) size: usize,
    /// Alignment requested.
    pub(crate) align: usize,
    /// The block size it needs: the request plus alignment padding, rounded
    /// up to 512 B.
    pub(crate) rounded: usize,
    /// The recording's event clock at the allocation.
    pub(crate) start: u32,
    /// The clock at its free, or `None` if it outlived the recording.
    pub(crate) end: Option<u32>,
    /// Whether other streams used it (`record_stream`): its memory is then
    /// not reusable for the rest of the recording.
    pub(crate) shared: bool,
}

/// The allocation sequence of one recorded run: for each allocation its
/// size, alignment, stream and device, and when it was freed (or that it
/// outlived the run). Made by [`Allocator::record`](crate::Allocator::record) or a [`RecordingGuard`];
/// planned into a pool by [`Allocator::create_planned_pool`](crate::Allocator::create_planned_pool).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recording {
    pub(crate) allocs: Vec<RecordedAlloc>,
}

impl Recording {
    /// Number of allocations recorded.
    pub fn len(&self) -> usize {
        self.allocs.len()
    }

    /// Whether nothing was allocated.
    pub fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }

    /// Allocations still live when the recording ended (they outlive it).
    pub fn outliving(&self) -> usize {
        self.allocs.iter().filter(|a| a.end.is_none()).count()
    }

    /// Renames stream `from` to `to` in the recording, for a capture that
    /// repeats the recorded work on another stream (a framework that makes a
    /// new stream for each capture, as PyTorch's `make_graphed_callables`
    /// does). Returns how many allocations were renamed, or `None`, changing
    /// nothing, when both `from` and `to` are streams of the recording:
    /// merging two streams would let their blocks share memory.
    ///
    /// ```
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    /// let (p, mut rec) = alloc.record(|| alloc.allocate(4096, 512).unwrap());
    /// assert_eq!(rec.rename_stream(0, 1), Some(1));
    /// assert_eq!(rec.rename_stream(2, 1), Some(0)); // no allocation on stream 2
    /// alloc.free(p).unwrap();
    /// ```
    pub fn rename_stream(&mut self, from: StreamTag, to: StreamTag) -> Option<usize> {
        let has = |s| self.allocs.iter().any(|a| a.stream == s);
        if from != to && has(from) && has(to) {
            return None;
        }
        let mut renamed = 0;
        for a in self.allocs.iter_mut().filter(|a| a.stream == from) {
            a.stream = to;
            renamed += 1;
        }
        Some(renamed)
    }

    /// The most bytes (block sizes) the run had live at once on `device`:
    /// the least memory any pool serving it can have.
    /// Saturates at `usize::MAX`.
    pub fn peak_live_bytes(&self, device: usize) -> usize {
        let items = super::plan::intervals(&[self], device, None);
        super::planner::peak_live(&items)
    }
}

/// Whose allocations a recorder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Those of one thread (by its token).
    Thread(u64),
    /// Those on one stream of one device, from any thread.
    Stream { device: usize, stream: StreamTag },
}

#[derive(Debug, Default)]
struct State {
    allocs: Vec<RecordedAlloc>,
    /// Address of a recorded live block → its index in `allocs`.
    open: HashMap<u64, usize>,
    clock: u32,
}

#[derive(Debug)]
struct Recorder {
    id: u64,
    filter: Filter,
    state: Mutex<State>,
}

/// The active recorders of one allocator. Lock order: the list, then a
/// recorder's state; neither is held while any other lock is taken.
#[derive(Debug)]
pub(crate) struct Recorders {
    active: AtomicUsize,
    list: Mutex<Vec<Arc<Recorder>>>,
}

impl Recorders {
    pub(crate) fn new() -> Self {
        Recorders {
            active: AtomicUsize::new(0),
            list: Mutex::new(Vec::new()),
        }
    }

    /// Whether any recording is active (the hot paths' only cost).
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.active.load(Ordering::SeqCst) != 0
    }

    /// Notes an allocation just handed out at `addr` (before its pointer is
    /// published, so no free of it can come first).
    pub(crate) fn on_alloc(
        &self,
        device: usize,
        stream: StreamTag,
        size: usize,
        align: usize,
        rounded: usize,
        addr: u64,
    ) {
        let list = self.list.lock();
        let mut token = None;
        for r in list.iter() {
            let wanted = match r.filter {
                Filter::Thread(t) => *token.get_or_insert_with(thread_token) == t,
                Filter::Stream {
                    device: d,
                    stream: s,
                } => d == device && s == stream,
            };
            if !wanted {
                continue;
            }
            let mut st = r.state.lock();
            let start = st.clock;
            st.clock = st.clock.saturating_add(1);
            let index = st.allocs.len();
            st.allocs.push(RecordedAlloc {
                device,
                stream,
                size,
                align,
                rounded,
                start,
                end: None,
                shared: false,
            });
            st.open.insert(addr, index);
        }
    }

    /// Notes the free of the block at `addr` (after its pointer was claimed,
    /// before the block goes back to its owner, so no new block can be at
    /// `addr` yet). `shared`: other streams used it.
    pub(crate) fn on_free(&self, addr: u64, shared: bool) {
        let list = self.list.lock();
        for r in list.iter() {
            let mut st = r.state.lock();
            if let Some(i) = st.open.remove(&addr) {
                let end = st.clock;
                st.clock = st.clock.saturating_add(1);
                st.allocs[i].end = Some(end);
                st.allocs[i].shared = shared;
            }
        }
    }

    fn start(&self, filter: Filter) -> Arc<Recorder> {
        let recorder = Arc::new(Recorder {
            id: next_id(),
            filter,
            state: Mutex::new(State::default()),
        });
        let mut list = self.list.lock();
        list.push(recorder.clone());
        self.active.store(list.len(), Ordering::SeqCst);
        recorder
    }

    fn stop(&self, id: u64) -> Option<Arc<Recorder>> {
        let mut list = self.list.lock();
        let i = list.iter().position(|r| r.id == id)?;
        let recorder = list.swap_remove(i);
        self.active.store(list.len(), Ordering::SeqCst);
        Some(recorder)
    }
}

/// Records allocations until [`RecordingGuard::finish`] (dropping it ends
/// the recording and discards it). Made by [`Allocator::start_recording`](crate::Allocator::start_recording)
/// (the calling thread's allocations) or [`Allocator::start_recording_on`](crate::Allocator::start_recording_on)
/// (one stream's, from any thread).
#[must_use = "the recording ends when the guard is dropped"]
#[derive(Debug)]
pub struct RecordingGuard<'a> {
    recorders: &'a Recorders,
    recorder: Option<Arc<Recorder>>,
}

impl RecordingGuard<'_> {
    /// Ends the recording and returns it. Blocks still live now outlive it.
    pub fn finish(mut self) -> Recording {
        self.end()
    }

    fn end(&mut self) -> Recording {
        let Some(recorder) = self.recorder.take() else {
            return Recording::default();
        };
        self.recorders.stop(recorder.id);
        let st = std::mem::take(&mut *recorder.state.lock());
        Recording { allocs: st.allocs }
    }
}

impl<'a> RecordingGuard<'a> {
    /// Starts a recording in `recorders` of the allocations `filter` selects.
    pub(crate) fn start(recorders: &'a Recorders, filter: Filter) -> Self {
        RecordingGuard {
            recorders,
            recorder: Some(recorders.start(filter)),
        }
    }
}

impl Drop for RecordingGuard<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(stream: StreamTag) -> RecordedAlloc {
        RecordedAlloc {
            device: 0,
            stream,
            size: 512,
            align: 512,
            rounded: 512,
            start: 0,
            end: None,
            shared: false,
        }
    }

    #[test]
    fn renaming_a_stream_never_merges_two() {
        let mut rec = Recording {
            allocs: vec![on(7), on(9), on(7)],
        };
        let streams = |r: &Recording| r.allocs.iter().map(|a| a.stream).collect::<Vec<_>>();
        assert_eq!(rec.rename_stream(7, 9), None);
        assert_eq!(streams(&rec), [7, 9, 7]);
        assert_eq!(rec.rename_stream(7, 11), Some(2));
        assert_eq!(streams(&rec), [11, 9, 11]);
        assert_eq!(rec.rename_stream(9, 9), Some(1));
        assert_eq!(rec.rename_stream(5, 6), Some(0));
        assert_eq!(rec.rename_stream(5, 9), Some(0)); // nothing on 5: nothing merged
        assert_eq!(streams(&rec), [11, 9, 11]);
    }
}
