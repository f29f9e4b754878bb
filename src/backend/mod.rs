//! Device backends: where segments of device memory come from.
//!
//! [`Backend`] is the one safe interface the pools use. [`CudaBackend`] is the
//! only code in the crate that calls CUDA (and the only `unsafe` CUDA code);
//! [`HostBackend`] stands in for a device with host memory, with a capacity
//! and injectable faults, so everything above it runs and is tested on a
//! machine with no GPU.

mod cuda;
mod host;

pub use cuda::{cuda_driver_available, CudaBackend};
pub use host::HostBackend;

use std::fmt;

/// Which kind of memory a backend hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Host memory standing in for a device.
    Host,
    /// CUDA device memory through the driver API.
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Host => "host",
            BackendKind::Cuda => "cuda",
        })
    }
}

/// Free and total memory of a device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// Bytes not yet reserved by anyone.
    pub free: usize,
    /// The device's capacity.
    pub total: usize,
}

/// A backend call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The device has no room for a segment of this size.
    #[error("device out of memory reserving {requested} bytes")]
    OutOfMemory {
        /// Segment bytes asked for.
        requested: usize,
    },
    /// A fault injected by a test ([`HostBackend::fail_reservation`]).
    #[error("injected fault at reservation {nth}")]
    Injected {
        /// The 1-based number of the reservation that failed.
        nth: u64,
    },
    /// A CUDA driver call failed.
    #[error("{call} failed: {code}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// The `CUresult`, as its name.
        code: String,
    },
    /// No CUDA driver could be loaded, or it has no such device.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// A stream handle the backend does not know.
    #[error("unknown stream {stream:#x}")]
    UnknownStream {
        /// The handle.
        stream: u64,
    },
}

/// Whether a stream is being captured into a CUDA graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureStatus {
    /// Not capturing: work runs eagerly.
    Idle,
    /// Capturing; the id is unique per capture in the process.
    Capturing(u64),
    /// A capture failed and must be ended by its owner.
    Invalidated,
}

/// A source of device memory for one device.
///
/// Implementations are thread-safe: the pools call them from any thread,
/// sometimes concurrently.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The kind of memory.
    fn kind(&self) -> BackendKind;

    /// The device ordinal this backend serves.
    fn ordinal(&self) -> usize;

    /// Reserves a segment of `size` bytes and returns its device address,
    /// aligned to at least [`crate::BLOCK_ROUND`] bytes.
    fn reserve(&self, size: usize) -> Result<u64, BackendError>;

    /// Returns a segment obtained from [`Backend::reserve`] with the same `size`.
    fn release(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Free and total device memory.
    fn mem_info(&self) -> Result<MemInfo, BackendError>;

    /// Copies `src` from the host to device memory at `dst`; returns when the
    /// copy is complete.
    ///
    /// # Safety
    /// `dst..dst + src.len()` must lie inside a live block of this device
    /// that the caller owns, and no device work may be using it concurrently.
    unsafe fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<(), BackendError>;

    /// Copies device memory at `src` into `dst` on the host; returns when
    /// the copy is complete.
    ///
    /// # Safety
    /// `src..src + dst.len()` must lie inside a live block of this device
    /// that the caller owns.
    unsafe fn copy_to_host(&self, src: u64, dst: &mut [u8]) -> Result<(), BackendError>;

    /// Copies `len` bytes from `src` to `dst`, both device memory of this
    /// device; returns when the copy is complete.
    ///
    /// # Safety
    /// Both ranges must lie inside live blocks of this device that the caller
    /// owns, and must not overlap.
    unsafe fn copy_device_to_device(
        &self,
        dst: u64,
        src: u64,
        len: usize,
    ) -> Result<(), BackendError>;

    /// The granularity of [`Backend::map`]: physical memory comes in pages
    /// of this many bytes (2 MiB on current NVIDIA GPUs).
    fn page_size(&self) -> Result<usize, BackendError>;

    /// Reserves `size` bytes of device address space, with no memory behind
    /// it, aligned to [`Backend::page_size`]; `size` is a multiple of it.
    /// The start of an expandable segment.
    fn reserve_range(&self, size: usize) -> Result<u64, BackendError>;

    /// Returns a range from [`Backend::reserve_range`]; all of it must be
    /// unmapped.
    fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Backs `[addr, addr + size)`, page-aligned inside a reserved range and
    /// not mapped yet, with device memory, readable and writable. Counts
    /// against the device's capacity like [`Backend::reserve`].
    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Gives back the memory behind `[addr, addr + size)`, page-aligned and
    /// mapped by [`Backend::map`] (in one call or several).
    fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Creates an event for stream ordering (timing disabled). Events are
    /// pooled and reused by the allocator, never destroyed.
    fn create_event(&self) -> Result<u64, BackendError>;

    /// Records `event` on `stream`: it completes when the work queued on
    /// `stream` so far has finished.
    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError>;

    /// Whether `event` has completed (`cuEventQuery`), without blocking.
    fn event_complete(&self, event: u64) -> Result<bool, BackendError>;

    /// Blocks until `event` has completed.
    fn wait_event(&self, event: u64) -> Result<(), BackendError>;

    /// Whether `stream` is being captured (`cuStreamGetCaptureInfo`); an
    /// unknown handle is [`BackendError::UnknownStream`].
    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError>;

    /// Sets `len` bytes at `dst` to `value`; returns when done.
    ///
    /// # Safety
    /// `dst..dst + len` must lie inside a live block of this device that the
    /// caller owns.
    unsafe fn fill(&self, dst: u64, value: u8, len: usize) -> Result<(), BackendError>;
}
