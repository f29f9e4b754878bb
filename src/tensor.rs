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

use crate::allocator::Allocator;
use crate::backend::{BackendError, BackendKind};
use crate::device_ptr::DevicePtr;
use crate::error::Result;
use crate::graph_pool::GraphPool;
use crate::BLOCK_ROUND;
use cudarc::driver::{sys, CudaStream, DeviceSlice, LaunchArgs, PushKernelArg, SyncOnDrop};
use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::Arc;

/// The element type of a [`Tensor`].
///
/// ```
/// use graphalloc::tensor::DType;
/// assert_eq!(DType::BF16.size(), 2);
/// assert_eq!(DType::I64.to_string(), "i64");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// IEEE 754 binary16 (read and written as `u16` bits on the host).
    F16,
    /// bfloat16 (read and written as `u16` bits on the host).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The lower-case name (`"f32"`, `"bf16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }

    /// Whether host values of type `T` can stand for elements of this dtype:
    /// `T`'s own dtype if it has one (`f32` for [`DType::F32`], ...), else
    /// any type of the same size (`u16` for [`DType::F16`] and
    /// [`DType::BF16`] bits).
    ///
    /// ```
    /// use graphalloc::tensor::DType;
    /// assert!(DType::F32.accepts::<f32>());
    /// assert!(!DType::I32.accepts::<f32>());
    /// assert!(DType::BF16.accepts::<u16>());
    /// ```
    pub fn accepts<T: Element>(self) -> bool {
        match T::DTYPE {
            Some(dtype) => dtype == self,
            None => size_of::<T>() == self.size(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A plain-old-data type that buffers copy to and from device memory as raw
/// bytes.
///
/// ```
/// use graphalloc::tensor::{DType, Element};
/// assert_eq!(<f32 as Element>::DTYPE, Some(DType::F32));
/// assert_eq!(<u16 as Element>::DTYPE, None); // bits of f16 / bf16
/// ```
///
/// # Safety
/// Implementors must have no padding bytes and no pointers or references,
/// and every bit pattern of `size_of::<Self>()` bytes must be a valid value:
/// bytes written by the device are read back as `Self`.
pub unsafe trait Element: Copy + Send + Sync + fmt::Debug + 'static {
    /// The tensor dtype whose elements are exactly this type, if any.
    const DTYPE: Option<DType>;
}

macro_rules! element {
    ($($t:ty => $d:expr),* $(,)?) => {$(
        // SAFETY: a primitive integer or float: no padding, no pointers, and
        // every bit pattern is a valid value.
        unsafe impl Element for $t {
            const DTYPE: Option<DType> = $d;
        }
    )*};
}

element! {
    f32 => Some(DType::F32),
    f64 => Some(DType::F64),
    i8 => Some(DType::I8),
    i16 => Some(DType::I16),
    i32 => Some(DType::I32),
    i64 => Some(DType::I64),
    u8 => Some(DType::U8),
    u16 => None,
    u32 => None,
    u64 => None,
}

fn bytes_of<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `Element` types have no padding, so all `size_of_val(s)` bytes
    // are initialized; u8 has alignment 1 and the lifetime is kept.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

fn bytes_of_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; in addition every bit pattern is a valid
    // `T`, so any bytes written through the returned slice leave valid values.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// A vector of `len` all-zero-bits values.
fn zeroed_vec<T: Element>(len: usize) -> Vec<T> {
    let mut v = Vec::<T>::with_capacity(len);
    // SAFETY: the capacity is at least `len`; all-zero bits are a valid `T`
    // (every bit pattern is), so the first `len` elements are initialized
    // before `set_len`.
    unsafe {
        std::ptr::write_bytes(v.as_mut_ptr(), 0, len);
        v.set_len(len);
    }
    v
}

/// An owned block of device memory holding `len` elements of `T`, freed on
/// drop through [`Allocator::free`] (so it returns to whichever pool or cache
/// owns it, whatever the mode of the dropping thread).
///
/// The allocator is borrowed: `DeviceBuffer<'a, T>` works with an
/// [`Allocator`] value and, as `DeviceBuffer<'static, T>`, with the
/// process-wide one ([`crate::global`]).
///
/// ```
/// use graphalloc::tensor::DeviceBuffer;
/// use graphalloc::{Allocator, Config};
///
/// let alloc = Allocator::new(Config::host(1 << 30))?;
/// let pool = alloc.create_pool();
/// let mut x = {
///     let _g = alloc.enter_graph_mode(&pool)?;
///     DeviceBuffer::from_slice(&alloc, &[1i32, 2, 3])? // from the pool
/// };
/// assert_eq!(x.pool_id(), Some(pool.id()));
/// x.copy_from_host(&[4, 5, 6])?;
/// let y = x.try_clone()?; // outside graph mode: from the caching allocator
/// assert_eq!(y.to_vec()?, [4, 5, 6]);
/// assert!(!y.is_graph_memory());
/// drop(x); // after the guard ended: routed to the pool
/// assert_eq!(pool.stats().live_blocks, 0);
/// # Ok::<(), graphalloc::Error>(())
/// ```
pub struct DeviceBuffer<'a, T: Element> {
    alloc: &'a Allocator,
    /// Null for an empty buffer, which owns no block.
    ptr: DevicePtr,
    len: usize,
    device: usize,
    stream: u64,
    /// The graph pool that owns the block, if one does.
    pool: Option<u64>,
    _elem: PhantomData<T>,
}

impl<T: Element> fmt::Debug for DeviceBuffer<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("elem", &std::any::type_name::<T>())
            .field("device", &self.device)
            .field("stream", &format_args!("{:#x}", self.stream))
            .field("pool", &self.pool)
            .finish()
    }
}

