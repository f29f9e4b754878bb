//! Shared by the GPU tests: the examples' kernels (hand-written PTX run
//! through cudarc), a CUDA allocator, and a lock that runs one GPU test of a
//! binary at a time.
#![allow(dead_code)]

#[path = "../../examples/common/mod.rs"]
mod common;

pub mod byte_gpu;
pub mod bytes;

pub use common::*;

use graphalloc::{Allocator, BackendChoice, Config};
use std::io::Write;
use std::sync::{Mutex, MutexGuard};

/// A CUDA allocator and an engine on device 0, holding the GPU lock.
pub struct Gpu {
    /// Kernels and the stream they run on.
    pub engine: Engine,
    /// The allocator under test (CUDA backend).
    pub alloc: Allocator,
    _lock: MutexGuard<'static, ()>,
}

/// The tests of one binary run on parallel threads, and a GLOBAL-mode
/// capture is invalidated by another thread's synchronous CUDA calls: each
/// GPU test holds this lock throughout.
static GPU_LOCK: Mutex<()> = Mutex::new(());

/// Holds the GPU lock: one GPU test of a binary at a time.
pub fn gpu_lock() -> MutexGuard<'static, ()> {
    GPU_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The GPU, or `None` (printing `skipping: no CUDA driver`) without one.
pub fn gpu() -> Option<Gpu> {
    if !graphalloc::cuda_driver_available() {
        // Straight to stderr, past the test harness's capture, so CI logs show it.
        let _ = writeln!(std::io::stderr(), "skipping: no CUDA driver");
        return None;
    }
    let lock = GPU_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let alloc = Allocator::new(Config {
        backend: BackendChoice::Cuda,
        ..Default::default()
    })
    .expect("a CUDA allocator");
    let engine = Engine::new(&alloc).expect("CUDA context, stream and kernels");
    assert!(engine.is_cuda());
    Some(Gpu {
        engine,
        alloc,
        _lock: lock,
    })
}

/// Unwraps an example-style result, printing the error.
#[track_caller]
pub fn ok<T>(r: Res<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}
