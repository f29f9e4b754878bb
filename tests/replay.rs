//! Trace parsing and replay on the host backend, on the bundled trace: the
//! report must be consistent with the trace and with itself (not fast).

use graphalloc::replay::{replay, Event, Player, ReplayOptions, Trace, TraceError};
use graphalloc::{Allocator, BackendKind, Config};
use std::io::{BufRead, BufReader, Write};

/// The bundled trace, found from the working directory (the package root
/// under `cargo test`, the repository root on the GPU machine).
const BUNDLED: &str = "traces/resnet50_train.trace.gz";

fn host() -> Result<Allocator, graphalloc::Error> {
    Allocator::new(Config::host(16 << 30))
}

/// The event lines of the bundled trace, read independently of the parser.
fn bundled_event_lines() -> Vec<String> {
    let file = std::fs::File::open(BUNDLED).expect("bundled trace (run from the package root)");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|l| l.unwrap())
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn bundled_trace_parses_into_one_event_per_line() {
    let trace = Trace::from_path(BUNDLED).unwrap();
    let lines = bundled_event_lines();
    assert_eq!(trace.name(), "resnet50_train");
    assert_eq!(trace.len(), lines.len());
    let allocs = lines.iter().filter(|l| l.starts_with("a ")).count();
    assert_eq!(trace.allocations(), allocs);
    assert_eq!(trace.frees(), lines.len() - allocs);
    assert_eq!(trace.left_live(), trace.allocations() - trace.frees());
    // The first line's size and stream come through unchanged.
    let first: Vec<&str> = lines[0].split_whitespace().collect();
    match trace.events()[0] {
        Event::Alloc { slot, size, stream } => {
            assert_eq!(slot, 0);
            assert_eq!(size.to_string(), first[2]);
            assert_eq!(stream.to_string(), first[3]);
            assert_eq!(trace.id_of(0).unwrap().to_string(), first[1]);
        }
        other => panic!("first event should allocate, got {other:?}"),
    }
}

#[test]
fn replay_report_is_consistent() {
    let trace = Trace::from_path(BUNDLED).unwrap();
    let options = ReplayOptions {
        runs: 2,
        warm: true,
        series_points: 200,
        ..ReplayOptions::default()
    };
    let mut phases = Vec::new();
    let r = replay(&trace, &options, host, |p| phases.push(p)).unwrap();
    assert_eq!(phases.len(), options.passes());

    assert_eq!(r.trace, "resnet50_train");
    assert_eq!(r.backend, BackendKind::Host);
    assert_eq!(r.events, bundled_event_lines().len());
    assert_eq!(r.allocations + r.frees, r.events);
    assert_eq!(r.cold_runs_ns_per_event.len(), 2);
    assert!(r.ns_per_event > 0.0 && r.ns_per_event.is_finite());
    assert!(r.warm_ns_per_event.unwrap() > 0.0);
    assert_eq!(r.warm_runs_ns_per_event.len(), 2);

    assert!(r.peak_allocated > 0);
    assert!(r.peak_reserved >= r.peak_allocated);
    // Rounding to 512 B only adds: no allocator holds less than was asked.
    assert!(r.peak_allocated >= r.peak_requested);
    assert_eq!(r.ratio, r.peak_reserved as f64 / r.peak_allocated as f64);
    assert!(r.segments_created > 0);
    assert_eq!(r.oom_retries, 0, "16 GiB is plenty for this trace");
    // A warm pass mostly reuses the cache the cold pass left (it may still
    // need a segment or two: which of two equal free blocks best fit picks
    // depends on host addresses).
    assert!(r.warm_segments_created.unwrap() <= r.segments_created / 4);
    // Freeing every block leaves nothing allocated; emptying the cache, nothing reserved.
    assert_eq!(r.allocated_after_free, 0);
    assert_eq!(r.reserved_after_empty, 0);

    let series = r.series.as_ref().unwrap();
    assert!(series.points.len() <= 200 && series.points.len() >= 150);
    assert_eq!(series.points.first().unwrap().first_event, 0);
    assert_eq!(series.points.last().unwrap().end_event, r.events);
    for pair in series.points.windows(2) {
        assert_eq!(pair[0].end_event, pair[1].first_event);
    }
    for p in &series.points {
        assert!(p.allocated_min <= p.allocated_max);
        assert!(p.allocated_max <= p.reserved_max);
    }
    // The series pass is another replay of the same trace: the same peak of
    // allocated bytes, and reserved bytes as high within a few segments
    // (host addresses differ between passes, which can change which of two
    // equal blocks best fit picks).
    let (sa, sr) = (series.peak_allocated(), series.peak_reserved());
    assert!(sa.abs_diff(r.peak_allocated) as f64 <= 0.01 * r.peak_allocated as f64);
    assert!(sr.abs_diff(r.peak_reserved) as f64 <= 0.05 * r.peak_reserved as f64);
}

