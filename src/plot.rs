//! Pictures of a run: small SVG line charts (`demo --plot`, `nodedb-perf migrate --plot`).
//!
//! Written by hand rather than with a plotting crate: a chart here is a few polylines, axes
//! and labels, and an SVG viewer lays the text out itself, where plotters' label layout
//! needs font metrics (a system font through fontconfig, or an embedded font file).
//! Sans-IO: [`render`] returns the document; the caller writes it.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Powers of ten equally spaced (latencies spanning several orders of magnitude).
    Log10,
    /// A quantile `q` at `-log10(1 - q)`: 90 %, 99 %, 99.9 % equally spaced, as latency
    /// percentile plots draw them. Values are quantiles in `0.0..1.0`.
    Nines,
}

#[derive(Clone, Debug)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// An SVG colour.
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A vertical line at `x` with a label (a move started or ended).
#[derive(Clone, Debug)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 360.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Quantiles for a percentile curve: from the median to `1 - 1 / count` (beyond it a
/// histogram of `count` samples only repeats its maximum), equally spaced in nines.
pub fn curve_quantiles(count: u64) -> Vec<f64> {
    let top = (count.max(10) as f64).log10().min(6.0);
    let steps = 60;
    (0..=steps)
        .map(|i| {
            // -log10(1 - 0.5): the median.
            let median = std::f64::consts::LOG10_2;
            let nines = median + (top - median) * f64::from(i) / f64::from(steps);
            1.0 - 10f64.powf(-nines)
        })
        .collect()
}

/// One kind of operation's latencies (microseconds) for [`latency_panels`]: over the whole
/// run, and second by second (an empty histogram for a second with none).
pub struct LatencyRecord<'a> {
    pub name: &'a str,
    /// The colours of its curve (and its p50 line), and of its p99 line.
    pub colors: [&'static str; 2],
    pub whole: &'a Histogram<u64>,
    pub per_second: &'a [Histogram<u64>],
}

/// Two panels: the latency percentile curve of each record, and its p50 and p99 second by
/// second, with `markers` (seconds since the start) on the timeline.
pub fn latency_panels(records: &[LatencyRecord<'_>], markers: Vec<Marker>) -> Vec<Panel> {
    let ms = |us: u64| us as f64 / 1_000.0;
    let curve = records
        .iter()
        .filter(|r| !r.whole.is_empty())
        .map(|r| Series {
            name: r.name.to_string(),
            color: r.colors[0],
            points: curve_quantiles(r.whole.len())
                .into_iter()
                .map(|q| (q, ms(r.whole.value_at_quantile(q))))
                .collect(),
        })
        .collect();
    let mut timeline = Vec::new();
    for r in records {
        for (label, q, color) in [("p50", 0.5, r.colors[0]), ("p99", 0.99, r.colors[1])] {
            let points: Vec<(f64, f64)> = r
                .per_second
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.is_empty())
                .map(|(second, h)| (second as f64 + 0.5, ms(h.value_at_quantile(q))))
                .collect();
            if !points.is_empty() {
                timeline.push(Series {
                    name: format!("{} {label}", r.name),
                    color,
                    points,
                });
            }
        }
    }
    let latency = || Axis {
        label: "latency (ms)".into(),
        scale: Scale::Log10,
    };
    vec![
        Panel {
            title: "Latency by percentile".into(),
            x: Axis {
                label: "percentile".into(),
                scale: Scale::Nines,
            },
            y: latency(),
            series: curve,
            markers: Vec::new(),
        },
        Panel {
            title: "p50 and p99, second by second".into(),
            x: Axis {
                label: "seconds since the load started".into(),
                scale: Scale::Linear,
            },
            y: latency(),
            series: timeline,
            markers,
        },
    ]
}

/// One SVG document with the panels stacked under `title`.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * PANEL_HEIGHT;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut out, panel, TOP + i as f64 * PANEL_HEIGHT);
    }
    out.push_str("</svg>\n");
    out
}

