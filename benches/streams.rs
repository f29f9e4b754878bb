//! The cost of the stream machinery on the hot path (criterion):
//! `cargo bench --bench streams`.
//!
//! - `events/plain`: a same-stream allocate + free pair, nothing recorded;
//! - `events/pending`: the same pair while another freed block waits for an
//!   event that has not completed (every allocation polls it);
//! - `events/record_stream`: a pair whose block is also marked as used by a
//!   second, idle stream: the free records an event from the pool, the next
//!   allocation polls it and recycles block and event.
//!
//! Runs on CUDA where a driver loads (streams from cudarc), else on the host
//! backend (its simulated streams).

use criterion::{criterion_group, criterion_main, Criterion};
use graphalloc::{Allocator, Backend, BackendChoice, Config, HostBackend};
use std::hint::black_box;
use std::sync::Arc;

const SIZE: usize = 4096;

/// An allocator and two stream handles, plus a way to finish a stream's
/// work and to keep one stream busy forever.
struct Rig {
    alloc: Allocator,
    a: u64,
    b: u64,
    host: Option<Arc<HostBackend>>,
    _cuda: Option<(
        Arc<cudarc::driver::CudaStream>,
        Arc<cudarc::driver::CudaStream>,
    )>,
}

impl Rig {
    fn new() -> Rig {
        if graphalloc::cuda_driver_available() {
            let ctx = cudarc::driver::CudaContext::new(0).expect("CUDA context");
            let (a, b) = (ctx.new_stream().unwrap(), ctx.new_stream().unwrap());
            let config = Config {
                backend: BackendChoice::Cuda,
                ..Config::default()
            };
            eprintln!("graphalloc streams bench: backend cuda");
            let alloc = Allocator::new(config).unwrap();
            // Only registered streams reach the driver.
            alloc.register_stream(0, &a).unwrap();
            alloc.register_stream(0, &b).unwrap();
            Rig {
                alloc,
                a: a.cu_stream() as u64,
                b: b.cu_stream() as u64,
                host: None,
                _cuda: Some((a, b)),
            }
        } else {
            let host = Arc::new(HostBackend::new(0, 8 << 30));
            let (a, b) = (host.create_stream(), host.create_stream());
            let backend: Arc<dyn Backend> = host.clone();
            eprintln!("graphalloc streams bench: backend host");
            Rig {
                alloc: Allocator::from_backends(vec![backend], 1.0).unwrap(),
                a,
                b,
                host: Some(host),
                _cuda: None,
            }
        }
    }

    fn pair(&self) {
        let p = self
            .alloc
            .allocate_on(0, self.a, black_box(SIZE), 512)
            .unwrap();
        self.alloc.free(black_box(p)).unwrap();
    }
}

fn events(c: &mut Criterion) {
    let rig = Rig::new();
    let mut group = c.benchmark_group("events");
    group.measurement_time(std::time::Duration::from_secs(2));
    group.bench_function("plain", |bench| bench.iter(|| rig.pair()));

    group.bench_function("record_stream", |bench| {
        bench.iter(|| {
            let p = rig
                .alloc
                .allocate_on(0, rig.a, black_box(SIZE), 512)
                .unwrap();
            rig.alloc.record_stream(p, rig.b).unwrap();
            rig.alloc.free(p).unwrap();
            if let Some(host) = &rig.host {
                host.complete_stream(rig.b); // CUDA's stream b is idle: done at once
            }
        })
    });

    // One block that stays deferred for the whole measurement: on the host,
    // stream b's work is never completed; on CUDA, a capture would be needed
    // to hold an event back, so the block is re-deferred on every iteration.
    if let Some(host) = &rig.host {
        let held = rig.alloc.allocate_on(0, rig.a, 1 << 20, 512).unwrap();
        rig.alloc.record_stream(held, rig.b).unwrap();
        rig.alloc.free(held).unwrap();
        assert_eq!(rig.alloc.stats().caching.pending_frees, 1);
        group.bench_function("pending", |bench| bench.iter(|| rig.pair()));
        host.complete_stream(rig.b);
    }
    group.finish();
    rig.alloc.empty_cache().unwrap();
}

criterion_group!(benches, events);
criterion_main!(benches);
