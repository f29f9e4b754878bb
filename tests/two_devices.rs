//! Two simulated devices on the host backend: allocations on each, frees from
//! other threads, pools per device, statistics per device.

use graphalloc::{Allocator, Config};
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
