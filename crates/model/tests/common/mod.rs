//! What the whole-model step tests share: a fixed batch of odd, non-square images with
//! locations, and a model config from a backbone and an optional fusion head.

use candle_core::{DType, Device, Tensor};
use dmlp_backbones::BackboneSpec;
use dmlp_fusion::FusionConfig;
use dmlp_geo::Metadata;
use dmlp_model::ModelConfig;

pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Images `[4, 3, 37, 29]`, encoded locations `[4, 6]` and targets `[4]` (of 7 classes).
pub(crate) fn step_inputs() -> (Tensor, Tensor, Tensor) {
    let images = Tensor::from_vec(
        (0..4 * 3 * 37 * 29).map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0).collect::<Vec<_>>(),
        (4, 3, 37, 29),
        &Device::Cpu,
    )
    .unwrap();
    let loc =
        Tensor::from_vec((0..24).map(|i| ((i * 37 % 19) as f32 / 9.5) - 1.0).collect::<Vec<_>>(), (4, 6), &Device::Cpu)
            .unwrap();
    let targets = Tensor::new(&[0u32, 3, 1, 4], &Device::Cpu).unwrap();
    (images, loc, targets)
}

/// `backbone` with `fusion` (and the metadata it reads) or image-only, 5 classes; and a name.
pub(crate) fn model_config(backbone: BackboneSpec, fusion: Option<FusionConfig>) -> (String, ModelConfig) {
    let name = format!("{} + {}", backbone.name(), fusion.as_ref().map_or("image-only", |f| f.kind.as_str()));
    let config = ModelConfig {
        metadata: fusion.as_ref().map(|_| Metadata::GeoTemporal),
        fusion,
        ..ModelConfig::image_only(backbone, 5)
    };
    (name, config)
}
