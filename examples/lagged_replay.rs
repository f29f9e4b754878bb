//! Replays a trace on the host backend with the simulated device lagging
//! behind the host: after each event a "kernel" (an event) is queued on
//! stream 0, and the device completes the work up to the kernel queued
//! `LAG` events earlier. Shows what reclaims that never wait cost in
//! memory (idle pages stay mapped until a fence says their work is done)
//! and that they never wait.
//!
//!     cargo run --release --example lagged_replay -- [TRACE [LAG...]]
//!
//! (without a trace: the bundled `traces/resnet50_train.trace.gz`)
//!
//! Prints, per lag: peak reserved / peak allocated, the mapping calls of
//! the cold and warm passes, the waits, fences and deferred unmaps.

use graphalloc::backend::StreamOrder;
use graphalloc::replay::{Player, Trace};
use graphalloc::{Allocator, Backend, Config, HostBackend};
use std::sync::Arc;

/// The bundled trace used when no trace is named (found from any directory).
const DEFAULT_TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/traces/resnet50_train.trace.gz"
);

fn main() {
    let mut args = std::env::args().skip(1);
    // Without a trace: the bundled one (as the replay example does).
    let path = args.next().unwrap_or_else(|| DEFAULT_TRACE.to_string());
    let trace = match Trace::from_path(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let mut lags: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if lags.is_empty() {
        lags = vec![0, 10, 100, 1000];
    }
    println!("{path}");
    println!("    lag    ratio  maps  unmaps  warm maps  warm unmaps  waits  fences  deferred");
    for lag in lags {
        let capacity = 80 << 30;
        let host = Arc::new(HostBackend::new(0, capacity));
        let backend: Arc<dyn Backend> = host.clone();
        let alloc = Allocator::from_backends_with(vec![backend], &Config::host(capacity))
            .expect("a host allocator");
        let ring: Vec<u64> = (0..=lag).map(|_| host.create_event().unwrap()).collect();
        let mut player = Player::new(&trace);
        let mut kernel = |i: usize| {
            host.record_event(ring[i % (lag + 1)], 0).unwrap();
            if i >= lag {
                host.wait_event(ring[(i - lag) % (lag + 1)]).unwrap();
            }
        };
        player.play_observed(&alloc, &mut kernel).unwrap();
        let cold = alloc.mapping_stats();
        player.play_observed(&alloc, &mut kernel).unwrap();
        let warm = alloc.mapping_stats().since(&cold);
        let s = alloc.stats().caching;
        let all = alloc.mapping_stats();
        println!(
            "{lag:>7}  {:>7.4}  {:>4}  {:>6}  {:>9}  {:>11}  {:>5}  {:>6}  {:>8}",
            s.peak_reserved_bytes as f64 / s.peak_allocated_bytes.max(1) as f64,
            cold.maps,
            cold.unmaps,
            warm.maps,
            warm.unmaps,
            all.waits,
            all.fences,
            all.deferred_unmaps,
        );
        player.free_all(&alloc).unwrap();
        drop(alloc);
        for e in ring {
            let _ = host.destroy_event(e);
        }
    }
}
