//! The location side of Dynamic MLP: the location encoder and the fusion heads.
//!
//! - [`FcNet`]: the reference's location encoder (`loc_net`, copied from PriorsNet): a linear
//!   layer, four residual layers with dropout, and a bias-free projection to `mlp_d`.
//! - [`FusionModule`]: the reference's `loc_att`, which projects the pooled image vector to
//!   `mlp_d`, runs `mlp_n` fusion blocks that each see the location features, projects back to the
//!   image width, normalises and adds the image vector.
//! - The blocks ([`FusionKind`]): Dynamic MLP versions A, B and C (C is the reference's default),
//!   and the three single-dimension baselines of the supplement's Table S4 (concatenation,
//!   addition, multiplication) at Dynamic MLP-C's parameter count ([`matched`]), Table S3's
//!   attention variants ([`attention`]) and Table S5's "†" variants ([`dagger`]). The paper does
//!   not spell those baselines out: ours are a **reconstruction** (spec §12), documented in each
//!   module, with the parameter counts set beside the paper's.
//! - [`FusionHead`]: `loc_net` and `loc_att` together, what the classifier puts between the
//!   pooled image features and `fc`.
//!
//! Parameter names are the reference's `state_dict` keys (`loc_net.feats.0.weight`,
//! `loc_att.conv2.0.dynamic_conv.conv22.weight`, …).
//!
//! Architecture invariant: fusion sees a feature vector and a location vector only; it knows
//! nothing of images, backbones or datasets.

pub mod attention;
mod blocks;
pub mod dagger;
mod dynamic_mlp;
mod fcnet;
mod head;
pub mod matched;

pub use blocks::Basic1d;
pub use dynamic_mlp::{DynamicMlpA, DynamicMlpB, DynamicMlpC};
pub use fcnet::{FCNET_HIDDEN, FcNet, FcResLayer};
pub use head::{FusionConfig, FusionHead, FusionKind, FusionModule, FusionOutput};

/// Errors in building a fusion head from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    #[error("invalid fusion configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
