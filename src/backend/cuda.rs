//! CUDA device memory through cudarc's driver API (loaded at run time).
//!
//! This file holds every `unsafe` CUDA call of the crate. Each call is made
//! with the device's primary context current (PyTorch's autograd thread, for
//! one, has no context of its own) and with the previous context restored
//! afterwards, so callers on any thread see no change.

use super::adaptors::all_capabilities;
use super::{
    Backend, BackendError, BackendKind, CaptureStatus, Copies, MemInfo, StreamOrder, VirtualMemory,
};
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;
use std::sync::OnceLock;

/// Whether a CUDA driver can be loaded, initialised, and has a device.
///
/// Never panics: where `libcuda` is missing this is simply `false`. The
/// answer is computed once per process.
pub fn cuda_driver_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| device_count().map(|n| n > 0).unwrap_or(false))
}

/// Number of CUDA devices, or why there are none.
fn device_count() -> Result<usize, BackendError> {
    // SAFETY: `is_culib_present` only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(BackendError::Unavailable(
            "libcuda could not be loaded".into(),
        ));
    }
    // The library is present, so the lazily loaded entry points resolve;
    // cuInit may be called any number of times.
    result::init().map_err(|e| BackendError::Unavailable(driver("cuInit")(e).to_string()))?;
    let count = result::device::get_count().map_err(driver("cuDeviceGetCount"))?;
    Ok(count.max(0) as usize)
}

/// Turns a driver error of `call` into a [`BackendError::Driver`].
fn driver(call: &'static str) -> impl Fn(DriverError) -> BackendError {
    move |e| BackendError::Driver {
        call,
        code: e
            .error_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", e.0)),
    }
}

/// As [`driver`], but out-of-memory is [`BackendError::OutOfMemory`] for
/// `requested` bytes.
fn driver_or_oom(call: &'static str, requested: usize) -> impl Fn(DriverError) -> BackendError {
    move |e| match e.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory { requested },
        _ => driver(call)(e),
    }
}

/// The driver calls cudarc's `result` layer lacks (virtual memory, capture
/// info, capture mode, a stream's context), each wrapped once: the call,
/// its result checked, its output returned.
mod raw {
    use super::sys;
    use cudarc::driver::result::DriverError;

