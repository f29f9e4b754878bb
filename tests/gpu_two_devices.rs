//! Two real GPUs: allocations on both devices from several threads, each
//! pointer freed from a thread whose current device is the other one, a graph
//! captured on each device into its own pool, and every byte back on its own
//! device after `empty_cache`. Skips, saying so, with fewer than two devices.
// Device ordinals index several per-device arrays here.
#![allow(clippy::needless_range_loop)]

use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use graphalloc::{Allocator, DevicePtr};
use graphalloc_testkit::gpu;
use std::io::Write;
use std::sync::Arc;

fn two_gpus() -> Option<Arc<Allocator>> {
    gpu::cuda_allocator(module_path!(), 2).map(Arc::new)
}

/// A progress line straight to stderr, so a crash shows how far it got.
fn step(what: &str) {
    let _ = writeln!(std::io::stderr(), "two devices: {what}");
}

fn free_bytes(alloc: &Allocator, device: usize) -> usize {
    alloc.backend(device).unwrap().mem_info().unwrap().free
}

#[test]
fn frees_from_the_other_device_reach_the_right_device_and_graphs_replay_on_each() {
    let Some(alloc) = two_gpus() else { return };
    step("contexts");
    let ctxs = [CudaContext::new(0).unwrap(), CudaContext::new(1).unwrap()];
    step("free memory at start");
    let start = [free_bytes(&alloc, 0), free_bytes(&alloc, 1)];

    step("allocating from four threads");
    // Four threads allocate on both devices.
    let sizes = [512usize, 1 << 20, 5 << 20, 48 << 20];
    let mut handles = Vec::new();
    for t in 0..4 {
        let alloc = alloc.clone();
        handles.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            for i in 0..50 {
                let device = (t + i) % 2;
                let size = sizes[(t * 7 + i) % sizes.len()];
                mine.push((device, alloc.allocate_on(device, 0, size, 512).unwrap()));
            }
            mine
        }));
    }
    let blocks: Vec<(usize, DevicePtr)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    for &(device, p) in &blocks {
        assert_eq!(alloc.device_of(p), Some(device));
    }
    let held = [
        alloc.device_stats(0).unwrap(),
        alloc.device_stats(1).unwrap(),
    ];
    assert!(held[0].live_blocks > 0 && held[1].live_blocks > 0);

    step("freeing from the other device's threads");
    // Each pointer is freed by a thread whose current context is the other device's.
    let mut handles = Vec::new();
    for other in 0..2usize {
        let alloc = alloc.clone();
        let ctx = ctxs[other].clone();
        let mine: Vec<DevicePtr> = blocks
            .iter()
            .filter(|(d, _)| *d != other)
            .map(|(_, p)| *p)
            .collect();
        handles.push(std::thread::spawn(move || {
            ctx.bind_to_thread().unwrap();
            for p in mine {
                alloc.free(p).unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    for d in 0..2 {
        let s = alloc.device_stats(d).unwrap();
        assert_eq!(s.live_blocks, 0, "device {d}");
        assert_eq!(
            s.frees, held[d].allocations,
            "every free of device {d} reached device {d}"
        );
    }

    step("capturing a graph on each device");
    // A graph on each device, each capturing into a pool of its own device.
    let mut outputs = Vec::new();
    let mut graphs = Vec::new();
    // The kernels must outlive the graphs that launch them.
    let mut kernels = Vec::new();
    for (d, ctx) in ctxs.iter().enumerate() {
        step(&format!("device {d}: module, stream, pool"));
        let module = ctx.load_module(Ptx::from_src(gpu::BYTE_KERNELS)).unwrap();
        let fill = module.load_function("fill").unwrap();
        kernels.push(fill.clone());
        let stream = ctx.new_stream().unwrap();
        alloc.register_stream(d, &stream).unwrap();
        let pool = alloc.create_pool_on(d).unwrap();
        alloc
            .set_capture_pool(stream.cu_stream() as u64, &pool)
            .unwrap();
        const N: usize = 24 << 20;
        stream
            .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
            .unwrap();
        step(&format!("device {d}: allocating during the capture"));
        let out = alloc
            .allocate_on(d, stream.cu_stream() as u64, N, 512)
            .unwrap();
        step(&format!("device {d}: launching"));
        let (dst, n, v) = (out.addr(), N as u64, 0x40 + d as u32);
        let mut launch = stream.launch_builder(&fill);
        launch.arg(&dst).arg(&n).arg(&v);
        // SAFETY: `out` is a live block of N bytes on this device, owned here.
        unsafe { launch.launch(LaunchConfig::for_num_elems(N as u32)) }.unwrap();
        step(&format!("device {d}: ending the capture"));
        let graph = stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .unwrap()
            .unwrap();
        assert_eq!(alloc.pool_of(out), Some(pool.id()));
        assert_eq!(pool.device(), d);
        outputs.push((d, out, pool, stream.clone()));
        graphs.push(graph);
    }
    step("replaying");
    for _ in 0..10 {
        for g in &graphs {
            g.launch().unwrap();
        }
    }
    for (d, out, _, stream) in &outputs {
        stream.synchronize().unwrap();
        let mut host = vec![0u8; 24 << 20];
        // SAFETY: `out` is live, 24 MiB, its stream synchronized.
        unsafe {
            alloc
                .backend(*d)
                .unwrap()
                .copies()
                .unwrap()
                .copy_to_host(out.addr(), &mut host)
        }
        .unwrap();
        assert!(
            host.iter().all(|&b| b == 0x40 + *d as u8),
            "replay on device {d}"
        );
    }
    step("releasing");
    drop(graphs);
    drop(kernels);
    for (d, out, pool, stream) in outputs {
        alloc.free(out).unwrap();
        alloc.clear_capture_pool(d, stream.cu_stream() as u64);
        drop(pool);
    }
    alloc.empty_cache().unwrap();
    for d in 0..2 {
        let now = free_bytes(&alloc, d);
        let _ = writeln!(
            std::io::stderr(),
            "device {d}: free {} MiB at start, {} MiB after empty_cache",
            start[d] >> 20,
            now >> 20
        );
        // The driver's own bookkeeping may move by a page or two.
        assert!(
            now + (4 << 20) >= start[d],
            "device {d} got its memory back"
        );
        assert_eq!(alloc.device_stats(d).unwrap().reserved_bytes, 0);
    }
}
