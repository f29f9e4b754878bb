//! Device backends: where segments of device memory come from.
//!
//! The interface is split the way RMM splits its memory resources: a narrow
//! core and layers around it.
//!
//! - [`Backend`] is the core every device offers: reserve and release a
//!   segment, read the memory figures, say its kind and ordinal.
//! - Capabilities sit beside it, each its own trait, reached through the
//!   core's accessors: [`VirtualMemory`] (address ranges with pages mapped
//!   into them: expandable segments), [`StreamOrder`] (events, capture
//!   status) and [`Copies`] (synchronous copies and fills).
//!   [`Backend::vmm`], [`Backend::streams`] and [`Backend::copies`] give the
//!   capability or [`BackendError::Unsupported`], so a call site reads
//!   `backend.vmm()?.map(addr, len)`.
//! - Adaptors wrap any backend and add one behaviour, forwarding the rest:
//!   [`LimitAdaptor`] (a memory limit: `memory_fraction`),
//!   [`FaultAdaptor`] (injected failures, for tests) and [`TrackingAdaptor`]
//!   (a record of every segment, range and page handed out, for checking).
//!
//! [`CudaBackend`] is the only code in the crate that calls CUDA (and the
//! only `unsafe` CUDA code); [`HostBackend`] simulates a device in host
//! memory, so everything above it runs and is tested on a machine with no
//! GPU.

mod adaptors;
mod cuda;
mod host;
mod tracking;

pub use adaptors::{FaultAdaptor, LimitAdaptor};
pub use cuda::{cuda_driver_available, CudaBackend};
pub use host::HostBackend;
pub use tracking::TrackingAdaptor;

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

pub use crate::error::BackendError;

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

/// A source of device memory for one device: the core every backend offers.
///
/// Implementations are thread-safe: the pools call them from any thread,
/// sometimes concurrently. Capabilities beyond segments are separate traits,
/// reached through the `as_*` accessors (default: absent; implement these),
/// or through [`Backend::vmm`], [`Backend::streams`] and [`Backend::copies`]
/// (the capability or a typed error; leave these as they are). An adaptor
/// forwards the capabilities it does not change by returning its inner
/// backend's.
///
/// The methods run under graphalloc's locks (a pool's or cache's arena,
/// and during a graph-mode allocation the thread's graph-mode stack): they
/// must not call into graphalloc (an allocation or free from there waits
/// for the lock it runs under; a graph-mode guard made or dropped there
/// does nothing).
///
/// The methods must not panic: report a failure as a [`BackendError`]. A
/// panic cannot be recovered from cleanly where it lands; during
/// `empty_cache`, for one, the segments being released have already left
/// the arena, so a panic in [`Backend::release`] leaves the allocator's
/// statistics counting memory that is neither cached nor given back.
///
/// The methods that give memory back ([`Backend::release`],
/// [`VirtualMemory::unmap`], [`VirtualMemory::release_range`]) are
/// `unsafe`: the backend hands out raw addresses, and the caller promises
/// that nothing will use the memory again. Safe code holding a backend (such
/// as `Allocator::backend`'s) cannot free memory under the allocator's live
/// blocks.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The kind of memory.
    fn kind(&self) -> BackendKind;

    /// The device ordinal this backend serves.
    fn ordinal(&self) -> usize;

    /// Reserves a segment of `size` bytes and returns its device address,
    /// aligned to at least [`crate::BLOCK_ROUND`] bytes.
    fn reserve(&self, size: usize) -> Result<u64, BackendError>;

    /// Returns a segment obtained from [`Backend::reserve`] with the same
    /// `size`. Anything else is an error that changes nothing
    /// ([`BackendError::InvalidAddress`] where the backend can tell).
    ///
    /// # Safety
    /// Nothing may access `[addr, addr + size)` again once this is called:
    /// no live block lies in it, nobody holds a pointer into it that they
    /// will use, and no device work that uses it is still pending, unless
    /// this backend's release waits for that work itself (`cuMemFree`,
    /// which [`CudaBackend`]'s release calls, synchronizes with the
    /// device). The allocator upholds this: it releases only segments it
    /// owns that hold no live block (or, when their owner goes away, blocks
    /// nothing can reach any more). Calling it from safe code does not
    /// compile:
    ///
    /// ```compile_fail,E0133
    /// use graphalloc::{Backend, HostBackend};
    ///
    /// let host = HostBackend::new(0, 1 << 20);
    /// let seg = host.reserve(4096).unwrap();
    /// host.release(seg, 4096).unwrap(); // error[E0133]: call to unsafe function
    /// ```
    ///
    /// Nor through the backend an allocator lends out for copies (before,
    /// this freed the memory under a live block, and a later write to the
    /// block wrote into freed memory):
    ///
    /// ```compile_fail,E0133
    /// use graphalloc::{Allocator, Config};
    ///
    /// let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    /// let p = alloc.allocate(4096, 256).unwrap();
    /// alloc.backend(0).unwrap().release(p.addr(), 4096).unwrap(); // error[E0133]
    /// ```
    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Free and total device memory.
    fn mem_info(&self) -> Result<MemInfo, BackendError>;

    /// Address ranges with memory mapped into them, if the device has them.
    fn as_virtual_memory(&self) -> Option<&dyn VirtualMemory> {
        None
    }

    /// Stream ordering (events, capture status), if the device has streams.
    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        None
    }

    /// Copies between host and device memory, if the device offers them.
    fn as_copies(&self) -> Option<&dyn Copies> {
        None
    }

    /// The virtual-memory capability, or [`BackendError::Unsupported`].
    fn vmm(&self) -> Result<&dyn VirtualMemory, BackendError> {
        self.as_virtual_memory().ok_or(BackendError::Unsupported {
            capability: "virtual memory",
        })
    }

    /// The stream-order capability, or [`BackendError::Unsupported`].
    fn streams(&self) -> Result<&dyn StreamOrder, BackendError> {
        self.as_stream_order().ok_or(BackendError::Unsupported {
            capability: "stream order",
        })
    }

    /// The copy capability, or [`BackendError::Unsupported`].
    fn copies(&self) -> Result<&dyn Copies, BackendError> {
        self.as_copies().ok_or(BackendError::Unsupported {
            capability: "copies",
        })
    }
}