    /// `cuMemGetAllocationGranularity` (minimum).
    ///
    /// # Safety
    /// A context is current.
    pub(super) unsafe fn granularity(
        prop: &sys::CUmemAllocationProp,
    ) -> Result<usize, DriverError> {
        let mut granularity = 0usize;
        // SAFETY: valid out-pointer and property struct; a context is
        // current per this function's contract.
        unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            )
        }
        .result()?;
        Ok(granularity)
    }

    /// `cuMemAddressReserve` of `size` bytes aligned to `align`.
    ///
    /// # Safety
    /// A context is current.
    pub(super) unsafe fn address_reserve(size: usize, align: usize) -> Result<u64, DriverError> {
        let mut addr: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; reserves address space only.
        unsafe { sys::cuMemAddressReserve(&mut addr, size, align, 0, 0) }.result()?;
        Ok(addr)
    }

    /// `cuMemAddressFree`.
    ///
    /// # Safety
    /// `addr, size` is a range from [`address_reserve`], fully unmapped,
    /// freed once.
    pub(super) unsafe fn address_free(addr: u64, size: usize) -> Result<(), DriverError> {
        // SAFETY: per this function's contract.
        unsafe { sys::cuMemAddressFree(addr, size) }.result()
    }

    /// `cuMemCreate`: `size` bytes of physical memory.
    ///
    /// # Safety
    /// A context is current.
    pub(super) unsafe fn create(
        size: usize,
        prop: &sys::CUmemAllocationProp,
    ) -> Result<sys::CUmemGenericAllocationHandle, DriverError> {
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: valid out-pointer and property struct.
        unsafe { sys::cuMemCreate(&mut handle, size, prop, 0) }.result()?;
        Ok(handle)
    }

    /// `cuMemMap` of `handle` at `addr`.
    ///
    /// # Safety
    /// `addr, size` is reserved address space not mapped yet; `handle` is a
    /// live allocation of `size` bytes.
    pub(super) unsafe fn map(
        addr: u64,
        size: usize,
        handle: sys::CUmemGenericAllocationHandle,
    ) -> Result<(), DriverError> {
        // SAFETY: per this function's contract.
        unsafe { sys::cuMemMap(addr, size, 0, handle, 0) }.result()
    }

    /// `cuMemSetAccess` with one descriptor.
    ///
    /// # Safety
    /// `addr, size` is mapped.
    pub(super) unsafe fn set_access(
        addr: u64,
        size: usize,
        desc: &sys::CUmemAccessDesc,
    ) -> Result<(), DriverError> {
        // SAFETY: per this function's contract; one descriptor.
        unsafe { sys::cuMemSetAccess(addr, size, desc, 1) }.result()
    }

    /// `cuMemUnmap`.
    ///
    /// # Safety
    /// `addr, size` is exactly one mapping made by [`map`], which no device
    /// work uses any more.
    pub(super) unsafe fn unmap(addr: u64, size: usize) -> Result<(), DriverError> {
        // SAFETY: per this function's contract.
        unsafe { sys::cuMemUnmap(addr, size) }.result()
    }

    /// `cuMemRelease`.
    ///
    /// # Safety
    /// `handle` came from [`create`] and is released once.
    pub(super) unsafe fn release(
        handle: sys::CUmemGenericAllocationHandle,
    ) -> Result<(), DriverError> {
        // SAFETY: per this function's contract.
        unsafe { sys::cuMemRelease(handle) }.result()
    }

    /// `cuStreamGetCaptureInfo`: the capture status of `stream` and the
    /// capture's id.
    ///
    /// # Safety
    /// A context is current. (An invalid stream handle makes the driver
    /// return an error rather than touch memory.)
    pub(super) unsafe fn capture_info(
        stream: sys::CUstream,
    ) -> Result<(sys::CUstreamCaptureStatus, u64), DriverError> {
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        let mut id: sys::cuuint64_t = 0;
        // SAFETY: valid out-pointers; the optional outputs are null, which
        // the driver allows.
        unsafe {
            sys::cuStreamGetCaptureInfo_v2(
                stream,
                &mut status,
                &mut id,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok((status, id))
    }

    /// `cuStreamGetCtx`: the context `stream` belongs to.
    ///
    /// # Safety
    /// As [`capture_info`].
    pub(super) unsafe fn stream_context(
        stream: sys::CUstream,
    ) -> Result<sys::CUcontext, DriverError> {
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { sys::cuStreamGetCtx(stream, &mut ctx) }.result()?;
        Ok(ctx)
    }

    /// `cuCtxGetDevice`: the device of the current context.
    pub(super) fn current_device() -> Result<sys::CUdevice, DriverError> {
        let mut device: sys::CUdevice = 0;
        // SAFETY: valid out-pointer; with no context current the driver
        // returns an error.
        unsafe { sys::cuCtxGetDevice(&mut device) }.result()?;
        Ok(device)
    }

    /// `cuThreadExchangeStreamCaptureMode`: sets this thread's capture mode
    /// and returns the previous one.
    pub(super) fn exchange_capture_mode(
        mode: sys::CUstreamCaptureMode,
    ) -> Result<sys::CUstreamCaptureMode, DriverError> {
        let mut mode = mode;
        // SAFETY: valid in/out pointer to a capture mode.
        unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) }.result()?;
        Ok(mode)
    }
}

/// A retained primary context. Context handles are process-wide and may be
/// made current on any thread.
#[derive(Debug, Clone, Copy)]
struct Context(sys::CUcontext);

// SAFETY: a CUcontext is an opaque process-wide handle; the driver allows it
// to be made current and used from any thread.
unsafe impl Send for Context {}
// SAFETY: as above; the handle itself is never mutated after creation.
unsafe impl Sync for Context {}

/// Device memory of one CUDA device, through `cuMemAlloc`/`cuMemFree`.
///
/// The device's primary context is retained on first use, not at
/// construction, so an allocator over many devices costs nothing on the
/// devices it never touches.
#[derive(Debug)]
pub struct CudaBackend {
    ordinal: usize,
    device: sys::CUdevice,
    context: OnceLock<Result<Context, BackendError>>,
    /// The mapping granularity, read from the driver once.
    page: OnceLock<Result<usize, BackendError>>,
    /// Mapping units mapped by `map`: start → (allocation handle, size).
    units: std::sync::Mutex<Units>,
    /// The streams of [`StreamOrder::create_stream`], destroyed with the
    /// backend.
    created: std::sync::Mutex<Vec<u64>>,
}

