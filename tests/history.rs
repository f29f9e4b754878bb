//! The memory history and snapshots: what is recorded, in what order, that
//! snapshots agree with `stats()`, the PyTorch pickle, concurrency, and that
//! a recorded history replays to the same events and peaks.

use graphalloc::history::{pickle, Action, BlockState, Snapshot};
use graphalloc::replay::{Player, Trace};
use graphalloc::{Allocator, Backend, Config, Error, HostBackend};
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn host(capacity: usize, expandable: bool) -> (Arc<HostBackend>, Allocator) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let config = Config {
        expandable_segments: expandable,
        ..Config::default()
    };
    let alloc = Allocator::from_backends_with(vec![host.clone() as Arc<dyn Backend>], &config)
        .expect("an allocator over one host backend");
    (host, alloc)
}

fn actions(alloc: &Allocator) -> Vec<Action> {
    alloc.history().iter().map(|e| e.action).collect()
}

/// Segments tile exactly, and the snapshot's sums equal the statistics.
fn assert_consistent(alloc: &Allocator, snap: &Snapshot) {
    let total = alloc.stats().total;
    for s in &snap.segments {
        let mut at = s.address;
        for b in &s.blocks {
            assert_eq!(b.address, at, "blocks tile the segment at {:#x}", s.address);
            at += b.size as u64;
        }
        assert_eq!(at - s.address, s.total_size as u64);
    }
    assert_eq!(snap.reserved_bytes(), total.reserved_bytes);
    assert_eq!(
        snap.bytes_in(BlockState::ActiveAllocated),
        total.allocated_bytes
    );
    let requested: usize = snap
        .segments
        .iter()
        .flat_map(|s| &s.blocks)
        .map(|b| b.requested_size)
        .sum();
    assert_eq!(requested, total.requested_bytes);
    let pending = snap
        .segments
        .iter()
        .flat_map(|s| &s.blocks)
        .filter(|b| b.state == BlockState::ActivePendingFree)
        .count();
    assert_eq!(pending, total.pending_frees);
}

#[test]
fn snapshots_agree_with_stats_for_plain_and_expandable_segments() {
    for expandable in [false, true] {
        let (host, alloc) = host(512 * MIB, expandable);
        let (a, b) = (host.create_stream(), host.create_stream());
        let small: Vec<_> = (1..40)
            .map(|i| alloc.allocate_on(0, a, i * 1000, 512).unwrap())
            .collect();
        let large: Vec<_> = [3 * MIB, 25 * MIB, 7 * MIB + 5]
            .iter()
            .map(|&n| alloc.allocate(n, 512).unwrap())
            .collect();
        let pool = alloc.create_pool();
        let in_pool = alloc
            .with_graph_mode(&pool, || alloc.allocate(5 * MIB, 256))
            .unwrap()
            .unwrap();
        // A free that waits for work on stream b.
        let waiting = alloc.allocate_on(0, a, 2 * MIB, 512).unwrap();
        alloc.record_stream(waiting, b).unwrap();
        alloc.free(waiting).unwrap();
        for p in small.iter().step_by(3).chain(&large[1..2]) {
            alloc.free(*p).unwrap();
        }
        let snap = alloc.snapshot();
        assert_consistent(&alloc, &snap);
        assert!(snap.bytes_in(BlockState::ActivePendingFree) >= 2 * MIB);
        let pooled = snap.segments.iter().filter(|s| s.pool == Some(pool.id()));
        assert_eq!(
            pooled.map(|s| s.total_size).sum::<usize>(),
            alloc.stats().pools.reserved_bytes
        );
        assert!(snap.segments.iter().any(|s| s.small) && snap.segments.iter().any(|s| !s.small));
        assert_eq!(snap.segments.iter().any(|s| s.expandable), expandable);
        alloc.free(in_pool).unwrap();
        host.complete_stream(b);
        alloc.empty_cache().unwrap();
        assert_consistent(&alloc, &alloc.snapshot());
    }
}

