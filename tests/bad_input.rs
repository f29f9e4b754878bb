//! Every bad input the public API can receive, and the exact error each gets.
//!
//! `every_bad_input_gets_its_exact_error` is one table: each row is a call
//! with a bad input and the exact `Err` it must return; before and after each
//! row the statistics of every allocator involved, their live-pointer counts
//! and the host memory outstanding must be equal (an error changes nothing;
//! the one documented exception, an out-of-memory error, may count an OOM
//! retry, and its row says so), and the oracle (`tests/oracle/mod.rs`) must
//! hold. The number of inputs tried is printed.
//!
//! Sequences that need more than one call have tests of their own: frees of
//! pool blocks after a refused reset, guards dropped out of order or leaked
//! with `mem::forget`, a second install, and `GRAPHALLOC_CONF` read from the
//! environment (the one test here that touches the process environment).

mod oracle;

use graphalloc::config::ENV_VAR;
use graphalloc::{
    cuda_driver_available, Allocator, AllocatorSlot, Backend, BackendChoice, BackendError, Config,
    DevicePtr, Error, MemoryUsageStats, MAX_ALIGNMENT,
};
use oracle::{assert_empty, tracked_allocator, tracked_allocator_with_fraction, Harness, Owner};
use oracle::{GIB, MIB};
use std::sync::Arc;

/// The capacity of the main allocator's device.
const CAP: usize = GIB;

/// What a row may change.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    /// Nothing at all.
    Nothing,
    /// One OOM retry counted in the caching allocator (documented for
    /// out-of-memory errors); nothing else.
    OomRetry,
}

struct Row<'a> {
    name: String,
    call: Box<dyn Fn() -> Result<(), Error> + 'a>,
    expect: Error,
    effect: Effect,
}

fn row<'a, T>(
    name: impl Into<String>,
    expect: Error,
    call: impl Fn() -> Result<T, Error> + 'a,
) -> Row<'a> {
    Row {
        name: name.into(),
        call: Box::new(move || call().map(drop)),
        expect,
        effect: Effect::Nothing,
    }
}

