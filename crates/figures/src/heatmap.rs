//! Where photos were taken: counts on a latitude/longitude grid, as Fig. S1.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Figure, FigureError, err, render};

struct Heatmap<'a> {
    title: &'a str,
    cell: f64,
    /// Row-major from the south-west cell; a cell at 0 is left blank.
    values: Vec<f64>,
    columns: usize,
    scale: Scale,
}

/// How values become colours.
#[derive(Clone, Copy)]
enum Scale {
    /// Counts: log(1 + n) over the largest, so one photo is visible beside a million.
    LogCounts,
    /// Probabilities in [0, 1], linear.
    Probability,
}

/// White → yellow → red → dark red by `t` in [0, 1].
fn heat(t: f64) -> RGBColor {
    let stops = [(255.0, 255.0, 204.0), (254.0, 178.0, 76.0), (240.0, 59.0, 32.0), (128.0, 0.0, 38.0)];
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let k = (t.floor() as usize).min(stops.len() - 2);
    let f = t - k as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(stops[k].0, stops[k + 1].0), mix(stops[k].1, stops[k + 1].1), mix(stops[k].2, stops[k + 1].2))
}

impl Figure for Heatmap<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(-180.0..180.0, -90.0..90.0)
            .map_err(err)?;
        chart
            .plotting_area()
            .draw(&Rectangle::new([(-180.0, -90.0), (180.0, 90.0)], RGBColor(0xF4, 0xF6, 0xF8).filled()))
            .map_err(err)?;
        let max = self.values.iter().copied().fold(0.0, f64::max).max(1e-12);
        let scale = self.scale;
        let cells = self.values.iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(i, &v)| {
            let (row, column) = (i / self.columns, i % self.columns);
            let lon = -180.0 + column as f64 * self.cell;
            let lat = -90.0 + row as f64 * self.cell;
            let t = match scale {
                Scale::LogCounts => (v.ln_1p() / max.ln_1p()).max(0.15),
                Scale::Probability => v.clamp(0.0, 1.0),
            };
            Rectangle::new([(lon, lat), (lon + self.cell, (lat + self.cell).min(90.0))], heat(t).filled())
        });
        chart.draw_series(cells).map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(13)
            .y_labels(7)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("longitude (°)")
            .y_desc("latitude (°)")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.15))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// Writes the heatmap of `points` (latitude, longitude in degrees) counted on a grid of `cell`
/// degrees (0.5–10) to `path` (`.png` or `.svg`, 1000 × 560). Points outside ±90° / ±180° or
/// not finite are an error naming the first.
pub fn location_heatmap(path: &Path, title: &str, points: &[(f64, f64)], cell: f64) -> Result<(), FigureError> {
    if !(0.5..=10.0).contains(&cell) {
        return Err(FigureError::Data(format!("a grid of {cell}° (0.5–10)")));
    }
    if points.is_empty() {
        return Err(FigureError::Data(format!("{}: no locations to draw", path.display())));
    }
    let columns = (360.0 / cell).ceil() as usize;
    let rows = (180.0 / cell).ceil() as usize;
    let mut counts = vec![0.0f64; columns * rows];
    for &(lat, lon) in points {
        if !(lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0) {
            return Err(FigureError::Data(format!("location ({lat}, {lon}) is not on the globe")));
        }
        let column = (((lon + 180.0) / cell) as usize).min(columns - 1);
        let row = (((lat + 90.0) / cell) as usize).min(rows - 1);
        counts[row * columns + column] += 1.0;
    }
    render(path, (1000, 560), &Heatmap { title, cell, values: counts, columns, scale: Scale::LogCounts })
}

/// A world map's grid of `cell`-degree cells: `columns × rows`, and each cell's centre
/// (latitude, longitude), row-major from the south-west: what [`probability_map`] draws.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldGrid {
    pub columns: usize,
    pub rows: usize,
    pub centres: Vec<(f64, f64)>,
}

/// The [`WorldGrid`] of `cell` degrees (0.1–10).
pub fn world_grid(cell: f64) -> Result<WorldGrid, FigureError> {
    if !(0.1..=10.0).contains(&cell) {
        return Err(FigureError::Data(format!("a grid of {cell}° (0.1–10)")));
    }
    let (columns, rows) = ((360.0 / cell).ceil() as usize, (180.0 / cell).ceil() as usize);
    let centres = (0..rows)
        .flat_map(|r| {
            (0..columns).map(move |c| {
                let lat = (-90.0 + (r as f64 + 0.5) * cell).min(90.0);
                let lon = (-180.0 + (c as f64 + 0.5) * cell).min(180.0);
                (lat, lon)
            })
        })
        .collect();
    Ok(WorldGrid { columns, rows, centres })
}

/// Writes a map of probabilities in [0, 1] (one per cell of [`world_grid`]`(cell)`, in its
/// order; linear colour scale, cells under 1 % blank) to `path` (`.png` or `.svg`, 1000 × 560).
pub fn probability_map(path: &Path, title: &str, cell: f64, values: &[f64]) -> Result<(), FigureError> {
    let WorldGrid { columns, rows, .. } = world_grid(cell)?;
    if values.len() != columns * rows {
        return Err(FigureError::Data(format!("{} values for a grid of {columns} × {rows}", values.len())));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite() || **v < 0.0 || **v > 1.0) {
        return Err(FigureError::Data(format!("a probability of {v}")));
    }
    let values = values.iter().map(|&v| if v < 0.01 { 0.0 } else { v }).collect();
    render(path, (1000, 560), &Heatmap { title, cell, values, columns, scale: Scale::Probability })
}
