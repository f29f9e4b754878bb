//! Planned graph pools: record one eager run of a training step, plan a
//! pool from it, capture the step into that pool, and compare what the
//! planned pool reserves with the run's peak of live bytes (the lower bound)
//! and with an ordinary graph pool capturing the same step.
//!
//! ```sh
//! cargo run --release --example planned_capture            # a table
//! cargo run --release --example planned_capture -- --json  # one object per case
//! ```
//!
//! The step is MLP-shaped: the forward pass allocates one activation per
//! layer (kept for the backward pass) and a temporary per layer, the
//! backward pass allocates gradients and frees the activations in reverse,
//! and an SGD update changes the parameters; elementwise kernels stand in
//! for the matrix products. Cases: the step at two batch sizes, the two
//! sharing one planned pool (two graphs that never run concurrently), and
//! the linear-regression step of `examples/training_loop.rs`.
//!
//! On a machine without a CUDA driver it runs on the host backend, where no
//! graph can be captured: the "capture" runs the same closure in graph mode
//! on the pool instead, which allocates exactly what a capture would.

use graphalloc::tensor::DeviceBuffer;
use graphalloc::{Allocator, Config};
use graphalloc_testkit::{noise, regression_data, train_step, Captured, Engine, LinReg, Res};
use std::cell::RefCell;

type Buf<'a> = DeviceBuffer<'a, f32>;

/// Layer widths of the MLP.
const WIDTHS: [usize; 5] = [512, 2048, 2048, 1024, 256];
const LR: f32 = 0.01;

/// What the step works on: per layer, an eager input of `batch * width`
/// and a bias of `width`, and the parameters it updates.
struct Mlp<'a> {
    batch: usize,
    target: Buf<'a>,
    inputs: Vec<Buf<'a>>,
    biases: Vec<Buf<'a>>,
    params: RefCell<Vec<Buf<'a>>>,
    /// The losses each run leaves behind (blocks that outlive the step).
    outputs: RefCell<Vec<Buf<'a>>>,
}

impl<'a> Mlp<'a> {
    fn new(alloc: &'a Allocator, batch: usize) -> Res<Self> {
        let buf = |n: usize, seed| {
            let host: Vec<f32> = (0..n).map(|i| noise(i, seed)).collect();
            DeviceBuffer::from_slice(alloc, &host)
        };
        let (mut inputs, mut biases, mut params) = (Vec::new(), Vec::new(), Vec::new());
        for (l, &w) in WIDTHS.iter().enumerate() {
            inputs.push(buf(batch * w, l as u64)?);
            biases.push(buf(w, 100 + l as u64)?);
            params.push(buf(w, 200 + l as u64)?);
        }
        Ok(Mlp {
            batch,
            target: buf(batch, 300)?,
            inputs,
            biases,
            params: RefCell::new(params),
            outputs: RefCell::new(Vec::new()),
        })
    }

    /// One training step; allocates in the calling thread's mode.
    fn step(&self, engine: &Engine, alloc: &'a Allocator) -> Res<()> {
        let mut acts: Vec<Buf<'a>> = Vec::new();
        for (l, &w) in WIDTHS.iter().enumerate() {
            // SAFETY (every `uninit` here): written in full by a kernel
            // before any kernel reads it.
            let mut a = unsafe { Buf::uninit(alloc, self.batch * w)? };
            engine.scale(&mut a, 0.5, &self.inputs[l])?;
            let mut t = unsafe { Buf::uninit(alloc, self.batch * w)? };
            engine.add(&mut t, &a, &self.inputs[l])?;
            engine.saxpy(&mut a, 0.25, &t)?;
            acts.push(a);
        }
        let mut loss = unsafe { Buf::uninit(alloc, self.batch)? };
        engine.scale(&mut loss, 1.0, &self.target)?;
        let mut params = self.params.borrow_mut();
        for l in (0..WIDTHS.len()).rev() {
            let a = acts.pop().expect("one activation per layer");
            let mut g = unsafe { Buf::uninit(alloc, a.len())? };
            engine.scale(&mut g, 2.0, &a)?;
            drop(a);
            let mut pg = unsafe { Buf::uninit(alloc, WIDTHS[l])? };
            engine.scale(&mut pg, 0.1, &self.biases[l])?;
            engine.sgd(&mut params[l], &pg, LR)?;
        }
        self.outputs.borrow_mut().push(loss);
        Ok(())
    }
}

/// One case's figures.
struct Figures {
    name: String,
    peak_live: usize,
    planned: usize,
    unplanned: usize,
    hits: u64,
    fallbacks: u64,
}

