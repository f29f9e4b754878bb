//! Graph capture on a real device: buffers allocated in graph mode during a
//! GLOBAL-mode stream capture (two of them growing the pool) keep the
//! capture valid, and 100 replays give the right results at unchanged
//! addresses. Skips, saying so, where no CUDA driver loads.

use cudarc::driver::sys::CUstreamCaptureStatus;
use graphalloc::tensor::{DType, DeviceBuffer, Tensor};
use graphalloc::DevicePtr;
use graphalloc_testkit::gpu::{gpu, ok};
use graphalloc_testkit::{cpu, Captured, Engine};
use std::cell::RefCell;

/// 8 Mi floats: 32 MiB, so every buffer needs a segment of its own.
const N: usize = 8 << 20;

fn host_input(seed: u64) -> Vec<f32> {
    (0..N).map(|i| graphalloc_testkit::noise(i, seed)).collect()
}

#[test]
fn graph_mode_allocations_during_a_global_capture_replay_at_fixed_addresses() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let Engine::Cuda { stream, .. } = engine else {
        unreachable!()
    };
    let _on_stream = graphalloc::use_stream(engine.stream_handle(alloc).unwrap());
    let pool = alloc.create_pool();

    // Static input and output, set up in graph mode before the capture. The
    // input starts as an eager tensor and is moved into the pool.
    let x_host = host_input(7);
    let x_eager = Tensor::from_slice(alloc, &x_host, &[N]).unwrap();
    assert!(!x_eager.is_graph_compatible());
    let (x, y) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        let x = x_eager.ensure_graph_compatible().unwrap();
        assert_eq!(x.pool_id(), Some(pool.id()));
        (
            x.into_typed_buffer::<f32>(),
            RefCell::new(DeviceBuffer::<f32>::zeros(alloc, N).unwrap()),
        )
    };
    // The captured closure keeps its borrows while `captured` lives (the
    // host re-runs it), so what it writes sits in `RefCell`s.
    assert!(x.is_graph_memory() && y.borrow().is_graph_memory());
    ok(engine.synchronize());
    let (x_addr, y_addr) = (x.device_ptr(), y.borrow().device_ptr());
    let before = pool.stats();
    assert_eq!(before.live_blocks, 2);

    // Capture: y += 0.5 * (2x + x), through three 32 MiB temporaries, the
    // first two of which make the pool grow; the third reuses the first.
    let temps: RefCell<Vec<DevicePtr>> = RefCell::new(Vec::new());
    let mut captured = ok(engine.capture(|| {
        assert_eq!(
            stream.capture_status()?,
            CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE
        );
        let _g = alloc.enter_graph_mode(&pool)?;
        // SAFETY (all three): written in full by a kernel before any read.
        let mut t1 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.scale(&mut t1, 2.0, &x)?;
        let mut t2 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.add(&mut t2, &t1, &x)?;
        assert_eq!(
            (t1.pool_id(), t2.pool_id()),
            (Some(pool.id()), Some(pool.id()))
        );
        temps
            .borrow_mut()
            .extend([t1.device_ptr(), t2.device_ptr()]);
        // Back to the pool, for the rest of this capture.
        drop(t1);
        // SAFETY: written in full by the scale kernel before any read.
        let mut t3 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.scale(&mut t3, 0.5, &t2)?;
        engine.saxpy(&mut y.borrow_mut(), 1.0, &t3)?;
        temps.borrow_mut().push(t3.device_ptr());
        // Still capturing: nothing above invalidated the capture.
        assert_eq!(
            stream.capture_status()?,
            CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE
        );
        Ok(())
    }));
    assert!(matches!(captured, Captured::Graph(_)), "a CUDA graph");
    let temps = temps.borrow().clone();
    assert_eq!(
        temps[2], temps[0],
        "t3 reused t1's block within the capture"
    );
    let after_capture = pool.stats();
    assert!(
        after_capture.reserved_bytes >= before.reserved_bytes + 2 * N * 4,
        "the pool grew during the capture: {before:?} -> {after_capture:?}"
    );
    assert!(after_capture.segments_reserved > before.segments_reserved);
    assert_eq!(
        after_capture.live_blocks, 2,
        "temporaries freed into the pool"
    );
    let y_before = y.borrow().to_vec().unwrap();
    assert!(y_before.iter().all(|&v| v == 0.0), "capturing ran nothing");

    // Replay 100 times against a host reference with the same arithmetic.
    let mut reference = vec![0.0f32; N];
    let (mut t1, mut t2, mut t3) = (vec![0.0; N], vec![0.0; N], vec![0.0; N]);
    for round in 1..=100 {
        ok(captured.replay());
        cpu::scale(&mut t1, 2.0, &x_host);
        cpu::add(&mut t2, &t1, &x_host);
        cpu::scale(&mut t3, 0.5, &t2);
        cpu::saxpy(&mut reference, 1.0, &t3);
        if round == 1 || round == 100 {
            ok(engine.synchronize());
            let got = y.borrow().to_vec().unwrap();
            let bad = got.iter().zip(&reference).position(|(a, b)| a != b);
            assert_eq!(bad, None, "replay {round}: first mismatch at {bad:?}");
        }
        assert_eq!(
            pool.stats().reserved_bytes,
            after_capture.reserved_bytes,
            "replays reserve nothing"
        );
    }
    assert_eq!((x.device_ptr(), y.borrow().device_ptr()), (x_addr, y_addr));
    assert_eq!(
        pool.stats(),
        after_capture,
        "replays change nothing in the pool"
    );
    eprintln!(
        "capture: pool grew {} -> {} MiB during a GLOBAL capture; 100 replays exact",
        before.reserved_bytes >> 20,
        after_capture.reserved_bytes >> 20
    );

    drop(captured);
    drop((x, y));
    assert_eq!(pool.stats().live_blocks, 0);
}

