//! Planned graph pools on a real device: a training step captured into a
//! pool planned from a recorded eager step replays 1000 times with the
//! eager run's losses bit for bit, in exactly the planned memory; and two
//! graphs sharing one planned pool replay alternately with correct results
//! in the memory of the larger one. Skips, saying so, where no CUDA driver
//! loads.

use graphalloc::tensor::DeviceBuffer;
use graphalloc::Allocator;
use graphalloc_testkit::gpu::{gpu, ok};
use graphalloc_testkit::{cpu, noise, regression_data, train_step, Engine, LinReg, Res};
use std::cell::RefCell;

/// Samples and features of the regression; replays (= eager iterations).
const N: usize = 2048;
const D: usize = 6;
const ITERS: usize = 1000;
const LR: f32 = 0.05;

/// The regression data set on the device, in eager memory.
fn data(alloc: &Allocator) -> (Buf<'_>, Buf<'_>) {
    let (xs, ys) = regression_data(N, D);
    let upload = |v: &[f32]| DeviceBuffer::from_slice(alloc, v).unwrap();
    (upload(&xs), upload(&ys))
}

#[test]
fn a_planned_training_step_replays_the_eager_losses_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let _on_stream = graphalloc::use_stream(engine.stream_handle(alloc).unwrap());
    let (x, y) = data(alloc);

    let mut eager = ok(LinReg::new(alloc, D, ITERS));
    for _ in 0..ITERS {
        ok(train_step(engine, alloc, &x, &y, &mut eager, D, LR));
    }
    ok(engine.synchronize());
    let eager_losses = eager.losses.to_vec().unwrap();

    // Record one eager step on a scratch model (same allocations), plan.
    let mut scratch = ok(LinReg::new(alloc, D, ITERS));
    let (ran, rec) = alloc.record(|| train_step(engine, alloc, &x, &y, &mut scratch, D, LR));
    ok(ran);
    ok(engine.synchronize());
    let pool = alloc.create_planned_pool(&[&rec]).unwrap();
    let plan = pool.plan_stats().unwrap();
    assert!(plan.planned_bytes as f64 <= 1.05 * plan.peak_live_bytes as f64);

    // The model lives in the cache (eager memory the graph keeps using).
    let model = RefCell::new(ok(LinReg::new(alloc, D, ITERS)));
    ok(engine.synchronize());
    let mut graph = ok(engine.capture(|| {
        alloc.capture_planned(&pool, 0, || {
            train_step(engine, alloc, &x, &y, &mut model.borrow_mut(), D, LR)
        })?
    }));
    let after = pool.plan_stats().unwrap();
    assert_eq!(after.planned_hits, rec.len() as u64);
    assert_eq!((after.fallbacks, after.fallback_allocations), (0, 0));
    let reserved = pool.stats().reserved_bytes;
    assert_eq!(reserved, plan.planned_bytes);
    for _ in 0..ITERS {
        ok(graph.replay());
    }
    ok(engine.synchronize());
    assert_eq!(
        pool.stats().reserved_bytes,
        reserved,
        "no growth in replays"
    );
    drop(graph);
    let model = model.into_inner();
    assert_eq!(model.step.to_vec().unwrap(), [ITERS as u64]);
    let losses = model.losses.to_vec().unwrap();
    let differ = eager_losses
        .iter()
        .zip(&losses)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differ, 0,
        "replayed losses differ from eager: {differ}/{ITERS}"
    );
    assert_eq!(
        eager.w.to_vec().unwrap(),
        model.w.to_vec().unwrap(),
        "parameters"
    );
    eprintln!(
        "planned training step: {ITERS} replays equal eager bit for bit; planned {} B for a peak of {} B",
        plan.planned_bytes, plan.peak_live_bytes
    );
}

/// 4 Mi floats: 16 MiB per buffer.
const M: usize = 4 << 20;

type Buf<'a> = DeviceBuffer<'a, f32>;

/// Graph A: `out = 2x + x` through two temporaries.
fn body_a(engine: &Engine, alloc: &Allocator, x: &Buf<'_>, out: &mut Buf<'_>) -> Res<()> {
    // SAFETY (both): written in full by a kernel before any read.
    let mut t1 = unsafe { Buf::uninit(alloc, M)? };
    engine.scale(&mut t1, 2.0, x)?;
    let mut t2 = unsafe { Buf::uninit(alloc, M)? };
    engine.add(&mut t2, &t1, x)?;
    engine.scale(out, 1.0, &t2)
}

