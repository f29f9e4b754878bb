//! The stream registry (issue 13): a stream handle reaches the backend only
//! once it is built in (0, 1, 2), registered on that device, or one the
//! backend made itself. Before it, any `u64` from safe `allocate_on` or
//! `record_stream` reached the CUDA driver as a `CUstream`.
//!
//! `DriverLike` stands in for the CUDA driver on the host: like it, it takes
//! any handle it is given (and notes it), and vouches for none.

use graphalloc::backend::{CaptureStatus, MemInfo, StreamOrder};
use graphalloc::{Allocator, Backend, BackendError, BackendKind, Error, HostBackend};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct DriverLike {
    host: HostBackend,
    /// Every stream handle passed in, in order.
    seen: Mutex<Vec<u64>>,
}

impl DriverLike {
    fn saw(&self, stream: u64) {
        self.seen.lock().unwrap().push(stream);
    }
}

impl Backend for DriverLike {
    fn kind(&self) -> BackendKind {
        self.host.kind()
    }
    fn ordinal(&self) -> usize {
        self.host.ordinal()
    }
    fn reserve(&self, size: usize) -> Result<u64, BackendError> {
        self.host.reserve(size)
    }
    unsafe fn release(&self, addr: u64, size: usize) -> Result<(), BackendError> {
        // SAFETY: the caller's contract for `release`, passed on.
        unsafe { self.host.release(addr, size) }
    }
    fn mem_info(&self) -> Result<MemInfo, BackendError> {
        self.host.mem_info()
    }
    fn as_stream_order(&self) -> Option<&dyn StreamOrder> {
        Some(self)
    }
}

impl StreamOrder for DriverLike {
    fn create_event(&self) -> Result<u64, BackendError> {
        self.host.create_event()
    }
    fn destroy_event(&self, event: u64) -> Result<(), BackendError> {
        self.host.destroy_event(event)
    }
    fn record_event(&self, event: u64, stream: u64) -> Result<(), BackendError> {
        self.saw(stream);
        self.host.record_event(event, 0) // every stream is done at once
    }
    fn event_complete(&self, event: u64) -> Result<bool, BackendError> {
        self.host.event_complete(event)
    }
    fn wait_event(&self, event: u64) -> Result<(), BackendError> {
        self.host.wait_event(event)
    }
    fn capture_status(&self, stream: u64) -> Result<CaptureStatus, BackendError> {
        self.saw(stream);
        Ok(CaptureStatus::Idle)
    }
}

