//! A snapshot as a self-contained HTML page (inline SVG, no scripts): the
//! reserved and allocated bytes over the history, and a map of the segments
//! with their blocks.

use super::snapshot::{BlockState, Snapshot};
use super::Action;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const CHART: f64 = 260.0;
const ROW: f64 = 14.0;
/// Segments drawn at most (the largest first).
const MAX_ROWS: usize = 300;
/// Points of the chart at most (events are thinned evenly beyond).
const MAX_POINTS: usize = 4000;

fn colour(state: BlockState) -> &'static str {
    match state {
        BlockState::ActiveAllocated => "#1f77b4",
        BlockState::ActivePendingFree => "#ff7f0e",
        BlockState::Inactive => "#e8e8e8",
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Snapshot {
    /// Reserved and requested-live bytes after each history event, ending at
    /// the snapshot's figures (the history may begin after memory was
    /// already held: each series is anchored at its end).
    pub fn series(&self) -> Vec<(u64, i128, i128)> {
        let mut reserved = 0i128;
        let mut allocated = 0i128;
        let mut out = Vec::with_capacity(self.history.len());
        for e in &self.history {
            let size = e.size as i128;
            match e.action {
                Action::Alloc => allocated += size,
                Action::FreeRequested => allocated -= size,
                Action::SegmentAlloc | Action::SegmentMap => reserved += size,
                Action::SegmentFree | Action::SegmentUnmap => reserved -= size,
                _ => {}
            }
            out.push((e.time_us, reserved, allocated));
        }
        let end_reserved = self.reserved_bytes() as i128;
        let end_allocated: i128 = (self.segments.iter())
            .flat_map(|s| &s.blocks)
            .map(|b| b.requested_size as i128)
            .sum();
        for p in &mut out {
            p.1 += end_reserved - reserved;
            p.2 += end_allocated - allocated;
        }
        out
    }

    /// The snapshot as one HTML page around [`Snapshot::to_svg`].
    pub fn to_html(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>graphalloc memory snapshot</title></head>\n<body style=\"font-family:sans-serif\">\n{}</body></html>\n",
            self.to_svg()
        )
    }

    /// The snapshot as one SVG picture: a summary line, a chart of reserved
    /// and allocated bytes over the history's events, and a map of every
    /// segment (one row each, largest first, blocks coloured by state).
    pub fn to_svg(&self) -> String {
        let rows = self.segments.len().min(MAX_ROWS) as f64;
        let height = 46.0 + CHART + 30.0 + ROW * rows + 10.0;
        let mut h = format!(
            r#"<svg width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
"#
        );
        let _ = writeln!(
            h,
            r#"<text x="0" y="14" font-size="14" font-weight="bold">graphalloc memory snapshot</text><text x="0" y="30">{} segments, reserved {}, allocated {}, pending free {}; {} history events ({} dropped)</text>"#,
            self.segments.len(),
            mib(self.reserved_bytes() as f64),
            mib(self.bytes_in(BlockState::ActiveAllocated) as f64),
            mib(self.bytes_in(BlockState::ActivePendingFree) as f64),
            self.history.len(),
            self.dropped_events
        );
        let _ = writeln!(h, r#"<g transform="translate(0,36)">"#);
        self.chart(&mut h);
        let _ = writeln!(h, r#"</g><g transform="translate(0,{})">"#, 36.0 + CHART);
        self.segment_map(&mut h);
        h.push_str("</g></svg>\n");
        h
    }

    fn chart(&self, h: &mut String) {
        let series = self.series();
        if series.is_empty() {
            h.push_str("<text x=\"0\" y=\"20\">No history recorded (GRAPHALLOC_CONF=history:N or record_history).</text>\n");
            return;
        }
        let top = series
            .iter()
            .map(|p| p.1.max(p.2))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let step = series.len().div_ceil(MAX_POINTS).max(1);
        let n = (series.len() - 1).max(1) as f64;
        let (x0, x1, y0, y1) = (70.0, WIDTH - 10.0, 10.0, CHART - 30.0);
        let xy = |i: usize, v: i128| {
            let x = x0 + (x1 - x0) * i as f64 / n;
            let y = y1 - (y1 - y0) * (v.max(0) as f64 / top);
            format!("{x:.1},{y:.1} ")
        };
        let (mut reserved, mut allocated) = (String::new(), String::new());
        for (i, p) in series.iter().enumerate().step_by(step) {
            reserved.push_str(&xy(i, p.1));
            allocated.push_str(&xy(i, p.2));
        }
        let _ = writeln!(
            h,
            r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{y1}" text-anchor="end">0</text>
<polyline points="{reserved}" fill="none" stroke="#d62728" stroke-width="1.5"/>
<polyline points="{allocated}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>
<text x="{x0}" y="{}" fill="#d62728">reserved</text><text x="{}" y="{}" fill="#1f77b4">allocated (requested bytes live)</text>
<text x="{}" y="{}" text-anchor="end">{} events</text>"##,
            x1 - x0,
            y1 - y0,
            x0 - 4.0,
            y0 + 10.0,
            mib(top),
            x0 - 4.0,
            y1 + 18.0,
            x0 + 80.0,
            y1 + 18.0,
            x1,
            y1 + 18.0,
            series.len()
        );
    }

    fn segment_map(&self, h: &mut String) {
        let mut order: Vec<&_> = self.segments.iter().collect();
        order.sort_by_key(|s| std::cmp::Reverse(s.total_size));
        order.truncate(MAX_ROWS);
        let largest = order.first().map_or(1, |s| s.total_size).max(1) as f64;
        let (x0, x1) = (230.0, WIDTH - 10.0);
        let _ = writeln!(
            h,
            r#"<text x="0" y="12" font-weight="bold">Segments (largest first{}; blue: allocated, orange: pending free, grey: free)</text>
<g transform="translate(0,20)" font-size="10">"#,
            if self.segments.len() > MAX_ROWS {
                format!(", {MAX_ROWS} of {}", self.segments.len())
            } else {
                String::new()
            }
        );
        for (row, s) in order.iter().enumerate() {
            let y = ROW * row as f64;
            let owner = s.pool.map_or("cache".to_owned(), |p| format!("pool {p}"));
            let _ = writeln!(
                h,
                r#"<text x="0" y="{:.1}">dev {} {} {:#x} {} s{}</text>"#,
                y + 10.0,
                s.device,
                esc(&owner),
                s.address,
                mib(s.total_size as f64),
                s.stream
            );
            let scale = (x1 - x0) / largest;
            for b in &s.blocks {
                let x = x0 + (b.address - s.address) as f64 * scale;
                let w = (b.size as f64 * scale).max(0.5);
                let _ = writeln!(
                    h,
                    r##"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{}" fill="{}" stroke="#fff" stroke-width="0.3"><title>{:#x} {} B ({} requested) {}</title></rect>"##,
                    ROW - 2.0,
                    colour(b.state),
                    b.address,
                    b.size,
                    b.requested_size,
                    b.state.name()
                );
            }
        }
        h.push_str("</g>\n");
    }
}
