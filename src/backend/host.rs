//! Host memory standing in for a device.

use super::{Backend, BackendError, BackendKind, MemInfo};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeSet;

/// Segment alignment on the host backend (a page).
const HOST_SEGMENT_ALIGN: usize = 4096;

/// A device simulated in host memory.
///
/// Segments are real host allocations, so blocks can be written and read
/// back. It has a fixed capacity, so out-of-memory paths are testable, and
/// tests can make chosen reservations fail.
///
/// ```
/// use graphalloc::{Backend, HostBackend};
/// let host = HostBackend::new(0, 1 << 20);
/// host.fail_reservation(1); // the next reservation fails
/// assert!(host.reserve(4096).is_err());
/// let seg = host.reserve(4096).unwrap();
/// assert_eq!(host.outstanding_bytes(), 4096);
/// host.release(seg, 4096).unwrap();
/// assert_eq!(host.outstanding_bytes(), 0);
/// ```
#[derive(Debug)]
pub struct HostBackend {
    ordinal: usize,
    capacity: usize,
    used: AtomicUsize,
    reservations: AtomicU64,
    releases: AtomicU64,
    /// 1-based reservation numbers that must fail.
    faults: Mutex<BTreeSet<u64>>,
}

impl HostBackend {
    /// A simulated device `ordinal` with `capacity` bytes.
    pub fn new(ordinal: usize, capacity: usize) -> Self {
        HostBackend {
            ordinal,
            capacity,
            used: AtomicUsize::new(0),
            reservations: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            faults: Mutex::new(BTreeSet::new()),
        }
    }

    /// Makes the `n`th reservation from now fail (`1` = the next one) with
    /// [`BackendError::Injected`]. Calls add up: several can be pending.
    pub fn fail_reservation(&self, n: u64) {
        assert!(n > 0, "n counts from 1");
        let base = self.reservations.load(Ordering::SeqCst);
        self.faults.lock().insert(base + n);
    }

    /// Drops every pending injected fault.
    pub fn clear_faults(&self) {
        self.faults.lock().clear();
    }

    /// Bytes in segments reserved and not yet released.
    pub fn outstanding_bytes(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Reservation attempts so far, failed ones included.
    pub fn reservations(&self) -> u64 {
        self.reservations.load(Ordering::SeqCst)
    }

    /// Segments released so far.
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::SeqCst)
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn layout(size: usize) -> Result<Layout, BackendError> {
        Layout::from_size_align(size, HOST_SEGMENT_ALIGN)
            .map_err(|_| BackendError::OutOfMemory { requested: size })
    }
}

impl Backend for HostBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        let nth = self.reservations.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.lock().remove(&nth) {
            return Err(BackendError::Injected { nth });
        }
        let layout = Self::layout(size.max(1))?;
        // Claim capacity first, so concurrent reservations never exceed it.
        let claimed = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(size).filter(|&n| n <= self.capacity)
            });
        if claimed.is_err() {
            return Err(BackendError::OutOfMemory { requested: size });
        }
        // SAFETY: `layout` has a non-zero size (at least 1 byte).
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return Err(BackendError::OutOfMemory { requested: size });
        }
        Ok(ptr as u64)
    }

    fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let layout = Self::layout(size.max(1))?;
        // SAFETY: the pools release only addresses this backend returned from
        // `reserve` with the same `size`, each exactly once, so `addr` came
        // from `alloc(layout)` with this very layout and is still allocated.
        unsafe { dealloc(addr as *mut u8, layout) };
        self.used.fetch_sub(size, Ordering::SeqCst);
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        let used = self.used.load(Ordering::SeqCst);
        Ok(MemInfo {
            free: self.capacity.saturating_sub(used),
            total: self.capacity,
        })
    }

    unsafe fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<(), BackendError> {
        // SAFETY: the caller guarantees `dst..dst + len` is a live block it
        // owns: host memory from `reserve`, disjoint from `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn copy_to_host(&self, src: u64, dst: &mut [u8]) -> Result<(), BackendError> {
        // SAFETY: the caller guarantees `src..src + len` is a live block it
        // owns; `dst` is a distinct host buffer.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn copy_device_to_device(
        &self,
        dst: u64,
        src: u64,
        len: usize,
    ) -> Result<(), BackendError> {
        // SAFETY: the caller guarantees both ranges are live, owned and
        // disjoint.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
        Ok(())
    }

    unsafe fn fill(&self, dst: u64, value: u8, len: usize) -> Result<(), BackendError> {
        // SAFETY: the caller guarantees `dst..dst + len` is a live block it owns.
        unsafe { std::ptr::write_bytes(dst as *mut u8, value, len) };
        Ok(())
    }
}