/// A shared backend is a backend: adaptors can wrap an `Arc<dyn Backend>`.
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn kind(&self) -> BackendKind {
        (**self).kind()
    }

    fn ordinal(&self) -> usize {
        (**self).ordinal()
    }

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        (**self).reserve(size)
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        // SAFETY: the caller's contract for `release` is passed on unchanged
        // to the shared backend.
        unsafe { (**self).release(addr, size) }
    }

    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        (**self).mem_info()
    }

    fn as_virtual_memory(&self) -> Option<&dyn VirtualMemory> {
        (**self).as_virtual_memory()
    }

    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        (**self).as_stream_order()
    }

    fn as_copies(&self) -> Option<&dyn Copies> {
        (**self).as_copies()
    }
}

/// Device address space with physical memory mapped into it: what
/// expandable segments are built on (`cuMemAddressReserve`, `cuMemCreate` +
/// `cuMemMap` + `cuMemSetAccess`, `cuMemUnmap` + `cuMemRelease`,
/// `cuMemAddressFree`).
///
/// Memory comes in **mapping units**: each [`VirtualMemory::map`] call
/// creates one physical allocation (one `cuMemCreate` handle) covering all
/// it maps, and a unit is unmapped whole or not at all (CUDA cannot unmap
/// part of a `cuMemMap`). The cost of a map is per unit, nearly whatever its
/// size, so callers map few, large units.
pub trait VirtualMemory: Send + Sync {
    /// The granularity of [`VirtualMemory::map`]: addresses and sizes are
    /// multiples of this many bytes (2 MiB on current NVIDIA GPUs).
    fn page_size(&self) -> Result<usize, BackendError>;

    /// Reserves `size` bytes of device address space, with no memory behind
    /// it, aligned to [`VirtualMemory::page_size`]; `size` is a multiple of
    /// it. The start of an expandable segment.
    fn reserve_range(&self, size: usize) -> Result<u64, BackendError>;

    /// Returns a range from [`VirtualMemory::reserve_range`]; all of it must
    /// be unmapped.
    ///
    /// # Safety
    /// Nothing may access `[addr, addr + size)` again once this is called:
    /// no live block lies in it and no pointer into it will be used (the
    /// address space may be handed out again). The allocator upholds this:
    /// it releases only a range it owns whose pages it has all unmapped
    /// under the same contract ([`VirtualMemory::unmap`]).
    unsafe fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Creates one mapping unit: memory for `[addr, addr + size)`,
    /// page-aligned inside a reserved range and not mapped yet, mapped there
    /// readable and writable. Counts against the device's capacity like
    /// [`Backend::reserve`]. All or nothing: on an error nothing is mapped.
    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError>;

    /// Unmaps `[addr, addr + size)`, which must be exactly one or more whole
    /// mapping units lying end to end (else [`BackendError::InvalidAddress`],
    /// changing nothing, where the backend can tell), and gives their memory
    /// back, unit by unit in address order. On an error, nothing changed,
    /// except for [`BackendError::PartlyUnmapped`], which says how many
    /// bytes from `addr` (whole units) are unmapped all the same.
    ///
    /// # Safety
    /// Nothing may access `[addr, addr + size)` again while it is unmapped:
    /// no live block lies in it, nobody holds a pointer into it that they
    /// will use, and no device work queued on it is still pending (the
    /// caller has waited for it or fenced it). The allocator upholds this:
    /// it unmaps only idle units of its own expandable segments, free of
    /// any block, once the work of the streams that used them is done (or,
    /// when their owner goes away, units whose blocks nothing can reach any
    /// more, after waiting for their segment's stream). Calling it from safe code does not compile:
    ///
    /// ```compile_fail,E0133
    /// use graphalloc::{Backend, HostBackend};
    ///
    /// let host = HostBackend::new(0, 1 << 30);
    /// let vmm = host.vmm().unwrap();
    /// let range = vmm.reserve_range(2 << 20).unwrap();
    /// vmm.map(range, 2 << 20).unwrap();
    /// vmm.unmap(range, 2 << 20).unwrap(); // error[E0133]: call to unsafe function
    /// ```
    unsafe fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError>;
}

