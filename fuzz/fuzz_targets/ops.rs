//! Fuzz target `ops`: the first byte picks one of five bodies, which get
//! the rest of the input:
//!
//! - `oracle::run_ops` (`tests/oracle/mod.rs`, included as is): allocator
//!   operations (allocate size/alignment, free, bad frees, enter and leave
//!   graph mode, reset a pool, empty the cache, inject a reservation fault,
//!   replace a pool, odd requests) with expandable segments and shards,
//!   each step checked by the oracle; `tests/stress.rs` also drives it on
//!   stable with seeded random bytes.
//! - `api::run_streams` (`api.rs`): streams, `record_stream`, simulated
//!   captures and capture pools, graph mode; overlap and stream-reuse checks.
//! - `api::run_c_abi` (`api.rs`): every C function on the process-wide
//!   allocator (host backend, two devices, expandable segments) with absurd
//!   sizes, devices, streams, pointers and pool ids.
//! - `extras::run_extras` (`extras.rs`): recordings, planned pools and
//!   captures following a plan, history and snapshots round-tripped through
//!   the pickle reader, out-of-memory observers, mapping statistics; then
//!   the input's rest as a pickle.
//! - `extras::run_c_extras`: the C functions of recordings and planned
//!   pools, history, snapshots and mapping statistics, with absurd ids,
//!   devices, streams, plan numbers and paths.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run ops` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

#[path = "api.rs"]
mod api;

#[path = "extras.rs"]
mod extras;

/// AddressSanitizer's defaults for this binary (`ASAN_OPTIONS` overrides
/// them): a 16 MiB quarantine instead of 256 MiB. The bodies reserve and
/// release host segments of up to tens of MiB, and with the default every
/// freed segment stayed poisoned until 256 MiB had passed, so each new one
/// came from fresh pages: page faults took most of the time (about 1.7x
/// the executions per second without it, measured in `docs/reliability.md`).
/// 16 MiB still holds the most recently freed segments and the small objects.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"quarantine_size_mb=16".as_ptr()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => drop(oracle::run_ops(rest)),
        1 => api::run_streams(rest),
        2 => api::run_c_abi(rest),
        3 => extras::run_extras(rest),
        _ => extras::run_c_extras(rest),
    }
});
