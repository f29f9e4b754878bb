//! Trace replay: parse allocation traces and replay them through an allocator.
//!
//! A trace is a text file, usually gzip'd, recorded from a real workload
//! (see `traces/`). Lines starting with `#` are comments and blank lines are
//! skipped; every other line is one event in program order:
//!
//! ```text
//! a ID SIZE STREAM    allocate SIZE bytes on STREAM as block ID
//! f ID                free block ID
//! ```
//!
//! STREAM is a tag: 0, 1 and 2 are the allocator's built-in streams, and
//! [`Player`] gives every other tag a stream of its own
//! ([`Allocator::create_stream`](crate::Allocator::create_stream)).
//!
//! [`Trace`] parses the whole file first into a compact [`Vec`] of
//! [`Event`]s, with each block ID mapped to a dense slot, so that a replay
//! spends its time in the allocator, not in parsing or hashing;
//! [`Trace::write_to`] writes one back as text. [`Player`]
//! runs the events through an [`Allocator`](crate::Allocator) once; [`replay`] does the full
//! measurement: cold passes (each on a fresh allocator, so each starts from
//! an empty cache), warm passes (again on a cache that already holds the
//! segments of a pass), and optionally the allocated and reserved bytes over
//! the trace ([`Series`]), in an untimed pass of its own.
//!
//! ```
//! use graphalloc::replay::{replay, ReplayOptions, Trace};
//! use graphalloc::{Allocator, Config};
//!
//! let trace = Trace::parse_str("demo", "# demo\na 0 4096 0\na 1 512 0\nf 0\nf 1\n")?;
//! let options = ReplayOptions { runs: 3, ..ReplayOptions::default() };
//! let report = replay(&trace, &options, || Allocator::new(Config::host(1 << 30)), |_| {})?;
//! assert_eq!(report.events, 4);
//! assert_eq!(report.peak_allocated, 4096 + 512);
//! assert!(report.peak_reserved >= report.peak_allocated);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod player;
mod report;
mod trace;

pub use player::{Player, ReplayError, Series, SeriesPoint};
pub use report::{median, replay, Phase, ReplayOptions, ReplayReport};
pub use trace::{trace_name, Event, Trace, TraceError};