/// Copies `bytes` bytes from block `src` on `src_dev` to block `dst` on
/// `dst_dev` (through the host when the devices differ).
///
/// # Safety
/// Both ranges lie inside distinct live blocks that the caller owns, and no
/// device work uses them concurrently.
unsafe fn copy_between(
    alloc: &Allocator,
    dst_dev: usize,
    dst: DevicePtr,
    src_dev: usize,
    src: DevicePtr,
    bytes: usize,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    if dst_dev == src_dev {
        // SAFETY: per this function's contract; distinct blocks don't overlap.
        unsafe {
            alloc
                .backend(dst_dev)?
                .copy_device_to_device(dst.addr(), src.addr(), bytes)?
        };
    } else {
        let mut staging = vec![0u8; bytes];
        // SAFETY: per this function's contract; `staging` is a host buffer
        // of exactly `bytes` bytes.
        unsafe {
            alloc
                .backend(src_dev)?
                .copy_to_host(src.addr(), &mut staging)?;
            alloc
                .backend(dst_dev)?
                .copy_to_device(dst.addr(), &staging)?;
        }
    }
    Ok(())
}

impl<'a, T: Element> DeviceBuffer<'a, T> {
    /// A buffer of `len` elements whose contents are unspecified, from the
    /// calling thread's graph pool in graph mode, else from the caching
    /// allocator (or, on a stream being captured, a capture pool), on the
    /// thread's current stream. Makes no copy or fill, so it is the
    /// constructor to use while a stream is being captured. `len == 0` gives
    /// an empty buffer that owns no memory.
    ///
    /// ```
    /// use graphalloc::tensor::DeviceBuffer;
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30))?;
    /// // SAFETY: written in full before it is read.
    /// let mut buf = unsafe { DeviceBuffer::<f32>::uninit(&alloc, 4)? };
    /// buf.copy_from_host(&[0.5; 4])?;
    /// assert_eq!(buf.to_vec()?, [0.5; 4]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Safety
    /// Every element must be written (by [`DeviceBuffer::copy_from_host`],
    /// [`DeviceBuffer::copy_from`], [`DeviceBuffer::zero`], a kernel or a
    /// cudarc copy) before it is read by a host-side read or copy: on the
    /// host backend the memory may be uninitialized host memory.
    pub unsafe fn uninit(alloc: &'a Allocator, len: usize) -> Result<Self> {
        let stream = crate::current_stream();
        if len == 0 {
            return Ok(DeviceBuffer {
                alloc,
                ptr: DevicePtr::new(0),
                len,
                device: 0,
                stream,
                pool: None,
                _elem: PhantomData,
            });
        }
        // An overflowing size saturates, and the allocator reports it as too large.
        let ptr = alloc.allocate_held(len.saturating_mul(size_of::<T>()), BLOCK_ROUND)?;
        Ok(DeviceBuffer {
            alloc,
            ptr,
            len,
            device: alloc
                .device_of(ptr)
                .expect("a pointer just allocated is live"),
            stream,
            pool: alloc.pool_of(ptr),
            _elem: PhantomData,
        })
    }

    /// A buffer of `len` all-zero-bits elements (see
    /// [`DeviceBuffer::uninit`] for where the memory comes from).
    ///
    /// ```
    /// use graphalloc::tensor::DeviceBuffer;
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(DeviceBuffer::<u64>::zeros(&alloc, 3)?.to_vec()?, [0, 0, 0]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn zeros(alloc: &'a Allocator, len: usize) -> Result<Self> {
        // SAFETY: every byte is written by `zero` before anyone can read it.
        let mut buf = unsafe { Self::uninit(alloc, len)? };
        buf.zero()?;
        Ok(buf)
    }

    /// A buffer holding a copy of `data` (see [`DeviceBuffer::uninit`] for
    /// where the memory comes from).
    ///
    /// ```
    /// use graphalloc::tensor::DeviceBuffer;
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let buf = DeviceBuffer::from_slice(&alloc, &[1u8, 2, 3])?;
    /// assert_eq!(buf.len(), 3);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn from_slice(alloc: &'a Allocator, data: &[T]) -> Result<Self> {
        // SAFETY: every element is written by `copy_from_host` before anyone
        // can read it.
        let mut buf = unsafe { Self::uninit(alloc, data.len())? };
        buf.copy_from_host(data)?;
        Ok(buf)
    }

    /// Number of elements.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(DeviceBuffer::<f64>::zeros(&alloc, 5)?.len(), 5);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements (and owns no memory).
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let empty = DeviceBuffer::<f32>::from_slice(&alloc, &[])?;
    /// assert!(empty.is_empty() && empty.device_ptr().is_null());
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes: `len() * size_of::<T>()`.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(DeviceBuffer::<f32>::zeros(&alloc, 5)?.num_bytes(), 20);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn num_bytes(&self) -> usize {
        self.len * size_of::<T>()
    }

    /// The device ordinal of the memory (0 for an empty buffer).
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(DeviceBuffer::<u8>::zeros(&alloc, 1)?.device(), 0);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn device(&self) -> usize {
        self.device
    }

    /// The stream the block was allocated on (the thread's current stream
    /// at allocation, [`crate::DEFAULT_STREAM`] unless
    /// [`crate::use_stream`] said otherwise).
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(DeviceBuffer::<u8>::zeros(&alloc, 1)?.stream(), graphalloc::DEFAULT_STREAM);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The device address of the first element (a `CUdeviceptr` on CUDA;
    /// null for an empty buffer). It stays valid while the buffer lives.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let buf = DeviceBuffer::<u8>::zeros(&alloc, 1)?;
    /// assert_eq!(alloc.requested_size(buf.device_ptr()), Some(1));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn device_ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// The allocator the buffer came from and returns to.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let buf = DeviceBuffer::<u8>::zeros(&alloc, 1)?;
    /// assert!(std::ptr::eq(buf.allocator(), &alloc));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn allocator(&self) -> &'a Allocator {
        self.alloc
    }

    /// The id of the graph pool that owns the memory ([`GraphPool::id`]), or
    /// `None` for caching-allocator memory and empty buffers.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let pool = alloc.create_pool();
    /// let buf = alloc.with_graph_mode(&pool, || DeviceBuffer::<u8>::zeros(&alloc, 8))??;
    /// assert_eq!(buf.pool_id(), Some(pool.id()));
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn pool_id(&self) -> Option<u64> {
        self.pool
    }

    /// Whether the memory belongs to a graph pool (it was allocated in graph
    /// mode, or on a stream being captured), so a CUDA graph may keep its
    /// address. An empty buffer owns no memory and is not graph memory.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let pool = alloc.create_pool();
    /// let buf = alloc.with_graph_mode(&pool, || DeviceBuffer::<u8>::zeros(&alloc, 8))??;
    /// assert!(buf.is_graph_memory());
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn is_graph_memory(&self) -> bool {
        self.pool.is_some()
    }

    /// Copies `src` from the host into the buffer.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let mut buf = DeviceBuffer::<i64>::zeros(&alloc, 2)?;
    /// buf.copy_from_host(&[-1, 7])?;
    /// assert_eq!(buf.to_vec()?, [-1, 7]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `src.len() != self.len()`.
    pub fn copy_from_host(&mut self, src: &[T]) -> Result<()> {
        assert_eq!(
            src.len(),
            self.len,
            "copy_from_host: source length differs from the buffer's"
        );
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the buffer owns its live block of exactly `num_bytes()`
        // bytes on `self.device`; `&mut self` excludes other host-side use.
        unsafe {
            self.alloc
                .backend(self.device)?
                .copy_to_device(self.ptr.addr(), bytes_of(src))?
        };
        Ok(())
    }

    /// Copies the buffer into `dst` on the host.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let buf = DeviceBuffer::from_slice(&alloc, &[3u32, 4])?;
    /// let mut out = [0u32; 2];
    /// buf.copy_to_host(&mut out)?;
    /// assert_eq!(out, [3, 4]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `dst.len() != self.len()`.
    pub fn copy_to_host(&self, dst: &mut [T]) -> Result<()> {
        assert_eq!(
            dst.len(),
            self.len,
            "copy_to_host: destination length differs from the buffer's"
        );
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the buffer owns its live block of exactly `num_bytes()`
        // bytes, initialized by every safe constructor (or per the contract
        // of `uninit`); `dst` is a host buffer of the same size whose every
        // bit pattern is valid (`Element`).
        unsafe {
            self.alloc
                .backend(self.device)?
                .copy_to_host(self.ptr.addr(), bytes_of_mut(dst))?
        };
        Ok(())
    }

    /// The buffer's contents, copied to the host.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// assert_eq!(DeviceBuffer::from_slice(&alloc, &[1.5f64])?.to_vec()?, [1.5]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let mut out = zeroed_vec(self.len);
        self.copy_to_host(&mut out)?;
        Ok(out)
    }

    /// Copies `src` (same length, any device of the same allocator) into
    /// this buffer, device to device.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let a = DeviceBuffer::from_slice(&alloc, &[1u16, 2])?;
    /// let mut b = DeviceBuffer::zeros(&alloc, 2)?;
    /// b.copy_from(&a)?;
    /// assert_eq!(b.to_vec()?, [1, 2]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// # Panics
    /// If the lengths differ, or `src` belongs to another allocator.
    pub fn copy_from(&mut self, src: &DeviceBuffer<'_, T>) -> Result<()> {
        assert_eq!(
            src.len, self.len,
            "copy_from: source length differs from the buffer's"
        );
        assert!(
            std::ptr::eq(self.alloc, src.alloc),
            "copy_from: the buffers belong to different allocators"
        );
        // SAFETY: both buffers own distinct live blocks (`&mut self` and
        // `&src` cannot be the same buffer) of `num_bytes()` bytes of this
        // allocator's devices.
        unsafe {
            copy_between(
                self.alloc,
                self.device,
                self.ptr,
                src.device,
                src.ptr,
                self.num_bytes(),
            )
        }
    }

    /// Sets every byte of the buffer to zero.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let mut buf = DeviceBuffer::from_slice(&alloc, &[9i8, 9])?;
    /// buf.zero()?;
    /// assert_eq!(buf.to_vec()?, [0, 0]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn zero(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the buffer owns its live block of `num_bytes()` bytes.
        unsafe {
            self.alloc
                .backend(self.device)?
                .fill(self.ptr.addr(), 0, self.num_bytes())?
        };
        Ok(())
    }

    /// A copy of the buffer in new memory, allocated as
    /// [`DeviceBuffer::uninit`] does (so in graph mode, from the current pool).
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let a = DeviceBuffer::from_slice(&alloc, &[1u8, 2])?;
    /// let b = a.try_clone()?;
    /// assert_ne!(a.device_ptr(), b.device_ptr());
    /// assert_eq!(b.to_vec()?, [1, 2]);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    pub fn try_clone(&self) -> Result<DeviceBuffer<'a, T>> {
        // SAFETY: written in full by `copy_from` before anyone can read it.
        let mut copy = unsafe { DeviceBuffer::uninit(self.alloc, self.len)? };
        copy.copy_from(self)?;
        Ok(copy)
    }

    /// A copy of the buffer in `pool`'s memory (on the pool's device), with
    /// the same contents.
    ///
    /// ```
    /// # use graphalloc::{tensor::DeviceBuffer, Allocator, Config};
    /// # let alloc = Allocator::new(Config::host(1 << 30))?;
    /// let pool = alloc.create_pool();
    /// let a = DeviceBuffer::from_slice(&alloc, &[1u8, 2])?;
    /// let b = a.with_graph_memory(&pool)?;
    /// assert_eq!(b.pool_id(), Some(pool.id()));
    /// assert_eq!(pool.stats().live_blocks, 1);
    /// # Ok::<(), graphalloc::Error>(())
    /// ```
    ///
    /// Errors: [`Error::ForeignPool`](crate::Error::ForeignPool) if the pool
    /// belongs to another allocator, and those of allocation and copying.
    pub fn with_graph_memory(&self, pool: &GraphPool) -> Result<DeviceBuffer<'a, T>> {
        let _graph = self.alloc.enter_graph_mode(pool)?;
        self.try_clone()
    }

    /// Binds the buffer to a cudarc stream for reading: the view implements
    /// cudarc's `DeviceSlice` and `DevicePtr` and can be pushed as a kernel
    /// argument. Calls [`Allocator::record_stream`] for `stream` (unless it
    /// is the buffer's own), so when the buffer is dropped its block is not
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
        self.bind(stream)?;
        Ok(StreamView {
            addr: self.ptr.addr(),
            len: self.len,
            stream,
            _buf: PhantomData,
        })
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
        self.bind(stream)?;
        Ok(StreamViewMut {
            addr: self.ptr.addr(),
            len: self.len,
            stream,
            _buf: PhantomData,
        })
    }

    /// The same block as a buffer of `U` (`num_bytes()` must be a multiple
    /// of `U`'s size); ownership moves, nothing is freed.
    fn retype<U: Element>(self) -> DeviceBuffer<'a, U> {
        let bytes = self.num_bytes();
        debug_assert_eq!(bytes % size_of::<U>(), 0);
        // The block moves to the new buffer: `self` must not free it.
        let this = std::mem::ManuallyDrop::new(self);
        DeviceBuffer {
            alloc: this.alloc,
            ptr: this.ptr,
            len: bytes / size_of::<U>(),
            device: this.device,
            stream: this.stream,
            pool: this.pool,
            _elem: PhantomData,
        }
    }

    /// Checks that `stream` can use this buffer and records the use.
    fn bind(&self, stream: &CudaStream) -> Result<()> {
        bind_raw(self.alloc, self.ptr, self.device, stream)
    }
}

