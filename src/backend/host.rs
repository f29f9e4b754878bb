//! Host memory standing in for a device.

#[cfg(not(miri))]
use super::adaptors::all_capabilities;
use super::{
    Backend, BackendError, BackendKind, CaptureStatus, Copies, MemInfo, StreamOrder, VirtualMemory,
};
use crate::stream::LAST_BUILTIN_STREAM;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::{BTreeMap, HashMap};

/// Segment alignment on the host backend (a page).
const HOST_SEGMENT_ALIGN: usize = 4096;

/// The host backend's granularity for mapped ranges, like a GPU's.
const HOST_PAGE: usize = 2 << 20;

/// The first handle [`HostBackend::create_stream`] gives out on device 0;
/// device `d`'s start `d << 32` above it, so that streams of different
/// devices have different handles, as CUDA's do.
const FIRST_HOST_STREAM: u64 = 0x5757_0000;

/// Simulated streams, events and captures.
#[derive(Debug, Default)]
struct Streams {
    /// stream → (events recorded on it so far, events completed so far)
    streams: HashMap<u64, (u64, u64)>,
    /// event → (stream, its sequence number on that stream), 0 = never
    /// recorded; `None` once destroyed
    events: Vec<Option<(u64, u64)>>,
    /// stream → id of the capture in progress on it
    captures: HashMap<u64, u64>,
    next_stream: u64,
    next_capture: u64,
}

/// A device simulated in host memory.
///
/// Segments are real host allocations, so blocks can be written and read
/// back. It has a fixed capacity, so out-of-memory paths are testable.
/// (Injected failures are an adaptor: [`super::FaultAdaptor`].)
///
/// Like a driver, it checks what it is given against what it handed out: a
/// release of an address that is not a held segment (or with another
/// size), a map or unmap outside a reserved range, unaligned, or of pages
/// not in the state the call needs, or an unmap of part of a mapping unit
/// (what one map call mapped: [`VirtualMemory`]), is
/// [`BackendError::InvalidAddress`] and changes nothing; an unknown event
/// is [`BackendError::UnknownEvent`].
///
/// Streams and events are simulated too: an event recorded on a stream
/// completes only when a test says the stream's work is done
/// ([`HostBackend::complete_stream`]) or someone waits for it (waiting stands
/// for the host blocking until the device catches up). Captures are begun
/// and ended by the test ([`HostBackend::begin_capture`]). The built-in
/// streams 0 (the default stream), 1 and 2 always exist, as in every CUDA
/// context.
///
/// ```
/// use graphalloc::{Backend, HostBackend};
/// let host = HostBackend::new(0, 1 << 20);
/// let seg = host.reserve(4096).unwrap();
/// assert_eq!(host.outstanding_bytes(), 4096);
/// // SAFETY: nothing uses either range: the first was never handed out,
/// // the second holds no block and is not touched again.
/// unsafe {
///     assert!(host.release(0x1000, 4096).is_err()); // never handed out
///     host.release(seg, 4096).unwrap();
/// }
/// assert_eq!(host.outstanding_bytes(), 0);
/// ```
#[derive(Debug)]
pub struct HostBackend {
    ordinal: usize,
    capacity: usize,
    used: AtomicUsize,
    reservations: AtomicU64,
    releases: AtomicU64,
    /// Segments held: address → size. A std mutex in both builds: the
    /// simulated device's own table, not part of the concurrent core the
    /// loom models explore (nothing modelled runs while it is held).
    segments: std::sync::Mutex<HashMap<u64, usize>>,
    streams: Mutex<Streams>,
    /// Address ranges: aligned start → the range.
    ranges: Mutex<HashMap<u64, Range>>,
}

