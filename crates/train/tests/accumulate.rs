//! Gradient accumulation: a batch in parts, one update, equals the batch in one pass for a model
//! without BatchNorm (the Dynamic MLP head on pooled features, dropout off), and a batch too
//! small for its parts takes fewer.

use crate::common;

use candle_core::{Device, Tensor};
use common::{batch, head, params, permutation};
use dmlp_model::Classifier;
use dmlp_train::{Amp, Mixup, Optimizer, StepContext, StepInput, TrainConfig, classifier_step};

/// Two steps (so momentum is exercised) of a batch of `n` in `parts`; every parameter after them,
/// and the two losses.
fn train(parts: usize, n: usize) -> (Vec<f64>, Vec<Vec<f32>>) {
    let model = Classifier::new(&head(), 3, &Device::Cpu).unwrap();
    let config = TrainConfig { accumulate: parts, ..TrainConfig::recipe(1, n, 0.1) };
    let mut optimizer = Optimizer::from_config(model.store().trainable_vars(), &config);
    let (features, loc, targets) = batch(n);
    let perm = permutation(n);
    let mix = Mixup { lambda: 0.7, perm: Tensor::from_vec(perm, n, &Device::Cpu).unwrap(), cut: None };
    let mut losses = Vec::new();
    for iteration in 0..2 {
        let step = StepContext { epoch: 1, iteration, lr: 0.1 };
        let out = classifier_step(
            &model,
            &mut optimizer,
            StepInput::Features(&features),
            Some(&loc),
            &targets,
            &mix,
            0.1,
            parts,
            &mut Amp::f32(),
            &step,
        )
        .unwrap();
        assert_eq!(out.logits.dims(), [n, 5]);
        losses.push(out.loss);
    }
    let params = params(&model);
    (losses, params)
}

#[test]
fn a_batch_in_parts_updates_as_the_whole_batch() {
    let (whole_losses, whole) = train(1, 12);
    for parts in [2, 3, 4] {
        let (losses, params) = train(parts, 12);
        for (a, b) in losses.iter().zip(&whole_losses) {
            assert!((a - b).abs() < 1e-6 * b.abs().max(1.0), "{parts} parts: loss {a} vs {b}");
        }
        // Sums in a different order: equal within float rounding, not always bit for bit.
        for (p, w) in params.iter().zip(&whole) {
            for (x, y) in p.iter().zip(w) {
                assert!((x - y).abs() <= 2e-6 * y.abs().max(1.0), "{parts} parts: {x} vs {y}");
            }
        }
    }
    let untouched = params(&Classifier::new(&head(), 3, &Device::Cpu).unwrap());
    assert_ne!(untouched, whole, "the steps must change the parameters");
}

#[test]
fn a_batch_too_small_for_its_parts_takes_fewer_and_a_config_without_two_images_a_part_is_refused() {
    // 5 images in 4 parts: parts of at least two images, so 2 parts (3 + 2), and the same update.
    let (losses, params) = train(4, 5);
    let (whole_losses, whole) = train(1, 5);
    assert!((losses[1] - whole_losses[1]).abs() < 1e-6);
    for (p, w) in params.iter().zip(&whole) {
        for (x, y) in p.iter().zip(w) {
            assert!((x - y).abs() <= 2e-6 * y.abs().max(1.0));
        }
    }
    let config = TrainConfig { accumulate: 5, ..TrainConfig::recipe(1, 8, 0.1) };
    assert!(config.validate().unwrap_err().contains("two images per part"));
    let config = TrainConfig { accumulate: 0, ..TrainConfig::recipe(1, 8, 0.1) };
    assert!(config.validate().is_err());
}
