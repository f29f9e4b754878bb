//! The allocator's side of planned graph pools (the front layer): recording
//! a run, making a pool planned from recordings, and capturing on it. The
//! mechanism (recorders, the planner, serving planned blocks) lives in
//! [`crate::graph_pool`].

use crate::allocator::Allocator;
use crate::error::{Error, Result};
use crate::graph_pool::plan::{reserve_plan, Plan};
use crate::graph_pool::record::{thread_token, Filter, Recording, RecordingGuard};
use crate::graph_pool::GraphPool;

impl Allocator {
    /// Starts recording the calling thread's allocations (on any device and
    /// stream) and the frees of those blocks (from any thread). Allocations
    /// are served as usual while recording.
    pub fn start_recording(&self) -> RecordingGuard<'_> {
        RecordingGuard::start(&self.recorders, Filter::Thread(thread_token()))
    }

    /// Starts recording the allocations on `stream` of `device`, from any
    /// thread (PyTorch runs `backward` on its own threads), and the frees of
    /// those blocks. Fails with [`crate::Error::InvalidDevice`].
    pub fn start_recording_on(&self, device: usize, stream: u64) -> Result<RecordingGuard<'_>> {
        self.pool_parts(device)?;
        Ok(RecordingGuard::start(
            &self.recorders,
            Filter::Stream { device, stream },
        ))
    }

    /// Runs `f` while recording the calling thread's allocations; returns
    /// its result and the recording.
    ///
    /// ```
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    /// let (kept, rec) = alloc.record(|| {
    ///     let tmp = alloc.allocate(4096, 512).unwrap();
    ///     let kept = alloc.allocate(1024, 512).unwrap();
    ///     alloc.free(tmp).unwrap();
    ///     kept
    /// });
    /// assert_eq!((rec.len(), rec.outliving()), (2, 1));
    /// assert_eq!(rec.peak_live_bytes(0), 4096 + 1024);
    /// alloc.free(kept).unwrap();
    /// ```
    pub fn record<R>(&self, f: impl FnOnce() -> R) -> (R, Recording) {
        let guard = self.start_recording();
        let result = f();
        (result, guard.finish())
    }
}

impl Allocator {
    /// A graph pool on device 0 planned from `recordings`; see
    /// [`Allocator::create_planned_pool_on`].
    pub fn create_planned_pool(&self, recordings: &[&Recording]) -> Result<GraphPool> {
        self.create_planned_pool_on(0, recordings)
    }

    /// A graph pool on `device` whose memory is placed ahead of time for
    /// the runs in `recordings` (their allocations on `device`): one segment
    /// per stream, reserved now, sized by packing the recorded lifetimes.
    /// Several recordings share the memory (graphs that share the pool and
    /// never run concurrently): the pool needs about the largest of their
    /// peaks, not the sum. Blocks that outlive their recording (a graph's
    /// outputs) get memory no other recording uses.
    ///
    /// Captures follow plan 0 first; [`GraphPool::start_plan`] picks another
    /// ([`Allocator::capture_planned`] does both).
    ///
    /// Fails with [`Error::TooLarge`] when the recordings' blocks on
    /// `device` add up past `isize::MAX` bytes, and as reserving memory
    /// fails (e.g. [`Error::OutOfMemory`]).
    ///
    /// ```
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    /// let step = || {
    ///     let a = alloc.allocate(3 << 20, 512).unwrap();
    ///     let b = alloc.allocate(1 << 20, 512).unwrap();
    ///     alloc.free(a).unwrap();
    ///     let c = alloc.allocate(2 << 20, 512).unwrap();
    ///     alloc.free(b).unwrap();
    ///     alloc.free(c).unwrap();
    /// };
    /// let ((), rec) = alloc.record(step); // eager: real memory, from the cache
    /// let pool = alloc.create_planned_pool(&[&rec]).unwrap();
    /// alloc.capture_planned(&pool, 0, step).unwrap(); // e.g. inside a CUDA capture
    /// let plan = pool.plan_stats().unwrap();
    /// assert_eq!(plan.peak_live_bytes, 4 << 20);
    /// assert_eq!(plan.planned_bytes, 4 << 20);
    /// assert_eq!((plan.planned_hits, plan.fallbacks), (3, 0));
    /// assert_eq!(pool.stats().reserved_bytes, 4 << 20);
    /// ```
    pub fn create_planned_pool_on(
        &self,
        device: usize,
        recordings: &[&Recording],
    ) -> Result<GraphPool> {
        let (allocator_id, cache, registry) = self.pool_parts(device)?;
        let plan = Plan::new(recordings, device).map_err(|total| Error::TooLarge {
            requested: total,
            limit: cache.device.capacity(),
        })?;
        GraphPool::create_with(allocator_id, cache.clone(), registry, |cache, arena| {
            reserve_plan(plan, cache, arena, &|d, s| {
                self.out_of_memory(d, s, crate::OomOwner::NewPlannedPool)
            })
        })
    }

    /// Runs `f` in graph mode on `pool` following plan `plan` from its start
    /// ([`GraphPool::start_plan`]); for a capture, `f` begins and ends it.
    pub fn capture_planned<R>(
        &self,
        pool: &GraphPool,
        plan: usize,
        f: impl FnOnce() -> R,
    ) -> Result<R> {
        let guard = self.enter_graph_mode(pool)?;
        pool.start_plan(plan)?;
        let result = f();
        drop(guard);
        Ok(result)
    }

    /// Record, plan and capture in one call: runs `record` while recording
    /// the calling thread's allocations (an eager run of the work, or a
    /// capture to throw away), plans a pool on device 0 from it, and runs
    /// `capture` in graph mode on that pool (the real capture of the same
    /// work). Returns the pool and both results.
    pub fn plan_and_capture<R, C>(
        &self,
        record: impl FnOnce() -> R,
        capture: impl FnOnce() -> C,
    ) -> Result<(GraphPool, R, C)> {
        let (recorded, recording) = self.record(record);
        let pool = self.create_planned_pool(&[&recording])?;
        let captured = self.capture_planned(&pool, 0, capture)?;
        Ok((pool, recorded, captured))
    }
}
