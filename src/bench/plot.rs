//! `--plot`: latency over time and its distribution as one self-contained SVG (no plotting library: two
//! panels of dots and bars are a few dozen lines, and an SVG opens in any browser).

use std::fmt::Write as _;

/// Most dots drawn per series; longer runs are thinned evenly (the histogram still counts every sample).
const MAX_DOTS: usize = 4000;
const WIDTH: f64 = 900.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 70.0;

/// One series of `(seconds since the start, latency in ms)` samples.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// The samples.
    pub points: &'a [(f64, f64)],
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_ceiling(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|v| *v >= max).unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG document: latency over time (top) and a histogram of latency (bottom), one colour per series.
pub fn latency_svg(title: &str, series: &[Series<'_>]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let t_max = nice_ceiling(all().map(|p| p.0).fold(0.0, f64::max));
    let l_max = nice_ceiling(all().map(|p| p.1).fold(0.0, f64::max));
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="20" font-size="15">{}</text>"#, escape(title));

    // Panel 1: latency over time.
    let y0 = TOP;
    axes(&mut out, y0, plot_w, t_max, l_max, "time (s)", "latency (ms)");
    for s in series {
        let step = s.points.len().div_ceil(MAX_DOTS).max(1);
        let _ = write!(out, r#"<g fill="{}" fill-opacity="0.6">"#, escape(s.color));
        for (t, l) in s.points.iter().step_by(step) {
            let x = LEFT + t / t_max * plot_w;
            let y = y0 + PANEL_H - (l / l_max).min(1.0) * PANEL_H;
            let _ = write!(out, r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.5"/>"#);
        }
        let _ = writeln!(out, "</g>");
    }

    // Panel 2: histogram of latency, 50 bins over [0, l_max].
    let y1 = TOP + PANEL_H + GAP;
    const BINS: usize = 50;
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|s| {
            let mut c = vec![0usize; BINS];
            for (_, l) in s.points {
                let i = ((l / l_max) * BINS as f64).floor().clamp(0.0, (BINS - 1) as f64) as usize;
                c[i] += 1;
            }
            c
        })
        .collect();
    // Fractions, so that series of different lengths compare.
    let frac_max = series
        .iter()
        .zip(&counts)
        .flat_map(|(s, c)| c.iter().map(move |n| *n as f64 / s.points.len().max(1) as f64))
        .fold(0.0, f64::max);
    let f_max = nice_ceiling(frac_max * 100.0);
    axes(&mut out, y1, plot_w, l_max, f_max, "latency (ms)", "% of fragments");
    let bin_w = plot_w / BINS as f64;
    for (k, (s, c)) in series.iter().zip(&counts).enumerate() {
        let w = bin_w / series.len() as f64;
        let _ = write!(out, r#"<g fill="{}" fill-opacity="0.8">"#, escape(s.color));
        for (i, n) in c.iter().enumerate().filter(|(_, n)| **n > 0) {
            let pct = *n as f64 / s.points.len().max(1) as f64 * 100.0;
            let h = pct / f_max * PANEL_H;
            let x = LEFT + i as f64 * bin_w + k as f64 * w;
            let _ = write!(out, r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}"/>"#, y1 + PANEL_H - h);
        }
        let _ = writeln!(out, "</g>");
    }

    // Legend.
    for (k, s) in series.iter().enumerate() {
        let x = WIDTH - RIGHT - 260.0;
        let y = 16.0 + k as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{y}">{} ({} samples)</text>"#,
            y - 9.0,
            escape(s.color),
            x + 14.0,
            escape(s.label),
            s.points.len()
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A panel's frame, ticks and labels; `y0` is the panel's top.
fn axes(out: &mut String, y0: f64, plot_w: f64, x_max: f64, y_max: f64, x_label: &str, y_label: &str) {
    let bottom = y0 + PANEL_H;
    let _ =
        writeln!(out, r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#888"/>"##);
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let x = LEFT + f * plot_w;
        let y = bottom - f * PANEL_H;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            trim(f * y_max),
            bottom + 16.0,
            trim(f * x_max),
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 34.0,
        escape(x_label),
        y0 + PANEL_H / 2.0,
        escape(y_label),
    );
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
    }

    #[test]
    fn svg_has_every_dot_bar_and_legend() {
        let ours: Vec<(f64, f64)> = (0..100).map(|i| (f64::from(i) * 0.1, 30.0 + f64::from(i % 7))).collect();
        let theirs = [(0.5, 400.0), (1.0, 420.0)];
        let svg = latency_svg(
            "a <title>",
            &[
                Series { label: "mqtt-video", color: "#1f77b4", points: &ours },
                Series { label: "ffmpeg CLI", color: "#d62728", points: &theirs },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 102);
        assert!(svg.contains("a &lt;title&gt;"));
        assert!(svg.contains("mqtt-video (100 samples)") && svg.contains("ffmpeg CLI (2 samples)"));
        // Bins of 10 ms up to 500: ours (30-36 ms) fill one, theirs two; plus 2 panel frames and 2 swatches.
        assert_eq!(svg.matches("<rect x=").count(), 1 + 2 + 2 + 2);
        let empty = latency_svg("nothing", &[]);
        assert!(empty.contains("</svg>"));
    }
}
