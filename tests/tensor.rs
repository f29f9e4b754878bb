//! `DeviceBuffer` and `Tensor` on the host backend: copies, drop routing,
//! graph memory and `ensure_graph_compatible`.

use graphalloc::tensor::{DType, DeviceBuffer, Element, Tensor};
use graphalloc::{Allocator, Backend, Config, Error, HostBackend};
use std::sync::Arc;

fn host() -> Allocator {
    Allocator::new(Config::host(1 << 30)).unwrap()
}

#[test]
fn buffer_round_trips_through_device_memory() {
    let alloc = host();
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let mut buf = DeviceBuffer::from_slice(&alloc, &data).unwrap();
    assert_eq!(buf.len(), 1000);
    assert_eq!(buf.num_bytes(), 4000);
    assert!(!buf.is_empty());
    assert_eq!(buf.device(), 0);
    assert_eq!(buf.stream(), graphalloc::DEFAULT_STREAM);
    assert_eq!(buf.pool_id(), None);
    assert_eq!(buf.to_vec().unwrap(), data);
    assert_eq!(alloc.requested_size(buf.device_ptr()), Some(4000));
    assert_eq!(buf.device_ptr().addr() % 512, 0, "block aligned");

    let other: Vec<f32> = data.iter().map(|x| -x).collect();
    buf.copy_from_host(&other).unwrap();
    let mut back = vec![0.0f32; 1000];
    buf.copy_to_host(&mut back).unwrap();
    assert_eq!(back, other);

    buf.zero().unwrap();
    assert!(buf.to_vec().unwrap().iter().all(|&x| x == 0.0));
    let z = DeviceBuffer::<i64>::zeros(&alloc, 33).unwrap();
    assert_eq!(z.to_vec().unwrap(), vec![0i64; 33]);
}

#[test]
fn every_element_type_round_trips() {
    fn check<T: Element + PartialEq>(alloc: &Allocator, data: &[T]) {
        let buf = DeviceBuffer::from_slice(alloc, data).unwrap();
        assert_eq!(buf.to_vec().unwrap(), data);
    }
    let alloc = host();
    check(&alloc, &[1.5f32, -2.0]);
    check(&alloc, &[1.5f64, -2.0]);
    check(&alloc, &[-1i8, 2]);
    check(&alloc, &[-1i16, 2]);
    check(&alloc, &[-1i32, 2]);
    check(&alloc, &[-1i64, i64::MAX]);
    check(&alloc, &[1u8, 255]);
    check(&alloc, &[1u16, 65535]);
    check(&alloc, &[1u32, u32::MAX]);
    check(&alloc, &[1u64, u64::MAX]);
}

#[test]
fn empty_buffers_own_no_memory() {
    let alloc = host();
    let before = alloc.live_pointers();
    let empty = DeviceBuffer::<f32>::from_slice(&alloc, &[]).unwrap();
    assert!(empty.is_empty());
    assert!(empty.device_ptr().is_null());
    assert_eq!(alloc.live_pointers(), before);
    assert_eq!(empty.to_vec().unwrap(), Vec::<f32>::new());
    let clone = empty.try_clone().unwrap();
    assert!(clone.device_ptr().is_null());
    let t = Tensor::zeros(&alloc, &[4, 0], DType::F32).unwrap();
    assert_eq!((t.numel(), t.num_bytes()), (0, 0));
    assert!(t.is_graph_compatible(), "nothing for a graph to point at");
    drop((empty, clone, t));
    assert_eq!(alloc.live_pointers(), before);
}

#[test]
fn try_clone_and_copy_from_copy_device_to_device() {
    let alloc = host();
    let a = DeviceBuffer::from_slice(&alloc, &[1u32, 2, 3, 4]).unwrap();
    let b = a.try_clone().unwrap();
    assert_ne!(a.device_ptr(), b.device_ptr());
    assert_eq!(b.to_vec().unwrap(), [1, 2, 3, 4]);
    let mut c = DeviceBuffer::<u32>::zeros(&alloc, 4).unwrap();
    c.copy_from(&b).unwrap();
    assert_eq!(c.to_vec().unwrap(), [1, 2, 3, 4]);
    drop(a);
    assert_eq!(c.to_vec().unwrap(), [1, 2, 3, 4], "copies are independent");
}

