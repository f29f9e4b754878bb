//! The README's "Planned graph pools" example, as it is there (`tests/readme.rs` keeps the
//! two equal).

use graphalloc::{Allocator, Config};

fn main() -> graphalloc::Result<()> {
    let alloc = Allocator::new(Config::from_env()?)?;
    let step = || -> graphalloc::Result<()> {
        let x = alloc.allocate(4 << 20, 512)?; // allocate, launch kernels, free
        alloc.free(x)
    };
    let (ran, rec) = alloc.record(step); // eager run: real memory, from the cache
    ran?;
    let pool = alloc.create_planned_pool(&[&rec])?; // one segment per stream, reserved now
    alloc.capture_planned(&pool, 0, step)??; // inside your CUDA capture
    let plan = pool.plan_stats().unwrap(); // peak_live_bytes, planned_bytes, planned_hits, fallbacks
    println!(
        "{} B planned for a peak of {} B",
        plan.planned_bytes, plan.peak_live_bytes
    );
    Ok(())
}
