//! [`DeviceBuffer`]: an owned block of device memory holding elements of one
//! [`Element`] type, with its host-side copies (through the backend).

use super::element::{bytes_of, bytes_of_mut, zeroed_vec, Element};
use crate::allocator::Allocator;
use crate::arena::BLOCK_ROUND;
use crate::backend::Copies;
use crate::device_ptr::DevicePtr;
use crate::error::Result;
use crate::graph_pool::GraphPool;
use crate::stream::current_stream;
use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;

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
    pub(super) alloc: &'a Allocator,
    /// Null for an empty buffer, which owns no block.
    pub(super) ptr: DevicePtr,
    pub(super) len: usize,
    pub(super) device: usize,
    pub(super) stream: u64,
    /// The graph pool that owns the block, if one does.
    pub(super) pool: Option<u64>,
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
            alloc.backend(dst_dev)?.copies()?.copy_device_to_device(
                dst.addr(),
                src.addr(),
                bytes,
            )?
        };
    } else {
        let mut staging = vec![0u8; bytes];
        // SAFETY: per this function's contract; `staging` is a host buffer
        // of exactly `bytes` bytes.
        unsafe {
            alloc
                .backend(src_dev)?
                .copies()?
                .copy_to_host(src.addr(), &mut staging)?;
            alloc
                .backend(dst_dev)?
                .copies()?
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
        let stream = current_stream();
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
        let Some(backend) = self.host_copy("copy_from_host: source", src.len())? else {
            return Ok(());
        };
        // SAFETY: the buffer owns its live block of exactly `num_bytes()`
        // bytes on `self.device`; `&mut self` excludes other host-side use.
        Ok(unsafe { backend.copy_to_device(self.ptr.addr(), bytes_of(src)) }?)
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
        let Some(backend) = self.host_copy("copy_to_host: destination", dst.len())? else {
            return Ok(());
        };
        // SAFETY: the buffer owns its live block of exactly `num_bytes()`
        // bytes, initialized by every safe constructor (or per the contract
        // of `uninit`); `dst` is a host buffer of the same size whose every
        // bit pattern is valid (`Element`).
        Ok(unsafe { backend.copy_to_host(self.ptr.addr(), bytes_of_mut(dst)) }?)
    }

    /// The copy capability of the buffer's device.
    fn backend(&self) -> Result<&dyn Copies> {
        Ok(self.alloc.backend(self.device)?.copies()?)
    }

    /// Panics unless a host slice of `len` elements matches the buffer, as
    /// `what` (`"copy_to_host: destination"`) says; the backend to copy
    /// with, or `None` if there are no bytes to copy.
    fn host_copy(&self, what: &str, len: usize) -> Result<Option<&dyn Copies>> {
        assert_eq!(len, self.len, "{what} length differs from the buffer's");
        if self.len == 0 {
            return Ok(None);
        }
        self.backend().map(Some)
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
        unsafe { self.backend()?.fill(self.ptr.addr(), 0, self.num_bytes())? };
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

    /// The same block as a buffer of `U` (`num_bytes()` must be a multiple
    /// of `U`'s size); ownership moves, nothing is freed.
    pub(super) fn retype<U: Element>(self) -> DeviceBuffer<'a, U> {
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
