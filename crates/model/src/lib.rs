//! The classifier of Dynamic MLP and its weights.
//!
//! [`Classifier`] composes a backbone ([`dmlp_backbones`]), the location encoder and fusion head
//! ([`dmlp_fusion`]) and the final `fc` layer, from a [`ModelConfig`] (TOML or JSON):
//!
//! ```text
//! image [B,3,H,W] ─backbone─▶ features [B,F] ─┐
//! loc [B,cin] ─loc_net─▶ loc_features [B,d] ──┴─loc_att─▶ fused [B,F] ─fc─▶ logits [B,C]
//! ```
//!
//! Without a fusion head it is the image-only baseline (`fc` straight on the pooled features);
//! without a backbone it is a head trained on precomputed pooled features.
//!
//! Parameter names are the reference's `state_dict` keys, so [`weights`] loads the reference's
//! checkpoints (safetensors in F32/F16/BF16, PyTorch `.pth` files, the reference `train.py`
//! layout `{epoch, model, optimizer}` with DataParallel's `module.` prefix) without renaming.
//! Missing keys, unexpected keys and wrong shapes are reported by name.
//!
//! Architecture invariant: no dataset formats and no training loop here; no environment
//! variables, no network.

mod classifier;
mod config;
mod params;
mod pickle_guard;
mod pretrained;
pub mod weights;

pub use classifier::{Classifier, ClassifierOutput};
pub use config::{ModelConfig, ModelDType};
pub use params::ParamCounts;
pub use pretrained::{PretrainedLoad, SkipReason};
pub use weights::{LoadPolicy, LoadReport, UnusedKeys, WeightsFile};

use std::path::PathBuf;

/// Everything that can go wrong building a model or loading its weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error("{path}: cannot read weights: {message}")]
    WeightsFile { path: PathBuf, message: String },
    #[error("{path}: weights do not fit the model:\n{details}")]
    WeightsMismatch { path: PathBuf, details: String },
    #[error("bad input: {0}")]
    Input(String),
    #[error(transparent)]
    Fusion(#[from] dmlp_fusion::FusionError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA needs a build with the `cuda` feature.
pub fn parse_device(name: &str) -> Result<candle_core::Device, ModelError> {
    let bad = || ModelError::Config(format!("bad device {name:?}: expected cpu or cuda:N"));
    if name == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = match name {
        "cuda" => 0,
        _ => name.strip_prefix("cuda:").ok_or_else(bad)?.parse::<usize>().map_err(|_| bad())?,
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(ModelError::Config(format!(
            "device {name} asked for, but this build has no CUDA support: rebuild with --features cuda"
        )));
    }
    #[cfg(feature = "cuda")]
    return Ok(dmlp_nn::cuda_device(ordinal)?);
    #[cfg(not(feature = "cuda"))]
    Ok(candle_core::Device::new_cuda(ordinal)?)
}
