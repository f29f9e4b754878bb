//! Stream-ordered frees: a block used by other streams, or freed while its
//! stream is being captured, waits for events (from a reusable pool) before
//! it is reused.

use super::Device;
use crate::arena::{Arena, BlockRef, Deferred, StreamTag};
use crate::backend::{BackendError, CaptureStatus};
use crate::history::Action;
use crate::stats::Side;

impl Device {
    /// Whether `stream` is being captured. The default stream (0) is never
    /// captured (CUDA forbids capturing the legacy stream), which keeps the
    /// common path free of driver calls.
    #[inline]
    pub(crate) fn capturing(&self, stream: StreamTag) -> Result<bool, BackendError> {
        if stream == 0 {
            return Ok(false);
        }
        Ok(self.capture_status(stream)? != CaptureStatus::Idle)
    }

    /// The capture in progress on `stream`, if any.
    pub(crate) fn capture_id(&self, stream: StreamTag) -> Result<Option<u64>, BackendError> {
        if stream == 0 {
            return Ok(None);
        }
        Ok(match self.capture_status(stream)? {
            CaptureStatus::Capturing(id) => Some(id),
            _ => None,
        })
    }

    /// The capture status of `stream`; a device without streams has only
    /// the default stream.
    fn capture_status(&self, stream: StreamTag) -> Result<CaptureStatus, BackendError> {
        match self.backend.as_stream_order() {
            Some(streams) => streams.capture_status(stream),
            None => Err(BackendError::UnknownStream { stream }),
        }
    }

    fn event(&self) -> Result<u64, BackendError> {
        match self.events.lock().pop() {
            Some(event) => Ok(event),
            None => self.backend.streams()?.create_event(),
        }
    }

    /// Puts the events of `arena`'s deferred frees back in the pool, for an
    /// arena whose blocks are going away (so the events are destroyed with
    /// the device instead of leaking).
    pub(crate) fn recycle_deferred_events(&self, arena: &Arena) {
        let events = arena.deferred.iter().flat_map(|d| d.events.iter().copied());
        self.events.lock().extend(events);
    }

    /// Returns an event to the pool.
    pub(super) fn recycle_event(&self, event: u64) {
        self.events.lock().push(event);
    }

    /// Records an event on `stream` and returns it.
    pub(super) fn record_on(&self, stream: StreamTag) -> Result<u64, BackendError> {
        let event = self.event()?;
        match self
            .backend
            .streams()
            .and_then(|s| s.record_event(event, stream))
        {
            Ok(()) => Ok(event),
            Err(e) => {
                self.events.lock().push(event);
                Err(e)
            }
        }
    }

    /// Gives back to `arena` a block that sat in a thread cache. Its free
    /// was completed (and recorded in the history) when it entered the
    /// cache, with no stream work pending on it (only such blocks enter
    /// one), so it is simply free now, recorded nothing more: also when its
    /// stream is being captured by now, as no captured work can use a block
    /// the user freed before the capture began.
    pub(crate) fn return_cached(&self, arena: &mut Arena, block: BlockRef) {
        let size = arena.free(block, 0);
        self.freed(Side::Caching, size);
    }

    /// Frees a live block of `arena`. The block becomes reusable at once
    /// unless other streams used it (`uses`, from `record_stream`): then an
    /// event is recorded on each and the block waits for them. A caching
    /// allocator's block freed while its own stream is being captured also
    /// waits, until the capture has ended, so no eager work can reuse memory
    /// the capture touched. (A pool's block freed during its capture is
    /// reusable at once: only the pool hands it out, to the same capture.)
    #[inline]
    pub(crate) fn free_block(
        &self,
        arena: &mut Arena,
        side: Side,
        block: BlockRef,
        requested: usize,
        stream: StreamTag,
        uses: &[StreamTag],
    ) {
        // A failed capture query defers, to be safe.
        let own_capturing = side == Side::Caching && self.capturing(stream).unwrap_or(true);
        if uses.is_empty() && !own_capturing {
            let size = arena.free(block, requested);
            self.freed(side, size);
            self.note(Action::FreeCompleted, side, stream, size, block.addr());
            return;
        }
        let own = own_capturing.then_some(stream);
        self.defer_block(arena, side, block, requested, own, uses);
    }

    /// [`Device::free_block`] of a block that must wait for stream work:
    /// for its own stream `own` (being captured, or its state unknown),
    /// if any, and for the other streams that used it.
    #[inline(never)]
    fn defer_block(
        &self,
        arena: &mut Arena,
        side: Side,
        block: BlockRef,
        requested: usize,
        own: Option<StreamTag>,
        uses: &[StreamTag],
    ) {
        let mut deferred = Deferred {
            block,
            events: Vec::new(),
            unrecorded: Vec::new(),
        };
        deferred.unrecorded.extend(own);
        for &s in uses {
            match self.capturing(s) {
                Ok(false) => match self.record_on(s) {
                    Ok(event) => deferred.events.push(event),
                    Err(_) => deferred.unrecorded.push(s),
                },
                Ok(true) => deferred.unrecorded.push(s),
                // A stream that no longer exists has no pending work.
                Err(BackendError::UnknownStream { .. }) => {}
                Err(_) => deferred.unrecorded.push(s),
            }
        }
        let size = arena.defer_free(deferred, requested);
        self.freed(side, size);
    }

    /// Makes deferred blocks whose stream work is done reusable. Streams
    /// whose capture has ended get their event now. With `wait`, blocks
    /// until every recorded event has completed (blocks whose stream is
    /// still being captured stay deferred: no wait can end a capture).
    pub(crate) fn settle(
        &self,
        arena: &mut Arena,
        side: Side,
        wait: bool,
    ) -> Result<(), BackendError> {
        let mut first_error = None;
        let mut i = 0;
        while i < arena.deferred.len() {
            let d = &mut arena.deferred[i];
            let mut still = Vec::new();
            for s in d.unrecorded.drain(..) {
                match self.capturing(s) {
                    Ok(false) => match self.record_on(s) {
                        Ok(event) => d.events.push(event),
                        Err(e) => {
                            first_error.get_or_insert(e);
                            still.push(s);
                        }
                    },
                    Err(BackendError::UnknownStream { .. }) => {}
                    Ok(true) => still.push(s),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        still.push(s);
                    }
                }
            }
            d.unrecorded = still;
            let mut pending = Vec::new();
            for event in d.events.drain(..) {
                let done = if wait {
                    self.backend
                        .streams()
                        .and_then(|s| s.wait_event(event))
                        .map(|()| true)
                } else {
                    self.backend.streams().and_then(|s| s.event_complete(event))
                };
                match done {
                    Ok(true) => self.events.lock().push(event),
                    Ok(false) => pending.push(event),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        pending.push(event);
                    }
                }
            }
            d.events = pending;
            if d.events.is_empty() && d.unrecorded.is_empty() {
                let done = arena.deferred.swap_remove(i);
                if self.history.on() {
                    let (size, stream) = arena.block_info(done.block);
                    self.note(Action::FreeCompleted, side, stream, size, done.block.addr());
                }
                arena.complete_deferred(done.block);
            } else {
                i += 1;
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Device {
    /// Destroys the pooled events: the pools that used them are gone (they
    /// hold the device), and their deferred frees' events were recycled
    /// into the pool by `release_all`.
    fn drop(&mut self) {
        let events = std::mem::take(&mut *self.events.lock());
        if let Some(streams) = self.backend.as_stream_order() {
            for event in events {
                let _ = streams.destroy_event(event);
            }
        }
    }
}
