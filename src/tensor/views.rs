//! Stream views: a [`DeviceBuffer`] or [`Tensor`] bound to a cudarc stream,
//! and the cudarc traits they implement (`DeviceSlice`, `DevicePtr`,
//! `DevicePtrMut`, kernel arguments). All of the crate's coupling to cudarc's
//! stream API lives here.

use super::buffer::DeviceBuffer;
use super::element::Element;
use super::Tensor;
use crate::allocator::Allocator;
use crate::backend::{BackendError, BackendKind};
use crate::device_ptr::DevicePtr;
use crate::error::Result;
use cudarc::driver::{sys, CudaStream, DeviceSlice, LaunchArgs, PushKernelArg, SyncOnDrop};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

impl<T: Element> DeviceBuffer<'_, T> {
    /// Binds the buffer to a cudarc stream for reading: the view implements
    /// cudarc's `DeviceSlice` and `DevicePtr` and can be pushed as a kernel
    /// argument. Registers `stream` ([`Allocator::register_stream`]) and
    /// calls [`Allocator::record_stream`] for it (unless it is the buffer's
    /// own), so when the buffer is dropped its block is not
    /// reused before the work queued on `stream` by then has finished.
    ///
    /// The view does not order `stream` after other streams: work that
    /// writes the buffer on another stream must be waited for (synchronize
    /// it, or make `stream` wait on an event).
    ///
    /// ```no_run
    /// use cudarc::driver::CudaContext;
    /// use graphalloc::tensor::DeviceBuffer;
    /// use graphalloc::{Allocator, BackendChoice, Config};
    ///
    /// let alloc = Allocator::new(Config { backend: BackendChoice::Cuda, ..Default::default() })?;
    /// let ctx = CudaContext::new(0).expect("CUDA"); // the same primary context
    /// let stream = ctx.new_stream().expect("stream");
    /// let src = DeviceBuffer::from_slice(&alloc, &[1.0f32, 2.0])?;
    /// let mut dst = DeviceBuffer::<f32>::zeros(&alloc, 2)?;
    /// stream
    ///     .memcpy_dtod(&src.on_stream(&stream)?, &mut dst.on_stream_mut(&stream)?)
    ///     .expect("copy");
    /// stream.synchronize().expect("sync");
    /// assert_eq!(dst.to_vec()?, [1.0, 2.0]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// Errors: [`Error::Backend`](crate::Error::Backend) with
    /// [`BackendError::Unavailable`] if the buffer is not CUDA memory of the
    /// stream's device; [`Error::UnknownStream`](crate::Error::UnknownStream).
    pub fn on_stream<'b>(&'b self, stream: &'b Arc<CudaStream>) -> Result<StreamView<'b, T>> {
        let addr = self.bind(stream)?;
        Ok(StreamView::new(addr, self.len, stream))
    }

    /// Binds the buffer to a cudarc stream for reading and writing: as
    /// [`DeviceBuffer::on_stream`], and the view also implements cudarc's
    /// `DevicePtrMut`.
    ///
    /// ```no_run
    /// use cudarc::driver::CudaContext;
    /// use graphalloc::tensor::DeviceBuffer;
    /// use graphalloc::{Allocator, BackendChoice, Config};
    ///
    /// let alloc = Allocator::new(Config { backend: BackendChoice::Cuda, ..Default::default() })?;
    /// let ctx = CudaContext::new(0).expect("CUDA");
    /// let stream = ctx.new_stream().expect("stream");
    /// let mut buf = DeviceBuffer::<u32>::zeros(&alloc, 4)?;
    /// stream.memcpy_htod(&[1u32, 2, 3, 4], &mut buf.on_stream_mut(&stream)?).expect("copy");
    /// stream.synchronize().expect("sync");
    /// assert_eq!(buf.to_vec()?, [1, 2, 3, 4]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// Errors: as [`DeviceBuffer::on_stream`].
    pub fn on_stream_mut<'b>(
        &'b mut self,
        stream: &'b Arc<CudaStream>,
    ) -> Result<StreamViewMut<'b, T>> {
        let addr = self.bind(stream)?;
        Ok(StreamViewMut::new(addr, self.len, stream))
    }

    /// Checks that `stream` can use this buffer and records the use;
    /// returns the buffer's device address.
    fn bind(&self, stream: &Arc<CudaStream>) -> Result<u64> {
        bind_raw(self.alloc, self.ptr, self.device, stream)?;
        Ok(self.ptr.addr())
    }
}

