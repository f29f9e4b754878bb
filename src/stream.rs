//! The calling thread's current stream, used by [`crate::Allocator::allocate`],
//! and the registry of the stream handles an allocator accepts.

use crate::backend::BackendError;
use crate::error::{Error, Result};
use crate::sync::{thread_local, ConcurrentMap, Mutex};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

thread_local! {
    /// The innermost live guard's stream (0 when none): what allocations read.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    /// The live guards of the thread, oldest first: (token, stream).
    static GUARDS: RefCell<Vec<(u64, u64)>> = const { RefCell::new(Vec::new()) };
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(0) };
}

/// The calling thread's current stream (0, the default stream, unless a
/// [`StreamGuard`] says otherwise; also 0 late in thread teardown, once the
/// thread-local is gone).
pub fn current_stream() -> u64 {
    CURRENT.try_with(Cell::get).unwrap_or(0)
}

/// Makes `stream` the calling thread's current stream until the guard is
/// dropped; then the previous one is current again. Guards nest; one dropped
/// out of order removes exactly its own entry, so the stream of the
/// innermost guard still alive is current (the default stream once none is),
/// as with [`crate::graph_mode`]'s guards.
///
/// Any handle can be made current; [`crate::Allocator::allocate`] refuses
/// one that is neither built in (0, 1, 2) nor registered on its device
/// ([`crate::Allocator::register_stream`]) with
/// [`crate::Error::UnknownStream`].
///
/// ```
/// let _s = graphalloc::use_stream(0x5757_0000);
/// assert_eq!(graphalloc::current_stream(), 0x5757_0000);
/// drop(_s);
/// assert_eq!(graphalloc::current_stream(), 0);
/// ```
pub fn use_stream(stream: u64) -> StreamGuard {
    let token = (NEXT_TOKEN.try_with(|t| t.replace(t.get() + 1))).unwrap_or(u64::MAX);
    // Late in thread teardown, once the list of guards is gone, the guard
    // only swaps the current stream (and its drop swaps it back).
    let listed = GUARDS
        .try_with(|g| {
            g.try_borrow_mut()
                .map(|mut g| g.push((token, stream)))
                .is_ok()
        })
        .unwrap_or(false);
    let previous = CURRENT.try_with(|c| c.replace(stream)).unwrap_or(0);
    StreamGuard {
        token: listed.then_some(token),
        previous,
        _not_send: PhantomData,
    }
}