/// An address range from `reserve_range`.
#[derive(Debug)]
struct Range {
    /// The mmap address and length (the range plus alignment slack).
    raw: (u64, usize),
    /// The size asked for.
    size: usize,
    /// Mapping units mapped now: start → size.
    units: BTreeMap<u64, usize>,
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
            segments: std::sync::Mutex::new(HashMap::new()),
            ranges: Mutex::new(HashMap::new()),
            streams: Mutex::new(Streams {
                // The built-in streams every CUDA context knows: 0 (legacy
                // default), 1 (`CU_STREAM_LEGACY`), 2 (per-thread default).
                streams: (0..=LAST_BUILTIN_STREAM).map(|s| (s, (0, 0))).collect(),
                next_stream: FIRST_HOST_STREAM + ((ordinal as u64) << 32),
                next_capture: 1,
                ..Streams::default()
            }),
        }
    }

    /// Creates a simulated stream and returns its handle.
    pub fn create_stream(&self) -> u64 {
        let mut s = self.streams.lock();
        let handle = s.next_stream;
        s.next_stream += 1;
        s.streams.insert(handle, (0, 0));
        handle
    }

    /// Marks all work queued on `stream` so far as done: every event
    /// recorded on it completes.
    pub fn complete_stream(&self, stream: u64) {
        if let Some((recorded, completed)) = self.streams.lock().streams.get_mut(&stream) {
            *completed = *recorded;
        }
    }

    /// The work of `stream` so far: `(recorded, completed)`, the events
    /// recorded on it (each gets the next sequence number, from 1) and how
    /// many of them are complete (an event is complete once `completed`
    /// reaches its number: by [`HostBackend::complete_stream`], or by a
    /// wait for it or for a later event of the stream). `None` for a stream
    /// this device does not know. Tests use it to tell whether the
    /// allocator waited for a stream's work.
    pub fn stream_progress(&self, stream: u64) -> Option<(u64, u64)> {
        self.streams.lock().streams.get(&stream).copied()
    }

    /// Destroys the simulated `stream` (as `cuStreamDestroy` would): it is
    /// unknown from now on; events recorded on it that had not completed
    /// never will.
    pub fn destroy_stream(&self, stream: u64) {
        self.streams.lock().streams.remove(&stream);
    }

    /// Starts capturing `stream` into a (simulated) graph; returns the
    /// capture id.
    ///
    /// CUDA refuses to capture the legacy default stream (handles 0 and 1);
    /// the allocator relies on that and never asks whether stream 0 is being
    /// captured, so a capture of stream 0 here routes nothing to a pool.
    /// Capture a stream of [`HostBackend::create_stream`] instead.
    pub fn begin_capture(&self, stream: u64) -> u64 {
        let mut s = self.streams.lock();
        let id = s.next_capture;
        s.next_capture += 1;
        s.captures.insert(stream, id);
        id
    }

    /// Ends the capture on `stream`.
    pub fn end_capture(&self, stream: u64) {
        self.streams.lock().captures.remove(&stream);
    }

    /// Bytes in segments reserved and not yet released.
    pub fn outstanding_bytes(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Reservation attempts (segments and mappings) that reached this
    /// backend, failed ones included.
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

    /// Events created and not yet destroyed.
    pub fn live_events(&self) -> usize {
        self.streams.lock().events.iter().flatten().count()
    }

    /// Counts one reservation (a segment or mapped pages) of `size` bytes
    /// and claims the capacity, so that concurrent reservations never
    /// exceed it.
    fn admit(&self, size: usize) -> Result<(), BackendError> {
        self.reservations.fetch_add(1, Ordering::SeqCst);
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(size).filter(|&n| n <= self.capacity)
            })
            .map(|_| ())
            .map_err(|_| BackendError::OutOfMemory { requested: size })
    }

    fn lock_segments(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.segments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn layout(size: usize) -> Result<Layout, BackendError> {
        Layout::from_size_align(size, HOST_SEGMENT_ALIGN)
            .map_err(|_| BackendError::OutOfMemory { requested: size })
    }
}

/// An [`BackendError::InvalidAddress`] for `call`.
fn invalid(call: &'static str, addr: u64, size: usize, why: &'static str) -> BackendError {
    BackendError::InvalidAddress {
        call,
        addr,
        size,
        why,
    }
}