/// A CUDA backend's table of mapping units: start → (handle, size).
type Units = std::collections::BTreeMap<u64, (sys::CUmemGenericAllocationHandle, usize)>;

/// The handles `cuStreamGetCtx` resolves to the current context: the legacy
/// default stream (0 and `CU_STREAM_LEGACY`) and the per-thread one.
const CURRENT_CONTEXT_STREAMS: u64 = 2;

impl CudaBackend {
    /// The backend for device `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(BackendError::Unavailable(format!(
                "device {ordinal} requested, the driver reports {count}"
            )));
        }
        // The ordinal was checked against the device count.
        let device = result::device::get(ordinal as i32).map_err(driver("cuDeviceGet"))?;
        Ok(CudaBackend {
            ordinal,
            device,
            context: OnceLock::new(),
            page: OnceLock::new(),
            units: std::sync::Mutex::new(Units::new()),
            created: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The device's primary context, retained on first call.
    fn context(&self) -> Result<Context, BackendError> {
        self.context
            .get_or_init(|| {
                // SAFETY: a valid device handle. The retained context is kept
                // for the life of the process (never released), as the CUDA
                // runtime does with primary contexts.
                unsafe { result::primary_ctx::retain(self.device) }
                    .map(Context)
                    .map_err(driver("cuDevicePrimaryCtxRetain"))
            })
            .clone()
    }

    /// The location of this device, for the virtual-memory calls.
    fn location(&self) -> sys::CUmemLocation {
        sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: self.ordinal as i32,
        }
    }

    /// Pinned device memory on this device.
    fn allocation_prop(&self) -> sys::CUmemAllocationProp {
        // SAFETY: a plain C struct for which all-zero bytes are valid (zero
        // flags, null metadata); the fields that matter are set below.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location = self.location();
        prop
    }

    fn lock_units(&self) -> std::sync::MutexGuard<'_, Units> {
        self.units
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_created(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of CUDA devices the driver reports (0 where none loads).
    pub fn device_count() -> usize {
        device_count().unwrap_or(0)
    }

    /// Runs `f` with this device's primary context current on the calling
    /// thread, then restores whatever was current before.
    fn with_context<T>(
        &self,
        f: impl FnOnce() -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let context = self.context()?;
        let previous = result::ctx::get_current().map_err(driver("cuCtxGetCurrent"))?;
        if previous == Some(context.0) {
            return f();
        }
        // SAFETY: the context is retained for the life of the process.
        unsafe { result::ctx::set_current(context.0) }.map_err(driver("cuCtxSetCurrent"))?;
        let _restore = scopeguard::guard(previous, |previous| {
            if let Some(previous) = previous {
                // SAFETY: `previous` was current on this thread a moment ago
                // and the caller still holds it; with none, our primary
                // context stays current for later calls. A failure leaves
                // ours current, which is no worse.
                let _ = unsafe { result::ctx::set_current(previous) };
            }
        });
        f()
    }

    /// Runs `f` with this thread's stream-capture mode set to RELAXED, so
    /// that memory management during a GLOBAL-mode capture does not
    /// invalidate it; restores the previous mode afterwards.
    fn relaxed_capture<T>(f: impl FnOnce() -> T) -> T {
        let relaxed = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        let previous = raw::exchange_capture_mode(relaxed).ok();
        let _restore = scopeguard::guard(previous, |previous| {
            if let Some(mode) = previous {
                // Puts back the mode read above; nothing to do on a failure.
                let _ = raw::exchange_capture_mode(mode);
            }
        });
        f()
    }

    /// Runs `f` with the primary context current and the capture mode relaxed.
    fn managed<T>(&self, f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
        self.with_context(|| Self::relaxed_capture(f))
    }

    /// Checks that `stream` belongs to this device's primary context
    /// (called with it current): an event of this device recorded on a
    /// stream of another context would never be usable.
    fn check_stream(&self, stream: u64, context: Context) -> Result<(), BackendError> {
        if stream <= CURRENT_CONTEXT_STREAMS {
            return Ok(());
        }
        // SAFETY: a context is current (the caller's `with_context`).
        let owner = match unsafe { raw::stream_context(stream as sys::CUstream) } {
            Ok(owner) => owner,
            Err(e) if is_bad_handle(e) => return Err(BackendError::UnknownStream { stream }),
            Err(e) => return Err(driver("cuStreamGetCtx")(e)),
        };
        if owner == context.0 {
            return Ok(());
        }
        // Name the stream's device: make its context current a moment.
        // SAFETY: `owner` is a live context (the driver just returned it as
        // the stream's); ours is made current again right after.
        let device = unsafe { result::ctx::set_current(owner) }
            .and_then(|()| raw::current_device())
            .ok();
        // SAFETY: our context is retained for the life of the process.
        unsafe { result::ctx::set_current(context.0) }.map_err(driver("cuCtxSetCurrent"))?;
        Err(BackendError::ForeignStream {
            stream,
            stream_device: device.map_or(usize::MAX, |d| d.max(0) as usize),
            device: self.ordinal,
        })
    }
}

/// The end of `[addr, addr + size)`, or an error if it passes the address
/// space.
fn range_end(call: &'static str, addr: u64, size: usize) -> Result<u64, BackendError> {
    addr.checked_add(size as u64)
        .ok_or(BackendError::InvalidAddress {
            call,
            addr,
            size,
            why: "past the address space",
        })
}

/// Whether the driver rejected a handle.
fn is_bad_handle(e: DriverError) -> bool {
    matches!(
        e.0,
        sys::CUresult::CUDA_ERROR_INVALID_HANDLE
            | sys::CUresult::CUDA_ERROR_INVALID_VALUE
            | sys::CUresult::CUDA_ERROR_INVALID_CONTEXT
    )
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.managed(|| {
            // SAFETY: a context is current; the memory is handed out
            // uninitialised, which device memory may be.
            unsafe { result::malloc_sync(size) }.map_err(driver_or_oom("cuMemAlloc", size))
        })
    }

    unsafe fn release(&self, addr: u64, _size: usize) -> Result<(), BackendError> {
        self.managed(|| {
            // SAFETY: by this method's contract nothing accesses the segment
            // again, and device work still using it is waited for by
            // `cuMemFree`'s implicit synchronization; the allocator releases
            // only segments it reserved here, each once.
            unsafe { result::free_sync(addr) }.map_err(driver("cuMemFree"))
        })
    }

    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        self.with_context(|| {
            let (free, total) = result::mem_get_info().map_err(driver("cuMemGetInfo"))?;
            Ok(MemInfo { free, total })
        })
    }

    all_capabilities!();
}