/// The default configuration (virtual-memory segments) on the bundled
/// training trace: the warm passes make no mapping call (the cache the cold
/// pass left holds every block of the next passes), and peak reserved stays
/// within PyTorch `expandable_segments:True`'s 1.0189 on this trace.
#[test]
fn the_bundled_training_trace_maps_only_in_its_cold_pass() {
    let trace = Trace::from_path(BUNDLED).unwrap();
    // Two cold passes and two warm ones, no series.
    let options = ReplayOptions {
        runs: 2,
        ..ReplayOptions::default()
    };
    let r = replay(&trace, &options, host, |_| {}).unwrap();
    assert!(r.maps.maps > 0, "the cold pass maps: {:?}", r.maps);
    let warm = r.warm_maps.expect("warm passes ran");
    assert_eq!((warm.maps, warm.unmaps), (0, 0), "warm passes: {warm:?}");
    assert!(r.ratio <= 1.0189, "peak reserved / allocated {}", r.ratio);
}

#[test]
fn freeing_everything_leaves_nothing_allocated() {
    let trace = Trace::parse_str("t", "# t\na 1 1000 0\na 2 3000000 0\nf 1\na 3 512 0\n").unwrap();
    let alloc = host().unwrap();
    let mut player = Player::new(&trace);
    player.play(&alloc).unwrap();
    assert_eq!(player.live_blocks(), 2);
    assert_eq!(alloc.live_pointers(), 2);
    assert_eq!(alloc.stats().total.allocated_bytes, 3000320 + 512);
    assert_eq!(player.free_all(&alloc).unwrap(), 2);
    assert_eq!(alloc.stats().total.allocated_bytes, 0);
    assert_eq!(alloc.live_pointers(), 0);
    player.teardown(&alloc).unwrap();
    assert_eq!(alloc.stats().total.reserved_bytes, 0);
}

#[test]
fn gzip_and_plain_text_parse_alike() {
    let text = "# demo\na 7 4096 0\na 9 100 3\n\nf 7\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let plain = Trace::parse_str("demo", text).unwrap();
    let zipped = Trace::from_reader("demo", &gz[..]).unwrap();
    assert_eq!(plain.events(), zipped.events());
    assert_eq!(
        plain.events(),
        &[
            Event::Alloc {
                slot: 0,
                size: 4096,
                stream: 0
            },
            Event::Alloc {
                slot: 1,
                size: 100,
                stream: 3
            },
            Event::Free { slot: 0 },
        ]
    );
    assert_eq!(plain.peak_requested(), 4196);
    assert_eq!(plain.left_live(), 1);
}

/// Parses `text` and returns the error, which must name `line` and quote it.
fn error_at(text: &str, line: usize) -> TraceError {
    let err = Trace::parse_str("bad", text).unwrap_err();
    assert_eq!(err.line(), Some(line), "{err}");
    let quoted = text.lines().nth(line - 1).unwrap();
    let message = err.to_string();
    assert!(message.starts_with(&format!("line {line}: ")), "{message}");
    assert!(
        message.contains(quoted),
        "{message} should quote {quoted:?}"
    );
    err
}

#[test]
fn malformed_lines_name_their_line_number_and_text() {
    let good = "# header\na 1 512 0\na 2 1024 0\n";
    for bad in [
        "x 3 512 0",
        "a 3 512",
        "a 3 512 0 9",
        "a three 512 0",
        "a 3 -512 0",
        "a 3 0 0",
        "f",
        "f 1 2",
        "f one",
    ] {
        let text = format!("{good}{bad}\nf 1\n");
        let err = error_at(&text, 4);
        assert!(matches!(err, TraceError::Malformed { .. }), "{bad}: {err}");
    }
}