#[test]
#[should_panic(expected = "length")]
fn copy_from_host_with_the_wrong_length_panics() {
    let alloc = host();
    let mut buf = DeviceBuffer::<f32>::zeros(&alloc, 4).unwrap();
    let _ = buf.copy_from_host(&[1.0; 3]);
}

#[test]
fn dropping_a_buffer_frees_its_block_to_the_cache() {
    let alloc = host();
    let buf = DeviceBuffer::<u8>::zeros(&alloc, 1 << 20).unwrap();
    let ptr = buf.device_ptr();
    assert_eq!(alloc.stats().caching.live_blocks, 1);
    drop(buf);
    let stats = alloc.stats();
    assert_eq!(stats.caching.live_blocks, 0);
    assert_eq!(stats.caching.allocated_bytes, 0);
    assert_eq!(alloc.live_pointers(), 0);
    assert!(alloc.requested_size(ptr).is_none());
    // Cached: the next buffer of the same size reuses the block.
    let again = DeviceBuffer::<u8>::zeros(&alloc, 1 << 20).unwrap();
    assert_eq!(again.device_ptr(), ptr);
}

#[test]
fn a_pool_buffer_dropped_after_the_guard_returns_to_its_pool() {
    let alloc = host();
    let pool = alloc.create_pool();
    let (buf, t) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        (
            DeviceBuffer::from_slice(&alloc, &[7u8; 4096]).unwrap(),
            Tensor::zeros(&alloc, &[256, 256], DType::F32).unwrap(),
        )
    };
    assert!(buf.is_graph_memory());
    assert_eq!(buf.pool_id(), Some(pool.id()));
    assert!(t.is_graph_compatible());
    assert_eq!(t.pool_id(), Some(pool.id()));
    let stats = pool.stats();
    assert_eq!(stats.live_blocks, 2);
    assert_eq!(stats.allocated_bytes, 4096 + (256 * 256 * 4));
    assert_eq!(alloc.stats().caching.live_blocks, 0);

    assert!(!alloc.is_graph_mode());
    drop(buf);
    let stats = pool.stats();
    assert_eq!(stats.live_blocks, 1, "routed to the pool, not the cache");
    assert_eq!(stats.allocated_bytes, 256 * 256 * 4);
    drop(t);
    assert_eq!(pool.stats().live_blocks, 0);
    assert_eq!(pool.stats().allocated_bytes, 0);
    assert_eq!(alloc.stats().caching.frees, 0, "the cache freed nothing");
    pool.reset().unwrap();
}

#[test]
fn a_pool_buffer_dropped_on_another_thread_returns_to_its_pool() {
    let alloc = host();
    let pool = alloc.create_pool();
    let buf = alloc
        .with_graph_mode(&pool, || DeviceBuffer::<f64>::zeros(&alloc, 1000))
        .unwrap()
        .unwrap();
    assert_eq!(pool.stats().live_blocks, 1);
    std::thread::scope(|s| {
        s.spawn(move || drop(buf));
    });
    assert_eq!(pool.stats().live_blocks, 0);
}

#[test]
fn a_buffer_outliving_its_pool_handle_still_frees_into_it() {
    let alloc = host();
    let pool = alloc.create_pool();
    let buf = alloc
        .with_graph_mode(&pool, || DeviceBuffer::<u8>::zeros(&alloc, 1 << 21))
        .unwrap()
        .unwrap();
    drop(pool);
    assert!(alloc.stats().pools.reserved_bytes > 0);
    drop(buf);
    assert_eq!(
        alloc.stats().pools.reserved_bytes,
        0,
        "the pool's segments went back once its last block was freed"
    );
}

