//! Extreme values for the public entry points `tests/extreme_values.rs`
//! does not reach (issue 13): planned pools and recordings, the memory
//! history and snapshots (and the pickle reader), the out-of-memory
//! observer, the stream registry, the mapping statistics, and their C
//! functions in `src/ffi_plan.rs`, `src/ffi_history.rs`, `src/ffi_oom.rs`,
//! `src/ffi_mapping.rs`. Every call runs under `catch_unwind`; a panic fails
//! the test naming the call. Through C, an error whose text says "panicked"
//! (a panic the boundary caught) fails it too. Three of these failed before
//! their fixes: a planner sum past `usize::MAX` (a panic with overflow
//! checks), a pickle nested 100,000 deep (the drop overflowed the stack and
//! aborted), a hand-built snapshot's sums (now saturating).

mod support;

use graphalloc::ffi::history::*;
use graphalloc::ffi::plan::*;
use graphalloc::ffi::*;
use graphalloc::history::pickle;
use graphalloc::{
    Allocator, Backend, BackendError, BackendKind, Config, DevicePtr, Error, MemInfo, Recording,
};
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use support::call;

const DEVICES: [usize; 4] = [1, 2, 64, usize::MAX];
const STREAMS: [u64; 5] = [0, 1, 0x5757_0000, 0xdead_beef, u64::MAX];

// ---------------------------------------------------------------------------
// Rust: planned pools and recordings

#[test]
fn planned_pools_with_extreme_values() {
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    let other = Allocator::new(Config::host(64 << 20)).unwrap();
    for device in DEVICES {
        for stream in STREAMS {
            let r = call(format!("start_recording_on({device}, {stream:#x})"), || {
                alloc.start_recording_on(device, stream).map(|g| g.finish())
            });
            assert!(matches!(r, Err(Error::InvalidDevice { .. })), "{r:?}");
        }
        let r = call(format!("create_planned_pool_on({device}, [])"), || {
            alloc.create_planned_pool_on(device, &[])
        });
        assert!(matches!(r, Err(Error::InvalidDevice { .. })), "{r:?}");
    }
    // A recording of odd requests: huge ones fail (not recorded), zero and
    // over-aligned ones succeed.
    let (live, mut rec) = alloc.record(|| {
        let mut live = Vec::new();
        for (size, align) in [
            (0, 512),
            (1, 1),
            (usize::MAX, 512),
            (1 << 62, 512),
            (4096, 1 << 21),
            (40 << 20, 512),
            (40 << 20, 512), // out of memory
        ] {
            if let Ok(p) = call(format!("allocate({size}, {align}) recorded"), || {
                alloc.allocate(size, align)
            }) {
                live.push(p);
            }
        }
        let p = live.remove(0);
        alloc.free(p).unwrap();
        live
    });
    for stream in STREAMS {
        call(format!("rename_stream(0, {stream:#x})"), || {
            rec.clone().rename_stream(0, stream)
        });
        call(format!("rename_stream({stream:#x}, 0)"), || {
            rec.clone().rename_stream(stream, 0)
        });
    }
    for device in [0, 1, usize::MAX] {
        call(format!("peak_live_bytes({device})"), || {
            rec.peak_live_bytes(device)
        });
    }
    let empty = Recording::default();
    for recs in [
        vec![],
        vec![&empty],
        vec![&rec],
        vec![&rec, &empty, &rec],
        vec![&rec; 64],
    ] {
        let n = recs.len();
        let pool = call(format!("create_planned_pool({n} recordings)"), || {
            alloc.create_planned_pool(&recs)
        });
        let Ok(pool) = pool else { continue };
        for plan in [0, 1, n, usize::MAX] {
            let r = call(format!("start_plan({plan}) of {n}"), || {
                pool.start_plan(plan)
            });
            assert_eq!(r.is_ok(), plan < n, "start_plan({plan}) of {n}: {r:?}");
        }
        // A foreign allocator's planned capture is refused.
        let r = call("capture_planned on a foreign pool", || {
            other.capture_planned(&pool, 0, || ())
        });
        assert!(matches!(r, Err(Error::ForeignPool { .. })), "{r:?}");
        call("capture_planned(usize::MAX)", || {
            alloc.capture_planned(&pool, usize::MAX, || ())
        })
        .unwrap_err();
        let r = call("capture_planned(0)", || {
            alloc.capture_planned(&pool, 0, || {
                let p = alloc.allocate(4096, 1 << 21).unwrap();
                alloc.free(p).unwrap();
            })
        });
        assert_eq!(r.is_ok(), n > 0, "{r:?}");
        call("plan_stats", || pool.plan_stats()).unwrap();
    }
    rec.rename_stream(0, u64::MAX).unwrap();
    // A recording made by one allocator, planned by another.
    let pool = call("create_planned_pool on another allocator", || {
        other.create_planned_pool(&[&rec])
    });
    drop(pool);
    for p in live {
        alloc.free(p).unwrap();
    }
    // plan_and_capture whose closures fail to allocate.
    let r = call("plan_and_capture of nothing", || {
        alloc.plan_and_capture(
            || alloc.allocate(usize::MAX, 512),
            || alloc.allocate(usize::MAX, 512),
        )
    });
    let (_pool, a, b) = r.unwrap();
    assert!(a.is_err() && b.is_err());
}

