//! Adaptors that wrap any backend and add one behaviour: a memory limit,
//! injected faults. (The tracking adaptor is in `tracking.rs`.)
//!
//! Each adaptor implements the core [`Backend`] and, when its inner backend
//! has it, [`VirtualMemory`] (mapped pages count like segments); stream
//! order and copies pass through untouched, as the inner backend's own.

use super::{Backend, BackendError, BackendKind, Copies, MemInfo, StreamOrder, VirtualMemory};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The identity methods of [`Backend`], forwarded to `self.inner`.
macro_rules! forward_identity {
    () => {
        fn kind(&self) -> BackendKind {
            self.inner.kind()
        }

        fn ordinal(&self) -> usize {
            self.inner.ordinal()
        }
    };
}

/// [`Backend::mem_info`] and the capability accessors of an adaptor that
/// changes virtual memory (when the inner backend has it) and nothing else.
macro_rules! forward_capabilities {
    () => {
        fn mem_info(&self) -> Result<MemInfo, BackendError> {
            self.inner.mem_info()
        }

        fn as_virtual_memory(&self) -> Option<&dyn VirtualMemory> {
            self.inner.as_virtual_memory().map(|_| self as _)
        }

        fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
            self.inner.as_stream_order()
        }

        fn as_copies(&self) -> Option<&dyn Copies> {
            self.inner.as_copies()
        }
    };
}

/// The address-range methods of [`VirtualMemory`], forwarded to the inner
/// backend's.
macro_rules! forward_ranges {
    () => {
        fn page_size(&self) -> Result<usize, BackendError> {
            self.inner.vmm()?.page_size()
        }

        fn reserve_range(&self, size: usize) -> Result<u64, BackendError> {
            self.inner.vmm()?.reserve_range(size)
        }

        unsafe fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError> {
            let vmm = self.inner.vmm()?;
            // SAFETY: the caller's contract for `release_range` is passed
            // on unchanged to the inner backend.
            unsafe { vmm.release_range(addr, size) }
        }
    };
}
/// The capability accessors of a backend that has every capability itself.
macro_rules! all_capabilities {
    () => {
        fn as_virtual_memory(&self) -> Option<&dyn VirtualMemory> {
            Some(self)
        }

        fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
            Some(self)
        }

        fn as_copies(&self) -> Option<&dyn Copies> {
            Some(self)
        }
    };
}
pub(super) use {all_capabilities, forward_capabilities, forward_identity};

/// Where a [`LimitAdaptor`]'s limit comes from.
#[derive(Debug)]
enum Limit {
    /// A fixed number of bytes.
    Bytes(usize),
    /// A fraction of the device's total memory, read from the inner backend
    /// once it answers (a failed read is not cached).
    Fraction(f64, std::sync::OnceLock<usize>),
}

/// A backend that holds at most a limit of bytes of its inner backend:
/// segments and mapped pages together, like RMM's
/// `limiting_resource_adaptor`. A reservation or mapping past the limit fails
/// with [`BackendError::OutOfMemory`] without reaching the inner backend.
/// [`Backend::mem_info`] reports the inner device's own figures.
///
/// ```
/// use graphalloc::backend::{Backend, HostBackend, LimitAdaptor};
/// let limited = LimitAdaptor::new(HostBackend::new(0, 1 << 20), 8192);
/// let seg = limited.reserve(8192).unwrap();
/// assert!(limited.reserve(4096).is_err()); // over the limit, not the device
/// assert_eq!(limited.held(), 8192);
/// // SAFETY: the segment holds no block and is not used again.
/// unsafe { limited.release(seg, 8192) }.unwrap();
/// assert_eq!(limited.held(), 0);
/// ```
#[derive(Debug)]
pub struct LimitAdaptor<B> {
    inner: B,
    limit: Limit,
    /// Bytes in segments and mapped pages held through this adaptor.
    held: AtomicUsize,
}

impl<B: Backend> LimitAdaptor<B> {
    /// `inner`, limited to `limit` bytes.
    pub fn new(inner: B, limit: usize) -> Self {
        LimitAdaptor {
            inner,
            limit: Limit::Bytes(limit),
            held: AtomicUsize::new(0),
        }
    }

    /// `inner`, limited to `fraction` of its total memory (rounded down; a
    /// fraction of 1 or more is no limit): the allocator's `memory_fraction`.
    pub fn with_fraction(inner: B, fraction: f64) -> Self {
        LimitAdaptor {
            inner,
            limit: Limit::Fraction(fraction, std::sync::OnceLock::new()),
            held: AtomicUsize::new(0),
        }
    }