#[test]
fn tensor_shape_dtype_and_sizes() {
    let alloc = host();
    for (dtype, size) in [
        (DType::F32, 4),
        (DType::F64, 8),
        (DType::F16, 2),
        (DType::BF16, 2),
        (DType::I8, 1),
        (DType::I16, 2),
        (DType::I32, 4),
        (DType::I64, 8),
        (DType::U8, 1),
    ] {
        assert_eq!(dtype.size(), size);
        let t = Tensor::zeros(&alloc, &[2, 3, 5], dtype).unwrap();
        assert_eq!(t.shape(), [2, 3, 5]);
        assert_eq!(t.ndim(), 3);
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.numel(), 30);
        assert_eq!(t.num_bytes(), 30 * size);
        assert_eq!(alloc.requested_size(t.device_ptr()), Some(30 * size));
        assert_eq!(t.to_bytes().unwrap(), vec![0u8; 30 * size]);
    }
    let scalar = Tensor::from_slice(&alloc, &[42i32], &[]).unwrap();
    assert_eq!((scalar.ndim(), scalar.numel()), (0, 1));
    assert_eq!(scalar.to_vec::<i32>().unwrap(), [42]);

    let t = Tensor::from_slice(&alloc, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let ptr = t.device_ptr();
    let t = t.reshape(&[3, 2]);
    assert_eq!(t.shape(), [3, 2]);
    assert_eq!(t.device_ptr(), ptr, "reshape keeps the memory");
    assert_eq!(t.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn tensors_and_typed_buffers_convert_without_copying() {
    let alloc = host();
    let pool = alloc.create_pool();
    let t = alloc
        .with_graph_mode(&pool, || {
            Tensor::from_slice(&alloc, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])
        })
        .unwrap()
        .unwrap();
    let ptr = t.device_ptr();
    let live = alloc.live_pointers();
    let buf = t.into_typed_buffer::<f32>();
    assert_eq!((buf.device_ptr(), buf.len()), (ptr, 4));
    assert_eq!(buf.pool_id(), Some(pool.id()), "still the pool's block");
    assert_eq!(alloc.live_pointers(), live, "nothing freed or allocated");
    let t = Tensor::from_buffer(buf, &[4], DType::F32);
    assert_eq!(t.device_ptr(), ptr);
    assert_eq!(t.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
    let bytes = t.into_buffer();
    assert_eq!(bytes.len(), 16);
    drop(bytes);
    assert_eq!(
        pool.stats().live_blocks,
        0,
        "freed exactly once, to the pool"
    );
}

#[test]
fn half_precision_tensors_go_through_u16_bits() {
    let alloc = host();
    let bits = [0x3c00u16, 0xc000, 0x7bff]; // f16: 1.0, -2.0, 65504
    let t = Tensor::from_slice_as(&alloc, &bits, &[3], DType::F16).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(t.to_vec::<u16>().unwrap(), bits);
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_ne_bytes()).collect();
    let u = Tensor::from_bytes(&alloc, &bytes, &[3], DType::BF16).unwrap();
    assert_eq!(u.to_bytes().unwrap(), bytes);
    assert!(DType::BF16.accepts::<u16>() && !DType::BF16.accepts::<i16>());
}

#[test]
#[should_panic(expected = "cannot be accessed as f32")]
fn reading_a_tensor_as_the_wrong_type_panics() {
    let alloc = host();
    let t = Tensor::zeros(&alloc, &[2], DType::I32).unwrap();
    let _ = t.to_vec::<f32>();
}

#[test]
#[should_panic(expected = "elements for shape")]
fn a_slice_that_does_not_fill_the_shape_panics() {
    let alloc = host();
    let _ = Tensor::from_slice(&alloc, &[1.0f32; 5], &[2, 3]);
}

#[test]
fn with_graph_memory_keeps_shape_dtype_and_contents() {
    let alloc = host();
    let pool = alloc.create_pool();
    let values: Vec<i64> = (0..4096).map(|i| i * i - 7).collect();
    let eager = Tensor::from_slice(&alloc, &values, &[64, 64]).unwrap();
    assert!(!eager.is_graph_compatible());

    let graph = eager.with_graph_memory(&pool).unwrap();
    assert!(graph.is_graph_compatible());
    assert_eq!(graph.pool_id(), Some(pool.id()));
    assert_ne!(graph.device_ptr(), eager.device_ptr());
    assert_eq!(graph.shape(), eager.shape());
    assert_eq!(graph.dtype(), DType::I64);
    assert_eq!(graph.to_vec::<i64>().unwrap(), values, "same contents");
    assert_eq!(eager.to_vec::<i64>().unwrap(), values, "source untouched");
    assert_eq!(pool.stats().live_blocks, 1);
    assert_eq!(pool.stats().allocated_bytes, 4096 * 8);
    assert!(!alloc.is_graph_mode(), "the temporary guard is gone");

    // Every dtype.
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8] {
        let bytes: Vec<u8> = (0..dtype.size() * 10).map(|i| i as u8 ^ 0x5a).collect();
        let t = Tensor::from_bytes(&alloc, &bytes, &[10], dtype).unwrap();
        let g = t.with_graph_memory(&pool).unwrap();
        assert_eq!(g.dtype(), dtype);
        assert_eq!(g.to_bytes().unwrap(), bytes);
    }
    drop(graph);
    assert_eq!(pool.stats().live_blocks, 0);
}