#[test]
fn history_records_allocations_frees_and_segments_in_order() {
    let (host, alloc) = host(256 * MIB, false);
    assert!(alloc.history().is_empty(), "off by default");
    alloc.record_history(1000).unwrap();
    let (a, b) = (host.create_stream(), host.create_stream());
    let p = alloc.allocate_on(0, a, 3 * MIB, 512).unwrap();
    alloc.record_stream(p, b).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(
        actions(&alloc),
        [Action::SegmentAlloc, Action::Alloc, Action::FreeRequested],
        "the free completes only after stream b's work"
    );
    host.complete_stream(b);
    alloc.empty_cache().unwrap();
    assert_eq!(
        actions(&alloc)[3..],
        [Action::FreeCompleted, Action::SegmentFree]
    );
    let h = alloc.history();
    assert_eq!(
        (h[1].addr, h[1].size, h[1].stream, h[1].pool),
        (p.addr(), 3 * MIB, a, None)
    );
    assert_eq!((h[2].addr, h[2].size), (p.addr(), 3 * MIB));
    assert_eq!(
        h[0].addr, h[4].addr,
        "the segment reserved is the one released"
    );
    assert!(h
        .windows(2)
        .all(|w| w[0].seq < w[1].seq && w[0].time_us <= w[1].time_us));

    // A graph pool's blocks name their pool; stopping keeps what was recorded.
    let pool = alloc.create_pool();
    let q = alloc
        .with_graph_mode(&pool, || alloc.allocate(4096, 512))
        .unwrap()
        .unwrap();
    let last = alloc.history().last().cloned().unwrap();
    assert_eq!((last.action, last.pool), (Action::Alloc, Some(pool.id())));
    alloc.stop_history();
    alloc.free(q).unwrap();
    assert_eq!(alloc.history().last(), Some(&last));
    alloc.clear_history();
    assert!(alloc.history().is_empty());
}

#[test]
fn expandable_segments_record_maps_and_unmaps() {
    let (_host, alloc) = host(256 * MIB, true);
    alloc.record_history(100).unwrap();
    let p = alloc.allocate(30 * MIB, 512).unwrap();
    alloc.free(p).unwrap();
    alloc.empty_cache().unwrap();
    let h = alloc.history();
    let mapped: usize = h
        .iter()
        .filter(|e| e.action == Action::SegmentMap)
        .map(|e| e.size)
        .sum();
    let unmapped: usize = h
        .iter()
        .filter(|e| e.action == Action::SegmentUnmap)
        .map(|e| e.size)
        .sum();
    assert!(mapped >= 30 * MIB, "{h:?}");
    assert_eq!(mapped, unmapped);
}

#[test]
fn out_of_memory_is_recorded() {
    let (_host, alloc) = host(64 * MIB, false);
    alloc.record_history(100).unwrap();
    let p = alloc.allocate(40 * MIB, 512).unwrap();
    assert!(matches!(
        alloc.allocate(40 * MIB, 512),
        Err(Error::OutOfMemory { .. })
    ));
    let oom: Vec<_> = alloc
        .history()
        .into_iter()
        .filter(|e| e.action == Action::Oom)
        .collect();
    assert_eq!(oom.len(), 1);
    assert_eq!(oom[0].size, 40 * MIB);
    alloc.free(p).unwrap();
}

