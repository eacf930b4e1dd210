//! The supplement's figures, as PNG or SVG (by the file's extension), drawn with plotters:
//!
//! - [`line_chart`]: curves over one axis (Fig. S2's top-1 per epoch; Fig. S4's per-class top-1,
//!   stepped, from [`per_class_steps`]);
//! - [`location_heatmap`]: where a dataset's photos were taken, counted on a latitude/longitude
//!   grid (equirectangular, log colour scale) with a graticule (Fig. S1; no coastlines are
//!   bundled: the data draws the continents); [`probability_map`]: a value per cell of
//!   [`world_grid`] (PriorsNet's predicted range of a class).
//!
//! Text is drawn with a bundled subset of DejaVu Sans (`fonts/`, its licence beside it), so
//! figures look the same on every machine and need no system fonts. PNGs are encoded with the
//! workspace's `image`.
//!
//! Architecture invariant: numbers in, pictures out: no models, runs, metrics files or dataset
//! formats (the callers read those).

mod chart;
mod heatmap;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingBackend, IntoDrawingArea, SVGBackend, WHITE};

pub use chart::{Series, line_chart, per_class_steps};
pub use heatmap::{WorldGrid, location_heatmap, probability_map, world_grid};

/// What can go wrong drawing a figure.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("{0}")]
    Data(String),
}

/// An output format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub fn of(path: &Path) -> Result<Self, FigureError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(FigureError::Output {
                path: path.to_owned(),
                message: "a figure is written as .png or .svg".into(),
            }),
        }
    }
}

const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");

/// Registers the bundled font as plotters' "sans-serif" (once).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known good; a failure would only lose the text.
        let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}

/// A figure that can draw itself on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Any plotters error as text.
fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draws `figure` on a `size` canvas (white) and writes it to `path` as PNG or SVG: to a
/// temporary file renamed into place, so a figure is whole or absent.
fn render(path: &Path, size: (u32, u32), figure: &impl Figure) -> Result<(), FigureError> {
    register_font();
    let format = Format::of(path)?;
    let out = |message: String| FigureError::Output { path: path.to_owned(), message };
    let bytes = match format {
        Format::Png => {
            let mut buffer = vec![255u8; size.0 as usize * size.1 as usize * 3];
            {
                let area = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
                figure.draw(&area).map_err(out)?;
                area.present().map_err(|e| out(err(e)))?;
            }
            let image = image::RgbImage::from_raw(size.0, size.1, buffer).ok_or_else(|| out("canvas size".into()))?;
            let mut png = Vec::new();
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| out(e.to_string()))?;
            png
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let area = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                area.fill(&WHITE).map_err(|e| out(err(e)))?;
                figure.draw(&area).map_err(out)?;
                area.present().map_err(|e| out(err(e)))?;
            }
            svg.into_bytes()
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| out(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| out(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| out(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