fn transform(scale: Scale, v: f64) -> Option<f64> {
    let t = match scale {
        Scale::Linear => v,
        Scale::Log10 if v > 0.0 => v.log10(),
        Scale::Nines if (0.0..1.0).contains(&v) => -(1.0 - v).log10(),
        _ => return None,
    };
    t.is_finite().then_some(t)
}

/// The transformed range an axis covers, and its ticks (position, label).
fn ticks(scale: Scale, lo: f64, hi: f64) -> (f64, f64, Vec<(f64, String)>) {
    match scale {
        Scale::Linear => {
            let span = (hi - lo).max(1e-9);
            let raw = span / 6.0;
            let magnitude = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .into_iter()
                .map(|m| m * magnitude)
                .find(|s| *s >= raw)
                .unwrap_or(10.0 * magnitude);
            let (first, last) = ((lo / step).floor() * step, (hi / step).ceil() * step);
            let count = ((last - first) / step).round() as usize;
            let ticks = (0..=count)
                .map(|i| {
                    let v = first + i as f64 * step;
                    (v, number(v))
                })
                .collect();
            (first, last.max(first + step), ticks)
        }
        Scale::Log10 => {
            let (first, last) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
            let ticks = (first as i32..=last as i32)
                .map(|p| (f64::from(p), number(10f64.powi(p))))
                .collect();
            (first, last, ticks)
        }
        Scale::Nines => {
            let last = hi.ceil().max(1.0);
            let ticks = (0..=last as i32)
                .map(|n| {
                    let percent = 100.0 * (1.0 - 10f64.powi(-n));
                    (f64::from(n), format!("{}%", number(percent)))
                })
                .collect();
            (0.0, last, ticks)
        }
    }
}

