//! The parts of the API the oracle's `run_ops` does not drive: streams,
//! `record_stream`, captures (simulated by the host backend) and capture
//! pools, over a tracked host device; and the whole C ABI on the
//! process-wide allocator. Included by the fuzz target `ops` with `#[path]`;
//! it needs the oracle module as `crate::oracle`.

use crate::oracle::{assert_empty, round_up, stamp, tracked_allocator_with, verify_stamp, Bytes};
use graphalloc::ffi::*;
use graphalloc::{Config, DevicePtr, Error, GraphModeGuard};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_void, CStr};

/// The simulated device: small, so that large requests run it out of
/// memory and every segment costs little to reserve and release (under
/// AddressSanitizer a free poisons 1/8 of its bytes in shadow memory).
const CAPACITY: usize = 32 << 20;
const MAX_OPS: usize = 1500;

/// Argument decoders on top of the oracle's byte reader.
trait Args {
    /// A request size: mostly small, sometimes large, rarely absurd.
    fn size(&mut self) -> usize;
    /// One of `items`, or `None` if there is none.
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T>;
}

impl Args for Bytes<'_> {
    fn size(&mut self) -> usize {
        let raw = self.u16() as usize;
        match self.u8() % 16 {
            0..=7 => 1 + raw % 4096,
            8..=11 => 1 + raw * 16,
            12 | 13 => 1 + raw * 256,
            14 => [0, usize::MAX, usize::MAX - 511, 1 << 40, CAPACITY + 1][raw % 5],
            _ => 1 + raw * 1024,
        }
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.u8() as usize % items.len()])
    }
}

#[derive(Clone, Copy)]
struct Live {
    size: usize,
    stream: u64,
    tag: u8,
}