/// A device of unbounded capacity whose memory is never touched: addresses
/// come from a counter (the allocator never dereferences them without a
/// copy capability). Safe code may implement `Backend`.
#[derive(Debug)]
struct Unbounded {
    next: AtomicU64,
    live: AtomicUsize,
}

impl Unbounded {
    fn new() -> Arc<Self> {
        Arc::new(Unbounded {
            next: AtomicU64::new(1 << 20),
            live: AtomicUsize::new(0),
        })
    }
}

impl Backend for Unbounded {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }
    fn ordinal(&self) -> usize {
        0
    }
    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        // Distinct, non-overlapping addresses while they last.
        let size64 = u64::try_from(size).unwrap_or(u64::MAX);
        let step = size64.checked_next_multiple_of(1 << 21);
        let Some(step) = step else {
            return Err(BackendError::OutOfMemory { requested: size });
        };
        let base = self.next.fetch_add(step, Ordering::SeqCst);
        if base.checked_add(step).is_none() {
            return Err(BackendError::OutOfMemory { requested: size });
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(base)
    }
    unsafe fn release(&self, _addr: u64, _size: usize) -> Result<(), BackendError> {
        self.live.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        Ok(MemInfo {
            free: usize::MAX,
            total: usize::MAX,
        })
    }
}

/// Issue 13's rule, "no panic reachable from safe code": planning the same
/// recording (one block of 2^62 bytes that outlives it) for four graphs
/// adds 4 x 2^62 bytes in `planner::peak_live` and `planner::greedy`
/// (`offset + it.size`, `outliving[..] += ..`, `peak + all_outliving`),
/// which overflowed before the fix: a panic with overflow checks (debug
/// builds, the fuzz target's `-a`), a wrapped size in release builds (the
/// plan's figures below then failed). Now `Error::TooLarge`.
#[test]
fn planning_recordings_whose_sum_overflows_is_an_error_not_a_panic() {
    let dev = Unbounded::new();
    let alloc = Allocator::from_backends(vec![dev.clone() as Arc<dyn Backend>], 1.0).unwrap();
    let (p, rec) = alloc.record(|| alloc.allocate(1 << 62, 512).unwrap());
    assert_eq!(rec.outliving(), 1);
    let recs = [&rec; 4];
    let r = call(
        "create_planned_pool(4 x a 2^62-byte outliving block)",
        || alloc.create_planned_pool(&recs),
    );
    // Any typed outcome is fine; a panic is not. If it succeeded, its plan
    // must still add up.
    if let Ok(pool) = &r {
        let s = pool.plan_stats().unwrap();
        assert!(
            s.planned_bytes >= s.peak_live_bytes,
            "planned {} below the peak {}",
            s.planned_bytes,
            s.peak_live_bytes
        );
        assert!(
            s.peak_live_bytes >= 1 << 62,
            "peak {:#x}",
            s.peak_live_bytes
        );
    }
    drop(r);
    alloc.free(p).unwrap();
}

