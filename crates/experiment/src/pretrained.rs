//! `[model] pretrained`: find the file, load the backbone from it, say what happened.
//!
//! The one path every caller takes (`dmlp train`, `reproduce`, `cargo xtask parity`'s
//! `pretrained` cases): [`dmlp_pretrained::resolve`] finds the file (the Hub cache, a download,
//! or a local path), [`WeightsFile::read`] reads it (safetensors, `.pth`, a wrapped reference
//! checkpoint), and [`Classifier::load_pretrained_backbone`] takes every backbone tensor by name
//! or fails.

use dmlp_model::{Classifier, PretrainedLoad, WeightsFile};
use dmlp_pretrained::{HubSettings, ResolvedWeights};

use crate::ExperimentError;

/// A backbone initialised from a pretrained file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PretrainedInit {
    /// Which file, from where, with its SHA-256.
    #[serde(flatten)]
    pub weights: ResolvedWeights,
    /// What the load took and skipped.
    #[serde(flatten)]
    pub load: PretrainedLoad,
}

/// Finds the file `source` names (relative paths against the current folder; configs resolve
/// theirs against their own folder when read).
pub fn resolve_pretrained(source: &str, hub: &HubSettings) -> Result<ResolvedWeights, ExperimentError> {
    Ok(dmlp_pretrained::resolve(source, std::path::Path::new(""), hub)?)
}

/// Loads `weights` into `model`'s backbone.
pub fn load_pretrained(model: &Classifier, weights: ResolvedWeights) -> Result<PretrainedInit, ExperimentError> {
    let file = WeightsFile::read(&weights.path)?;
    let load = model.load_pretrained_backbone(&file)?;
    Ok(PretrainedInit { weights, load })
}
