//! The crate's typed errors.

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
    /// cached, unused segment and retrying once. The message goes on with
    /// the [`OomReport`](crate::OomReport): which allocator ran out, the
    /// idle bytes, the largest free and live blocks, and what to try.
    #[error(
        "out of memory on device {device}: tried to allocate {requested} bytes; \
         {allocated} bytes allocated, {reserved} bytes reserved by graphalloc; \
         device has {device_free} bytes free of {device_total}{report}"
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
        /// The whole report (the figures above included), as observers
        /// ([`crate::Allocator::on_out_of_memory`]) get it.
        report: Box<crate::OomReport>,
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

/// A backend call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The device has no room for a segment of this size.
    #[error("device out of memory reserving {requested} bytes")]
    OutOfMemory {
        /// Segment bytes asked for.
        requested: usize,
    },
    /// A fault injected by a test ([`FaultAdaptor::fail_reservation`](crate::backend::FaultAdaptor::fail_reservation),
    /// [`FaultAdaptor::fail_unmap`](crate::backend::FaultAdaptor::fail_unmap)).
    #[error("injected fault at call {nth}")]
    Injected {
        /// The 1-based number of the reservation (or unmap) that failed.
        nth: u64,
    },
    /// A CUDA driver call failed.
    #[error("{call} failed: {code}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// The `CUresult`, as its name.
        code: String,
    },
    /// No CUDA driver could be loaded, or it has no such device.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// A stream handle the backend does not know.
    #[error("unknown stream {stream:#x}")]
    UnknownStream {
        /// The handle.
        stream: u64,
    },
    /// An event handle the backend did not create, or destroyed.
    #[error("unknown event {event:#x}")]
    UnknownEvent {
        /// The handle.
        event: u64,
    },
    /// A stream of another device (or another context of this device):
    /// work ordered on it cannot order this device's memory (on CUDA an
    /// event of this device recorded there would never complete a free).
    #[error("stream {stream:#x} belongs to device {stream_device}, not device {device}")]
    ForeignStream {
        /// The handle.
        stream: u64,
        /// The device the stream belongs to (`usize::MAX` if the driver
        /// would not say).
        stream_device: usize,
        /// The device asked about.
        device: usize,
    },
    /// An address (and size) this backend did not hand out in that form: a
    /// release of something that is not a held segment, a map or unmap
    /// outside a reserved range, of pages not in the state the call needs,
    /// or not aligned to the page size. Nothing was changed.
    #[error("{call} of {addr:#x}+{size}: {why}")]
    InvalidAddress {
        /// The backend method.
        call: &'static str,
        /// The address passed.
        addr: u64,
        /// The size passed.
        size: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// [`VirtualMemory::unmap`](crate::backend::VirtualMemory::unmap) failed part way. Exactly the first
    /// `unmapped` bytes of the range are no longer mapped (their memory is
    /// given back); the rest is still mapped and held.
    #[error("unmapped {unmapped} of {requested} bytes: {cause}")]
    PartlyUnmapped {
        /// Bytes unmapped, from the start of the range.
        unmapped: usize,
        /// Bytes asked to unmap.
        requested: usize,
        /// The failure that stopped it (or, with `unmapped == requested`,
        /// a failure to give back a page whose mapping is gone).
        cause: Box<BackendError>,
    },
    /// The backend lacks a capability (virtual memory, stream order, copies).
    #[error("the backend has no {capability} capability")]
    Unsupported {
        /// The capability's name.
        capability: &'static str,
    },
}

impl BackendError {
    /// Bytes of a failed [`VirtualMemory::unmap`](crate::backend::VirtualMemory::unmap) that are unmapped all the
    /// same: `unmapped` of [`BackendError::PartlyUnmapped`], 0 otherwise.
    pub fn unmapped_bytes(&self) -> usize {
        match self {
            BackendError::PartlyUnmapped { unmapped, .. } => *unmapped,
            _ => 0,
        }
    }
}
