//! The process-wide allocator: a once-set slot ([`AllocatorSlot`]) and the
//! static one behind [`install`], [`global`] and [`try_global`].

use crate::allocator::Allocator;
use crate::config::Config;
use crate::error::{Error, Result};
#[cfg(not(all(loom, feature = "loom")))]
use crate::graph_pool::GraphPool;
use crate::sync::OnceSlot;

/// A cell holding at most one [`Allocator`], set once.
///
/// The process-wide allocator lives in one of these ([`crate::install`],
/// [`crate::global`]); tests and embedders can make their own.
///
/// ```
/// use graphalloc::{AllocatorSlot, Config, Error};
/// let slot = AllocatorSlot::new();
/// slot.install(Config::host(1 << 30)).unwrap();
/// assert_eq!(slot.install(Config::host(1 << 30)).unwrap_err(), Error::AlreadyInstalled);
/// ```
#[derive(Debug)]
pub struct AllocatorSlot {
    cell: OnceSlot<Allocator>,
}

#[cfg(not(all(loom, feature = "loom")))]
impl Default for AllocatorSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl AllocatorSlot {
    /// An empty slot.
    #[cfg(not(all(loom, feature = "loom")))]
    pub const fn new() -> Self {
        AllocatorSlot {
            cell: OnceSlot::new(),
        }
    }

    /// An empty slot.
    #[cfg(all(loom, feature = "loom"))]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        AllocatorSlot {
            cell: OnceSlot::new(),
        }
    }

    /// Builds an allocator from `config` and puts it in the slot. Fails with
    /// [`Error::AlreadyInstalled`] if the slot is already set (by an earlier
    /// `install` or by [`AllocatorSlot::get`]); the slot then keeps its
    /// allocator.
    pub fn install(&self, config: Config) -> Result<&Allocator> {
        let allocator = Allocator::new(config)?;
        self.cell
            .set(allocator)
            .map_err(|_| Error::AlreadyInstalled)?;
        Ok(self.cell.get().expect("just set"))
    }

    /// The allocator in the slot, installing one configured from
    /// `GRAPHALLOC_CONF` if the slot is empty.
    pub fn get(&self) -> Result<&Allocator> {
        self.cell
            .get_or_try_init(|| Allocator::new(Config::from_env()?))
    }

    /// The allocator in the slot, if one is set.
    pub fn installed(&self) -> Option<&Allocator> {
        self.cell.get()
    }
}

#[cfg(not(all(loom, feature = "loom")))]
mod process {
    use super::*;

    static GLOBAL: AllocatorSlot = AllocatorSlot::new();

    /// Installs the process-wide allocator, built from `config`. Call once at
    /// startup, before any allocation; a second call (or a call after
    /// [`global`] already installed the default) fails with
    /// [`Error::AlreadyInstalled`].
    pub fn install(config: Config) -> Result<&'static Allocator> {
        GLOBAL.install(config)
    }

    /// The process-wide allocator, installing one configured from
    /// `GRAPHALLOC_CONF` on first use.
    ///
    /// # Panics
    /// If `GRAPHALLOC_CONF` is malformed or the configured backend cannot be
    /// built; [`try_global`] returns that error instead.
    pub fn global() -> &'static Allocator {
        match GLOBAL.get() {
            Ok(allocator) => allocator,
            Err(e) => panic!("graphalloc: cannot build the process-wide allocator: {e}"),
        }
    }

    /// The process-wide allocator, or why it cannot be built.
    pub fn try_global() -> Result<&'static Allocator> {
        GLOBAL.get()
    }
}

#[cfg(not(all(loom, feature = "loom")))]
pub use process::{global, install, try_global};

#[cfg(not(all(loom, feature = "loom")))]
impl GraphPool {
    /// A new, empty pool on device 0 of the process-wide allocator
    /// ([`global`]); [`Allocator::create_pool_on`] makes one on another
    /// device.
    ///
    /// # Panics
    /// As [`global`] does, when `GRAPHALLOC_CONF` is malformed.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        global().create_pool()
    }
}
