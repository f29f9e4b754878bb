//! The memory history's cost (criterion): `cargo bench --bench history`.
//!
//! - `history/off/SIZE`: an `allocate` + `free` pair from the cache, with
//!   the history off (as `pair/cached/SIZE` of `benches/alloc.rs`);
//! - `history/on_100000/SIZE`: the same pair with `history:100000` (the
//!   ring full, so each event also drops the oldest). A pair records three
//!   events (alloc, free_requested, free_completed): the cost per event is
//!   a third of the difference.
//!
//! The allocator is `Allocator::new(Config::from_env())` with the history
//! set per group: CUDA where a driver loads, else the host backend.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use graphalloc::{Allocator, Config};
use std::hint::black_box;
use std::time::Duration;

const SIZES: [(usize, &str); 2] = [(512, "512B"), (16 << 20, "16MiB")];
/// Events recorded per pair.
const EVENTS_PER_PAIR: u64 = 3;

fn group(c: &mut Criterion, name: &str, history: usize) {
    let config = Config {
        history,
        ..Config::from_env().expect("GRAPHALLOC_CONF")
    };
    let alloc = Allocator::new(config).expect("build the allocator");
    let mut group = c.benchmark_group(format!("history/{name}"));
    group.throughput(Throughput::Elements(EVENTS_PER_PAIR));
    for (size, label) in SIZES {
        // Reserve the segment, and fill the ring, before measuring.
        for _ in 0..history.div_ceil(3).max(1) {
            let p = alloc.allocate(size, 512).expect("allocate");
            alloc.free(p).expect("free");
        }
        group.bench_with_input(BenchmarkId::from_parameter(label), &size, |b, &size| {
            b.iter(|| {
                let p = alloc.allocate(black_box(size), 512).expect("allocate");
                alloc.free(black_box(p)).expect("free");
            })
        });
    }
    group.finish();
    assert!(alloc.history().len() <= history);
}

fn history(c: &mut Criterion) {
    group(c, "off", 0);
    group(c, "on_100000", 100_000);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = history
}
criterion_main!(benches);