#[test]
fn with_graph_memory_into_a_second_pool_from_inside_graph_mode() {
    let alloc = host();
    let (first, second) = (alloc.create_pool(), alloc.create_pool());
    let _g = alloc.enter_graph_mode(&first).unwrap();
    let t = Tensor::from_slice(&alloc, &[1u8, 2, 3], &[3]).unwrap();
    assert_eq!(t.pool_id(), Some(first.id()));
    let u = t.with_graph_memory(&second).unwrap();
    assert_eq!(u.pool_id(), Some(second.id()));
    assert_eq!(u.to_vec::<u8>().unwrap(), [1, 2, 3]);
    assert!(alloc.is_graph_mode(), "the outer guard still holds");
    let v = Tensor::zeros(&alloc, &[1], DType::U8).unwrap();
    assert_eq!(
        v.pool_id(),
        Some(first.id()),
        "and its pool is current again"
    );
}

#[test]
fn with_graph_memory_refuses_a_foreign_pool() {
    let alloc = host();
    let other = host();
    let foreign = other.create_pool();
    let t = Tensor::zeros(&alloc, &[4], DType::F32).unwrap();
    let err = t.with_graph_memory(&foreign).unwrap_err();
    assert_eq!(err, Error::ForeignPool { pool: foreign.id() });
    assert_eq!(foreign.stats().live_blocks, 0);
}

