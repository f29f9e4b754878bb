//! The API added after `api.rs`: recordings and planned pools, the memory
//! history and snapshots, the pickle reader, out-of-memory observers,
//! mapping statistics, and their C functions (`ffi_plan`, `ffi_history`,
//! `ffi_mapping`). Included by the fuzz target `ops` with `#[path]`; it needs
//! the oracle module as `crate::oracle` (for its byte reader).
//!
//! Checked: nothing panics (libFuzzer reports a panic as a crash), live
//! blocks never overlap, a C call that fails never reports a caught panic,
//! and the teardown leaves no live block.

use crate::api::{c_malloc, last_error, no_caught_panic, setup_c_abi};
use crate::oracle::Bytes;
use graphalloc::ffi::history::*;
use graphalloc::ffi::plan::*;
use graphalloc::ffi::*;
use graphalloc::history::pickle;
use graphalloc::{Allocator, Config, DevicePtr, GraphPool, Recording};
use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};

const CAPACITY: usize = 32 << 20;
const MAX_OPS: usize = 600;

/// Sizes that matter here: small, a few MiB, absurd.
fn size(b: &mut Bytes) -> usize {
    let raw = b.u16() as usize;
    match b.u8() % 8 {
        0..=4 => 1 + raw % 8192,
        5 | 6 => 1 + raw * 128,
        _ => [0, usize::MAX, 1 << 62, CAPACITY + 1][raw % 4],
    }
}

/// Live blocks by address (start, end), checked for overlap on insert.
#[derive(Default)]
struct Live(BTreeMap<u64, u64>);

impl Live {
    fn insert(&mut self, p: DevicePtr, size: usize) {
        let (start, end) = (p.addr(), p.addr() + size.max(1) as u64);
        if let Some((_, &e)) = self.0.range(..=start).next_back() {
            assert!(e <= start, "block at {start:#x} overlaps a live one");
        }
        if let Some((&s, _)) = self.0.range(start..).next() {
            assert!(s >= end, "block at {start:#x}+{size} overlaps a live one");
        }
        self.0.insert(start, end);
    }

    fn take(&mut self, b: &mut Bytes) -> Option<DevicePtr> {
        let n = self.0.len();
        let key = *self.0.keys().nth((b.u8() as usize) % n.max(1))?;
        self.0.remove(&key);
        Some(DevicePtr::new(key))
    }
}

