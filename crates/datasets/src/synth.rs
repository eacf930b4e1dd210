//! A synthetic, geo-aware dataset written in the iNaturalist 2021 layout.
//!
//! It is built so that location and date matter the way they do for species:
//!
//! - **look-alike groups**: `per_group` classes drawn from one appearance distribution (the same
//!   shape, colours and jitter), so pixels cannot tell them apart; each lives in its own region
//!   (region centres at least 35° apart, spread 5°) and peaks in its own season (peaks spread
//!   evenly over the year, spread 55 days, so seasons overlap);
//! - **distinct classes**: each with an appearance of its own.
//!
//! An image-only model therefore tops out near `(distinct + groups) / classes`; a model that sees
//! the location can separate look-alikes almost perfectly, one that sees only the date only
//! partly (so geographic metadata is worth more than temporal, as in the paper's Table S6). The
//! YFCC-like variant (`with_dates = false`) writes locations without dates.
//!
//! Everything is deterministic per seed. Files: `root/{train,val}.json` (COCO-style `images`,
//! `annotations`, `categories`, with `latitude`, `longitude`, `date`) and JPEGs under
//! `root/{train,val}/<class>/<id>.jpg`.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::DatasetError;
use crate::loader::derive_seed;

/// The generator's parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Groups of look-alike classes.
    pub groups: usize,
    /// Classes per group: same look, different region and season.
    pub per_group: usize,
    /// Classes that look distinct.
    pub distinct: usize,
    pub train_per_class: usize,
    pub val_per_class: usize,
    /// Side of the square images written.
    pub image_size: u32,
    pub seed: u64,
    /// False for the YFCC-like variant: locations, no dates.
    pub with_dates: bool,
    /// Share of images written without location and date (iNaturalist has some).
    pub missing_fraction: f64,
}

impl SynthConfig {
    /// The smallest geo-aware dataset (for tests): one pair of look-alikes told apart by place
    /// and season, and one distinct class; dated, nothing missing.
    pub fn three_classes(train_per_class: usize, val_per_class: usize, image_size: u32, seed: u64) -> Self {
        Self {
            groups: 1,
            per_group: 2,
            distinct: 1,
            train_per_class,
            val_per_class,
            image_size,
            seed,
            with_dates: true,
            missing_fraction: 0.0,
        }
    }

    pub fn n_classes(&self) -> usize {
        self.groups * self.per_group + self.distinct
    }

    fn validate(&self) -> Result<(), DatasetError> {
        if self.n_classes() == 0 || self.train_per_class == 0 || self.val_per_class == 0 || self.image_size < 8 {
            return Err(DatasetError::Config(format!(
                "a synthetic dataset needs classes, images per class and an image size of at least 8: {self:?}"
            )));
        }
        if !(0.0..1.0).contains(&self.missing_fraction) {
            return Err(DatasetError::Config(format!(
                "missing_fraction must be in [0, 1), got {}",
                self.missing_fraction
            )));
        }
        Ok(())
    }
}

/// How a class looks.
#[derive(Debug, Clone, Copy)]
struct Appearance {
    background: [f32; 3],
    foreground: [f32; 3],
    shape: u8,
    scale: f32,
}

/// Where and when a class lives.
#[derive(Debug, Clone, Copy)]
struct Habitat {
    latitude: f64,
    longitude: f64,
    peak_day: f64,
}

const GEO_SPREAD_DEG: f64 = 5.0;
const SEASON_SPREAD_DAYS: f64 = 55.0;
const MIN_REGION_DISTANCE_DEG: f64 = 35.0;
const SHAPES: u8 = 6;

fn random_appearance(rng: &mut ChaCha8Rng, index: usize) -> Appearance {
    let mut colour = || -> [f32; 3] { std::array::from_fn(|_| rng.random_range(20.0f32..235.0)) };
    let background = colour();
    let mut foreground = colour();
    // Keep the shape visible against its background.
    while foreground.iter().zip(&background).map(|(a, b)| (a - b).abs()).sum::<f32>() < 150.0 {
        foreground = std::array::from_fn(|_| rng.random_range(20.0f32..235.0));
    }
    Appearance { background, foreground, shape: (index % SHAPES as usize) as u8, scale: rng.random_range(0.45..0.8) }
}

