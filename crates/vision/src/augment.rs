//! The training augmentations of DeiT's recipe, which PVT's and Swin's training code use (timm's
//! `create_transform(is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)`):
//!
//! - [`RandAugment`]: timm's `rand_augment_transform` (`timm/data/auto_augment.py`) on the
//!   cropped, flipped RGB pixels: `n` ops drawn with replacement from its 15, each applied with
//!   probability `p` at a magnitude drawn from N(m, mstd²) and clipped to [0, 10]. The
//!   photometric ops follow Pillow's arithmetic (`ImageOps`, `ImageEnhance`: LUTs, truncating
//!   blends, the 3×3 smoothing kernel with its border left alone); the geometric ones (rotate,
//!   shear, translate) map each output pixel's centre through the inverse affine transform with
//!   Pillow's transform filters (bilinear, or bicubic as DeiT's recipe asks through timm),
//!   filling outside the image with the ImageNet mean (124, 116, 104, timm's `img_mean`).
//!   Against Pillow 13 (a fixture `xtask/python/make_augment_cases.py` made through timm's own
//!   op functions), every op's pixels are equal.
//! - [`RandomErasing`]: timm's `RandomErasing(probability, mode="pixel")` on the normalised
//!   floats: one box of 2–33 % of the area and aspect ratio in [0.3, 3.33] (10 tries), filled
//!   with N(0, 1) noise per pixel and channel.
//!
//! Random draws come from the image's own stream, so a run is reproducible whatever the number
//! of loader workers; they are not timm's draws (Python's `random` and NumPy's).

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::VisionError;

/// timm's `img_mean` fill: `round(255 · ImageNet mean)`.
const FILL: [u8; 3] = [124, 116, 104];

/// The 15 operations of timm's `_RAND_TRANSFORMS` / `_RAND_INCREASING_TRANSFORMS`, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    Solarize,
    SolarizeAdd,
    Color,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

const OPS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::Posterize,
    Op::Solarize,
    Op::SolarizeAdd,
    Op::Color,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateXRel,
    Op::TranslateYRel,
];

/// timm's RandAugment, parsed from its config string (`rand-m9-mstd0.5-inc1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandAugment {
    /// The geometric ops' filter: timm passes the transform's interpolation to Pillow (bicubic
    /// in DeiT's recipe; [`RandAugment::parse`] starts bilinear, timm's `create_transform`
    /// default).
    pub interpolation: crate::Interpolation,
    /// `m`: the magnitude, 0–10 (default 10).
    pub magnitude: f64,
    /// `n`: ops per image (default 2).
    pub num_ops: usize,
    /// `mstd`: the magnitude's standard deviation (default 0; over 100, uniform in [0, m]).
    pub magnitude_std: f64,
    /// `mmax`: the magnitude's upper clip (default 10).
    pub magnitude_max: f64,
    /// `inc`: the ops whose severity increases with the magnitude (`inc1`, DeiT's choice).
    pub increasing: bool,
    /// `p`: each op's probability (default 0.5).
    pub prob: f64,
}