fn config_error(key: &str, value: &str, reason: &str) -> Error {
    Error::Config {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

const BACKEND_REASON: &str = "expected auto, host or cuda";
const CAPACITY_REASON: &str = "expected a byte count from 1 to 1PiB, such as 4096, 512MiB or 8GiB";
const DEVICES_REASON: &str = "expected a whole number from 1 to 64";
const FRACTION_REASON: &str = "expected a number in (0, 1]";
/// The reason given for an unknown key starts with this and goes on to list
/// the known keys (which other work may extend; see [`same_error`]).
const UNKNOWN_REASON: &str = "unknown key; known keys: ";

fn unknown_key(key: &str, value: &str) -> Error {
    config_error(key, value, UNKNOWN_REASON)
}

/// Equality of errors, except that for an unknown configuration key the
/// reason need only start with [`UNKNOWN_REASON`] and name the four keys
/// this test knows (the list grows as keys are added), and that an
/// out-of-memory error's report (tests/oom.rs checks it) is not compared.
fn same_error(got: &Error, want: &Error) -> bool {
    match (got, want) {
        (Error::OutOfMemory { .. }, Error::OutOfMemory { .. }) => {
            let mut got = got.clone();
            if let Error::OutOfMemory { report, .. } = &mut got {
                **report = Default::default();
            }
            &got == want
        }
        (
            Error::Config { key, value, reason },
            Error::Config {
                key: k,
                value: v,
                reason: r,
            },
        ) if r == UNKNOWN_REASON => {
            key == k
                && value == v
                && reason.starts_with(UNKNOWN_REASON)
                && [
                    "backend",
                    "host_capacity",
                    "host_devices",
                    "memory_fraction",
                ]
                .iter()
                .all(|known| reason.contains(known))
        }
        _ => got == want,
    }
}

fn assert_same_error<T: std::fmt::Debug>(got: Result<T, Error>, want: &Error, what: &str) {
    match got {
        Err(e) => assert!(same_error(&e, want), "{what}: got {e:?}, want {want:?}"),
        Ok(v) => panic!("{what}: got Ok({v:?}), want {want:?}"),
    }
}
const PAIR_REASON: &str = "expected key:value";

/// Every malformed `GRAPHALLOC_CONF` text the table tries, with its error.
fn config_rows() -> Vec<(&'static str, Error)> {
    vec![
        (
            "backend:gpu",
            config_error("backend", "gpu", BACKEND_REASON),
        ),
        ("backend:", config_error("backend", "", BACKEND_REASON)),
        (
            "backend:host cuda",
            config_error("backend", "host cuda", BACKEND_REASON),
        ),
        ("backend", config_error("backend", "", PAIR_REASON)),
        (
            "backend=host",
            config_error("backend=host", "", PAIR_REASON),
        ),
        (
            "backend:host;host_capacity:1GiB",
            config_error("backend", "host;host_capacity:1GiB", BACKEND_REASON),
        ),
        (
            "host_capacity:lots",
            config_error("host_capacity", "lots", CAPACITY_REASON),
        ),
        (
            "host_capacity:0",
            config_error("host_capacity", "0", CAPACITY_REASON),
        ),
        (
            "host_capacity:0GiB",
            config_error("host_capacity", "0GiB", CAPACITY_REASON),
        ),
        (
            "host_capacity:-1",
            config_error("host_capacity", "-1", CAPACITY_REASON),
        ),
        (
            "host_capacity:1.5GiB",
            config_error("host_capacity", "1.5GiB", CAPACITY_REASON),
        ),
        (
            "host_capacity:8PiB",
            config_error("host_capacity", "8PiB", CAPACITY_REASON),
        ),
        (
            "host_capacity:0x1000",
            config_error("host_capacity", "0x1000", CAPACITY_REASON),
        ),
        (
            "host_capacity:99999999999999999999",
            config_error("host_capacity", "99999999999999999999", CAPACITY_REASON),
        ),
        (
            "host_capacity:16777216TiB",
            config_error("host_capacity", "16777216TiB", CAPACITY_REASON),
        ),
        (
            "host_capacity:",
            config_error("host_capacity", "", CAPACITY_REASON),
        ),
        (
            "host_devices:0",
            config_error("host_devices", "0", DEVICES_REASON),
        ),
        (
            "host_devices:65",
            config_error("host_devices", "65", DEVICES_REASON),
        ),
        (
            "host_devices:-1",
            config_error("host_devices", "-1", DEVICES_REASON),
        ),
        (
            "host_devices:two",
            config_error("host_devices", "two", DEVICES_REASON),
        ),
        (
            "host_devices:1.0",
            config_error("host_devices", "1.0", DEVICES_REASON),
        ),
        (
            "memory_fraction:0",
            config_error("memory_fraction", "0", FRACTION_REASON),
        ),
        (
            "memory_fraction:1.5",
            config_error("memory_fraction", "1.5", FRACTION_REASON),
        ),
        (
            "memory_fraction:-0.5",
            config_error("memory_fraction", "-0.5", FRACTION_REASON),
        ),
        (
            "memory_fraction:NaN",
            config_error("memory_fraction", "NaN", FRACTION_REASON),
        ),
        (
            "memory_fraction:inf",
            config_error("memory_fraction", "inf", FRACTION_REASON),
        ),
        (
            "memory_fraction:half",
            config_error("memory_fraction", "half", FRACTION_REASON),
        ),
        (
            "memory_fraction:50%",
            config_error("memory_fraction", "50%", FRACTION_REASON),
        ),
        ("colour:blue", unknown_key("colour", "blue")),
        ("BACKEND:host", unknown_key("BACKEND", "host")),
        (":host", unknown_key("", "host")),
        (
            "backend:host,host_devices:0",
            config_error("host_devices", "0", DEVICES_REASON),
        ),
        (
            " host_capacity : lots ",
            config_error("host_capacity", "lots", CAPACITY_REASON),
        ),
    ]
}

/// A snapshot of everything a bad input must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    stats: Vec<MemoryUsageStats>,
    live: Vec<usize>,
    outstanding: usize,
}

#[test]
fn every_bad_input_gets_its_exact_error() {
    // The main allocator, with live blocks of every kind and freed ones.
    let mut h = Harness::new(CAP, 1);
    let pool = h.pools[0].clone();
    let c = h.allocate(4096, 256).unwrap().ptr; // caching block
    let d = h.allocate(2048, 256).unwrap().ptr; // freed below: double free
    let keep = h.allocate(1024, 256).unwrap().ptr; // keeps d's segment busy
    let e = h.allocate(12 * MIB, 512).unwrap().ptr; // freed, segment released
    let a = h.allocate(1000, MAX_ALIGNMENT).unwrap(); // over-aligned, own segment
    h.enter(0);
    let q = h.allocate(8192, 512).unwrap().ptr; // pool block
    let q2 = h.allocate(4096, 512).unwrap().ptr; // freed pool block
    h.exit_all();
    h.free_block(d);
    h.free_block(e);
    h.free_block(q2);
    h.empty_cache();
    assert!(!h.backend.contains(e, 1), "e's segment was released");
    assert!(h.backend.contains(d, 1) && h.backend.contains(keep, 1));
    h.check();
    // The over-aligned block's segment is fresh, so its block starts at the
    // segment's base; the pointer handed out is the first 2 MiB multiple.
    let a_block = *h
        .backend
        .segments()
        .range(..=a.ptr)
        .next_back()
        .expect("a lies in a segment")
        .0;

    // Another allocator (foreign pools and pointers), and one with a limit.
    let (other, other_backend) = tracked_allocator(CAP);
    let other_pool = other.create_pool();
    let foreign = other.allocate(4096, 512).unwrap();
    let (capped, capped_backend) = tracked_allocator_with_fraction(CAP, 0.5);
    let slot = AllocatorSlot::new();
    slot.install(Config::host(CAP)).unwrap();
    let installed = slot.installed().unwrap();

    let alloc = &h.alloc;
    let p = DevicePtr::new;
    let over = |align: usize| Error::InvalidAlignment {
        align,
        max: MAX_ALIGNMENT,
    };
    let too_large = |requested: usize, limit: usize| Error::TooLarge { requested, limit };
    let before = alloc.stats();

    let mut rows: Vec<Row> = vec![
        // Sizes.
        row("size 0", Error::ZeroSize, || alloc.allocate(0, 1)),
        row("size 0, bad alignment too", Error::ZeroSize, || {
            alloc.allocate(0, 3)
        }),
        row("size 0, align 2 MiB", Error::ZeroSize, || {
            alloc.allocate(0, MAX_ALIGNMENT)
        }),
        row("size usize::MAX", too_large(usize::MAX, CAP), || {
            alloc.allocate(usize::MAX, 1)
        }),
        row(
            "size usize::MAX, align 2 MiB",
            too_large(usize::MAX, CAP),
            || alloc.allocate(usize::MAX, MAX_ALIGNMENT),
        ),
        row(
            "size usize::MAX - 511",
            too_large(usize::MAX - 511, CAP),
            || alloc.allocate(usize::MAX - 511, 1),
        ),
        row("size isize::MAX + 1", too_large(1 << 63, CAP), || {
            alloc.allocate(1 << 63, 1)
        }),
        row("size capacity + 1", too_large(CAP + 1, CAP), || {
            alloc.allocate(CAP + 1, 1)
        }),
        row("size capacity + 512", too_large(CAP + 512, CAP), || {
            alloc.allocate(CAP + 512, 1)
        }),
        row(
            "size capacity + 2 MiB",
            too_large(CAP + 2 * MIB, CAP),
            || alloc.allocate(CAP + 2 * MIB, 1),
        ),
        row(
            "size capacity - 1 KiB, align 2 MiB (padding pushes it over)",
            too_large(CAP - 1024, CAP),
            || alloc.allocate(CAP - 1024, MAX_ALIGNMENT),
        ),
        row(
            "size over a 0.5 memory fraction",
            too_large(CAP / 2 + 1, CAP / 2),
            || capped.allocate(CAP / 2 + 1, 1),
        ),
        Row {
            effect: Effect::OomRetry,
            ..row(
                "size = capacity while the device is in use (out of memory)",
                Error::OutOfMemory {
                    device: 0,
                    requested: CAP,
                    reserved: before.total.reserved_bytes,
                    allocated: before.total.allocated_bytes,
                    device_free: CAP - before.total.reserved_bytes,
                    device_total: CAP,
                    report: Default::default(),
                },
                || alloc.allocate(CAP, 1),
            )
        },
        // Alignments.
        row("align 0", over(0), || alloc.allocate(64, 0)),
        row("align 3", over(3), || alloc.allocate(64, 3)),
        row("align 6", over(6), || alloc.allocate(64, 6)),
        row("align 1000", over(1000), || alloc.allocate(64, 1000)),
        row("align 4 MiB", over(2 * MAX_ALIGNMENT), || {
            alloc.allocate(64, 2 * MAX_ALIGNMENT)
        }),
        row("align 2^63", over(1 << 63), || alloc.allocate(64, 1 << 63)),
        row("align usize::MAX", over(usize::MAX), || {
            alloc.allocate(64, usize::MAX)
        }),
        row("align 3 with size usize::MAX", over(3), || {
            alloc.allocate(usize::MAX, 3)
        }),
        // Devices and streams.
        row(
            "allocate_on device 1 of 1",
            Error::InvalidDevice {
                device: 1,
                count: 1,
            },
            || alloc.allocate_on(1, 0, 4096, 512),
        ),
        row(
            "allocate_on device usize::MAX",
            Error::InvalidDevice {
                device: usize::MAX,
                count: 1,
            },
            || alloc.allocate_on(usize::MAX, 0, 4096, 512),
        ),
        row(
            "allocate_on a bad device with size 0 (size checked first)",
            Error::ZeroSize,
            || alloc.allocate_on(1, 0, 0, 512),
        ),
        row(
            "create_pool_on device 1",
            Error::InvalidDevice {
                device: 1,
                count: 1,
            },
            || alloc.create_pool_on(1),
        ),
        row(
            "device_stats of device 7",
            Error::InvalidDevice {
                device: 7,
                count: 1,
            },
            || alloc.device_stats(7),
        ),
        row(
            "backend of device 3",
            Error::InvalidDevice {
                device: 3,
                count: 1,
            },
            || alloc.backend(3).map(|_| ()),
        ),
        row(
            "allocate_on an unknown stream",
            Error::UnknownStream { stream: 0xdead },
            || alloc.allocate_on(0, 0xdead, 4096, 512),
        ),
        row(
            "allocate on an unknown current stream",
            Error::UnknownStream { stream: 0xbeef },
            || {
                let _s = graphalloc::use_stream(0xbeef);
                alloc.allocate(4096, 512)
            },
        ),
        row(
            "record_stream of a live block on an unknown stream",
            Error::UnknownStream { stream: 0xdead },
            || alloc.record_stream(p(c), 0xdead),
        ),
        row(
            "record_stream of a freed pointer",
            Error::DoubleFree { ptr: d },
            || alloc.record_stream(p(d), 0),
        ),
        row(
            "record_stream of null",
            Error::UnknownPointer { ptr: 0 },
            || alloc.record_stream(p(0), 0),
        ),
        // Frees.
        row("free of null", Error::UnknownPointer { ptr: 0 }, || {
            alloc.free(p(0))
        }),
        row("free of 0x1", Error::UnknownPointer { ptr: 1 }, || {
            alloc.free(p(1))
        }),
        row(
            "free of u64::MAX",
            Error::UnknownPointer { ptr: u64::MAX },
            || alloc.free(p(u64::MAX)),
        ),
        row(
            "free of a pointer of another allocator",
            Error::UnknownPointer {
                ptr: foreign.addr(),
            },
            || alloc.free(foreign),
        ),
        row(
            "free through another allocator",
            Error::UnknownPointer { ptr: c },
            || other.free(p(c)),
        ),
        row(
            "free of a live block + 1",
            Error::InteriorPointer {
                ptr: c + 1,
                block: c,
            },
            || alloc.free(p(c + 1)),
        ),
        row(
            "free of a live block + 512",
            Error::InteriorPointer {
                ptr: c + 512,
                block: c,
            },
            || alloc.free(p(c + 512)),
        ),
        row(
            "free of a live block's last byte",
            Error::InteriorPointer {
                ptr: c + 4095,
                block: c,
            },
            || alloc.free(p(c + 4095)),
        ),
        row(
            "free of a pool block + 512",
            Error::InteriorPointer {
                ptr: q + 512,
                block: q,
            },
            || alloc.free(p(q + 512)),
        ),
        row(
            "free of an over-aligned block + 512 (names the pointer handed out)",
            Error::InteriorPointer {
                ptr: a.ptr + 512,
                block: a.ptr,
            },
            || alloc.free(p(a.ptr + 512)),
        ),
        row("double free", Error::DoubleFree { ptr: d }, || {
            alloc.free(p(d))
        }),
        row(
            "free inside a freed block",
            Error::DoubleFree { ptr: d + 512 },
            || alloc.free(p(d + 512)),
        ),
        row(
            "double free of a pool block",
            Error::DoubleFree { ptr: q2 },
            || alloc.free(p(q2)),
        ),
        row(
            "free of a pointer whose segment was released",
            Error::UnknownPointer { ptr: e },
            || alloc.free(p(e)),
        ),
        // Pools.
        row(
            "reset of a busy pool",
            Error::PoolBusy {
                pool: pool.id(),
                live_blocks: 1,
                allocated: 8192,
            },
            || pool.reset(),
        ),
        row(
            "reset_graph_pool of a busy pool",
            Error::PoolBusy {
                pool: pool.id(),
                live_blocks: 1,
                allocated: 8192,
            },
            || alloc.reset_graph_pool(&pool),
        ),
        row(
            "reset_graph_pool of a foreign pool",
            Error::ForeignPool {
                pool: other_pool.id(),
            },
            || alloc.reset_graph_pool(&other_pool),
        ),
        row(
            "enter_graph_mode on a foreign pool",
            Error::ForeignPool {
                pool: other_pool.id(),
            },
            || alloc.enter_graph_mode(&other_pool).map(drop),
        ),
        row(
            "enter_graph_mode of another allocator on our pool",
            Error::ForeignPool { pool: pool.id() },
            || other.enter_graph_mode(&pool).map(drop),
        ),
        row(
            "with_graph_mode on a foreign pool (the closure never runs)",
            Error::ForeignPool {
                pool: other_pool.id(),
            },
            || alloc.with_graph_mode(&other_pool, || panic!("ran in a foreign pool")),
        ),
        row(
            "set_capture_pool with a foreign pool",
            Error::ForeignPool {
                pool: other_pool.id(),
            },
            || alloc.set_capture_pool(0x5757_0000, &other_pool),
        ),
        // Construction and installation.
        row(
            "second install into a slot",
            Error::AlreadyInstalled,
            || slot.install(Config::host(CAP)),
        ),
        row(
            "from_backends with no backend",
            Error::Backend(BackendError::Unavailable("no device backends given".into())),
            || Allocator::from_backends(Vec::<Arc<dyn Backend>>::new(), 1.0),
        ),
        row(
            "Config with host_devices 0 (built by hand)",
            Error::Backend(BackendError::Unavailable("no device backends given".into())),
            || {
                Allocator::new(Config {
                    host_devices: 0,
                    ..Config::host(CAP)
                })
            },
        ),
        row(
            "install of a bad Config into an empty slot",
            Error::Backend(BackendError::Unavailable("no device backends given".into())),
            || {
                let empty = AllocatorSlot::new();
                let r = empty.install(Config {
                    host_devices: 0,
                    ..Config::host(CAP)
                });
                assert!(empty.installed().is_none(), "a failed install sets nothing");
                r.map(drop)
            },
        ),
    ];
    // (Not under Miri, which cannot load a shared library.)
    if !cfg!(miri) && !cuda_driver_available() {
        rows.push(row(
            "backend cuda without a driver",
            Error::Backend(BackendError::Unavailable("no CUDA driver or device".into())),
            || {
                Allocator::new(Config {
                    backend: BackendChoice::Cuda,
                    ..Config::default()
                })
            },
        ));
    }
    if a_block < a.ptr {
        // An address in the alignment padding that is the block's start was
        // never handed out.
        rows.push(row(
            "free of the start of an over-aligned block's padding",
            Error::UnknownPointer { ptr: a_block },
            move || h_free(alloc, a_block),
        ));
    }
    for (text, err) in config_rows() {
        rows.push(row(format!("Config::parse({text:?})"), err, move || {
            Config::parse(text)
        }));
    }

    let snapshot = || Snapshot {
        stats: vec![
            alloc.stats(),
            other.stats(),
            capped.stats(),
            installed.stats(),
        ],
        live: vec![alloc.live_pointers(), other.live_pointers()],
        outstanding: h.backend.host().outstanding_bytes()
            + other_backend.host().outstanding_bytes()
            + capped_backend.host().outstanding_bytes(),
    };
    let mut tried = 0;
    for r in &rows {
        let before = snapshot();
        assert_same_error((r.call)(), &r.expect, &r.name);
        let after = snapshot();
        match r.effect {
            Effect::Nothing => assert_eq!(before, after, "{}: something changed", r.name),
            Effect::OomRetry => {
                let mut expected = before;
                expected.stats[0].caching.oom_retries += 1;
                expected.stats[0].total.oom_retries += 1;
                assert_eq!(
                    expected, after,
                    "{}: more than an OOM retry changed",
                    r.name
                );
            }
        }
        h.check();
        tried += 1;
        println!("  {:70} -> {}", r.name, r.expect);
    }
    assert!(!h.alloc.is_graph_mode());
    println!("bad inputs tried: {tried}");
    assert!(tried >= 80, "only {tried} rows");

    // Nothing was disturbed: the live blocks still free normally.
    drop(rows);
    other.free(foreign).unwrap();
    drop(other_pool);
    other.empty_cache().unwrap();
    assert_eq!(other_backend.host().outstanding_bytes(), 0);
    assert_eq!(capped_backend.host().outstanding_bytes(), 0);
    drop(pool);
    h.teardown();
}

fn h_free(alloc: &Allocator, addr: u64) -> Result<(), Error> {
    alloc.free(DevicePtr::new(addr))
}

/// A pool whose reset was refused keeps its blocks valid: they free
/// normally (routed to the pool), after which the reset succeeds; then the
/// old pointer is a double free while the pool keeps its segments, and an
/// unknown pointer once the pool is dropped and its segments are gone.
#[test]
fn pool_blocks_free_normally_after_a_refused_reset() {
    let mut h = Harness::new(CAP, 1);
    h.enter(0);
    let q = h.allocate(8192, 512).unwrap();
    h.exit_all();
    let id = h.pools[0].id();
    let busy = h.reset(0).unwrap_err();
    assert_eq!(
        busy,
        Error::PoolBusy {
            pool: id,
            live_blocks: 1,
            allocated: 8192
        }
    );
    h.check();
    h.free_block(q.ptr);
    h.check();
    h.reset(0).expect("idle now");
    assert_eq!(h.free_bad(q.ptr), Error::DoubleFree { ptr: q.ptr });
    let pool_reserved = h.pools[0].stats().reserved_bytes;
    assert!(pool_reserved > 0, "a reset keeps the pool's segments");
    h.replace_pool(0); // the old pool's last handle goes: it retires
    assert_eq!(h.alloc.stats().pools.reserved_bytes, 0);
    assert_eq!(h.free_bad(q.ptr), Error::UnknownPointer { ptr: q.ptr });
    h.check();
    h.teardown();
}

/// Guards dropped out of order remove exactly their own entry (src/mode.rs):
/// the innermost guard still alive decides where allocations go.
#[test]
fn guards_dropped_out_of_order_remove_only_their_own_entry() {
    let mut h = Harness::new(CAP, 2);
    let (p0, p1) = (h.pools[0].id(), h.pools[1].id());

    // enter p0, enter p1, drop the p0 guard first: still in graph mode on p1.
    h.enter(0);
    h.enter(1);
    h.exit(0);
    assert!(h.alloc.is_graph_mode());
    assert_eq!(h.allocate(4096, 512).unwrap().owner, Owner::Pool(p1));
    h.exit(0);
    assert!(!h.alloc.is_graph_mode());
    assert_eq!(h.allocate(4096, 512).unwrap().owner, Owner::Cache);

    // p0, p1, p0 again; drop the middle one: p0 (the innermost) stays current,
    // then the outer p0 after the innermost goes.
    h.enter(0);
    h.enter(1);
    h.enter(0);
    h.exit(1);
    assert_eq!(h.allocate(4096, 512).unwrap().owner, Owner::Pool(p0));
    h.exit(1);
    assert_eq!(h.allocate(4096, 512).unwrap().owner, Owner::Pool(p0));
    h.exit(0);
    assert_eq!(h.allocate(4096, 512).unwrap().owner, Owner::Cache);
    h.check();

    // Graph mode for one allocator does not capture another's allocations.
    let (other, other_backend) = tracked_allocator(CAP);
    h.enter(0);
    assert!(graphalloc::is_graph_mode());
    assert!(!other.is_graph_mode());
    let x = other.allocate(4096, 512).unwrap();
    assert_eq!(other.stats().caching.live_blocks, 1);
    assert_eq!(other.stats().pools.live_blocks, 0);
    other.free(x).unwrap();
    other.empty_cache().unwrap();
    assert_empty(&other, &other_backend);
    h.exit_all();
    h.check();
    h.teardown();
}

/// A guard leaked with `mem::forget` leaves its thread in graph mode for the
/// rest of the thread's life (src/mode.rs), keeping its pool alive even
/// after the last handle is dropped. When the thread ends, its thread-local
/// stack is destroyed, the pool is released, and nothing is left.
#[test]
fn a_forgotten_guard_keeps_its_thread_in_graph_mode_until_the_thread_ends() {
    let (alloc, backend) = tracked_allocator(CAP);
    let pool = alloc.create_pool();
    let pool_id = pool.id();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::mem::forget(alloc.enter_graph_mode(&pool).unwrap());
            assert!(alloc.is_graph_mode());
            let x = alloc.allocate(4096, 512).unwrap();
            assert_eq!(pool.stats().live_blocks, 1);
            alloc.free(x).unwrap();
            // Still in graph mode, with no guard in sight.
            assert!(alloc.is_graph_mode());
            let y = alloc.allocate(4096, 512).unwrap();
            assert_eq!(pool.stats().live_blocks, 1, "still routed to the pool");
            alloc.free(y).unwrap();
        })
        .join()
        .unwrap();
    });
    // This thread never entered graph mode.
    assert!(!alloc.is_graph_mode());
    assert!(pool.stats().reserved_bytes > 0);
    assert_eq!(pool.id(), pool_id);
    drop(pool);
    // The thread is gone, and with it the leaked entry: the pool retired.
    assert_eq!(alloc.stats().pools.reserved_bytes, 0);
    alloc.empty_cache().unwrap();
    assert_empty(&alloc, &backend);

    // While the thread lives, the leaked entry keeps the pool alive.
    let pool = alloc.create_pool();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (alloc, own) = (&alloc, pool.clone());
        let thread = s.spawn(move || {
            std::mem::forget(alloc.enter_graph_mode(&own).unwrap());
            drop(own);
            let x = alloc.allocate(4096, 512).unwrap();
            alloc.free(x).unwrap();
            ready_tx.send(()).unwrap();
            rx.recv().unwrap();
        });
        ready_rx.recv().unwrap();
        drop(pool);
        assert!(
            alloc.stats().pools.reserved_bytes > 0,
            "the leaked guard's entry keeps the dropped pool alive"
        );
        tx.send(()).unwrap();
        // An explicit join waits for the thread's exit, thread-local
        // destructors included (the scope's implicit join need not).
        thread.join().unwrap();
    });
    assert_eq!(alloc.stats().pools.reserved_bytes, 0);
    assert_empty(&alloc, &backend);
}

