//! PNG plots: latency against throughput, and a wave run's time series.
//! Drawn with plotters into an RGB buffer and encoded with `png`; text uses
//! a vendored DejaVu Sans subset (see assets/README.md).

use crate::BenchError;
use crate::result::{BenchResult, LevelResult, Load, fmt_num};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

const W: u32 = 1100;
const H: u32 = 700;

const C_P50: RGBColor = RGBColor(31, 119, 180);
const C_P95: RGBColor = RGBColor(255, 127, 14);
const C_P99: RGBColor = RGBColor(214, 39, 40);
const C_SLO: RGBColor = RGBColor(90, 90, 90);
const C_BREAK: RGBColor = RGBColor(44, 160, 44);
const C_RATE: RGBColor = RGBColor(127, 127, 127);

/// Registers the vendored font once; `false` if it could not be read.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    })
}

fn err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn write_png(path: &Path, buf: &[u8], w: u32, h: u32) -> Result<(), BenchError> {
    let file = std::fs::File::create(path).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| err(path, e))?;
    writer.write_image_data(buf).map_err(|e| err(path, e))?;
    writer.finish().map_err(|e| err(path, e))
}

fn title(r: &BenchResult) -> String {
    let parts: Vec<String> = [
        r.tags.pool.clone(),
        r.tags.instance_type.clone(),
        r.tags.accelerator.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        r.target.url.clone()
    } else {
        parts.join(" / ")
    }
}

/// One point per closed- or open-loop level.
struct Pt {
    /// Concurrency or rate: the order to connect the points in.
    load: f64,
    x: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn points(r: &BenchResult, open: bool) -> Vec<Pt> {
    let mut v: Vec<Pt> = r
        .levels
        .iter()
        .filter(|l| matches!(l.load, Load::Open { .. }) == open)
        .filter(|l| !matches!(l.load, Load::Wave { .. }))
        .filter_map(|l| {
            let s = l.latency_s?;
            let load = match l.load {
                Load::Closed { concurrency, .. } => concurrency as f64,
                Load::Open { rate, .. } => rate,
                Load::Wave { .. } => 0.0,
            };
            Some(Pt {
                load,
                x: l.throughput_images_per_s,
                p50: s.p50,
                p95: s.p95,
                p99: s.p99,
            })
        })
        .collect();
    // In order of load, so a saturated server's curve turns up instead of
    // zig-zagging between levels of nearly equal throughput.
    v.sort_by(|a, b| a.load.total_cmp(&b.load));
    v
}

/// Latency (p50, p95, p99) against throughput for the closed- and open-loop
/// levels, with the SLO and the breaking point marked. Returns `false` (and
/// draws nothing) when no such level succeeded.
pub fn latency_throughput(r: &BenchResult, path: &Path) -> Result<bool, BenchError> {
    let closed = points(r, false);
    let open = points(r, true);
    if closed.is_empty() && open.is_empty() {
        return Ok(false);
    }
    let has_text = font_ready();
    let slo = r.settings.slo_p95_s;
    let all = closed.iter().chain(open.iter());
    let x_max = all.clone().map(|p| p.x).fold(0.0, f64::max).max(1e-3) * 1.12;
    let y_max = all.map(|p| p.p99).fold(slo, f64::max).max(1e-3) * 1.15;

    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path, e))?;
        let mut b = ChartBuilder::on(&root);
        b.margin(20);
        if has_text {
            b.caption(
                format!("Latency vs throughput — {}", title(r)),
                ("sans-serif", 26),
            )
            .x_label_area_size(55)
            .y_label_area_size(75);
        }
        let mut chart = b
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(path, e))?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(RGBColor(235, 235, 235));
        if has_text {
            mesh.x_desc("throughput (images/s)")
                .y_desc("latency (s)")
                .label_style(("sans-serif", 16))
                .axis_desc_style(("sans-serif", 18));
        }
        mesh.draw().map_err(|e| err(path, e))?;

        // The SLO line.
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, slo), (x_max, slo)],
                10,
                6,
                C_SLO.stroke_width(2),
            ))
            .map_err(|e| err(path, e))?
            .label(format!("SLO: p95 ≤ {} s", fmt_num(slo)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], C_SLO.stroke_width(2)));

        for (series, open_loop) in [(&closed, false), (&open, true)] {
            if series.is_empty() {
                continue;
            }
            let kind = if open_loop { "open" } else { "closed" };
            for (name, color, get) in [
                ("p50", C_P50, (|p: &Pt| p.p50) as fn(&Pt) -> f64),
                ("p95", C_P95, |p: &Pt| p.p95),
                ("p99", C_P99, |p: &Pt| p.p99),
            ] {
                let pts: Vec<(f64, f64)> = series.iter().map(|p| (p.x, get(p))).collect();
                let style = color.stroke_width(if name == "p95" { 3 } else { 2 });
                let line = if open_loop {
                    chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 4, style))
                } else {
                    chart.draw_series(LineSeries::new(pts.clone(), style))
                }
                .map_err(|e| err(path, e))?;
                line.label(format!("{name} ({kind} loop)"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                if open_loop {
                    chart
                        .draw_series(
                            pts.iter()
                                .map(|&(x, y)| TriangleMarker::new((x, y), 6, color.filled())),
                        )
                        .map_err(|e| err(path, e))?;
                } else {
                    chart
                        .draw_series(
                            pts.iter()
                                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
                        )
                        .map_err(|e| err(path, e))?;
                }
            }
        }

        if let Some(bp) = &r.breaking_point {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (bp.throughput_images_per_s, bp.p95_s),
                    11,
                    C_BREAK.stroke_width(3),
                )))
                .map_err(|e| err(path, e))?
                .label(format!(
                    "breaking point: {:.2} images/s",
                    bp.throughput_images_per_s
                ))
                .legend(|(x, y)| Circle::new((x + 10, y), 6, C_BREAK.stroke_width(2)));
        }
        if has_text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| err(path, e))?;
        }
        root.present().map_err(|e| err(path, e))?;
    }
    write_png(path, &buf, W, H)?;
    Ok(true)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// One panel of the wave plot: time on x, `0..y_max` on y.
fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    t_max: f64,
    y_max: f64,
    y_desc: &str,
    has_text: bool,
    path: &Path,
) -> Result<Chart<'a, 'b>, BenchError> {
    let mut b = ChartBuilder::on(area);
    b.margin(15);
    if has_text {
        b.x_label_area_size(45).y_label_area_size(75);
    }
    let mut chart = b
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| err(path, e))?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if has_text {
        mesh.x_desc("time (s)")
            .y_desc(y_desc)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17));
    }
    mesh.draw().map_err(|e| err(path, e))?;
    Ok(chart)
}

/// A wave level over time: offered rate and achieved throughput on top,
/// p50/p95 latency per bucket with the SLO below.
pub fn wave_timeseries(r: &BenchResult, l: &LevelResult, path: &Path) -> Result<(), BenchError> {
    let has_text = font_ready();
    let ts = &l.timeseries;
    let t_max = ts.last().map_or(1.0, |b| b.t_end_s).max(1e-3);
    let rate_max = ts
        .iter()
        .map(|b| b.offered_rate.max(b.throughput_images_per_s))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let slo = r.settings.slo_p95_s;
    let lat_max = ts
        .iter()
        .filter_map(|b| b.p95_s)
        .fold(slo, f64::max)
        .max(1e-3)
        * 1.15;
    let h = 820;
    let mut buf = vec![255u8; (W * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path, e))?;
        let root = if has_text {
            root.titled(&format!("{} — {}", l.label, title(r)), ("sans-serif", 26))
                .map_err(|e| err(path, e))?
        } else {
            root
        };
        let (top, bottom) = root.split_vertically(h / 2 - 20);
        let mid = |b: &crate::result::Bucket| (b.t_start_s + b.t_end_s) / 2.0;

        let mut c1 = panel(&top, t_max, rate_max, "per second", has_text, path)?;
        c1.draw_series(LineSeries::new(
            ts.iter().map(|b| (mid(b), b.offered_rate)),
            C_RATE.stroke_width(2),
        ))
        .map_err(|e| err(path, e))?
        .label("offered rate (requests/s)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], C_RATE.stroke_width(2)));
        c1.draw_series(LineSeries::new(
            ts.iter().map(|b| (mid(b), b.throughput_images_per_s)),
            C_P50.stroke_width(3),
        ))
        .map_err(|e| err(path, e))?
        .label("throughput (images/s)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], C_P50.stroke_width(3)));
        let errs: Vec<(f64, f64)> = ts
            .iter()
            .filter(|b| b.errors > 0)
            .map(|b| {
                (
                    mid(b),
                    b.errors as f64 / (b.t_end_s - b.t_start_s).max(1e-9),
                )
            })
            .collect();
        if !errs.is_empty() {
            c1.draw_series(
                errs.iter()
                    .map(|&p| Cross::new(p, 5, C_P99.stroke_width(2))),
            )
            .map_err(|e| err(path, e))?
            .label("errors/s")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, C_P99.stroke_width(2)));
        }
        if has_text {
            c1.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| err(path, e))?;
        }

        let mut c2 = panel(&bottom, t_max, lat_max, "latency (s)", has_text, path)?;
        c2.draw_series(DashedLineSeries::new(
            vec![(0.0, slo), (t_max, slo)],
            10,
            6,
            C_SLO.stroke_width(2),
        ))
        .map_err(|e| err(path, e))?
        .label(format!("SLO: p95 ≤ {} s", fmt_num(slo)))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], C_SLO.stroke_width(2)));
        for (name, color, pick) in [
            (
                "p50",
                C_P50,
                (|b: &crate::result::Bucket| b.p50_s) as fn(&crate::result::Bucket) -> Option<f64>,
            ),
            ("p95", C_P95, |b: &crate::result::Bucket| b.p95_s),
        ] {
            let pts: Vec<(f64, f64)> = ts.iter().filter_map(|b| Some((mid(b), pick(b)?))).collect();
            c2.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(path, e))?
                .label(format!("{name} latency"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            c2.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(path, e))?;
        }
        if has_text {
            c2.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| err(path, e))?;
        }
        root.present().map_err(|e| err(path, e))?;
    }
    write_png(path, &buf, W, h)
}
