//! Graph capture with graphalloc: allocate inside graph mode while a CUDA
//! graph is being captured, replay the graph many times, and check the
//! results and that no address moved.
//!
//! ```sh
//! cargo run --release --example capture
//! ```
//!
//! On a machine without a CUDA driver it runs on the host backend, where no
//! graph can be captured: each "replay" re-runs the captured closure in
//! graph mode, and the example checks that the temporaries land at the same
//! addresses every time and that the pool does not grow.

use graphalloc::tensor::{DeviceBuffer, Tensor};
use graphalloc::{Allocator, Config, DevicePtr};
use graphalloc_testkit::{cpu, Captured, Engine, Res};
use std::cell::RefCell;

/// Elements per buffer on CUDA: 4 Mi floats, 16 MiB (less on the host,
/// where the kernels are loops over copies).
const N_CUDA: usize = 4 << 20;
const N_HOST: usize = 1 << 18;
const REPLAYS: usize = 100;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() -> Res<()> {
    // GRAPHALLOC_CONF may pick the backend; by default CUDA when a driver
    // loads, else host memory.
    let alloc = Allocator::new(Config::from_env()?)?;
    let engine = Engine::new(&alloc)?;
    if engine.is_cuda() {
        println!(
            "graphalloc capture example on {}: capturing a CUDA graph (GLOBAL mode) and replaying it {REPLAYS} times",
            engine.describe()
        );
    } else {
        println!(
            "graphalloc capture example on {}: no graph capture possible, so each of the {REPLAYS} \"replays\" re-runs the captured closure",
            engine.describe()
        );
    }
    // Allocations are tagged with the stream the kernels run on.
    let _on_stream = graphalloc::use_stream(engine.stream_handle(&alloc)?);
    let pool = alloc.create_pool();
    let n = if engine.is_cuda() { N_CUDA } else { N_HOST };

    // 1. Static input and output. The input is an ordinary (eager) tensor,
    //    moved into the pool in graph mode before the capture, so the graph
    //    can keep its address; the output is allocated in the pool.
    let x_host: Vec<f32> = (0..n).map(|i| graphalloc_testkit::noise(i, 7)).collect();
    let x = Tensor::from_slice(&alloc, &x_host, &[n])?;
    let (x, y) = {
        let _g = alloc.enter_graph_mode(&pool)?;
        let x = x.ensure_graph_compatible()?; // a copy in the pool
        (
            x.into_typed_buffer::<f32>(),
            RefCell::new(DeviceBuffer::<f32>::zeros(&alloc, n)?),
        )
    };
    engine.synchronize()?;
    let (x_addr, y_addr) = (x.device_ptr(), y.borrow().device_ptr());
    let before = pool.stats();
    println!(
        "static buffers in pool {}: x at {x_addr}, y at {y_addr} ({:.0} MiB reserved)",
        pool.id(),
        mib(before.reserved_bytes)
    );

    // 2. The work: y += 0.5 * (2x + x), through three temporaries allocated
    //    in graph mode (from the pool). t1 is freed half-way, and t3 reuses
    //    its block within the same capture. (The closure is kept by the host
    //    stand-in for replays, hence the RefCells.)
    let temps: RefCell<Vec<[DevicePtr; 3]>> = RefCell::new(Vec::new());
    let work = || -> Res<()> {
        let _g = alloc.enter_graph_mode(&pool)?;
        // SAFETY (all three): written in full by a kernel before any read.
        let mut t1 = unsafe { DeviceBuffer::<f32>::uninit(&alloc, n)? };
        engine.scale(&mut t1, 2.0, &x)?;
        let mut t2 = unsafe { DeviceBuffer::<f32>::uninit(&alloc, n)? };
        engine.add(&mut t2, &t1, &x)?;
        let t1_addr = t1.device_ptr();
        drop(t1);
        let mut t3 = unsafe { DeviceBuffer::<f32>::uninit(&alloc, n)? };
        engine.scale(&mut t3, 0.5, &t2)?;
        engine.saxpy(&mut y.borrow_mut(), 1.0, &t3)?;
        temps
            .borrow_mut()
            .push([t1_addr, t2.device_ptr(), t3.device_ptr()]);
        Ok(())
    };

    // 3. Capture it (on the host: keep it for re-running).
    let mut captured = engine.capture(work)?;
    if let Captured::Graph(_) = captured {
        let t = temps.borrow()[0];
        let grown = pool.stats();
        println!(
            "captured 4 kernels; temporaries at {}, {}, {} (t3 reuses t1); the pool grew during the capture: {:.0} -> {:.0} MiB",
            t[0],
            t[1],
            t[2],
            mib(before.reserved_bytes),
            mib(grown.reserved_bytes)
        );
    }

    // 4. Replay, and check against the same arithmetic on the host.
    let mut reference = vec![0.0f32; n];
    let (mut t1, mut t2, mut t3) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut reserved = Vec::new();
    for _ in 0..REPLAYS {
        captured.replay()?;
        cpu::scale(&mut t1, 2.0, &x_host);
        cpu::add(&mut t2, &t1, &x_host);
        cpu::scale(&mut t3, 0.5, &t2);
        cpu::saxpy(&mut reference, 1.0, &t3);
        reserved.push(pool.stats().reserved_bytes);
    }
    engine.synchronize()?;
    let got = y.borrow().to_vec()?;
    if let Some(i) = got.iter().zip(&reference).position(|(a, b)| a != b) {
        return Err(format!(
            "y[{i}] = {} after {REPLAYS} replays, expected {}",
            got[i], reference[i]
        )
        .into());
    }
    println!(
        "after {REPLAYS} replays y = 150 x exactly as computed on the host (y[1] = {})",
        got[1]
    );

    // 5. Nothing moved, nothing grew.
    if (x.device_ptr(), y.borrow().device_ptr()) != (x_addr, y_addr) {
        return Err("a static buffer moved".into());
    }
    if reserved.iter().any(|&r| r != reserved[0]) {
        return Err(
            format!("the pool's reserved memory changed across replays: {reserved:?}").into(),
        );
    }
    let temps = temps.borrow();
    if temps.iter().any(|t| *t != temps[0]) {
        return Err("a temporary moved between replays".into());
    }
    println!(
        "addresses unchanged over {} run(s) of the allocating code; pool reserved flat at {:.0} MiB",
        temps.len(),
        mib(reserved[0])
    );

    // 6. Tear down: the graph first, then the buffers it uses; each returns
    //    to the pool it came from.
    drop(captured);
    drop((x, y));
    println!(
        "done; pool: {} live blocks, {:.0} MiB reserved until the pool is dropped",
        pool.stats().live_blocks,
        mib(pool.stats().reserved_bytes)
    );
    Ok(())
}
