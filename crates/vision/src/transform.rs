//! The reference's image transforms (torchvision semantics), from file bytes straight into a
//! batch buffer as normalised CHW floats.
//!
//! - [`Transform::Train`]: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`, then a
//!   horizontal flip with probability ½, then, with an [`Augment`], DeiT's RandAugment on the
//!   pixels and random erasing on the normalised floats ([`crate::augment`]);
//! - [`Transform::Eval`]: `Resize(resize)` (shorter side to `resize`, the longer to
//!   `int(resize · long / short)`), then `CenterCrop(size)` (offsets rounded half to even, as
//!   Python's `round`);
//! - [`Transform::TenCrop`]: `Resize(resize)`, then `TenCrop(size)`: the four corners and the
//!   centre, then the same five of the mirrored image, in torchvision's order.
//!
//! A multi-scale test is several eval transforms of one image ([`Renderer::render`] takes a list:
//! the file is decoded once, at the resolution the largest view needs). Resizing is Pillow's
//! antialiased bilinear filter (fast_image_resize's `Convolution(Bilinear)`, written after
//! Pillow's), or its bicubic one ([`Interpolation::Bicubic`]: `CatmullRom`, Pillow's cubic with
//! a = −0.5, the transformers' `interpolation="bicubic"`), computed only over the output window: a centre crop resizes just the pixels it
//! keeps, with the filter reaching across the window's edges as a full resize would; a
//! ten-crop resizes the whole image once, unless that is larger than its ten crops together
//! (an extreme aspect ratio), when each crop is resized from its window alone.

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::Rng;

use crate::VisionError;
use crate::augment::{RandAugment, RandomErasing};
use crate::decode::{Decoded, dct_scale_for, decode_region, dimensions};

/// Per-channel normalisation of images scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The resampling filter of every resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// torchvision's default (`InterpolationMode.BILINEAR`, PIL's antialiased bilinear).
    #[default]
    Bilinear,
    /// `InterpolationMode.BICUBIC` (timm's transformer recipes).
    Bicubic,
}

/// The training augmentations after the crop and flip (none by default: the reference's recipe).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    pub rand_augment: Option<RandAugment>,
    pub random_erasing: Option<RandomErasing>,
}

impl Augment {
    pub const NONE: Augment = Augment { rand_augment: None, random_erasing: None };

    fn is_none(&self) -> bool {
        self.rand_augment.is_none() && self.random_erasing.is_none()
    }
}

/// What to do to an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// RandomResizedCrop to `size`, a random horizontal flip, then `augment`.
    Train { size: u32, augment: Augment },
    /// Resize the shorter side to `resize`, centre-crop `size`.
    Eval { size: u32, resize: u32 },
    /// Resize the shorter side to `resize`, then ten `size` crops.
    TenCrop { size: u32, resize: u32 },
}

/// The reference's resize for a crop of `size`: `round(size · 256 / 224)`.
pub fn eval_resize_for(size: u32) -> u32 {
    (f64::from(size) * 256.0 / 224.0).round() as u32
}

impl Transform {
    /// The reference's training transform (crop and flip, no further augmentation).
    pub fn train(size: u32) -> Self {
        Transform::Train { size, augment: Augment::NONE }
    }

    /// The evaluation transform for `size` with the reference's ratio (`256 / 224`).
    pub fn eval_for(size: u32) -> Self {
        Transform::Eval { size, resize: eval_resize_for(size) }
    }

    /// Ten-crop at `size` with the reference's ratio.
    pub fn ten_crop_for(size: u32) -> Self {
        Transform::TenCrop { size, resize: eval_resize_for(size) }
    }

    pub fn size(&self) -> u32 {
        match *self {
            Transform::Train { size, .. } | Transform::Eval { size, .. } | Transform::TenCrop { size, .. } => size,
        }
    }

    /// Crops this transform makes of each image.
    pub fn crops(&self) -> usize {
        if matches!(self, Transform::TenCrop { .. }) { 10 } else { 1 }
    }