fn draw_panel(out: &mut String, panel: &Panel, top: f64) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (top + TOP, top + PANEL_HEIGHT - BOTTOM);
    let points = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .filter_map(|(x, y)| {
                Some((transform(panel.x.scale, *x)?, transform(panel.y.scale, *y)?))
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = panel.series.iter().flat_map(points).collect();
    let bounds = |pick: fn(&(f64, f64)) -> f64| {
        let lo = all.iter().map(pick).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(pick).fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
    };
    let (mut xl, mut xh) = bounds(|p| p.0);
    for m in &panel.markers {
        if let Some(x) = transform(panel.x.scale, m.x) {
            (xl, xh) = (xl.min(x), xh.max(x));
        }
    }
    let (yl, yh) = bounds(|p| p.1);
    let (xl, xh, xticks) = ticks(panel.x.scale, xl, xh);
    let (yl, yh, yticks) = ticks(panel.y.scale, yl, yh);
    let px = |x: f64| x0 + (x - xl) / (xh - xl) * (x1 - x0);
    let py = |y: f64| y1 - (y - yl) / (yh - yl) * (y1 - y0);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        top + TOP - 12.0,
        escape(&panel.title)
    );
    for (x, label) in &xticks {
        let at = px(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{at:.1}" y1="{y0:.1}" x2="{at:.1}" y2="{y1:.1}" stroke="#e4e4e4"/><text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y1 + 16.0,
            escape(label)
        );
    }
    for (y, label) in &yticks {
        let at = py(*y);
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{at:.1}" x2="{x1:.1}" y2="{at:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            at + 4.0,
            escape(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        x1 - x0,
        y1 - y0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        y1 + 36.0,
        escape(&panel.x.label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        x0 - 56.0,
        (y0 + y1) / 2.0,
        escape(&panel.y.label)
    );
    for (i, m) in panel.markers.iter().enumerate() {
        let Some(x) = transform(panel.x.scale, m.x) else {
            continue;
        };
        let at = px(x);
        // Labels step down four heights in turn so that close markers stay readable.
        let label_y = y0 + 14.0 + 14.0 * (i % 4) as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{at:.1}" y1="{y0:.1}" x2="{at:.1}" y2="{y1:.1}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{label_y:.1}" fill="#555">{}</text>"##,
            at + 3.0,
            escape(&m.label)
        );
    }
    for (i, s) in panel.series.iter().enumerate() {
        let line: Vec<String> = points(s)
            .into_iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !line.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                line.join(" "),
                s.color
            );
        }
        let ly = y0 + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x1 + 12.0,
            x1 + 32.0,
            s.color,
            x1 + 38.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
}

/// A tick label: no more digits than it needs.
fn number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(scale: Scale, points: Vec<(f64, f64)>) -> Panel {
        Panel {
            title: "latency <p99>".into(),
            x: Axis {
                label: "percentile".into(),
                scale,
            },
            y: Axis {
                label: "ms".into(),
                scale: Scale::Log10,
            },
            series: vec![Series {
                name: "writes".into(),
                color: "#1f77b4",
                points,
            }],
            markers: vec![Marker {
                x: 0.99,
                label: "move started".into(),
            }],
        }
    }

    #[test]
    fn a_percentile_curve_puts_the_nines_equally_spaced_and_escapes_its_text() {
        let points = vec![(0.5, 1.0), (0.9, 2.0), (0.99, 5.0), (0.999, 40.0)];
        let svg = render("demo & co", &[panel(Scale::Nines, points)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("demo &amp; co") && svg.contains("latency &lt;p99&gt;"));
        for tick in [">0%<", ">90%<", ">99%<", ">99.9%<"] {
            assert!(svg.contains(tick), "no tick {tick} in {svg}");
        }
        // 1 ms to 40 ms on a log axis: ticks at 1, 10 and 100.
        for tick in [">1<", ">10<", ">100<"] {
            assert!(svg.contains(tick), "no tick {tick}");
        }
        let polyline = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(polyline.matches(',').count(), 4, "{polyline}");
        assert!(svg.contains("move started"));
    }

    #[test]
    fn points_a_scale_cannot_show_are_left_out_not_drawn_at_infinity() {
        // A zero latency on a log axis, a quantile of 1 on the nines axis.
        let points = vec![(0.5, 0.0), (0.9, 3.0), (1.0, 9.0), (0.99, 4.0)];
        let svg = render("t", &[panel(Scale::Nines, points)]);
        let polyline = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(polyline.matches(',').count(), 2, "{polyline}");
        assert!(!svg.contains("inf") && !svg.contains("NaN"));
    }

    #[test]
    fn latency_panels_draw_each_kind_and_skip_empty_seconds() {
        let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        let mut whole = histogram();
        let mut seconds = vec![histogram(), histogram(), histogram()];
        for us in [800, 900, 1_000, 20_000] {
            whole.record(us).unwrap();
            seconds[0].record(us).unwrap();
            seconds[2].record(us * 2).unwrap();
        }
        let records = [LatencyRecord {
            name: "writes",
            colors: ["#1f77b4", "#aec7e8"],
            whole: &whole,
            per_second: &seconds,
        }];
        let marker = Marker {
            x: 1.2,
            label: "1 move started".into(),
        };
        let panels = latency_panels(&records, vec![marker]);
        assert_eq!(panels.len(), 2);
        assert_eq!(panels[0].series.len(), 1);
        let names: Vec<&str> = panels[1].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["writes p50", "writes p99"]);
        // Second 1 had nothing: two points each, at the middle of seconds 0 and 2.
        let xs: Vec<f64> = panels[1].series[0].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.5, 2.5]);
        let svg = render("demo", &panels);
        assert!(svg.contains("1 move started") && svg.contains("Latency by percentile"));
    }

    #[test]
    fn curve_quantiles_stop_where_the_samples_do() {
        let q = curve_quantiles(1_000);
        assert!((q[0] - 0.5).abs() < 1e-3);
        assert!((q.last().unwrap() - 0.999).abs() < 1e-6);
        assert!(q.windows(2).all(|w| w[0] < w[1]));
    }
}