/// The mapping units, as `(start, size)` in address order, that make up
/// exactly `[addr, end)`, read from a backend's table of units (start →
/// unit, `size` reads a unit's size); else why not, in words.
pub(crate) fn whole_units<V>(
    units: &std::collections::BTreeMap<u64, V>,
    size: impl Fn(&V) -> usize,
    addr: u64,
    end: u64,
) -> Result<Vec<(u64, usize)>, &'static str> {
    if let Some((&start, unit)) = units.range(..addr).next_back() {
        if start + size(unit) as u64 > addr {
            return Err("part of a mapping unit");
        }
    }
    let mut out = Vec::new();
    let mut at = addr;
    for (&start, unit) in units.range(addr..end) {
        if start != at {
            return Err("pages not mapped");
        }
        at = start + size(unit) as u64;
        out.push((start, size(unit)));
    }
    match at.cmp(&end) {
        std::cmp::Ordering::Less => Err("pages not mapped"),
        std::cmp::Ordering::Greater => Err("part of a mapping unit"),
        std::cmp::Ordering::Equal => Ok(out),
    }
}

/// Whether any unit of `units` (as in [`whole_units`]) overlaps
/// `[addr, end)`.
pub(crate) fn overlaps_units<V>(
    units: &std::collections::BTreeMap<u64, V>,
    size: impl Fn(&V) -> usize,
    addr: u64,
    end: u64,
) -> bool {
    units
        .range(..end)
        .next_back()
        .is_some_and(|(&start, unit)| start + size(unit) as u64 > addr)
}

/// Streams and events: what stream-ordered frees are built on.
pub trait StreamOrder: Send + Sync {
    /// Creates an event for stream ordering (timing disabled). The
    /// allocator pools events and destroys them with
    /// [`StreamOrder::destroy_event`] when its device goes away.
    fn create_event(&self) -> Result<u64, BackendError>;

    /// Destroys an event from [`StreamOrder::create_event`]; it must not be
    /// used again.
    fn destroy_event(&self, event: u64) -> Result<(), BackendError>;

    /// Records `event` on `stream`: it completes when the work queued on
    /// `stream` so far has finished.
    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError>;

    /// Whether `event` has completed (`cuEventQuery`), without blocking.
    fn event_complete(&self, event: u64) -> Result<bool, BackendError>;

    /// Blocks until `event` has completed.
    fn wait_event(&self, event: u64) -> Result<(), BackendError>;

    /// Whether all the work queued on `stream` so far has completed
    /// (`cuStreamQuery`), without blocking: then memory its work used is
    /// free of it now. The default, for a backend that cannot tell, is
    /// `false` (work may be queued). Not to be called on a stream being
    /// captured.
    fn stream_idle(&self, stream: u64) -> Result<bool, BackendError> {
        let _ = stream;
        Ok(false)
    }

    /// Whether `stream` is being captured (`cuStreamGetCaptureInfo`); an
    /// unknown handle is [`BackendError::UnknownStream`], a stream of another
    /// device [`BackendError::ForeignStream`].
    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError>;

    /// Whether `stream` is a stream this backend made itself and keeps
    /// valid for its whole life (the host backend's simulated streams, the
    /// streams of [`StreamOrder::create_stream`]), so the allocator accepts
    /// it without registration. Every other handle comes from outside:
    /// `false`.
    fn created_stream(&self, stream: u64) -> bool {
        let _ = stream;
        false
    }

    /// Creates a stream that this backend owns and keeps valid for its
    /// whole life ([`StreamOrder::created_stream`] is then `true` for it),
    /// for tools that run recorded work on streams of their own, such as the
    /// trace replay. The default, for a backend that cannot:
    /// [`BackendError::Unsupported`].
    fn create_stream(&self) -> Result<u64, BackendError> {
        Err(BackendError::Unsupported {
            capability: "stream creation",
        })
    }
}

/// Synchronous copies into, out of and within device memory.
pub trait Copies: Send + Sync {
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

    /// Sets `len` bytes at `dst` to `value`; returns when done.
    ///
    /// # Safety
    /// `dst..dst + len` must lie inside a live block of this device that the
    /// caller owns.
    unsafe fn fill(&self, dst: u64, value: u8, len: usize) -> Result<(), BackendError>;
}