// ---------------------------------------------------------------------------
// Rust: history, snapshots, OOM observers, streams, mapping statistics

#[test]
fn history_and_snapshots_with_extreme_values() {
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    for cap in [0, 1, graphalloc::history::MAX_HISTORY + 1, usize::MAX] {
        let r = call(format!("record_history({cap})"), || {
            alloc.record_history(cap)
        });
        assert_eq!(r.is_ok(), cap == 1, "record_history({cap}): {r:?}");
    }
    alloc.record_history(3).unwrap();
    for ctx in [Some(""), Some("\0"), Some("a\nb<&>"), None] {
        call(format!("set_context({ctx:?})"), || {
            graphalloc::history::set_context(ctx)
        });
    }
    let long = "x".repeat(1 << 16);
    graphalloc::history::set_context(Some(&long));
    alloc.set_history_backtraces(true);
    let p = alloc.allocate(1, 1).unwrap();
    let _ = alloc.allocate(usize::MAX, 512); // an OOM event
    alloc.set_history_backtraces(false);
    let snap = call("snapshot", || alloc.snapshot());
    call("to_pickle", || pickle::read(&snap.to_pickle()).unwrap());
    call("to_html", || snap.to_html());
    call("trace text", || {
        graphalloc::history::to_trace_text("\0\n", &alloc.history())
    });
    alloc.free(p).unwrap();
    graphalloc::history::set_context(None);
    alloc.stop_history();
    alloc.clear_history();
    assert!(alloc.history().is_empty());
}

#[test]
fn the_pickle_reader_refuses_garbage() {
    // Every prefix of a real snapshot, every single-byte change of it, and
    // a few odd texts: an error or a value, never a panic.
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    alloc.record_history(8).unwrap();
    let p = alloc.allocate(4096, 512).unwrap();
    let bytes = alloc.snapshot().to_pickle();
    alloc.free(p).unwrap();
    for n in 0..bytes.len() {
        let _ = call(format!("read(prefix {n})"), || pickle::read(&bytes[..n]));
    }
    for i in 0..bytes.len().min(2000) {
        for x in [0u8, 0x28, 0x65, 0x75, 0x8a, 0xff] {
            let mut b = bytes.clone();
            b[i] = x;
            let _ = call(format!("read(byte {i} = {x:#x})"), || pickle::read(&b));
        }
    }
    for text in [
        &b""[..],
        b".",
        b"(e.",
        b"](e.",
        b"((((((e.",
        b"}(N.",
        b"\x8a\xff",
        b"X\xff\xff\xff\xff",
    ] {
        let _ = call(format!("read({text:?})"), || pickle::read(text));
    }
}