    /// Floats one image takes in a batch: `crops · 3 · size²`.
    pub fn floats_per_image(&self) -> usize {
        let size = self.size() as usize;
        self.crops() * 3 * size * size
    }
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

/// Centre-crop offset, as torchvision's `int(round((len - size) / 2.0))`.
fn centre_offset(len: u32, size: u32) -> u32 {
    (f64::from(len - size) / 2.0).round_ties_even() as u32
}

/// One view's geometry, in the file's full-resolution pixels.
#[derive(Debug, Clone)]
enum Plan {
    /// Resize the region `(left, top, width, height)` to `size²`, maybe mirrored. `confine`: the
    /// filter sees only the region, as torchvision's `resized_crop` (crop, then resize) does;
    /// otherwise it reaches past the edges, as a whole-image `Resize` followed by a crop does.
    Region { region: [f64; 4], size: u32, flip: bool, confine: bool, augment: Augment },
    /// Resize the whole image to `resized`, then take `size²` crops at `(x, y, mirrored)`.
    Crops { resized: (u32, u32), size: u32, crops: Vec<(u32, u32, bool)> },
    /// The same crops, each resized on its own from its window of the file (`Region`s that
    /// are not confined): for images whose whole resize would be larger than the crops
    /// together (an extreme aspect ratio), the output is the same and the memory is bounded.
    Windows(Vec<Plan>),
}

impl Plan {
    /// `(width, height)` of the file's region that must stay at full detail.
    fn need(&self, full: (u32, u32)) -> (f64, f64) {
        match self {
            Plan::Region { region, size, .. } => {
                let s = f64::from(*size);
                (s.min(region[2]), s.min(region[3]))
            }
            Plan::Crops { resized, .. } => (f64::from(resized.0.min(full.0)), f64::from(resized.1.min(full.1))),
            Plan::Windows(windows) => {
                windows.iter().map(|w| w.need(full)).fold((0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)))
            }
        }
    }

    /// The file's pixels `(x0, y0, x1, y1)` this view reads when decoded at `1 / scale`: the
    /// region, and for an unconfined resize the filter's reach past it (its support is the
    /// larger of one decoded pixel and the downscaling ratio; two decoded pixels more are kept).
    fn footprint(&self, full: (u32, u32), scale: u32) -> (u32, u32, u32, u32) {
        match self {
            Plan::Region { region, size, confine, .. } => {
                let margin = if *confine {
                    0.0
                } else {
                    let ratio = (region[2] / f64::from(*size)).max(region[3] / f64::from(*size));
                    ratio.max(f64::from(scale)).ceil() + 2.0 * f64::from(scale)
                };
                let clamp = |v: f64, len: u32| v.clamp(0.0, f64::from(len)) as u32;
                (
                    clamp((region[0] - margin).floor(), full.0),
                    clamp((region[1] - margin).floor(), full.1),
                    clamp((region[0] + region[2] + margin).ceil(), full.0),
                    clamp((region[1] + region[3] + margin).ceil(), full.1),
                )
            }
            Plan::Crops { .. } => (0, 0, full.0, full.1),
            Plan::Windows(windows) => footprint(windows, full, scale),
        }
    }
}

/// The smallest box holding every plan's footprint.
fn footprint(plans: &[Plan], full: (u32, u32), scale: u32) -> (u32, u32, u32, u32) {
    plans
        .iter()
        .map(|p| p.footprint(full, scale))
        .fold((full.0, full.1, 0, 0), |a, b| (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3)))
}

fn plan(transform: Transform, (width, height): (u32, u32), rng: &mut impl Rng) -> Plan {
    match transform {
        Transform::Train { size, augment } => {
            let (left, top, w, h) = random_resized_crop_box(width, height, rng);
            let flip = rng.random_bool(0.5);
            Plan::Region { region: [left, top, w, h].map(f64::from), size, flip, confine: true, augment }
        }
        Transform::Eval { size, resize } => {
            let (rw, rh) = resized_dims(width, height, resize.max(size));
            let (left, top) = (centre_offset(rw, size), centre_offset(rh, size));
            // Only the window the crop keeps is resized: source pixels per resized pixel.
            let (fx, fy) = (f64::from(width) / f64::from(rw), f64::from(height) / f64::from(rh));
            let region = [f64::from(left) * fx, f64::from(top) * fy, f64::from(size) * fx, f64::from(size) * fy];
            Plan::Region { region, size, flip: false, confine: false, augment: Augment::NONE }
        }
        Transform::TenCrop { size, resize } => {
            let (rw, rh) = resized_dims(width, height, resize.max(size));
            let whole = u64::from(rw) * u64::from(rh);
            ten_crop_plan((width, height), (rw, rh), size, whole > MAX_RESIZED_PIXELS.min(10 * u64::from(size).pow(2)))
        }
    }
}

