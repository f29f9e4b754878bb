//! A training loop with graphalloc: linear regression by SGD, with
//! temporaries allocated every iteration. It runs eagerly first; then one
//! iteration is captured into a CUDA graph in graph mode and replayed for
//! the rest. Memory stays flat and the loss trajectory equals the eager run's.
//!
//! ```sh
//! cargo run --release --example training_loop
//! ```
//!
//! On a machine without a CUDA driver it runs on the host backend, where no
//! graph can be captured: each "replay" re-runs the iteration in graph mode,
//! allocating its temporaries from the pool again, and the example checks
//! that memory stays flat.

use graphalloc::tensor::DeviceBuffer;
use graphalloc::{Allocator, Config};
use graphalloc_testkit::{
    max_rel_diff, regression_data, train_step, Captured, Engine, LinReg, Res,
};
use std::cell::RefCell;

const SAMPLES: usize = 1024;
const FEATURES: usize = 8;
const ITERS: usize = 1000;
const LR: f32 = 0.1;

fn main() -> Res<()> {
    let alloc = Allocator::new(Config::from_env()?)?;
    let engine = Engine::new(&alloc)?;
    if engine.is_cuda() {
        println!(
            "graphalloc training-loop example on {}: {ITERS} SGD iterations eagerly, then iteration 1 eagerly and one iteration captured and replayed {} times",
            engine.describe(),
            ITERS - 1
        );
    } else {
        println!(
            "graphalloc training-loop example on {}: no graph capture possible, so the \"replays\" re-run the iteration in graph mode",
            engine.describe()
        );
    }
    let _on_stream = graphalloc::use_stream(engine.stream_handle(&alloc)?);
    let (x_host, y_host) = regression_data(SAMPLES, FEATURES);
    let x = DeviceBuffer::from_slice(&alloc, &x_host)?;
    let y = DeviceBuffer::from_slice(&alloc, &y_host)?;

    // 1. Eager: each iteration's temporaries come from the caching
    //    allocator, which reuses the same blocks every time.
    let mut eager = LinReg::new(&alloc, FEATURES, ITERS)?;
    let mut eager_reserved = 0;
    for it in 0..ITERS {
        train_step(&engine, &alloc, &x, &y, &mut eager, FEATURES, LR)?;
        if it == 1 {
            engine.synchronize()?;
            eager_reserved = alloc.stats().caching.reserved_bytes;
        }
    }
    engine.synchronize()?;
    if alloc.stats().caching.reserved_bytes != eager_reserved {
        return Err("eager: reserved memory grew after iteration 2".into());
    }
    let eager_losses = eager.losses.to_vec()?;
    println!(
        "eager:  loss {:.6} -> {:.6}, cache reserved {} KiB from iteration 2 to {ITERS}",
        eager_losses[0],
        eager_losses[ITERS - 1],
        eager_reserved >> 10
    );

    // 2. Graphed: the model and the data live in a graph pool.
    let pool = alloc.create_pool();
    let (xg, yg, model) = {
        let _g = alloc.enter_graph_mode(&pool)?;
        (
            x.with_graph_memory(&pool)?,
            y.with_graph_memory(&pool)?,
            RefCell::new(LinReg::new(&alloc, FEATURES, ITERS)?),
        )
    };
    let step = || -> Res<()> {
        let _g = alloc.enter_graph_mode(&pool)?;
        train_step(
            &engine,
            &alloc,
            &xg,
            &yg,
            &mut model.borrow_mut(),
            FEATURES,
            LR,
        )
    };
    // Iteration 1 eagerly (a warm-up, as frameworks do before capturing);
    // one iteration captured, then replayed for iterations 2 to ITERS.
    step()?;
    let mut captured = engine.capture(step)?;
    let mut reserved = Vec::new();
    for it in 1..ITERS {
        captured.replay()?;
        if it == 1 || it == ITERS - 1 {
            engine.synchronize()?;
            reserved.push((alloc.stats().total.reserved_bytes, alloc.live_pointers()));
        }
    }
    engine.synchronize()?;
    if reserved[0] != reserved[1] {
        return Err(format!("memory grew between iteration 2 and {ITERS}: {reserved:?}").into());
    }
    let kind = match captured {
        Captured::Graph(_) => "graph replays",
        Captured::Rerun(_) => "re-runs in graph mode",
    };
    drop(captured);
    let model = model.into_inner();
    let losses = model.losses.to_vec()?;
    println!(
        "graph:  loss {:.6} -> {:.6}, {} {kind}; reserved {} KiB and {} live pointers after iteration 2 and after {ITERS}",
        losses[0],
        losses[ITERS - 1],
        ITERS - 1,
        reserved[0].0 >> 10,
        reserved[0].1
    );

    // 3. Same trajectory.
    let diff = max_rel_diff(&eager_losses, &losses);
    if diff > 1e-6 {
        return Err(format!("loss trajectories differ by {diff}").into());
    }
    let identical = eager_losses
        .iter()
        .zip(&losses)
        .filter(|(a, b)| a.to_bits() == b.to_bits())
        .count();
    println!(
        "the {ITERS} losses equal the eager run's ({identical} bit for bit); w = {:?}",
        model.w.to_vec()?
    );
    Ok(())
}