#[test]
fn buffers_allocated_on_a_captured_stream_without_a_guard_are_graph_memory() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let _on_stream = graphalloc::use_stream(engine.stream_handle(alloc).unwrap());
    let x_host = host_input(11);
    let x = DeviceBuffer::from_slice(alloc, &x_host).unwrap();
    let out = RefCell::new(DeviceBuffer::<f32>::zeros(alloc, N).unwrap());
    ok(engine.synchronize());
    let graph_memory = RefCell::new(Vec::new());
    let mut captured = ok(engine.capture(|| {
        // No graph-mode guard: capture-aware routing picks a capture pool.
        // SAFETY: written in full by the kernel before it is read.
        let mut t = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        graph_memory.borrow_mut().push(t.is_graph_memory());
        engine.scale(&mut t, 3.0, &x)?;
        engine.add(&mut out.borrow_mut(), &t, &x)?;
        Ok(())
    }));
    assert_eq!(*graph_memory.borrow(), [true]);
    for _ in 0..10 {
        ok(captured.replay());
    }
    ok(engine.synchronize());
    let mut t = vec![0.0; N];
    let mut expected = vec![0.0; N];
    cpu::scale(&mut t, 3.0, &x_host);
    cpu::add(&mut expected, &t, &x_host);
    assert!(out.borrow().to_vec().unwrap() == expected);
    drop(captured);
    assert_eq!(alloc.release_capture_pools(), 1);
}

#[test]
fn copies_views_and_graph_memory_on_cuda() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let Engine::Cuda { stream, .. } = engine else {
        unreachable!()
    };
    let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25).collect();
    let t = Tensor::from_slice(alloc, &values, &[10, 100]).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), values);

    let pool = alloc.create_pool();
    let p = t.with_graph_memory(&pool).unwrap();
    assert!(p.is_graph_compatible());
    assert_eq!(
        p.to_vec::<f32>().unwrap(),
        values,
        "same contents in the pool"
    );
    assert_eq!(pool.stats().live_blocks, 1);

    // cudarc copies through the views, on a non-blocking stream.
    let back = stream.clone_dtoh(&p.on_stream::<f32>(stream).unwrap());
    assert_eq!(back.unwrap(), values);
    let mut dst = DeviceBuffer::<f32>::zeros(alloc, 1000).unwrap();
    stream
        .memcpy_dtod(
            &p.on_stream::<f32>(stream).unwrap(),
            &mut dst.on_stream_mut(stream).unwrap(),
        )
        .unwrap();
    ok(engine.synchronize());
    assert_eq!(dst.to_vec().unwrap(), values);
    stream
        .memset_zeros(&mut dst.on_stream_mut(stream).unwrap())
        .unwrap();
    stream
        .memcpy_htod(&[9.0f32; 10], &mut dst.on_stream_mut(stream).unwrap())
        .unwrap();
    ok(engine.synchronize());
    let d = dst.to_vec().unwrap();
    assert!(d[..10].iter().all(|&v| v == 9.0) && d[10..].iter().all(|&v| v == 0.0));

    // Every dtype survives a round trip through the pool.
    for dtype in [DType::F16, DType::BF16, DType::I64, DType::U8] {
        let bytes: Vec<u8> = (0..dtype.size() * 77).map(|i| (i * 31) as u8).collect();
        let t = Tensor::from_bytes(alloc, &bytes, &[7, 11], dtype).unwrap();
        assert_eq!(
            t.with_graph_memory(&pool).unwrap().to_bytes().unwrap(),
            bytes
        );
    }
}

#[test]
fn a_buffer_bound_to_another_stream_is_not_reused_before_that_work_is_done() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let Engine::Cuda { ctx, stream, .. } = engine else {
        unreachable!()
    };
    // Allocated on the default stream, used on `stream` through a view (the
    // view records the use), dropped while that work may still be queued.
    let x = DeviceBuffer::from_slice(alloc, &host_input(3)).unwrap();
    let mut y = DeviceBuffer::<f32>::zeros(alloc, N).unwrap();
    ok(engine.synchronize());
    let x_addr = x.device_ptr();
    for _ in 0..20 {
        ok(engine.saxpy(&mut y, 1.0, &x)); // queued on `stream`
    }
    drop(x);
    // SAFETY: never read: only its address matters.
    let next = unsafe { DeviceBuffer::<f32>::uninit(alloc, N) }.unwrap(); // default stream
                                                                          // SAFETY: queries a live stream that the engine owns.
    let status = unsafe { cudarc::driver::sys::cuStreamQuery(stream.cu_stream()) };
    if status == cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY {
        assert_ne!(
            next.device_ptr(),
            x_addr,
            "x's block was handed out again while `stream` still reads it"
        );
    } else {
        assert_eq!(status, cudarc::driver::sys::CUresult::CUDA_SUCCESS);
    }
    eprintln!(
        "record_stream through views: block reused at once: {} (stream busy: {})",
        next.device_ptr() == x_addr,
        status != cudarc::driver::sys::CUresult::CUDA_SUCCESS
    );
    ctx.synchronize().unwrap();
}