#[test]
fn the_history_config_key_records_from_the_start_and_bounds_the_ring() {
    let config = Config::parse("backend:host,host_capacity:1GiB,history:8").unwrap();
    let alloc = Allocator::new(config).unwrap();
    for _ in 0..20 {
        let p = alloc.allocate(1000, 512).unwrap();
        alloc.free(p).unwrap();
    }
    let h = alloc.history();
    assert_eq!(h.len(), 8);
    assert!(h.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(alloc.snapshot().dropped_events, h[0].seq);
    for bad in [0, graphalloc::history::MAX_HISTORY + 1] {
        assert!(
            matches!(alloc.record_history(bad), Err(Error::Config { key, .. }) if key == "history")
        );
    }
}

#[test]
fn context_strings_ride_along_as_frames() {
    let (_host, alloc) = host(64 * MIB, false);
    alloc.record_history(10).unwrap();
    graphalloc::history::set_context(Some("forward"));
    let p = alloc.allocate(1000, 512).unwrap();
    graphalloc::history::set_context(None);
    alloc.free(p).unwrap();
    let value = alloc.snapshot().to_value();
    let trace = value.get("device_traces").unwrap().as_list().unwrap()[0]
        .as_list()
        .unwrap();
    let alloc_event = trace
        .iter()
        .find(|e| e.get("action").unwrap().as_str() == Some("alloc"));
    let frames = alloc_event
        .unwrap()
        .get("frames")
        .unwrap()
        .as_list()
        .unwrap();
    assert_eq!(frames[0].get("name").unwrap().as_str(), Some("forward"));
    let free = trace
        .iter()
        .find(|e| e.get("action").unwrap().as_str() == Some("free_requested"));
    assert!(free
        .unwrap()
        .get("frames")
        .unwrap()
        .as_list()
        .unwrap()
        .is_empty());
}

/// Writes a snapshot with a little of everything.
fn busy_snapshot() -> (Allocator, Snapshot) {
    let (host, alloc) = host(256 * MIB, true);
    alloc.record_history(10_000).unwrap();
    let s = host.create_stream();
    let keep: Vec<_> = (1..30)
        .map(|i| alloc.allocate(i * 70_000, 512).unwrap())
        .collect();
    let p = alloc.allocate_on(0, s, 3 * MIB, 512).unwrap();
    alloc.record_stream(p, 0).unwrap();
    alloc.free(p).unwrap();
    for q in keep.iter().step_by(2) {
        alloc.free(*q).unwrap();
    }
    let snap = alloc.snapshot();
    (alloc, snap)
}

#[test]
fn the_pickle_round_trips_with_pytorchs_keys() {
    let (_alloc, snap) = busy_snapshot();
    let bytes = snap.to_pickle();
    let value = pickle::read(&bytes).unwrap();
    assert_eq!(value, snap.to_value());
    let segments = value.get("segments").unwrap().as_list().unwrap();
    assert_eq!(segments.len(), snap.segments.len());
    for (seg, s) in segments.iter().zip(&snap.segments) {
        for key in [
            "device",
            "address",
            "total_size",
            "allocated_size",
            "active_size",
            "requested_size",
            "stream",
            "segment_type",
            "segment_pool_id",
            "is_expandable",
            "frames",
            "blocks",
        ] {
            assert!(seg.get(key).is_some(), "segment key {key}");
        }
        assert_eq!(
            seg.get("total_size").unwrap().as_int(),
            Some(s.total_size as i128)
        );
        let blocks = seg.get("blocks").unwrap().as_list().unwrap();
        let sum: i128 = blocks
            .iter()
            .map(|b| b.get("size").unwrap().as_int().unwrap())
            .sum();
        assert_eq!(sum, s.total_size as i128);
    }
    let traces = value.get("device_traces").unwrap().as_list().unwrap();
    assert_eq!(traces[0].as_list().unwrap().len(), snap.history.len());
    assert!(value.get("allocator_settings").is_some());
}

#[test]
fn python_loads_the_pickle_and_pytorchs_segsum_arithmetic_holds() {
    let (_alloc, snap) = busy_snapshot();
    let dir = std::env::temp_dir().join(format!("graphalloc-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap.pickle");
    snap.write_pickle(&path).unwrap();
    std::fs::write(dir.join("view.html"), snap.to_html()).unwrap();
    // The checks torch.cuda._memory_viz.segsum and trace() make, without torch.
    let script = r#"
import pickle, sys
d = pickle.load(open(sys.argv[1], 'rb'))
assert set(d) >= {'segments', 'device_traces', 'allocator_settings'}, d.keys()
for seg in d['segments']:
    assert 'blocks' in seg and 'total_size' in seg
    alloc = sum(b['requested_size'] for b in seg['blocks'] if b['state'] == 'active_allocated')
    internal = sum(b['size'] - b['requested_size'] for b in seg['blocks'] if b['state'] == 'active_allocated')
    external = sum(b['size'] for b in seg['blocks'] if b['state'] != 'active_allocated')
    assert alloc + internal + external == seg['total_size']
    assert seg['segment_type'] in ('small', 'large')
    for b in seg['blocks']:
        assert b['state'] in ('active_allocated', 'inactive', 'active_pending_free')
actions = {'alloc', 'free_requested', 'free_completed', 'segment_alloc', 'segment_free', 'segment_map', 'segment_unmap', 'oom', 'snapshot'}
n = 0
for trace in d['device_traces']:
    for e in trace:
        assert e['action'] in actions and isinstance(e['addr'], int) and isinstance(e['time_us'], int)
        assert isinstance(e['frames'], list)
        n += 1
print(len(d['segments']), n)
"#;
    match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "python3: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text.trim(),
                format!("{} {}", snap.segments.len(), snap.history.len())
            );
        }
        Err(e) => eprintln!("SKIPPED the python3 check: python3 not runnable here ({e})"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_html_view_names_every_segment() {
    let (_alloc, snap) = busy_snapshot();
    let html = snap.to_html();
    assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    for s in &snap.segments {
        assert!(html.contains(&format!("{:#x}", s.address)));
    }
    let series = snap.series();
    let last = series.last().unwrap();
    assert_eq!(last.1, snap.reserved_bytes() as i128);
}

#[test]
fn threads_record_every_event_once_and_the_ring_stays_bounded() {
    for capacity in [100, 1_000_000] {
        let (_host, alloc) = host(1 << 30, true);
        alloc.record_history(capacity).unwrap();
        let (threads, per) = (8, 500);
        std::thread::scope(|s| {
            for t in 0..threads {
                let alloc = &alloc;
                s.spawn(move || {
                    graphalloc::history::set_context(Some(&format!("thread {t}")));
                    for i in 0..per {
                        let p = alloc.allocate(512 * (1 + (i * 7 + t) % 3000), 512).unwrap();
                        alloc.free(p).unwrap();
                    }
                });
            }
            // Snapshots while the threads run neither block nor break.
            s.spawn(|| {
                for _ in 0..20 {
                    let snap = alloc.snapshot();
                    assert!(snap.history.len() <= capacity);
                }
            });
        });
        let h = alloc.history();
        assert!(h.len() <= capacity);
        assert!(h.windows(2).all(|w| w[0].seq < w[1].seq));
        if capacity >= 1_000_000 {
            let count = |a: Action| h.iter().filter(|e| e.action == a).count();
            assert_eq!(count(Action::Alloc), threads * per);
            assert_eq!(count(Action::FreeRequested), threads * per);
            assert_eq!(count(Action::FreeCompleted), threads * per);
            // Every event was caused by a worker thread, which set its context.
            let context = |e: &graphalloc::history::HistoryEvent| {
                e.extra
                    .as_ref()
                    .and_then(|x| x.context.clone())
                    .unwrap_or_default()
            };
            assert!(h.iter().all(|e| context(e).starts_with("thread ")));
        } else {
            assert_eq!(h.len(), capacity);
        }
    }
}

#[test]
fn a_recorded_replay_replays_to_the_same_events_and_peak() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/traces/resnet50_train.trace.gz"
    );
    let trace = Trace::from_path(path).unwrap();
    let peak = |trace: &Trace, history: bool| {
        let alloc = Allocator::new(Config::host(80 << 30)).unwrap();
        if history {
            alloc.record_history(4 * trace.len() + 1000).unwrap();
        }
        let mut player = Player::new(trace);
        let series = player.play_sampled(&alloc, 100).unwrap();
        (series.peak_allocated(), alloc.snapshot())
    };
    let (original_peak, snap) = peak(&trace, true);
    assert_eq!(snap.dropped_events, 0);
    let recorded = Trace::parse_str("recorded", &snap.to_trace_text("recorded")).unwrap();
    assert_eq!(recorded.len(), trace.len());
    assert_eq!(recorded.left_live(), trace.left_live());
    assert_eq!(recorded.peak_requested(), trace.peak_requested());
    assert_eq!(peak(&recorded, false).0, original_peak);
}