/// Restores the previous current stream on drop; see [`use_stream`].
#[must_use = "the stream is current only while the guard lives"]
#[derive(Debug)]
pub struct StreamGuard {
    /// Its entry in the thread's list of guards (`None` late in teardown).
    token: Option<u64>,
    /// The stream current when it was made.
    previous: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for StreamGuard {
    /// Removes exactly this guard's entry, so that guards dropped out of
    /// order (a `Vec` of guards drops its first one first) leave the
    /// innermost live guard's stream current, and the default stream once
    /// none is left.
    fn drop(&mut self) {
        let innermost = self.token.and_then(|token| {
            GUARDS
                .try_with(|g| {
                    let mut g = g.try_borrow_mut().ok()?;
                    if let Some(i) = g.iter().rposition(|e| e.0 == token) {
                        g.remove(i);
                    }
                    Some(g.last().map_or(0, |e| e.1))
                })
                .ok()
                .flatten()
        });
        let stream = innermost.unwrap_or(self.previous);
        let _ = CURRENT.try_with(|c| c.set(stream));
    }
}

/// The highest of the handles every CUDA context knows without registration:
/// 0 (the legacy default stream), 1 (`CU_STREAM_LEGACY`) and 2
/// (`CU_STREAM_PER_THREAD`). Checking for them is one comparison, so the
/// default-stream path does no lookup.
pub(crate) const LAST_BUILTIN_STREAM: u64 = 2;

/// What keeps a registered stream's handle valid: the `Arc` of a cudarc
/// stream ([`crate::Allocator::register_stream`]), or nothing: the caller's
/// promise ([`crate::Allocator::register_raw_stream`]) or the backend's own
/// simulated stream.
type Keep = Option<std::sync::Arc<cudarc::driver::CudaStream>>;

/// The streams an allocator accepts beside the built-in ones, per device:
/// a stream handle reaches the backend (the CUDA driver, which does not
/// promise to reject an invalid handle) only once it is here.
///
/// A stream unregistered while it kept a cudarc `Arc` is retired, not
/// dropped: blocks allocated on it or recorded on it still name it to the
/// driver when they are freed (capture queries, events), so the `Arc` lives
/// until no live block names the stream and its device has no pending frees.
#[derive(Debug)]
pub(crate) struct StreamRegistry {
    live: ConcurrentMap<(usize, u64), Keep>,
    retired: Mutex<Vec<(usize, u64, std::sync::Arc<cudarc::driver::CudaStream>)>>,
}

impl StreamRegistry {
    pub(crate) fn new() -> Self {
        StreamRegistry {
            live: ConcurrentMap::new(),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// Accepts `stream` on `device` if it is built in or registered; else,
    /// if `vouched()` (the backend created the stream itself), registers it
    /// and accepts it. Otherwise [`Error::UnknownStream`], or
    /// [`BackendError::ForeignStream`] if it is registered on another device.
    #[inline]
    pub(crate) fn check(
        &self,
        device: usize,
        stream: u64,
        vouched: impl FnOnce() -> bool,
    ) -> Result<()> {
        if stream <= LAST_BUILTIN_STREAM || self.live.with(&(device, stream), |_| ()).is_some() {
            return Ok(());
        }
        self.check_slow(device, stream, vouched)
    }

    #[cold]
    fn check_slow(&self, device: usize, stream: u64, vouched: impl FnOnce() -> bool) -> Result<()> {
        if vouched() {
            self.live.insert_new((device, stream), None);
            return Ok(());
        }
        let mut elsewhere = None;
        self.live.for_each(|&(d, s), _| {
            if s == stream {
                elsewhere.get_or_insert(d);
            }
        });
        Err(match elsewhere {
            Some(stream_device) => Error::Backend(BackendError::ForeignStream {
                stream,
                stream_device,
                device,
            }),
            None => Error::UnknownStream { stream },
        })
    }

    /// Registers `stream` on `device`, keeping `keep` (if any) while it is
    /// registered; `true` if it was not registered before. Built-in handles
    /// need no registration and are left alone.
    pub(crate) fn register(&self, device: usize, stream: u64, keep: Keep) -> bool {
        // A replaced `Arc` is of the same stream (same live handle), so
        // dropping it cannot end the stream the new one keeps.
        stream > LAST_BUILTIN_STREAM && self.live.replace((device, stream), keep).is_none()
    }

    /// Whether `stream` is registered on `device` (built-in ones always are).
    pub(crate) fn is_registered(&self, device: usize, stream: u64) -> bool {
        stream <= LAST_BUILTIN_STREAM || self.live.with(&(device, stream), |_| ()).is_some()
    }

    /// Ends the registration; `false` if `stream` was not registered on
    /// `device` (or is built in). A kept `Arc` is retired (see the type).
    pub(crate) fn unregister(&self, device: usize, stream: u64) -> bool {
        if stream <= LAST_BUILTIN_STREAM {
            return false;
        }
        match self.live.remove(&(device, stream)) {
            Some(Some(keep)) => {
                self.retired.lock().push((device, stream, keep));
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Drops the retired streams for which `in_use(device, stream)` is
    /// false; returns how many are still retired.
    pub(crate) fn release_retired(&self, in_use: impl Fn(usize, u64) -> bool) -> usize {
        let mut retired = self.retired.lock();
        retired.retain(|&(d, s, _)| in_use(d, s) || self.live.with(&(d, s), |_| ()).is_some());
        retired.len()
    }
}
