//! Expandable segments on a real device: pages are never unmapped while
//! work queued on their stream may still use them. Skips, saying so, where
//! no CUDA driver loads.

use cudarc::driver::CudaStream;
use graphalloc::DevicePtr;
use graphalloc_testkit::byte_gpu::{byte_gpu, handle, ByteGpu};
use std::io::Write;

fn gpu() -> Option<ByteGpu> {
    byte_gpu(module_path!())
}

/// Queues on `s` a kernel that writes `value` into a block `x` of `n` bytes
/// after a 300 ms spin and one that then copies `x` into `out`, and frees
/// `x` on `s` at once (its pages become idle on the host while the writer
/// is still queued). Returns `(src, out)`, both live.
fn queue_writer_and_free(
    g: &ByteGpu,
    s: &CudaStream,
    n: usize,
    value: u8,
) -> (DevicePtr, DevicePtr) {
    let src = g.alloc.allocate_on(0, handle(s), n, 512).unwrap();
    let out = g.alloc.allocate_on(0, handle(s), n, 512).unwrap();
    let x = g.alloc.allocate_on(0, handle(s), n, 512).unwrap();
    g.fill(s, src, n, value);
    g.fill(s, out, n, 0);
    s.synchronize().unwrap();
    g.spin_copy(s, x, src, n, 300_000_000); // writes x in 300 ms
    g.spin_copy(s, out, x, n, 0); // then reads it back
    g.alloc.free(x).unwrap();
    (src, out)
}

/// After the reclaim: the queued kernels ran without a fault, and `out`
/// holds what the writer put in `x`.
fn assert_intact(g: &ByteGpu, s: &CudaStream, out: DevicePtr, n: usize, value: u8) {
    s.synchronize()
        .expect("the queued kernels ran without a fault");
    assert!(
        g.read(out, n).iter().all(|&v| v == value),
        "the kernel wrote x and the next one read it back intact"
    );
}

/// `empty_cache` unmaps the idle pages of `x` while its writer is queued:
/// it must wait for the stream first (unmapping early would fault the
/// writer or feed the reader garbage).
#[test]
fn pages_are_not_unmapped_while_queued_work_still_writes_them() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.stream();
    const N: usize = 32 << 20;
    let (src, out) = queue_writer_and_free(&g, &s, N, 0x5a);
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
    assert!(
        after.1.waits > before.1.waits,
        "empty_cache waited for the busy stream"
    );
    assert_intact(&g, &s, out, N, 0x5a);
    for p in [src, out] {
        g.alloc.free(p).unwrap();
    }
    let _ = writeln!(
        std::io::stderr(),
        "expandable: {} unmap call(s) waited for the stream",
        after.1.unmaps - before.1.unmaps
    );
}

/// The idle budget never waits: a large request on another stream
/// (another address range, so x's hole cannot hold it) takes the cache
/// past its budget while x's writer is still queued. The reclaim returns
/// without waiting for x's stream (no wait counted) and leaves x's pages
/// mapped (a fence recorded instead); the queued kernels run intact. Once
/// the stream's work is done, the next request past the budget unmaps
/// them, still without a wait.
#[test]
fn a_budget_reclaim_with_a_busy_stream_returns_without_waiting() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.stream();
    const N: usize = 64 << 20;
    let (src, out) = queue_writer_and_free(&g, &s, N, 0x3c);
    let before = g.alloc.mapping_stats();
    let t = g.stream();
    let big = g.alloc.allocate_on(0, handle(&t), 2 * N, 512).unwrap();
    let d = g.alloc.mapping_stats().since(&before);
    assert_eq!(d.waits, 0, "the budget reclaim waited: {d:?}");
    assert_eq!(d.unmaps, 0, "x's pages unmapped while its writer is queued");
    assert!(d.fences >= 1 && d.deferred_unmaps >= 1, "{d:?}");
    assert_intact(&g, &s, out, N, 0x3c);
    let before = g.alloc.mapping_stats();
    let more = g.alloc.allocate_on(0, handle(&t), 4 * N, 512).unwrap();
    let d = g.alloc.mapping_stats().since(&before);
    assert!(
        d.unmaps >= 1,
        "x's pages went once the work was done: {d:?}"
    );
    assert_eq!(d.waits, 0, "{d:?}");
    for p in [src, out, big, more] {
        g.alloc.free(p).unwrap();
    }
}

/// A block over several mapping units (cut every 128 MiB from the range's
/// base: one `cuMemCreate` handle each) is one stretch of memory to a
/// kernel, across the units' bounds; freed, its units are unmapped whole.
#[test]
fn a_block_over_several_mapping_units_is_one_stretch_of_memory() {
    let _serial = graphalloc_testkit::gpu::gpu_lock();
    let Some(g) = gpu() else { return };
    let s = g.stream();
    const N: usize = 300 << 20;
    let before = g.alloc.mapping_stats();
    let x = g.alloc.allocate_on(0, handle(&s), N, 512).unwrap();
    let maps = g.alloc.mapping_stats().maps - before.maps;
    assert!(maps >= 3, "{maps} map call(s) for 300 MiB");
    g.fill(&s, x, N, 0x7e);
    s.synchronize().unwrap();
    assert!(
        g.read(x, N).iter().all(|&v| v == 0x7e),
        "every byte written"
    );
    g.alloc.free(x).unwrap();
    g.alloc.empty_cache().unwrap();
    let after = g.alloc.mapping_stats();
    assert_eq!(
        after.unmapped_bytes - before.unmapped_bytes,
        after.mapped_bytes - before.mapped_bytes,
        "every unit mapped was unmapped"
    );
    let _ = writeln!(
        std::io::stderr(),
        "expandable: 300 MiB in {maps} map call(s), {} ns mapping",
        after.map_ns - before.map_ns
    );
}