impl CudaBackend {
    /// Creates one handle of `size` bytes and maps it at `addr`, readable
    /// and writable; on a failure nothing is left.
    fn map_unit(
        &self,
        addr: u64,
        size: usize,
    ) -> Result<sys::CUmemGenericAllocationHandle, BackendError> {
        let prop = self.allocation_prop();
        // SAFETY: a context is current (the caller's `managed`).
        let handle =
            unsafe { raw::create(size, &prop) }.map_err(driver_or_oom("cuMemCreate", size))?;
        // SAFETY: `[addr, addr + size)` lies in a range we reserved and did
        // not map (the caller checked it against the table); `handle` is a
        // fresh allocation of exactly `size` bytes.
        let mapped = unsafe { raw::map(addr, size, handle) }.map_err(driver("cuMemMap"));
        let result = mapped.and_then(|()| {
            let desc = sys::CUmemAccessDesc {
                location: self.location(),
                flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            // SAFETY: the whole range was just mapped.
            unsafe { raw::set_access(addr, size, &desc) }
                .map_err(driver("cuMemSetAccess"))
                .inspect_err(|_| {
                    // SAFETY: undoing this call's own mapping, unused yet.
                    let _ = unsafe { raw::unmap(addr, size) };
                })
        });
        if let Err(e) = result {
            // SAFETY: the handle was created above and is mapped nowhere
            // (its mapping failed or was undone); released once.
            let _ = unsafe { raw::release(handle) };
            return Err(e);
        }
        Ok(handle)
    }
}

impl VirtualMemory for CudaBackend {
    fn page_size(&self) -> Result<usize, BackendError> {
        self.page
            .get_or_init(|| {
                self.with_context(|| {
                    // SAFETY: a context is current.
                    unsafe { raw::granularity(&self.allocation_prop()) }
                        .map_err(driver("cuMemGetAllocationGranularity"))
                })
            })
            .clone()
    }

