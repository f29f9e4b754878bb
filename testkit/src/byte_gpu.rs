//! The byte kernels on a bare CUDA allocator: fill, spin-then-copy and
//! read-back of raw blocks, for the stream-ordering tests.

use crate::gpu as bytes;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use graphalloc::{Allocator, DevicePtr};
use std::sync::Arc;

/// A CUDA allocator with the byte kernels loaded.
pub struct ByteGpu {
    /// The allocator under test (CUDA backend).
    pub alloc: Allocator,
    /// The context, for new streams.
    pub ctx: Arc<CudaContext>,
    fill: CudaFunction,
    spin_copy: CudaFunction,
}

/// The GPU, or `None` (saying so) without a CUDA driver.
pub fn byte_gpu(test: &str) -> Option<ByteGpu> {
    let alloc = bytes::cuda_allocator(test, 1)?;
    let ctx = CudaContext::new(0).unwrap();
    let module = ctx.load_module(Ptx::from_src(bytes::BYTE_KERNELS)).unwrap();
    Some(ByteGpu {
        alloc,
        fill: module.load_function("fill").unwrap(),
        spin_copy: module.load_function("spin_copy").unwrap(),
        ctx,
    })
}

/// A stream's handle as the allocator takes it.
pub fn handle(stream: &CudaStream) -> u64 {
    stream.cu_stream() as u64
}

/// Blocks of 256 threads that run `spin_copy`.
const SPIN_BLOCKS: u32 = 32;

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n as u32)
}

impl ByteGpu {
    /// A new stream of device 0, registered with the allocator (which
    /// accepts only built-in and registered streams).
    pub fn stream(&self) -> Arc<CudaStream> {
        let s = self.ctx.new_stream().unwrap();
        self.alloc.register_stream(0, &s).unwrap();
        s
    }

    /// Queues `dst[0..n] = value` on `stream`.
    pub fn fill(&self, stream: &CudaStream, dst: DevicePtr, n: usize, value: u8) {
        let (d, n64, v) = (dst.addr(), n as u64, value as u32);
        let mut launch = stream.launch_builder(&self.fill);
        launch.arg(&d).arg(&n64).arg(&v);
        // SAFETY: `dst` is a live block of at least `n` bytes owned by the
        // test; the kernel writes exactly bytes [0, n) of it.
        unsafe { launch.launch(cfg(n)) }.unwrap();
    }

    /// Queues, on `stream`: spin for `ns` nanoseconds, then copy `n` bytes
    /// from `src` to `dst`.
    pub fn spin_copy(
        &self,
        stream: &CudaStream,
        dst: DevicePtr,
        src: DevicePtr,
        n: usize,
        ns: u64,
    ) {
        let (d, s, n64) = (dst.addr(), src.addr(), n as u64);
        let mut launch = stream.launch_builder(&self.spin_copy);
        launch.arg(&d).arg(&s).arg(&n64).arg(&ns);
        // A small grid that copies in a grid-stride loop: every thread
        // spins `ns` once, however large `n` is.
        let grid = LaunchConfig {
            grid_dim: (SPIN_BLOCKS, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: both are blocks of at least `n` bytes, live when the work
        // is queued; the allocator keeps them from reuse (and their pages
        // mapped) until this stream's work is done, the properties the
        // tests check; `dst` is owned by the test. The kernel touches
        // exactly bytes [0, n) of each.
        unsafe { launch.launch(grid) }.unwrap();
    }

    /// Copies `n` bytes of `ptr` to the host.
    pub fn read(&self, ptr: DevicePtr, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        // SAFETY: `ptr` is a live block of at least `n` bytes, and the
        // streams writing it have been synchronized.
        unsafe {
            self.alloc
                .backend(0)
                .unwrap()
                .copies()
                .unwrap()
                .copy_to_host(ptr.addr(), &mut out)
        }
        .unwrap();
        out
    }
}