impl RandAugment {
    /// Parses timm's config string: `rand` then dash-separated `m<int>`, `n<int>`,
    /// `mstd<float>`, `mmax<int>`, `inc<0|1>`, `p<float>` in any order. Weighted op sets
    /// (`t…`) are refused.
    pub fn parse(config: &str) -> Result<Self, VisionError> {
        let bad = |why: String| VisionError::Config(format!("rand_augment {config:?}: {why}"));
        let mut sections = config.split('-');
        if sections.next() != Some("rand") {
            return Err(bad("must start with \"rand\" (timm's RandAugment string, e.g. rand-m9-mstd0.5-inc1)".into()));
        }
        let mut out = RandAugment {
            interpolation: crate::Interpolation::Bilinear,
            magnitude: 10.0,
            num_ops: 2,
            magnitude_std: 0.0,
            magnitude_max: 10.0,
            increasing: false,
            prob: 0.5,
        };
        for section in sections {
            let split =
                section.find(|c: char| c.is_ascii_digit()).ok_or_else(|| bad(format!("{section:?} has no value")))?;
            let (key, value) = section.split_at(split);
            let number = |what: &str| -> Result<f64, VisionError> {
                let v: f64 = value.parse().map_err(|_| bad(format!("{key}: {value:?} is not a number")))?;
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(format!("{what} must be a finite non-negative number, got {value}")));
                }
                Ok(v)
            };
            let integer = |what: &str| -> Result<usize, VisionError> {
                value.parse().map_err(|_| bad(format!("{what} must be a whole number, got {value:?}")))
            };
            match key {
                "m" => out.magnitude = integer("m")? as f64,
                "n" => out.num_ops = integer("n")?,
                "mstd" => {
                    let std = number("mstd")?;
                    out.magnitude_std = if std > 100.0 { f64::INFINITY } else { std };
                }
                "mmax" => out.magnitude_max = integer("mmax")? as f64,
                "inc" => out.increasing = integer("inc")? != 0,
                "p" => {
                    out.prob = number("p")?;
                    if out.prob > 1.0 {
                        return Err(bad(format!("p is a probability, got {}", out.prob)));
                    }
                }
                _ => return Err(bad(format!("unknown section {section:?} (m, n, mstd, mmax, inc, p)"))),
            }
        }
        if out.num_ops > 16 {
            return Err(bad(format!("n = {} ops per image is more than 16", out.num_ops)));
        }
        Ok(out)
    }

    /// Applies the augmentation to the RGB pixels `image` (`width · height · 3`, row-major).
    pub fn apply<R: Rng + ?Sized>(&self, image: &mut [u8], width: usize, height: usize, rng: &mut R) {
        for _ in 0..self.num_ops {
            let op = OPS[rng.random_range(0..OPS.len())];
            if self.prob < 1.0 && rng.random::<f64>() > self.prob {
                continue;
            }
            let magnitude = self.draw_magnitude(rng);
            self.apply_op(op, magnitude, image, width, height, rng);
        }
    }

    fn draw_magnitude<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let m = if self.magnitude_std == f64::INFINITY {
            rng.random_range(0.0..=self.magnitude)
        } else if self.magnitude_std > 0.0 {
            Normal::new(self.magnitude, self.magnitude_std).map_or(self.magnitude, |n| n.sample(rng))
        } else {
            self.magnitude
        };
        m.clamp(0.0, self.magnitude_max)
    }

    fn apply_op<R: Rng + ?Sized>(
        &self,
        op: Op,
        magnitude: f64,
        image: &mut [u8],
        width: usize,
        height: usize,
        rng: &mut R,
    ) {
        let level = magnitude / 10.0;
        let mut negate = |v: f64| if rng.random::<f64>() > 0.5 { -v } else { v };
        match op {
            Op::AutoContrast => auto_contrast(image),
            Op::Equalize => equalize(image),
            Op::Invert => apply_lut(image, &std::array::from_fn(|i| 255 - i as u8)),
            Op::Rotate => rotate(image, width, height, negate(level * 30.0), self.interpolation),
            Op::Posterize => {
                let bits = (level * 4.0) as u32;
                posterize(image, if self.increasing { 4 - bits.min(4) } else { bits });
            }
            Op::Solarize => {
                let thresh = ((level * 256.0) as u32).min(256);
                solarize(image, if self.increasing { 256 - thresh } else { thresh });
            }
            Op::SolarizeAdd => {
                let add = ((level * 110.0) as u32).min(128);
                apply_lut(
                    image,
                    &std::array::from_fn(|i| if i < 128 { (i as u32 + add).min(255) as u8 } else { i as u8 }),
                );
            }
            Op::Color | Op::Contrast | Op::Brightness | Op::Sharpness => {
                let factor = if self.increasing { (1.0 + negate(level * 0.9)).max(0.1) } else { level * 1.8 + 0.1 };
                enhance(op, image, width, height, factor as f32);
            }
            Op::ShearX => {
                let f = negate(level * 0.3);
                affine(image, width, height, [1.0, f, 0.0, 0.0, 1.0, 0.0], self.interpolation);
            }
            Op::ShearY => {
                let f = negate(level * 0.3);
                affine(image, width, height, [1.0, 0.0, 0.0, f, 1.0, 0.0], self.interpolation);
            }
            Op::TranslateXRel => {
                let pixels = negate(level * 0.45) * width as f64;
                affine(image, width, height, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], self.interpolation);
            }
            Op::TranslateYRel => {
                let pixels = negate(level * 0.45) * height as f64;
                affine(image, width, height, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], self.interpolation);
            }
        }
    }
}

fn apply_lut(image: &mut [u8], lut: &[u8; 256]) {
    for v in image.iter_mut() {
        *v = lut[*v as usize];
    }
}