/// Checks that the block at `ptr` on `device` is CUDA memory that `stream`
/// can address, and records `stream`'s use of it.
fn bind_raw(
    alloc: &Allocator,
    ptr: DevicePtr,
    device: usize,
    stream: &Arc<CudaStream>,
) -> Result<()> {
    if ptr.is_null() {
        return Ok(()); // empty: nothing to address or keep alive
    }
    let backend = alloc.backend(device)?;
    if backend.kind() != BackendKind::Cuda {
        return Err(BackendError::Unavailable(format!(
            "buffer at {ptr} is {} memory, not CUDA device memory",
            backend.kind()
        ))
        .into());
    }
    let ordinal = stream.context().ordinal();
    if ordinal != device {
        return Err(BackendError::Unavailable(format!(
            "buffer at {ptr} is on device {device}, the stream on device {ordinal}"
        ))
        .into());
    }
    // The safe registration: the allocator keeps the stream alive while
    // the block (freed later) may still name it to the driver.
    alloc.register_stream(device, stream)?;
    alloc.record_stream(ptr, stream.cu_stream() as u64)
}

/// A [`DeviceBuffer`] (or [`Tensor`]) bound to a cudarc stream for reading;
/// see [`DeviceBuffer::on_stream`]. Implements cudarc's `DeviceSlice<T>` and
/// `DevicePtr<T>`, and `&view` is a kernel argument (the device address).
///
/// ```no_run
/// use cudarc::driver::{CudaContext, DevicePtr};
/// use graphalloc::tensor::DeviceBuffer;
/// use graphalloc::{Allocator, BackendChoice, Config};
///
/// let alloc = Allocator::new(Config { backend: BackendChoice::Cuda, ..Default::default() })?;
/// let ctx = CudaContext::new(0).expect("CUDA");
/// let stream = ctx.new_stream().expect("stream");
/// let buf = DeviceBuffer::<f32>::zeros(&alloc, 8)?;
/// let view = buf.on_stream(&stream)?;
/// let (addr, _sync) = view.device_ptr(&stream);
/// assert_eq!(addr, buf.device_ptr().addr());
/// # Ok::<(), graphalloc::Error>(())
/// ```
pub struct StreamView<'b, T> {
    addr: u64,
    len: usize,
    stream: &'b Arc<CudaStream>,
    _buf: PhantomData<&'b [T]>,
}

/// A [`DeviceBuffer`] (or [`Tensor`]) bound to a cudarc stream for reading
/// and writing; see [`DeviceBuffer::on_stream_mut`]. Implements cudarc's
/// `DeviceSlice<T>`, `DevicePtr<T>` and `DevicePtrMut<T>`, and `&view` and
/// `&mut view` are kernel arguments (the device address).
///
/// ```no_run
/// use cudarc::driver::CudaContext;
/// use graphalloc::tensor::DeviceBuffer;
/// use graphalloc::{Allocator, BackendChoice, Config};
///
/// let alloc = Allocator::new(Config { backend: BackendChoice::Cuda, ..Default::default() })?;
/// let ctx = CudaContext::new(0).expect("CUDA");
/// let stream = ctx.new_stream().expect("stream");
/// let mut buf = DeviceBuffer::<f32>::from_slice(&alloc, &[1.0; 8])?;
/// stream.memset_zeros(&mut buf.on_stream_mut(&stream)?).expect("memset");
/// stream.synchronize().expect("sync");
/// assert_eq!(buf.to_vec()?, [0.0; 8]);
/// # Ok::<(), graphalloc::Error>(())
/// ```
pub struct StreamViewMut<'b, T> {
    addr: u64,
    len: usize,
    stream: &'b Arc<CudaStream>,
    _buf: PhantomData<&'b mut [T]>,
}

macro_rules! view_common {
    ($view:ident) => {
        impl<T> fmt::Debug for $view<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($view))
                    .field("addr", &format_args!("{:#x}", self.addr))
                    .field("len", &self.len)
                    .field("stream", &self.stream.cu_stream())
                    .finish()
            }
        }

        impl<'b, T> $view<'b, T> {
            fn new(addr: u64, len: usize, stream: &'b Arc<CudaStream>) -> Self {
                $view {
                    addr,
                    len,
                    stream,
                    _buf: PhantomData,
                }
            }

            /// The device address of the first element.
            pub fn device_ptr_raw(&self) -> DevicePtr {
                DevicePtr::new(self.addr)
            }
        }

        impl<T> DeviceSlice<T> for $view<'_, T> {
            fn len(&self) -> usize {
                self.len
            }
            fn stream(&self) -> &Arc<CudaStream> {
                self.stream
            }
        }

        impl<T> cudarc::driver::DevicePtr<T> for $view<'_, T> {
            fn device_ptr<'s>(
                &'s self,
                _stream: &'s CudaStream,
            ) -> (sys::CUdeviceptr, SyncOnDrop<'s>) {
                // No event tracking: the buffer's block stays reserved until
                // the recorded stream's work is done (`record_stream` at bind
                // time); ordering between streams is the caller's.
                (self.addr, SyncOnDrop::Record(None))
            }
        }

        // SAFETY: pushes a pointer to `arg.addr`, a `CUdeviceptr` (what a
        // kernel's pointer parameter takes) that lives as long as the borrow
        // `'b`, which outlives the launch builder `'a`; cudarc's own impl for
        // `&'b u64` does the pushing.
        unsafe impl<'a, 'b: 'a, 'c: 'b, T> PushKernelArg<&'b $view<'c, T>> for LaunchArgs<'a> {
            #[inline(always)]
            fn arg(&mut self, arg: &'b $view<'c, T>) -> &mut Self {
                <Self as PushKernelArg<&'b u64>>::arg(self, &arg.addr)
            }
        }
    };
}

