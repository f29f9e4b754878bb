//! CUDA device memory through cudarc's driver API (loaded at run time).
//!
//! This file holds every `unsafe` CUDA call of the crate. Each call is made
//! with the device's primary context current (PyTorch's autograd thread, for
//! one, has no context of its own) and with the previous context restored
//! afterwards, so callers on any thread see no change.

use super::{Backend, BackendError, BackendKind, CaptureStatus, MemInfo};
use cudarc::driver::sys;
use std::ffi::CStr;
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
    // SAFETY: the library is present, so the lazily loaded entry points
    // resolve; cuInit takes flags 0 and may be called any number of times.
    check("cuInit", unsafe { sys::cuInit(0) })
        .map_err(|e| BackendError::Unavailable(e.to_string()))?;
    let mut count = 0;
    // SAFETY: `count` is a valid out-pointer; the driver is initialised.
    check("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    Ok(count.max(0) as usize)
}

fn error_name(code: sys::CUresult) -> String {
    let mut name: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: `name` is a valid out-pointer; on success the driver points it
    // at a static NUL-terminated string.
    let rc = unsafe { sys::cuGetErrorName(code, &mut name) };
    if rc == sys::CUresult::CUDA_SUCCESS && !name.is_null() {
        // SAFETY: checked non-null; the string is static and NUL-terminated.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    } else {
        format!("{code:?}")
    }
}

fn check(call: &'static str, code: sys::CUresult) -> Result<(), BackendError> {
    if code == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(BackendError::Driver {
            call,
            code: error_name(code),
        })
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
    /// Physical pages mapped by `map`: page address → allocation handle.
    pages: std::sync::Mutex<std::collections::HashMap<u64, sys::CUmemGenericAllocationHandle>>,
}

