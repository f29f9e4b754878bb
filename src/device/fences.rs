//! Fences: how a reclaim tells, without waiting, that the work which used
//! idle memory has completed.
//!
//! Each arena counts **ticks**. A block freed back to the arena is stamped
//! with the current tick ([`Fences::tick`]; merged free blocks keep the
//! highest stamp, memory never used is stamped 0). A **fence** is an event
//! recorded on a stream at a reclaim attempt: it takes the current tick as
//! its number, and the tick moves on, so every block stamped with a tick
//! up to the fence's number was freed before the fence was recorded. Once
//! the fence has completed, the work queued on its stream before those
//! frees is done, and their memory may be unmapped. A stream found idle
//! (`cuStreamQuery`) is as good as a fence recorded and completed then.
//!
//! Per stream the arena keeps the highest completed number (`done`) and
//! the fences still pending, oldest first, at most [`MAX_FENCES`]; they
//! are polled (`cuEventQuery`, no wait) oldest first, and completed ones go
//! back to the device's event pool. A wait for the stream (under real
//! pressure) completes them all.

use super::Device;
use crate::arena::{Arena, StreamTag};
use crate::backend::BackendError;
use std::collections::VecDeque;

/// The most fences pending on one stream: further reclaim attempts poll
/// them and record a new one only once one has completed.
pub(crate) const MAX_FENCES: usize = 4;

/// The fences of one arena: its tick and, per stream, what has completed.
#[derive(Debug)]
pub(crate) struct Fences {
    /// The number the next fence gets; blocks freed now are stamped with it.
    tick: u64,
    streams: Vec<(StreamTag, StreamFences)>,
}

impl Default for Fences {
    fn default() -> Self {
        // Stamps of freed memory start at 1: 0 is memory never used.
        Fences {
            tick: 1,
            streams: Vec::new(),
        }
    }
}

/// The fences of one stream.
#[derive(Debug, Default)]
struct StreamFences {
    /// Blocks stamped with a tick up to this are free of the stream's work.
    done: u64,
    /// Fences recorded and not known to be complete: (event, number),
    /// oldest first.
    pending: VecDeque<(u64, u64)>,
}

impl Fences {
    /// The stamp of a block freed now.
    #[inline]
    pub(crate) fn tick(&self) -> u64 {
        self.tick
    }

    /// Whether memory stamped `freed`, used on `stream`, is known to be
    /// free of the stream's work.
    pub(crate) fn safe(&self, stream: StreamTag, freed: u64) -> bool {
        freed <= self.done(stream)
    }

    fn done(&self, stream: StreamTag) -> u64 {
        self.streams
            .iter()
            .find(|s| s.0 == stream)
            .map_or(0, |s| s.1.done)
    }

    fn stream(&mut self, stream: StreamTag) -> &mut StreamFences {
        let at = match self.streams.iter().position(|s| s.0 == stream) {
            Some(at) => at,
            None => {
                self.streams.push((stream, StreamFences::default()));
                self.streams.len() - 1
            }
        };
        &mut self.streams[at].1
    }

    /// Notes that all work queued on `stream` until now has completed
    /// (it was found idle, or waited for): everything freed so far is safe.
    /// Returns the events of its pending fences, all complete now.
    fn completed_all(&mut self, stream: StreamTag) -> Vec<u64> {
        let number = self.tick;
        self.tick += 1;
        let s = self.stream(stream);
        s.done = s.done.max(number);
        s.pending.drain(..).map(|f| f.0).collect()
    }
}

impl Device {
    /// Brings `stream`'s fences in `arena` up to date without waiting, so
    /// that memory stamped `freed` or lower is safe to unmap if it can be:
    /// completed fences are collected (oldest first); if that is not
    /// enough, an idle stream makes everything safe; else, with `record`, a
    /// fence is recorded (when no pending one already covers `freed` and
    /// fewer than [`MAX_FENCES`] are pending), to be found complete by a
    /// later attempt. The caller has checked that the stream is not being
    /// captured.
    pub(super) fn refresh_fences(
        &self,
        arena: &mut Arena,
        stream: StreamTag,
        freed: u64,
        record: bool,
    ) -> Result<(), BackendError> {
        let streams = self.backend.streams()?;
        let fences = &mut arena.fences;
        let s = fences.stream(stream);
        while let Some(&(event, number)) = s.pending.front() {
            if !streams.event_complete(event)? {
                break;
            }
            s.done = s.done.max(number);
            s.pending.pop_front();
            self.recycle_event(event);
        }
        if freed <= s.done {
            return Ok(());
        }
        if streams.stream_idle(stream)? {
            for event in fences.completed_all(stream) {
                self.recycle_event(event);
            }
            return Ok(());
        }
        let covered = s.pending.back().is_some_and(|f| f.1 >= freed);
        if !record || covered || s.pending.len() >= MAX_FENCES {
            return Ok(());
        }
        let event = self.record_on(stream)?;
        self.mapping.fence_recorded();
        let number = fences.tick;
        fences.tick += 1;
        fences.stream(stream).pending.push_back((event, number));
        Ok(())
    }

    /// Notes in `arena` that the work queued on `stream` so far has
    /// completed (the caller waited for it): its pending fences go back to
    /// the pool.
    pub(super) fn stream_drained(&self, arena: &mut Arena, stream: StreamTag) {
        for event in arena.fences.completed_all(stream) {
            self.recycle_event(event);
        }
    }

    /// Puts the events of every fence of `arena` back in the pool (for an
    /// arena going away, or a stream that no longer exists), forgetting
    /// them: the pool's events are destroyed with the device.
    pub(crate) fn recycle_fences(&self, arena: &mut Arena, stream: Option<StreamTag>) {
        let fences = &mut arena.fences;
        for (tag, s) in fences.streams.iter_mut() {
            if stream.is_none_or(|st| st == *tag) {
                for (event, _) in s.pending.drain(..) {
                    self.recycle_event(event);
                }
            }
        }
    }
}
