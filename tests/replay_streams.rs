//! The replay [`Player`] and the streams it makes for a trace's stream tags
//! (`Allocator::create_stream`) on allocators whose backends cannot make
//! them, or stop making them part way.

use graphalloc::backend::{BackendError, CaptureStatus, MemInfo, StreamOrder};
use graphalloc::replay::{Player, ReplayError, Trace};
use graphalloc::{Allocator, Backend, BackendKind, Config, Error, HostBackend};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A host backend that makes at most `left` streams (then fails), and
/// offers no stream order at all unless `order`.
#[derive(Debug)]
struct Flaky {
    inner: HostBackend,
    left: AtomicUsize,
    order: bool,
}

impl Backend for Flaky {
    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        self.order.then_some(self as _)
    }

    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        // SAFETY: the caller's contract for `release`, passed on.
        unsafe { self.inner.release(addr, size) }
    }

    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        self.inner.mem_info()
    }

    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.inner.reserve(size)
    }

    fn ordinal(&self) -> usize {
        self.inner.ordinal()
    }
}

impl StreamOrder for Flaky {
    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError> {
        self.inner.record_event(event, stream)
    }

    fn create_event(&self) -> Result<u64, BackendError> {
        self.inner.create_event()
    }

    fn wait_event(&self, event: u64) -> Result<(), BackendError> {
        self.inner.wait_event(event)
    }

    fn destroy_event(&self, event: u64) -> Result<(), BackendError> {
        self.inner.destroy_event(event)
    }

    fn event_complete(&self, event: u64) -> Result<bool, BackendError> {
        self.inner.event_complete(event)
    }

    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError> {
        self.inner.capture_status(stream)
    }

    fn created_stream(&self, stream: u64) -> bool {
        self.inner.created_stream(stream)
    }

    fn create_stream(&self) -> Result<u64, BackendError> {
        let left = self.left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(BackendError::Unsupported {
                capability: "another stream",
            });
        }
        self.left.store(left - 1, Ordering::SeqCst);
        StreamOrder::create_stream(&self.inner)
    }
}

/// An allocator on a [`Flaky`] backend; `skip` streams made on it first,
/// so that its handles differ from another host backend's.
fn flaky(left: usize, order: bool, skip: usize) -> Allocator {
    let inner = HostBackend::new(0, 1 << 30);
    for _ in 0..skip {
        inner.create_stream();
    }
    let backend: Arc<dyn Backend> = Arc::new(Flaky {
        inner,
        left: AtomicUsize::new(left),
        order,
    });
    Allocator::from_backends_with(vec![backend], &Config::host(1 << 30)).unwrap()
}

/// Two recorded streams (tags past the built-in ones).
const TWO_STREAMS: &str = "a 0 4096 1000\na 1 4096 2000\nf 0\nf 1\n";

#[test]
fn a_backend_that_cannot_make_streams_is_a_stream_error() {
    let trace = Trace::parse_str("two", TWO_STREAMS).unwrap();
    for order in [false, true] {
        let alloc = flaky(0, order, 0);
        let err = Player::new(&trace).play(&alloc).unwrap_err();
        assert!(
            matches!(
                err,
                ReplayError::Stream {
                    stream: 1000,
                    source: Error::Backend(BackendError::Unsupported { .. })
                }
            ),
            "{err}"
        );
    }
    // A trace on built-in streams only needs none.
    let builtin = Trace::parse_str("one", "a 0 4096 0\na 1 4096 0\nf 0\nf 1\n").unwrap();
    Player::new(&builtin).play(&flaky(0, false, 0)).unwrap();
}

/// A player whose streams could not all be made on a second allocator
/// still plays on the first with the first's streams (it used to keep the
/// second's handle for the first tag, unknown to the first allocator).
#[test]
fn a_failed_stream_on_another_allocator_leaves_the_player_usable() {
    let trace = Trace::parse_str("two", TWO_STREAMS).unwrap();
    let mut player = Player::new(&trace);
    let first = Allocator::new(Config::host(1 << 30)).unwrap();
    player.play(&first).unwrap();
    player.free_all(&first).unwrap();
    let second = flaky(1, true, 8);
    let err = player.play(&second).unwrap_err();
    assert!(
        matches!(err, ReplayError::Stream { stream: 2000, .. }),
        "{err}"
    );
    player.play(&first).unwrap();
    player.free_all(&first).unwrap();
    assert_eq!(first.stats().total.allocated_bytes, 0);
}

#[test]
fn a_device_out_of_range_is_an_error_naming_it() {
    let trace = Trace::parse_str("two", TWO_STREAMS).unwrap();
    let alloc = Allocator::new(Config::host(1 << 30)).unwrap();
    let err = Player::with_placement(&trace, 5, 512)
        .play(&alloc)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReplayError::Stream {
                stream: 1000,
                source: Error::InvalidDevice {
                    device: 5,
                    count: 1
                }
            }
        ),
        "{err}"
    );
    // A player on device 0 plays, samples and observes on one allocator.
    let mut player = Player::new(&trace);
    player.play(&alloc).unwrap();
    player.play_sampled(&alloc, 4).unwrap();
    player.play_observed(&alloc, |_| {}).unwrap();
    player.teardown(&alloc).unwrap();
    assert_eq!(alloc.stats().total.allocated_bytes, 0);
}