/// A second install fails and leaves the installed allocator as it was
/// (an `AllocatorSlot`, so the process-wide one is untouched).
#[test]
fn second_install_is_refused_and_changes_nothing() {
    let slot = AllocatorSlot::new();
    let first = slot.install(Config::host(CAP)).unwrap();
    let x = first.allocate(4096, 512).unwrap();
    let before = first.stats();
    let first_ptr = first as *const Allocator;
    assert_eq!(
        slot.install(Config::host(2 * CAP)).unwrap_err(),
        Error::AlreadyInstalled
    );
    assert_eq!(
        slot.install(Config {
            host_devices: 0,
            ..Config::host(CAP)
        })
        .unwrap_err(),
        Error::Backend(BackendError::Unavailable("no device backends given".into())),
        "the new allocator is built (and fails) before the slot is looked at"
    );
    let now = slot.installed().unwrap();
    assert!(std::ptr::eq(now, first_ptr));
    assert_eq!(now.stats(), before);
    assert_eq!(
        slot.get().unwrap().stats(),
        before,
        "get returns the installed one"
    );
    now.free(x).unwrap();
    now.empty_cache().unwrap();
}

/// `GRAPHALLOC_CONF` read from the environment. The only test here that
/// touches the process environment (so no other test races with it); it
/// restores the variable.
#[test]
fn malformed_graphalloc_conf_from_the_environment() {
    let saved = std::env::var_os(ENV_VAR);
    let mut tried = 0;
    for (text, err) in config_rows() {
        std::env::set_var(ENV_VAR, text);
        assert_same_error(Config::from_env(), &err, text);
        // A slot configured from the environment fails the same way and
        // stays empty.
        let slot = AllocatorSlot::new();
        assert_same_error(slot.get().map(drop), &err, text);
        assert!(slot.installed().is_none());
        tried += 1;
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"backend:\xffhost");
        std::env::set_var(ENV_VAR, raw);
        assert_eq!(
            Config::from_env(),
            Err(config_error(
                ENV_VAR,
                "backend:\u{fffd}host",
                "not valid UTF-8"
            ))
        );
        tried += 1;
    }
    // Well-formed: the slot installs from it.
    std::env::set_var(ENV_VAR, "backend:host,host_capacity:64MiB,host_devices:2");
    let slot = AllocatorSlot::new();
    let a = slot.get().unwrap();
    assert_eq!(a.device_count(), 2);
    assert_eq!(
        a.allocate(65 * MIB, 1).unwrap_err(),
        Error::TooLarge {
            requested: 65 * MIB,
            limit: 64 * MIB
        }
    );
    // Unset: the defaults.
    std::env::remove_var(ENV_VAR);
    assert_eq!(Config::from_env(), Ok(Config::default()));
    match saved {
        Some(v) => std::env::set_var(ENV_VAR, v),
        None => std::env::remove_var(ENV_VAR),
    }
    println!("malformed GRAPHALLOC_CONF values tried through the environment: {tried}");
}

/// The fuzz target's body on a few hand-written inputs (the empty input,
/// all zeros, all ones, a counting sequence).
#[test]
fn fuzz_body_on_fixed_inputs() {
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 512],
        vec![0xff; 512],
        (0..=255u8).cycle().take(4096).collect(),
    ];
    for data in &inputs {
        oracle::run_ops(data);
    }
}
