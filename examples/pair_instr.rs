//! Instructions per allocate+free pair, for callgrind (exact, unlike time
//! on a shared machine):
//!
//! ```text
//! cargo build --release --example pair_instr
//! valgrind --tool=callgrind --dump-instr=no --toggle-collect='pair_instr::pairs' \
//!     target/release/examples/pair_instr SIZE [graph] [PAIRS]
//! ```
//!
//! then the total instructions (the `summary:` line of the output file)
//! divided by PAIRS (default 10000) is the cost of one pair: only the timed
//! loop, `pairs`, is counted, after a warm-up of the same pairs. `graph`
//! runs the pairs in graph mode on a pool. The allocator is the one
//! `Config::from_env()` builds (the host backend without a CUDA driver).

use graphalloc::{Allocator, Config};
use std::hint::black_box;

fn pair(alloc: &Allocator, size: usize) {
    let p = alloc.allocate(black_box(size), 512).expect("allocate");
    alloc.free(black_box(p)).expect("free");
}

/// The measured loop (the warm-up runs outside it).
#[inline(never)]
fn pairs(alloc: &Allocator, size: usize, n: usize) {
    for _ in 0..n {
        pair(alloc, size);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(512);
    let rest: Vec<String> = args.collect();
    let graph = rest.iter().any(|a| a == "graph");
    let n: usize = (rest.iter().find_map(|a| a.parse().ok())).unwrap_or(10_000);
    let alloc = Allocator::new(Config::from_env().expect("GRAPHALLOC_CONF")).expect("allocator");
    let pool = alloc.create_pool();
    let guard = graph.then(|| alloc.enter_graph_mode(&pool).expect("graph mode"));
    for _ in 0..100 {
        pair(&alloc, size);
    }
    pairs(&alloc, size, n);
    drop(guard);
    println!(
        "{n} pairs of {size} B{}",
        if graph { " in graph mode" } else { "" }
    );
}
