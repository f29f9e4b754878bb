//! Test and example support for graphalloc (not published).
//!
//! - [`Engine`]: a handful of f32 kernels as hand-written PTX
//!   (`ptx/kernels.ptx`), run on a CUDA stream through cudarc, or on the host
//!   backend as plain Rust with the very same floating-point operations
//!   ([`cpu`]), so both give bit-identical results; and graph capture (or, on
//!   the host, its simulation: re-running the captured closure).
//! - The linear-regression workload of the training example and tests
//!   ([`LinReg`], [`train_step`], [`cpu_train`]).
//! - [`gpu`]: what the GPU tests share (a locked CUDA allocator and engine,
//!   byte kernels, skipping cleanly without a driver).

pub mod byte_gpu;
pub mod cpu;
mod engine;
pub mod gpu;
mod linreg;

pub use engine::{Captured, Engine, Kernels, KERNELS_PTX};
pub use linreg::{cpu_train, max_rel_diff, noise, regression_data, train_step, LinReg};

/// Errors of the examples: graphalloc's, cudarc's, or a failed check.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;