/// Checks that the block at `ptr` on `device` is CUDA memory that `stream`
/// can address, and records `stream`'s use of it.
fn bind_raw(alloc: &Allocator, ptr: DevicePtr, device: usize, stream: &CudaStream) -> Result<()> {
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
    alloc.record_stream(ptr, stream.cu_stream() as u64)
}

impl<T: Element> Drop for DeviceBuffer<'_, T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // The buffer owns a live pointer of this allocator, so the free
            // cannot fail; a drop could not report it anyway.
            let freed = self.alloc.free_held(self.ptr);
            debug_assert!(freed.is_ok(), "freeing an owned buffer: {freed:?}");
        }
    }
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

        impl<T> $view<'_, T> {
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
    /// If the dtype does not accept `T` ([`DType::accepts`]).
    pub fn on_stream<'b, T: Element>(
        &'b self,
        stream: &'b Arc<CudaStream>,
    ) -> Result<StreamView<'b, T>> {
        self.check_elem::<T>("on_stream");
        self.buf.bind(stream)?;
        Ok(StreamView {
            addr: self.buf.ptr.addr(),
            len: self.numel(),
            stream,
            _buf: PhantomData,
        })
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
    /// If the dtype does not accept `T` ([`DType::accepts`]).
    pub fn on_stream_mut<'b, T: Element>(
        &'b mut self,
        stream: &'b Arc<CudaStream>,
    ) -> Result<StreamViewMut<'b, T>> {
        self.check_elem::<T>("on_stream_mut");
        self.buf.bind(stream)?;
        Ok(StreamViewMut {
            addr: self.buf.ptr.addr(),
            len: self.numel(),
            stream,
            _buf: PhantomData,
        })
    }
}