impl HostBackend {
    /// Checks that `[addr, addr + size)` is a non-empty, page-aligned part
    /// of a reserved range, and runs `f` on that range's units under the
    /// lock, with the range's end.
    fn with_units<T>(
        &self,
        call: &'static str,
        addr: u64,
        size: usize,
        f: impl FnOnce(&mut BTreeMap<u64, usize>, u64) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let page = HOST_PAGE as u64;
        if size == 0 || !addr.is_multiple_of(page) || !(size as u64).is_multiple_of(page) {
            return Err(invalid(call, addr, size, "empty or not page-aligned"));
        }
        let end = addr.checked_add(size as u64).ok_or(invalid(
            call,
            addr,
            size,
            "past the address space",
        ))?;
        let mut ranges = self.ranges.lock();
        let range = ranges
            .iter_mut()
            .find(|(&start, r)| start <= addr && end <= start + r.size as u64)
            .map(|(_, r)| r)
            .ok_or(invalid(call, addr, size, "not inside a reserved range"))?;
        f(&mut range.units, end)
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
        let layout = Self::layout(size.max(1))?;
        self.admit(size)?;
        // SAFETY: `layout` has a non-zero size (at least 1 byte).
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return Err(BackendError::OutOfMemory { requested: size });
        }
        self.lock_segments().insert(ptr as u64, size);
        Ok(ptr as u64)
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        {
            let mut segments = self.lock_segments();
            match segments.get(&addr) {
                Some(&held) if held == size => segments.remove(&addr),
                Some(_) => {
                    return Err(invalid("release", addr, size, "reserved with another size"))
                }
                None => return Err(invalid("release", addr, size, "not a held segment")),
            };
        }
        let layout = Self::layout(size.max(1))?;
        // SAFETY: `addr` was a held segment of exactly `size` bytes, so it
        // came from `alloc(layout)` with this very layout and is still
        // allocated; it was taken out of the table above, so it is
        // deallocated once; by this method's contract nothing accesses it
        // again.
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

    #[cfg(not(miri))]
    all_capabilities!();

    // Miri cannot model inaccessible (PROT_NONE) mappings, which reserving
    // an address range takes: under Miri the host backend offers no virtual
    // memory, so expandable segments fall back to plain ones (see
    // docs/reliability.md).
    #[cfg(miri)]
    fn as_virtual_memory(&self) -> Option<&dyn VirtualMemory> {
        None
    }

    #[cfg(miri)]
    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        Some(self)
    }

    #[cfg(miri)]
    fn as_copies(&self) -> Option<&dyn Copies> {
        Some(self)
    }
}

impl VirtualMemory for HostBackend {
    fn page_size(&self) -> Result<usize, BackendError> {
        Ok(HOST_PAGE)
    }

