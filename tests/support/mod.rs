//! Helpers shared by the host-backend integration tests (`allocator.rs`,
//! `graph_mode.rs`, `concurrency.rs`).
#![allow(dead_code)]

use graphalloc::{Allocator, Backend, DevicePtr, HostBackend, BLOCK_ROUND};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// An allocator over one host device of `capacity` bytes, with a handle on
/// the backend for fault injection and accounting. It keeps plain segments
/// (`expandable_segments:false`), whose layout these tests check;
/// expandable segments, the default, have `tests/expandable.rs`.
pub fn host_allocator(capacity: usize) -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let config = graphalloc::Config {
        expandable_segments: false,
        ..graphalloc::Config::default()
    };
    let alloc = Allocator::from_backends_with(vec![host.clone() as Arc<dyn Backend>], &config)
        .expect("an allocator over one host backend");
    (host, alloc)
}

/// `size` rounded up to the block granularity (512 bytes).
pub fn round512(size: usize) -> usize {
    size.div_ceil(BLOCK_ROUND) * BLOCK_ROUND
}

/// The block size the allocator carves for a small request of `size` bytes
/// aligned to `align`: the request plus the worst-case alignment padding,
/// rounded to 512 bytes.
pub fn small_block_size(size: usize, align: usize) -> usize {
    round512(size + align.saturating_sub(BLOCK_ROUND))
}

/// The bytes of a live host-backend block.
///
/// # Safety
/// `ptr..ptr + size` must be a live block handed out by an allocator over a
/// [`HostBackend`] (so it is real, writable host memory), not freed while the
/// slice lives, and not accessed by anyone else meanwhile.
pub unsafe fn host_bytes<'a>(ptr: DevicePtr, size: usize) -> &'a mut [u8] {
    // SAFETY: the caller guarantees the range is a live, exclusively owned
    // block of host memory.
    unsafe { std::slice::from_raw_parts_mut(ptr.addr() as *mut u8, size) }
}

/// Runs `f`, failing the test if it panics, naming `what` (the extreme-value
/// tests' wrapper of every call).
pub fn call<R>(what: impl std::fmt::Display, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string payload)");
            panic!("PANIC in {what}: {msg}");
        }
    }
}