/// Recordings, planned pools, captures following a plan, history and
/// snapshots (round-tripped through the pickle reader), OOM observers and
/// mapping statistics on one host allocator; then raw bytes through the
/// pickle reader.
pub fn run_extras(data: &[u8]) {
    let mut b = Bytes::new(data);
    let alloc = Allocator::new(Config::host(CAPACITY)).expect("a host allocator");
    let mut live = Live::default();
    let mut recordings: Vec<Recording> = Vec::new();
    let mut pools: Vec<GraphPool> = Vec::new();
    let mut observers: Vec<u64> = Vec::new();
    let mut ops = 0;
    while !b.done() && ops < MAX_OPS {
        ops += 1;
        match b.u8() % 12 {
            0..=3 => {
                let (size, align) = (size(&mut b), 1usize << (b.u8() % 22));
                if let Ok(p) = alloc.allocate(size, align) {
                    assert_eq!(p.addr() % align as u64, 0);
                    live.insert(p, size);
                }
            }
            4 | 5 => {
                if let Some(p) = live.take(&mut b) {
                    alloc.free(p).expect("free of a live block");
                }
            }
            6 => {
                // A recording of a few allocations, some freed inside.
                let n = b.u8() % 6;
                let sizes: Vec<usize> = (0..n).map(|_| size(&mut b)).collect();
                let keep = b.u8();
                let (kept, rec) = alloc.record(|| {
                    let mut kept = Vec::new();
                    for (i, &s) in sizes.iter().enumerate() {
                        if let Ok(p) = alloc.allocate(s, 512) {
                            if keep & (1 << i) != 0 {
                                kept.push((p, s));
                            } else {
                                alloc.free(p).unwrap();
                            }
                        }
                    }
                    kept
                });
                for (p, s) in kept {
                    live.insert(p, s);
                }
                let _ = rec.peak_live_bytes(0);
                recordings.push(rec);
                recordings.truncate(8);
            }
            7 => {
                let n = (b.u8() as usize) % (recordings.len() + 1);
                let recs: Vec<&Recording> = recordings.iter().take(n).collect();
                if let Ok(pool) = alloc.create_planned_pool(&recs) {
                    pools.push(pool);
                }
            }
            8 => {
                // A capture following a plan (or any plan number).
                let Some(pool) = pools.get((b.u8() as usize) % pools.len().max(1)) else {
                    continue;
                };
                let plan = [0, 1, 2, usize::MAX][(b.u8() % 4) as usize];
                let sizes: Vec<usize> = (0..b.u8() % 5).map(|_| size(&mut b)).collect();
                let _ = alloc.capture_planned(pool, plan, || {
                    let got: Vec<DevicePtr> = (sizes.iter())
                        .filter_map(|&s| alloc.allocate(s, 512).ok())
                        .collect();
                    for p in got {
                        alloc.free(p).unwrap();
                    }
                });
                let _ = pool.plan_stats();
                if b.u8() % 4 == 0 {
                    let _ = pool.reset();
                }
            }
            9 => {
                let _ = alloc.record_history([0, 1, 16, usize::MAX][(b.u8() % 4) as usize]);
                if b.u8() % 2 == 0 {
                    alloc.stop_history();
                }
            }
            10 => {
                let snap = alloc.snapshot();
                let bytes = snap.to_pickle();
                pickle::read(&bytes).expect("a snapshot's pickle reads back");
                if b.u8() % 8 == 0 {
                    let _ = snap.to_html();
                }
                let _ = alloc.mapping_stats();
                let _ = alloc.stats();
            }
            _ => {
                if b.u8() % 2 == 0 || observers.is_empty() {
                    observers.push(alloc.on_out_of_memory(|r| drop(r.to_string())));
                } else {
                    let id = observers.swap_remove(0);
                    assert!(alloc.remove_out_of_memory_observer(id));
                }
                if b.u8() % 2 == 0 {
                    let _ = alloc.empty_cache();
                }
            }
        }
    }
    while let Some(p) = live.take(&mut b) {
        alloc.free(p).expect("teardown free");
    }
    drop(pools);
    assert_eq!(alloc.live_pointers(), 0, "teardown left live blocks");
    // The rest of the input as a pickle: a value or an error.
    let rest: Vec<u8> = std::iter::from_fn(|| (!b.done()).then(|| b.u8())).collect();
    if let Ok(v) = pickle::read(&rest) {
        let _ = pickle::read(&pickle::write(&v));
    }
}

