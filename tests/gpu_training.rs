//! A training loop on a real device: linear regression by SGD as kernels,
//! with temporaries allocated every iteration. One iteration is captured
//! into a CUDA graph in graph mode and replayed 1000 times: reserved memory
//! is the same after iteration 2 and after iteration 1000, and the loss
//! trajectory equals the eager run's. Skips, saying so, where no CUDA driver
//! loads.

use graphalloc::tensor::DeviceBuffer;
use graphalloc_testkit::gpu::{gpu, ok};
use graphalloc_testkit::{cpu_train, max_rel_diff, regression_data, train_step, LinReg};
use std::cell::RefCell;

const N: usize = 1024;
const D: usize = 8;
const ITERS: usize = 1000;
const LR: f32 = 0.1;

#[test]
fn a_replayed_training_step_matches_the_eager_run_in_flat_memory() {
    let Some(g) = gpu() else { return };
    let (alloc, engine) = (&g.alloc, &g.engine);
    let _on_stream = graphalloc::use_stream(engine.stream_handle(alloc).unwrap());
    let (x_host, y_host) = regression_data(N, D);
    let x = DeviceBuffer::from_slice(alloc, &x_host).unwrap();
    let y = DeviceBuffer::from_slice(alloc, &y_host).unwrap();

    // Eager: every iteration's temporaries come from the caching allocator.
    let mut eager = ok(LinReg::new(alloc, D, ITERS));
    ok(engine.synchronize());
    let mut eager_reserved = Vec::new();
    for it in 0..ITERS {
        ok(train_step(engine, alloc, &x, &y, &mut eager, D, LR));
        if it == 1 || it == ITERS - 1 {
            ok(engine.synchronize());
            eager_reserved.push(alloc.stats().caching.reserved_bytes);
        }
    }
    assert_eq!(
        eager_reserved[0], eager_reserved[1],
        "eager: the cache serves every iteration after the first from the same segments"
    );
    let eager_losses = eager.losses.to_vec().unwrap();
    let eager_w = eager.w.to_vec().unwrap();
    assert_eq!(eager.step.to_vec().unwrap(), [ITERS as u64]);

    // Graph: the model and static copies of the data live in the pool; one
    // iteration is captured in graph mode and replayed ITERS times.
    let pool = alloc.create_pool();
    let (xg, yg, model) = {
        let _g = alloc.enter_graph_mode(&pool).unwrap();
        let model = ok(LinReg::new(alloc, D, ITERS));
        (
            x.with_graph_memory(&pool).unwrap(),
            y.with_graph_memory(&pool).unwrap(),
            RefCell::new(model),
        )
    };
    ok(engine.synchronize());
    let live_before = alloc.live_pointers();
    let mut captured = ok(engine.capture(|| {
        let _g = alloc.enter_graph_mode(&pool)?;
        train_step(engine, alloc, &xg, &yg, &mut model.borrow_mut(), D, LR)
    }));
    assert_eq!(alloc.live_pointers(), live_before, "temporaries were freed");
    let mut graph_reserved = Vec::new();
    for it in 0..ITERS {
        ok(captured.replay());
        if it == 1 || it == ITERS - 1 {
            ok(engine.synchronize());
            let stats = alloc.stats();
            graph_reserved.push((stats.total.reserved_bytes, stats.pools.reserved_bytes));
        }
    }
    ok(engine.synchronize());
    assert_eq!(
        graph_reserved[0], graph_reserved[1],
        "reserved memory after iteration 2 and after iteration {ITERS}"
    );
    assert_eq!(alloc.live_pointers(), live_before);
    drop(captured);

    let model = model.into_inner();
    assert_eq!(model.step.to_vec().unwrap(), [ITERS as u64]);
    let graph_losses = model.losses.to_vec().unwrap();
    let graph_w = model.w.to_vec().unwrap();
    let diff = max_rel_diff(&eager_losses, &graph_losses);
    assert!(
        diff <= 1e-6,
        "loss trajectories differ by {diff}: eager {:?}.. graph {:?}..",
        &eager_losses[..4],
        &graph_losses[..4]
    );
    assert!(max_rel_diff(&eager_w, &graph_w) <= 1e-6);

    // Both agree with the host's arithmetic, and the model learned.
    let (cpu_losses, cpu_w) = cpu_train(&x_host, &y_host, D, LR, ITERS);
    assert!(max_rel_diff(&cpu_losses, &graph_losses) <= 1e-5);
    assert!(max_rel_diff(&cpu_w, &graph_w) <= 1e-5);
    assert!(
        graph_losses[ITERS - 1] < graph_losses[0] * 1e-2,
        "loss fell"
    );
    let exact = eager_losses
        .iter()
        .zip(&graph_losses)
        .filter(|(a, b)| a.to_bits() == b.to_bits())
        .count();
    eprintln!(
        "training: loss {} -> {}; {exact}/{ITERS} losses bit-identical to eager; \
         reserved {} MiB flat over {ITERS} replays",
        graph_losses[0],
        graph_losses[ITERS - 1],
        graph_reserved[1].0 >> 20
    );
}