view_common!(StreamView);
view_common!(StreamViewMut);

impl<T> cudarc::driver::DevicePtrMut<T> for StreamViewMut<'_, T> {
    fn device_ptr_mut<'s>(
        &'s mut self,
        _stream: &'s CudaStream,
    ) -> (sys::CUdeviceptr, SyncOnDrop<'s>) {
        (self.addr, SyncOnDrop::Record(None))
    }
}

// SAFETY: as for the shared-reference impls: a pointer to `arg.addr`, valid
// for `'b`, which outlives the launch builder.
unsafe impl<'a, 'b: 'a, 'c: 'b, T> PushKernelArg<&'b mut StreamViewMut<'c, T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut StreamViewMut<'c, T>) -> &mut Self {
        let addr: &'b u64 = &arg.addr;
        <Self as PushKernelArg<&'b u64>>::arg(self, addr)
    }
}

impl Tensor<'_> {
    /// Binds the tensor to a cudarc stream for reading, as elements of `T`;
    /// see [`DeviceBuffer::on_stream`].
    ///
    /// ```no_run
    /// use cudarc::driver::CudaContext;
    /// use graphalloc::tensor::{DType, Tensor};
    /// use graphalloc::{Allocator, BackendChoice, Config};
    ///
    /// let alloc = Allocator::new(Config { backend: BackendChoice::Cuda, ..Default::default() })?;
    /// let ctx = CudaContext::new(0).expect("CUDA");
    /// let stream = ctx.new_stream().expect("stream");
    /// let t = Tensor::from_slice(&alloc, &[1.0f32, 2.0], &[2])?;
    /// let back = stream.clone_dtoh(&t.on_stream::<f32>(&stream)?).expect("copy");
    /// assert_eq!(back, [1.0, 2.0]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the dtype does not accept `T` ([`DType::accepts`](super::DType::accepts)).
    pub fn on_stream<'b, T: Element>(
        &'b self,
        stream: &'b Arc<CudaStream>,
    ) -> Result<StreamView<'b, T>> {
        self.check_elem::<T>("on_stream");
        let addr = self.buf.bind(stream)?;
        Ok(StreamView::new(addr, self.numel(), stream))
    }

    /// Binds the tensor to a cudarc stream for reading and writing, as
    /// elements of `T`; see [`DeviceBuffer::on_stream_mut`].
    ///
    /// ```no_run
    /// use cudarc::driver::CudaContext;
    /// use graphalloc::tensor::{DType, Tensor};
    /// use graphalloc::{Allocator, BackendChoice, Config};
    ///
    /// let alloc = Allocator::new(Config { backend: BackendChoice::Cuda, ..Default::default() })?;
    /// let ctx = CudaContext::new(0).expect("CUDA");
    /// let stream = ctx.new_stream().expect("stream");
    /// let mut t = Tensor::zeros(&alloc, &[2], DType::F32)?;
    /// stream.memcpy_htod(&[1.0f32, 2.0], &mut t.on_stream_mut::<f32>(&stream)?).expect("copy");
    /// stream.synchronize().expect("sync");
    /// assert_eq!(t.to_vec::<f32>()?, [1.0, 2.0]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the dtype does not accept `T` ([`DType::accepts`](super::DType::accepts)).
    pub fn on_stream_mut<'b, T: Element>(
        &'b mut self,
        stream: &'b Arc<CudaStream>,
    ) -> Result<StreamViewMut<'b, T>> {
        self.check_elem::<T>("on_stream_mut");
        let addr = self.buf.bind(stream)?;
        Ok(StreamViewMut::new(addr, self.numel(), stream))
    }
}
