//! The calling thread's current stream, used by [`crate::Allocator::allocate`].

use crate::sync::thread_local;
use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// The calling thread's current stream (0, the default stream, unless a
/// [`StreamGuard`] says otherwise; also 0 late in thread teardown, once the
/// thread-local is gone).
pub fn current_stream() -> u64 {
    CURRENT.try_with(Cell::get).unwrap_or(0)
}

/// Makes `stream` the calling thread's current stream until the guard is
/// dropped; then the previous one is current again.
///
/// ```
/// let _s = graphalloc::use_stream(0x5757_0000);
/// assert_eq!(graphalloc::current_stream(), 0x5757_0000);
/// drop(_s);
/// assert_eq!(graphalloc::current_stream(), 0);
/// ```
pub fn use_stream(stream: u64) -> StreamGuard {
    // Late in thread teardown the guard changes nothing (and restores 0).
    let previous = CURRENT.try_with(|c| c.replace(stream)).unwrap_or(0);
    StreamGuard {
        previous,
        _not_send: PhantomData,
    }
}

/// Restores the previous current stream on drop; see [`use_stream`].
#[must_use = "the stream is current only while the guard lives"]
#[derive(Debug)]
pub struct StreamGuard {
    previous: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.previous));
    }
}