    fn reserve_range(&self, size: usize) -> Result<u64, BackendError> {
        let len = size
            .checked_add(HOST_PAGE)
            .ok_or(BackendError::OutOfMemory { requested: size })?;
        // SAFETY: an anonymous, private, inaccessible mapping at an address of
        // the kernel's choosing: it touches no existing memory.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(BackendError::OutOfMemory { requested: size });
        }
        // Align the start to a page; the slack stays reserved with the range.
        let start = (addr as u64).next_multiple_of(HOST_PAGE as u64);
        let range = Range {
            raw: (addr as u64, len),
            size,
            units: BTreeMap::new(),
        };
        self.ranges.lock().insert(start, range);
        Ok(start)
    }

    unsafe fn release_range(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        let (raw, len) = {
            let mut ranges = self.ranges.lock();
            match ranges.get(&addr) {
                None => return Err(invalid("release_range", addr, size, "not a held range")),
                Some(r) if r.size != size => {
                    return Err(invalid(
                        "release_range",
                        addr,
                        size,
                        "reserved with another size",
                    ))
                }
                Some(r) if !r.units.is_empty() => {
                    return Err(invalid("release_range", addr, size, "pages still mapped"))
                }
                Some(_) => ranges.remove(&addr).map(|r| r.raw).unwrap_or_default(),
            }
        };
        // SAFETY: `raw, len` is exactly a mapping made by `reserve_range`,
        // removed from the table so it is unmapped once.
        unsafe { libc::munmap(raw as *mut libc::c_void, len) };
        Ok(())
    }

    fn map(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.with_units("map", addr, size, |units, end| {
            if super::overlaps_units(units, |&n| n, addr, end) {
                return Err(invalid("map", addr, size, "pages already mapped"));
            }
            self.admit(size)?;
            // SAFETY: `[addr, addr + size)` is page-aligned, inside a range
            // from `reserve_range` (checked above), which this process owns
            // and nothing else uses.
            let rc = unsafe {
                libc::mprotect(
                    addr as *mut libc::c_void,
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if rc != 0 {
                self.used.fetch_sub(size, Ordering::SeqCst);
                return Err(BackendError::OutOfMemory { requested: size });
            }
            units.insert(addr, size);
            Ok(())
        })
    }

    unsafe fn unmap(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        self.with_units("unmap", addr, size, |units, end| {
            let whole = super::whole_units(units, |&n| n, addr, end)
                .map_err(|why| invalid("unmap", addr, size, why))?;
            // SAFETY: as in `map`: page-aligned, mapped units of our own
            // range (checked above). The pages' contents are dropped, as
            // device memory's would be; by this method's contract nothing
            // accesses them while they are unmapped.
            unsafe {
                libc::madvise(addr as *mut libc::c_void, size, libc::MADV_DONTNEED);
                libc::mprotect(addr as *mut libc::c_void, size, libc::PROT_NONE);
            }
            for (start, _) in whole {
                units.remove(&start);
            }
            self.used.fetch_sub(size, Ordering::SeqCst);
            self.releases.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

impl StreamOrder for HostBackend {
    fn create_event(&self) -> Result<u64, BackendError> {
        let mut s = self.streams.lock();
        s.events.push(Some((0, 0)));
        Ok(s.events.len() as u64 - 1)
    }

    fn destroy_event(&self, event: u64) -> Result<(), BackendError> {
        let mut s = self.streams.lock();
        match s.events.get_mut(event as usize) {
            Some(slot @ Some(_)) => {
                *slot = None;
                Ok(())
            }
            _ => Err(BackendError::UnknownEvent { event }),
        }
    }

    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError> {
        let mut s = self.streams.lock();
        if !matches!(s.events.get(event as usize), Some(Some(_))) {
            return Err(BackendError::UnknownEvent { event });
        }
        let (recorded, _) = s
            .streams
            .get_mut(&stream)
            .ok_or(BackendError::UnknownStream { stream })?;
        *recorded += 1;
        let seq = *recorded;
        s.events[event as usize] = Some((stream, seq));
        Ok(())
    }

    fn event_complete(&self, event: u64) -> Result<bool, BackendError> {
        let s = self.streams.lock();
        let Some(&Some((stream, seq))) = s.events.get(event as usize) else {
            return Err(BackendError::UnknownEvent { event });
        };
        Ok(seq == 0 || s.streams.get(&stream).is_some_and(|&(_, done)| done >= seq))
    }

    fn wait_event(&self, event: u64) -> Result<(), BackendError> {
        let mut s = self.streams.lock();
        let Some(&Some((stream, seq))) = s.events.get(event as usize) else {
            return Err(BackendError::UnknownEvent { event });
        };
        if let Some((_, completed)) = s.streams.get_mut(&stream) {
            *completed = (*completed).max(seq);
        }
        Ok(())
    }

    /// A simulated stream is idle once every event recorded on it has
    /// completed (its work is what the test recorded on it).
    fn stream_idle(&self, stream: u64) -> Result<bool, BackendError> {
        let s = self.streams.lock();
        let &(recorded, completed) = s
            .streams
            .get(&stream)
            .ok_or(BackendError::UnknownStream { stream })?;
        Ok(completed >= recorded)
    }

    fn created_stream(&self, stream: u64) -> bool {
        self.streams.lock().streams.contains_key(&stream)
    }

    fn create_stream(&self) -> Result<u64, BackendError> {
        Ok(HostBackend::create_stream(self))
    }

    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError> {
        let s = self.streams.lock();
        if !s.streams.contains_key(&stream) {
            return Err(BackendError::UnknownStream { stream });
        }
        Ok(match s.captures.get(&stream) {
            Some(&id) => CaptureStatus::Capturing(id),
            None => CaptureStatus::Idle,
        })
    }
}

impl Copies for HostBackend {
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
