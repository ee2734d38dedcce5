//! Line charts as PNG files (plotters' bitmap backend with an embedded font, so no system
//! font or Python is needed).

use crate::error::{Result, TrainError};
use plotters::prelude::*;
use std::path::Path;

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend entry.
    pub name: String,
    /// Points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Colour index into the palette; `None`: the line's position.
    pub shade: Option<f64>,
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// Plot `log10(y)` (non-positive values are dropped).
    pub log_y: bool,
    /// The lines.
    pub lines: Vec<Line>,
}

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; should registration fail, text is simply not drawn.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// From blue (0) to red (1): the colour of a line by its position in training.
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    RGBColor((30.0 + 200.0 * t) as u8, (80.0 + 40.0 * (1.0 - (2.0 * t - 1.0).abs())) as u8, (220.0 - 190.0 * t) as u8)
}

fn prepared(p: &Panel) -> Vec<(usize, &Line, Vec<(f64, f64)>)> {
    p.lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let pts = l
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!p.log_y || *y > 0.0))
                .map(|&(x, y)| (x, if p.log_y { y.log10() } else { y }))
                .collect();
            (i, l, pts)
        })
        .filter(|(_, _, pts): &(usize, &Line, Vec<(f64, f64)>)| !pts.is_empty())
        .collect()
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad, hi + pad)
}

/// Tick labels: integers without a decimal point, small or large values in scientific notation.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        // Exact zero, or rounding noise of an axis that crosses it.
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.1e}")
    } else if (v - v.round()).abs() < 1e-9 * a.max(1.0) {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws `panels` (those with data) in a grid of two columns into the PNG file `path`, under a
/// figure title. Returns false, writing nothing, when no panel has data.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<bool> {
    register_font();
    // Each panel with its drawable lines, prepared once.
    let panels: Vec<(&Panel, Vec<(usize, &Line, Vec<(f64, f64)>)>)> = panels.iter().map(|p| (p, prepared(p))).filter(|(_, l)| !l.is_empty()).collect();
    if panels.is_empty() {
        return Ok(false);
    }
    let cols = if panels.len() == 1 { 1 } else { 2 };
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (640 * cols as u32, 40 + 420 * rows as u32);
    let err = |e: String| TrainError::format(path, format!("drawing the plot: {e}"));
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((rows, cols));
        for ((panel, lines), area) in panels.into_iter().zip(areas.iter()) {
            let (x0, x1) = range(lines.iter().flat_map(|(_, _, p)| p.iter().map(|q| q.0)));
            let (y0, y1) = range(lines.iter().flat_map(|(_, _, p)| p.iter().map(|q| q.1)));
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 17))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| err(e.to_string()))?;
            let y_desc = if panel.log_y { format!("log10 {}", panel.y_label) } else { panel.y_label.clone() };
            chart
                .configure_mesh()
                .x_desc(panel.x_label.as_str())
                .y_desc(y_desc)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            let legend = lines.len() <= 8;
            for (i, line, pts) in lines {
                let color = line.shade.map(shade).unwrap_or(PALETTE[i % PALETTE.len()]);
                let style = ShapeStyle::from(color).stroke_width(2);
                let s = chart.draw_series(LineSeries::new(pts, style)).map_err(|e| err(e.to_string()))?;
                if legend {
                    s.label(line.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                }
            }
            if legend {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 13))
                    .position(SeriesLabelPosition::LowerLeft)
                    .draw()
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    // Encoded here with the `image` crate the readers already use (plotters' own encoder would
    // pull in a second version of it).
    let tmp = path.with_extension("png.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let enc = image::codecs::png::PngEncoder::new_with_quality(std::io::BufWriter::new(file), image::codecs::png::CompressionType::Best, image::codecs::png::FilterType::Adaptive);
    image::ImageEncoder::write_image(enc, &buf, w, h, image::ExtendedColorType::Rgb8).map_err(|e| TrainError::format(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    Ok(true)
}