fn habitats(config: &SynthConfig, rng: &mut ChaCha8Rng) -> Vec<Habitat> {
    let mut out = Vec::with_capacity(config.n_classes());
    let random_centre = |rng: &mut ChaCha8Rng| (rng.random_range(-55.0..65.0), rng.random_range(-170.0..170.0));
    for _ in 0..config.groups {
        let season_offset = rng.random_range(0.0..365.0);
        let mut centres: Vec<(f64, f64)> = Vec::new();
        for member in 0..config.per_group {
            let mut centre = random_centre(rng);
            for _ in 0..1000 {
                if centres.iter().all(|c: &(f64, f64)| {
                    ((c.0 - centre.0).powi(2) + (c.1 - centre.1).powi(2)).sqrt() >= MIN_REGION_DISTANCE_DEG
                }) {
                    break;
                }
                centre = random_centre(rng);
            }
            centres.push(centre);
            let peak_day = (season_offset + member as f64 * 365.0 / config.per_group as f64) % 365.0;
            out.push(Habitat { latitude: centre.0, longitude: centre.1, peak_day });
        }
    }
    for _ in 0..config.distinct {
        let centre = random_centre(rng);
        out.push(Habitat { latitude: centre.0, longitude: centre.1, peak_day: rng.random_range(0.0..365.0) });
    }
    out
}

fn render(appearance: &Appearance, size: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let s = size as f32;
    let jitter = |rng: &mut ChaCha8Rng, c: [f32; 3]| -> [f32; 3] {
        std::array::from_fn(|i| c[i] + rng.random_range(-14.0..14.0))
    };
    let background = jitter(rng, appearance.background);
    let foreground = jitter(rng, appearance.foreground);
    let (cx, cy) = (s / 2.0 + rng.random_range(-s / 8.0..s / 8.0), s / 2.0 + rng.random_range(-s / 8.0..s / 8.0));
    let radius = appearance.scale * s / 2.0 * rng.random_range(0.8..1.2);
    let period = (radius / 2.0).max(2.0);
    let mut image = RgbImage::new(size, size);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let inside = match appearance.shape {
            0 => dx * dx + dy * dy <= radius * radius,
            1 => dx.abs() <= radius * 0.85 && dy.abs() <= radius * 0.85,
            2 => dx.abs() + dy.abs() <= radius,
            3 => dx * dx + dy * dy <= radius * radius && (dy / period).floor() as i32 % 2 == 0,
            4 => dx * dx + dy * dy <= radius * radius && dx * dx + dy * dy >= (radius * 0.55).powi(2),
            _ => dx.abs() <= radius && dy.abs() <= radius * 0.35 || dy.abs() <= radius && dx.abs() <= radius * 0.35,
        };
        let base = if inside { foreground } else { background };
        *pixel = Rgb(std::array::from_fn(|c| (base[c] + rng.random_range(-10.0..10.0)).clamp(0.0, 255.0) as u8));
    }
    image
}

/// Day of year (0-based, 365-day calendar) to month and day.
fn month_day(day_of_year: usize) -> (u8, u8) {
    const DAYS: [usize; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut remaining = day_of_year.min(364);
    for (month, days) in DAYS.iter().enumerate() {
        if remaining < *days {
            return (month as u8 + 1, remaining as u8 + 1);
        }
        remaining -= days;
    }
    (12, 31)
}

struct SampleMeta {
    latitude: Option<f64>,
    longitude: Option<f64>,
    date: Option<String>,
}

fn sample_meta(config: &SynthConfig, habitat: &Habitat, rng: &mut ChaCha8Rng) -> SampleMeta {
    if rng.random_bool(config.missing_fraction) {
        return SampleMeta { latitude: None, longitude: None, date: None };
    }
    let geo = Normal::new(0.0, GEO_SPREAD_DEG).unwrap_or_else(|_| unreachable!("a positive spread"));
    let latitude = (habitat.latitude + geo.sample(rng)).clamp(-89.0, 89.0);
    let longitude = (habitat.longitude + geo.sample(rng) + 540.0).rem_euclid(360.0) - 180.0;
    let date = config.with_dates.then(|| {
        let season = Normal::new(0.0, SEASON_SPREAD_DAYS).unwrap_or_else(|_| unreachable!("a positive spread"));
        let day = (habitat.peak_day + season.sample(rng)).rem_euclid(365.0) as usize;
        let (month, day) = month_day(day);
        let year = rng.random_range(2008..2022);
        format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:00+00:00", rng.random_range(6..20), rng.random_range(0..60))
    });
    SampleMeta {
        latitude: Some((latitude * 1e5).round() / 1e5),
        longitude: Some((longitude * 1e5).round() / 1e5),
        date,
    }
}

/// Writes the dataset under `root` (created if needed). Returns the number of images written.
pub fn generate(config: &SynthConfig, root: &Path) -> Result<usize, DatasetError> {
    config.validate()?;
    let io_err = |path: &Path, e: std::io::Error| DatasetError::Io { path: path.to_owned(), message: e.to_string() };
    let mut layout_rng = ChaCha8Rng::seed_from_u64(derive_seed(&[config.seed, 0]));
    let n_appearances = config.groups + config.distinct;
    let appearances: Vec<Appearance> = (0..n_appearances).map(|idx| random_appearance(&mut layout_rng, idx)).collect();
    let habitats = habitats(config, &mut layout_rng);
    let appearance_of = |class: usize| {
        if class < config.groups * config.per_group {
            class / config.per_group
        } else {
            class - config.groups * config.per_group + config.groups
        }
    };
    let categories: Vec<serde_json::Value> = (0..config.n_classes())
        .map(|class| {
            let (name, supercategory) = if class < config.groups * config.per_group {
                (
                    format!("group{:02}_member{}", class / config.per_group, class % config.per_group),
                    format!("group{:02}", class / config.per_group),
                )
            } else {
                (format!("distinct{:02}", class - config.groups * config.per_group), "distinct".to_owned())
            };
            serde_json::json!({"id": class, "name": name, "supercategory": supercategory})
        })
        .collect();

    let mut next_id = 0u64;
    let mut written = 0;
    for (split, per_class, split_code) in [("train", config.train_per_class, 1u64), ("val", config.val_per_class, 2u64)]
    {
        let mut images = Vec::new();
        let mut annotations = Vec::new();
        for class in 0..config.n_classes() {
            let dir = root.join(split).join(format!("{class:04}"));
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            for k in 0..per_class {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(derive_seed(&[config.seed, split_code, class as u64, k as u64]));
                let image = render(&appearances[appearance_of(class)], config.image_size, &mut rng);
                let meta = sample_meta(config, &habitats[class], &mut rng);
                let id = next_id;
                next_id += 1;
                let file_name = format!("{split}/{class:04}/{id}.jpg");
                let path = root.join(&file_name);
                let file = std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
                image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 92)
                    .encode_image(&image)
                    .map_err(|e| DatasetError::Image { path: path.clone(), message: e.to_string() })?;
                images.push(serde_json::json!({
                    "id": id, "file_name": file_name, "width": config.image_size, "height": config.image_size,
                    "latitude": meta.latitude, "longitude": meta.longitude, "date": meta.date,
                }));
                annotations.push(serde_json::json!({"id": id, "image_id": id, "category_id": class}));
                written += 1;
            }
        }
        let json = serde_json::json!({
            "info": {"description": "dmlp synthetic geo-aware dataset", "config": config},
            "images": images, "annotations": annotations, "categories": categories,
        });
        let path = root.join(format!("{split}.json"));
        std::fs::write(&path, json.to_string()).map_err(|e| io_err(&path, e))?;
    }
    Ok(written)
}