/// Ten-crop's plan: the whole image resized to `(rw, rh)` and cropped, or with `windows`, each
/// crop resized from its own window of the file.
fn ten_crop_plan((width, height): (u32, u32), (rw, rh): (u32, u32), size: u32, windows: bool) -> Plan {
    let (right, bottom) = (rw - size, rh - size);
    let five = [(0, 0), (right, 0), (0, bottom), (right, bottom), (centre_offset(rw, size), centre_offset(rh, size))];
    let mut crops: Vec<(u32, u32, bool)> = five.iter().map(|&(x, y)| (x, y, false)).collect();
    // torchvision mirrors the image, then five-crops it: a crop at x of the mirror is the
    // mirror of the crop at rw − size − x.
    crops.extend(five.iter().map(|&(x, y)| (right - x, y, true)));
    if !windows {
        return Plan::Crops { resized: (rw, rh), size, crops };
    }
    // Source pixels per resized pixel, as for the centre crop.
    let (fx, fy) = (f64::from(width) / f64::from(rw), f64::from(height) / f64::from(rh));
    let window = |(x, y, flip): (u32, u32, bool)| {
        let region = [f64::from(x) * fx, f64::from(y) * fy, f64::from(size) * fx, f64::from(size) * fy];
        Plan::Region { region, size, flip, confine: false, augment: Augment::NONE }
    };
    Plan::Windows(crops.into_iter().map(window).collect())
}

/// One output slot per view, each of its view's size (a caller's bug otherwise).
fn check_slots(transforms: &[Transform], out: &[&mut [f32]]) {
    assert_eq!(out.len(), transforms.len(), "one slot per view");
    for (slot, t) in out.iter().zip(transforms) {
        assert_eq!(slot.len(), t.floats_per_image(), "batch slot size");
    }
}

/// The most pixels ten-crop resizes the whole image to (192 MB of RGB); past that, or past the
/// ten crops' own size, each crop is resized from its window alone (a 1 × 16384 file would
/// otherwise ask for 3 GB).
pub const MAX_RESIZED_PIXELS: u64 = 64 << 20;

/// Decodes and transforms images; holds the resizer's scratch buffers, so keep one per thread.
#[derive(Debug)]
pub struct Renderer {
    resizer: Resizer,
    resized: Vec<u8>,
    dct_scaling: bool,
    interpolation: Interpolation,
}

impl Default for Renderer {
    fn default() -> Self {
        Self { resizer: Resizer::new(), resized: Vec::new(), dct_scaling: true, interpolation: Interpolation::Bilinear }
    }
}

