//! For the GPU tests: a CUDA allocator (and an engine) on device 0 behind a
//! lock that runs one GPU test of a binary at a time, byte-level kernels for
//! tests on raw blocks, and skipping, saying so, where no CUDA driver or too
//! few devices are present.

use crate::{Engine, Res};
use graphalloc::{Allocator, BackendChoice, Config};
use std::io::Write;
use std::panic::Location;
use std::sync::{Mutex, MutexGuard};

/// Byte kernels (`ptx/bytes.ptx`): `fill(dst, n, value)`: `dst[i] = value`;
/// `spin_copy(dst, src, n, ns)`: spin for `ns` nanoseconds, then
/// `dst[i] = src[i]`.
pub const BYTE_KERNELS: &str = include_str!("../ptx/bytes.ptx");

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

/// Whether at least `devices` CUDA devices are present; if not, says so on
/// stderr (past the test harness's capture, so CI logs show it) for `test`.
fn has_devices(test: &str, devices: usize) -> bool {
    let found = if graphalloc::cuda_driver_available() {
        graphalloc::CudaBackend::device_count()
    } else {
        0
    };
    if found < devices {
        let _ = writeln!(
            std::io::stderr(),
            "skipping {test}: needs {devices} CUDA device(s), found {found}"
        );
    }
    found >= devices
}

fn cuda_config() -> Config {
    Config {
        backend: BackendChoice::Cuda,
        ..Config::default()
    }
}

/// The GPU, or `None` (saying so) without a CUDA device.
#[track_caller]
pub fn gpu() -> Option<Gpu> {
    if !has_devices(&Location::caller().to_string(), 1) {
        return None;
    }
    let lock = gpu_lock();
    let alloc = Allocator::new(cuda_config()).expect("a CUDA allocator");
    let engine = Engine::new(&alloc).expect("CUDA context, stream and kernels");
    assert!(engine.is_cuda());
    Some(Gpu {
        engine,
        alloc,
        _lock: lock,
    })
}

/// A CUDA allocator on every device, or `None` (saying so for `test`) where
/// no driver or fewer than `devices` devices are present.
pub fn cuda_allocator(test: &str, devices: usize) -> Option<Allocator> {
    has_devices(test, devices).then(|| Allocator::new(cuda_config()).expect("a CUDA allocator"))
}

/// Unwraps an example-style result, printing the error.
#[track_caller]
pub fn ok<T>(r: Res<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}
