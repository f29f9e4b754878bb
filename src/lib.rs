//! # graphalloc
//!
//! A CUDA device-memory allocator for Rust and PyTorch training stacks,
//! installed once at startup:
//!
//! - a **caching allocator** per device in the class of PyTorch's
//!   `CUDACachingAllocator`: sizes rounded to 512 B, small (≤ 1 MiB, from
//!   2 MiB segments) and large pools, best-fit search, block splitting and
//!   coalescing, stream-tagged reuse, cache release and out-of-memory retry,
//!   exact statistics;
//! - **graph pools** ([`GraphPool`]): the private memory a CUDA graph capture
//!   allocates from, so addresses stay valid across replays; shareable
//!   between graphs, resettable for the next capture;
//! - a **process-wide allocator** ([`install`], [`global`]) that routes each
//!   allocation by the calling thread's mode and each free by who owns the
//!   pointer, from any thread.
//!
//! It runs on real CUDA devices through cudarc (the driver is loaded at run
//! time, so the crate builds without the CUDA toolkit) and on host memory
//! standing in for a device where no driver loads.
//!
//! ```
//! use graphalloc::{Allocator, Config};
//!
//! let alloc = Allocator::new(Config::host(1 << 30))?;
//! let pool = alloc.create_pool();
//! let captured = {
//!     let _g = alloc.enter_graph_mode(&pool)?; // graph mode for this scope
//!     alloc.allocate(1 << 20, 256)?            // from the pool
//! };
//! let eager = alloc.allocate(1 << 20, 256)?;   // from the caching allocator
//! assert_eq!(pool.stats().live_blocks, 1);
//! alloc.free(captured)?;                       // routed to the pool
//! alloc.free(eager)?;                          // routed to the cache
//! # Ok::<(), graphalloc::Error>(())
//! ```
//!
//! ## Where to start
//!
//! - [`Allocator`]: [`allocate`](Allocator::allocate) /
//!   [`allocate_on`](Allocator::allocate_on), [`free`](Allocator::free),
//!   [`stats`](Allocator::stats), [`empty_cache`](Allocator::empty_cache).
//!   One per process through [`install`] and [`global`], or built as a value
//!   with [`Allocator::new`].
//! - [`Config`]: the settings, also read from `GRAPHALLOC_CONF`; the
//!   [`config`] module lists the keys and their defaults.
//! - Graph pools: [`GraphPool`], graph mode per thread with [`graph_mode`] /
//!   [`with_graph_mode`]; streams with [`use_stream`],
//!   [`Allocator::register_stream`] and [`Allocator::record_stream`].
//! - Planned graph pools: [`Allocator::record`],
//!   [`Allocator::create_planned_pool`], [`Allocator::capture_planned`],
//!   [`PlanStats`].
//! - [`tensor`]: [`DeviceBuffer`] and [`Tensor`], owned device memory on top
//!   of the allocator, and their cudarc stream views.
//! - Figures: [`MemoryUsageStats`], [`Allocator::mapping_stats`],
//!   [`OomReport`] (and [`Allocator::on_out_of_memory`]); [`history`]: the
//!   memory history and snapshots in PyTorch's format.
//! - [`replay`]: allocation traces and their replay; [`ffi`]: the C ABI that
//!   PyTorch's pluggable allocator calls (`include/graphalloc.h`);
//!   [`backend`]: the CUDA and host backends and the adaptors around them.
//!
//! The README has the rest: configuration, PyTorch, measured results.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod allocator;
mod arena;
pub mod backend;
mod caching;
pub mod config;
mod device;
mod device_ptr;
mod error;
pub mod ffi;
mod global;
mod graph_pool;
pub mod history;
mod mode;
mod oom;
mod ownership;
mod planning;
pub mod replay;
pub mod stats;
mod stream;
mod sync;
pub mod tensor;
mod thread_cache;

pub use allocator::{Allocator, DeviceAllocator, DEFAULT_STREAM, MAX_ALIGNMENT};
pub use arena::{BLOCK_ROUND, SMALL_REQUEST_MAX, SMALL_SEGMENT};
pub use backend::{
    cuda_driver_available, Backend, BackendError, BackendKind, CudaBackend, HostBackend, MemInfo,
};
pub use config::{BackendChoice, Config};
pub use device::MappingStats;
pub use device_ptr::DevicePtr;
pub use error::{Error, Result};
pub use global::AllocatorSlot;
#[cfg(not(all(loom, feature = "loom")))]
pub use global::{global, install, try_global};
pub use graph_pool::plan::PlanStats;
pub use graph_pool::record::{Recording, RecordingGuard};
pub use graph_pool::GraphPool;
pub use mode::{graph_mode, is_graph_mode, with_graph_mode, GraphModeGuard};
pub use oom::{OomObserver, OomOwner, OomReport, OOM_LARGEST_LIVE};
pub use stats::{MemoryUsageStats, PoolStats};
pub use stream::{current_stream, use_stream, StreamGuard};
pub use tensor::{DType, DeviceBuffer, Element, Tensor};
