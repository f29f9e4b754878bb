//! Out-of-memory reports (issue 18): what the error says, checked against
//! `stats()`, and the observers: called exactly once per failure, outside
//! the allocator's locks (an observer that reads `stats()` and allocates
//! does not deadlock), under threads too.

use graphalloc::{Allocator, Config, Error, HostBackend, MemoryUsageStats, OomOwner, OomReport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const MIB: usize = 1 << 20;

fn host(capacity: usize) -> (Allocator, Arc<HostBackend>) {
    let host = Arc::new(HostBackend::new(0, capacity));
    let alloc = Allocator::from_backends(vec![host.clone()], 1.0).unwrap();
    (alloc, host)
}

/// Reports seen, each with the `stats()` an observer read while handling it.
type Seen = Arc<Mutex<Vec<(OomReport, MemoryUsageStats)>>>;

/// Adds an observer that records each report with `stats()`, then
/// allocates and frees a small block (the allocator's locks are free).
fn observe(alloc: &Arc<Allocator>) -> Seen {
    let seen: Seen = Arc::default();
    let (log, a) = (seen.clone(), Arc::downgrade(alloc));
    alloc.on_out_of_memory(move |r| {
        let a = a.upgrade().expect("the allocator is alive");
        let stats = a.stats();
        log.lock().unwrap().push((r.clone(), stats));
        let p = a.allocate(4096, 512).expect("room for a small block");
        a.free(p).unwrap();
    });
    seen
}

fn report_of(err: &Error) -> &OomReport {
    match err {
        Error::OutOfMemory { report, .. } => report,
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}

#[test]
fn the_report_agrees_with_stats_and_each_failure_is_observed_once() {
    let (alloc, _backend) = host(64 * MIB);
    let alloc = Arc::new(alloc);
    let seen = observe(&alloc);
    let pool = alloc.create_pool();
    // 20 MiB live in the cache, 12 MiB live in a pool whose 2 MiB block
    // was freed (idle in the pool), a small cached block freed.
    let eager = alloc.allocate(20 * MIB, 512).unwrap();
    let (pooled, spare) = alloc
        .with_graph_mode(&pool, || {
            let spare = alloc.allocate(2 * MIB, 512).unwrap();
            (alloc.allocate(12 * MIB, 512).unwrap(), spare)
        })
        .unwrap();
    alloc.free(spare).unwrap();
    let idle = alloc.allocate(1000, 512).unwrap();
    alloc.free(idle).unwrap();

    let err = alloc.allocate(40 * MIB, 512).unwrap_err();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 1, "one failure, one call");
    let (r, s) = &seen[0];
    assert_eq!(
        report_of(&err),
        r,
        "the error carries what the observer saw"
    );
    assert_eq!(
        (r.device, r.requested, r.owner),
        (0, 40 * MIB, OomOwner::Cache)
    );
    // The stats read inside the observer: the report's books are theirs.
    assert_eq!(r.reserved, s.total.reserved_bytes);
    assert_eq!(r.allocated, s.total.allocated_bytes);
    assert_eq!(
        r.cache_idle,
        s.caching.reserved_bytes - s.caching.allocated_bytes
    );
    assert_eq!(
        r.pool_idle,
        s.pools.reserved_bytes - s.pools.allocated_bytes
    );
    assert!(r.pool_idle >= 2 * MIB, "{r:?}");
    assert_eq!((r.device_total, r.limit), (64 * MIB, None));
    // The host device's free memory is what graphalloc does not hold.
    assert_eq!(r.device_free, r.device_total - r.reserved);
    assert_eq!(
        r.largest_live.iter().map(|b| b.1).collect::<Vec<_>>(),
        [20 * MIB, 12 * MIB],
        "largest first"
    );
    assert_eq!(r.largest_live[0].0, eager.addr());
    assert_eq!(r.largest_live[1].0, pooled.addr());
    assert!(
        r.largest_free_block >= 2 * MIB,
        "the pool's freed block: {r:?}"
    );
    let text = err.to_string();
    for part in [
        "tried to allocate 41943040 bytes",
        "the caching allocator of device 0 ran out",
        "largest live blocks: 20.00 MiB at",
        "try: dropping or resetting graph pools",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
    assert_eq!(
        alloc.stats().total.oom_retries,
        1,
        "no extra retry for the report"
    );

    // Graph mode: the pool ran out, and says so.
    let err = alloc
        .with_graph_mode(&pool, || alloc.allocate(40 * MIB, 512))
        .unwrap()
        .unwrap_err();
    let r = report_of(&err);
    assert_eq!(r.owner, OomOwner::GraphPool(pool.id()));
    assert!(err
        .to_string()
        .contains(&format!("graph pool {} of device 0 ran out", pool.id())));
    assert!(err
        .to_string()
        .contains("`empty_cache()` before the capture"));
    assert_eq!(observe_count(&alloc, 2), 2);
    alloc.free(eager).unwrap();
    alloc.free(pooled).unwrap();
}

/// Adds a counting observer, makes `failures` requests of 40 MiB fail (the
/// caller holds enough), removes the observer (which then is gone), and
/// returns how many calls it got.
fn observe_count(alloc: &Allocator, failures: usize) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let id = alloc.on_out_of_memory(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    for _ in 0..failures {
        let err = alloc.allocate(40 * MIB, 512).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    }
    assert!(alloc.remove_out_of_memory_observer(id));
    assert!(!alloc.remove_out_of_memory_observer(id));
    count.load(Ordering::SeqCst)
}

#[test]
fn observers_run_exactly_once_per_failure_under_threads() {
    let (alloc, _backend) = host(64 * MIB);
    let alloc = Arc::new(alloc);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let a = Arc::downgrade(&alloc);
    alloc.on_out_of_memory(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        // Reading the stats from inside, with other threads allocating.
        let _ = a.upgrade().unwrap().stats();
    });
    let live = alloc.allocate(40 * MIB, 512).unwrap();
    let failures: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut failed = 0;
                    for i in 0..50 {
                        match alloc.allocate(if i % 2 == 0 { 40 * MIB } else { 4096 }, 512) {
                            Ok(p) => alloc.free(p).unwrap(),
                            Err(Error::OutOfMemory { .. }) => failed += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(failures >= 100, "every 40 MiB request fails: {failures}");
    assert_eq!(calls.load(Ordering::SeqCst), failures);
    // A second observer sees its failures; removed, it sees no more.
    assert_eq!(observe_count(&alloc, 3), 3);
    assert_eq!(calls.load(Ordering::SeqCst), failures + 3);
    alloc.free(live).unwrap();
}

#[test]
fn a_memory_fraction_gets_its_hint() {
    let host = Arc::new(HostBackend::new(0, 64 * MIB));
    let config = Config::parse("memory_fraction:0.5,expandable_segments:false").unwrap();
    let alloc = Allocator::from_backends_with(vec![host], &config).unwrap();
    let a = alloc.allocate(12 * MIB, 512).unwrap();
    let err = alloc.allocate(24 * MIB, 512).unwrap_err();
    let r = report_of(&err);
    assert_eq!(r.limit, Some(32 * MIB));
    assert!(
        err.to_string().contains("a larger `memory_fraction`"),
        "{err}"
    );
    alloc.free(a).unwrap();
}

/// An observer that retries the failed request (a natural "free something
/// and try again" handler) is called once per failure of the caller's
/// request: the failure of its own retry returns its error to it but is not
/// reported to it again, so it cannot recurse without end.
#[test]
fn an_observer_that_retries_the_request_is_not_reentered() {
    let alloc = Arc::new(Allocator::new(Config::host(64 << 20)).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(Mutex::new(Vec::new()));
    let (weak, counted, seen) = (Arc::downgrade(&alloc), calls.clone(), retries.clone());
    alloc.on_out_of_memory(move |r| {
        if counted.fetch_add(1, Ordering::SeqCst) > 8 {
            panic!("the observer was re-entered");
        }
        let alloc = weak.upgrade().expect("the allocator is alive");
        let retry = alloc.allocate(r.requested, 512);
        seen.lock().unwrap().push(retry.map(drop).is_err());
    });
    let live = alloc.allocate(40 << 20, 512).unwrap();
    for _ in 0..2 {
        let err = alloc.allocate(40 << 20, 512).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "once per failed request");
    assert_eq!(
        *retries.lock().unwrap(),
        [true, true],
        "each retry failed too"
    );
    alloc.free(live).unwrap();
}