/// Streams, `record_stream`, captures and capture pools, checked after every
/// step: live blocks never overlap, a block freed after `record_stream` on
/// another stream is not handed out again before that stream's work queued
/// by the free is complete, the counts agree, and the teardown leaves
/// nothing.
///
/// "Complete" is read from the simulated device itself
/// ([`graphalloc::backend::HostBackend::stream_progress`]): the work is done
/// when the body marked the stream done, or when the allocator waited for it
/// (an out-of-memory retry, an expandable segment's reclaim, `empty_cache`,
/// a pool dropped with deferred frees all wait for events, and a wait on the
/// host completes all earlier work of the stream). So the check counts
/// exactly the waits the allocator made, no more and no fewer.
pub fn run_streams(data: &[u8]) {
    let mut b = Bytes::new(data);
    let text = match b.u8() % 4 {
        0 => "",
        1 => "shards:2",
        2 => "expandable_segments:true",
        _ => "shards:3,expandable_segments:true",
    };
    let config = Config::parse(text).expect("a valid configuration");
    let (alloc, backend) = tracked_allocator_with(CAPACITY, &config);
    let host = backend.host();
    let streams = [0, host.create_stream(), host.create_stream(), 0xbad_5eed];
    let pools = [alloc.create_pool(), alloc.create_pool()];
    let mut guards: Vec<GraphModeGuard> = Vec::new();
    let mut capturing: BTreeSet<u64> = BTreeSet::new();
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    let mut recorded: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    // Freed blocks that must not be reused yet: start -> (end, stream ->
    // the sequence number its event on that stream gets at least).
    let mut quarantine: BTreeMap<u64, (u64, BTreeMap<u64, u64>)> = BTreeMap::new();
    let progress = |stream: u64| {
        host.stream_progress(stream)
            .expect("a stream of the device")
    };
    // Drops what the device has completed since (the allocator's waits
    // included).
    let settle = |q: &mut BTreeMap<u64, (u64, BTreeMap<u64, u64>)>| {
        q.retain(|_, (_, waiting)| {
            waiting.retain(|&s, &mut seq| progress(s).1 < seq);
            !waiting.is_empty()
        })
    };
    let mut ops = 0;
    // GRAPHALLOC_OPS_TRACE=1 prints each operation (to replay a failure).
    let trace = std::env::var_os("GRAPHALLOC_OPS_TRACE").is_some();
    while !b.done() && ops < MAX_OPS {
        ops += 1;
        let op = b.u8() % 12;
        if trace {
            eprintln!(
                "op {op:2} at byte {}: live {}, capturing {capturing:?}, guards {}, \
                 quarantine {quarantine:x?}, (recorded, completed) {:?}, oom retries {}",
                b.pos - 1,
                live.len(),
                guards.len(),
                streams[..3]
                    .iter()
                    .map(|&s| progress(s))
                    .collect::<Vec<_>>(),
                alloc.stats().total.oom_retries
            );
        }
        match op {
            0..=3 => {
                let stream = b.pick(&streams).unwrap();
                let size = b.size();
                let align = 1usize << (b.u8() % 14);
                let r = alloc.allocate_on(0, stream, size, align);
                // What the allocator waited for on the way may be reused.
                settle(&mut quarantine);
                if trace {
                    let pool = r.as_ref().ok().and_then(|&p| alloc.pool_of(p));
                    eprintln!(
                        "   allocate_on({stream:#x}, {size}, {align}) = {r:x?} pool {pool:?}"
                    );
                }
                match r {
                    Ok(p) => {
                        let ptr = p.addr();
                        assert_eq!(ptr % align as u64, 0, "misaligned");
                        let end = ptr + round_up(size, 512) as u64;
                        if let Some((&s, l)) = live.range(..end).next_back() {
                            let other_end = s + round_up(l.size, 512) as u64;
                            assert!(other_end <= ptr || s >= end, "overlap with {s:#x}");
                        }
                        if let Some((&q, (qend, waiting))) = quarantine.range(..end).next_back() {
                            assert!(
                                *qend <= ptr,
                                "{ptr:#x}..{end:#x} reuses {q:#x}, still used by (stream, event) \
                                 {waiting:x?}, device: {:x?}",
                                waiting.keys().map(|&s| progress(s)).collect::<Vec<_>>()
                            );
                        }
                        let tag = b.u8();
                        stamp(ptr, size, tag);
                        live.insert(ptr, Live { size, stream, tag });
                    }
                    Err(Error::UnknownStream { .. }) => assert_eq!(stream, streams[3]),
                    Err(
                        Error::ZeroSize | Error::TooLarge { .. } | Error::InvalidAlignment { .. },
                    ) => {}
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(e) => panic!("allocate_on({size}, {align}, {stream:#x}): {e}"),
                }
            }
            4 | 5 => {
                let keys: Vec<u64> = live.keys().copied().collect();
                if let Some(ptr) = b.pick(&keys) {
                    let l = live.remove(&ptr).unwrap();
                    let pool = alloc.pool_of(DevicePtr::new(ptr));
                    if trace {
                        eprintln!("   free({ptr:#x}) pool {pool:?}, stream {:#x}", l.stream);
                    }
                    // A pool made on demand for a capture goes (memory and
                    // all) when its last block is freed after it was let go;
                    // only the cache and the two pools held here are checked.
                    let kept = pool.is_none_or(|id| pools.iter().any(|p| p.id() == id));
                    verify_stamp(ptr, l.size, l.tag);
                    // Each other stream gets an event for this free: the
                    // next number on it (or, while it is being captured, a
                    // later one, recorded when the capture has ended).
                    let others: BTreeMap<u64, u64> = recorded
                        .remove(&ptr)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|&s| s != l.stream)
                        .map(|s| (s, progress(s).0 + 1))
                        .collect();
                    alloc
                        .free(DevicePtr::new(ptr))
                        .expect("free of a live block");
                    if trace {
                        let s = alloc.stats();
                        eprintln!(
                            "   uses {others:x?}: pending frees {} (pools {})",
                            s.total.pending_frees, s.pools.pending_frees
                        );
                    }
                    if kept && !others.is_empty() {
                        quarantine.insert(ptr, (ptr + round_up(l.size, 512) as u64, others));
                    }
                    // A second free is an error and changes nothing.
                    if b.u8().is_multiple_of(4) {
                        assert!(alloc.free(DevicePtr::new(ptr)).is_err(), "double free");
                    }
                }
            }
            6 => {
                let keys: Vec<u64> = live.keys().copied().collect();
                let stream = b.pick(&streams).unwrap();
                let ptr = b.pick(&keys).unwrap_or(u64::MAX - b.u8() as u64);
                let r = alloc.record_stream(DevicePtr::new(ptr), stream);
                if trace {
                    eprintln!("   record_stream({ptr:#x}, {stream:#x}) = {r:x?}");
                }
                match r {
                    Ok(()) => {
                        assert!(live.contains_key(&ptr));
                        recorded.entry(ptr).or_default().insert(stream);
                    }
                    Err(_) => assert!(!live.contains_key(&ptr) || stream == streams[3]),
                }
            }
            7 => {
                let stream = b.pick(&streams[1..3]).unwrap();
                host.complete_stream(stream);
            }
            8 => {
                let stream = b.pick(&streams[..3]).unwrap();
                if capturing.remove(&stream) {
                    host.end_capture(stream);
                } else {
                    host.begin_capture(stream);
                    capturing.insert(stream);
                }
            }
            9 => {
                let stream = b.pick(&streams).unwrap();
                let pool = &pools[b.u8() as usize % 2];
                match b.u8() % 3 {
                    0 => alloc.set_capture_pool(stream, pool).expect("own pool"),
                    1 => drop(alloc.clear_capture_pool(0, stream)),
                    _ => drop(alloc.release_capture_pools()),
                }
            }
            10 => {
                if b.u8().is_multiple_of(2) {
                    guards.push(alloc.enter_graph_mode(&pools[b.u8() as usize % 2]).unwrap());
                } else if !guards.is_empty() {
                    let i = b.u8() as usize % guards.len();
                    drop(guards.remove(i));
                }
            }
            _ => {
                if b.u8().is_multiple_of(2) {
                    alloc.empty_cache().expect("empty_cache");
                } else {
                    let _ = pools[b.u8() as usize % 2].reset();
                }
            }
        }
        let s = alloc.stats();
        assert_eq!(s.total.live_blocks, live.len(), "live blocks\n{s}");
        assert_eq!(alloc.live_pointers(), live.len());
        assert_eq!(s.total.allocations - s.total.frees, live.len() as u64);
        assert!(s.total.allocated_bytes <= s.total.reserved_bytes, "{s}");
        let violations = backend.violations();
        assert!(violations.is_empty(), "backend violations: {violations:?}");
    }
    // Teardown: nothing may be left.
    guards.clear();
    for (ptr, l) in std::mem::take(&mut live) {
        verify_stamp(ptr, l.size, l.tag);
        alloc.free(DevicePtr::new(ptr)).expect("teardown free");
    }
    for stream in capturing {
        host.end_capture(stream);
    }
    for &stream in &streams {
        host.complete_stream(stream);
        drop(alloc.clear_capture_pool(0, stream));
    }
    alloc.release_capture_pools();
    drop(pools);
    alloc.empty_cache().expect("empty_cache");
    assert_empty(&alloc, &backend);
}