    fn reserve_range(&self, size: usize) -> Result<u64, BackendError> {
        let page = self.page_size()?;
        self.managed(|| {
            // SAFETY: a context is current; reserves address space only.
            unsafe { raw::address_reserve(size, page) }
                .map_err(driver_or_oom("cuMemAddressReserve", size))
        })
    }

    unsafe fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.managed(|| {
            // SAFETY: by this method's contract nothing accesses the range
            // again; the allocator passes only a range from `reserve_range`
            // whose units it has all unmapped.
            unsafe { raw::address_free(addr, size) }.map_err(driver("cuMemAddressFree"))
        })
    }

    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let page = self.page_size()? as u64;
        let end = range_end("map", addr, size)?;
        if size == 0 || !addr.is_multiple_of(page) || !(size as u64).is_multiple_of(page) {
            return Err(BackendError::InvalidAddress {
                call: "map",
                addr,
                size,
                why: "empty or not page-aligned",
            });
        }
        if super::overlaps_units(&self.lock_units(), |u| u.1, addr, end) {
            return Err(BackendError::InvalidAddress {
                call: "map",
                addr,
                size,
                why: "pages already mapped",
            });
        }
        // One handle for the whole unit: the driver's cost is per handle.
        let handle = self.managed(|| self.map_unit(addr, size))?;
        self.lock_units().insert(addr, (handle, size));
        Ok(())
    }

    unsafe fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let end = range_end("unmap", addr, size)?;
        let units = {
            let table = self.lock_units();
            super::whole_units(&table, |u| u.1, addr, end).map_err(|why| {
                BackendError::InvalidAddress {
                    call: "unmap",
                    addr,
                    size,
                    why,
                }
            })?
        };
        self.managed(|| {
            // Unit by unit, in address order: a failure stops at that unit,
            // so the caller learns exactly which prefix is unmapped; a
            // handle that cannot be released is reported but does not stop
            // the rest.
            let mut release_error = None;
            for (at, len) in units {
                // SAFETY: `[at, at + len)` is exactly one unit `map` mapped
                // (checked against the table); by this method's contract no
                // block or device work still uses it (the allocator unmaps
                // idle units only, after their streams).
                if let Err(e) = unsafe { raw::unmap(at, len) } {
                    let e = driver("cuMemUnmap")(e);
                    if at == addr && release_error.is_none() {
                        return Err(e);
                    }
                    return Err(BackendError::PartlyUnmapped {
                        unmapped: (at - addr) as usize,
                        requested: size,
                        cause: Box::new(e),
                    });
                }
                if let Some((handle, _)) = self.lock_units().remove(&at) {
                    // SAFETY: the unit's only mapping is gone; its handle is
                    // released once (removed from the table).
                    if let Err(e) = unsafe { raw::release(handle) } {
                        release_error.get_or_insert(driver("cuMemRelease")(e));
                    }
                }
            }
            release_error.map_or(Ok(()), |e| {
                Err(BackendError::PartlyUnmapped {
                    unmapped: size,
                    requested: size,
                    cause: Box::new(e),
                })
            })
        })
    }
}

impl StreamOrder for CudaBackend {
    fn create_event(&self) -> Result<u64, BackendError> {
        self.with_context(|| {
            result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map(|event| event as u64)
                .map_err(driver("cuEventCreate"))
        })
    }

