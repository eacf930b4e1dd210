//! What classifier to build.

use std::path::Path;

use candle_core::DType;
use dmlp_backbones::BackboneSpec;
use dmlp_fusion::FusionConfig;
use dmlp_geo::Metadata;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A classifier's architecture. In a config file it is the `[model]` table:
///
/// ```toml
/// [model]
/// backbone = "resnet50"            # or { type = "resnet", block = "basic", layers = [1, 1, 1, 1] }
/// pretrained = "hf:timm/resnet50.tv_in1k"   # the reference's --pretrained; absent: random init
/// num_classes = 10000
/// metadata = "geo_temporal"        # the reference's --metadata; absent for image-only
///
/// [model.fusion]                   # absent for image-only (the reference's --image_only)
/// type = "dynamic_mlp_c"           # --mlp_type
/// mlp_d = 256                      # --mlp_d
/// mlp_h = 64                       # --mlp_h
/// mlp_n = 2                        # --mlp_n
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The image backbone; absent for a head trained on precomputed pooled features.
    #[serde(default)]
    pub backbone: Option<BackboneSpec>,
    /// ImageNet weights the backbone starts from: `hf:ORG/NAME[@REVISION]` (the Hub file
    /// `model.safetensors`) or a path to a safetensors, `.pth` or reference checkpoint file.
    /// Only the backbone is taken; `fc` and the fusion head keep their initialisation. Resolved
    /// and loaded by the run (`dmlp_experiment`), never by this crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Width of precomputed pooled features, for a model without a backbone.
    #[serde(default)]
    pub feature_dim: Option<usize>,
    pub num_classes: usize,
    /// Which metadata the location encoder sees; required with a fusion head.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// The fusion head; absent for the image-only model.
    #[serde(default)]
    pub fusion: Option<FusionConfig>,
    /// The dtype parameters are held and computed in.
    #[serde(default = "ModelDType::f32")]
    pub dtype: ModelDType,
}

/// Parameter and compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDType {
    F32,
    F16,
    Bf16,
}

impl ModelDType {
    fn f32() -> Self {
        ModelDType::F32
    }

    pub fn dtype(self) -> DType {
        match self {
            ModelDType::F32 => DType::F32,
            ModelDType::F16 => DType::F16,
            ModelDType::Bf16 => DType::BF16,
        }
    }
}

impl ModelConfig {
    /// The image-only classifier on `backbone`: `fc` on the pooled features, `f32`, random
    /// initialisation.
    pub fn image_only(backbone: BackboneSpec, num_classes: usize) -> Self {
        Self {
            backbone: Some(backbone),
            pretrained: None,
            feature_dim: None,
            num_classes,
            metadata: None,
            fusion: None,
            dtype: ModelDType::F32,
        }
    }

    /// Checks that the parts fit together.
    pub fn validate(&self) -> Result<(), ModelError> {
        let err = |msg: String| Err(ModelError::Config(msg));
        if self.num_classes == 0 || self.num_classes > 1 << 20 {
            return err(format!("num_classes must be between 1 and 1048576, got {}", self.num_classes));
        }
        if self.feature_dim.is_some_and(|f| f > 1 << 16) {
            return err(format!("feature_dim must be at most 65536, got {:?}", self.feature_dim));
        }
        match (&self.backbone, self.feature_dim) {
            (None, None) => {
                return err("give a backbone, or feature_dim for a head on precomputed features".into());
            }
            (Some(_), Some(_)) => {
                return err("feature_dim is only for a model without a backbone".into());
            }
            (None, Some(0)) => return err("feature_dim must be at least 1".into()),
            (None, Some(_)) if self.pretrained.is_some() => {
                return err("pretrained weights are for a backbone; this model has none".into());
            }
            _ => {}
        }
        match (&self.fusion, self.metadata) {
            (Some(_), None) => {
                return err("a fusion head needs metadata (geo_temporal, geo or temporal)".into());
            }
            (None, Some(m)) => {
                return err(format!("metadata = {m} is set but there is no fusion head to use it"));
            }
            (Some(fusion), Some(_)) => fusion.validate()?,
            (None, None) => {}
        }
        Ok(())
    }

    /// Width of the encoded location vector the model takes (0 for image-only).
    pub fn loc_inputs(&self) -> usize {
        self.metadata.map_or(0, Metadata::n_inputs)
    }

    /// Reads the `[model]` table of a TOML config file (other tables are left to their owners).
    pub fn from_toml_file(path: &Path) -> Result<Self, ModelError> {
        let file_err = |message: String| ModelError::ConfigFile { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
        let model = table.remove("model").ok_or_else(|| file_err("no [model] table".into()))?;
        let config: ModelConfig = model.try_into().map_err(|e: toml::de::Error| file_err(format!("[model]: {e}")))?;
        config.validate().map_err(|e| file_err(e.to_string()))?;
        Ok(config)
    }
}
