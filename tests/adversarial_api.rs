//! Adversarial tests of the public API on the host backend (tenth
//! session): each test either pins a bug found and fixed (its doc says
//! what failed before), or records a probe that held ("Held").

mod support;

use graphalloc::backend::{CaptureStatus, StreamOrder};
use graphalloc::{Allocator, Backend, Config, DevicePtr, Error, HostBackend};
use std::sync::Arc;
use support::{host_allocator, MIB};

/// An allocator over one host device of `capacity` bytes, with expandable
/// segments or plain ones, and its backend.
fn host_with(capacity: usize, expandable: bool) -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let config = Config {
        expandable_segments: expandable,
        ..Config::default()
    };
    let alloc = Allocator::from_backends_with(vec![host.clone() as Arc<dyn Backend>], &config);
    (host, alloc.unwrap())
}

/// Stream guards dropped out of order (a `Vec` of guards drops its first
/// element first) must leave the innermost live guard's stream current, and
/// the default stream once all are gone.
#[test]
fn stream_guards_dropped_out_of_order_restore_the_default_stream() {
    assert_eq!(graphalloc::current_stream(), 0);
    let a = graphalloc::use_stream(0xa);
    let b = graphalloc::use_stream(0xb);
    drop(a);
    assert_eq!(graphalloc::current_stream(), 0xb, "b is still alive");
    drop(b);
    assert_eq!(graphalloc::current_stream(), 0, "no guard is alive");

    let guards = vec![graphalloc::use_stream(0xc), graphalloc::use_stream(0xd)];
    assert_eq!(graphalloc::current_stream(), 0xd);
    drop(guards);
    assert_eq!(graphalloc::current_stream(), 0);
}

/// A thread that exits with live blocks and cached ones: the live ones stay
/// counted, and the cached ones are not lost.
#[test]
fn a_thread_exiting_with_live_and_cached_blocks_keeps_exact_figures() {
    let (host, alloc) = host_allocator(64 * MIB);
    let kept: Vec<DevicePtr> = std::thread::scope(|s| {
        s.spawn(|| {
            let ptrs: Vec<_> = (0..8).map(|_| alloc.allocate(4096, 512).unwrap()).collect();
            for p in &ptrs[4..] {
                alloc.free(*p).unwrap();
            }
            ptrs[..4].to_vec()
        })
        .join()
        .unwrap()
    });
    let st = alloc.stats();
    assert_eq!(st.total.allocated_bytes, 4 * 4096);
    assert_eq!(st.total.live_blocks, 4);
    assert_eq!(st.total.requested_bytes, 4 * 4096);
    for p in kept {
        alloc.free(p).unwrap();
    }
    let st = alloc.stats();
    assert_eq!(st.total.allocated_bytes, 0);
    assert_eq!(st.total.live_blocks, 0);
    assert_eq!(st.total.requested_bytes, 0);
    assert!(st.total.peak_allocated_bytes >= 8 * 4096);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().total.reserved_bytes, 0);
    assert_eq!(host.outstanding_bytes(), 0);
}