#[test]
fn with_graph_memory_moves_to_the_pools_device() {
    let alloc = Allocator::new(Config {
        host_devices: 2,
        ..Config::host(1 << 30)
    })
    .unwrap();
    let pool = alloc.create_pool_on(1).unwrap();
    let t = Tensor::from_slice(&alloc, &[1.0f32, 2.0, 3.0], &[3]).unwrap();
    assert_eq!(t.device(), 0);
    let g = t.with_graph_memory(&pool).unwrap();
    assert_eq!(g.device(), 1);
    assert_eq!(g.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
    // And back, device 1 to device 0, through a clone outside graph mode.
    let back = g.try_clone().unwrap();
    assert_eq!(back.device(), 0);
    assert_eq!(back.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
}

#[test]
fn ensure_graph_compatible_outside_graph_mode_changes_nothing() {
    let alloc = host();
    let t = Tensor::from_slice(&alloc, &[1u8, 2, 3], &[3]).unwrap();
    let ptr = t.device_ptr();
    let t = t.ensure_graph_compatible().unwrap();
    assert_eq!(t.device_ptr(), ptr);
    assert!(!t.is_graph_compatible());
    assert_eq!(alloc.stats().caching.live_blocks, 1);
}

#[test]
fn ensure_graph_compatible_in_graph_mode_moves_eager_tensors_into_the_pool() {
    let alloc = host();
    let pool = alloc.create_pool();
    let values: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
    let eager = Tensor::from_slice(&alloc, &values, &[10, 100]).unwrap();
    let eager_ptr = eager.device_ptr();
    let already = alloc
        .with_graph_mode(&pool, || Tensor::zeros(&alloc, &[8], DType::I32))
        .unwrap()
        .unwrap();
    let already_ptr = already.device_ptr();

    let (moved, kept) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        (
            eager.ensure_graph_compatible().unwrap(),
            already.ensure_graph_compatible().unwrap(),
        )
    };
    assert_eq!(kept.device_ptr(), already_ptr, "graph memory stays put");
    assert_ne!(moved.device_ptr(), eager_ptr, "eager memory is moved");
    assert!(moved.is_graph_compatible());
    assert_eq!(moved.pool_id(), Some(pool.id()));
    assert_eq!(moved.shape(), [10, 100]);
    assert_eq!(moved.to_vec::<f32>().unwrap(), values, "same contents");
    assert_eq!(pool.stats().live_blocks, 2);
    let caching = alloc.stats().caching;
    assert_eq!(caching.live_blocks, 0, "the eager original was freed");
    assert!(alloc.requested_size(eager_ptr).is_none());
    drop((moved, kept));
    assert_eq!(pool.stats().live_blocks, 0);
}

#[test]
fn ensure_graph_compatible_ignores_another_allocators_graph_mode() {
    let alloc = host();
    let other = host();
    let other_pool = other.create_pool();
    let t = Tensor::zeros(&alloc, &[4], DType::F32).unwrap();
    let ptr = t.device_ptr();
    let _g = other.enter_graph_mode(&other_pool).unwrap();
    let t = t.ensure_graph_compatible().unwrap();
    assert_eq!(t.device_ptr(), ptr);
    assert_eq!(other_pool.stats().live_blocks, 0);
}

#[test]
fn buffers_allocated_on_a_captured_stream_are_graph_memory() {
    let host = Arc::new(HostBackend::new(0, 1 << 30));
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 1.0).unwrap();
    let s = host.create_stream();
    let _stream = graphalloc::use_stream(s);
    let eager = DeviceBuffer::<f32>::zeros(&alloc, 64).unwrap();
    assert_eq!(eager.stream(), s);
    assert!(!eager.is_graph_memory());

    let capture = host.begin_capture(s);
    // SAFETY: never read before it is written below, after the capture.
    let mut captured = unsafe { DeviceBuffer::<f32>::uninit(&alloc, 64) }.unwrap();
    assert!(
        captured.is_graph_memory(),
        "capture-aware routing: a capture pool"
    );
    host.end_capture(s);
    captured.copy_from_host(&[1.0; 64]).unwrap();
    let pool = alloc.capture_pool(0, capture).expect("a capture pool");
    assert_eq!(captured.pool_id(), Some(pool.id()));
    assert_eq!(pool.stats().live_blocks, 1);
    drop(captured);
    assert_eq!(pool.stats().live_blocks, 0);
}

#[test]
fn absurd_sizes_are_typed_errors() {
    let alloc = host();
    // SAFETY: the allocation fails; nothing is read.
    let err = unsafe { DeviceBuffer::<f64>::uninit(&alloc, usize::MAX / 2) }.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    let err = Tensor::zeros(&alloc, &[usize::MAX, 2], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert_eq!(alloc.live_pointers(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "builds the process-wide allocator, which probes for libcuda (dlopen)"
)]
fn buffers_work_with_the_process_wide_allocator() {
    // `DeviceBuffer<'static, T>`: the global allocator (host backend on a
    // machine without CUDA, or as GRAPHALLOC_CONF says).
    let alloc: &'static Allocator = graphalloc::global();
    let buf: DeviceBuffer<'static, u32> = DeviceBuffer::from_slice(alloc, &[1, 2, 3]).unwrap();
    let moved = std::thread::spawn(move || buf.to_vec().unwrap())
        .join()
        .unwrap();
    assert_eq!(moved, [1, 2, 3]);
}