#[test]
fn planned_pools_record_their_segments_and_blocks() {
    let (_host, alloc) = host(256 * MIB, false);
    let step = || {
        let a = alloc.allocate(3 * MIB, 512).unwrap();
        let b = alloc.allocate(MIB, 512).unwrap();
        alloc.free(a).unwrap();
        alloc.free(b).unwrap();
    };
    let ((), rec) = alloc.record(step);
    alloc.record_history(100).unwrap();
    let pool = alloc.create_planned_pool(&[&rec]).unwrap();
    alloc.capture_planned(&pool, 0, step).unwrap();
    let snap = alloc.snapshot();
    assert_consistent(&alloc, &snap);
    let h = alloc.history();
    let reserved: Vec<_> = h
        .iter()
        .filter(|e| e.action == Action::SegmentAlloc)
        .collect();
    assert_eq!(reserved.len(), 1, "{h:?}");
    assert_eq!((reserved[0].pool, reserved[0].size), (Some(0), 4 * MIB));
    let allocs = h.iter().filter(|e| e.action == Action::Alloc);
    assert!(allocs.clone().count() == 2 && allocs.clone().all(|e| e.pool == Some(pool.id())));
    drop(pool);
    let last = alloc.history().pop().unwrap();
    assert_eq!(
        (last.action, last.addr),
        (Action::SegmentFree, reserved[0].addr)
    );
}
