//! Replays traces pass after pass on one allocator (host backend, default
//! configuration) and prints, per pass, the mapping calls it made and the
//! peak reserved / peak allocated bytes so far. The replay report's ratio
//! is the cold pass's; this shows whether warm passes map again or raise
//! the peak (issue 14: a warm pass of a repeating workload makes no mapping
//! call).
//!
//!     cargo run --release --example warm_passes -- [TRACE...]
//!
//! (without a trace: the bundled `traces/resnet50_train.trace.gz`).
//! `PASSES=N` sets the passes (default 4: the cold one and 3 warm ones);
//! `VERBOSE=1` prints every warm event that mapped or unmapped, with the
//! cache's figures then.

use graphalloc::replay::{Event, Trace};
use graphalloc::{Allocator, Backend, Config, HostBackend};
use std::sync::Arc;

/// The bundled trace used when no trace is named (found from any directory).
const DEFAULT_TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/traces/resnet50_train.trace.gz"
);

const MIB: f64 = 1048576.0;

fn main() {
    let mut paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        paths.push(DEFAULT_TRACE.to_string());
    }
    let verbose = std::env::var("VERBOSE").is_ok();
    let passes: usize = std::env::var("PASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for path in &paths {
        let trace = match Trace::from_path(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        };
        let capacity = 80 << 30;
        let backend: Arc<dyn Backend> = Arc::new(HostBackend::new(0, capacity));
        let alloc = Allocator::from_backends_with(vec![backend], &Config::host(capacity))
            .expect("a host allocator");
        let mut live = vec![None; trace.allocations()];
        println!("{}", trace.name());
        for pass in 0..passes {
            // What the last pass left live goes first, as the replay tool does.
            for p in live.iter_mut().filter_map(Option::take) {
                alloc.free(p).expect("a live block");
            }
            let before = alloc.mapping_stats();
            let mut last = before;
            for (i, &event) in trace.events().iter().enumerate() {
                match event {
                    Event::Alloc { slot, size, stream } => {
                        let p = alloc.allocate_on(0, stream, size, 512).expect("room");
                        live[slot as usize] = Some(p);
                    }
                    Event::Free { slot } => {
                        if let Some(p) = live[slot as usize].take() {
                            alloc.free(p).expect("a live block");
                        }
                    }
                }
                let now = alloc.mapping_stats();
                if verbose && pass > 0 && (now.maps, now.unmaps) != (last.maps, last.unmaps) {
                    let s = alloc.stats().caching;
                    println!(
                        "  pass {pass} event {i} {event:?}: +{} maps, +{} unmaps; \
                         reserved {:.1} MiB, allocated {:.1} MiB",
                        now.maps - last.maps,
                        now.unmaps - last.unmaps,
                        s.reserved_bytes as f64 / MIB,
                        s.allocated_bytes as f64 / MIB,
                    );
                }
                last = now;
            }
            let d = alloc.mapping_stats().since(&before);
            let s = alloc.stats().caching;
            println!(
                "  pass {pass} ({}): {} maps, {} unmaps; reserved {:.0} MiB; \
                 peak reserved / peak allocated {:.4}",
                if pass == 0 { "cold" } else { "warm" },
                d.maps,
                d.unmaps,
                s.reserved_bytes as f64 / MIB,
                s.peak_reserved_bytes as f64 / s.peak_allocated_bytes.max(1) as f64
            );
        }
    }
}