/// `pickle::read` (a public parser of bytes) nests values without bound and
/// the derived `Drop` of a nested `Value` recurses: a 300 KB input of
/// `](` repeated then `e` repeated is a list nested 100,000 deep, and
/// dropping it overflowed the stack before the fix (the process aborted:
/// "thread ... has overflowed its stack"), which `catch_unwind` cannot
/// catch. Now nesting past `pickle::MAX_DEPTH` is an error.
#[test]
fn the_pickle_reader_bounds_its_nesting() {
    let depth = 100_000;
    let mut text = Vec::new();
    text.push(b']');
    for _ in 0..depth {
        text.extend_from_slice(b"(]");
    }
    text.extend(std::iter::repeat_n(b'e', depth));
    text.push(b'.');
    // On a thread of 2 MiB of stack, as test threads have.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let r = pickle::read(&text);
            assert!(r.is_err(), "a list nested {depth} deep was accepted");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn oom_observers_that_panic_reenter_or_remove_themselves() {
    let alloc = Arc::new(Allocator::new(Config::host(64 << 20)).unwrap());
    // An observer that panics: the panic comes out of the failed call, and
    // the allocator keeps working with its books right.
    let id = alloc.on_out_of_memory(|_| panic!("observer panic"));
    let hold = alloc.allocate(40 << 20, 512).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| alloc.allocate(40 << 20, 512)));
    assert!(r.is_err(), "the observer's panic propagates (documented)");
    assert!(alloc.remove_out_of_memory_observer(id));
    assert!(!alloc.remove_out_of_memory_observer(id));
    assert!(!alloc.remove_out_of_memory_observer(0));
    assert!(!alloc.remove_out_of_memory_observer(u64::MAX));
    let p = alloc.allocate(1 << 20, 512).unwrap();
    alloc.free(p).unwrap();
    // An observer that allocates (documented as allowed), one that removes
    // itself, and one that adds another observer, all on the same failure.
    let a = alloc.clone();
    alloc.on_out_of_memory(move |_| {
        if let Ok(p) = a.allocate(4096, 512) {
            a.free(p).unwrap();
        }
    });
    let a = alloc.clone();
    let me = Arc::new(AtomicU64::new(0));
    let me2 = me.clone();
    let id = alloc.on_out_of_memory(move |_| {
        a.remove_out_of_memory_observer(me2.load(Ordering::SeqCst));
    });
    me.store(id, Ordering::SeqCst);
    let a = alloc.clone();
    alloc.on_out_of_memory(move |_| {
        a.on_out_of_memory(|_| {});
    });
    let r = call("allocate with reentrant observers", || {
        alloc.allocate(40 << 20, 512)
    });
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    alloc.free(hold).unwrap();
    assert_eq!(alloc.stats().total.allocated_bytes, 0);
}

#[test]
fn stream_registry_and_mapping_stats_with_extreme_values() {
    for conf in [
        "backend:host,host_capacity:64MiB",
        "backend:host,host_devices:2,host_capacity:64MiB,expandable_segments:true",
    ] {
        let alloc = Allocator::new(Config::parse(conf).unwrap()).unwrap();
        for device in [0, 1, 2, 64, usize::MAX] {
            for stream in STREAMS {
                let what = format!("{conf}: device {device}, stream {stream:#x}");
                let known = call(format!("is_stream_registered {what}"), || {
                    alloc.is_stream_registered(device, stream)
                });
                call(format!("unregister_stream {what}"), || {
                    alloc.unregister_stream(device, stream)
                });
                // SAFETY: on the host backend a stream handle is a tag the
                // backend checks and never dereferences.
                let r = call(format!("register_raw_stream {what}"), || unsafe {
                    alloc.register_raw_stream(device, stream)
                });
                assert_eq!(r.is_ok(), device < alloc.device_count(), "{what}: {r:?}");
                if r.is_ok() {
                    assert!(alloc.is_stream_registered(device, stream), "{what}");
                    let p = call(format!("allocate_on {what}"), || {
                        alloc.allocate_on(device, stream, 4096, 512)
                    });
                    if let Ok(p) = p {
                        for s in STREAMS {
                            let _ = call(format!("record_stream({s:#x}) {what}"), || {
                                alloc.record_stream(p, s)
                            });
                        }
                        // Unregistered while its block is live.
                        alloc.unregister_stream(device, stream);
                        call(format!("free {what}"), || alloc.free(p)).unwrap();
                    }
                }
                let _ = known;
            }
        }
        let m = call("mapping_stats", || alloc.mapping_stats());
        let _ = alloc.empty_cache();
        call("mapping_stats after empty_cache", || alloc.mapping_stats());
        let _ = m;
        assert_eq!(alloc.stats().total.allocated_bytes, 0);
    }
    // A pointer that is not live in record_stream with a registered stream.
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    for addr in [0, 1, 4097, u64::MAX] {
        let r = call(format!("record_stream({addr:#x})"), || {
            alloc.record_stream(DevicePtr::new(addr), 0)
        });
        assert!(r.is_err());
    }
}