    /// The limit in bytes; `None` when there is none: a fraction of 1 or
    /// more, or while the inner backend cannot say its total memory (then
    /// its own out-of-memory decides).
    pub fn limit(&self) -> Option<usize> {
        match &self.limit {
            Limit::Bytes(bytes) => Some(*bytes),
            Limit::Fraction(fraction, _) if *fraction >= 1.0 => None,
            Limit::Fraction(fraction, total) => {
                let total = match total.get() {
                    Some(&total) => total,
                    None => {
                        let read = self.inner.mem_info().ok()?.total;
                        *total.get_or_init(|| read)
                    }
                };
                Some((total as f64 * fraction) as usize)
            }
        }
    }

    /// Bytes held through this adaptor now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Claims `size` bytes within the limit.
    fn claim(&self, size: usize) -> Result<(), BackendError> {
        let limit = self.limit().unwrap_or(usize::MAX);
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(size).filter(|&n| n <= limit)
            })
            .map(|_| ())
            .map_err(|_| BackendError::OutOfMemory { requested: size })
    }

    /// Gives back `size` claimed bytes.
    fn unclaim(&self, size: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some(held.saturating_sub(size))
            });
    }
}

impl<B: Backend> Backend for LimitAdaptor<B> {
    forward_identity!();

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.claim(size)?;
        self.inner.reserve(size).inspect_err(|_| self.unclaim(size))
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        // SAFETY: the caller's contract for `release` is passed on
        // unchanged to the inner backend.
        unsafe { self.inner.release(addr, size) }?;
        self.unclaim(size);
        Ok(())
    }

    forward_capabilities!();
}

impl<B: Backend> VirtualMemory for LimitAdaptor<B> {
    forward_ranges!();

    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let vmm = self.inner.vmm()?;
        self.claim(size)?;
        vmm.map(addr, size).inspect_err(|_| self.unclaim(size))
    }

    unsafe fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let vmm = self.inner.vmm()?;
        // SAFETY: the caller's contract for `unmap` is passed on unchanged
        // to the inner backend.
        let result = unsafe { vmm.unmap(addr, size) };
        self.unclaim(match &result {
            Ok(()) => size,
            Err(e) => e.unmapped_bytes(),
        });
        result
    }
}

/// A backend whose chosen reservations (or unmaps) fail: for tests of the
/// error paths, like RMM's `failure_callback_resource_adaptor`. Reservations
/// are counted from 1 across [`Backend::reserve`] and [`VirtualMemory::map`];
/// a call picked by [`FaultAdaptor::fail_reservation`] fails with
/// [`BackendError::Injected`] without reaching the inner backend. Unmaps are
/// counted apart ([`FaultAdaptor::fail_unmap`]); the adaptor keeps its own
/// table of the mapping units mapped through it, so a fault can stop an
/// unmap of several units between two of them, as a driver would.
///
/// ```
/// use graphalloc::backend::{Backend, FaultAdaptor, HostBackend};
/// let faulty = FaultAdaptor::new(HostBackend::new(0, 1 << 20));
/// faulty.fail_reservation(1); // the next reservation fails
/// assert!(faulty.reserve(4096).is_err());
/// let seg = faulty.reserve(4096).unwrap();
/// assert_eq!(faulty.inner().outstanding_bytes(), 4096);
/// // SAFETY: the segment holds no block and is not used again.
/// unsafe { faulty.release(seg, 4096) }.unwrap();
/// ```
pub struct FaultAdaptor<B> {
    inner: B,
    /// Reservation attempts so far, failed ones included.
    reservations: AtomicU64,
    /// 1-based reservation numbers that must fail.
    faults: Mutex<BTreeSet<u64>>,
    /// Unmap calls so far.
    unmaps: AtomicU64,
    /// 1-based unmap numbers that must fail → units unmapped first.
    unmap_faults: Mutex<BTreeMap<u64, usize>>,
    /// Mapping units mapped through this adaptor now: start → size.
    units: Mutex<BTreeMap<u64, usize>>,
    /// While set, every segment release fails (and keeps the segment).
    failing_releases: AtomicBool,
}

impl<B: fmt::Debug> fmt::Debug for FaultAdaptor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultAdaptor")
            .field("inner", &self.inner)
            .field("reservations", &self.reservations())
            .field("pending_faults", &self.faults.lock().len())
            .finish()
    }
}