// ---------------------------------------------------------------------------
// The C ABI on the process-wide allocator.

/// The configuration of the process-wide allocator in the fuzz process.
pub const C_CONF: &str = "backend:host,host_devices:2,host_capacity:32MiB,expandable_segments:true";

/// `graphalloc_malloc` on the process-wide allocator of this process,
/// which is on the host backend ([`C_CONF`]).
pub fn c_malloc(size: isize, device: i32, stream: *mut c_void) -> *mut c_void {
    // SAFETY: host stream handles are tags the host backend checks and never
    // dereferences, so any handle is a valid argument there.
    unsafe { graphalloc_malloc(size, device, stream) }
}

/// `graphalloc_record_stream` on the host backend, as [`c_malloc`].
pub fn c_record_stream(ptr: *mut c_void, stream: *mut c_void) -> i32 {
    // SAFETY: as in `c_malloc`.
    unsafe { graphalloc_record_stream(ptr, stream) }
}

thread_local! {
    /// Out-of-memory reports the C observer got on this thread.
    static OOM_REPORTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Configures the process-wide allocator ([`C_CONF`], unless
/// `GRAPHALLOC_CONF` is set) and installs the out-of-memory observer, once
/// per process.
pub fn setup_c_abi() {
    static SETUP: std::sync::Once = std::sync::Once::new();
    SETUP.call_once(|| {
        if std::env::var_os("GRAPHALLOC_CONF").is_none() {
            std::env::set_var("GRAPHALLOC_CONF", C_CONF);
        }
        graphalloc_set_log_errors(0);
        // SAFETY: `count_oom` may run on any thread, needs no user data,
        // and cannot unwind.
        let rc = unsafe { graphalloc_set_oom_observer(Some(count_oom), std::ptr::null_mut()) };
        assert_eq!(rc, 0, "{}", last_error());
    });
}

/// The C observer of out-of-memory failures: counts them on the failing
/// thread (where observers run), so that each failed malloc can be checked
/// to report exactly once.
unsafe extern "C" fn count_oom(report: *const GraphallocOomReport, _user_data: *mut c_void) {
    // SAFETY: graphalloc passes a report that is valid during the call.
    let requested = unsafe { (*report).requested };
    if requested > 0 {
        OOM_REPORTS.with(|n| n.set(n.get() + 1));
    }
}

/// The last C error's text.
pub fn last_error() -> String {
    // SAFETY: never null; valid until this thread's next graphalloc call.
    unsafe { CStr::from_ptr(graphalloc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Fails if the latest C call caught a panic inside the boundary.
pub fn no_caught_panic(what: &str) {
    let e = last_error();
    assert!(!e.contains("panicked"), "{what}: {e}");
}

/// Every function of the C ABI with arguments from the input (absurd
/// sizes, devices, streams, pointers and pool ids included); no call may
/// panic (not even one the boundary catches), each malloc that runs out of
/// memory is reported exactly once to the out-of-memory observer, and the
/// process-wide allocator ends each input as it started: no live block, no
/// graph mode.
pub fn run_c_abi(data: &[u8]) {
    setup_c_abi();
    let mut b = Bytes::new(data);
    let devices = [0, 1, -1, 2, i32::MIN, i32::MAX];
    let streams = [0usize, 0, 1, usize::MAX];
    let mut live: Vec<usize> = Vec::new();
    let mut pools: Vec<u64> = Vec::new();
    let mut depth = 0;
    let mut ops = 0;
    while !b.done() && ops < MAX_OPS {
        ops += 1;
        let stream = b.pick(&streams).unwrap() as *mut c_void;
        let device = b.pick(&devices).unwrap();
        match b.u8() % 14 {
            0..=3 => {
                let size = b.size();
                let size = if b.u8().is_multiple_of(32) {
                    (size as isize).wrapping_neg()
                } else {
                    size as isize
                };
                let reports = OOM_REPORTS.get();
                let p = c_malloc(size, device, stream);
                no_caught_panic("malloc");
                let oom = p.is_null() && last_error().contains("out of memory on device");
                assert_eq!(
                    OOM_REPORTS.get() - reports,
                    usize::from(oom),
                    "one report per OOM"
                );
                if p.is_null() {
                    assert_eq!(
                        last_error().is_empty(),
                        size == 0 && (0..2).contains(&device)
                    );
                } else {
                    assert_eq!(p as usize % MALLOC_ALIGNMENT, 0);
                    live.push(p as usize);
                }
            }
            4 | 5 => {
                if let Some(i) = (!live.is_empty()).then(|| b.u16() as usize % live.len()) {
                    let p = live.swap_remove(i);
                    graphalloc_free(p as *mut c_void, -1, device, stream);
                    assert_eq!(last_error(), "", "free of a live block");
                }
            }
            6 => {
                let base = live.first().copied().unwrap_or(0);
                let p = base.wrapping_add(b.u16() as usize) as *mut c_void;
                if !live.contains(&(p as usize)) && !p.is_null() {
                    graphalloc_free(p, 0, device, stream);
                    no_caught_panic("bad free");
                    assert!(!last_error().is_empty(), "a bad free was accepted");
                }
            }
            7 => {
                let p = b.pick(&live).unwrap_or(b.u16() as usize);
                c_record_stream(p as *mut c_void, stream);
                no_caught_panic("record_stream");
            }
            8 => {
                let id = graphalloc_pool_create(device);
                no_caught_panic("pool_create");
                assert_eq!(id != 0, (0..2).contains(&device));
                if id != 0 {
                    pools.push(id);
                }
            }
            9 => {
                let pool = b.pick(&pools).unwrap_or(u64::MAX);
                match b.u8() % 5 {
                    0 => {
                        if graphalloc_pool_release(pool) == 0 {
                            pools.retain(|&p| p != pool);
                        }
                    }
                    1 => drop(graphalloc_pool_reset(pool)),
                    2 => drop(graphalloc_set_capture_pool(pool, stream)),
                    3 => drop(graphalloc_clear_capture_pool(device, stream)),
                    _ => drop(graphalloc_release_capture_pools()),
                }
                no_caught_panic("pool call");
            }
            10 => {
                let pool = b.pick(&pools).unwrap_or(0);
                if graphalloc_begin_graph_mode(pool) == 0 {
                    depth += 1;
                }
                no_caught_panic("begin_graph_mode");
            }
            11 => {
                let rc = graphalloc_end_graph_mode();
                assert_eq!(rc == 0, depth > 0);
                depth -= usize::from(rc == 0);
            }
            12 => {
                let mut s = GraphallocStats::default();
                // SAFETY: `s` is writable.
                assert_eq!(unsafe { graphalloc_stats(&mut s) }, 0);
                assert_eq!(s.total.live_blocks, live.len() as u64);
                let mut ps = GraphallocPoolStats::default();
                let pool = b.pick(&pools).unwrap_or(0);
                // SAFETY: `ps` is writable, null is refused.
                unsafe {
                    graphalloc_device_stats(device, &mut ps);
                    graphalloc_pool_stats(pool, &mut ps);
                    graphalloc_pool_stats(pool, std::ptr::null_mut());
                }
                no_caught_panic("stats");
            }
            _ => {
                if b.u8().is_multiple_of(2) {
                    assert!(graphalloc_empty_cache() >= 0, "{}", last_error());
                } else {
                    assert_eq!(graphalloc_reset_peak_stats(), 0);
                }
                assert_eq!(graphalloc_graph_mode_depth(), depth as i32);
            }
        }
    }
    while depth > 0 {
        assert_eq!(graphalloc_end_graph_mode(), 0);
        depth -= 1;
    }
    for p in live {
        graphalloc_free(p as *mut c_void, 0, 0, std::ptr::null_mut());
        assert_eq!(last_error(), "");
    }
    for &stream in &streams[..] {
        for device in [0, 1] {
            graphalloc_clear_capture_pool(device, stream as *mut c_void);
        }
    }
    for pool in pools {
        assert_eq!(graphalloc_pool_release(pool), 0);
    }
    let mut s = GraphallocStats::default();
    // SAFETY: `s` is writable.
    assert_eq!(unsafe { graphalloc_stats(&mut s) }, 0);
    assert_eq!(s.total.live_blocks, 0);
}