// ---------------------------------------------------------------------------
// C: ffi_plan, ffi_history, ffi_oom, ffi_mapping

fn last_error() -> String {
    // SAFETY: never null; NUL-terminated and valid until this thread's next
    // graphalloc call. Copied at once.
    unsafe { CStr::from_ptr(graphalloc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn c_call<R>(what: impl std::fmt::Display, f: impl FnOnce() -> R) -> R {
    let r = call(&what, f);
    let e = last_error();
    assert!(!e.contains("panicked"), "{what}: a panic was caught: {e}");
    r
}

/// `graphalloc_malloc` on the host backend.
fn c_malloc(size: isize, device: i32, stream: *mut c_void) -> *mut c_void {
    // SAFETY: on the host backend a stream handle is a tag it checks and
    // never dereferences.
    unsafe { graphalloc_malloc(size, device, stream) }
}

unsafe extern "C" fn count_oom(_report: *const GraphallocOomReport, user: *mut c_void) {
    // SAFETY: `user` is the AtomicU64 the test passed, alive for the test.
    unsafe { &*(user as *const AtomicU64) }.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn c_plan_history_oom_and_mapping_with_extreme_values() {
    std::env::set_var(
        "GRAPHALLOC_CONF",
        "backend:host,host_devices:2,host_capacity:256MiB,expandable_segments:true",
    );
    graphalloc_set_log_errors(0);
    let c_devices = [i32::MIN, -1, 0, 1, 2, i32::MAX];
    let c_streams: [*mut c_void; 4] = [
        null_mut(),
        std::ptr::dangling_mut::<c_void>(),
        0xdead_beef as *mut c_void,
        usize::MAX as *mut c_void,
    ];
    let ids = [0u64, 1, 0xffff_ffff, u64::MAX];

    // Mapping statistics.
    // SAFETY: null is allowed (refused).
    assert_eq!(
        c_call("mapping_stats(null)", || unsafe {
            graphalloc_mapping_stats(null_mut())
        }),
        -1
    );
    let mut m = GraphallocMappingStats::default();
    // SAFETY: a valid, writable struct.
    assert_eq!(
        c_call("mapping_stats", || unsafe {
            graphalloc_mapping_stats(&mut m)
        }),
        0
    );

    // Recordings: unknown ids, running and ended ones.
    for id in ids {
        assert_eq!(
            c_call(format!("record_end({id})"), || graphalloc_plan_record_end(
                id
            )),
            -1
        );
        assert_eq!(
            c_call(format!("record_release({id})"), || {
                graphalloc_plan_record_release(id)
            }),
            -1
        );
        for (from, to) in [(null_mut(), null_mut()), (c_streams[3], c_streams[2])] {
            assert_eq!(
                c_call(format!("rename({id})"), || {
                    graphalloc_plan_record_rename_stream(id, from, to)
                }),
                -1
            );
        }
        // SAFETY: null with capacity 0 is allowed; with a capacity, refused.
        for cap in [0, 1, usize::MAX] {
            let rc = c_call(
                format!("record_allocations({id}, null, {cap})"),
                || unsafe { graphalloc_plan_record_allocations(id, null_mut(), cap) },
            );
            assert_eq!(rc, -1);
        }
        assert_eq!(
            c_call(format!("plan_start({id})"), || graphalloc_plan_start(id, 0)),
            -1
        );
        let mut s = GraphallocPlanStats::default();
        // SAFETY: a valid struct, or null (refused).
        assert_eq!(
            c_call(format!("plan_stats({id})"), || unsafe {
                graphalloc_plan_stats(id, &mut s)
            }),
            -1
        );
        assert_eq!(
            c_call(format!("plan_stats({id}, null)"), || unsafe {
                graphalloc_plan_stats(id, null_mut())
            }),
            -1
        );
    }
    let mut recs = Vec::new();
    for device in c_devices {
        for stream in c_streams {
            let id = c_call(format!("record_begin({device}, {stream:?})"), || {
                graphalloc_plan_record_begin(device, stream)
            });
            assert_eq!(
                id != 0,
                (0..2).contains(&device),
                "record_begin({device}): {}",
                last_error()
            );
            if id != 0 {
                recs.push((id, device, stream));
            }
        }
    }
    // Allocations on the recorded streams, a few of them outliving.
    let mut live = Vec::new();
    for &(_, device, stream) in &recs {
        for size in [1isize, 513, 3 << 20] {
            let p = c_call("malloc", || c_malloc(size, device, stream));
            if !p.is_null() {
                live.push(p);
            }
        }
        if let Some(p) = live.pop() {
            graphalloc_free(p, 0, 0, null_mut());
        }
    }
    // A running recording cannot be planned, read or renamed.
    let running = recs[0].0;
    // SAFETY: one readable u64.
    assert_eq!(
        c_call("plan_pool_create(running)", || unsafe {
            graphalloc_plan_pool_create(0, &running, 1)
        }),
        0
    );
    assert_eq!(
        c_call("rename(running)", || graphalloc_plan_record_rename_stream(
            running,
            null_mut(),
            c_streams[2]
        )),
        -1
    );
    for &(id, _, _) in &recs {
        let n = c_call(format!("record_end({id})"), || {
            graphalloc_plan_record_end(id)
        });
        assert!(n >= 0, "{}", last_error());
        assert_eq!(
            c_call("record_end twice", || graphalloc_plan_record_end(id)),
            -1
        );
        let mut out = [GraphallocRecordedAlloc::default(); 2];
        for cap in [0usize, 1, 2] {
            // SAFETY: `out` holds 2 entries; null with 0.
            let rc = c_call("record_allocations", || unsafe {
                let ptr = if cap == 0 {
                    null_mut()
                } else {
                    out.as_mut_ptr()
                };
                graphalloc_plan_record_allocations(id, ptr, cap)
            });
            assert_eq!(rc, n, "{}", last_error());
        }
        for (from, to) in [
            (null_mut(), null_mut()),
            (null_mut(), c_streams[3]),
            (c_streams[3], null_mut()),
        ] {
            c_call("rename", || {
                graphalloc_plan_record_rename_stream(id, from, to)
            });
        }
    }
    let rec_ids: Vec<u64> = recs.iter().map(|r| r.0).collect();
    let mut pools = Vec::new();
    for device in c_devices {
        for (ptr, count) in [
            (null(), 0usize),
            (null(), 1),
            (null(), usize::MAX),
            (rec_ids.as_ptr(), rec_ids.len()),
            (rec_ids.as_ptr(), 1),
            (ids.as_ptr(), ids.len()),
        ] {
            // SAFETY: `ptr` is null or points to `count` readable u64.
            let pool = c_call(format!("plan_pool_create({device}, {count})"), || unsafe {
                graphalloc_plan_pool_create(device, ptr, count)
            });
            if pool != 0 {
                pools.push(pool);
            }
        }
    }
    for &pool in &pools {
        for plan in [0usize, 1, usize::MAX] {
            c_call(format!("plan_start({pool}, {plan})"), || {
                graphalloc_plan_start(pool, plan)
            });
        }
        let mut s = GraphallocPlanStats::default();
        // SAFETY: a valid struct.
        assert_eq!(
            c_call("plan_stats", || unsafe {
                graphalloc_plan_stats(pool, &mut s)
            }),
            0
        );
        // Capture into it in graph mode.
        assert_eq!(
            c_call("begin_graph_mode", || graphalloc_begin_graph_mode(pool)),
            0
        );
        let p = c_call("malloc in graph mode", || c_malloc(4 << 20, 0, null_mut()));
        graphalloc_free(p, 0, 0, null_mut());
        assert_eq!(c_call("end_graph_mode", || graphalloc_end_graph_mode()), 0);
        assert_eq!(c_call("pool_release", || graphalloc_pool_release(pool)), 0);
        assert_eq!(
            c_call("plan_start(released)", || graphalloc_plan_start(pool, 0)),
            -1
        );
    }
    for id in rec_ids {
        assert_eq!(
            c_call("record_release", || graphalloc_plan_record_release(id)),
            0
        );
        assert_eq!(
            c_call("record_release twice", || graphalloc_plan_record_release(
                id
            )),
            -1
        );
    }
    // A running recording released without ending.
    let id = graphalloc_plan_record_begin(0, null_mut());
    assert_ne!(id, 0);
    assert_eq!(
        c_call(
            "record_release(running)",
            || graphalloc_plan_record_release(id)
        ),
        0
    );

    // History.
    for cap in [0usize, 1, (1 << 26) + 1, usize::MAX] {
        let rc = c_call(format!("history_start({cap})"), || {
            graphalloc_history_start(cap)
        });
        assert_eq!(rc == 0, cap == 1, "history_start({cap}): {}", last_error());
    }
    assert_eq!(c_call("history_start", || graphalloc_history_start(16)), 0);
    for on in [i32::MIN, -1, 0, 1, i32::MAX] {
        assert_eq!(
            c_call("set_backtraces", || graphalloc_history_set_backtraces(on)),
            0
        );
    }
    graphalloc_history_set_backtraces(0);
    let bad_utf8: &[u8] = b"\xff\xfe\0";
    let long = format!("{}\0", "x".repeat(1 << 16));
    for (text, ok) in [
        (null::<c_char>(), true),
        (c"".as_ptr(), true),
        (c"forward <&>".as_ptr(), true),
        (bad_utf8.as_ptr().cast::<c_char>(), false),
        (long.as_ptr().cast::<c_char>(), true),
    ] {
        // SAFETY: null or NUL-terminated strings that live for the call.
        let rc = c_call("history_set_context", || unsafe {
            graphalloc_history_set_context(text)
        });
        assert_eq!(rc == 0, ok, "{}", last_error());
    }
    let p = c_call("malloc with context", || c_malloc(4096, 1, null_mut()));
    let dir = std::env::temp_dir().join(format!("review13-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| format!("{}\0", dir.join(name).display());
    let (pkl, html, trace, gz) = (
        file("s.pickle"),
        file("s.html"),
        file("t.txt"),
        file("t.txt.gz"),
    );
    let bad_paths: [*const c_char; 5] = [
        null(),
        c"".as_ptr(),
        c"/nonexistent-review13/dir/x".as_ptr(),
        c"/".as_ptr(),
        // Not UTF-8 is a path all the same (ffi_adversarial.rs writes to
        // one): refused here for its missing directory.
        c"/nonexistent-review13/\xff\xfe".as_ptr(),
    ];
    for path in bad_paths {
        // SAFETY: null or NUL-terminated strings that live for the call.
        unsafe {
            assert_eq!(
                c_call("snapshot_pickle(bad)", || graphalloc_snapshot_pickle(path)),
                -1
            );
            assert_eq!(
                c_call("snapshot_html(bad)", || graphalloc_snapshot_html(path)),
                -1
            );
            assert_eq!(
                c_call("write_trace(bad)", || graphalloc_history_write_trace(path)),
                -1
            );
        }
    }
    // SAFETY: NUL-terminated strings that live for the call.
    unsafe {
        assert!(
            c_call("snapshot_pickle", || graphalloc_snapshot_pickle(
                pkl.as_ptr().cast()
            )) > 0
        );
        assert!(
            c_call("snapshot_html", || graphalloc_snapshot_html(
                html.as_ptr().cast()
            )) > 0
        );
        assert!(
            c_call("write_trace", || graphalloc_history_write_trace(
                trace.as_ptr().cast()
            )) >= 0
        );
        assert!(
            c_call("write_trace gz", || graphalloc_history_write_trace(
                gz.as_ptr().cast()
            )) >= 0
        );
    }
    let bytes = std::fs::read(dir.join("s.pickle")).unwrap();
    pickle::read(&bytes).unwrap();
    graphalloc_free(p, 0, 0, null_mut());
    assert!(c_call("history_len", || graphalloc_history_len()) > 0);
    assert_eq!(c_call("history_stop", || graphalloc_history_stop()), 0);
    assert_eq!(c_call("history_clear", || graphalloc_history_clear()), 0);
    assert_eq!(c_call("history_len", || graphalloc_history_len()), 0);
    // SAFETY: null clears the context.
    unsafe { graphalloc_history_set_context(null()) };
    let _ = std::fs::remove_dir_all(&dir);

    // The OOM observer: set, replaced, cleared; every failure reported once.
    let seen = Box::leak(Box::new(AtomicU64::new(0)));
    let user = (seen as *const AtomicU64).cast_mut().cast::<c_void>();
    // SAFETY: `count_oom` may run on any thread with `user`, which lives
    // forever (leaked).
    unsafe {
        assert_eq!(
            c_call("set_oom_observer", || graphalloc_set_oom_observer(
                Some(count_oom),
                user
            )),
            0
        );
        assert_eq!(
            c_call("set_oom_observer again", || graphalloc_set_oom_observer(
                Some(count_oom),
                user
            )),
            0
        );
    }
    let hold = c_malloc(200 << 20, 0, null_mut());
    assert!(!hold.is_null(), "{}", last_error());
    for size in [isize::MAX, 1 << 40, 300 << 20, 200 << 20, 100 << 20] {
        let p = c_call("malloc too large", || c_malloc(size, 0, null_mut()));
        assert!(p.is_null());
    }
    let reported = seen.load(Ordering::SeqCst);
    // SAFETY: null clears.
    unsafe {
        assert_eq!(
            c_call("clear oom observer", || graphalloc_set_oom_observer(
                None,
                null_mut()
            )),
            0
        )
    };
    let p = c_call("malloc too large, no observer", || {
        c_malloc(200 << 20, 0, null_mut())
    });
    assert!(p.is_null());
    graphalloc_free(hold, 0, 0, null_mut());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        reported,
        "a cleared observer was called"
    );
    assert!(reported >= 2, "{reported} reports");

    for p in live {
        graphalloc_free(p, 0, 0, null_mut());
    }
    let mut st = GraphallocStats::default();
    // SAFETY: a valid struct.
    assert_eq!(unsafe { graphalloc_stats(&mut st) }, 0);
    assert_eq!(st.total.allocated_bytes, 0, "{st:?}");
}

/// `Snapshot` and `SegmentSnapshot` have public fields, and their figures
/// (`reserved_bytes`, `bytes_in`, `to_html`/`to_svg`) summed `usize`
/// without checking: a hand-built snapshot whose sizes add past
/// `usize::MAX` panicked with overflow checks (debug builds) and wrapped in
/// release builds. Now they saturate. (A snapshot taken from an allocator
/// cannot get there.)
#[test]
fn a_hand_built_snapshot_with_huge_sizes_does_not_panic() {
    use graphalloc::history::{BlockSnapshot, BlockState, SegmentSnapshot, Snapshot};
    let seg = SegmentSnapshot {
        device: 0,
        address: 0,
        total_size: usize::MAX,
        stream: 0,
        small: false,
        pool: None,
        expandable: false,
        blocks: vec![
            BlockSnapshot {
                address: 0,
                size: usize::MAX,
                requested_size: usize::MAX,
                state: BlockState::ActiveAllocated,
            };
            2
        ],
    };
    let snap = Snapshot {
        segments: vec![seg; 2],
        history: Vec::new(),
        dropped_events: 0,
        devices: 1,
        history_capacity: 0,
    };
    assert_eq!(call("reserved_bytes", || snap.reserved_bytes()), usize::MAX);
    let held = call("bytes_in", || snap.bytes_in(BlockState::ActiveAllocated));
    assert_eq!(held, usize::MAX);
    call("to_html", || snap.to_html());
    call("to_pickle", || snap.to_pickle());
}
