//! `--snapshot`, `--record` and `--compare` of the replay example.

use graphalloc::history::{to_trace_text, MAX_HISTORY};
use graphalloc::replay::{replay, Player, ReplayOptions, Trace};
use graphalloc::{Allocator, Config};
use std::error::Error;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the observing pass writes.
pub struct Outputs {
    /// The snapshot at the peak of reserved bytes (pickle; `.html` and
    /// `.svg` beside).
    pub snapshot: Option<PathBuf>,
    /// The replay's own history as a trace.
    pub record: Option<PathBuf>,
}

/// `file` itself for one trace; with several, `file` with the trace's name
/// put before its extension (`S.pickle` → `S.gpt2_train.pickle`).
pub fn per_trace(file: &Path, trace: &Path, many: bool) -> PathBuf {
    if !many {
        return file.to_owned();
    }
    let name = graphalloc::replay::trace_name(trace);
    let text = file.to_string_lossy();
    let (stem, ext) = match text.find('.') {
        Some(dot) if dot > 0 => text.split_at(dot),
        _ => (text.as_ref(), ""),
    };
    PathBuf::from(format!("{stem}.{name}{ext}"))
}

/// Replays `path` once with the history recording; writes the history as a
/// trace (checked: it parses back to as many events as the trace), then
/// replays again and snapshots at the event after which reserved bytes
/// first reached their peak.
pub fn observe(path: &Path, config: &Config, out: &Outputs) -> Result<(), Box<dyn Error>> {
    let trace = Trace::from_path(path)?;
    // Each event makes at most an allocation or free request, a completion,
    // and a few segment or mapping events.
    let capacity = trace
        .len()
        .saturating_mul(4)
        .saturating_add(10_000)
        .min(MAX_HISTORY);
    let recorded = |snapshot_at: Option<usize>| -> Result<_, Box<dyn Error>> {
        let alloc = Allocator::new(config.clone())?;
        alloc.record_history(capacity)?;
        let mut player = Player::new(&trace);
        let (mut peak, mut at, mut snap) = (0, 0, None);
        player.play_observed(&alloc, |i| {
            let reserved = alloc.stats().total.reserved_bytes;
            if reserved > peak {
                (peak, at) = (reserved, i);
            }
            if snapshot_at == Some(i) {
                snap = Some(alloc.snapshot());
            }
        })?;
        let history = alloc.history();
        player.teardown(&alloc)?;
        Ok((history, peak, at, snap))
    };
    let (history, peak, at, _) = recorded(None)?;
    if let Some(file) = &out.record {
        let text = to_trace_text(trace.name(), &history);
        let again = Trace::parse_str(trace.name(), &text)?;
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(file)?,
            flate2::Compression::default(),
        );
        gz.write_all(text.as_bytes())?;
        gz.finish()?;
        eprintln!(
            "replay: recorded {} history events of {}: {} ({} trace events; the trace has {}{})",
            history.len(),
            trace.name(),
            file.display(),
            again.len(),
            trace.len(),
            if again.len() == trace.len() {
                ", same"
            } else {
                ", DIFFERENT"
            }
        );
    }
    if let Some(file) = &out.snapshot {
        let (_, _, _, snap) = recorded(Some(at))?;
        let snap = snap.ok_or("no snapshot taken")?;
        snap.write_pickle(file)?;
        let html = PathBuf::from(format!("{}.html", file.display()));
        std::fs::write(&html, snap.to_html())?;
        let svg = PathBuf::from(format!("{}.svg", file.display()));
        std::fs::write(&svg, snap.to_svg())?;
        eprintln!(
            "replay: snapshot of {} after event {} (peak reserved {}): {} segments, {} history events: {}, {} and {}",
            trace.name(),
            at + 1,
            super::gb(peak),
            snap.segments.len(),
            snap.history.len(),
            file.display(),
            html.display(),
            svg.display()
        );
    }
    Ok(())
}

/// `config` with the `key:value,...` pairs of `setting` applied on top.
fn with_setting(config: &Config, setting: &str) -> Result<Config, graphalloc::Error> {
    let mut config = config.clone();
    Config::parse(setting)?; // rejects unknown keys, bad values and repeats
    for pair in setting.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((k, v)) = pair.split_once(':') {
            config.set(k.trim(), v.trim())?;
        }
    }
    Ok(config)
}

/// Replays `path` under each setting and prints one table (or one JSON
/// object per setting).
pub fn compare(
    path: &Path,
    options: &ReplayOptions,
    config: &Config,
    settings: &[String],
    json: bool,
) -> Result<(), Box<dyn Error>> {
    let trace = Trace::from_path(path)?;
    let mut rows = Vec::new();
    for setting in settings {
        let config = with_setting(config, setting)?;
        let report = replay(&trace, options, || Allocator::new(config.clone()), |_| {})?;
        rows.push((setting, report));
    }
    let base = rows
        .first()
        .map_or(1.0, |r| r.1.peak_reserved.max(1) as f64);
    if json {
        for (setting, r) in &rows {
            println!(
                "{{\"trace\":{},\"config\":{},\"ns_per_event\":{},\"warm_ns_per_event\":{},\"peak_allocated\":{},\"peak_reserved\":{},\"ratio\":{},\"maps\":{},\"unmaps\":{},\"backend\":{}}}",
                super::json_string(&r.trace),
                super::json_string(setting),
                super::json_f64(r.ns_per_event),
                r.warm_ns_per_event.map_or("null".into(), super::json_f64),
                r.peak_allocated,
                r.peak_reserved,
                super::json_f64(r.ratio),
                r.maps.maps,
                r.maps.unmaps,
                super::json_string(&r.backend.to_string()),
            );
        }
        return Ok(());
    }
    println!(
        "{}: {} events, backend {}",
        trace.name(),
        super::thousands(trace.len()),
        rows.first().map_or("?".into(), |r| r.1.backend.to_string())
    );
    let width = settings.iter().map(String::len).max().unwrap_or(6).max(6);
    println!(
        "  {:<width$}  {:>9}  {:>9}  {:>13}  {:>7}  {:>10}  {:>6}  {:>6}",
        "config", "ns/event", "warm ns", "peak reserved", "ratio", "vs first", "maps", "unmaps"
    );
    for (setting, r) in &rows {
        println!(
            "  {:<width$}  {:>9.1}  {:>9}  {:>13}  {:>7.4}  {:>10.3}  {:>6}  {:>6}",
            setting,
            r.ns_per_event,
            r.warm_ns_per_event
                .map_or("-".into(), |w| format!("{w:.1}")),
            super::gb(r.peak_reserved),
            r.ratio,
            r.peak_reserved as f64 / base,
            r.maps.maps,
            r.maps.unmaps,
        );
    }
    Ok(())
}