/// Captures `steps` (graph k follows plan k) into a pool planned from
/// recordings of them, and into an ordinary pool shared the same way.
fn case<'s>(
    name: &str,
    engine: &Engine,
    alloc: &'s Allocator,
    steps: &[&'s dyn Fn() -> Res<()>],
) -> Res<Figures> {
    let mut recordings = Vec::new();
    for step in steps {
        step()?; // warm-up, as frameworks do before a capture
        let (ran, rec) = alloc.record(step);
        ran?;
        recordings.push(rec);
    }
    engine.synchronize()?;
    let recs: Vec<_> = recordings.iter().collect();
    let planned = alloc.create_planned_pool(&recs)?;
    let plain = alloc.create_pool();
    let (planned_ref, plain_ref) = (&planned, &plain);
    let mut graphs: Vec<Captured> = Vec::new();
    for (k, &step) in steps.iter().enumerate() {
        graphs.push(capture_once(engine, move || {
            alloc.capture_planned(planned_ref, k, step)?
        })?);
    }
    for &step in steps {
        graphs.push(capture_once(engine, move || {
            alloc.with_graph_mode(plain_ref, step)?
        })?);
    }
    engine.synchronize()?;
    let plan = planned.plan_stats().ok_or("a planned pool has a plan")?;
    drop(graphs);
    Ok(Figures {
        name: name.into(),
        peak_live: plan.peak_live_bytes,
        planned: planned.stats().peak_reserved_bytes,
        unplanned: plain.stats().peak_reserved_bytes,
        hits: plan.planned_hits,
        fallbacks: plan.fallbacks,
    })
}

/// Captures `work` (on the host: runs it once, as a capture would).
fn capture_once<'w>(engine: &Engine, work: impl FnMut() -> Res<()> + 'w) -> Res<Captured<'w>> {
    let mut captured = engine.capture(work)?;
    if let Captured::Rerun(_) = captured {
        captured.replay()?;
    }
    Ok(captured)
}

fn main() -> Res<()> {
    let json = std::env::args().any(|a| a == "--json");
    let alloc = Allocator::new(Config::from_env()?)?;
    let engine = Engine::new(&alloc)?;
    if !json {
        if engine.is_cuda() {
            println!(
                "planned graph pools on {}: CUDA graph captures",
                engine.describe()
            );
        } else {
            println!(
                "planned graph pools on {}: no graph capture possible, so each \"capture\" runs the step in graph mode on the pool",
                engine.describe()
            );
        }
    }
    let _on_stream = graphalloc::use_stream(engine.stream_handle(&alloc)?);
    let (small, large) = (Mlp::new(&alloc, 64)?, Mlp::new(&alloc, 256)?);
    let step_small = || small.step(&engine, &alloc);
    let step_large = || large.step(&engine, &alloc);
    let (x_host, y_host) = regression_data(1024, 8);
    let x = DeviceBuffer::from_slice(&alloc, &x_host)?;
    let y = DeviceBuffer::from_slice(&alloc, &y_host)?;
    let model = RefCell::new(LinReg::new(&alloc, 8, 100)?);
    let step_linreg = || train_step(&engine, &alloc, &x, &y, &mut model.borrow_mut(), 8, 0.1);

    let cases = [
        case("mlp_step_batch64", &engine, &alloc, &[&step_small])?,
        case("mlp_step_batch256", &engine, &alloc, &[&step_large])?,
        case(
            "mlp_steps_64_and_256_sharing_a_pool",
            &engine,
            &alloc,
            &[&step_small, &step_large],
        )?,
        case("linreg_train_step", &engine, &alloc, &[&step_linreg])?,
    ];
    if !json {
        println!(
            "| case | peak live bytes | planned pool reserves | ordinary pool reserves | planned / peak | planned hits | fallbacks |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
    }
    let mut failed = Vec::new();
    for f in &cases {
        let ratio = f.planned as f64 / f.peak_live.max(1) as f64;
        if json {
            println!(
                "{{\"name\": \"{}\", \"peak_live_bytes\": {}, \"planned_reserved_bytes\": {}, \"unplanned_reserved_bytes\": {}, \"planned_hits\": {}, \"fallbacks\": {}}}",
                f.name, f.peak_live, f.planned, f.unplanned, f.hits, f.fallbacks
            );
        } else {
            println!(
                "| {} | {} | {} | {} | {ratio:.4} | {} | {} |",
                f.name, f.peak_live, f.planned, f.unplanned, f.hits, f.fallbacks
            );
        }
        if ratio > 1.05 || f.planned >= f.unplanned {
            failed.push(f.name.clone());
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "planned pools above 1.05x their peak or not below the ordinary pool: {failed:?}"
        )
        .into());
    }
    Ok(())
}
