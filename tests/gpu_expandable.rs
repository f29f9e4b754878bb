//! Expandable segments on a real device: pages are never unmapped while
//! work queued on their stream may still use them. Skips, saying so, where
//! no CUDA driver loads.

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
mod gpu_support;

use gpu_support::bytes;
use graphalloc::{Allocator, DevicePtr};
use std::io::Write;
use std::sync::Arc;

struct Gpu {
    alloc: Allocator,
    ctx: Arc<CudaContext>,
    fill: CudaFunction,
    spin_copy: CudaFunction,
}

fn gpu() -> Option<Gpu> {
    let alloc = bytes::cuda_allocator(module_path!(), 1)?;
    let ctx = CudaContext::new(0).unwrap();
    let module = ctx.load_module(Ptx::from_src(bytes::BYTE_KERNELS)).unwrap();
    Some(Gpu {
        alloc,
        fill: module.load_function("fill").unwrap(),
        spin_copy: module.load_function("spin_copy").unwrap(),
        ctx,
    })
}

fn handle(stream: &CudaStream) -> u64 {
    stream.cu_stream() as u64
}

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n as u32)
}

impl Gpu {
    fn fill(&self, stream: &CudaStream, dst: DevicePtr, n: usize, value: u8) {
        let (d, n64, v) = (dst.addr(), n as u64, value as u32);
        let mut launch = stream.launch_builder(&self.fill);
        launch.arg(&d).arg(&n64).arg(&v);
        // SAFETY: `dst` is a live block of at least `n` bytes owned by the
        // test; the kernel writes exactly bytes [0, n) of it.
        unsafe { launch.launch(cfg(n)) }.unwrap();
    }

    /// After `ns` nanoseconds, copies `n` bytes from `src` to `dst`.
    fn spin_copy(&self, stream: &CudaStream, dst: DevicePtr, src: DevicePtr, n: usize, ns: u64) {
        let (d, s, n64) = (dst.addr(), src.addr(), n as u64);
        let mut launch = stream.launch_builder(&self.spin_copy);
        launch.arg(&d).arg(&s).arg(&n64).arg(&ns);
        // SAFETY: both are blocks of at least `n` bytes, live when the work
        // is queued; the allocator must keep their pages mapped until the
        // stream's work is done (the property under test).
        unsafe { launch.launch(cfg(n)) }.unwrap();
    }

    fn read(&self, ptr: DevicePtr, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        // SAFETY: `ptr` is a live block of at least `n` bytes, and the
        // streams writing it have been synchronized.
        unsafe {
            self.alloc
                .backend(0)
                .unwrap()
                .copy_to_host(ptr.addr(), &mut out)
        }
        .unwrap();
        out
    }
}

/// A kernel still writing to `x` (after a 300 ms spin) and one reading it
/// back are queued on stream S; `x` is freed on S, so its pages become
/// idle at once on the host, and `empty_cache` reclaims them. Unmapping
/// before S's work completed would fault the writer (or feed the reader
/// garbage): the reclaim must wait for S first.
#[test]
fn pages_are_not_unmapped_while_queued_work_still_writes_them() {
    let _serial = gpu_support::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.ctx.new_stream().unwrap();
    const N: usize = 32 << 20;
    let src = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    let out = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    let x = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    g.fill(&s, src, N, 0x5a);
    g.fill(&s, out, N, 0x00);
    s.synchronize().unwrap();

    g.spin_copy(&s, x, src, N, 300_000_000); // writes x in 300 ms
    g.spin_copy(&s, out, x, N, 0); // then reads it
    g.alloc.free(x).unwrap();
    let before = (
        g.alloc.stats().caching.reserved_bytes,
        g.alloc.mapping_stats(),
    );
    g.alloc.empty_cache().unwrap();
    let after = (
        g.alloc.stats().caching.reserved_bytes,
        g.alloc.mapping_stats(),
    );
    assert!(
        after.0 + N <= before.0 && after.1.unmaps > before.1.unmaps,
        "x's pages were unmapped: reserved {} -> {}",
        before.0,
        after.0
    );
    s.synchronize()
        .expect("the queued kernels ran without a fault");
    assert!(
        g.read(out, N).iter().all(|&v| v == 0x5a),
        "the kernel wrote x and the next one read it back intact"
    );
    for p in [src, out] {
        g.alloc.free(p).unwrap();
    }
    let _ = writeln!(
        std::io::stderr(),
        "expandable: {} unmap call(s) waited for the stream",
        after.1.unmaps - before.1.unmaps
    );
}

/// The same through the budget instead of `empty_cache`: idle pages under
/// a freed block whose writer is still queued are reclaimed because a
/// large request on another stream would take the cache past its idle
/// budget.
#[test]
fn a_budget_reclaim_waits_for_queued_work_too() {
    let _serial = gpu_support::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.ctx.new_stream().unwrap();
    const N: usize = 64 << 20;
    let src = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    let out = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    let x = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    g.fill(&s, src, N, 0x3c);
    s.synchronize().unwrap();
    g.spin_copy(&s, x, src, N, 300_000_000);
    g.spin_copy(&s, out, x, N, 0);
    g.alloc.free(x).unwrap();
    let unmaps = g.alloc.mapping_stats().unmaps;
    // On another stream (its own address range), so x's hole cannot hold
    // it; mapping it whole would pass the budget, so x's idle pages go
    // first, after S's work.
    let t = g.ctx.new_stream().unwrap();
    let big = g.alloc.allocate_on(0, handle(&t), 2 * N, 512).unwrap();
    assert!(
        g.alloc.mapping_stats().unmaps > unmaps,
        "the request reclaimed idle pages"
    );
    s.synchronize()
        .expect("the queued kernels ran without a fault");
    assert!(g.read(out, N).iter().all(|&v| v == 0x3c));
    for p in [src, out, big] {
        g.alloc.free(p).unwrap();
    }
}
