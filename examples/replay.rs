//! Replays allocation traces through graphalloc and reports speed and
//! fragmentation per trace.
//!
//! ```text
//! cargo run --release --example replay -- [OPTIONS] [TRACE...]
//!
//!   TRACE        trace files (.trace.gz or plain text); default:
//!                traces/resnet50_train.trace.gz
//!   --runs N     cold passes per trace, each from an empty cache, and as
//!                many warm passes on the cache they leave (default 5)
//!   --no-warm    skip the warm passes
//!   --json       one JSON object per trace per line on stdout
//!   --svg FILE   draw allocated and reserved bytes over each trace into FILE
//!   --snapshot FILE  write a memory snapshot at the peak of reserved bytes
//!                (PyTorch's pickle format; FILE.html, FILE.svg: graphalloc's view)
//!   --record FILE    record the replay's own history as a .trace.gz
//!   --compare CONF...  replay under each GRAPHALLOC_CONF-style setting
//!                (on top of GRAPHALLOC_CONF) and print one table
//! ```
//!
//! With several traces, `--snapshot` and `--record` write one file per
//! trace, the trace's name put before the file's extension.
//!
//! The backend is what `GRAPHALLOC_CONF` says (default `auto`: CUDA when a
//! driver loads, else host memory); the first line of output names it (on
//! stderr with `--json`, where every object carries a `backend` key too).

#[path = "replay/observe.rs"]
mod observe;

use graphalloc::replay::{replay, ReplayOptions, ReplayReport, Series, Trace};
use graphalloc::{Allocator, BackendKind, Config};
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// The bundled trace used when no trace is named.
const DEFAULT_TRACE: &str = "traces/resnet50_train.trace.gz";
/// Traces at least this long get a progress bar.
const LONG_TRACE: usize = 50_000;
/// Points of the series recorded for `--svg`.
const SERIES_POINTS: usize = 1200;

/// What we know of the shared traces: our fragmentation target, and what
/// PyTorch's default caching allocator did on an H100 (ratio, cold and warm
/// ns per event), measured on the H100 the traces were recorded on
/// (2026-11-24).
struct Anchor {
    name: &'static str,
    target_ratio: f64,
    pytorch_ratio: f64,
    pytorch_ns: f64,
    pytorch_warm_ns: f64,
}

const ANCHORS: &[Anchor] = &[
    Anchor {
        name: "gpt2_train",
        target_ratio: 1.047,
        pytorch_ratio: 1.047,
        pytorch_ns: 1555.0,
        pytorch_warm_ns: 852.0,
    },
    Anchor {
        name: "gpt2_generate",
        target_ratio: 1.05,
        pytorch_ratio: 1.230,
        pytorch_ns: 512.0,
        pytorch_warm_ns: 503.0,
    },
    Anchor {
        name: "resnet50_train",
        target_ratio: 1.019,
        pytorch_ratio: 1.185,
        pytorch_ns: 1704.0,
        pytorch_warm_ns: 666.0,
    },
];

fn anchor(trace: &str) -> Option<&'static Anchor> {
    ANCHORS.iter().find(|a| a.name == trace)
}

struct Args {
    traces: Vec<PathBuf>,
    runs: usize,
    warm: bool,
    json: bool,
    svg: Option<PathBuf>,
    snapshot: Option<PathBuf>,
    record: Option<PathBuf>,
    compare: Vec<String>,
}