fn channel_histograms(image: &[u8]) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for px in image.chunks_exact(3) {
        for c in 0..3 {
            h[c][px[c] as usize] += 1;
        }
    }
    h
}

fn apply_channel_luts(image: &mut [u8], luts: &[[u8; 256]; 3]) {
    for px in image.chunks_exact_mut(3) {
        for c in 0..3 {
            px[c] = luts[c][px[c] as usize];
        }
    }
}

/// `ImageOps.autocontrast(img)` (cutoff 0): each channel's range stretched to 0–255.
fn auto_contrast(image: &mut [u8]) {
    let hist = channel_histograms(image);
    let luts = std::array::from_fn(|c| {
        let h = &hist[c];
        let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
        let hi = h.iter().rposition(|&n| n > 0).unwrap_or(255);
        if hi <= lo {
            return std::array::from_fn(|i| i as u8);
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        std::array::from_fn(|i| (i as f64 * scale + offset).clamp(0.0, 255.0) as i64 as u8)
    });
    apply_channel_luts(image, &luts);
}

/// `ImageOps.equalize(img)`: Pillow's per-channel histogram equalisation.
fn equalize(image: &mut [u8]) {
    let hist = channel_histograms(image);
    let luts = std::array::from_fn(|c| {
        let h = &hist[c];
        let used: Vec<u64> = h.iter().copied().filter(|&n| n > 0).collect();
        let identity = std::array::from_fn(|i| i as u8);
        if used.len() <= 1 {
            return identity;
        }
        let step = (used.iter().sum::<u64>() - used[used.len() - 1]) / 255;
        if step == 0 {
            return identity;
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[i];
            v
        })
    });
    apply_channel_luts(image, &luts);
}

/// `ImageOps.posterize(img, bits)`: keeps the top `bits` bits (8 or more: unchanged).
fn posterize(image: &mut [u8], bits: u32) {
    if bits >= 8 {
        return;
    }
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    apply_lut(image, &std::array::from_fn(|i| i as u8 & mask));
}

/// `ImageOps.solarize(img, thresh)`: values at or above `thresh` inverted.
fn solarize(image: &mut [u8], thresh: u32) {
    apply_lut(image, &std::array::from_fn(|i| if (i as u32) < thresh { i as u8 } else { 255 - i as u8 }));
}

