//! Device buffers and tensors whose memory comes from the allocator.
//!
//! - [`DeviceBuffer`] owns one block of device memory holding `len` elements
//!   of a plain-old-data type ([`Element`]). It is allocated like any other
//!   block (from the calling thread's graph pool in graph mode, else from the
//!   caching allocator, on the thread's current stream) and frees itself on
//!   drop through the routed [`Allocator::free`]: a buffer made in graph mode
//!   and dropped after the guard has ended goes back to its pool.
//! - [`Tensor`] is a byte buffer with a shape and a [`DType`]. It knows
//!   whether its memory is graph memory ([`Tensor::is_graph_compatible`]),
//!   can be copied into a graph pool with the same contents
//!   ([`Tensor::with_graph_memory`]), and moves itself into the current pool
//!   when used in graph mode ([`Tensor::ensure_graph_compatible`]).
//!
//! ```
//! use graphalloc::tensor::{DType, Tensor};
//! use graphalloc::{Allocator, Config};
//!
//! let alloc = Allocator::new(Config::host(1 << 30))?;
//! let weights = Tensor::from_slice(&alloc, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! assert_eq!(weights.dtype(), DType::F32);
//! assert!(!weights.is_graph_compatible()); // caching-allocator memory
//!
//! let pool = alloc.create_pool();
//! let static_weights = weights.with_graph_memory(&pool)?; // same contents, pool memory
//! assert!(static_weights.is_graph_compatible());
//! assert_eq!(static_weights.to_vec::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
//! drop(static_weights); // routed back to the pool
//! assert_eq!(pool.stats().live_blocks, 0);
//! # Ok::<(), graphalloc::Error>(())
//! ```
//!
//! # Copies, streams and CUDA graph capture
//!
//! The host-side operations ([`DeviceBuffer::from_slice`],
//! [`DeviceBuffer::zeros`], [`DeviceBuffer::to_vec`],
//! [`DeviceBuffer::try_clone`], [`Tensor::with_graph_memory`], ...) go
//! through the device's [`crate::Backend`]: they are synchronous and run on
//! the legacy default stream. Two consequences on CUDA:
//!
//! - Work queued on other streams (cudarc's `CudaContext::new_stream` makes
//!   non-blocking ones) is not waited for: synchronize those streams before
//!   reading a buffer they write.
//! - They must not be called while a stream is being captured into a CUDA
//!   graph (a synchronous copy or a context synchronization invalidates the
//!   capture). Set up graph inputs in graph mode *before* the capture
//!   begins; inside the capture, allocate with [`DeviceBuffer::uninit`] /
//!   [`Tensor::uninit`] (allocation itself is capture-safe) and write with
//!   kernels or cudarc's asynchronous copies on the capturing stream.
//!
//! To hand a buffer to cudarc (kernel arguments, `memcpy_htod`,
//! `memcpy_dtod`, `memset_zeros`, ...), bind it to a stream with
//! [`DeviceBuffer::on_stream`] / [`DeviceBuffer::on_stream_mut`]. The views
//! implement cudarc's `DeviceSlice`, `DevicePtr` and `DevicePtrMut`, and can
//! be pushed as kernel arguments. Binding calls
//! [`Allocator::record_stream`] for the stream, so when the buffer is dropped
//! its block is not reused before the work queued on that stream by then has
//! finished.
//!
//! cudarc's traits cannot be implemented on the buffer itself: `DeviceSlice`
//! requires a `&Arc<CudaStream>` that the buffer does not have (it may live
//! on the host backend, where no CUDA stream can exist), hence the views.

mod buffer;
mod element;
mod views;

pub use buffer::DeviceBuffer;
pub use element::{DType, Element};
pub use views::{StreamView, StreamViewMut};

use crate::allocator::Allocator;
use crate::device_ptr::DevicePtr;
use crate::error::Result;
use crate::graph_pool::GraphPool;
use element::{bytes_of, bytes_of_mut, zeroed_vec};
use std::fmt;