impl<B> FaultAdaptor<B> {
    /// `inner`, with no fault pending.
    pub fn new(inner: B) -> Self {
        FaultAdaptor {
            inner,
            reservations: AtomicU64::new(0),
            faults: Mutex::new(BTreeSet::new()),
            unmaps: AtomicU64::new(0),
            unmap_faults: Mutex::new(BTreeMap::new()),
            units: Mutex::new(BTreeMap::new()),
            failing_releases: AtomicBool::new(false),
        }
    }

    /// Makes every segment release fail with [`BackendError::Injected`]
    /// (`nth` 0), keeping the segment, while `on`.
    pub fn fail_releases(&self, on: bool) {
        self.failing_releases.store(on, Ordering::SeqCst);
    }

    /// Makes the `n`th [`VirtualMemory::unmap`] from now (`1` = the next
    /// one; `0` counts as `1`) fail after unmapping only its first
    /// `units_first` mapping units: with none, [`BackendError::Injected`]
    /// and nothing changed; else [`BackendError::PartlyUnmapped`] saying how
    /// many bytes went, as a driver failing part way through would.
    pub fn fail_unmap(&self, n: u64, units_first: usize) {
        let base = self.unmaps.load(Ordering::SeqCst);
        self.unmap_faults
            .lock()
            .insert(base.saturating_add(n.max(1)), units_first);
    }

    /// Makes the `n`th reservation from now fail (`1` = the next one; `0`
    /// counts as `1`) with [`BackendError::Injected`]. Calls add up: several
    /// can be pending.
    pub fn fail_reservation(&self, n: u64) {
        let base = self.reservations.load(Ordering::SeqCst);
        self.faults.lock().insert(base.saturating_add(n.max(1)));
    }

    /// Drops every pending injected fault.
    pub fn clear_faults(&self) {
        self.faults.lock().clear();
        self.unmap_faults.lock().clear();
    }

    /// Reservation attempts seen so far (segments and mappings), injected
    /// failures included.
    pub fn reservations(&self) -> u64 {
        self.reservations.load(Ordering::SeqCst)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Counts one reservation; fails it if a fault was injected at its number.
    fn admit(&self) -> Result<(), BackendError> {
        let nth = self.reservations.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.lock().remove(&nth) {
            return Err(BackendError::Injected { nth });
        }
        Ok(())
    }
}

impl<B: Backend> Backend for FaultAdaptor<B> {
    forward_identity!();

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.admit()?;
        self.inner.reserve(size)
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        if self.failing_releases.load(Ordering::SeqCst) {
            return Err(BackendError::Injected { nth: 0 });
        }
        // SAFETY: the caller's contract for `release` is passed on
        // unchanged to the inner backend.
        unsafe { self.inner.release(addr, size) }
    }

    forward_capabilities!();
}

impl<B: Backend> VirtualMemory for FaultAdaptor<B> {
    forward_ranges!();

    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let vmm = self.inner.vmm()?;
        self.admit()?;
        vmm.map(addr, size)?;
        self.units.lock().insert(addr, size);
        Ok(())
    }

    unsafe fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let vmm = self.inner.vmm()?;
        let nth = self.unmaps.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = self.unmap_faults.lock().remove(&nth);
        let end = addr.saturating_add(size as u64);
        // The units a fault lets go first (all of them with no fault).
        let done = {
            let units = self.units.lock();
            let count = fault.unwrap_or(usize::MAX);
            units
                .range(addr..end)
                .take(count)
                .map(|(_, &n)| n)
                .sum::<usize>()
                .min(size)
        };
        let result = match fault {
            // SAFETY: the caller's contract for `unmap`, passed on.
            None => unsafe { vmm.unmap(addr, size) },
            Some(_) if done == 0 => return Err(BackendError::Injected { nth }),
            // SAFETY: the caller's contract for `unmap` covers `[addr, addr
            // + size)`, so it covers its prefix `[addr, addr + done)` too;
            // passed on.
            Some(_) => unsafe { vmm.unmap(addr, done) }.and(Err(BackendError::PartlyUnmapped {
                unmapped: done,
                requested: size,
                cause: Box::new(BackendError::Injected { nth }),
            })),
        };
        let gone = match &result {
            Ok(()) => size,
            Err(e) => e.unmapped_bytes(),
        };
        let mut units = self.units.lock();
        let starts: Vec<u64> = units
            .range(addr..addr.saturating_add(gone as u64))
            .map(|(&start, _)| start)
            .collect();
        for start in starts {
            units.remove(&start);
        }
        result
    }
}
