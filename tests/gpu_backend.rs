//! The CUDA backend on a real device: segments, fills and read-backs, the
//! primary context on threads that never used CUDA, and out-of-memory.
//! Skips, saying so, where no CUDA driver loads.

use graphalloc::{Allocator, BackendKind, Error};
use graphalloc_testkit::gpu;

fn cuda_allocator() -> Option<Allocator> {
    gpu::cuda_allocator(module_path!(), 1)
}

/// Held by the tests that read or fill the whole device's memory: the
/// test harness runs this file's tests in parallel, and the out-of-memory
/// test maps nearly all of it while another compares the device's free
/// memory before and after `empty_cache`.
static DEVICE_WIDE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fills `len` bytes at `ptr` with `byte` through the device and reads them back.
fn fill_and_read(alloc: &Allocator, ptr: graphalloc::DevicePtr, byte: u8, len: usize) -> Vec<u8> {
    let backend = alloc.backend(0).unwrap().copies().unwrap();
    let mut out = vec![0u8; len];
    // SAFETY: `ptr` is a live block of at least `len` bytes on device 0 that
    // this test owns, and no other work uses it.
    unsafe {
        backend.fill(ptr.addr(), byte, len).unwrap();
        backend.copy_to_host(ptr.addr(), &mut out).unwrap();
    }
    out
}

#[test]
fn cuda_blocks_hold_what_is_written_and_are_cached_after_free() {
    let Some(alloc) = cuda_allocator() else {
        return;
    };
    let _device = DEVICE_WIDE.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(alloc.backend_kind(), BackendKind::Cuda);
    let sizes = [512usize, 4096, 1 << 20, (1 << 20) + 512, 16 << 20, 64 << 20];
    let mut live = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let p = alloc.allocate(size, 512).unwrap();
        let byte = 0x10 + i as u8;
        let back = fill_and_read(&alloc, p, byte, size);
        assert!(
            back.iter().all(|&b| b == byte),
            "block of {size} bytes read back intact"
        );
        live.push((p, size, byte));
    }
    // Every block still holds its own pattern (no overlap between blocks).
    let backend = alloc.backend(0).unwrap().copies().unwrap();
    for &(p, size, byte) in &live {
        let mut out = vec![0u8; size];
        // SAFETY: `p` is live, `size` bytes, owned by this test.
        unsafe { backend.copy_to_host(p.addr(), &mut out).unwrap() };
        assert!(out.iter().all(|&b| b == byte));
    }
    let reserved = alloc.stats().caching.reserved_bytes;
    for &(p, _, _) in &live {
        alloc.free(p).unwrap();
    }
    let stats = alloc.stats();
    assert_eq!(stats.caching.allocated_bytes, 0);
    assert_eq!(
        stats.caching.reserved_bytes, reserved,
        "segments are cached"
    );
    // Cached: the same sizes come back without new segments.
    let before = stats.caching.segments_reserved;
    let again: Vec<_> = sizes
        .iter()
        .map(|&s| alloc.allocate(s, 512).unwrap())
        .collect();
    assert_eq!(alloc.stats().caching.segments_reserved, before);
    for p in again {
        alloc.free(p).unwrap();
    }
    let info_before = alloc.backend(0).unwrap().mem_info().unwrap();
    let released = alloc.empty_cache().unwrap();
    assert_eq!(released, reserved);
    let info_after = alloc.backend(0).unwrap().mem_info().unwrap();
    assert!(
        info_after.free >= info_before.free + released / 2,
        "device memory went back"
    );
    println!(
        "cuda: {} sizes written and read back; {} bytes cached and released",
        sizes.len(),
        released
    );
}

#[test]
fn threads_without_a_cuda_context_can_allocate_and_free() {
    let Some(alloc) = cuda_allocator() else {
        return;
    };
    let alloc = std::sync::Arc::new(alloc);
    let p = {
        let alloc = alloc.clone();
        // A fresh thread has no current context (like PyTorch's autograd thread).
        std::thread::spawn(move || alloc.allocate(1 << 20, 512).unwrap())
            .join()
            .unwrap()
    };
    let freer = alloc.clone();
    std::thread::spawn(move || {
        let back = fill_and_read(&freer, p, 0x5a, 1 << 20);
        assert!(back.iter().all(|&b| b == 0x5a));
        freer.free(p).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(alloc.stats().total.live_blocks, 0);
}

#[test]
fn cuda_out_of_memory_is_a_typed_error_with_device_figures() {
    let Some(alloc) = cuda_allocator() else {
        return;
    };
    let _device = DEVICE_WIDE.lock().unwrap_or_else(|e| e.into_inner());
    let total = alloc.backend(0).unwrap().mem_info().unwrap().total;
    match alloc.allocate(total + (1 << 30), 512) {
        Err(Error::TooLarge { requested, limit }) => {
            assert_eq!(requested, total + (1 << 30));
            assert_eq!(limit, total);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Fits the device on paper, but not with the driver's own reservations.
    let retries = alloc.stats().caching.oom_retries;
    match alloc.allocate(total - (64 << 20), 512) {
        Err(Error::OutOfMemory {
            requested,
            device_total,
            ..
        }) => {
            assert_eq!(requested, total - (64 << 20));
            assert_eq!(device_total, total);
            assert_eq!(alloc.stats().caching.oom_retries, retries + 1);
        }
        Ok(p) => {
            // Some drivers can hand out nearly everything; that is fine too.
            alloc.free(p).unwrap();
        }
        Err(other) => panic!("expected OutOfMemory, got {other:?}"),
    }
}