/// Graph B: `out = 0.5 a + x` through two temporaries.
fn body_b(
    engine: &Engine,
    alloc: &Allocator,
    x: &Buf<'_>,
    a: &Buf<'_>,
    out: &mut Buf<'_>,
) -> Res<()> {
    // SAFETY (both): written in full by a kernel before any read.
    let mut t1 = unsafe { Buf::uninit(alloc, M)? };
    engine.scale(&mut t1, 0.5, a)?;
    let mut t2 = unsafe { Buf::uninit(alloc, M)? };
    engine.add(&mut t2, &t1, x)?;
    engine.scale(out, 1.0, &t2)
}

#[test]
fn two_graphs_sharing_a_planned_pool_replay_alternately() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let Engine::Cuda { stream, .. } = engine else {
        unreachable!()
    };
    let _on_stream = graphalloc::use_stream(engine.stream_handle(alloc).unwrap());
    let input = |round: u64| -> Vec<f32> { (0..M).map(|i| noise(i, 300 + round)).collect() };
    let x = RefCell::new(DeviceBuffer::from_slice(alloc, &input(0)).unwrap());
    let out_a = RefCell::new(DeviceBuffer::<f32>::zeros(alloc, M).unwrap());
    let out_b = RefCell::new(DeviceBuffer::<f32>::zeros(alloc, M).unwrap());

    // Record both bodies eagerly (into scratch outputs), plan them together.
    let mut scratch = DeviceBuffer::<f32>::zeros(alloc, M).unwrap();
    let (ran, rec_a) = alloc.record(|| body_a(engine, alloc, &x.borrow(), &mut scratch));
    ok(ran);
    let (ran, rec_b) =
        alloc.record(|| body_b(engine, alloc, &x.borrow(), &out_a.borrow(), &mut scratch));
    ok(ran);
    ok(engine.synchronize());
    let pool = alloc.create_planned_pool(&[&rec_a, &rec_b]).unwrap();
    let plan = pool.plan_stats().unwrap();
    assert_eq!(plan.peak_live_bytes, 2 * M * 4);
    assert_eq!(
        plan.planned_bytes,
        2 * M * 4,
        "the larger peak, not the sum"
    );

    let mut graph_a = ok(engine.capture(|| {
        alloc.capture_planned(&pool, 0, || {
            body_a(engine, alloc, &x.borrow(), &mut out_a.borrow_mut())
        })?
    }));
    let mut graph_b = ok(engine.capture(|| {
        alloc.capture_planned(&pool, 1, || {
            body_b(
                engine,
                alloc,
                &x.borrow(),
                &out_a.borrow(),
                &mut out_b.borrow_mut(),
            )
        })?
    }));
    let s = pool.plan_stats().unwrap();
    assert_eq!((s.planned_hits, s.fallbacks), (4, 0));
    assert_eq!(pool.stats().reserved_bytes, plan.planned_bytes);

    let (mut t1, mut t2) = (vec![0.0f32; M], vec![0.0f32; M]);
    let (mut want_a, mut want_b) = (vec![0.0f32; M], vec![0.0f32; M]);
    for round in 0..6 {
        let xh = input(round);
        stream
            .memcpy_htod(&xh, &mut x.borrow_mut().on_stream_mut(stream).unwrap())
            .unwrap();
        // Alternate the order: B reads A's output of this round (or of the
        // last round when B runs first).
        if round % 2 == 0 {
            ok(graph_a.replay());
            ok(graph_b.replay());
        } else {
            ok(graph_b.replay());
            ok(graph_a.replay());
        }
        ok(engine.synchronize());
        let prev_a = want_a.clone();
        cpu::scale(&mut t1, 2.0, &xh);
        cpu::add(&mut t2, &t1, &xh);
        cpu::scale(&mut want_a, 1.0, &t2);
        let a_for_b = if round % 2 == 0 { &want_a } else { &prev_a };
        cpu::scale(&mut t1, 0.5, a_for_b);
        cpu::add(&mut t2, &t1, &xh);
        cpu::scale(&mut want_b, 1.0, &t2);
        assert!(
            out_a.borrow().to_vec().unwrap() == want_a,
            "graph A, round {round}"
        );
        assert!(
            out_b.borrow().to_vec().unwrap() == want_b,
            "graph B, round {round}"
        );
    }
    drop((graph_a, graph_b));
    eprintln!(
        "two graphs share a planned pool of {} MiB (peak {} MiB each)",
        plan.planned_bytes >> 20,
        plan.peak_live_bytes >> 20
    );
}
