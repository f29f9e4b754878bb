//! An allocation's failure, and its out-of-memory report: the observers
//! (user code) run only after the allocation let go of graph mode's stack.

use super::{too_large, Allocator};
use crate::caching::CachingAllocator;
use crate::device::Shortfall;
use crate::device_ptr::DevicePtr;
use crate::error::{Error, Result};
use crate::graph_pool::PoolCore;
use crate::history::Action;

/// Why an allocation failed: out of memory is reported to the observers by
/// [`Allocator::report`], after graph mode's stack is released. Boxed, so
/// that the allocation's result comes back in registers.
pub(super) struct Failed(Box<Failure>);

enum Failure {
    Error(Error),
    /// Device, bytes requested, owner.
    OutOfMemory(usize, usize, crate::OomOwner),
}

impl From<Error> for Failed {
    #[cold]
    fn from(e: Error) -> Self {
        Failed(Box::new(Failure::Error(e)))
    }
}

impl Allocator {
    /// An allocation's result, with an out-of-memory failure reported to
    /// the observers (user code: not while graph mode's stack is borrowed).
    #[inline]
    pub(super) fn report(
        &self,
        result: std::result::Result<DevicePtr, Failed>,
    ) -> Result<DevicePtr> {
        match result {
            Ok(ptr) => Ok(ptr),
            Err(failed) => Err(match *failed.0 {
                Failure::Error(e) => e,
                Failure::OutOfMemory(device, size, owner) => {
                    self.out_of_memory(device, size, owner)
                }
            }),
        }
    }

    /// The error for a carve that fell short.
    #[cold]
    #[inline(never)]
    pub(super) fn shortfall(
        &self,
        shortfall: Shortfall,
        cache: &CachingAllocator,
        device: usize,
        size: usize,
        pool: Option<&PoolCore>,
    ) -> Failed {
        match shortfall {
            Shortfall::Overflow => too_large(cache, size).into(),
            Shortfall::Backend(e) => Error::Backend(e).into(),
            Shortfall::Exhausted => {
                let owner =
                    pool.map_or(crate::OomOwner::Cache, |p| crate::OomOwner::GraphPool(p.id));
                Failed(Box::new(Failure::OutOfMemory(device, size, owner)))
            }
        }
    }

    /// The error for a failed request, after its report went to the
    /// observers (`oom.rs`). Called with no lock held.
    pub(crate) fn out_of_memory(
        &self,
        device: usize,
        requested: usize,
        owner: crate::OomOwner,
    ) -> Error {
        let report = crate::oom::gather(&self.caches[device], &self.pools, requested, owner);
        self.history.record(
            Action::Oom,
            device,
            0,
            requested,
            report.device_free as u64,
            None,
        );
        self.oom.notify(&report);
        report.into()
    }
}
