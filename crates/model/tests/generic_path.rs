//! A whole training step of ResNet and SK-Res2Net (with every fusion head) on the device-generic
//! path, the one CUDA runs, equals the step on the CPU custom ops: the loss, every parameter's
//! gradient and BatchNorm's updated running statistics. Images are odd and non-square, so every
//! strided convolution and pooling meets uneven remainders.

use crate::common;

use candle_core::{DType, Device};
use common::{model_config, step_inputs, values};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_model::{Classifier, ModelConfig};
use dmlp_nn::with_generic_ops;

/// `‖a − b‖ / ‖b‖` (or `‖a − b‖` when `b` is zero).
fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm > 0.0 { diff / norm } else { diff }
}

/// The loss, then every variable's gradient (trainable) or value after the step (statistics).
fn step(config: &ModelConfig, generic: bool) -> (f64, Vec<(String, Vec<f64>)>) {
    let model = Classifier::new(config, 7, &Device::Cpu).unwrap();
    let (images, loc, targets) = step_inputs();
    let loc = config.fusion.as_ref().map(|_| &loc);
    let forward = || {
        let out = model.forward_t(&images, loc, true).unwrap();
        candle_nn::loss::cross_entropy(&out.logits, &targets).unwrap()
    };
    let loss = if generic { with_generic_ops(forward) } else { forward() };
    let grads = loss.backward().unwrap();
    let mut out = Vec::new();
    for (name, var) in model.store().vars() {
        match grads.get(var.as_tensor()) {
            Some(grad) => out.push((format!("{name} gradient"), values(grad))),
            None if dmlp_nn::is_buffer_name(&name) => {
                out.push((format!("{name} after the step"), values(var.as_tensor())))
            }
            None => panic!("{name}: no gradient"),
        }
    }
    (loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap(), out)
}

fn check(backbone: BackboneSpec, fusion: Option<FusionConfig>) {
    let (name, config) = model_config(backbone, fusion);
    let (custom_loss, custom) = step(&config, false);
    let (generic_loss, generic) = step(&config, true);
    assert!(
        (custom_loss - generic_loss).abs() < 1e-5 * custom_loss.abs().max(1.0),
        "{name}: loss {generic_loss} vs {custom_loss}"
    );
    assert_eq!(custom.len(), generic.len());
    let mut problems = Vec::new();
    for ((what, c), (_, g)) in custom.iter().zip(&generic) {
        let err = rel_l2(g, c);
        let abs: f64 = g.iter().zip(c).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        // float32 on both paths, summed in different orders. A gradient that is zero by
        // construction (a key norm's bias before a softmax over keys) is float noise on both
        // paths: it is held to an absolute bound instead.
        if !(err < 2e-4 || abs < 1e-6) {
            problems.push(format!("{what}: rel_l2 {err:.2e}, abs {abs:.2e}"));
        }
    }
    assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
}

#[test]
fn resnet_steps_agree() {
    let basic = CustomBackbone::Resnet { block: BlockKind::Basic, layers: vec![1, 1, 1, 1], width: 8 };
    check(BackboneSpec::Custom(basic), None);
    let bottleneck = CustomBackbone::Resnet { block: BlockKind::Bottleneck, layers: vec![2, 1, 1, 1], width: 8 };
    check(
        BackboneSpec::Custom(bottleneck),
        Some(FusionConfig { mlp_d: 16, mlp_h: 8, mlp_n: 2, ..FusionConfig::with_defaults(FusionKind::DynamicMlpC) }),
    );
}

#[test]
fn sk2res2net_steps_agree_with_every_fusion_head() {
    let sk = || BackboneSpec::Custom(CustomBackbone::Sk2res2net { layers: vec![2, 1, 1, 1], width: 16 });
    check(sk(), None);
    for kind in FusionKind::ALL {
        check(sk(), Some(FusionConfig { mlp_d: 16, mlp_h: 8, mlp_n: 2, ..FusionConfig::with_defaults(kind) }));
    }
}