impl Renderer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A renderer that resizes with `interpolation`.
    pub fn with_interpolation(interpolation: Interpolation) -> Self {
        Self { interpolation, ..Self::default() }
    }

    /// A renderer that always decodes at full resolution (to compare against).
    pub fn without_dct_scaling() -> Self {
        Self { dct_scaling: false, ..Self::default() }
    }

    /// torchvision's `resized_crop(img, top, left, height, width, [size, size])`, mirrored when
    /// `flip`: the deterministic half of the training transform, into `out` (`3 · size²`).
    pub fn render_crop(
        &mut self,
        bytes: &[u8],
        path: &std::path::Path,
        (left, top, width, height): (u32, u32, u32, u32),
        size: u32,
        flip: bool,
        norm: &Normalization,
        out: &mut [f32],
    ) -> Result<(), VisionError> {
        assert_eq!(out.len(), 3 * (size as usize).pow(2), "batch slot size");
        let full = dimensions(bytes, path)?;
        if left + width > full.0 || top + height > full.1 || width == 0 || height == 0 {
            return Err(VisionError::Config(format!(
                "crop ({left}, {top}, {width}, {height}) is not inside the {}×{} image {}",
                full.0,
                full.1,
                path.display()
            )));
        }
        let region = [left, top, width, height].map(f64::from);
        let plan = Plan::Region { region, size, flip, confine: true, augment: Augment::NONE };
        let plans = std::slice::from_ref(&plan);
        let scale = self.scale_for(plans, full);
        let decoded = decode_region(bytes, path, footprint(plans, full, scale), scale)?;
        self.render_plan(&decoded, &plan, norm, out, path, None)
    }

    /// The DCT scale that keeps every plan's region at full detail.
    fn scale_for(&self, plans: &[Plan], full: (u32, u32)) -> u32 {
        if !self.dct_scaling {
            return 1;
        }
        plans
            .iter()
            .map(|p| {
                let (need_w, need_h) = p.need(full);
                let region = match p {
                    Plan::Region { region, .. } => (region[2], region[3]),
                    Plan::Crops { .. } => (f64::from(full.0), f64::from(full.1)),
                    Plan::Windows(windows) => return self.scale_for(windows, full),
                };
                dct_scale_for(region.0, region.1, need_w, need_h)
            })
            .min()
            .unwrap_or(1)
    }

    /// Writes each view of the file `bytes` (named `path` in errors) into its slot of `out`
    /// (`transforms[k].floats_per_image()` floats for view `k`). Random draws (the training crop
    /// and flip) come from `rng`, in the order of `transforms`.
    pub fn render(
        &mut self,
        bytes: &[u8],
        path: &std::path::Path,
        transforms: &[Transform],
        norm: &Normalization,
        rng: &mut impl Rng,
        out: &mut [&mut [f32]],
    ) -> Result<(), VisionError> {
        check_slots(transforms, out);
        let full = dimensions(bytes, path)?;
        let plans: Vec<Plan> = transforms.iter().map(|t| plan(*t, full, rng)).collect();
        let scale = self.scale_for(&plans, full);
        let decoded = decode_region(bytes, path, footprint(&plans, full, scale), scale)?;
        for (plan, slot) in plans.iter().zip(out.iter_mut()) {
            self.render_plan(&decoded, plan, norm, slot, path, Some(&mut *rng))?;
        }
        Ok(())
    }

    /// As [`Renderer::render`], from pixels already decoded (a photo turned upright by
    /// [`crate::orient`], say) rather than from file bytes; `path` names it in errors.
    pub fn render_image(
        &mut self,
        image: image::RgbImage,
        path: &std::path::Path,
        transforms: &[Transform],
        norm: &Normalization,
        rng: &mut impl Rng,
        out: &mut [&mut [f32]],
    ) -> Result<(), VisionError> {
        check_slots(transforms, out);
        let full = image.dimensions();
        if full.0 == 0 || full.1 == 0 {
            return Err(VisionError::Image { path: path.to_owned(), message: "an image without pixels".into() });
        }
        let decoded = Decoded { image, full_size: full, scale: 1, origin: (0, 0), scaled_size: full, damage: None };
        for (t, slot) in transforms.iter().zip(out.iter_mut()) {
            let plan = plan(*t, full, rng);
            self.render_plan(&decoded, &plan, norm, slot, path, Some(&mut *rng))?;
        }
        Ok(())
    }

    /// Renders one plan into `out`; `rng` draws the augmentations (a plan with any needs one).
    fn render_plan(
        &mut self,
        decoded: &Decoded,
        plan: &Plan,
        norm: &Normalization,
        out: &mut [f32],
        path: &std::path::Path,
        rng: Option<&mut dyn rand::RngCore>,
    ) -> Result<(), VisionError> {
        let lut = Lut::new(norm);
        // Full-resolution coordinates to the decoded pixels' (scaled, and offset by the origin
        // of a decoded region). A DCT-scaled pixel `i` is the 8 × 8 block's `s × s` part at
        // `s·i` (the last one partly outside the image when a side is not a multiple of `s`),
        // so coordinates scale by `1 / s` exactly: stretching the image's `side / s` onto the
        // `ceil(side / s)` pixels (as before session 10) put a view's edge near the image's far
        // side past the region the decoder had read, an error ("crop box out of the image
        // boundaries") on small views of large photos.
        let s = f64::from(decoded.scale);
        let (ox, oy) = (f64::from(decoded.origin.0), f64::from(decoded.origin.1));
        let to_decoded = |r: [f64; 4]| [r[0] / s - ox, r[1] / s - oy, r[2] / s, r[3] / s];
        match plan {
            Plan::Region { region, size, flip, confine, augment } => {
                self.resize(decoded, to_decoded(*region), *confine, (*size, *size), path)?;
                let side = *size as usize;
                match (augment.is_none(), rng) {
                    (true, _) => lut.write(&self.resized, side, (0, 0), side, *flip, out),
                    (false, Some(rng)) => {
                        // timm's order: crop, flip, RandAugment, normalise, erase.
                        if *flip {
                            for row in self.resized.chunks_exact_mut(3 * side) {
                                mirror_row(row);
                            }
                        }
                        if let Some(ra) = &augment.rand_augment {
                            ra.apply(&mut self.resized, side, side, rng);
                        }
                        lut.write(&self.resized, side, (0, 0), side, false, out);
                        if let Some(erasing) = &augment.random_erasing {
                            erasing.apply(out, side, rng);
                        }
                    }
                    (false, None) => unreachable!("augmented plans are drawn with a random stream"),
                }
            }
            Plan::Crops { resized, size, crops } => {
                let whole = [0.0, 0.0, f64::from(decoded.full_size.0), f64::from(decoded.full_size.1)];
                self.resize(decoded, to_decoded(whole), false, *resized, path)?;
                let slot = 3 * (*size as usize).pow(2);
                for (k, &(x, y, flip)) in crops.iter().enumerate() {
                    let view = &mut out[k * slot..(k + 1) * slot];
                    lut.write(&self.resized, resized.0 as usize, (x as usize, y as usize), *size as usize, flip, view);
                }
            }
            Plan::Windows(windows) => {
                let slot = out.len() / windows.len().max(1);
                for (window, view) in windows.iter().zip(out.chunks_exact_mut(slot)) {
                    self.render_plan(decoded, window, norm, view, path, None)?;
                }
            }
        }
        Ok(())
    }

    /// Resizes `region` of the decoded image to `dst` into `self.resized` (RGB bytes); with
    /// `confine`, the filter reads only the pixels the region covers.
    fn resize(
        &mut self,
        decoded: &Decoded,
        region: [f64; 4],
        confine: bool,
        dst: (u32, u32),
        path: &std::path::Path,
    ) -> Result<(), VisionError> {
        let image = &decoded.image;
        let err =
            |e: &dyn std::fmt::Display| VisionError::Image { path: path.to_owned(), message: format!("resize: {e}") };
        let src = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3).map_err(|e| err(&e))?;
        let mut buffer = std::mem::take(&mut self.resized);
        buffer.resize(dst.0 as usize * dst.1 as usize * 3, 0);
        let mut target = Image::from_vec_u8(dst.0, dst.1, buffer, PixelType::U8x3).map_err(|e| err(&e))?;
        let filter = match self.interpolation {
            Interpolation::Bilinear => FilterType::Bilinear,
            Interpolation::Bicubic => FilterType::CatmullRom,
        };
        let alg = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
        let result = if confine {
            // The whole pixels the region touches (all of them, unless decoded scaled down).
            let x0 = region[0].floor().max(0.0);
            let y0 = region[1].floor().max(0.0);
            let x1 = (region[0] + region[2]).ceil().min(f64::from(image.width()));
            let y1 = (region[1] + region[3]).ceil().min(f64::from(image.height()));
            let view = CroppedImage::new(&src, x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
                .map_err(|e| err(&e))?;
            let options = alg.crop(region[0] - x0, region[1] - y0, region[2], region[3]);
            self.resizer.resize(&view, &mut target, &options)
        } else {
            self.resizer.resize(&src, &mut target, &alg.crop(region[0], region[1], region[2], region[3]))
        };
        result.map_err(|e| err(&e))?;
        self.resized = target.into_vec();
        Ok(())
    }
}

