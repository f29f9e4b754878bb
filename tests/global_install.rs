//! The process-wide allocator. This file is its own test binary, so its own
//! process: the global is installed here exactly once. Every test that
//! touches the global lives in the one `#[test]` below (tests of a binary
//! share the process and run in any order); the other test uses a private
//! `AllocatorSlot`.

use graphalloc::{
    global, graph_mode, install, is_graph_mode, try_global, AllocatorSlot, BackendKind, Config,
    Error, GraphPool,
};

const CAPACITY: usize = 256 << 20;

#[test]
fn install_once_then_global_routes_allocations_by_mode() {
    // install works once ...
    let installed = install(Config::host(CAPACITY)).expect("first install");
    assert_eq!(installed.backend_kind(), BackendKind::Host);
    // ... and a second install fails, keeping the first allocator.
    assert_eq!(
        install(Config::host(1 << 20)).unwrap_err(),
        Error::AlreadyInstalled
    );
    assert!(std::ptr::eq(global(), installed));
    assert!(std::ptr::eq(try_global().unwrap(), installed));
    let info = global().backend(0).unwrap().mem_info().unwrap();
    assert_eq!(info.total, CAPACITY, "the first configuration is in force");

    // graph_mode on GraphPool::new() routes global allocations to the pool.
    let pool = GraphPool::new();
    assert!(!is_graph_mode());
    let captured = {
        let _g = graph_mode(&pool);
        assert!(is_graph_mode());
        assert!(global().is_graph_mode());
        global().allocate(1 << 20, 256).unwrap()
    };
    assert!(!is_graph_mode());
    assert!(!global().is_graph_mode());
    assert_eq!(pool.stats().live_blocks, 1);
    assert_eq!(pool.stats().requested_bytes, 1 << 20);
    let eager = global().allocate(4096, 256).unwrap();
    let s = global().stats();
    assert_eq!(s.pools.live_blocks, 1);
    assert_eq!(s.caching.live_blocks, 1, "outside graph mode: the cache");
    assert_eq!(s.caching.requested_bytes, 4096);

    // Another thread in graph mode on another pool leaves this one alone.
    let other = GraphPool::new();
    let from_thread = std::thread::scope(|s| {
        s.spawn(|| {
            let _g = graph_mode(&other);
            global().allocate(512, 256).unwrap()
        })
        .join()
        .unwrap()
    });
    assert!(!is_graph_mode());
    assert_eq!(other.stats().live_blocks, 1);
    assert_eq!(pool.stats().live_blocks, 1);

    // Frees are routed by ownership, from any thread.
    std::thread::scope(|s| {
        s.spawn(|| global().free(captured).unwrap());
    });
    assert_eq!(pool.stats().live_blocks, 0);
    assert_eq!(pool.stats().frees, 1);
    global().free(from_thread).unwrap();
    assert_eq!(other.stats().live_blocks, 0);
    global().free(eager).unwrap();
    assert_eq!(
        global().free(eager),
        Err(Error::DoubleFree { ptr: eager.addr() })
    );
    let s = global().stats();
    assert_eq!(s.total.live_blocks, 0);
    assert_eq!(s.total.allocations, 3);
    assert_eq!(s.total.frees, 3);
}

#[test]
fn an_allocator_slot_is_set_once() {
    let slot = AllocatorSlot::new();
    assert!(slot.installed().is_none());
    let first = slot.install(Config::host(8 << 20)).unwrap();
    assert!(std::ptr::eq(slot.installed().unwrap(), first));
    assert_eq!(
        slot.install(Config::host(16 << 20)).unwrap_err(),
        Error::AlreadyInstalled
    );
    // `get` returns the installed allocator rather than building one.
    assert!(std::ptr::eq(slot.get().unwrap(), first));
    let total = first.backend(0).unwrap().mem_info().unwrap().total;
    assert_eq!(total, 8 << 20, "the slot kept its first allocator");
}