    fn destroy_event(&self, event: u64) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device and is
            // destroyed once (the allocator drops it from its pool first).
            // An event still pending is released once it completes.
            unsafe { result::event::destroy(event as sys::CUevent) }
                .map_err(driver("cuEventDestroy"))
        })
    }

    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device; the
            // stream handle is the caller's, and an invalid one makes the
            // driver return an error rather than touch memory.
            unsafe { result::event::record(event as sys::CUevent, stream as sys::CUstream) }
                .map_err(driver("cuEventRecord"))
        })
    }

    fn event_complete(&self, event: u64) -> Result<bool, BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device.
            match unsafe { result::event::query(event as sys::CUevent) } {
                Ok(()) => Ok(true),
                Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                Err(e) => Err(driver("cuEventQuery")(e)),
            }
        })
    }

    fn wait_event(&self, event: u64) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device.
            unsafe { result::event::synchronize(event as sys::CUevent) }
                .map_err(driver("cuEventSynchronize"))
        })
    }

    fn stream_idle(&self, stream: u64) -> Result<bool, BackendError> {
        let context = self.context()?;
        self.with_context(|| {
            self.check_stream(stream, context)?;
            // SAFETY: a context is current; an invalid stream handle makes
            // the driver return an error rather than touch memory.
            match unsafe { sys::cuStreamQuery(stream as sys::CUstream) }.result() {
                Ok(()) => Ok(true),
                Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                Err(e) if is_bad_handle(e) => Err(BackendError::UnknownStream { stream }),
                Err(e) => Err(driver("cuStreamQuery")(e)),
            }
        })
    }

    fn created_stream(&self, stream: u64) -> bool {
        self.lock_created().contains(&stream)
    }

    /// A non-blocking stream of the device's primary context.
    fn create_stream(&self) -> Result<u64, BackendError> {
        self.with_context(|| {
            let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(driver("cuStreamCreate"))?;
            self.lock_created().push(stream as u64);
            Ok(stream as u64)
        })
    }

    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError> {
        let context = self.context()?;
        self.with_context(|| {
            self.check_stream(stream, context)?;
            // SAFETY: a context is current.
            let (status, id) = match unsafe { raw::capture_info(stream as sys::CUstream) } {
                Ok(info) => info,
                Err(e) if is_bad_handle(e) => return Err(BackendError::UnknownStream { stream }),
                Err(e) => return Err(driver("cuStreamGetCaptureInfo")(e)),
            };
            Ok(match status {
                sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE => {
                    CaptureStatus::Capturing(id)
                }
                sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE => CaptureStatus::Idle,
                _ => CaptureStatus::Invalidated,
            })
        })
    }
}

impl Drop for CudaBackend {
    /// Destroys the streams of [`StreamOrder::create_stream`]. Work still
    /// queued on one completes first (the driver defers the release).
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.lock_created());
        if created.is_empty() {
            return;
        }
        let _ = self.with_context(|| {
            for stream in created {
                // SAFETY: `stream` came from `cuStreamCreate` in this
                // backend's context and is destroyed once: the list is
                // emptied above and the backend is going away.
                let _ = unsafe { result::stream::destroy(stream as sys::CUstream) };
            }
            Ok(())
        });
    }
}

impl Copies for CudaBackend {
    unsafe fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: the caller guarantees the device range is a live block
            // it owns; `src` is a valid host buffer of its length.
            unsafe { result::memcpy_htod_sync(dst, src) }.map_err(driver("cuMemcpyHtoD"))?;
            // A copy from pageable memory may return before the data has
            // landed; the contract is "complete".
            result::ctx::synchronize().map_err(driver("cuCtxSynchronize"))
        })
    }

    unsafe fn copy_to_host(&self, src: u64, dst: &mut [u8]) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `dst` is a valid host buffer of its length; the device
            // range is owned per the caller's contract.
            unsafe { result::memcpy_dtoh_sync(dst, src) }.map_err(driver("cuMemcpyDtoH"))
        })
    }

    unsafe fn copy_device_to_device(
        &self,
        dst: u64,
        src: u64,
        len: usize,
    ) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: both ranges are live, owned and disjoint per the
            // caller's contract.
            unsafe { result::memcpy_dtod_sync(dst, src, len) }.map_err(driver("cuMemcpyDtoD"))?;
            // Waits for the copy (it is asynchronous for device-to-device).
            result::ctx::synchronize().map_err(driver("cuCtxSynchronize"))
        })
    }

    unsafe fn fill(&self, dst: u64, value: u8, len: usize) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: the caller guarantees the range is a live block it owns.
            unsafe { result::memset_d8_sync(dst, value, len) }.map_err(driver("cuMemsetD8"))?;
            // Waits for the memset.
            result::ctx::synchronize().map_err(driver("cuCtxSynchronize"))
        })
    }
}