/// Device memory with a shape and a [`DType`]: a [`DeviceBuffer`] of bytes
/// that knows what it holds and whether a CUDA graph may keep its address.
///
/// ```
/// use graphalloc::tensor::{DType, Tensor};
/// use graphalloc::{Allocator, Config};
///
/// let alloc = Allocator::new(Config::host(1 << 30))?;
/// let t = Tensor::zeros(&alloc, &[2, 3], DType::BF16)?;
/// assert_eq!((t.numel(), t.num_bytes(), t.ndim()), (6, 12, 2));
/// assert_eq!(t.to_vec::<u16>()?, [0; 6]); // bf16 bits
///
/// let pool = alloc.create_pool();
/// let t = {
///     let _g = alloc.enter_graph_mode(&pool)?;
///     t.ensure_graph_compatible()? // moved into the pool, same contents
/// };
/// assert!(t.is_graph_compatible());
/// # Ok::<(), graphalloc::Error>(())
/// ```
pub struct Tensor<'a> {
    buf: DeviceBuffer<'a, u8>,
    shape: Vec<usize>,
    dtype: DType,
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("ptr", &self.buf.ptr)
            .field("device", &self.buf.device)
            .field("pool", &self.buf.pool)
            .finish()
    }
}

/// The number of elements of `shape` (saturating: an overflowing shape can
/// never be allocated, and the allocator says so).
fn numel_of(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

impl<'a> Tensor<'a> {
    /// A tensor whose contents are unspecified, allocated as
    /// [`DeviceBuffer::uninit`] does: capture-safe (no copy or fill).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// // SAFETY: written in full before it is read.
    /// let mut t = unsafe { Tensor::uninit(&alloc, &[2], DType::I32)? };
    /// t.copy_from_slice(&[1i32, 2])?;
    /// assert_eq!(t.to_vec::<i32>()?, [1, 2]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Safety
    /// As for [`DeviceBuffer::uninit`]: every element must be written before
    /// it is read by a host-side read or copy.
    pub unsafe fn uninit(alloc: &'a Allocator, shape: &[usize], dtype: DType) -> Result<Self> {
        let bytes = numel_of(shape).saturating_mul(dtype.size());
        Ok(Tensor {
            // SAFETY: forwarded to the caller.
            buf: unsafe { DeviceBuffer::uninit(alloc, bytes)? },
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A tensor of zeros (all-zero bits, which is zero for every [`DType`]).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::zeros(&alloc, &[3], DType::F64)?;
    /// assert_eq!(t.to_vec::<f64>()?, [0.0; 3]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn zeros(alloc: &'a Allocator, shape: &[usize], dtype: DType) -> Result<Self> {
        // SAFETY: written in full by `zero` before anyone can read it.
        let mut t = unsafe { Self::uninit(alloc, shape, dtype)? };
        t.buf.zero()?;
        Ok(t)
    }

    /// A tensor holding `data`, whose type gives the dtype (`f32` makes
    /// [`DType::F32`], ...).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::from_slice(&alloc, &[1i64, 2, 3, 4, 5, 6], &[3, 2])?;
    /// assert_eq!((t.dtype(), t.shape()), (DType::I64, &[3, 2][..]));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `T` has no dtype of its own (`u16`, `u32`, `u64`: use
    /// [`Tensor::from_slice_as`]), or `data.len()` is not the shape's element
    /// count.
    pub fn from_slice<T: Element>(
        alloc: &'a Allocator,
        data: &[T],
        shape: &[usize],
    ) -> Result<Self> {
        let dtype = T::DTYPE.unwrap_or_else(|| {
            panic!(
                "{} has no dtype of its own: use Tensor::from_slice_as",
                std::any::type_name::<T>()
            )
        });
        Self::from_slice_as(alloc, data, shape, dtype)
    }

    /// A tensor of `dtype` holding `data`, whose type must stand for that
    /// dtype ([`DType::accepts`]): e.g. `u16` bits for [`DType::F16`] or
    /// [`DType::BF16`].
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let one_bf16 = 0x3f80u16;
    /// let t = Tensor::from_slice_as(&alloc, &[one_bf16; 4], &[4], DType::BF16)?;
    /// assert_eq!(t.num_bytes(), 8);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `dtype` does not accept `T`, or `data.len()` is not the shape's
    /// element count.
    pub fn from_slice_as<T: Element>(
        alloc: &'a Allocator,
        data: &[T],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Self> {
        // SAFETY: written in full by `copy_from_slice` before anyone can
        // read it (it checks the lengths first, and a panic drops the
        // tensor unread).
        let mut t = unsafe { Self::uninit(alloc, shape, dtype)? };
        t.copy_from_slice(data)?;
        Ok(t)
    }

    /// A tensor of `dtype` holding `bytes` (native byte order).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::from_bytes(&alloc, &7i32.to_ne_bytes(), &[], DType::I32)?;
    /// assert_eq!(t.to_vec::<i32>()?, [7]); // a scalar: shape [], one element
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `bytes.len()` is not the shape's element count times the dtype's size.
    pub fn from_bytes(
        alloc: &'a Allocator,
        bytes: &[u8],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Self> {
        assert_eq!(
            bytes.len(),
            numel_of(shape).saturating_mul(dtype.size()),
            "from_bytes: {} bytes for shape {shape:?} of {dtype}",
            bytes.len()
        );
        // SAFETY: written in full by `copy_from_host` before anyone can read it.
        let mut t = unsafe { Self::uninit(alloc, shape, dtype)? };
        t.buf.copy_from_host(bytes)?;
        Ok(t)
    }

    /// A tensor of `dtype` and `shape` over `buf`'s memory (no copy).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, DeviceBuffer, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let buf = DeviceBuffer::from_slice(&alloc, &[1i32, 2, 3, 4, 5, 6])?;
    /// let t = Tensor::from_buffer(buf, &[2, 3], DType::I32);
    /// assert_eq!(t.to_vec::<i32>()?, [1, 2, 3, 4, 5, 6]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `dtype` does not accept `T`, or `buf.len()` is not the shape's
    /// element count.
    pub fn from_buffer<T: Element>(
        buf: DeviceBuffer<'a, T>,
        shape: &[usize],
        dtype: DType,
    ) -> Self {
        assert!(
            dtype.accepts::<T>(),
            "from_buffer: {} elements cannot hold {dtype}",
            std::any::type_name::<T>()
        );
        assert_eq!(
            buf.len(),
            numel_of(shape),
            "from_buffer: {} elements for shape {shape:?}",
            buf.len()
        );
        Tensor {
            buf: buf.retype(),
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// The shape.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[4, 1], DType::U8)?.shape(), [4, 1]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[1], DType::F16)?.dtype(), DType::F16);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of dimensions (0 for a scalar).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[], DType::F32)?.ndim(), 0);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements: the product of the shape (1 for a scalar).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[2, 0, 3], DType::F32)?.numel(), 0);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn numel(&self) -> usize {
        numel_of(&self.shape)
    }

    /// Size in bytes: `numel() * dtype().size()`.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[2, 3], DType::I64)?.num_bytes(), 48);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn num_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The device ordinal of the memory.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[1], DType::U8)?.device(), 0);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn device(&self) -> usize {
        self.buf.device()
    }

    /// The device address of the first element (null for an empty tensor).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::zeros(&alloc, &[8], DType::F32)?;
    /// assert_eq!(alloc.requested_size(t.device_ptr()), Some(32));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn device_ptr(&self) -> DevicePtr {
        self.buf.device_ptr()
    }

    /// The id of the graph pool that owns the memory, or `None`; see
    /// [`DeviceBuffer::pool_id`].
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(Tensor::zeros(&alloc, &[8], DType::F32)?.pool_id(), None);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn pool_id(&self) -> Option<u64> {
        self.buf.pool_id()
    }

    /// The underlying byte buffer.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::zeros(&alloc, &[2], DType::I16)?;
    /// assert_eq!(t.buffer().len(), 4);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn buffer(&self) -> &DeviceBuffer<'a, u8> {
        &self.buf
    }

    /// The underlying byte buffer, taken out of the tensor.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let bytes = Tensor::zeros(&alloc, &[2], DType::I16)?.into_buffer();
    /// assert_eq!(bytes.to_vec()?, [0; 4]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn into_buffer(self) -> DeviceBuffer<'a, u8> {
        self.buf
    }

    /// The underlying memory as a typed buffer of `numel()` elements of
    /// `T`, taken out of the tensor (no copy), e.g. to hand it to a kernel
    /// written for `T`. [`Tensor::from_buffer`] turns it back.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::from_slice(&alloc, &[1.0f32, 2.0], &[2])?;
    /// let ptr = t.device_ptr();
    /// let buf = t.into_typed_buffer::<f32>();
    /// assert_eq!((buf.device_ptr(), buf.len()), (ptr, 2));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the dtype does not accept `T` ([`DType::accepts`]).
    pub fn into_typed_buffer<T: Element>(self) -> DeviceBuffer<'a, T> {
        self.check_elem::<T>("into_typed_buffer");
        self.buf.retype()
    }

    /// The allocator the tensor came from and returns to.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::zeros(&alloc, &[2], DType::I16)?;
    /// assert!(std::ptr::eq(t.allocator(), &alloc));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn allocator(&self) -> &'a Allocator {
        self.buf.allocator()
    }

    /// The same memory under another shape with the same element count.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::zeros(&alloc, &[2, 3], DType::F32)?.reshape(&[6]);
    /// assert_eq!(t.shape(), [6]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the element counts differ.
    pub fn reshape(mut self, shape: &[usize]) -> Tensor<'a> {
        assert_eq!(
            numel_of(shape),
            self.numel(),
            "reshape {:?} to {shape:?}: element counts differ",
            self.shape
        );
        self.shape = shape.to_vec();
        self
    }

    fn check_elem<T: Element>(&self, what: &str) {
        assert!(
            self.dtype.accepts::<T>(),
            "{what}: a {} tensor cannot be accessed as {}",
            self.dtype,
            std::any::type_name::<T>()
        );
    }

    /// The contents, copied to the host as `T`.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::from_slice(&alloc, &[0.25f32, 0.5], &[2])?;
    /// assert_eq!(t.to_vec::<f32>()?, [0.25, 0.5]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the dtype does not accept `T` ([`DType::accepts`]).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_elem::<T>("to_vec");
        let mut out = zeroed_vec::<T>(self.numel());
        self.buf.copy_to_host(bytes_of_mut(&mut out))?;
        Ok(out)
    }

    /// The contents as raw bytes (native byte order).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let t = Tensor::from_slice(&alloc, &[1u8, 2], &[2])?;
    /// assert_eq!(t.to_bytes()?, [1, 2]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.buf.to_vec()
    }

    /// Overwrites the contents with `data` from the host.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let mut t = Tensor::zeros(&alloc, &[2], DType::F32)?;
    /// t.copy_from_slice(&[3.0f32, 4.0])?;
    /// assert_eq!(t.to_vec::<f32>()?, [3.0, 4.0]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the dtype does not accept `T`, or `data.len() != self.numel()`.
    pub fn copy_from_slice<T: Element>(&mut self, data: &[T]) -> Result<()> {
        self.check_elem::<T>("copy_from_slice");
        assert_eq!(
            data.len(),
            self.numel(),
            "copy_from_slice: {} elements for shape {:?}",
            data.len(),
            self.shape
        );
        self.buf.copy_from_host(bytes_of(data))
    }

    /// Overwrites the contents with those of `src` (same dtype and element
    /// count), device to device.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let a = Tensor::from_slice(&alloc, &[1i32, 2], &[2])?;
    /// let mut b = Tensor::zeros(&alloc, &[2, 1], DType::I32)?;
    /// b.copy_from(&a)?;
    /// assert_eq!(b.to_vec::<i32>()?, [1, 2]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the dtypes or element counts differ, or `src` belongs to another
    /// allocator.
    pub fn copy_from(&mut self, src: &Tensor<'_>) -> Result<()> {
        assert_eq!(src.dtype, self.dtype, "copy_from: dtypes differ");
        assert_eq!(
            src.numel(),
            self.numel(),
            "copy_from: element counts differ"
        );
        self.buf.copy_from(&src.buf)
    }

    /// A copy in new memory, allocated as [`DeviceBuffer::uninit`] does (so
    /// in graph mode, from the current pool).
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let a = Tensor::from_slice(&alloc, &[1i32, 2], &[2])?;
    /// let b = a.try_clone()?;
    /// assert_eq!(b.to_vec::<i32>()?, [1, 2]);
    /// assert_ne!(a.device_ptr(), b.device_ptr());
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn try_clone(&self) -> Result<Tensor<'a>> {
        Ok(Tensor {
            buf: self.buf.try_clone()?,
            shape: self.shape.clone(),
            dtype: self.dtype,
        })
    }

    /// Whether a CUDA graph may keep this tensor's address: its memory
    /// belongs to a graph pool (it was allocated in graph mode, or on a
    /// stream being captured, or made by [`Tensor::with_graph_memory`] /
    /// [`Tensor::ensure_graph_compatible`]). An empty tensor owns no memory
    /// and is always compatible.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let pool = alloc.create_pool();
    /// let eager = Tensor::zeros(&alloc, &[4], DType::F32)?;
    /// let graph = alloc.with_graph_mode(&pool, || Tensor::zeros(&alloc, &[4], DType::F32))??;
    /// assert!(!eager.is_graph_compatible() && graph.is_graph_compatible());
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn is_graph_compatible(&self) -> bool {
        self.buf.is_empty() || self.buf.is_graph_memory()
    }

    /// A tensor of the same shape, dtype and contents in `pool`'s memory (on
    /// the pool's device). `self` is left as it is.
    ///
    /// On CUDA this makes a synchronous copy: call it before a capture
    /// begins, not during one.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let pool = alloc.create_pool();
    /// let x = Tensor::from_slice(&alloc, &[1.0f32, 2.0], &[2])?;
    /// let y = x.with_graph_memory(&pool)?;
    /// assert_eq!(y.to_vec::<f32>()?, [1.0, 2.0]);
    /// assert_eq!(pool.stats().live_blocks, 1);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ForeignPool`](crate::Error::ForeignPool) if the pool
    /// belongs to another allocator, and those of allocation and copying.
    pub fn with_graph_memory(&self, pool: &GraphPool) -> Result<Tensor<'a>> {
        Ok(Tensor {
            buf: self.buf.with_graph_memory(pool)?,
            shape: self.shape.clone(),
            dtype: self.dtype,
        })
    }

    /// The tensor itself, unless the calling thread is in graph mode (on a
    /// pool of the tensor's allocator) and the tensor is not graph memory:
    /// then a copy with the same contents in the current pool, and `self`
    /// is dropped (its memory returns to the caching allocator).
    ///
    /// On CUDA the move makes a synchronous copy: call it in graph mode
    /// before a capture begins, not during one.
    ///
    /// ```
    /// # use graphalloc::{tensor::{DType, Tensor}, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let pool = alloc.create_pool();
    /// let x = Tensor::from_slice(&alloc, &[5u8], &[1])?;
    /// let x = x.ensure_graph_compatible()?; // not in graph mode: unchanged
    /// assert!(!x.is_graph_compatible());
    /// let _g = alloc.enter_graph_mode(&pool)?;
    /// let x = x.ensure_graph_compatible()?; // moved into the pool
    /// assert_eq!(x.pool_id(), Some(pool.id()));
    /// assert_eq!(x.to_vec::<u8>()?, [5]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn ensure_graph_compatible(self) -> Result<Tensor<'a>> {
        if self.is_graph_compatible() || !self.buf.alloc.is_graph_mode() {
            return Ok(self);
        }
        self.try_clone()
    }
}