/// An allocator over `devices` driver-like devices.
fn setup(devices: usize) -> (Vec<Arc<DriverLike>>, Allocator) {
    let backends: Vec<_> = (0..devices)
        .map(|d| {
            Arc::new(DriverLike {
                host: HostBackend::new(d, 1 << 30),
                seen: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let dyns = backends.iter().map(|b| b.clone() as Arc<dyn Backend>);
    let alloc = Allocator::from_backends(dyns.collect(), 1.0).unwrap();
    (backends, alloc)
}

/// A handle no one made: what a bug or a hostile caller passes.
const BOGUS: u64 = 0x5757_0000;

/// Registers `stream` on `device`.
fn register(alloc: &Allocator, device: usize, stream: u64) {
    // SAFETY: `DriverLike` takes any handle: every one is a live stream.
    unsafe { alloc.register_raw_stream(device, stream) }.unwrap();
}

#[test]
fn an_unregistered_stream_is_refused_before_it_reaches_the_driver() {
    let (dev, alloc) = setup(1);
    let p = alloc.allocate_on(0, 0, 4096, 512).unwrap();
    let before = (alloc.stats(), alloc.live_pointers());
    let refused = Err(Error::UnknownStream { stream: BOGUS });
    assert_eq!(alloc.allocate_on(0, BOGUS, 4096, 512), refused);
    assert_eq!(alloc.record_stream(p, BOGUS).map(|_| p), refused);
    let on_bogus = graphalloc::use_stream(BOGUS);
    assert_eq!(alloc.allocate(4096, 512), refused);
    drop(on_bogus);
    assert_eq!(
        (alloc.stats(), alloc.live_pointers()),
        before,
        "nothing changed"
    );
    alloc.free(p).unwrap();
    assert!(
        !dev[0].seen.lock().unwrap().contains(&BOGUS),
        "the handle never reached the driver"
    );
    assert!(!alloc.is_stream_registered(0, BOGUS));
}

#[test]
fn the_built_in_streams_always_work() {
    let (_dev, alloc) = setup(2);
    for device in 0..2 {
        for stream in 0..=2 {
            assert!(alloc.is_stream_registered(device, stream));
            let p = alloc.allocate_on(device, stream, 4096, 512).unwrap();
            alloc.record_stream(p, (stream + 1) % 3).unwrap();
            alloc.free(p).unwrap();
            // Unregistering a built-in stream is refused: it stays accepted.
            assert!(!alloc.unregister_stream(device, stream));
            assert!(alloc.is_stream_registered(device, stream));
        }
    }
}

#[test]
fn a_registered_stream_works_until_it_is_unregistered() {
    let (dev, alloc) = setup(1);
    register(&alloc, 0, BOGUS);
    register(&alloc, 0, BOGUS); // twice: changes nothing
    let p = alloc.allocate_on(0, BOGUS, 4096, 512).unwrap();
    let q = alloc.allocate_on(0, 0, 4096, 512).unwrap();
    alloc.record_stream(q, BOGUS).unwrap();
    assert!(dev[0].seen.lock().unwrap().contains(&BOGUS));

    assert!(alloc.unregister_stream(0, BOGUS));
    assert!(!alloc.unregister_stream(0, BOGUS), "already unregistered");
    let refused = Err(Error::UnknownStream { stream: BOGUS });
    assert_eq!(alloc.allocate_on(0, BOGUS, 4096, 512), refused);
    assert_eq!(alloc.record_stream(q, BOGUS).map(|_| q), refused);
    // Blocks already on it (or recorded on it) are freed as usual.
    alloc.free(p).unwrap();
    alloc.free(q).unwrap();
    assert_eq!(alloc.live_pointers(), 0);

    register(&alloc, 0, BOGUS);
    let r = alloc.allocate_on(0, BOGUS, 4096, 512).unwrap();
    alloc.free(r).unwrap();
}

#[test]
fn a_stream_registered_on_one_device_is_refused_on_another() {
    let (dev, alloc) = setup(2);
    register(&alloc, 0, BOGUS);
    let on1 = alloc.allocate_on(1, 0, 4096, 512).unwrap();
    let foreign = Error::Backend(BackendError::ForeignStream {
        stream: BOGUS,
        stream_device: 0,
        device: 1,
    });
    assert_eq!(alloc.allocate_on(1, BOGUS, 4096, 512), Err(foreign.clone()));
    assert_eq!(alloc.record_stream(on1, BOGUS), Err(foreign));
    assert!(!dev[1].seen.lock().unwrap().contains(&BOGUS));
    alloc.free(on1).unwrap();
    // Registering on a device the allocator lacks is a typed error.
    // SAFETY: refused before the handle is kept.
    let e = unsafe { alloc.register_raw_stream(2, BOGUS) };
    assert_eq!(
        e,
        Err(Error::InvalidDevice {
            device: 2,
            count: 2
        })
    );
}

#[test]
fn host_backend_streams_count_as_registered() {
    let host = Arc::new(HostBackend::new(0, 1 << 30));
    let alloc = Allocator::from_backends(vec![host.clone() as Arc<dyn Backend>], 1.0).unwrap();
    let s = host.create_stream();
    assert!(alloc.is_stream_registered(0, s));
    let p = alloc.allocate_on(0, s, 4096, 512).unwrap();
    alloc.record_stream(p, host.create_stream()).unwrap();
    alloc.free(p).unwrap();
    // A handle the host backend did not make is refused by the registry.
    let other = s + 1000;
    assert_eq!(
        alloc.allocate_on(0, other, 4096, 512),
        Err(Error::UnknownStream { stream: other })
    );
}