/// A photo-like JPEG of `width × height` for benchmarks (smooth colour fields, a few ellipses,
/// sensor-like noise), deterministic per seed, at JPEG `quality`: about as costly to decode as a
/// natural photo of that size, unlike flat synthetic images.
pub fn photo_like_jpeg(width: u32, height: u32, seed: u64, quality: u8) -> Result<Vec<u8>, DatasetError> {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[seed, 7]));
    let cell = 24u32;
    let (gw, gh) = (width / cell + 2, height / cell + 2);
    let grid: Vec<[f32; 3]> = (0..gw * gh).map(|_| std::array::from_fn(|_| rng.random_range(0.0f32..255.0))).collect();
    let ellipses: Vec<(f32, f32, f32, f32, [f32; 3])> = (0..10)
        .map(|_| {
            (
                rng.random_range(0.0..width as f32),
                rng.random_range(0.0..height as f32),
                rng.random_range(8.0..width as f32 / 4.0),
                rng.random_range(8.0..height as f32 / 4.0),
                std::array::from_fn(|_| rng.random_range(0.0f32..255.0)),
            )
        })
        .collect();
    let noise = Normal::new(0.0f32, 3.0).map_err(|e| DatasetError::Config(e.to_string()))?;
    let mut image = RgbImage::new(width, height);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32 / cell as f32, y as f32 / cell as f32);
        let (ix, iy) = (fx as u32, fy as u32);
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let at = |gx: u32, gy: u32| grid[(gy * gw + gx) as usize];
        let mut value: [f32; 3] = std::array::from_fn(|c| {
            let top = at(ix, iy)[c] * (1.0 - tx) + at(ix + 1, iy)[c] * tx;
            let bottom = at(ix, iy + 1)[c] * (1.0 - tx) + at(ix + 1, iy + 1)[c] * tx;
            top * (1.0 - ty) + bottom * ty
        });
        for (cx, cy, rx, ry, colour) in &ellipses {
            let (dx, dy) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
            if dx * dx + dy * dy <= 1.0 {
                value = *colour;
            }
        }
        *pixel = Rgb(std::array::from_fn(|c| (value[c] + noise.sample(&mut rng)).clamp(0.0, 255.0) as u8));
    }
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(&image)
        .map_err(|e| DatasetError::Config(format!("encoding a benchmark JPEG: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_day_covers_the_year() {
        assert_eq!(month_day(0), (1, 1));
        assert_eq!(month_day(31), (2, 1));
        assert_eq!(month_day(58), (2, 28));
        assert_eq!(month_day(59), (3, 1));
        assert_eq!(month_day(364), (12, 31));
    }
}