impl CudaBackend {
    /// The backend for device `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(BackendError::Unavailable(format!(
                "device {ordinal} requested, the driver reports {count}"
            )));
        }
        let mut device: sys::CUdevice = 0;
        // SAFETY: valid out-pointer; ordinal checked against the device count.
        check("cuDeviceGet", unsafe {
            sys::cuDeviceGet(&mut device, ordinal as i32)
        })?;
        Ok(CudaBackend {
            ordinal,
            device,
            context: OnceLock::new(),
            page: OnceLock::new(),
            pages: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The device's primary context, retained on first call.
    fn context(&self) -> Result<Context, BackendError> {
        self.context
            .get_or_init(|| {
                let mut ctx: sys::CUcontext = std::ptr::null_mut();
                // SAFETY: valid out-pointer and device handle. The retained
                // context is kept for the life of the process (never
                // released), as the CUDA runtime does with primary contexts.
                check("cuDevicePrimaryCtxRetain", unsafe {
                    sys::cuDevicePrimaryCtxRetain(&mut ctx, self.device)
                })
                .map(|()| Context(ctx))
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

    fn lock_pages(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, sys::CUmemGenericAllocationHandle>>
    {
        self.pages
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
        let mut previous: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the driver was initialised in `new`.
        check("cuCtxGetCurrent", unsafe {
            sys::cuCtxGetCurrent(&mut previous)
        })?;
        if previous == context.0 {
            return f();
        }
        // SAFETY: the context is retained for the life of the process.
        check("cuCtxSetCurrent", unsafe {
            sys::cuCtxSetCurrent(context.0)
        })?;
        let _restore = scopeguard::guard(previous, |previous| {
            if !previous.is_null() {
                // SAFETY: `previous` was current on this thread a moment ago
                // and the caller still holds it; a null one is left alone, so
                // our primary context stays current for later calls.
                unsafe { sys::cuCtxSetCurrent(previous) };
            }
        });
        f()
    }

    /// Runs `f` with this thread's stream-capture mode set to RELAXED, so
    /// that memory management during a GLOBAL-mode capture does not
    /// invalidate it; restores the previous mode afterwards.
    fn relaxed_capture<T>(f: impl FnOnce() -> T) -> T {
        let mut mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: valid in/out pointer to a capture mode.
        unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        let _restore = scopeguard::guard(mode, |mut mode| {
            // SAFETY: puts back the mode read above.
            unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        });
        f()
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.with_context(|| {
            Self::relaxed_capture(|| {
                let mut ptr: sys::CUdeviceptr = 0;
                // SAFETY: valid out-pointer; a context is current.
                let rc = unsafe { sys::cuMemAlloc_v2(&mut ptr, size) };
                if rc == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                    return Err(BackendError::OutOfMemory { requested: size });
                }
                check("cuMemAlloc", rc).map(|()| ptr)
            })
        })
    }

    fn release(&self, addr: u64, _size: usize) -> Result<(), BackendError> {
        self.with_context(|| {
            Self::relaxed_capture(|| {
                // SAFETY: the pools release only addresses returned by
                // `reserve` on this backend, each exactly once.
                check("cuMemFree", unsafe { sys::cuMemFree_v2(addr) })
            })
        })
    }

    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        self.with_context(|| {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: valid out-pointers; a context is current.
            check("cuMemGetInfo", unsafe {
                sys::cuMemGetInfo_v2(&mut free, &mut total)
            })?;
            Ok(MemInfo { free, total })
        })
    }

    fn page_size(&self) -> Result<usize, BackendError> {
        self.page
            .get_or_init(|| {
                self.with_context(|| {
                    let prop = self.allocation_prop();
                    let mut granularity = 0usize;
                    // SAFETY: valid out-pointer and property struct.
                    check("cuMemGetAllocationGranularity", unsafe {
                        sys::cuMemGetAllocationGranularity(
                            &mut granularity,
                            &prop,
                            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                        )
                    })?;
                    Ok(granularity)
                })
            })
            .clone()
    }

    fn reserve_range(&self, size: usize) -> Result<u64, BackendError> {
        let page = self.page_size()?;
        self.with_context(|| {
            Self::relaxed_capture(|| {
                let mut addr: sys::CUdeviceptr = 0;
                // SAFETY: valid out-pointer; reserves address space only.
                let rc = unsafe { sys::cuMemAddressReserve(&mut addr, size, page, 0, 0) };
                if rc == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                    return Err(BackendError::OutOfMemory { requested: size });
                }
                check("cuMemAddressReserve", rc).map(|()| addr)
            })
        })
    }

    fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.with_context(|| {
            Self::relaxed_capture(|| {
                // SAFETY: `addr, size` is a range from `reserve_range`, fully
                // unmapped by the caller's contract.
                check("cuMemAddressFree", unsafe {
                    sys::cuMemAddressFree(addr, size)
                })
            })
        })
    }

    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let page = self.page_size()?;
        let prop = self.allocation_prop();
        self.with_context(|| {
            Self::relaxed_capture(|| {
                let mut mapped = Vec::new();
                let result = (|| {
                    for at in (addr..addr + size as u64).step_by(page) {
                        let mut handle: sys::CUmemGenericAllocationHandle = 0;
                        // SAFETY: valid out-pointer and property struct.
                        let rc = unsafe { sys::cuMemCreate(&mut handle, page, &prop, 0) };
                        if rc == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                            return Err(BackendError::OutOfMemory { requested: size });
                        }
                        check("cuMemCreate", rc)?;
                        // SAFETY: `at` is a page of a range we reserved and
                        // did not map; `handle` is a fresh page of memory.
                        let rc = unsafe { sys::cuMemMap(at, page, 0, handle, 0) };
                        if let Err(e) = check("cuMemMap", rc) {
                            // SAFETY: the handle was created above, mapped nowhere.
                            unsafe { sys::cuMemRelease(handle) };
                            return Err(e);
                        }
                        mapped.push((at, handle));
                    }
                    let desc = sys::CUmemAccessDesc {
                        location: self.location(),
                        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
                    };
                    // SAFETY: the whole range was just mapped; one descriptor.
                    check("cuMemSetAccess", unsafe {
                        sys::cuMemSetAccess(addr, size, &desc, 1)
                    })
                })();
                match result {
                    Ok(()) => {
                        self.lock_pages().extend(mapped);
                        Ok(())
                    }
                    Err(e) => {
                        for (at, handle) in mapped {
                            // SAFETY: undoing this call's own mappings.
                            unsafe {
                                sys::cuMemUnmap(at, page);
                                sys::cuMemRelease(handle);
                            }
                        }
                        Err(e)
                    }
                }
            })
        })
    }

    fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let page = self.page_size()?;
        self.with_context(|| {
            Self::relaxed_capture(|| {
                // SAFETY: the caller unmaps only what `map` mapped; no work
                // may still use it (the allocator unmaps free pages only).
                check("cuMemUnmap", unsafe { sys::cuMemUnmap(addr, size) })?;
                let mut pages = self.lock_pages();
                for at in (addr..addr + size as u64).step_by(page) {
                    if let Some(handle) = pages.remove(&at) {
                        // SAFETY: the page's last mapping is gone; its
                        // handle is released once (removed from the table).
                        check("cuMemRelease", unsafe { sys::cuMemRelease(handle) })?;
                    }
                }
                Ok(())
            })
        })
    }

    fn create_event(&self) -> Result<u64, BackendError> {
        self.with_context(|| {
            let mut event: sys::CUevent = std::ptr::null_mut();
            // SAFETY: valid out-pointer; a context is current. The event is
            // pooled by the allocator for the life of the process.
            check("cuEventCreate", unsafe {
                sys::cuEventCreate(
                    &mut event,
                    sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
                )
            })?;
            Ok(event as u64)
        })
    }

    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device; the
            // stream handle is the caller's, and an invalid one makes the
            // driver return an error rather than touch memory.
            check("cuEventRecord", unsafe {
                sys::cuEventRecord(event as sys::CUevent, stream as sys::CUstream)
            })
        })
    }

    fn event_complete(&self, event: u64) -> Result<bool, BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device.
            let rc = unsafe { sys::cuEventQuery(event as sys::CUevent) };
            match rc {
                sys::CUresult::CUDA_SUCCESS => Ok(true),
                sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                other => check("cuEventQuery", other).map(|()| false),
            }
        })
    }

    fn wait_event(&self, event: u64) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `event` came from `create_event` on this device.
            check("cuEventSynchronize", unsafe {
                sys::cuEventSynchronize(event as sys::CUevent)
            })
        })
    }

    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError> {
        self.with_context(|| {
            let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
            let mut id: sys::cuuint64_t = 0;
            // SAFETY: valid out-pointers; the optional outputs are null,
            // which the driver allows. An invalid stream handle makes the
            // driver return CUDA_ERROR_INVALID_HANDLE.
            let rc = unsafe {
                sys::cuStreamGetCaptureInfo_v2(
                    stream as sys::CUstream,
                    &mut status,
                    &mut id,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if matches!(
                rc,
                sys::CUresult::CUDA_ERROR_INVALID_HANDLE | sys::CUresult::CUDA_ERROR_INVALID_VALUE
            ) {
                return Err(BackendError::UnknownStream { stream });
            }
            check("cuStreamGetCaptureInfo", rc)?;
            Ok(match status {
                sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE => {
                    CaptureStatus::Capturing(id)
                }
                sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE => CaptureStatus::Idle,
                _ => CaptureStatus::Invalidated,
            })
        })
    }

    unsafe fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: the caller guarantees the device range is a live block
            // it owns; `src` is a valid host buffer of its length.
            check("cuMemcpyHtoD", unsafe {
                sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len())
            })?;
            // SAFETY: no arguments. A copy from pageable memory may return
            // before the data has landed; the contract is "complete".
            check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
        })
    }

    unsafe fn copy_to_host(&self, src: u64, dst: &mut [u8]) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: `dst` is a valid host buffer of its length; the device
            // range is owned per the caller's contract.
            check("cuMemcpyDtoH", unsafe {
                sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len())
            })
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
            check("cuMemcpyDtoD", unsafe {
                sys::cuMemcpyDtoD_v2(dst, src, len)
            })?;
            // SAFETY: no arguments; waits for the copy (it is asynchronous
            // for device-to-device).
            check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
        })
    }

    unsafe fn fill(&self, dst: u64, value: u8, len: usize) -> Result<(), BackendError> {
        self.with_context(|| {
            // SAFETY: the caller guarantees the range is a live block it owns.
            check("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(dst, value, len) })?;
            // SAFETY: no arguments; waits for the memset.
            check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
        })
    }
}