/// A forgotten guard on a thread that frees pool blocks into its graph-mode
/// cache, then exits: the pool gets its blocks back.
#[test]
fn a_forgotten_guard_with_a_graph_mode_cache_gives_its_blocks_back_at_thread_exit() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::mem::forget(alloc.enter_graph_mode(&pool).unwrap());
            for _ in 0..4 {
                let ps: Vec<_> = (0..4).map(|_| alloc.allocate(4096, 512).unwrap()).collect();
                for p in ps {
                    alloc.free(p).unwrap();
                }
            }
        })
        // An explicit join waits for the thread's thread-local destructors
        // (the scope's own wait does not).
        .join()
        .unwrap();
    });
    let st = pool.stats();
    assert_eq!(
        (st.live_blocks, st.allocated_bytes, st.requested_bytes),
        (0, 0, 0)
    );
    pool.reset().unwrap();
    let total = alloc.stats().total;
    assert_eq!((total.live_blocks, total.allocated_bytes), (0, 0));
    drop(pool);
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Held (no bug found): a block recorded on another stream, freed, then the stream
/// destroyed: empty_cache must not hang and must return everything.
#[test]
fn a_stream_destroyed_while_a_block_waits_for_it() {
    let (host, alloc) = host_allocator(64 * MIB);
    let s = host.create_stream();
    let p = alloc.allocate(4096, 512).unwrap();
    alloc.record_stream(p, s).unwrap();
    alloc.free(p).unwrap();
    host.destroy_stream(s);
    let _ = alloc.empty_cache();
    let st = alloc.stats().total;
    assert_eq!(st.pending_frees, 0, "{st:?}");
    assert_eq!(st.reserved_bytes, 0, "{st:?}");
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Held (no bug found): a pool whose block waits for a stream, reset and dropped.
#[test]
fn a_pool_with_a_pending_free_resets_and_drops_cleanly() {
    let (host, alloc) = host_allocator(64 * MIB);
    let s = host.create_stream();
    let pool = alloc.create_pool();
    let p = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        alloc.allocate(4096, 512).unwrap()
    };
    alloc.record_stream(p, s).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(pool.stats().pending_frees, 1);
    pool.reset().unwrap();
    let q = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        alloc.allocate(4096, 512).unwrap()
    };
    assert_ne!(p, q, "a block waiting for its stream is not handed out");
    alloc.free(q).unwrap();
    drop(pool);
    let st = alloc.stats();
    assert_eq!(st.pools.reserved_bytes, 0, "{st:?}");
    assert_eq!(st.pools.pending_frees, 0, "{st:?}");
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Held (no bug found): planned pools with recordings that do not match.
#[test]
fn planned_pool_probes() {
    let (host, alloc) = host_allocator(256 * MIB);
    let ((), rec) = alloc.record(|| {
        let a = alloc.allocate(3 * MIB, 512).unwrap();
        let b = alloc.allocate(MIB, 4096).unwrap();
        alloc.free(a).unwrap();
        let c = alloc.allocate(2 * MIB, 512).unwrap();
        alloc.free(b).unwrap();
        alloc.free(c).unwrap();
    });
    let empty = graphalloc::Recording::default();
    let pool = alloc.create_planned_pool(&[&rec, &empty]).unwrap();
    // Plan 1 is empty: everything falls back.
    let live = alloc
        .capture_planned(&pool, 1, || alloc.allocate(MIB, 512).unwrap())
        .unwrap();
    // Plan 0 while `live` sits where plan 0 puts its blocks.
    let ptrs = alloc
        .capture_planned(&pool, 0, || {
            let a = alloc.allocate(3 * MIB, 512).unwrap();
            let b = alloc.allocate(MIB, 4096).unwrap();
            vec![a, b]
        })
        .unwrap();
    let mut all = ptrs.clone();
    all.push(live);
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y);
        }
    }
    for p in all {
        alloc.free(p).unwrap();
    }
    assert_eq!(pool.stats().live_blocks, 0);
    pool.reset().unwrap();
    assert!(matches!(pool.start_plan(2), Err(Error::NoSuchPlan { .. })));
    let empty_pool = alloc.create_planned_pool(&[]).unwrap();
    assert!(matches!(
        alloc.capture_planned(&empty_pool, 0, || ()),
        Err(Error::NoSuchPlan { .. })
    ));
    assert!(!alloc.is_graph_mode());
    drop(pool);
    drop(empty_pool);
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Held (no bug found): a Player with a bad placement is an error, not a panic.
#[test]
fn player_with_a_bad_placement_is_an_error() {
    let alloc = Allocator::new(Config::host(64 * MIB)).unwrap();
    let trace = graphalloc::replay::Trace::parse_str("t", "a 1 4096 0\na 2 100 7\nf 1\n").unwrap();
    for (device, align) in [(5, 512), (0, 0), (0, 3), (0, usize::MAX), (usize::MAX, 512)] {
        let mut p = graphalloc::replay::Player::with_placement(&trace, device, align);
        assert!(p.play(&alloc).is_err(), "{device} {align}");
        let _ = p.teardown(&alloc);
    }
    assert_eq!(alloc.stats().total.live_blocks, 0);
}