const USAGE: &str = "usage: replay [--runs N] [--no-warm] [--json] [--svg FILE] [--snapshot FILE] \
                     [--record FILE] [--compare CONF CONF ... --] [TRACE...]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        traces: Vec::new(),
        runs: 5,
        warm: true,
        json: false,
        svg: None,
        snapshot: None,
        record: None,
        compare: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--no-warm" => args.warm = false,
            "--runs" => {
                let n = it.next().ok_or("--runs needs a number")?;
                args.runs = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--runs {n:?}: expected a positive whole number"))?;
            }
            "--svg" => args.svg = Some(it.next().ok_or("--svg needs a file name")?.into()),
            "--snapshot" => {
                args.snapshot = Some(it.next().ok_or("--snapshot needs a file name")?.into())
            }
            "--record" => args.record = Some(it.next().ok_or("--record needs a file name")?.into()),
            "--compare" => {
                // Settings up to `--` or the first argument that is a file.
                for conf in it.by_ref() {
                    if conf == "--" {
                        break;
                    }
                    if std::path::Path::new(&conf).is_file() {
                        args.traces.push(conf.into());
                        break;
                    }
                    args.compare.push(conf);
                }
                if args.compare.is_empty() {
                    return Err("--compare needs at least one setting".into());
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}\n{USAGE}")),
            _ => args.traces.push(arg.into()),
        }
    }
    if args.traces.is_empty() {
        let local = PathBuf::from(DEFAULT_TRACE);
        args.traces.push(if local.exists() {
            local
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_TRACE)
        });
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("replay: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("replay: {e}");
            return ExitCode::from(2);
        }
    };
    let probe = match Allocator::new(config.clone()) {
        Ok(alloc) => alloc,
        Err(e) => {
            eprintln!("replay: cannot build the allocator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let banner = backend_banner(&probe);
    if args.json {
        eprintln!("{banner}");
    } else {
        println!("{banner}");
    }

    let options = ReplayOptions {
        runs: args.runs,
        warm: args.warm,
        series_points: if args.svg.is_some() { SERIES_POINTS } else { 0 },
        ..ReplayOptions::default()
    };
    let mut reports = Vec::new();
    let mut failed = false;
    if !args.compare.is_empty() {
        for path in &args.traces {
            if let Err(e) = observe::compare(path, &options, &config, &args.compare, args.json) {
                eprintln!("replay: {}: {e}", path.display());
                failed = true;
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    for path in &args.traces {
        if args.snapshot.is_some() || args.record.is_some() {
            let many = args.traces.len() > 1;
            let out = observe::Outputs {
                snapshot: args
                    .snapshot
                    .as_deref()
                    .map(|f| observe::per_trace(f, path, many)),
                record: args
                    .record
                    .as_deref()
                    .map(|f| observe::per_trace(f, path, many)),
            };
            if let Err(e) = observe::observe(path, &config, &out) {
                eprintln!("replay: {}: {e}", path.display());
                failed = true;
            }
        }
        match run_one(path, &options, &config) {
            Ok(report) => {
                if args.json {
                    println!("{}", to_json(&report, args.runs));
                } else {
                    print_human(&report, args.runs);
                }
                reports.push(report);
            }
            Err(e) => {
                eprintln!("replay: {}: {e}", path.display());
                failed = true;
            }
        }
    }
    if let Some(svg) = &args.svg {
        if !reports.is_empty() {
            match std::fs::write(svg, draw_svg(&reports)) {
                Ok(()) => eprintln!("replay: wrote {}", svg.display()),
                Err(e) => {
                    eprintln!("replay: cannot write {}: {e}", svg.display());
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn backend_banner(alloc: &Allocator) -> String {
    let conf = std::env::var(graphalloc::config::ENV_VAR)
        .map(|v| format!("GRAPHALLOC_CONF={v:?}"))
        .unwrap_or_else(|_| "GRAPHALLOC_CONF unset".into());
    let total = alloc
        .backend(0)
        .ok()
        .and_then(|b| b.mem_info().ok())
        .map(|m| m.total);
    let what = match alloc.backend_kind() {
        BackendKind::Cuda => "cuda: device memory through the CUDA driver",
        BackendKind::Host => "host: host memory standing in for a device (no CUDA timings)",
    };
    let size = total.map_or(String::new(), |t| format!(", device 0 has {}", gib(t)));
    format!(
        "graphalloc replay, backend {what} ({} device(s){size}; {conf})",
        alloc.device_count()
    )
}

fn run_one(
    path: &std::path::Path,
    options: &ReplayOptions,
    config: &Config,
) -> Result<ReplayReport, Box<dyn std::error::Error>> {
    let trace = Trace::from_path(path)?;
    let bar = if trace.len() >= LONG_TRACE {
        let bar = ProgressBar::new(options.passes() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} passes {msg}")?
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} ({} events)", trace.name(), trace.len()));
        Some(bar)
    } else {
        None
    };
    let report = replay(
        &trace,
        options,
        || Allocator::new(config.clone()),
        |phase| {
            if let Some(bar) = &bar {
                bar.set_message(format!("{phase} done"));
                bar.inc(1);
            }
        },
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report?)
}

fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    })
}

fn print_human(r: &ReplayReport, runs: usize) {
    let anchor = anchor(&r.trace);
    // PyTorch's timings are CUDA timings: compare like with like only.
    let cuda_anchor = anchor.filter(|_| r.backend == BackendKind::Cuda);
    println!(
        "{}: {} events ({} allocations, {} frees, {} left live), peak requested {}",
        r.trace,
        thousands(r.events),
        thousands(r.allocations),
        thousands(r.frees),
        thousands(r.left_live),
        gb(r.peak_requested),
    );
    let (lo, hi) = range(&r.cold_runs_ns_per_event);
    let vs = |ours: f64, theirs: f64| {
        format!(
            "PyTorch default on H100: {theirs:.0}; ours/theirs {:.2}",
            ours / theirs
        )
    };
    println!(
        "  cold  {:>9.1} ns/event  (median of {runs}, range {lo:.1} .. {hi:.1}){}",
        r.ns_per_event,
        cuda_anchor.map_or(String::new(), |a| format!(
            "  [{}]",
            vs(r.ns_per_event, a.pytorch_ns)
        )),
    );
    if let (Some(warm), Some(created)) = (r.warm_ns_per_event, r.warm_segments_created) {
        let (lo, hi) = range(&r.warm_runs_ns_per_event);
        println!(
            "  warm  {warm:>9.1} ns/event  (median of {runs}, range {lo:.1} .. {hi:.1}; {created} new segments){}",
            cuda_anchor.map_or(String::new(), |a| format!(
                "  [{}]",
                vs(warm, a.pytorch_warm_ns)
            )),
        );
    }
    let verdict = anchor.map_or(String::new(), |a| {
        format!(
            "  [target <= {:.3}: {}; PyTorch default {:.3}]",
            a.target_ratio,
            if r.ratio <= a.target_ratio {
                "met"
            } else {
                "MISSED"
            },
            a.pytorch_ratio
        )
    });
    println!(
        "  peak allocated {}, peak reserved {}, ratio {:.4}{verdict}",
        gb(r.peak_allocated),
        gb(r.peak_reserved),
        r.ratio
    );
    println!(
        "  segments created {}, OOM retries {}, backend {}",
        r.segments_created, r.oom_retries, r.backend
    );
    let m = &r.maps;
    println!(
        "  mapping calls, cold pass: {} maps ({:.1} us), {} unmaps ({:.1} us){}",
        m.maps,
        m.map_ns as f64 / 1e3,
        m.unmaps,
        m.unmap_ns as f64 / 1e3,
        r.warm_maps.map_or(String::new(), |w| format!(
            "; warm passes: {} maps, {} unmaps",
            w.maps, w.unmaps
        )),
    );
    if r.allocated_after_free != 0 || r.reserved_after_empty != 0 {
        println!(
            "  WARNING: after freeing everything {} bytes stayed allocated and {} reserved",
            r.allocated_after_free, r.reserved_after_empty
        );
    }
}

/// One line of JSON; written by hand (no serde in this crate).
fn to_json(r: &ReplayReport, runs: usize) -> String {
    let mut s = String::from("{");
    let mut field = |key: &str, value: String| {
        if s.len() > 1 {
            s.push(',');
        }
        let _ = write!(s, "{}:{value}", json_string(key));
    };
    field("trace", json_string(&r.trace));
    field("events", r.events.to_string());
    field("ns_per_event", json_f64(r.ns_per_event));
    field(
        "warm_ns_per_event",
        r.warm_ns_per_event.map_or("null".into(), json_f64),
    );
    field("peak_allocated", r.peak_allocated.to_string());
    field("peak_reserved", r.peak_reserved.to_string());
    field("ratio", json_f64(r.ratio));
    field("backend", json_string(&r.backend.to_string()));
    field("runs", runs.to_string());
    field(
        "cold_runs_ns_per_event",
        format!(
            "[{}]",
            r.cold_runs_ns_per_event
                .iter()
                .map(|&x| json_f64(x))
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    field(
        "warm_runs_ns_per_event",
        format!(
            "[{}]",
            r.warm_runs_ns_per_event
                .iter()
                .map(|&x| json_f64(x))
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    field("allocations", r.allocations.to_string());
    field("frees", r.frees.to_string());
    field("left_live", r.left_live.to_string());
    field("peak_requested", r.peak_requested.to_string());
    field("segments_created", r.segments_created.to_string());
    field(
        "warm_segments_created",
        r.warm_segments_created
            .map_or("null".into(), |n| n.to_string()),
    );
    field("oom_retries", r.oom_retries.to_string());
    field("maps", r.maps.maps.to_string());
    field("unmaps", r.maps.unmaps.to_string());
    field("map_ns", r.maps.map_ns.to_string());
    field("unmap_ns", r.maps.unmap_ns.to_string());
    let warm = |f: fn(&graphalloc::MappingStats) -> u64| {
        r.warm_maps
            .as_ref()
            .map_or("null".into(), |m| f(m).to_string())
    };
    field("warm_maps", warm(|m| m.maps));
    field("warm_unmaps", warm(|m| m.unmaps));
    field("warm_map_ns", warm(|m| m.map_ns));
    field("warm_unmap_ns", warm(|m| m.unmap_ns));
    // Waits for a stream before unmapping, and fences recorded instead.
    field("waits", r.maps.waits.to_string());
    field("wait_ns", r.maps.wait_ns.to_string());
    field("fences", r.maps.fences.to_string());
    field("deferred_unmaps", r.maps.deferred_unmaps.to_string());
    field("warm_waits", warm(|m| m.waits));
    field("warm_wait_ns", warm(|m| m.wait_ns));
    if let Some(a) = anchor(&r.trace) {
        field("target_ratio", json_f64(a.target_ratio));
        field("pytorch_ratio", json_f64(a.pytorch_ratio));
    }
    s.push('}');
    s
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_f64(x: f64) -> String {
    if x.is_finite() {
        let rounded = (x * 10_000.0).round() / 10_000.0;
        format!("{rounded}")
    } else {
        "null".into()
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn gb(bytes: usize) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.3} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

fn gib(bytes: usize) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

// ---- SVG -------------------------------------------------------------------

const WIDTH: f64 = 960.0;
const PANEL: f64 = 360.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 58.0;
const BOTTOM: f64 = 74.0;
const RESERVED_COLOUR: &str = "#d62728";
const ALLOCATED_COLOUR: &str = "#1f77b4";
const TARGET_COLOUR: &str = "#2ca02c";

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `ticks`
/// ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let m = raw / power;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

fn fmt_tick(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{value:.decimals$}")
}

fn draw_svg(reports: &[ReplayReport]) -> String {
    let height = PANEL * reports.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>"#
    );
    for (i, r) in reports.iter().enumerate() {
        if let Some(series) = &r.series {
            draw_panel(&mut svg, r, series, i as f64 * PANEL);
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, r: &ReplayReport, series: &Series, y0: f64) {
    let (px0, px1) = (LEFT, WIDTH - RIGHT);
    let (py0, py1) = (y0 + TOP, y0 + PANEL - BOTTOM);
    let anchor = anchor(&r.trace);
    let top_bytes = [
        series.peak_reserved(),
        r.peak_reserved,
        anchor.map_or(0, |a| (r.peak_allocated as f64 * a.target_ratio) as usize),
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
    .max(1) as f64;
    let (unit, scale) = if top_bytes >= 1e9 {
        ("GB", 1e9)
    } else {
        ("MB", 1e6)
    };
    let ystep = nice_step(top_bytes * 1.04 / scale, 5.0);
    let ymax = (top_bytes * 1.04 / scale / ystep).ceil() * ystep;
    let xmax = r.events.max(1) as f64;
    let xs = |event: usize| px0 + (px1 - px0) * event as f64 / xmax;
    let ys = |bytes: usize| py1 - (py1 - py0) * (bytes as f64 / scale) / ymax;

    // Title.
    let _ = writeln!(
        svg,
        r#"<text x="{px0}" y="{}" font-size="15" font-weight="bold">{} — {} events, {} backend</text>"#,
        y0 + 22.0,
        xml(&r.trace),
        thousands(r.events),
        r.backend
    );
    let _ = writeln!(
        svg,
        r##"<text x="{px0}" y="{}" fill="#333">peak reserved {} / peak allocated {} = ratio {:.4}{}</text>"##,
        y0 + 40.0,
        gb(r.peak_reserved),
        gb(r.peak_allocated),
        r.ratio,
        anchor.map_or(String::new(), |a| format!(
            " (target ≤ {:.3}; PyTorch default {:.3})",
            a.target_ratio, a.pytorch_ratio
        ))
    );

    // Grid and y axis.
    let mut v = 0.0;
    while v <= ymax + ystep * 1e-9 {
        let y = py1 - (py1 - py0) * v / ymax;
        let _ = writeln!(
            svg,
            r##"<line x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            px0 - 6.0,
            y + 4.0,
            fmt_tick(v, ystep)
        );
        v += ystep;
    }
    let xstep = nice_step(xmax, 8.0);
    let mut e = 0.0;
    while e <= xmax + xstep * 1e-9 {
        let x = px0 + (px1 - px0) * e / xmax;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{py1}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            py1 + 5.0,
            py1 + 18.0,
            thousands(e as usize)
        );
        e += xstep;
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">event (allocations and frees, in trace order)</text>"##,
        (px0 + px1) / 2.0,
        py1 + 36.0
    );
    let _ = writeln!(
        svg,
        r##"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{unit}</text>"##,
        px0 - 52.0,
        (py0 + py1) / 2.0
    );

    // Allocated: a band from the least to the most allocated per stretch.
    let mut band = String::new();
    for p in &series.points {
        let _ = write!(
            band,
            "{:.1},{:.1} {:.1},{:.1} ",
            xs(p.first_event),
            ys(p.allocated_max),
            xs(p.end_event),
            ys(p.allocated_max)
        );
    }
    for p in series.points.iter().rev() {
        let _ = write!(
            band,
            "{:.1},{:.1} {:.1},{:.1} ",
            xs(p.end_event),
            ys(p.allocated_min),
            xs(p.first_event),
            ys(p.allocated_min)
        );
    }
    let _ = writeln!(
        svg,
        r#"<polygon points="{}" fill="{ALLOCATED_COLOUR}" fill-opacity="0.35" stroke="{ALLOCATED_COLOUR}" stroke-width="0.8"/>"#,
        band.trim_end()
    );
    // Reserved: a step line.
    let mut line = String::new();
    for p in &series.points {
        let _ = write!(
            line,
            "{:.1},{:.1} {:.1},{:.1} ",
            xs(p.first_event),
            ys(p.reserved_max),
            xs(p.end_event),
            ys(p.reserved_max)
        );
    }
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{RESERVED_COLOUR}" stroke-width="1.8"/>"#,
        line.trim_end()
    );
    // The target: peak allocated times the target ratio.
    if let Some(a) = anchor {
        let y = ys((r.peak_allocated as f64 * a.target_ratio) as usize);
        let _ = writeln!(
            svg,
            r#"<line x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}" stroke="{TARGET_COLOUR}" stroke-width="1.2" stroke-dasharray="6,4"/>"#
        );
    }
    // Axes box.
    let _ = writeln!(
        svg,
        r##"<rect x="{px0}" y="{py0}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        px1 - px0,
        py1 - py0
    );

    // Legend: one row under the x-axis label.
    let ly = py1 + 58.0;
    let mut lx = px0;
    let _ = writeln!(
        svg,
        r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{RESERVED_COLOUR}" stroke-width="2"/><text x="{}" y="{ly}">reserved (segments held)</text>"#,
        ly - 4.0,
        lx + 24.0,
        ly - 4.0,
        lx + 30.0,
    );
    lx += 210.0;
    let _ = writeln!(
        svg,
        r#"<rect x="{lx}" y="{}" width="24" height="10" fill="{ALLOCATED_COLOUR}" fill-opacity="0.35" stroke="{ALLOCATED_COLOUR}"/><text x="{}" y="{ly}">allocated (live blocks), min–max per {} events</text>"#,
        ly - 9.0,
        lx + 30.0,
        series.bucket
    );
    lx += 340.0;
    if let Some(a) = anchor {
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{TARGET_COLOUR}" stroke-width="1.2" stroke-dasharray="6,4"/><text x="{}" y="{ly}">target: peak allocated × {:.3}</text>"#,
            ly - 4.0,
            lx + 24.0,
            ly - 4.0,
            lx + 30.0,
            a.target_ratio
        );
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
