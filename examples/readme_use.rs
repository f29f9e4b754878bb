//! The README's "Use" example, as it is there (`tests/readme.rs` keeps the two equal).

use graphalloc::{Config, GraphPool};

fn main() -> graphalloc::Result<()> {
    // Once, at startup. Without it, the first use of global() installs the
    // configuration from GRAPHALLOC_CONF (or the defaults).
    let alloc = graphalloc::install(Config::from_env()?)?;

    let pool = GraphPool::new();
    let captured = {
        let _g = graphalloc::graph_mode(&pool); // this thread allocates from `pool`
        alloc.allocate(1 << 20, 256)? // ... e.g. while capturing a CUDA graph
    }; // guard dropped: previous mode restored
    let eager = alloc.allocate(1 << 20, 256)?; // from the caching allocator

    alloc.free(captured)?; // routed to the pool by ownership, whatever the mode or thread
    alloc.free(eager)?;
    println!("{}", alloc.stats());
    Ok(())
}