/// Mirrors one row of RGB pixels in place.
fn mirror_row(row: &mut [u8]) {
    let n = row.len() / 3;
    for x in 0..n / 2 {
        for c in 0..3 {
            row.swap(3 * x + c, 3 * (n - 1 - x) + c);
        }
    }
}

/// `pixel · 1/(255·std) − mean/std` per channel: the scale and offset, and the same as a table
/// over the 256 pixel values (the vector path computes, the scalar one looks up; the float
/// operations are the same, so the values are too).
struct Lut {
    table: [[f32; 256]; 3],
    scale: [f32; 3],
    offset: [f32; 3],
}

impl Lut {
    fn new(norm: &Normalization) -> Self {
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * norm.std[c]));
        let offset: [f32; 3] = std::array::from_fn(|c| norm.mean[c] / norm.std[c]);
        let table = std::array::from_fn(|c| std::array::from_fn(|v| v as f32 * scale[c] - offset[c]));
        Lut { table, scale, offset }
    }

    /// Writes the `size²` window at `(x0, y0)` of the RGB image `pixels` (row width `width`) as
    /// CHW floats into `out`, mirrored when `flip`.
    fn write(&self, pixels: &[u8], width: usize, (x0, y0): (usize, usize), size: usize, flip: bool, out: &mut [f32]) {
        let plane = size * size;
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        for y in 0..size {
            let row = &pixels[((y0 + y) * width + x0) * 3..((y0 + y) * width + x0 + size) * 3];
            let dst = y * size..(y + 1) * size;
            let (r, g, b) = (&mut r_out[dst.clone()], &mut g_out[dst.clone()], &mut b_out[dst]);
            // SAFETY: `row_avx2` runs only where the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            let done = if avx2 { unsafe { self.row_avx2(row, flip, [r, g, b]) } } else { 0 };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            for (x, px) in row.chunks_exact(3).enumerate().skip(done) {
                let i = if flip { size - 1 - x } else { x };
                r[i] = self.table[0][px[0] as usize];
                g[i] = self.table[1][px[1] as usize];
                b[i] = self.table[2][px[2] as usize];
            }
        }
    }

    /// [`Lut::write`]'s row, eight pixels at a time; returns the pixels done.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn row_avx2(&self, row: &[u8], flip: bool, mut planes: [&mut [f32]; 3]) -> usize {
        use std::arch::x86_64::*;
        let size = row.len() / 3;
        // Per channel: where its bytes sit in the group's first 16 bytes, and in the 16 from
        // byte 8 on (−1: none).
        const PICK: [([i8; 16], [i8; 16]); 3] = [
            (
                [0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
                [-1, -1, -1, -1, -1, -1, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1],
            ),
            (
                [1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
                [-1, -1, -1, -1, -1, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1],
            ),
            (
                [2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
                [-1, -1, -1, -1, -1, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1],
            ),
        ];
        let mut x = 0;
        while x + 8 <= size {
            // SAFETY: the group's 24 bytes, [3x, 3x + 24), are inside `row` (x + 8 ≤ size); each
            // store writes 8 floats inside its plane row (`size` long): at x, or mirrored at
            // size − 8 − x.
            unsafe {
                let lo = _mm_loadu_si128(row.as_ptr().add(3 * x).cast());
                let hi = _mm_loadu_si128(row.as_ptr().add(3 * x + 8).cast());
                for (c, plane) in planes.iter_mut().enumerate() {
                    let (pick_lo, pick_hi) = PICK[c];
                    let bytes = _mm_or_si128(
                        _mm_shuffle_epi8(lo, std::mem::transmute::<[i8; 16], __m128i>(pick_lo)),
                        _mm_shuffle_epi8(hi, std::mem::transmute::<[i8; 16], __m128i>(pick_hi)),
                    );
                    let values = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    let mut v = _mm256_sub_ps(
                        _mm256_mul_ps(values, _mm256_set1_ps(self.scale[c])),
                        _mm256_set1_ps(self.offset[c]),
                    );
                    let at = if flip {
                        v = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0));
                        size - 8 - x
                    } else {
                        x
                    };
                    _mm256_storeu_ps(plane.as_mut_ptr().add(at), v);
                }
            }
            x += 8;
        }
        x
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
        assert_eq!(eval_resize_for(384), 439);
        assert_eq!(Transform::ten_crop_for(224).floats_per_image(), 10 * 3 * 224 * 224);
    }

    #[test]
    fn ten_crop_windows_equal_the_whole_resize_cropped() {
        // A photo-like 97 × 61 image: ten-crop at 32 from a resize to 37, both ways.
        let image = image::RgbImage::from_fn(97, 61, |x, y| {
            let v = |k: u32| ((((x * 7 + y * 13 + k) as f64) * 0.37).sin() * 100.0 + 128.0) as u8;
            image::Rgb([v(0), v(50), v(100)])
        });
        let decoded = Decoded {
            image: image.clone(),
            full_size: (97, 61),
            scale: 1,
            origin: (0, 0),
            scaled_size: (97, 61),
            damage: None,
        };
        let norm = Normalization { mean: [0.0; 3], std: [1.0 / 255.0; 3] };
        let (rw, rh) = resized_dims(97, 61, 37);
        let mut renderer = Renderer::new();
        let render = |renderer: &mut Renderer, windows: bool| {
            let mut out = vec![0f32; 10 * 3 * 32 * 32];
            let plan = ten_crop_plan((97, 61), (rw, rh), 32, windows);
            assert_eq!(matches!(plan, Plan::Windows(_)), windows);
            renderer.render_plan(&decoded, &plan, &norm, &mut out, std::path::Path::new("x"), None).unwrap();
            out
        };
        let (whole, windows) = (render(&mut renderer, false), render(&mut renderer, true));
        // Pixel levels (the normalisation is the identity on 0..=255): within one level, the
        // resize's rounding of its window's offset.
        let worst = whole.iter().zip(&windows).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1.0, "windows differ from the whole resize by {worst} levels");
        // A 1 × 16384 file (whose whole resize would be 256 × 4194304) takes the windows.
        assert!(matches!(
            plan(Transform::ten_crop_for(224), (1, 16384), &mut ChaCha8Rng::seed_from_u64(0)),
            Plan::Windows(_)
        ));
        assert!(matches!(
            plan(Transform::ten_crop_for(224), (500, 375), &mut ChaCha8Rng::seed_from_u64(0)),
            Plan::Crops { .. }
        ));
    }

    #[test]
    fn vector_and_table_normalisation_agree_bit_for_bit() {
        // 21 pixels a row: two groups of eight for the vector path, five for the table.
        let (width, size) = (23, 21);
        let pixels: Vec<u8> = (0..width * width * 3).map(|i| (i * 37 % 256) as u8).collect();
        let lut = Lut::new(&Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] });
        for flip in [false, true] {
            let mut out = vec![0f32; 3 * size * size];
            lut.write(&pixels, width, (1, 2), size, flip, &mut out);
            for c in 0..3 {
                for y in 0..size {
                    for x in 0..size {
                        let v = pixels[((2 + y) * width + 1 + x) * 3 + c];
                        let i = if flip { size - 1 - x } else { x };
                        let got = out[c * size * size + y * size + i];
                        assert_eq!(got.to_bits(), lut.table[c][v as usize].to_bits(), "c {c} ({x}, {y}) flip {flip}");
                    }
                }
            }
        }
    }

    #[test]
    fn normalisation_and_flip_write_chw() {
        let pixels = [255u8, 0, 51, 0, 255, 0];
        let lut = Lut::new(&Normalization { mean: [0.5; 3], std: [0.5; 3] });
        let mut out = vec![0f32; 3];
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        lut.write(&pixels, 2, (0, 0), 1, false, &mut out);
        assert!(close(&out, &[1.0, -1.0, -0.6]), "{out:?}");
        lut.write(&pixels, 2, (1, 0), 1, false, &mut out);
        assert!(close(&out, &[-1.0, 1.0, -1.0]), "{out:?}");
        let mut two = vec![0f32; 12];
        let square = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let unit = Lut::new(&Normalization { mean: [0.0; 3], std: [1.0 / 255.0; 3] });
        unit.write(&square, 2, (0, 0), 2, true, &mut two);
        assert!(close(&two, &[4.0, 1.0, 10.0, 7.0, 5.0, 2.0, 11.0, 8.0, 6.0, 3.0, 12.0, 9.0]), "{two:?}");
    }
}
