//! Allocator micro-benchmarks (criterion): `cargo bench --bench alloc`.
//!
//! - `pair/cached/SIZE`: one `allocate` + `free` pair served from the cache;
//! - `pair/graph/SIZE`: the same pair in graph mode, from a graph pool;
//! - `threads/N`: N threads, each its own allocate/free loop of 512 B pairs on
//!   one shared allocator; the throughput is all threads' pairs per second;
//! - `live_blocks/N`: one 512 B pair while N other blocks are live (the
//!   ownership map and the arena hold N entries): how free routing scales.
//!
//! The allocator is `Allocator::new(Config::from_env())`: CUDA where a
//! driver loads, else the host backend; `GRAPHALLOC_CONF` overrides it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use graphalloc::{Allocator, Config, DevicePtr};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PAIR_SIZES: [(usize, &str); 5] = [
    (512, "512B"),
    (64 * KIB, "64KiB"),
    (MIB, "1MiB"),
    (16 * MIB, "16MiB"),
    (256 * MIB, "256MiB"),
];
const THREADS: [usize; 5] = [1, 2, 4, 8, 16];
const LIVE_BLOCKS: [usize; 3] = [1_000, 100_000, 1_000_000];
const ALIGN: usize = 512;

fn allocator() -> Allocator {
    let alloc =
        Allocator::new(Config::from_env().expect("GRAPHALLOC_CONF")).expect("build the allocator");
    eprintln!(
        "graphalloc bench: backend {} ({} device(s))",
        alloc.backend_kind(),
        alloc.device_count()
    );
    alloc
}

/// Frees `ptrs`, checks the books, and gives every cached segment back
/// before the next group builds its allocator.
fn teardown(alloc: &Allocator, ptrs: impl IntoIterator<Item = DevicePtr>) {
    for p in ptrs {
        alloc.free(p).expect("free");
    }
    alloc.empty_cache().expect("empty_cache");
    assert_eq!(alloc.stats().total.allocated_bytes, 0);
}

#[inline]
fn pair(alloc: &Allocator, size: usize) {
    let p = alloc.allocate(black_box(size), ALIGN).expect("allocate");
    alloc.free(black_box(p)).expect("free");
}

fn cached_pairs(c: &mut Criterion) {
    let alloc = allocator();
    let mut group = c.benchmark_group("pair/cached");
    group.throughput(Throughput::Elements(1));
    for (size, label) in PAIR_SIZES {
        pair(&alloc, size); // reserve the segment once: later pairs are cached
        group.bench_with_input(BenchmarkId::from_parameter(label), &size, |b, &size| {
            b.iter(|| pair(&alloc, size))
        });
    }
    group.finish();
    teardown(&alloc, []);
}

fn graph_pairs(c: &mut Criterion) {
    let alloc = allocator();
    let pool = alloc.create_pool();
    let mut group = c.benchmark_group("pair/graph");
    group.throughput(Throughput::Elements(1));
    {
        let _graph = alloc.enter_graph_mode(&pool).expect("graph mode");
        for (size, label) in PAIR_SIZES {
            pair(&alloc, size);
            group.bench_with_input(BenchmarkId::from_parameter(label), &size, |b, &size| {
                b.iter(|| pair(&alloc, size))
            });
        }
        assert_eq!(pool.stats().live_blocks, 0);
        assert!(pool.stats().allocations > 0, "pairs came from the pool");
    }
    group.finish();
    drop(pool); // its segments go back to the device
    teardown(&alloc, []);
}

fn threaded_pairs(c: &mut Criterion) {
    let alloc = allocator();
    let mut group = c.benchmark_group("threads");
    pair(&alloc, 512);
    for threads in THREADS {
        // One iteration is one pair on every thread.
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let start = Barrier::new(threads);
                    std::thread::scope(|s| {
                        let workers: Vec<_> = (0..threads)
                            .map(|_| {
                                s.spawn(|| {
                                    start.wait();
                                    let t = Instant::now();
                                    for _ in 0..iters {
                                        pair(&alloc, 512);
                                    }
                                    t.elapsed()
                                })
                            })
                            .collect();
                        // The wall time of the slowest thread, from the common start.
                        workers
                            .into_iter()
                            .map(|w| w.join().expect("worker"))
                            .max()
                            .unwrap_or_default()
                    })
                })
            },
        );
    }
    group.finish();
    teardown(&alloc, []);
}

fn live_blocks(c: &mut Criterion) {
    let alloc = allocator();
    let mut group = c.benchmark_group("live_blocks");
    group.throughput(Throughput::Elements(1));
    let mut live: Vec<DevicePtr> = Vec::with_capacity(*LIVE_BLOCKS.last().unwrap());
    for n in LIVE_BLOCKS {
        while live.len() < n {
            live.push(alloc.allocate(512, ALIGN).expect("allocate"));
        }
        assert_eq!(alloc.live_pointers(), n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| pair(&alloc, 512))
        });
    }
    group.finish();
    teardown(&alloc, live);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = cached_pairs, graph_pairs, threaded_pairs, live_blocks
}
criterion_main!(benches);