/// A hand-built `Config` with `shards` or `host_devices` at `usize::MAX`
/// made `Allocator::new` panic (capacity overflow building the arenas or
/// backends); below that, up to 2^60 or so, it tried to build them all.
/// Refused as the same text is: `Error::Config` naming the key.
#[test]
fn hand_built_configs_with_too_many_shards_or_devices_are_config_errors() {
    let host = || Config::host(64 * MIB);
    let rows = [
        (
            "shards",
            Config {
                shards: usize::MAX,
                ..host()
            },
        ),
        (
            "shards",
            Config {
                shards: 65,
                ..host()
            },
        ),
        (
            "host_devices",
            Config {
                host_devices: usize::MAX,
                ..host()
            },
        ),
        (
            "host_devices",
            Config {
                host_devices: 1 << 40,
                ..host()
            },
        ),
    ];
    for (key, config) in rows {
        let what = format!(
            "{key} {}",
            if key == "shards" {
                config.shards
            } else {
                config.host_devices
            }
        );
        match support::call(&what, || Allocator::new(config.clone())) {
            Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        let backend: Arc<dyn Backend> = Arc::new(HostBackend::new(0, 64 * MIB));
        let r = support::call(&what, || {
            Allocator::from_backends_with(vec![backend], &config)
        });
        match (key, r) {
            ("shards", Err(Error::Config { key: k, .. })) => assert_eq!(k, key),
            // One backend given: `host_devices` is not used.
            ("host_devices", Ok(_)) => {}
            (_, other) => panic!("from_backends_with, {what}: {other:?}"),
        }
    }
    // The largest accepted values still build.
    let most = Config {
        shards: 64,
        host_devices: 64,
        ..Config::host(4 * MIB)
    };
    let alloc = Allocator::new(most).unwrap();
    assert_eq!(alloc.device_count(), 64);
    let p = alloc.allocate_on(63, 0, 4096, 512).unwrap();
    alloc.free(p).unwrap();
}

/// The other fields of a hand-built `Config` the parser refuses: a
/// `memory_fraction` of NaN meant no limit at all and 0 refused every
/// request as too large; a `history` past 2^26 was silently capped (where
/// `record_history` refuses it); a `host_capacity` of 0 built a device
/// nothing fits on. Each is `Error::Config` naming the key, from `new`,
/// `from_backends_with` and `from_backends` alike.
#[test]
fn hand_built_configs_the_parser_would_refuse_are_config_errors() {
    let host = || Config::host(64 * MIB);
    let fractions = [f64::NAN, 0.0, -0.5, 1.5, f64::INFINITY];
    let mut rows: Vec<(&str, Config)> = (fractions.iter())
        .map(|&f| {
            let config = Config {
                memory_fraction: f,
                ..host()
            };
            ("memory_fraction", config)
        })
        .collect();
    let history = Config {
        history: (1 << 26) + 1,
        ..host()
    };
    rows.push(("history", history));
    rows.push(("host_capacity", Config::host(0)));
    for (key, config) in rows {
        let what = format!("{key} in {config:?}");
        match support::call(&what, || Allocator::new(config.clone())) {
            Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        if key == "host_capacity" {
            continue; // Not used with backends given.
        }
        let backend: Arc<dyn Backend> = Arc::new(HostBackend::new(0, 64 * MIB));
        let r = support::call(&what, || {
            Allocator::from_backends_with(vec![backend.clone()], &config)
        });
        assert!(
            matches!(r, Err(Error::Config { key: k, .. }) if k == key),
            "{what}"
        );
        if key == "memory_fraction" {
            let r = Allocator::from_backends(vec![backend], config.memory_fraction);
            assert!(
                matches!(r, Err(Error::Config { .. })),
                "from_backends, {what}"
            );
        }
    }
    // The edges the parser accepts still build.
    let edge = Config {
        memory_fraction: 1.0,
        history: 1 << 26,
        ..Config::host(1)
    };
    assert!(Allocator::new(edge).is_ok());
}

/// Held (no bug found): every error of an allocation in graph mode changes nothing but
/// the documented OOM retry count; the pool's and allocator's figures stay.
#[test]
fn graph_mode_errors_change_nothing() {
    let (host, alloc) = host_allocator(64 * MIB);
    let pool = alloc.create_pool();
    let _g = alloc.enter_graph_mode(&pool).unwrap();
    let keep = alloc.allocate(5000, 512).unwrap();
    let tmp = alloc.allocate(3 * MIB, 512).unwrap();
    alloc.free(tmp).unwrap(); // a free kept pending
    let small = alloc.allocate(4096, 512).unwrap();
    alloc.free(small).unwrap(); // into the graph-mode cache (or pending)
    let eager = {
        let _s = graphalloc::use_stream(0);
        alloc.allocate_on(0, 0, 8 * MIB, 512).unwrap()
    };
    let snap = || {
        (
            alloc.stats(),
            pool.stats(),
            alloc.live_pointers(),
            host.outstanding_bytes(),
        )
    };
    let before = snap();
    let errs: Vec<Result<DevicePtr, Error>> = vec![
        alloc.allocate(0, 512),
        alloc.allocate(64, 3),
        alloc.allocate(usize::MAX, 512),
        alloc.allocate(65 * MIB, 512),
        alloc.allocate_on(1, 0, 4096, 512),
        alloc.allocate_on(0, 0xdead, 4096, 512),
        {
            let _s = graphalloc::use_stream(0xbeef);
            alloc.allocate(4096, 512)
        },
    ];
    for e in &errs {
        assert!(e.is_err(), "{e:?}");
    }
    assert_eq!(before, snap(), "{errs:?}");
    // Out of memory: only the retry counts change (and the cache's idle
    // memory may go).
    let oom = alloc.allocate(60 * MIB, 512);
    assert!(matches!(oom, Err(Error::OutOfMemory { .. })), "{oom:?}");
    let (mut b, mut bp, live, _) = before;
    let (a, ap, live2, _) = snap();
    b.pools.oom_retries += 1;
    b.total.oom_retries += 1;
    bp.oom_retries += 1;
    b.caching.reserved_bytes = a.caching.reserved_bytes;
    b.caching.segments = a.caching.segments;
    b.total.reserved_bytes = a.total.reserved_bytes;
    b.total.segments = a.total.segments;
    assert_eq!((b, bp, live), (a, ap, live2));
    alloc.free(keep).unwrap();
    alloc.free(eager).unwrap();
    drop(_g);
    drop(pool);
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Held (no bug found): a snapshot of a busy allocator agrees with its statistics.
#[test]
fn a_snapshot_of_every_kind_of_block_agrees_with_stats() {
    use graphalloc::history::BlockState;
    for expandable in [false, true] {
        let (host, alloc) = host_with(256 * MIB, expandable);
        let s = host.create_stream();
        let over = alloc.allocate(1000, 4096).unwrap();
        let over_large = alloc.allocate(3 * MIB, MIB).unwrap();
        let cached = alloc.allocate(2048, 512).unwrap();
        alloc.free(cached).unwrap();
        let pend = alloc.allocate(8192, 512).unwrap();
        alloc.record_stream(pend, s).unwrap();
        alloc.free(pend).unwrap();
        let pool = alloc.create_pool();
        let (pa, pb) = {
            let _g = alloc.enter_graph_mode(&pool).unwrap();
            let pa = alloc.allocate(700, 2048).unwrap();
            let pb = alloc.allocate(5 * MIB, 512).unwrap();
            let x = alloc.allocate(4096, 512).unwrap();
            alloc.free(x).unwrap();
            let y = alloc.allocate(1536, 512).unwrap();
            alloc.free(y).unwrap();
            (pa, pb)
        };
        let ((), rec) = alloc.record(|| {
            let a = alloc.allocate(MIB, 8192).unwrap();
            alloc.free(a).unwrap();
        });
        let planned = alloc.create_planned_pool(&[&rec]).unwrap();
        let pl = alloc
            .capture_planned(&planned, 0, || alloc.allocate(MIB, 8192).unwrap())
            .unwrap();
        let snap = alloc.snapshot();
        let total = alloc.stats().total;
        let blocks = || snap.segments.iter().flat_map(|s| &s.blocks);
        let requested: usize = blocks().map(|b| b.requested_size).sum();
        let pending = blocks()
            .filter(|b| b.state == BlockState::ActivePendingFree)
            .count();
        assert_eq!(
            snap.reserved_bytes(),
            total.reserved_bytes,
            "expandable {expandable}"
        );
        assert_eq!(
            snap.bytes_in(BlockState::ActiveAllocated),
            total.allocated_bytes,
            "expandable {expandable}"
        );
        assert_eq!(requested, total.requested_bytes, "expandable {expandable}");
        assert_eq!(pending, total.pending_frees, "expandable {expandable}");
        for p in [over, over_large, pa, pb, pl] {
            alloc.free(p).unwrap();
        }
    }
}

/// A device that hands out address ranges from a counter and never
/// touches them, until the address space ends. (Safe code may implement
/// `Backend`.)
#[derive(Debug, Default)]
struct Endless(std::sync::atomic::AtomicU64);

impl Backend for Endless {
    fn kind(&self) -> graphalloc::BackendKind {
        graphalloc::BackendKind::Host
    }
    fn ordinal(&self) -> usize {
        0
    }
    fn reserve(&self, size: usize) -> Result<u64, graphalloc::BackendError> {
        let oom = graphalloc::BackendError::OutOfMemory { requested: size };
        let step = (size as u64)
            .checked_next_multiple_of(1 << 21)
            .ok_or(oom.clone())?;
        let base = (1 << 21) + self.0.fetch_add(step, std::sync::atomic::Ordering::SeqCst);
        base.checked_add(step).map(|_| base).ok_or(oom)
    }
    unsafe fn release(&self, _: u64, _: usize) -> Result<(), graphalloc::BackendError> {
        Ok(())
    }
    fn mem_info(&self) -> Result<graphalloc::MemInfo, graphalloc::BackendError> {
        Ok(graphalloc::MemInfo {
            free: usize::MAX,
            total: usize::MAX,
        })
    }
    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        Some(self)
    }
}

/// Streams whose work is always done.
impl StreamOrder for Endless {
    fn create_event(&self) -> Result<u64, graphalloc::BackendError> {
        Ok(1)
    }
    fn destroy_event(&self, _: u64) -> Result<(), graphalloc::BackendError> {
        Ok(())
    }
    fn record_event(&self, _: u64, _: u64) -> Result<(), graphalloc::BackendError> {
        Ok(())
    }
    fn event_complete(&self, _: u64) -> Result<bool, graphalloc::BackendError> {
        Ok(true)
    }
    fn wait_event(&self, _: u64) -> Result<(), graphalloc::BackendError> {
        Ok(())
    }
    fn capture_status(&self, _: u64) -> Result<CaptureStatus, graphalloc::BackendError> {
        Ok(CaptureStatus::Idle)
    }
}

/// `Recording::peak_live_bytes` of a run whose blocks add up past
/// `usize::MAX` in the lifetime model overflowed in the planner's sum: a
/// panic with overflow checks, a wrong figure in a release build. Here one
/// 2^61-byte block is used by another stream (`record_stream`) and freed,
/// nine times over: such a block counts as live to the end of the run, so
/// the model has nine of them live at once. (`create_planned_pool` checks
/// the total first; this public figure did not.)
#[test]
fn peak_live_bytes_of_a_recording_past_usize_max_saturates() {
    let alloc =
        Allocator::from_backends(vec![Arc::new(Endless::default()) as Arc<dyn Backend>], 1.0)
            .unwrap();
    let ((), rec) = alloc.record(|| {
        for _ in 0..9 {
            let p = alloc.allocate(1 << 61, 512).unwrap();
            alloc.record_stream(p, 1).unwrap();
            alloc.free(p).unwrap();
        }
    });
    assert_eq!((rec.len(), rec.outliving()), (9, 0));
    let peak = support::call("peak_live_bytes", || rec.peak_live_bytes(0));
    assert_eq!(peak, usize::MAX);
}

/// Held (no bug found): `empty_cache` returns exactly the bytes by which the reserved
/// figure fell, with expandable segments or plain ones, pools beside.
#[test]
fn empty_cache_returns_the_bytes_it_released() {
    for expandable in [false, true] {
        let (host, alloc) = host_with(512 * MIB, expandable);
        let s = host.create_stream();
        let pool = alloc.create_pool();
        let pooled = alloc
            .with_graph_mode(&pool, || alloc.allocate(3 * MIB, 512).unwrap())
            .unwrap();
        let mut live = Vec::new();
        for (i, size) in [700, 4096, 3 * MIB, 33 * MIB, 1 << 20, 130 * MIB]
            .into_iter()
            .enumerate()
        {
            let stream = if i % 2 == 0 { 0 } else { s };
            let p = alloc.allocate_on(0, stream, size, 512).unwrap();
            let q = alloc.allocate_on(0, stream, size, 512).unwrap();
            alloc.free(p).unwrap();
            live.push(q);
        }
        for q in live.drain(1..) {
            alloc.free(q).unwrap();
        }
        let before = alloc.stats().total.reserved_bytes;
        let released = alloc.empty_cache().unwrap();
        let after = alloc.stats().total.reserved_bytes;
        assert_eq!(released, before - after, "expandable {expandable}");
        assert_eq!(
            after as u64,
            host.outstanding_bytes() as u64,
            "expandable {expandable}"
        );
        alloc.free(live[0]).unwrap();
        alloc.free(pooled).unwrap();
        drop(pool);
        let before = alloc.stats().total.reserved_bytes;
        assert_eq!(
            alloc.empty_cache().unwrap(),
            before,
            "expandable {expandable}"
        );
        assert_eq!(host.outstanding_bytes(), 0);
    }
}

/// Held (no bug found): three random runs planned into one pool, captured one after
/// another with each capture's outputs kept live (as graphs sharing a pool
/// keep theirs): every allocation hits its planned place.
#[test]
fn three_random_graphs_sharing_a_planned_pool_follow_their_plans() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..6 {
        let (host, alloc) = host_allocator(4 << 30);
        // Each program: (size, align) allocations and, after each, frees.
        let programs: Vec<Vec<(usize, usize, Vec<usize>)>> = (0..3)
            .map(|_| {
                let n = 5 + rnd(20) as usize;
                let mut live: Vec<usize> = Vec::new();
                (0..n)
                    .map(|i| {
                        let size = [1 + rnd(4096), 1 + rnd(1 << 20), 1 + rnd(6 << 20)]
                            [rnd(3) as usize] as usize;
                        let align = [512, 512, 4096, 1 << 21][rnd(4) as usize];
                        live.push(i);
                        let mut frees = Vec::new();
                        while !live.is_empty() && rnd(3) != 0 {
                            frees.push(live.swap_remove(rnd(live.len() as u64) as usize));
                        }
                        (size, align, frees)
                    })
                    .collect()
            })
            .collect();
        let run = |prog: &Vec<(usize, usize, Vec<usize>)>| {
            let mut ptrs = Vec::new();
            for (size, align, frees) in prog {
                ptrs.push(Some(alloc.allocate(*size, *align).unwrap()));
                for &f in frees {
                    alloc.free(ptrs[f].take().unwrap()).unwrap();
                }
            }
            ptrs.into_iter().flatten().collect::<Vec<_>>()
        };
        let mut recs = Vec::new();
        for prog in &programs {
            let (out, rec) = alloc.record(|| run(prog));
            for p in out {
                alloc.free(p).unwrap();
            }
            recs.push(rec);
        }
        let refs: Vec<&graphalloc::Recording> = recs.iter().collect();
        let pool = alloc.create_planned_pool(&refs).unwrap();
        let mut outputs = Vec::new();
        for order in [[0, 1, 2], [2, 0, 1]] {
            for p in outputs.drain(..) {
                alloc.free(p).unwrap();
            }
            for k in order {
                outputs.extend(
                    alloc
                        .capture_planned(&pool, k, || run(&programs[k]))
                        .unwrap(),
                );
            }
        }
        let s = pool.plan_stats().unwrap();
        assert_eq!(s.fallbacks, 0, "round {round}: {s:?}");
        assert_eq!(
            s.planned_hits as usize,
            2 * s.planned_allocations,
            "round {round}"
        );
        assert_eq!(
            pool.stats().reserved_bytes,
            s.planned_bytes,
            "round {round}"
        );
        for p in outputs {
            alloc.free(p).unwrap();
        }
        drop(pool);
        alloc.empty_cache().unwrap();
        assert_eq!(host.outstanding_bytes(), 0);
    }
}

/// Held (no bug found): a planned pool whose second region does not fit gives the first
/// back, and changes no figure.
#[test]
fn a_planned_pool_that_does_not_fit_changes_nothing() {
    let (host, alloc) = host_allocator(64 * MIB);
    let s = host.create_stream();
    let ((), rec) = alloc.record(|| {
        let a = alloc.allocate(20 * MIB, 512).unwrap();
        let b = alloc.allocate_on(0, s, 20 * MIB, 512).unwrap();
        alloc.free(a).unwrap();
        alloc.free(b).unwrap();
    });
    alloc.empty_cache().unwrap();
    let hold = alloc.allocate(30 * MIB, 512).unwrap();
    let before = (
        alloc.stats(),
        host.outstanding_bytes(),
        alloc.live_pointers(),
    );
    let r = alloc.create_planned_pool(&[&rec]);
    assert!(matches!(r, Err(Error::OutOfMemory { .. })), "{r:?}");
    let (mut st, out, live) = before;
    let after = alloc.stats();
    st.caching.oom_retries = after.caching.oom_retries;
    st.total.oom_retries = after.total.oom_retries;
    st.pools.segments_reserved = after.pools.segments_reserved;
    st.total.segments_reserved = after.total.segments_reserved;
    st.pools.peak_reserved_bytes = after.pools.peak_reserved_bytes;
    st.total.peak_reserved_bytes = after.total.peak_reserved_bytes;
    assert_eq!(
        (st, out, live),
        (after, host.outstanding_bytes(), alloc.live_pointers())
    );
    assert_eq!(after.pools.reserved_bytes, 0);
    assert_eq!(after.pools.segments, 0);
    alloc.free(hold).unwrap();
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

/// The built-in streams 1 (`CU_STREAM_LEGACY`) and 2 (per-thread default)
/// are "always accepted" (README, Streams), and a trace's tags 0-2 replay
/// on them; the host backend knew only stream 0, so on it `allocate_on`,
/// `use_stream`, `record_stream` and a replay refused 1 and 2 with
/// `UnknownStream`.
#[test]
fn built_in_streams_1_and_2_work_on_the_host_backend() {
    let (host, alloc) = host_allocator(64 * MIB);
    for s in [1u64, 2] {
        let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
        alloc.free(p).unwrap();
        let q = {
            let _s = graphalloc::use_stream(s);
            alloc.allocate(4096, 512).unwrap()
        };
        // Used by the other built-in stream: not reused before its work.
        let other = 3 - s;
        alloc.record_stream(q, other).unwrap();
        alloc.free(q).unwrap();
        assert_eq!(alloc.stats().total.pending_frees, 1);
        host.complete_stream(other);
        let r = alloc.allocate_on(0, s, 4096, 512).unwrap();
        assert_eq!(alloc.stats().total.pending_frees, 0);
        alloc.free(r).unwrap();
    }
    let trace =
        graphalloc::replay::Trace::parse_str("t", "a 1 4096 1\na 2 8192 2\nf 1\nf 2\n").unwrap();
    let mut player = graphalloc::replay::Player::new(&trace);
    player.play(&alloc).unwrap();
    player.teardown(&alloc).unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}

/// Streams made on one host device are refused on another, as CUDA's
/// are: every host device numbered its streams from the same handle, so a
/// stream made on device 1 was accepted on device 0 (as device 0's stream
/// of the same number), and one only device 1 had made was
/// `UnknownStream` rather than the documented `ForeignStream`.
#[test]
fn a_stream_made_on_one_host_device_is_foreign_on_another() {
    let two = Config {
        host_devices: 2,
        ..Config::host(64 * MIB)
    };
    let alloc = Allocator::new(two).unwrap();
    let s0 = alloc.create_stream(0).unwrap();
    let s1 = alloc.create_stream(1).unwrap();
    assert_ne!(s0, s1);
    assert!(alloc.is_stream_registered(1, s1) && !alloc.is_stream_registered(0, s1));
    let foreign = |stream, stream_device, device| {
        Error::Backend(graphalloc::BackendError::ForeignStream {
            stream,
            stream_device,
            device,
        })
    };
    assert_eq!(alloc.allocate_on(0, s1, 4096, 512), Err(foreign(s1, 1, 0)));
    let t1 = alloc.create_stream(1).unwrap(); // not used on device 1 yet
    assert_eq!(alloc.allocate_on(0, t1, 4096, 512), Err(foreign(t1, 1, 0)));
    let p = alloc.allocate_on(1, 0, 4096, 512).unwrap();
    assert_eq!(alloc.record_stream(p, s0), Err(foreign(s0, 0, 1)));
    assert_eq!(
        alloc.record_stream(p, 0xdead),
        Err(Error::UnknownStream { stream: 0xdead })
    );
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().total.live_blocks, 0);
}

/// Held (no bug found): unregistering a stream (which drains every thread's cache) while
/// other threads allocate and free on it and on the default stream.
#[test]
fn unregistering_a_stream_while_threads_use_it_keeps_the_books() {
    let (host, alloc) = host_allocator(256 * MIB);
    let s = host.create_stream();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let (alloc, stop) = (&alloc, &stop);
                sc.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 2000 {
                        let stream = if n.is_multiple_of(3) { s } else { 0 };
                        let size = 512 * (1 + (n as usize * 7 + t) % 64);
                        let p = alloc.allocate_on(0, stream, size, 512).unwrap();
                        let q = alloc.allocate(size, 512).unwrap();
                        alloc.free(p).unwrap();
                        alloc.free(q).unwrap();
                        n += 1;
                    }
                })
            })
            .collect();
        for _ in 0..500 {
            alloc.unregister_stream(0, s);
            let _ = alloc.stats();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    });
    let st = alloc.stats().total;
    assert_eq!(
        (st.live_blocks, st.allocated_bytes, st.requested_bytes),
        (0, 0, 0)
    );
    assert_eq!(st.allocations, st.frees);
    alloc.empty_cache().unwrap();
    assert_eq!(host.outstanding_bytes(), 0);
}
