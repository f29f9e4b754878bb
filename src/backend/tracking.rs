//! The tracking adaptor: a record of everything a backend handed out.

use super::adaptors::{forward_capabilities, forward_identity};
use super::{Backend, BackendError, BackendKind, Copies, MemInfo, StreamOrder, VirtualMemory};
use crate::sync::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a [`TrackingAdaptor`] holds.
#[derive(Debug, Default)]
struct Books {
    /// Segments held now: base → size.
    segments: BTreeMap<u64, usize>,
    /// Address ranges held now: base → size.
    ranges: BTreeMap<u64, usize>,
    /// Pages mapped into the ranges now.
    pages: BTreeSet<u64>,
    /// Mapping units mapped now (what each map call mapped): start → size.
    units: BTreeMap<u64, usize>,
    /// Misuse seen so far, in words.
    violations: Vec<String>,
}

/// A backend that records every segment, address range and mapped page it
/// hands out, like RMM's `tracking_resource_adaptor`, so a test can see what
/// an allocator holds and check its calls.
///
/// A call the books say is wrong (a release of a segment that is not held or
/// with another size, a map of a mapped page, an unmap of an unmapped one or
/// of part of a mapping unit, a segment overlapping a held one) is recorded
/// as a violation
/// ([`TrackingAdaptor::violations`]); a release or unmap that is wrong
/// returns [`BackendError::InvalidAddress`] without reaching the inner
/// backend.
///
/// ```
/// use graphalloc::backend::{Backend, HostBackend, TrackingAdaptor};
/// let tracked = TrackingAdaptor::new(HostBackend::new(0, 1 << 20));
/// let seg = tracked.reserve(4096).unwrap();
/// assert_eq!(tracked.segments().get(&seg), Some(&4096));
/// // SAFETY: the segment holds no block and is not used after the second
/// // (successful) release; the first is refused and changes nothing.
/// unsafe {
///     assert!(tracked.release(seg, 8192).is_err()); // not how it was reserved
///     assert_eq!(tracked.violations().len(), 1);
///     tracked.release(seg, 4096).unwrap();
/// }
/// assert!(tracked.segments().is_empty());
/// ```
pub struct TrackingAdaptor<B> {
    inner: B,
    books: Mutex<Books>,
}

impl<B: fmt::Debug> fmt::Debug for TrackingAdaptor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let books = self.books.lock();
        f.debug_struct("TrackingAdaptor")
            .field("inner", &self.inner)
            .field("segments", &books.segments.len())
            .field("ranges", &books.ranges.len())
            .field("pages", &books.pages.len())
            .finish()
    }
}

