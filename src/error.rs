//! The crate's typed errors.

use crate::backend::BackendError;

/// Everything that can go wrong in a call to graphalloc.
///
/// A call that returns an error has changed nothing: no block is handed out
/// or freed, and the statistics are as before (an out-of-memory error may
/// have released cached, unused segments on the way, which is counted in
/// `oom_retries`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request for zero bytes. graphalloc hands out no zero-sized blocks.
    #[error("zero-byte allocation requested")]
    ZeroSize,

    /// The alignment is not a power of two, or exceeds [`crate::MAX_ALIGNMENT`].
    #[error("invalid alignment {align}: must be a power of two no larger than {max}")]
    InvalidAlignment {
        /// The alignment asked for.
        align: usize,
        /// The largest alignment graphalloc serves.
        max: usize,
    },

    /// The request can never be served: it exceeds the device's total memory
    /// (or the configured memory limit).
    #[error("allocation of {requested} bytes exceeds the device's {limit} bytes")]
    TooLarge {
        /// Bytes asked for.
        requested: usize,
        /// The device's total bytes, or the configured limit if lower.
        limit: usize,
    },

    /// The device has no room for the request, even after releasing every
    /// cached, unused segment and retrying once.
    #[error(
        "out of memory on device {device}: tried to allocate {requested} bytes; \
         {allocated} bytes allocated, {reserved} bytes reserved by graphalloc; \
         device has {device_free} bytes free of {device_total}"
    )]
    OutOfMemory {
        /// Device ordinal.
        device: usize,
        /// Bytes asked for.
        requested: usize,
        /// Bytes reserved from the device by graphalloc (caches and pools).
        reserved: usize,
        /// Bytes in live blocks handed out by graphalloc on this device.
        allocated: usize,
        /// Free device memory as the driver reports it.
        device_free: usize,
        /// Total device memory as the driver reports it.
        device_total: usize,
    },

    /// `free` of a pointer graphalloc never handed out (or one it handed out
    /// and that was freed long ago and is no longer part of any segment).
    #[error("free of unknown pointer {ptr:#x}")]
    UnknownPointer {
        /// The pointer passed to `free`.
        ptr: u64,
    },

    /// `free` of a pointer that is the start of a block that is already free.
    #[error("double free of pointer {ptr:#x}")]
    DoubleFree {
        /// The pointer passed to `free`.
        ptr: u64,
    },

    /// `free` of a pointer inside a live block rather than at its start.
    #[error("free of interior pointer {ptr:#x}: the block starts at {block:#x}")]
    InteriorPointer {
        /// The pointer passed to `free`.
        ptr: u64,
        /// The start of the block that contains it.
        block: u64,
    },

    /// `free` of a pointer that an owning handle holds (the block of a live
    /// [`crate::tensor::DeviceBuffer`] or [`crate::tensor::Tensor`]): only
    /// dropping the handle frees it. Nothing changed.
    #[error("free of pointer {ptr:#x}, which a live buffer owns: drop the buffer instead")]
    BufferHeld {
        /// The pointer passed to `free`.
        ptr: u64,
    },

    /// `GraphPool::reset` while blocks of the pool are still live.
    #[error("graph pool {pool} is busy: {live_blocks} live blocks ({allocated} bytes)")]
    PoolBusy {
        /// The pool's id.
        pool: u64,
        /// Live blocks in the pool.
        live_blocks: usize,
        /// Bytes in those blocks.
        allocated: usize,
    },

    /// A pool was used with an allocator other than the one that created it.
    #[error("graph pool {pool} belongs to another allocator")]
    ForeignPool {
        /// The pool's id.
        pool: u64,
    },

    /// [`crate::GraphPool::start_plan`] of a plan the pool does not have.
    #[error("graph pool {pool} has no plan {plan}: it was planned from {plans} recording(s)")]
    NoSuchPlan {
        /// The pool's id.
        pool: u64,
        /// The plan asked for.
        plan: usize,
        /// How many plans the pool has (0: a pool made without a plan).
        plans: usize,
    },

    /// A device ordinal outside the allocator's devices.
    #[error("device {device} does not exist: the allocator has {count} device(s)")]
    InvalidDevice {
        /// The ordinal asked for.
        device: usize,
        /// How many devices the allocator manages.
        count: usize,
    },

    /// Backends given to [`crate::Allocator::from_backends`] whose ordinals
    /// are not 0, 1, 2, ... in the order given.
    #[error("backend at position {position} has ordinal {ordinal}: backends must be given in ordinal order 0, 1, ...")]
    BackendOrder {
        /// Index in the list given.
        position: usize,
        /// The ordinal that backend reports.
        ordinal: usize,
    },

    /// A stream handle the device does not know.
    #[error("unknown stream {stream:#x}")]
    UnknownStream {
        /// The handle.
        stream: u64,
    },

    /// `install` after the process-wide allocator was already set.
    #[error("the process-wide allocator is already installed")]
    AlreadyInstalled,

    /// A configuration value that does not parse or is out of range.
    #[error("invalid configuration value for `{key}`: {value:?} ({reason})")]
    Config {
        /// The key, as written in `GRAPHALLOC_CONF`.
        key: String,
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The device backend failed.
    #[error("device backend error: {0}")]
    Backend(#[from] BackendError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
