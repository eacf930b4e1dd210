//! Image bytes in, normalised views out: the input pipeline's image half.
//!
//! - [`decode`]: strict decoding to RGB (grayscale, alpha, CMYK handled; truncated files fail),
//!   whole images or the region a view needs (`jpeg`: the crate's own baseline JPEG decoder,
//!   libjpeg-turbo's arithmetic, decoding only down to the region's last row and only its
//!   blocks, DCT-scaled by 4 or 8 where the view allows, so that its pixels equal PIL's).
//! - [`transform`]: torchvision's `RandomResizedCrop` + flip, `Resize` + `CenterCrop` and
//!   `TenCrop`, several views per image for multi-scale tests, resized with Pillow's filter and
//!   normalised straight into a batch buffer.
//! - [`augment`]: DeiT's training augmentations (timm's RandAugment and random erasing), for
//!   the transformer recipe.
//! - [`orient`]: pixels turned as an EXIF orientation says (for photos shown as a gallery shows
//!   them; training reads pixels as stored, as PIL and the reference do).
//!
//! Architecture invariant: knows image files and pixels only: no dataset formats, records,
//! labels or locations (those are `dmlp-datasets`, which builds batches on top of this), no
//! tensor library. Errors name the file.

pub mod augment;
pub mod decode;
mod jpeg;
mod orientation;
pub mod transform;

use std::path::PathBuf;

pub use augment::{RandAugment, RandomErasing};
pub use decode::{decode_rgb, decode_rgb_checked, read_bytes};
pub use orientation::orient;
pub use transform::{Augment, Interpolation, Normalization, Renderer, Transform};

/// What can be wrong with an image or a transform.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}
