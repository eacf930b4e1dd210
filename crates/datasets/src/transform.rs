//! Decoding and the reference's image transforms (torchvision semantics), written straight into a
//! batch buffer as normalised CHW floats.
//!
//! - training: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`, then a horizontal
//!   flip with probability ½;
//! - evaluation: `Resize(resize)` (shorter side to `resize`, the longer to
//!   `int(resize · long / short)`), then `CenterCrop(size)` (offsets rounded half to even, as
//!   Python's `round`).
//!
//! Resizing is bilinear with antialiasing on downscaling (the `image` crate's triangle filter,
//! close to PIL's `BILINEAR` but not bit-exact).

use std::path::Path;

use image::imageops::FilterType;
use image::{ImageReader, RgbImage};
use rand::Rng;

use crate::DatasetError;

/// Per-channel normalisation of images scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// What to do to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// RandomResizedCrop to `size` and a random horizontal flip.
    Train { size: u32 },
    /// Resize the shorter side to `resize`, centre-crop `size`.
    Eval { size: u32, resize: u32 },
}

impl Transform {
    /// The evaluation transform for `size` with the reference's ratio (`256 / 224`).
    pub fn eval_for(size: u32) -> Self {
        Transform::Eval { size, resize: (f64::from(size) * 256.0 / 224.0).round() as u32 }
    }

    pub fn size(&self) -> u32 {
        match *self {
            Transform::Train { size } | Transform::Eval { size, .. } => size,
        }
    }
}

/// Decodes any supported file (JPEG, PNG) to 8-bit RGB: grayscale is replicated, alpha dropped,
/// CMYK converted.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, DatasetError> {
    let image_err = |message: String| DatasetError::Image { path: path.to_owned(), message };
    let reader =
        ImageReader::open(path).map_err(|e| DatasetError::Io { path: path.to_owned(), message: e.to_string() })?;
    let reader = reader.with_guessed_format().map_err(|e| image_err(e.to_string()))?;
    let image = reader.decode().map_err(|e| image_err(e.to_string()))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(image_err("the image is empty".into()));
    }
    Ok(image.to_rgb8())
}

/// torchvision's `RandomResizedCrop.get_params`: `(left, top, width, height)` of the crop.
pub fn random_resized_crop_box(width: u32, height: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
    let (w_f, h_f) = (f64::from(width), f64::from(height));
    let area = w_f * h_f;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(0.08..1.0);
        let aspect = rng.random_range(log_lo..log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as u32;
        let h = (target_area / aspect).sqrt().round_ties_even() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (left, top, w, h);
        }
    }
    // Fallback: a centre crop with the aspect ratio clamped to [3/4, 4/3].
    let in_ratio = w_f / h_f;
    let (w, h) = if in_ratio < 3.0 / 4.0 {
        (width, (w_f / (3.0 / 4.0)).round_ties_even() as u32)
    } else if in_ratio > 4.0 / 3.0 {
        ((h_f * 4.0 / 3.0).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.min(width), h.min(height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// torchvision's `Resize(resize)` sizes: the shorter side to `resize`, the longer scaled and
/// truncated.
pub fn resized_dims(width: u32, height: u32, resize: u32) -> (u32, u32) {
    if width <= height {
        (resize, (f64::from(resize) * f64::from(height) / f64::from(width)) as u32)
    } else {
        ((f64::from(resize) * f64::from(width) / f64::from(height)) as u32, resize)
    }
}

/// Applies `transform` to `image` and writes normalised CHW floats into `out`
/// (`3 · size · size` values).
pub fn apply(image: &RgbImage, transform: Transform, norm: &Normalization, rng: &mut impl Rng, out: &mut [f32]) {
    let (pixels, flip) = match transform {
        Transform::Train { size } => {
            let (left, top, w, h) = random_resized_crop_box(image.width(), image.height(), rng);
            let crop = image::imageops::crop_imm(image, left, top, w, h).to_image();
            let flip = rng.random_bool(0.5);
            (image::imageops::resize(&crop, size, size, FilterType::Triangle), flip)
        }
        Transform::Eval { size, resize } => {
            let (w, h) = resized_dims(image.width(), image.height(), resize.max(size));
            let resized = image::imageops::resize(image, w, h, FilterType::Triangle);
            let top = (f64::from(h - size) / 2.0).round_ties_even() as u32;
            let left = (f64::from(w - size) / 2.0).round_ties_even() as u32;
            (image::imageops::crop_imm(&resized, left, top, size, size).to_image(), false)
        }
    };
    write_normalized(&pixels, flip, norm, out);
}

fn write_normalized(pixels: &RgbImage, flip: bool, norm: &Normalization, out: &mut [f32]) {
    let (w, h) = (pixels.width() as usize, pixels.height() as usize);
    assert_eq!(out.len(), 3 * w * h, "batch slot size");
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| -norm.mean[c] / norm.std[c]);
    for (y, row) in pixels.rows().enumerate() {
        for (x, pixel) in row.enumerate() {
            let dst_x = if flip { w - 1 - x } else { x };
            for c in 0..3 {
                out[c * w * h + y * w + dst_x] = f32::from(pixel.0[c]) * scale[c] + shift[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn crop_boxes_respect_scale_ratio_and_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (w, h) in [(500, 375), (375, 500), (64, 64), (3000, 40)] {
            for _ in 0..200 {
                let (left, top, cw, ch) = random_resized_crop_box(w, h, &mut rng);
                assert!(cw > 0 && ch > 0 && left + cw <= w && top + ch <= h, "{w}x{h}: {left} {top} {cw} {ch}");
            }
        }
        // 3000 × 10 admits no sampled crop (its height would exceed 10): the fallback keeps the
        // height, takes width round(10 · 4/3) = 13, centred at (3000 − 13) // 2.
        for _ in 0..50 {
            assert_eq!(random_resized_crop_box(3000, 10, &mut rng), (1493, 0, 13, 10));
        }
    }

    #[test]
    fn eval_sizes_follow_torchvision() {
        assert_eq!(resized_dims(500, 375, 256), (341, 256));
        assert_eq!(resized_dims(375, 500, 256), (256, 341));
        assert_eq!(Transform::eval_for(224), Transform::Eval { size: 224, resize: 256 });
        assert_eq!(Transform::eval_for(32), Transform::Eval { size: 32, resize: 37 });
    }

    #[test]
    fn normalisation_and_flip_write_chw() {
        let mut image = RgbImage::new(2, 1);
        image.put_pixel(0, 0, image::Rgb([255, 0, 51]));
        image.put_pixel(1, 0, image::Rgb([0, 255, 0]));
        let norm = Normalization { mean: [0.5; 3], std: [0.5; 3] };
        let mut out = vec![0f32; 6];
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        write_normalized(&image, false, &norm, &mut out);
        assert!(close(&out, &[1.0, -1.0, -1.0, 1.0, -0.6, -1.0]), "{out:?}");
        write_normalized(&image, true, &norm, &mut out);
        assert!(close(&out, &[-1.0, 1.0, 1.0, -1.0, -1.0, -0.6]), "{out:?}");
    }
}
