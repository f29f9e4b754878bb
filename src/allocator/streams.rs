//! The streams an allocator accepts: built-in handles, registered ones
//! (cudarc streams, or raw handles from the C ABI), and streams its
//! devices' backends make for it ([`Allocator::create_stream`]).

use super::Allocator;
use crate::backend::BackendError;
use crate::error::{Error, Result};

impl Allocator {
    /// Accepts a cudarc stream for [`Allocator::allocate_on`],
    /// [`Allocator::record_stream`] and [`crate::use_stream`] on `device`.
    /// The allocator keeps the `Arc`, so the handle stays valid while it may
    /// still reach the driver (see [`Allocator::unregister_stream`]).
    /// Registering a stream twice changes nothing.
    ///
    /// Errors: [`Error::InvalidDevice`]; [`BackendError::ForeignStream`] for
    /// a stream of another device.
    pub fn register_stream(
        &self,
        device: usize,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> Result<()> {
        self.cache(device)?;
        let (handle, ordinal) = (stream.cu_stream() as u64, stream.context().ordinal());
        if ordinal != device {
            return Err(Error::Backend(BackendError::ForeignStream {
                stream: handle,
                stream_device: ordinal,
                device,
            }));
        }
        if self.streams.register(device, handle, Some(stream.clone())) {
            self.release_retired_streams();
        }
        Ok(())
    }

    /// Accepts the raw stream handle `stream` on `device`, as
    /// [`Allocator::register_stream`] does a cudarc stream. This is how the
    /// C ABI accepts the streams PyTorch passes. Built-in handles (0, 1, 2)
    /// need no registration.
    ///
    /// # Safety
    /// `stream` must be a live stream of `device` (of its primary context on
    /// CUDA) from now until it is unregistered and no block allocated on it
    /// or recorded on it ([`Allocator::record_stream`]) is live or waiting
    /// to be reused: the allocator passes it to the driver until then.
    pub unsafe fn register_raw_stream(&self, device: usize, stream: u64) -> Result<()> {
        self.cache(device)?;
        if !self.streams.is_registered(device, stream) {
            self.streams.register(device, stream, None);
        }
        Ok(())
    }

    /// A new stream on `device`, made and owned by the device's backend and
    /// accepted by this allocator at once: on CUDA a non-blocking stream of
    /// the device's primary context, destroyed when the backend goes away
    /// (with the allocator); on the host backend one of its simulated
    /// streams. For tools that run recorded work on streams of their own:
    /// [`crate::replay::Player`] gives each stream of a trace one.
    ///
    /// Errors: [`Error::InvalidDevice`]; [`Error::Backend`] with
    /// [`BackendError::Unsupported`] for a backend that cannot make streams,
    /// or the driver's error.
    ///
    /// ```
    /// use graphalloc::{Allocator, Config};
    /// let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    /// let side = alloc.create_stream(0).unwrap();
    /// assert!(alloc.is_stream_registered(0, side));
    /// let p = alloc.allocate_on(0, side, 4096, 512).unwrap();
    /// alloc.free(p).unwrap();
    /// ```
    pub fn create_stream(&self, device: usize) -> Result<u64> {
        let cache = self.cache(device)?;
        let stream = cache.device.backend.streams()?.create_stream()?;
        Ok(stream)
    }

    /// Whether `stream` is accepted on `device` now: built in, registered,
    /// or a stream the device's backend made itself (a [`HostBackend`](crate::backend::HostBackend)'s
    /// simulated streams).
    pub fn is_stream_registered(&self, device: usize, stream: u64) -> bool {
        self.check_stream(device, stream).is_ok()
    }

    /// Ends the registration of `stream` on `device`: later allocations and
    /// `record_stream` calls on it are [`Error::UnknownStream`]. Blocks
    /// already allocated on it or recorded on it are unaffected; the `Arc` of
    /// [`Allocator::register_stream`] is kept until none is live and the
    /// device has no pending frees (checked now and at each later
    /// registration), then dropped. Returns whether it was registered.
    /// Built-in streams stay accepted; so do a [`HostBackend`](crate::backend::HostBackend)'s own streams.
    pub fn unregister_stream(&self, device: usize, stream: u64) -> bool {
        let was = self.streams.unregister(device, stream);
        self.release_retired_streams();
        was
    }

    /// Accepts `stream` on `device` or says why not (a built-in handle costs
    /// one comparison, a registered one a map read).
    #[inline]
    pub(super) fn check_stream(&self, device: usize, stream: u64) -> Result<()> {
        let checked = self
            .streams
            .check(device, stream, || self.created(device, stream));
        match checked {
            Err(Error::UnknownStream { .. }) => Err(self.unknown_stream(device, stream)),
            other => other,
        }
    }

    /// Whether `device`'s backend made `stream` itself.
    fn created(&self, device: usize, stream: u64) -> bool {
        self.caches.get(device).is_some_and(|c| {
            (c.device.backend.as_stream_order()).is_some_and(|s| s.created_stream(stream))
        })
    }

    /// The error for a stream neither built in nor registered on `device`:
    /// [`BackendError::ForeignStream`] if another device's backend made it
    /// (not registered there yet: made streams are registered on first use),
    /// else [`Error::UnknownStream`].
    #[cold]
    #[inline(never)]
    fn unknown_stream(&self, device: usize, stream: u64) -> Error {
        match (0..self.caches.len()).find(|&d| d != device && self.created(d, stream)) {
            Some(stream_device) => Error::Backend(BackendError::ForeignStream {
                stream,
                stream_device,
                device,
            }),
            None => Error::UnknownStream { stream },
        }
    }

    /// Drops the retired streams no live block names on a device without
    /// pending frees. (Blocks in thread caches name their stream too: they
    /// go back to the arena first, while the stream is still held.)
    pub(super) fn release_retired_streams(&self) {
        for cache in &self.caches {
            cache.drain_threads();
        }
        self.streams.release_retired(|device, stream| {
            let pending = self.caches[device].stats().pending_frees
                + self.pools.stats(Some(device), false).pending_frees;
            pending > 0 || self.ownership.names_stream(device, stream)
        });
    }
}
