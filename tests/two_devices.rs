//! Two simulated devices on the host backend: allocations on each, frees from
//! other threads, pools per device, statistics per device.

mod oracle;

use graphalloc::{Allocator, Backend, BackendError, Config, Error, HostBackend};
use oracle::TrackingBackend;
use std::sync::Arc;

fn two_devices() -> Arc<Allocator> {
    let config = Config {
        host_devices: 2,
        ..Config::host(1 << 30)
    };
    Arc::new(Allocator::new(config).unwrap())
}

#[test]
fn frees_from_other_threads_reach_the_device_that_owns_the_pointer() {
    let alloc = two_devices();
    let blocks: Vec<_> = (0..40)
        .map(|i| {
            let device = i % 2;
            (
                device,
                alloc.allocate_on(device, 0, 4096 * (1 + i), 512).unwrap(),
            )
        })
        .collect();
    let before = [
        alloc.device_stats(0).unwrap(),
        alloc.device_stats(1).unwrap(),
    ];
    assert_eq!(before[0].live_blocks, 20);
    assert_eq!(before[1].live_blocks, 20);
    let handles: Vec<_> = blocks
        .chunks(10)
        .map(|chunk| {
            let alloc = alloc.clone();
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for (device, p) in chunk {
                    assert_eq!(alloc.device_of(p), Some(device));
                    alloc.free(p).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for d in 0..2 {
        let s = alloc.device_stats(d).unwrap();
        assert_eq!(s.live_blocks, 0);
        assert_eq!(s.frees, 20, "device {d} got exactly its own frees");
    }
    alloc.empty_cache().unwrap();
    for d in 0..2 {
        assert_eq!(alloc.device_stats(d).unwrap().reserved_bytes, 0);
        assert_eq!(alloc.backend(d).unwrap().mem_info().unwrap().free, 1 << 30);
    }
}

#[test]
fn pools_on_each_device_hold_their_own_memory() {
    let alloc = two_devices();
    let pools = [
        alloc.create_pool_on(0).unwrap(),
        alloc.create_pool_on(1).unwrap(),
    ];
    let ptrs: Vec<_> = pools
        .iter()
        .map(|pool| {
            alloc
                .with_graph_mode(pool, || alloc.allocate(1 << 20, 512).unwrap())
                .unwrap()
        })
        .collect();
    for (d, (pool, p)) in pools.iter().zip(&ptrs).enumerate() {
        assert_eq!(pool.device(), d);
        assert_eq!(alloc.device_of(*p), Some(d));
        assert_eq!(alloc.pool_of(*p), Some(pool.id()));
        assert_eq!(pool.stats().live_blocks, 1);
    }
    // Each device reserved for its pool only.
    for (d, pool) in pools.iter().enumerate() {
        let info = alloc.backend(d).unwrap().mem_info().unwrap();
        assert_eq!(info.total - info.free, pool.stats().reserved_bytes);
    }
    std::thread::spawn({
        let alloc = alloc.clone();
        let ptrs = ptrs.clone();
        move || ptrs.into_iter().for_each(|p| alloc.free(p).unwrap())
    })
    .join()
    .unwrap();
    assert!(pools.iter().all(|p| p.stats().live_blocks == 0));
    let stats = alloc.stats();
    assert_eq!(stats.pools.allocations, 2);
    assert_eq!(stats.pools.frees, 2);
}

#[test]
fn backends_out_of_ordinal_order_are_a_typed_error() {
    let swapped: Vec<Arc<dyn Backend>> = vec![
        Arc::new(HostBackend::new(1, 64 << 20)),
        Arc::new(HostBackend::new(0, 64 << 20)),
    ];
    let e = Allocator::from_backends(swapped, 1.0).unwrap_err();
    assert_eq!(
        e,
        Error::BackendOrder {
            position: 0,
            ordinal: 1
        }
    );
    let gap: Vec<Arc<dyn Backend>> = vec![
        Arc::new(HostBackend::new(0, 64 << 20)),
        Arc::new(HostBackend::new(2, 64 << 20)),
    ];
    assert!(matches!(
        Allocator::from_backends(gap, 1.0),
        Err(Error::BackendOrder {
            position: 1,
            ordinal: 2
        })
    ));
}

#[test]
fn nested_guards_on_two_devices_serve_each_device_from_its_innermost_pool() {
    let alloc = two_devices();
    let p0 = alloc.create_pool_on(0).unwrap();
    let p1 = alloc.create_pool_on(1).unwrap();
    let _g0 = alloc.enter_graph_mode(&p0).unwrap();
    let _g1 = alloc.enter_graph_mode(&p1).unwrap();
    let on0 = alloc.allocate_on(0, 0, 4096, 512).unwrap();
    let on1 = alloc.allocate_on(1, 0, 4096, 512).unwrap();
    let plain = alloc.allocate(4096, 512).unwrap();
    assert_eq!(alloc.pool_of(on0), Some(p0.id()), "device 0: p0's guard");
    assert_eq!(alloc.pool_of(on1), Some(p1.id()), "device 1: p1's guard");
    assert_eq!(
        alloc.pool_of(plain),
        Some(p1.id()),
        "a plain allocate: the innermost guard's device and pool"
    );
    assert_eq!(alloc.device_stats(0).unwrap().allocations, 0);
    for p in [on0, on1, plain] {
        alloc.free(p).unwrap();
    }
}

#[test]
fn empty_cache_tries_every_device_and_reports_the_first_error() {
    let failing = TrackingBackend::with_ordinal(0, 64 << 20);
    let healthy = Arc::new(HostBackend::new(1, 64 << 20));
    let backends: Vec<Arc<dyn Backend>> = vec![failing.backend(), healthy.clone()];
    // Plain segments, whose releases the tracking backend can fail.
    let plain = Config {
        expandable_segments: false,
        ..Config::default()
    };
    let alloc = Allocator::from_backends_with(backends, &plain).unwrap();
    for device in 0..2 {
        let p = alloc.allocate_on(device, 0, 1 << 20, 512).unwrap();
        alloc.free(p).unwrap();
    }
    assert!(healthy.outstanding_bytes() > 0);
    failing.faults().fail_releases(true);
    assert_eq!(
        alloc.empty_cache(),
        Err(Error::Backend(BackendError::Injected { nth: 0 }))
    );
    assert_eq!(
        healthy.outstanding_bytes(),
        0,
        "device 1 was emptied although device 0 failed first"
    );
    failing.faults().fail_releases(false);
}
