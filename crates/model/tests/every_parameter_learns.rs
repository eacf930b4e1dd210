//! One training step over every backbone × fusion pair gives every trainable parameter a finite,
//! non-zero gradient. This catches any op that silently drops its gradient (candle's fused
//! LayerNorm does) and any parameter left out of the graph.

use candle_core::{DType, Device, Tensor};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig, ModelDType};

fn backbones() -> Vec<BackboneSpec> {
    vec![
        BackboneSpec::Custom(CustomBackbone::Resnet { block: BlockKind::Basic, layers: vec![1, 1, 1, 1], width: 8 }),
        BackboneSpec::Custom(CustomBackbone::Resnet {
            block: BlockKind::Bottleneck,
            layers: vec![2, 1, 1, 1],
            width: 8,
        }),
        // Two blocks in the first stage exercise the hierarchical (non-first) Res2Net block too.
        BackboneSpec::Custom(CustomBackbone::Sk2res2net { layers: vec![2, 1, 1, 1], width: 64 }),
        BackboneSpec::Custom(CustomBackbone::Sk2res2net { layers: vec![1, 1, 1, 1], width: 16 }),
        // 16×16 then 8×8 maps under 4×4 windows: plain and shifted blocks, patch merging.
        BackboneSpec::Custom(CustomBackbone::Swin {
            img_size: 32,
            patch_size: 2,
            window_size: 4,
            embed_dim: 8,
            depths: vec![2, 2],
            num_heads: vec![1, 2],
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
        }),
        pvt_v2(false),
        pvt_v2(true),
        // PVT v1 laid out for 64×64 images; the test runs it on 80×80, so every stage's position
        // embedding is resized (its gradient goes through the resize), and the class token joins
        // the last stage.
        BackboneSpec::Custom(CustomBackbone::Pvt {
            img_size: 64,
            patch_size: 4,
            embed_dims: vec![8, 16, 24, 32],
            depths: vec![1, 1, 1, 1],
            num_heads: vec![1, 2, 3, 4],
            sr_ratios: vec![4, 2, 2, 1],
            mlp_ratios: vec![4.0, 4.0, 2.0, 2.0],
            qkv_bias: true,
            drop_path_rate: 0.0,
        }),
        // BoTNet laid out for 64×64 images, run on 96×96: its last stage attends over 6×6 then
        // 3×3 maps (odd: the pool rounds up) with the relative tables resized.
        BackboneSpec::Custom(CustomBackbone::Botnet { layers: vec![1, 1, 1, 2], width: 8, heads: 2, img_size: 64 }),
    ]
}

/// A small PVT v2 whose stages reduce keys and values (sr 8, 4, 2 on 16×16, 8×8, 4×4 maps of a
/// 64×64 image: four keys each, so every query matters; a single key would leave `q` without a
/// gradient, as it is in PyTorch).
fn pvt_v2(linear: bool) -> BackboneSpec {
    BackboneSpec::Custom(CustomBackbone::PvtV2 {
        embed_dims: vec![8, 16, 24, 32],
        depths: vec![1, 1, 1, 1],
        num_heads: vec![1, 2, 3, 4],
        sr_ratios: vec![8, 4, 2, 1],
        mlp_ratios: vec![4.0, 4.0, 2.0, 2.0],
        linear,
        drop_path_rate: 0.0,
    })
}

fn fusions() -> Vec<Option<FusionConfig>> {
    let mut out = vec![None];
    for kind in FusionKind::ALL {
        out.push(Some(FusionConfig { mlp_d: 16, mlp_h: 8, mlp_n: 2, ..FusionConfig::with_defaults(kind) }));
    }
    out
}

fn check_step(backbone: &BackboneSpec, fusion: Option<FusionConfig>) {
    check_step_at(backbone, fusion, 32);
}

/// One step on `[4, 3, side, side]` images.
fn check_step_at(backbone: &BackboneSpec, fusion: Option<FusionConfig>, side: usize) {
    let name = format!("{} + {}", backbone.name(), fusion.as_ref().map_or("image-only", |f| f.kind.as_str()));
    let config = ModelConfig {
        pretrained: None,
        backbone: Some(backbone.clone()),
        feature_dim: None,
        num_classes: 5,
        metadata: fusion.as_ref().map(|_| Metadata::GeoTemporal),
        fusion,
        dtype: ModelDType::F32,
    };
    let model = Classifier::new(&config, 11, &Device::Cpu).unwrap();
    let images = Tensor::randn(0f32, 1.0, (4, 3, side, side), &Device::Cpu).unwrap();
    let loc = Tensor::rand(-1f32, 1.0, (4, 6), &Device::Cpu).unwrap();
    let targets = Tensor::new(&[0u32, 3, 1, 4], &Device::Cpu).unwrap();
    let out = model.forward_t(&images, Some(&loc), true).unwrap();
    let loss = candle_nn::loss::cross_entropy(&out.logits, &targets).unwrap();
    let grads = loss.backward().unwrap();
    let mut problems = Vec::new();
    let trainable = model.store().trainable_vars();
    assert!(!trainable.is_empty());
    for (param, var) in trainable {
        let Some(grad) = grads.get(var.as_tensor()) else {
            problems.push(format!("{param}: no gradient"));
            continue;
        };
        let values: Vec<f32> = grad.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        if values.iter().any(|v| !v.is_finite()) {
            problems.push(format!("{param}: non-finite gradient"));
        } else if values.iter().all(|v| *v == 0.0) {
            problems.push(format!("{param}: gradient is all zeros"));
        }
    }
    assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
}

#[test]
fn resnet_basic_every_fusion() {
    for fusion in fusions() {
        check_step(&backbones()[0], fusion);
    }
}

#[test]
fn resnet_bottleneck_every_fusion() {
    for fusion in fusions() {
        check_step(&backbones()[1], fusion);
    }
}

#[test]
fn sk2res2net_every_fusion() {
    for fusion in fusions() {
        check_step(&backbones()[2], fusion);
    }
}

#[test]
fn narrow_sk2res2net_every_fusion() {
    for fusion in fusions() {
        check_step(&backbones()[3], fusion);
    }
}

#[test]
fn swin_every_fusion() {
    for fusion in fusions() {
        check_step(&backbones()[4], fusion);
    }
}

#[test]
fn pvt_v2_every_fusion() {
    for fusion in fusions() {
        check_step_at(&backbones()[5], fusion, 64);
    }
}

#[test]
fn linear_pvt_v2_every_fusion() {
    for fusion in fusions() {
        check_step_at(&backbones()[6], fusion, 64);
    }
}

#[test]
fn pvt_v1_every_fusion() {
    for fusion in fusions() {
        check_step_at(&backbones()[7], fusion, 80);
    }
}

#[test]
fn botnet_every_fusion() {
    for fusion in fusions() {
        check_step_at(&backbones()[8], fusion, 96);
    }
}
