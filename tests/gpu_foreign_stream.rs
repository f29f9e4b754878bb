//! A stream of another device is refused (issue 13): before, `record_stream`
//! with device 1's stream on a device-0 block was accepted, the event could
//! not be recorded there, and the block never became reusable. Now the
//! registry refuses it: registering it on device 0 is refused, and once
//! registered on device 1 it is refused on device 0. Skips, saying so, with
//! fewer than two devices.

use cudarc::driver::CudaContext;

use graphalloc::{BackendError, Error};
use graphalloc_testkit::gpu;

#[test]
fn a_stream_of_another_device_is_a_typed_error() {
    let Some(alloc) = gpu::cuda_allocator(module_path!(), 2) else {
        return;
    };
    let other = CudaContext::new(1).unwrap().new_stream().unwrap();
    let foreign = other.cu_stream() as u64;
    let p = alloc.allocate_on(0, 0, 1 << 20, 512).unwrap();
    let before = alloc.stats();
    let refused = |e: Error| {
        matches!(
            e,
            Error::Backend(BackendError::ForeignStream {
                stream_device: 1,
                device: 0,
                ..
            })
        )
    };
    let e = alloc.register_stream(0, &other).unwrap_err();
    assert!(refused(e.clone()), "{e:?}");
    alloc.register_stream(1, &other).unwrap();
    let e = alloc.record_stream(p, foreign).unwrap_err();
    assert!(refused(e.clone()), "{e:?}");
    let e = alloc.allocate_on(0, foreign, 4096, 512).unwrap_err();
    assert!(refused(e.clone()), "{e:?}");
    assert_eq!(alloc.stats(), before);
    // A stream of the block's own device is fine.
    let own = CudaContext::new(0).unwrap().new_stream().unwrap();
    alloc.register_stream(0, &own).unwrap();
    alloc.record_stream(p, own.cu_stream() as u64).unwrap();
    alloc.free(p).unwrap();
    own.synchronize().unwrap();
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().caching.pending_frees, 0);
    assert_eq!(alloc.stats().caching.reserved_bytes, 0);
}
