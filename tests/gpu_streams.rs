//! Stream-ordered safety on a real device: a block freed after
//! `record_stream` is not reused while the other stream still reads it, and
//! a GLOBAL-mode capture that grows a pool stays valid; only registered
//! streams reach the driver (issue 13); streams the allocator makes are
//! live ones a trace replays on. Skips, saying so,
//! where no CUDA driver loads.

use graphalloc::Error;
use graphalloc_testkit::byte_gpu::{byte_gpu, handle, ByteGpu};
use std::io::Write;

fn gpu() -> Option<ByteGpu> {
    byte_gpu(module_path!())
}

#[test]
fn a_block_read_by_another_stream_is_not_reused_until_that_work_is_done() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let (a, b) = (g.stream(), g.stream());
    const N: usize = 8 << 20;

    // Control: without record_stream, the freed block comes straight back.
    let x0 = g.alloc.allocate_on(0, handle(&a), N, 512).unwrap();
    g.alloc.free(x0).unwrap();
    let y0 = g.alloc.allocate_on(0, handle(&a), N, 512).unwrap();
    assert_eq!(x0, y0, "same-stream reuse is immediate");
    g.alloc.free(y0).unwrap();

    let x = g.alloc.allocate_on(0, handle(&a), N, 512).unwrap();
    g.fill(&a, x, N, 0x11);
    a.synchronize().unwrap();
    let out = g.alloc.allocate_on(0, handle(&b), N, 512).unwrap();

    g.alloc.record_stream(x, handle(&b)).unwrap();
    // B waits 300 ms, then reads x.
    g.spin_copy(&b, out, x, N, 300_000_000);
    g.alloc.free(x).unwrap();
    let y = g.alloc.allocate_on(0, handle(&a), N, 512).unwrap();
    assert_ne!(
        x, y,
        "x must not be handed out while stream B still reads it"
    );
    g.fill(&a, y, N, 0xee); // would clobber x if y aliased it
    a.synchronize().unwrap();
    b.synchronize().unwrap();
    let seen = g.read(out, N);
    assert!(seen.iter().all(|&v| v == 0x11), "stream B read x intact");

    // B's work is done: x is reusable again.
    let z = g.alloc.allocate_on(0, handle(&a), N, 512).unwrap();
    assert_eq!(z, x, "reused after B's event completed");
    for p in [y, z, out] {
        g.alloc.free(p).unwrap();
    }
    let _ = writeln!(
        std::io::stderr(),
        "record_stream: x={x} kept from reuse while B ran; reused after"
    );
}

#[test]
fn only_registered_streams_reach_the_driver() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.ctx.new_stream().unwrap();
    let h = handle(&s);
    for bogus in [h, 0xdead_0000, u64::MAX] {
        let refused = Err(Error::UnknownStream { stream: bogus });
        assert_eq!(g.alloc.allocate_on(0, bogus, 4096, 512), refused);
    }
    g.alloc.register_stream(0, &s).unwrap();
    let p = g.alloc.allocate_on(0, h, 4096, 512).unwrap();
    g.fill(&s, p, 4096, 7);
    s.synchronize().unwrap();
    assert!(g.read(p, 4096).iter().all(|&b| b == 7));
    assert!(g.alloc.unregister_stream(0, h));
    assert!(g.alloc.allocate_on(0, h, 4096, 512).is_err());
    // The allocator keeps the stream alive while `p` names it: its free
    // still asks the driver about `h`.
    drop(s);
    g.alloc.free(p).unwrap();
    g.alloc.empty_cache().unwrap();
}

#[test]
fn streams_the_allocator_makes_are_live_streams_that_a_trace_replays_on() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let side = g.alloc.create_stream(0).unwrap();
    assert!(side > 2 && g.alloc.is_stream_registered(0, side));
    // The free of a block recorded on `side` records an event on it: the
    // driver accepts only a live stream of this device.
    let p = g.alloc.allocate_on(0, side, 4096, 512).unwrap();
    let q = g.alloc.allocate(4096, 512).unwrap();
    g.alloc.record_stream(q, side).unwrap();
    g.alloc.free(q).unwrap();
    g.alloc.free(p).unwrap();
    // A trace recorded on a side stream (its tag a cudaStream_t value).
    let text = "a 0 4096 0\na 1 4096 94366018711408\nf 0\nf 1\n";
    let trace = graphalloc::replay::Trace::parse_str("side", text).unwrap();
    let mut player = graphalloc::replay::Player::new(&trace);
    player.play(&g.alloc).unwrap();
    player.free_all(&g.alloc).unwrap();
    assert_eq!(g.alloc.stats().total.allocated_bytes, 0);
    g.alloc.empty_cache().unwrap();
}

#[test]
fn a_global_mode_capture_that_grows_a_pool_stays_valid_and_replays_right() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.stream();
    const N: usize = 32 << 20; // needs a fresh pool segment during capture
    let pools_before = g.alloc.stats().pools.segments_reserved;

    s.begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    // No guard: capture-aware routing must send these to a capture pool.
    let buf = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    let out = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    g.fill(&s, buf, N, 0x22);
    g.spin_copy(&s, out, buf, N, 0);
    let graph = s
        .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
        .expect("the capture stayed valid while the pool grew")
        .expect("a graph");
    let stats = g.alloc.stats();
    assert_eq!(
        stats.pools.live_blocks, 2,
        "both blocks came from a capture pool"
    );
    assert!(
        stats.pools.segments_reserved > pools_before,
        "the pool grew during capture"
    );

    for round in 0..100u32 {
        // Clobber the output eagerly, then replay: the graph must restore it.
        g.fill(&s, out, N, round as u8);
        graph.launch().unwrap();
    }
    s.synchronize().unwrap();
    assert!(
        g.read(out, N).iter().all(|&v| v == 0x22),
        "replays give the right result"
    );
    drop(graph);
    g.alloc.free(buf).unwrap();
    g.alloc.free(out).unwrap();
    assert_eq!(g.alloc.release_capture_pools(), 1);
    assert_eq!(
        g.alloc.stats().pools.reserved_bytes,
        0,
        "capture pool released"
    );
}
