//! Fuzz target `ops`: decodes the input into a sequence of allocator
//! operations (allocate size/alignment, free, bad frees, enter and leave
//! graph mode, reset a pool, empty the cache, inject a reservation fault,
//! replace a pool, odd requests) and checks every step with the oracle of
//! `tests/oracle/mod.rs` (included as is). The body is `oracle::run_ops`, a
//! plain function, which `tests/stress.rs` also drives on stable with seeded
//! random bytes.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run ops` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    oracle::run_ops(data);
});
