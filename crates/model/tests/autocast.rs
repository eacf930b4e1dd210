//! Mixed precision: a training step of ResNet and SK-Res2Net (with every fusion head) inside
//! `with_autocast(bf16 | f16)` computes in half precision (the logits come out in it), keeps the
//! master weights in f32 (every gradient arrives in f32, BatchNorm's running statistics stay
//! f32), and its loss and gradients agree with the f32 step's. On the CPU custom ops and on the
//! device-generic path (the one CUDA takes) alike.
//!
//! The gradients are held to a direction (cosine), not to rounding error: these tiny random
//! networks in training mode are chaotic (moving the input by 1e-6 moves their f32 gradient by
//! 2 %, measured), so half precision's rounding moves it by tens of per cent. Each op's own
//! half-precision error is held to rounding bounds in `crates/nn/tests/autocast.rs`.

use crate::common;

use candle_core::{DType, Device};
use common::{model_config, step_inputs, values};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_model::{Classifier, ModelConfig};
use dmlp_nn::{with_autocast, with_generic_ops};

/// The loss, the logits' dtype and every trainable variable's gradient, concatenated.
fn step(config: &ModelConfig, autocast: Option<DType>, generic: bool) -> (f64, DType, Vec<f64>) {
    let model = Classifier::new(config, 7, &Device::Cpu).unwrap();
    let (images, loc, targets) = step_inputs();
    let loc = config.fusion.as_ref().map(|_| &loc);
    let forward = || {
        with_autocast(autocast, || {
            let logits = model.forward_t(&images, loc, true).unwrap().logits;
            let loss = candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32).unwrap(), &targets).unwrap();
            (logits.dtype(), loss)
        })
    };
    let (logits_dtype, loss) = if generic { with_generic_ops(forward) } else { forward() };
    let grads = loss.backward().unwrap();
    let mut all = Vec::new();
    for (name, var) in model.store().vars() {
        assert_eq!(var.dtype(), DType::F32, "{name} changed dtype");
        if dmlp_nn::is_buffer_name(&name) {
            assert!(values(var.as_tensor()).iter().all(|v| v.is_finite()), "{name}: non-finite statistics");
            continue;
        }
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!(grad.dtype(), DType::F32, "{name}: gradient not in the master dtype");
        all.extend(values(grad));
    }
    (loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap(), logits_dtype, all)
}

fn check(backbone: BackboneSpec, fusion: Option<FusionConfig>) {
    let (name, config) = model_config(backbone, fusion);
    let (loss32, dtype32, grads32) = step(&config, None, false);
    assert_eq!(dtype32, DType::F32);
    let norm: f64 = grads32.iter().map(|g| g * g).sum::<f64>().sqrt();
    for half in [DType::BF16, DType::F16] {
        for generic in [false, true] {
            let (loss, dtype, grads) = step(&config, Some(half), generic);
            let what = format!("{name}, {half:?}, {} path", if generic { "generic" } else { "CPU" });
            assert_eq!(dtype, half, "{what}: logits not computed in half precision");
            // bf16 keeps 8 significant bits: a few parts in a thousand per rounding.
            assert!((loss - loss32).abs() < 2e-2 * loss32.abs().max(1.0), "{what}: loss {loss} vs f32 {loss32}");
            let dot: f64 = grads.iter().zip(&grads32).map(|(a, b)| a * b).sum();
            let cosine = dot / (norm * grads.iter().map(|g| g * g).sum::<f64>().sqrt());
            println!("{what}: loss {loss:.5} (f32 {loss32:.5}), gradient cosine {cosine:.4}");
            // Measured: bf16 0.80–0.93, f16 0.98–0.995; a wrong cast or a dropped gradient falls
            // far below.
            let floor = if half == DType::BF16 { 0.75 } else { 0.95 };
            assert!(cosine > floor, "{what}: gradient cosine {cosine:.4} with f32's");
        }
    }
}

#[test]
fn resnet_steps_in_half_precision_keep_f32_masters() {
    let bottleneck = CustomBackbone::Resnet { block: BlockKind::Bottleneck, layers: vec![2, 1, 1, 1], width: 8 };
    check(BackboneSpec::Custom(bottleneck.clone()), None);
    check(
        BackboneSpec::Custom(bottleneck),
        Some(FusionConfig { mlp_d: 16, mlp_h: 8, mlp_n: 2, ..FusionConfig::with_defaults(FusionKind::DynamicMlpC) }),
    );
}

#[test]
fn sk2res2net_steps_in_half_precision_with_every_fusion_head() {
    let sk = || BackboneSpec::Custom(CustomBackbone::Sk2res2net { layers: vec![2, 1, 1, 1], width: 16 });
    check(sk(), None);
    for kind in FusionKind::ALL {
        check(sk(), Some(FusionConfig { mlp_d: 16, mlp_h: 8, mlp_n: 2, ..FusionConfig::with_defaults(kind) }));
    }
}