#[test]
fn unknown_duplicate_and_double_freed_ids_are_errors() {
    let err = error_at("# h\na 1 512 0\nf 1\nf 5\n", 4);
    assert!(matches!(err, TraceError::UnknownId { id: 5, .. }), "{err}");

    let err = error_at("# h\na 1 512 0\na 2 512 0\na 1 512 0\n", 4);
    assert!(
        matches!(
            err,
            TraceError::DuplicateId {
                id: 1,
                first_line: 2,
                ..
            }
        ),
        "{err}"
    );
    // An ID is allocated once in a trace, even after it is freed.
    let err = error_at("# h\na 1 512 0\nf 1\na 1 512 0\n", 4);
    assert!(matches!(err, TraceError::DuplicateId { .. }), "{err}");

    let err = error_at("# h\na 1 512 0\nf 1\n\nf 1\n", 5);
    assert!(
        matches!(
            err,
            TraceError::DoubleFree {
                id: 1,
                freed_line: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn line_numbers_count_lines_of_the_decompressed_file() {
    let text = "# h\n# another comment\na 1 512 0\n\nf 1\nbogus\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let err = Trace::from_reader("bad", &gz[..]).unwrap_err();
    assert_eq!(err.line(), Some(6), "{err}");
}

#[test]
fn live_bytes_past_usize_max_are_a_parse_error_naming_the_line() {
    // Each size alone is valid; together they do not fit in memory, and the
    // frees must not take back what was never counted (this used to panic
    // in debug builds and wrap around in release builds).
    let max = usize::MAX;
    let text = format!("# h\na 1 {max} 0\na 2 {max} 0\nf 1\nf 2\n");
    let err = error_at(&text, 3);
    assert!(matches!(err, TraceError::LiveBytesOverflow { .. }), "{err}");
    // Up to the limit is fine.
    let text = format!("# h\na 1 {} 0\na 2 1 0\nf 1\nf 2\n", max - 1);
    assert_eq!(
        Trace::parse_str("edge", &text).unwrap().peak_requested(),
        max
    );
}

#[test]
fn a_written_trace_parses_back_to_the_same_events() {
    let trace = Trace::from_path(BUNDLED).unwrap();
    let mut text = Vec::new();
    trace.write_to(&mut text).unwrap();
    let back = Trace::from_reader("back", &text[..]).unwrap();
    assert_eq!(back.events(), trace.events());
    assert_eq!(back.peak_requested(), trace.peak_requested());
    for slot in [0, trace.allocations() as u32 - 1] {
        assert_eq!(back.id_of(slot), trace.id_of(slot));
    }
}

#[test]
fn an_empty_trace_is_an_error() {
    let err = Trace::parse_str("empty", "# nothing\n").unwrap_err();
    assert!(matches!(err, TraceError::Empty { .. }), "{err}");
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let err = Trace::from_path("traces/no_such.trace.gz").unwrap_err();
    assert!(matches!(err, TraceError::Io { .. }), "{err}");
    assert!(err.to_string().contains("no_such.trace.gz"), "{err}");
}

/// Peak reserved bytes of one cold pass of `text` on the host backend.
fn peak_reserved_of(text: &str) -> usize {
    let trace = Trace::parse_str("streams", text).unwrap();
    let options = ReplayOptions {
        runs: 2,
        ..ReplayOptions::default()
    };
    replay(&trace, &options, host, |_| {})
        .unwrap()
        .peak_reserved
}

#[test]
fn a_trace_on_recorded_side_streams_replays_with_its_blocks_kept_per_stream() {
    // Tags as PyTorch records them (cudaStream_t values): each gets a stream
    // of its own, and blocks of two streams never share a segment.
    let side = 94_366_018_711_408u64;
    let one = "a 0 4096 0\na 1 4096 0\nf 0\nf 1\n";
    let two = format!(
        "a 0 4096 0\na 1 4096 {side}\nf 0\nf 1\na 2 512 {}\nf 2\n",
        side + 96
    );
    assert!(peak_reserved_of(&two) > peak_reserved_of(one));
    // The player makes the streams on each allocator it meets.
    let trace = Trace::parse_str("two", &two).unwrap();
    let mut player = Player::new(&trace);
    for _ in 0..2 {
        let alloc = host().unwrap();
        player.play(&alloc).unwrap();
        player.free_all(&alloc).unwrap();
        assert_eq!(alloc.stats().total.allocated_bytes, 0);
    }
}

#[test]
fn created_streams_are_distinct_accepted_and_per_device() {
    let alloc = host().unwrap();
    let (a, b) = (
        alloc.create_stream(0).unwrap(),
        alloc.create_stream(0).unwrap(),
    );
    assert_ne!(a, b);
    assert!(a > 2 && b > 2, "not a built-in handle: {a}, {b}");
    assert!(alloc.is_stream_registered(0, a) && alloc.is_stream_registered(0, b));
    assert_eq!(
        alloc.create_stream(3),
        Err(graphalloc::Error::InvalidDevice {
            device: 3,
            count: 1
        })
    );
}