/// Pillow's `convert("L")`: `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16`.
fn luma(px: &[u8]) -> u8 {
    ((u32::from(px[0]) * 19595 + u32::from(px[1]) * 38470 + u32::from(px[2]) * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.{Color, Contrast, Brightness, Sharpness}(img).enhance(factor)`:
/// `Image.blend(degenerate, img, factor)`, truncating as Pillow's blend does.
fn enhance(op: Op, image: &mut [u8], width: usize, height: usize, factor: f32) {
    let blend = |degenerate: u8, v: u8| -> u8 {
        let t = f32::from(degenerate) + factor * (f32::from(v) - f32::from(degenerate));
        if t <= 0.0 {
            0
        } else if t >= 255.0 {
            255
        } else {
            t as u8
        }
    };
    match op {
        Op::Color => {
            for px in image.chunks_exact_mut(3) {
                let gray = luma(px);
                for v in px.iter_mut() {
                    *v = blend(gray, *v);
                }
            }
        }
        Op::Contrast => {
            let pixels = (image.len() / 3).max(1) as f64;
            let sum: u64 = image.chunks_exact(3).map(|px| u64::from(luma(px))).sum();
            let mean = (sum as f64 / pixels + 0.5) as u8;
            for v in image.iter_mut() {
                *v = blend(mean, *v);
            }
        }
        Op::Brightness => {
            for v in image.iter_mut() {
                *v = blend(0, *v);
            }
        }
        Op::Sharpness => {
            let smooth = smoothed(image, width, height);
            for (v, s) in image.iter_mut().zip(smooth) {
                *v = blend(s, *v);
            }
        }
        _ => unreachable!("not an enhancement"),
    }
}

/// `img.filter(ImageFilter.SMOOTH)`: the 3×3 kernel `[1 1 1; 1 5 1; 1 1 1] / 13`, rounded, the
/// one-pixel border copied unchanged (Pillow's 3×3 filter leaves it).
fn smoothed(image: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = image.to_vec();
    if width < 3 || height < 3 {
        return out;
    }
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            for c in 0..3 {
                let mut sum = 0.0f32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let weight = if dx == 1 && dy == 1 { 5.0 } else { 1.0 };
                        sum += weight * f32::from(image[((y + dy - 1) * width + x + dx - 1) * 3 + c]);
                    }
                }
                out[(y * width + x) * 3 + c] = (sum / 13.0 + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `img.rotate(degrees, fillcolor=FILL)`: counter-clockwise about the centre `(w/2, h/2)`.
fn rotate(image: &mut [u8], width: usize, height: usize, degrees: f64, filter: crate::Interpolation) {
    let angle = -degrees.to_radians();
    // Pillow rounds the matrix to 15 decimals (so quarter turns are exact).
    let round15 = |v: f64| (v * 1e15).round() / 1e15;
    let (cos, sin) = (round15(angle.cos()), round15(angle.sin()));
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    // Pillow: matrix (cos, sin, ·, −sin, cos, ·) with the translation that keeps the centre.
    let c = cos * -cx + sin * -cy + cx;
    let f = -sin * -cx + cos * -cy + cy;
    affine(image, width, height, [cos, sin, c, -sin, cos, f], filter);
}

/// `img.transform(size, AFFINE, (a, b, c, d, e, f), resample, fillcolor=FILL)`: output pixel
/// `(x, y)` samples the input at `(a·x′ + b·y′ + c, d·x′ + e·y′ + f)`, `(x′, y′)` its centre
/// `(x + ½, y + ½)`, with Pillow's transform filters (`Geometry.c`): bilinear, or its bicubic
/// (the cubic with a = −1, not the resize's −0.5), between input pixel centres with the edge
/// pixels repeated, clipped and truncated to an integer; outside the image, the fill.
fn affine(image: &mut [u8], width: usize, height: usize, [a, b, c, d, e, f]: [f64; 6], filter: crate::Interpolation) {
    let src = image.to_vec();
    let (w, h) = (width as f64, height as f64);
    let clip_x = |v: i64| v.clamp(0, width as i64 - 1) as usize;
    let pixel = |xx: usize, yy: usize, ch: usize| f64::from(src[(yy * width + xx) * 3 + ch]);
    for y in 0..height {
        for x in 0..width {
            let (xo, yo) = (x as f64 + 0.5, y as f64 + 0.5);
            let (xi, yi) = (a * xo + b * yo + c, d * xo + e * yo + f);
            let out = &mut image[(y * width + x) * 3..(y * width + x) * 3 + 3];
            if !(0.0..w).contains(&xi) || !(0.0..h).contains(&yi) {
                out.copy_from_slice(&FILL);
                continue;
            }
            let (fx, fy) = (xi - 0.5, yi - 0.5);
            let (x0, y0) = (fx.floor() as i64, fy.floor() as i64);
            let (dx, dy) = (fx - x0 as f64, fy - y0 as f64);
            // The filter's rows, once per pixel: the first clipped, those past the bottom
            // repeating the last one read, as Pillow's filters do.
            let taps = if filter == crate::Interpolation::Bicubic { 4 } else { 2 };
            let first = if taps == 4 { y0 - 1 } else { y0 };
            let mut r = [first.clamp(0, height as i64 - 1) as usize; 4];
            for k in 1..taps {
                let row = first + k as i64;
                r[k] = if (0..height as i64).contains(&row) { row as usize } else { r[k - 1] };
            }
            for (ch, value) in out.iter_mut().enumerate() {
                let v = match filter {
                    crate::Interpolation::Bilinear => {
                        let (xa, xb) = (clip_x(x0), clip_x(x0 + 1));
                        let lerp = |p: f64, q: f64, t: f64| p + (q - p) * t;
                        let top = lerp(pixel(xa, r[0], ch), pixel(xb, r[0], ch), dx);
                        let bottom = lerp(pixel(xa, r[1], ch), pixel(xb, r[1], ch), dx);
                        lerp(top, bottom, dy)
                    }
                    crate::Interpolation::Bicubic => {
                        let xs = [clip_x(x0 - 1), clip_x(x0), clip_x(x0 + 1), clip_x(x0 + 2)];
                        let cubic = |v: [f64; 4], t: f64| {
                            let (p1, p2) = (v[1], -v[0] + v[2]);
                            let p3 = 2.0 * (v[0] - v[1]) + v[2] - v[3];
                            let p4 = -v[0] + v[1] - v[2] + v[3];
                            p1 + t * (p2 + t * (p3 + t * p4))
                        };
                        let along = |row: usize| cubic(xs.map(|xx| pixel(xx, row, ch)), dx);
                        cubic([along(r[0]), along(r[1]), along(r[2]), along(r[3])], dy)
                    }
                };
                *value = if v <= 0.0 {
                    0
                } else if v >= 255.0 {
                    255
                } else {
                    v as u8
                };
            }
        }
    }
}

/// timm's `RandomErasing(probability, mode="pixel", max_count=1)` on one normalised CHW image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomErasing {
    pub probability: f64,
}

impl RandomErasing {
    const MIN_AREA: f64 = 0.02;
    const MAX_AREA: f64 = 1.0 / 3.0;
    const LOG_ASPECT: (f64, f64) = (-1.2039728043259361, 1.2039728043259361); // ln 0.3, ln(1/0.3)

    /// Erases one box of `image` (`[3, size, size]`) with probability `probability`.
    pub fn apply<R: Rng + ?Sized>(&self, image: &mut [f32], size: usize, rng: &mut R) {
        if self.probability <= 0.0 || rng.random::<f64>() > self.probability {
            return;
        }
        let area = (size * size) as f64;
        for _ in 0..10 {
            let target = rng.random_range(Self::MIN_AREA..Self::MAX_AREA) * area;
            let aspect = rng.random_range(Self::LOG_ASPECT.0..Self::LOG_ASPECT.1).exp();
            let h = (target * aspect).sqrt().round() as usize;
            let w = (target / aspect).sqrt().round() as usize;
            if w < size && h < size && w > 0 && h > 0 {
                let top = rng.random_range(0..=size - h);
                let left = rng.random_range(0..=size - w);
                let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
                for c in 0..3 {
                    for y in top..top + h {
                        let row = &mut image[(c * size + y) * size + left..(c * size + y) * size + left + w];
                        for v in row {
                            *v = normal.sample(rng);
                        }
                    }
                }
                return;
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
    fn parses_timm_strings() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        assert_eq!((ra.magnitude, ra.num_ops, ra.magnitude_std, ra.increasing, ra.prob), (9.0, 2, 0.5, true, 0.5));
        let ra = RandAugment::parse("rand-n3-m7-p1").unwrap();
        assert_eq!((ra.magnitude, ra.num_ops, ra.prob, ra.increasing), (7.0, 3, 1.0, false));
        assert_eq!(RandAugment::parse("rand-mstd101").unwrap().magnitude_std, f64::INFINITY);
        for bad in ["auto-m9", "rand-m9-x3", "rand-mfoo", "rand-p2", "rand-m9-tweights", "rand-n100"] {
            assert!(RandAugment::parse(bad).is_err(), "{bad}");
        }
    }

    fn gradient(width: usize, height: usize) -> Vec<u8> {
        (0..width * height)
            .flat_map(|i| {
                let (x, y) = (i % width, i / width);
                [(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) * 127 / (width + height)) as u8]
            })
            .collect()
    }

    /// Pillow's own outputs (`xtask/python/make_augment_cases.py`): every op equals them, the
    /// geometric ones with Pillow's bilinear and bicubic transform filters.
    #[test]
    fn ops_match_pillow() {
        let cases: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/augment-ops.json")).unwrap();
        let (w, h) = (cases["width"].as_u64().unwrap() as usize, cases["height"].as_u64().unwrap() as usize);
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect()
        };
        let input = bytes(&cases["input"]);
        for case in cases["cases"].as_array().unwrap() {
            let op = case["op"].as_str().unwrap();
            let arg = case["args"].get(0).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let filter = match case["resample"].as_str() {
                Some("bicubic") => crate::Interpolation::Bicubic,
                _ => crate::Interpolation::Bilinear,
            };
            let expected = bytes(&case["expected"]);
            let mut img = input.clone();
            match op {
                "auto_contrast" => auto_contrast(&mut img),
                "equalize" => equalize(&mut img),
                "invert" => apply_lut(&mut img, &std::array::from_fn(|i| 255 - i as u8)),
                "posterize" => posterize(&mut img, arg as u32),
                "solarize" => solarize(&mut img, arg as u32),
                "solarize_add" => {
                    let add = arg as u32;
                    apply_lut(
                        &mut img,
                        &std::array::from_fn(|i| if i < 128 { (i as u32 + add).min(255) as u8 } else { i as u8 }),
                    )
                }
                "color" => enhance(Op::Color, &mut img, w, h, arg as f32),
                "contrast" => enhance(Op::Contrast, &mut img, w, h, arg as f32),
                "brightness" => enhance(Op::Brightness, &mut img, w, h, arg as f32),
                "sharpness" => enhance(Op::Sharpness, &mut img, w, h, arg as f32),
                "rotate" => rotate(&mut img, w, h, arg, filter),
                "shear_x" => affine(&mut img, w, h, [1.0, arg, 0.0, 0.0, 1.0, 0.0], filter),
                "shear_y" => affine(&mut img, w, h, [1.0, 0.0, 0.0, arg, 1.0, 0.0], filter),
                "translate_x_rel" => affine(&mut img, w, h, [1.0, 0.0, arg * w as f64, 0.0, 1.0, 0.0], filter),
                "translate_y_rel" => affine(&mut img, w, h, [1.0, 0.0, 0.0, 0.0, 1.0, arg * h as f64], filter),
                other => panic!("unknown op {other}"),
            }
            let off = img.iter().zip(&expected).filter(|(a, b)| a != b).count();
            assert_eq!(off, 0, "{op}({arg}, {filter:?}): {off} values differ from Pillow's");
        }
    }

    #[test]
    fn geometric_ops_move_pixels_and_fill() {
        let (w, h) = (8, 6);
        let original = gradient(w, h);
        // A zero transform is the identity.
        let mut img = original.clone();
        affine(&mut img, w, h, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], crate::Interpolation::Bilinear);
        assert_eq!(img, original);
        let mut img = original.clone();
        affine(&mut img, w, h, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], crate::Interpolation::Bicubic);
        assert_eq!(img, original);
        // Translating by 2 pixels: output x samples input x + 2; the last two columns fill.
        let mut img = original.clone();
        affine(&mut img, w, h, [1.0, 0.0, 2.0, 0.0, 1.0, 0.0], crate::Interpolation::Bilinear);
        for y in 0..h {
            for x in 0..w {
                let at = (y * w + x) * 3;
                let expected = if x + 2 < w { &original[at + 6..at + 9] } else { &FILL[..] };
                assert_eq!(&img[at..at + 3], expected, "({x}, {y})");
            }
        }
        // Rotating by 180° about the centre mirrors both axes.
        let mut img = original.clone();
        rotate(&mut img, w, h, 180.0, crate::Interpolation::Bicubic);
        for y in 0..h {
            for x in 0..w {
                let (at, from) = ((y * w + x) * 3, ((h - 1 - y) * w + (w - 1 - x)) * 3);
                assert_eq!(&img[at..at + 3], &original[from..from + 3], "({x}, {y})");
            }
        }
    }

    #[test]
    fn rand_augment_changes_images_and_is_seeded() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        let original = gradient(16, 16);
        let run = |seed| {
            let mut img = original.clone();
            ra.apply(&mut img, 16, 16, &mut ChaCha8Rng::seed_from_u64(seed));
            img
        };
        assert_eq!(run(3), run(3));
        let changed = (0..20).filter(|&s| run(s) != original).count();
        // Each of two ops applies with probability ½ (and some, like autocontrast on a full
        // range, change nothing): most but not all images change.
        assert!((8..20).contains(&changed), "{changed} of 20 changed");
    }

    #[test]
    fn random_erasing_erases_one_box_at_its_rate() {
        let size = 32;
        let erasing = RandomErasing { probability: 0.25 };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut erased = 0;
        for _ in 0..400 {
            let mut img = vec![7.0f32; 3 * size * size];
            erasing.apply(&mut img, size, &mut rng);
            let changed = img.iter().filter(|&&v| v != 7.0).count();
            if changed > 0 {
                erased += 1;
                // 2 %–33 % of the area, in all three channels.
                let area = changed as f64 / img.len() as f64;
                assert!((0.015..0.36).contains(&area), "{area}");
            }
        }
        assert!((70..130).contains(&erased), "{erased} of 400 erased at p 0.25");
        let mut img = vec![7.0f32; 3 * size * size];
        RandomErasing { probability: 0.0 }.apply(&mut img, size, &mut rng);
        assert!(img.iter().all(|&v| v == 7.0));
    }
}
