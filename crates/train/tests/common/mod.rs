//! The Dynamic MLP head on pooled features (no BatchNorm, dropout off) and a fixed batch: what
//! the step tests train.

use candle_core::{DType, Device, Tensor};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig, ModelDType};

pub(crate) fn head() -> ModelConfig {
    ModelConfig {
        pretrained: None,
        backbone: None,
        feature_dim: Some(16),
        num_classes: 5,
        metadata: Some(Metadata::GeoTemporal),
        fusion: Some(FusionConfig {
            mlp_d: 16,
            mlp_h: 8,
            mlp_n: 2,
            loc_dropout: 0.0,
            ..FusionConfig::with_defaults(FusionKind::DynamicMlpC)
        }),
        dtype: ModelDType::F32,
    }
}

/// A batch of `n`: features `[n, 16]`, encoded locations `[n, 6]`, targets `[n]`.
pub(crate) fn batch(n: usize) -> (Tensor, Tensor, Tensor) {
    let features = Tensor::from_vec(
        (0..n * 16).map(|i| ((i * 7919 % 211) as f32 / 105.5) - 1.0).collect::<Vec<_>>(),
        (n, 16),
        &Device::Cpu,
    )
    .unwrap();
    let loc = Tensor::from_vec(
        (0..n * 6).map(|i| ((i * 31 % 17) as f32 / 8.5) - 1.0).collect::<Vec<_>>(),
        (n, 6),
        &Device::Cpu,
    )
    .unwrap();
    let targets = Tensor::from_vec((0..n as u32).map(|i| i * 3 % 5).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
    (features, loc, targets)
}

/// A fixed permutation of `n` (not the identity).
pub(crate) fn permutation(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 5 + 3) % n as u32).collect()
}

/// Every variable's values, in the store's order.
pub(crate) fn params(model: &Classifier) -> Vec<Vec<f32>> {
    model
        .store()
        .vars()
        .into_iter()
        .map(|(_, v)| v.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}
