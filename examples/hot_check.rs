//! The hot path's host check (issue 15), runnable without a GPU:
//! `cargo run --release --example hot_check [SECONDS]`.
//!
//! On the allocator `Config::from_env()` builds (the host backend where no
//! CUDA driver loads; `GRAPHALLOC_CONF` overrides it), measures:
//! - the cached allocate+free pair and the same pair in graph mode, at
//!   512 B, 64 KiB, 1 MiB, 16 MiB and 256 MiB (the sizes of
//!   `benches/alloc.rs`), and prints graph/cached (target: at most 1.2);
//! - one thread's pairs per second and two threads' together, and prints
//!   2 threads / 1 thread (target: at least 1.7; needs two idle cores).
//!
//! It prints figures and says which targets they meet; it asserts nothing
//! about time (a loaded machine measures less).

use graphalloc::{Allocator, Config};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const ALIGN: usize = 512;
const SIZES: [(usize, &str); 5] = [
    (512, "512B"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (16 << 20, "16MiB"),
    (256 << 20, "256MiB"),
];

fn pair(alloc: &Allocator, size: usize) {
    let p = alloc.allocate(black_box(size), ALIGN).expect("allocate");
    alloc.free(black_box(p)).expect("free");
}

/// Nanoseconds per pair: the best of five runs of `budget / 5` each.
fn ns_per_pair(alloc: &Allocator, size: usize, budget: Duration) -> f64 {
    pair(alloc, size);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let (mut n, start) = (0u64, Instant::now());
        while start.elapsed() < budget / 5 {
            for _ in 0..1000 {
                pair(alloc, size);
            }
            n += 1000;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

/// Pairs per second of `threads` threads together (each its own loop of
/// 512 B pairs on the shared allocator), the best of three runs.
fn pairs_per_second(alloc: &Allocator, threads: usize, budget: Duration) -> f64 {
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Barrier::new(threads);
        let total: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let (mut n, t) = (0u64, Instant::now());
                        while t.elapsed() < budget / 3 {
                            for _ in 0..1000 {
                                pair(alloc, 512);
                            }
                            n += 1000;
                        }
                        (n, t.elapsed())
                    })
                })
                .collect();
            let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
            let pairs: u64 = results.iter().map(|r| r.0).sum();
            (pairs as f64 / slowest.as_secs_f64()) as u64
        });
        best = best.max(total as f64);
    }
    best
}

fn main() {
    let seconds: f64 = match std::env::args().nth(1) {
        None => 2.0,
        Some(arg) => match arg.parse() {
            Ok(s) if s > 0.0 && f64::is_finite(s) => s,
            _ => {
                eprintln!(
                    "usage: hot_check [SECONDS]  (seconds per figure, default 2; got {arg:?})"
                );
                std::process::exit(2);
            }
        },
    };
    let budget = Duration::from_secs_f64(seconds);
    let alloc = Allocator::new(Config::from_env().expect("GRAPHALLOC_CONF")).expect("allocator");
    println!(
        "hot_check: backend {}, {} s per figure",
        alloc.backend_kind(),
        seconds
    );
    let mut worst = 0f64;
    for (size, label) in SIZES {
        let cached = ns_per_pair(&alloc, size, budget);
        let pool = alloc.create_pool();
        let graph = {
            let _g = alloc.enter_graph_mode(&pool).expect("graph mode");
            ns_per_pair(&alloc, size, budget)
        };
        let ratio = graph / cached;
        worst = worst.max(ratio);
        println!("pair {label:>6}: cached {cached:6.1} ns, graph {graph:6.1} ns, graph/cached {ratio:.2}");
    }
    let one = pairs_per_second(&alloc, 1, budget);
    let two = pairs_per_second(&alloc, 2, budget);
    let scale = two / one;
    println!(
        "threads: 1 thread {:.2} M pairs/s, 2 threads {:.2} M pairs/s, 2/1 {scale:.2}",
        one / 1e6,
        two / 1e6
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: graph/cached <= 1.2 at every size: {} (worst {worst:.2}); 2 threads >= 1.7x one: {} ({scale:.2}; {} cores available)",
        verdict(worst <= 1.2),
        verdict(scale >= 1.7),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
}
