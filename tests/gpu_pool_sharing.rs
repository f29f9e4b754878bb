//! Pool sharing on a real device: two graphs captured one after the other
//! into one shared pool reserve less than the same graphs in two pools (the
//! second capture reuses the first one's freed temporaries), and both replay
//! correctly in capture order. Skips, saying so, where no CUDA driver loads.

use cudarc::driver::CudaStream;
use graphalloc::tensor::DeviceBuffer;
use graphalloc::DevicePtr;
use graphalloc_testkit::gpu::{gpu, ok, Gpu};
use graphalloc_testkit::{cpu, Engine};
use std::cell::RefCell;
use std::sync::Arc;

/// 4 Mi floats: 16 MiB, a segment per buffer.
const N: usize = 4 << 20;

struct Outcome {
    reserved: usize,
    temps_a: Vec<DevicePtr>,
    temps_b: Vec<DevicePtr>,
}

fn input(round: u64) -> Vec<f32> {
    (0..N)
        .map(|i| graphalloc_testkit::noise(i, 100 + round))
        .collect()
}

/// Captures A (`out_a = 2x + x`) then B (`out_b = 0.5 out_a + x`), each
/// through two temporaries, into one pool or two; replays A then B for a
/// few rounds of fresh input, checking both outputs.
fn run(g: &Gpu, shared: bool) -> Outcome {
    let (alloc, engine) = (&g.alloc, &g.engine);
    let Engine::Cuda { stream, .. } = engine else {
        unreachable!()
    };
    let stream: &Arc<CudaStream> = stream;
    let _on_stream = graphalloc::use_stream(engine.stream_handle(alloc).unwrap());
    let pool_a = alloc.create_pool();
    let pool_b = if shared {
        pool_a.clone()
    } else {
        alloc.create_pool()
    };
    let x = RefCell::new(DeviceBuffer::from_slice(alloc, &input(0)).unwrap());
    let new_out = |pool| {
        let _g = alloc.enter_graph_mode(pool).unwrap();
        RefCell::new(DeviceBuffer::<f32>::zeros(alloc, N).unwrap())
    };
    let (out_a, out_b) = (new_out(&pool_a), new_out(&pool_b));
    ok(engine.synchronize());

    let (temps_a, temps_b) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
    let mut graph_a = ok(engine.capture(|| {
        let _g = alloc.enter_graph_mode(&pool_a)?;
        let x = x.borrow();
        // SAFETY (both): written in full by a kernel before any read.
        let mut t1 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.scale(&mut t1, 2.0, &x)?;
        let mut t2 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.add(&mut t2, &t1, &x)?;
        engine.scale(&mut out_a.borrow_mut(), 1.0, &t2)?;
        temps_a
            .borrow_mut()
            .extend([t1.device_ptr(), t2.device_ptr()]);
        Ok(())
    }));
    let mut graph_b = ok(engine.capture(|| {
        let _g = alloc.enter_graph_mode(&pool_b)?;
        let x = x.borrow();
        // SAFETY (both): written in full by a kernel before any read.
        let mut t1 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.scale(&mut t1, 0.5, &out_a.borrow())?;
        let mut t2 = unsafe { DeviceBuffer::<f32>::uninit(alloc, N)? };
        engine.add(&mut t2, &t1, &x)?;
        engine.scale(&mut out_b.borrow_mut(), 1.0, &t2)?;
        temps_b
            .borrow_mut()
            .extend([t1.device_ptr(), t2.device_ptr()]);
        Ok(())
    }));
    let reserved = if shared {
        pool_a.stats().reserved_bytes
    } else {
        pool_a.stats().reserved_bytes + pool_b.stats().reserved_bytes
    };

    let (mut t1, mut t2) = (vec![0.0f32; N], vec![0.0f32; N]);
    let (mut want_a, mut want_b) = (vec![0.0f32; N], vec![0.0f32; N]);
    for round in 0..5 {
        let xh = input(round);
        // Ordered before the replays: the same stream.
        stream
            .memcpy_htod(&xh, &mut x.borrow_mut().on_stream_mut(stream).unwrap())
            .unwrap();
        ok(graph_a.replay());
        ok(graph_b.replay());
        ok(engine.synchronize());
        cpu::scale(&mut t1, 2.0, &xh);
        cpu::add(&mut t2, &t1, &xh);
        cpu::scale(&mut want_a, 1.0, &t2);
        cpu::scale(&mut t1, 0.5, &want_a);
        cpu::add(&mut t2, &t1, &xh);
        cpu::scale(&mut want_b, 1.0, &t2);
        assert!(
            out_a.borrow().to_vec().unwrap() == want_a,
            "graph A, round {round}, shared {shared}"
        );
        assert!(
            out_b.borrow().to_vec().unwrap() == want_b,
            "graph B, round {round}, shared {shared}"
        );
    }
    drop((graph_a, graph_b));
    drop((out_a, out_b, x));
    assert_eq!(pool_a.stats().live_blocks, 0);
    assert_eq!(pool_b.stats().live_blocks, 0);
    Outcome {
        reserved,
        temps_a: temps_a.into_inner(),
        temps_b: temps_b.into_inner(),
    }
}

#[test]
fn graphs_sharing_a_pool_reserve_less_and_replay_in_capture_order() {
    let Some(g) = gpu() else { return };
    let separate = run(&g, false);
    let shared = run(&g, true);
    assert!(
        separate
            .temps_b
            .iter()
            .all(|t| !separate.temps_a.contains(t)),
        "separate pools share no memory"
    );
    assert!(
        shared.temps_b.iter().any(|t| shared.temps_a.contains(t)),
        "in a shared pool, B reuses A's freed temporaries"
    );
    assert!(
        shared.reserved + 2 * N * 4 <= separate.reserved,
        "shared {} bytes, separate {} bytes",
        shared.reserved,
        separate.reserved
    );
    eprintln!(
        "pool sharing: two graphs reserve {} MiB in one pool, {} MiB in two",
        shared.reserved >> 20,
        separate.reserved >> 20
    );
}