impl<B: Backend> TrackingAdaptor<B> {
    /// `inner`, tracked from now on.
    pub fn new(inner: B) -> Self {
        TrackingAdaptor {
            inner,
            books: Mutex::new(Books::default()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The segments held now: base → size.
    pub fn segments(&self) -> BTreeMap<u64, usize> {
        self.books.lock().segments.clone()
    }

    /// Address ranges held now (expandable segments): base → size.
    pub fn ranges(&self) -> BTreeMap<u64, usize> {
        self.books.lock().ranges.clone()
    }

    /// Everything the caller did wrong so far.
    pub fn violations(&self) -> Vec<String> {
        self.books.lock().violations.clone()
    }

    /// Bytes mapped into address ranges now.
    pub fn mapped_bytes(&self) -> usize {
        self.books.lock().pages.len() * self.page()
    }

    /// Whether `[addr, addr + len)` lies inside one held segment, or inside
    /// pages mapped into a reserved range.
    pub fn contains(&self, addr: u64, len: usize) -> bool {
        let page = self.page() as u64;
        let books = self.books.lock();
        let in_segment = books
            .segments
            .range(..=addr)
            .next_back()
            .is_some_and(|(&base, &size)| {
                let off = addr - base;
                off < size as u64 && len as u64 <= size as u64 - off
            });
        in_segment || Self::all_mapped(&books.pages, page, addr, len)
    }

    /// Whether `addr` lies in a held segment or in a reserved address range
    /// (mapped or not).
    pub fn in_address_space(&self, addr: u64) -> bool {
        let in_range = self
            .books
            .lock()
            .ranges
            .range(..=addr)
            .next_back()
            .is_some_and(|(&base, &size)| addr - base < size as u64);
        in_range || self.contains(addr, 1)
    }

    /// The inner backend's page size (1 without virtual memory).
    fn page(&self) -> usize {
        self.inner
            .as_virtual_memory()
            .and_then(|v| v.page_size().ok())
            .unwrap_or(1)
            .max(1)
    }

    /// Whether every page touching `[addr, addr + len)` is in `pages`.
    fn all_mapped(pages: &BTreeSet<u64>, page: u64, addr: u64, len: usize) -> bool {
        if pages.is_empty() || len == 0 {
            return false;
        }
        let Some(last) = addr.checked_add(len as u64 - 1) else {
            return false;
        };
        let mut p = addr - addr % page;
        while p <= last {
            if !pages.contains(&p) {
                return false;
            }
            p += page;
        }
        true
    }

    /// The pages of `[addr, addr + size)`, or `None` if that overflows.
    fn pages_of(&self, addr: u64, size: usize) -> Option<Vec<u64>> {
        let end = addr.checked_add(size as u64)?;
        Some((addr..end).step_by(self.page()).collect())
    }
}

/// Records `why` as a violation and returns it as an error.
fn refuse(
    violations: &mut Vec<String>,
    call: &'static str,
    addr: u64,
    size: usize,
    why: &'static str,
) -> BackendError {
    violations.push(format!("{call} of {addr:#x}+{size}: {why}"));
    BackendError::InvalidAddress {
        call,
        addr,
        size,
        why,
    }
}

impl Books {
    /// Takes `addr` out of the segments (or, with `range`, the address
    /// ranges) if it is held there with `size`; else records the violation
    /// and refuses.
    fn take_held(
        &mut self,
        range: bool,
        call: &'static str,
        addr: u64,
        size: usize,
    ) -> Result<(), BackendError> {
        let held = if range {
            &mut self.ranges
        } else {
            &mut self.segments
        };
        let why = match held.get(&addr) {
            Some(&s) if s == size => {
                held.remove(&addr);
                return Ok(());
            }
            Some(_) => "held with another size",
            None => "not held",
        };
        Err(refuse(&mut self.violations, call, addr, size, why))
    }
}

impl<B: Backend> Backend for TrackingAdaptor<B> {
    forward_identity!();

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        let base = self.inner.reserve(size)?;
        // Recorded after the inner backend hands the segment out and removed
        // before it is given back (in `release`), so the recorded set is
        // always a subset of what is really held: an overlap seen is real.
        let mut books = self.books.lock();
        if base % crate::BLOCK_ROUND as u64 != 0 {
            books
                .violations
                .push(format!("segment {base:#x} is not 512-byte aligned"));
        }
        let end = base.saturating_add(size as u64);
        let before = books.segments.range(..=base).next_back();
        let after = books.segments.range(base + 1..).next();
        let overlaps: Vec<(u64, usize)> = before
            .filter(|(&b, &s)| base < b + s as u64)
            .into_iter()
            .chain(after.filter(|(&b, _)| b < end))
            .map(|(&b, &s)| (b, s))
            .collect();
        for (b, s) in overlaps {
            books.violations.push(format!(
                "segment {base:#x}+{size} overlaps held segment {b:#x}+{s}"
            ));
        }
        books.segments.insert(base, size);
        Ok(base)
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.books.lock().take_held(false, "release", addr, size)?;
        // SAFETY: the caller's contract for `release` is passed on
        // unchanged to the inner backend.
        unsafe { self.inner.release(addr, size) }
    }

    forward_capabilities!();
}

impl<B: Backend> VirtualMemory for TrackingAdaptor<B> {
    fn page_size(&self) -> Result<usize, BackendError> {
        self.inner.vmm()?.page_size()
    }

    fn reserve_range(&self, size: usize) -> Result<u64, BackendError> {
        let base = self.inner.vmm()?.reserve_range(size)?;
        self.books.lock().ranges.insert(base, size);
        Ok(base)
    }

    unsafe fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.books
            .lock()
            .take_held(true, "release_range", addr, size)?;
        let vmm = self.inner.vmm()?;
        // SAFETY: the caller's contract for `release_range` is passed on
        // unchanged to the inner backend.
        unsafe { vmm.release_range(addr, size) }
    }

    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.inner.vmm()?.map(addr, size)?;
        let pages = self.pages_of(addr, size).unwrap_or_default();
        let mut books = self.books.lock();
        for p in pages {
            if !books.pages.insert(p) {
                books.violations.push(format!("page {p:#x} mapped twice"));
            }
        }
        books.units.insert(addr, size);
        Ok(())
    }

    unsafe fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let units = {
            let mut books = self.books.lock();
            let end = addr.saturating_add(size as u64);
            match super::whole_units(&books.units, |&n| n, addr, end) {
                Ok(units) => {
                    // Removed before the memory goes back (see `release`).
                    for &(start, len) in &units {
                        books.units.remove(&start);
                        for p in self.pages_of(start, len).unwrap_or_default() {
                            books.pages.remove(&p);
                        }
                    }
                    units
                }
                Err(why) => return Err(refuse(&mut books.violations, "unmap", addr, size, why)),
            }
        };
        let vmm = self.inner.vmm()?;
        // SAFETY: the caller's contract for `unmap` is passed on unchanged
        // to the inner backend.
        unsafe { vmm.unmap(addr, size) }.inspect_err(|e| {
            // Units past what the backend unmapped are still mapped.
            let done = e.unmapped_bytes() as u64;
            let mut books = self.books.lock();
            for &(start, len) in units.iter().filter(|u| u.0 - addr >= done) {
                books.units.insert(start, len);
                books
                    .pages
                    .extend(self.pages_of(start, len).unwrap_or_default());
            }
        })
    }
}
