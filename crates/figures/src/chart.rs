//! Curves over one axis: training curves, and the supplement's stepped per-class curve.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Figure, FigureError, err, render};

/// One curve: its legend label and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Fig. S4's curves: each run's per-class top-1 (`per_class[run][class]`, `None` for a class
/// without validation images), the classes ordered by the first run's accuracy (ties by class
/// index), averaged over consecutive windows of `window` classes; each window is a step
/// (`(first rank, mean)` and `(last rank + 1, mean)`). Classes any run lacks are left out.
pub fn per_class_steps(
    labels: &[String],
    per_class: &[Vec<Option<f64>>],
    window: usize,
) -> Result<Vec<Series>, FigureError> {
    let Some(baseline) = per_class.first() else { return Err(FigureError::Data("no runs".into())) };
    if labels.len() != per_class.len() {
        return Err(FigureError::Data(format!("{} labels for {} runs", labels.len(), per_class.len())));
    }
    if let Some(other) = per_class.iter().find(|p| p.len() != baseline.len()) {
        return Err(FigureError::Data(format!(
            "runs with different classes ({} and {}): per-class curves compare runs on one split",
            baseline.len(),
            other.len()
        )));
    }
    let mut order: Vec<(usize, f64)> = (0..baseline.len())
        .filter(|&c| per_class.iter().all(|p| p[c].is_some_and(f64::is_finite)))
        .filter_map(|c| baseline[c].map(|a| (c, a)))
        .collect();
    if order.is_empty() {
        return Err(FigureError::Data("no class has validation images in every run".into()));
    }
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let window = window.max(1);
    Ok(labels
        .iter()
        .zip(per_class)
        .map(|(label, accuracy)| {
            let mut points = Vec::new();
            for (k, chunk) in order.chunks(window).enumerate() {
                let mean = chunk.iter().map(|&(c, _)| accuracy[c].unwrap_or(0.0)).sum::<f64>() / chunk.len() as f64;
                let start = (k * window) as f64;
                points.push((start, mean));
                points.push((start + chunk.len() as f64, mean));
            }
            Series { label: label.clone(), points }
        })
        .collect())
}

struct LineChart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: &'a [Series],
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x44, 0x77, 0xAA),
    RGBColor(0xEE, 0x66, 0x77),
    RGBColor(0x22, 0x88, 0x33),
    RGBColor(0xCC, 0xBB, 0x44),
    RGBColor(0x66, 0xCC, 0xEE),
    RGBColor(0xAA, 0x33, 0x77),
];

impl Figure for LineChart<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(err)?;
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if !(x0.is_finite() && y0.is_finite()) {
            return Err("no points to draw".into());
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(0.5);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(err)?;
        // Whole numbers where the data are (epochs, category ranks; percentages over a wide range).
        let integer_x = self.series.iter().flat_map(|s| &s.points).all(|(x, _)| x.fract() == 0.0);
        let wide_y = y1 - y0 > 5.0;
        let x_format = move |x: &f64| if integer_x { format!("{x:.0}") } else { format!("{x}") };
        let y_format = move |y: &f64| if wide_y { format!("{y:.0}") } else { format!("{y:.2}") };
        chart
            .configure_mesh()
            .x_labels(if integer_x { ((x1 - x0) as usize + 1).clamp(2, 12) } else { 10 })
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(0xEE, 0xEE, 0xEE))
            .draw()
            .map_err(err)?;
        for (k, series) in self.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(series.points.iter().copied(), colour.stroke_width(2)))
                .map_err(err)?
                .label(series.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// Writes `series` as a line chart to `path` (`.png` or `.svg`, 900 × 560).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), FigureError> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(FigureError::Data(format!("{}: no points to draw", path.display())));
    }
    if series.iter().flat_map(|s| &s.points).any(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return Err(FigureError::Data(format!("{}: a non-finite point", path.display())));
    }
    render(path, (900, 560), &LineChart { title, x_label, y_label, series })
}
