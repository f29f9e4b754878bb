//! [`DevicePtr`]: an address in device memory.

use std::fmt;

/// An address in device memory, as handed out by an [`crate::Allocator`].
///
/// On the host backend it is a host address; on CUDA a `CUdeviceptr`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct DevicePtr(u64);

impl DevicePtr {
    /// Wraps a raw address.
    pub const fn new(addr: u64) -> Self {
        DevicePtr(addr)
    }

    /// The raw address (a `CUdeviceptr` on CUDA).
    pub const fn addr(self) -> u64 {
        self.0
    }

    /// Whether the address is zero.
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePtr({:#x})", self.0)
    }
}

impl fmt::Display for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