/// The C functions of recordings and planned pools, the history and
/// snapshots, and mapping statistics on the process-wide allocator, with
/// absurd devices, streams, ids, plan numbers and paths.
pub fn run_c_extras(data: &[u8]) {
    setup_c_abi();
    let mut b = Bytes::new(data);
    let devices = [0, 1, -1, i32::MAX];
    let streams = [0usize, 1, usize::MAX];
    let mut recordings: Vec<u64> = vec![0, u64::MAX];
    let mut pools: Vec<u64> = vec![0, u64::MAX];
    let mut live: Vec<*mut c_void> = Vec::new();
    let paths: [&CStr; 3] = [c"/dev/null", c"/nonexistent/dir/x", c""];
    let mut ops = 0;
    while !b.done() && ops < MAX_OPS / 2 {
        ops += 1;
        let pick = |b: &mut Bytes, v: &[u64]| v[(b.u8() as usize) % v.len()];
        match b.u8() % 12 {
            0 => {
                let device = devices[(b.u8() % 4) as usize];
                let stream = streams[(b.u8() % 3) as usize] as *mut c_void;
                let id = graphalloc_plan_record_begin(device, stream);
                if id != 0 {
                    recordings.push(id);
                }
                no_caught_panic("graphalloc_plan_record_begin");
            }
            1 => {
                let _ = graphalloc_plan_record_end(pick(&mut b, &recordings));
                no_caught_panic("graphalloc_plan_record_end");
            }
            2 => {
                let (from, to) = (
                    streams[(b.u8() % 3) as usize],
                    streams[(b.u8() % 3) as usize],
                );
                let id = pick(&mut b, &recordings);
                let _ = graphalloc_plan_record_rename_stream(
                    id,
                    from as *mut c_void,
                    to as *mut c_void,
                );
                no_caught_panic("graphalloc_plan_record_rename_stream");
            }
            3 => {
                let mut out = [GraphallocRecordedAlloc::default(); 4];
                let cap = (b.u8() % 5) as usize;
                // SAFETY: `out` holds 4 entries, at least `cap` (null only
                // with capacity 0).
                let _ = unsafe {
                    let ptr = if cap == 0 {
                        std::ptr::null_mut()
                    } else {
                        out.as_mut_ptr()
                    };
                    graphalloc_plan_record_allocations(pick(&mut b, &recordings), ptr, cap)
                };
                no_caught_panic("graphalloc_plan_record_allocations");
            }
            4 => {
                let _ = graphalloc_plan_record_release(pick(&mut b, &recordings));
                no_caught_panic("graphalloc_plan_record_release");
            }
            5 => {
                let n = (b.u8() as usize) % recordings.len();
                let device = devices[(b.u8() % 4) as usize];
                // SAFETY: the first `n` ids of `recordings` are readable.
                let pool = unsafe { graphalloc_plan_pool_create(device, recordings.as_ptr(), n) };
                if pool != 0 {
                    pools.push(pool);
                }
                no_caught_panic("graphalloc_plan_pool_create");
            }
            6 => {
                let plan = [0, 1, usize::MAX][(b.u8() % 3) as usize];
                let _ = graphalloc_plan_start(pick(&mut b, &pools), plan);
                no_caught_panic("graphalloc_plan_start");
                let mut st = GraphallocPlanStats::default();
                // SAFETY: `st` is writable.
                let _ = unsafe { graphalloc_plan_stats(pick(&mut b, &pools), &mut st) };
                no_caught_panic("graphalloc_plan_stats");
            }
            7 => {
                let pool = pick(&mut b, &pools);
                if graphalloc_pool_release(pool) == 0 {
                    pools.retain(|&p| p != pool || p == 0 || p == u64::MAX);
                }
            }
            8 => {
                let _ = graphalloc_history_start([0, 1, 64, usize::MAX][(b.u8() % 4) as usize]);
                let _ = graphalloc_history_set_backtraces((b.u8() % 2) as i32);
                let ctx = [c"step".as_ptr(), std::ptr::null()][(b.u8() % 2) as usize];
                // SAFETY: `ctx` is null or a NUL-terminated string.
                let _ = unsafe { graphalloc_history_set_context(ctx) };
                no_caught_panic("graphalloc_history_*");
            }
            9 => {
                let _ =
                    [graphalloc_history_stop, graphalloc_history_clear][(b.u8() % 2) as usize]();
                let _ = graphalloc_history_len();
                no_caught_panic("graphalloc_history_stop/clear/len");
            }
            10 => {
                let path = paths[(b.u8() % 3) as usize].as_ptr();
                // SAFETY: `path` is a NUL-terminated string.
                let _ = unsafe {
                    match b.u8() % 3 {
                        0 => graphalloc_snapshot_pickle(path),
                        1 => graphalloc_snapshot_html(path),
                        _ => graphalloc_history_write_trace(path),
                    }
                };
                no_caught_panic("graphalloc_snapshot_* / write_trace");
                let mut ms = GraphallocMappingStats::default();
                // SAFETY: `ms` is writable.
                assert_eq!(unsafe { graphalloc_mapping_stats(&mut ms) }, 0);
            }
            _ => {
                if b.u8() % 2 == 0 || live.is_empty() {
                    let p = c_malloc(1 + (b.u16() as isize) * 64, 0, std::ptr::null_mut());
                    if !p.is_null() {
                        live.push(p);
                    }
                } else {
                    graphalloc_free(live.swap_remove(0), 0, 0, std::ptr::null_mut());
                    no_caught_panic("graphalloc_free");
                }
            }
        }
    }
    for p in live {
        graphalloc_free(p, 0, 0, std::ptr::null_mut());
        assert!(!last_error().contains("panicked"));
    }
    for id in recordings {
        let _ = graphalloc_plan_record_end(id);
        let _ = graphalloc_plan_record_release(id);
    }
    for pool in pools {
        let _ = graphalloc_pool_release(pool);
    }
    let _ = graphalloc_history_stop();
    let _ = graphalloc_history_clear();
}
