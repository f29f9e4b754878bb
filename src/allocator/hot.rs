//! The allocation fast path: a request of the calling thread's default
//! stream, outside graph mode, that its own cache serves.

use super::failure::Failed;
use super::{Allocator, DEFAULT_STREAM};
use crate::arena::{round_small, Carved, BLOCK_ROUND, SMALL_REQUEST_MAX, SMALL_SEGMENT};
use crate::device_ptr::DevicePtr;
use crate::error::Result;
use crate::graph_pool::PoolPtr;
use crate::history::Action;
use crate::mode::{self, Lent};
use crate::ownership::{Kept, Owner, Record};
use crate::stats::Side;

/// An allocation's result before its out-of-memory report
/// ([`Allocator::report`]).
type Carve = std::result::Result<DevicePtr, Failed>;

impl Allocator {
    /// [`Allocator::allocate`] (`device` `None`, the current stream) and
    /// [`Allocator::allocate_on`]; `held`: [`Allocator::allocate_held`].
    ///
    /// A plain request, which the full path would serve from the calling
    /// thread's cache of the device (or from its graph pool) in exactly
    /// the same way, is served with nothing else looked at: on the default
    /// stream (always accepted, never captured), of at most
    /// [`SMALL_REQUEST_MAX`] bytes aligned to at most [`BLOCK_ROUND`] (no
    /// padding: the block's address is the pointer). A cached block of the
    /// request's size fits the device (it was carved there), so the size
    /// check against the device's capacity has nothing to say either.
    /// Anything else, a miss included, takes the full path (which then does
    /// not look at the thread's cache again).
    ///
    /// The graph-mode pool is borrowed from the thread's stack while the
    /// request runs ([`mode::with_current_pool`]); an out-of-memory report
    /// goes to the observers after that ([`Allocator::report`]).
    #[inline(always)]
    pub(super) fn allocate_routed(
        &self,
        device: Option<usize>,
        stream: u64,
        size: usize,
        align: usize,
        held: bool,
    ) -> Result<DevicePtr> {
        let plain = stream == DEFAULT_STREAM
            && size.wrapping_sub(1) < SMALL_REQUEST_MAX
            && align.is_power_of_two()
            && align <= BLOCK_ROUND;
        if !plain {
            return self.report(mode::with_current_pool(self.id, device, |lent| {
                let pool = lent.map(|(pool, _)| pool);
                self.allocate_as(pool, device, stream, size, align, held, false)
            }));
        }
        self.report(mode::with_current_pool(
            self.id,
            device,
            |lent| match lent {
                None => self.allocate_plain(device.unwrap_or(0), size, align, held),
                Some(lent) => self.allocate_pooled(lent, size, align, held),
            },
        ))
    }

    /// A plain request (see [`Allocator::allocate_routed`]) on `device`
    /// outside graph mode: a block of the thread's cache, handed out, else
    /// the full path.
    #[inline(never)]
    fn allocate_plain(&self, device: usize, size: usize, align: usize, held: bool) -> Carve {
        let stream = DEFAULT_STREAM;
        let rounded = round_small(size);
        let hit = (self.caches.get(device)).and_then(|c| c.take_cached(stream, rounded, size));
        let Some((origin, cached)) = hit else {
            // A miss, or no such device (the full path says so).
            return self.allocate_as(None, Some(device), stream, size, align, held, true);
        };
        let addr = cached.block.addr();
        if self.recorders.any() {
            self.recorders
                .on_alloc(device, stream, size, align, rounded, addr);
        }
        self.history.alloc(device, stream, size, addr, None);
        if cached.ptr == addr {
            // SAFETY: `cached` was just taken out of the thread's cache.
            unsafe { self.ownership.revive_kept(cached.record, size, held) };
        } else {
            // The block was last handed out under another pointer (an
            // over-aligned request's): its record moves to this one.
            let owner = Owner::Cache { device, origin };
            let carved = Carved {
                block: cached.block,
                size: cached.size,
            };
            let record = Record::new(owner, carved, size, stream, held);
            self.ownership.moved(cached.ptr, addr, record);
        }
        Ok(DevicePtr::new(addr))
    }

    /// A plain request (see [`Allocator::allocate_routed`]) in graph mode
    /// on a pool (`lent`, borrowed from the thread's graph-mode stack with
    /// the entry's cache of the pool's freed blocks): a block of that
    /// cache, handed out (`graph_pool/slots.rs`), else from the pool, as
    /// the full path would serve it, with only the one check that can fail
    /// before the pool is asked (the device must hold a small segment).
    #[inline(never)]
    fn allocate_pooled(&self, lent: Lent<'_>, size: usize, align: usize, held: bool) -> Carve {
        let (pool, entry) = lent;
        let (stream, device) = (DEFAULT_STREAM, pool.device());
        let rounded = round_small(size);
        let slot = entry.get();
        if let Some(cached) = slot.and_then(|slot| slot.take(stream, rounded, size)) {
            let addr = cached.block.addr();
            if self.recorders.any() {
                self.recorders
                    .on_alloc(device, stream, size, align, rounded, addr);
            }
            self.history.alloc(device, stream, size, addr, Some(pool));
            // In place (a pool's cache holds only blocks handed out at
            // their start).
            // SAFETY: `cached` was just taken out of the thread's cache.
            unsafe { self.ownership.revive_kept(cached.record, size, held) };
            return Ok(DevicePtr::new(addr));
        }
        if slot.is_none() {
            entry.open_if_wanted(pool);
        }
        let cache = match self.caches.get(device) {
            Some(cache) if SMALL_SEGMENT <= cache.device.capacity() => cache,
            // The full path says what is wrong.
            _ => return self.allocate_as(Some(pool), None, stream, size, align, held, false),
        };
        let carved = match pool.allocate(stream, rounded, size, align) {
            Ok(carved) => carved,
            Err(s) => return Err(self.shortfall(s, cache, device, size, Some(pool))),
        };
        let addr = carved.block.addr();
        if self.recorders.any() {
            self.recorders
                .on_alloc(device, stream, size, align, rounded, addr);
        }
        self.history.alloc(device, stream, size, addr, Some(pool));
        // SAFETY: `pool` is borrowed from the thread's graph-mode stack,
        // whose handle holds it until this returns; its arena just counted
        // the block live, and the pointer goes into the block's record here.
        let owner = Owner::Pool(unsafe { PoolPtr::for_block(pool) });
        let record = Record::new(owner, carved, size, stream, held);
        self.ownership.insert(addr, record);
        Ok(DevicePtr::new(addr))
    }
}

impl Allocator {
    /// Notes the free of `ptr`, a block of pool `pool` that went into the
    /// calling thread's cache for the pool (`graph_pool/slots.rs`):
    /// requested, and complete (in the cache the block is free and reusable
    /// at once), as a free into the pool notes it.
    #[inline]
    pub(super) fn pool_kept(&self, kept: &Kept, pool: u64, ptr: u64) {
        if self.history.on() {
            let (device, stream) = (kept.device, kept.stream);
            (self.history).record(
                Action::FreeRequested,
                device,
                stream,
                kept.requested,
                ptr,
                Some(pool),
            );
            let (size, block) = (kept.size, kept.block);
            let side = Side::Pools;
            (self.caches[device].device).note(Action::FreeCompleted, side, stream, size, block);
        }
    }
}
