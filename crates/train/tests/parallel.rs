//! Data parallelism on the CPU: `world` replicas (threads, summing through `LocalCollective`) at
//! batch `n` update exactly as one device with `accumulate = world` at batch `n`: the same losses
//! and the same weights, bit for bit, in every replica, mixup on; replicas initialised
//! differently are made equal first; and a small last batch leaves a replica idle as
//! accumulation takes fewer parts.

use crate::common;

use candle_core::Device;
use common::{batch, head, params};
use dmlp_eval::TensorBatch;
use dmlp_model::Classifier;
use dmlp_train::{
    ClassifierTrainer, Collective, DataParallelTrainer, LocalCollective, StepContext, TrainConfig, Trainable,
};

fn config(n: usize, accumulate: usize) -> TrainConfig {
    // Mixup on (α 0.4, the recipe's): one λ and permutation for the whole batch.
    TrainConfig { accumulate, ..TrainConfig::recipe(1, n, 0.1) }
}

/// Three steps over batches of `n`; the losses.
fn steps(trainer: &mut dyn Trainable<Batch = TensorBatch>, n: usize) -> Vec<f64> {
    let (features, loc, targets) = batch(n);
    (0..3)
        .map(|iteration| {
            let batch = TensorBatch::single(features.clone(), Some(loc.clone()), targets.clone());
            let step = StepContext { epoch: 1, iteration, lr: 0.1 };
            trainer.train_step(batch, &step).unwrap().loss
        })
        .collect()
}

/// `world` replicas against accumulation in `world` parts, configured for batches of
/// `batch_size`, stepping on batches of `n` (a last batch when `n < batch_size`).
fn check(world: usize, batch_size: usize, n: usize) {
    let single = Classifier::new(&head(), 3, &Device::Cpu).unwrap();
    let mut trainer = ClassifierTrainer::new(&single, &config(batch_size, world)).unwrap();
    let single_losses = steps(&mut trainer, n);

    // Replica 0 as the single model; the others from other seeds, overwritten at the start.
    let models: Vec<Classifier> =
        (0..world).map(|rank| Classifier::new(&head(), 3 + 100 * rank as u64, &Device::Cpu).unwrap()).collect();
    let collectives: Vec<Box<dyn Collective>> =
        LocalCollective::group(world).into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect();
    let mut parallel = DataParallelTrainer::new(models.iter().collect(), collectives, &config(batch_size, 1)).unwrap();
    let parallel_losses = steps(&mut parallel, n);

    assert_eq!(parallel_losses, single_losses, "{world} replicas at batch {n}: losses");
    for (rank, model) in models.iter().enumerate() {
        assert!(params(model) == params(&single), "{world} replicas at batch {n}: replica {rank}'s weights differ");
    }
    assert_ne!(params(&single), params(&Classifier::new(&head(), 3, &Device::Cpu).unwrap()), "the steps train");
}

#[test]
fn two_replicas_update_as_one_device_accumulating_two_parts() {
    check(2, 12, 12);
}

#[test]
fn three_replicas_and_a_batch_too_small_for_all_of_them() {
    check(3, 12, 12);
    // A last batch of 5 images over 3 replicas: shards of 3 and 2 and an idle third, as
    // accumulation of 3 takes two parts of 3 and 2.
    check(3, 12, 5);
}

#[test]
fn a_replica_that_fails_its_step_stops_the_step_for_all_without_a_hang() {
    // Mixup off, so only replica 1 reads its rows' targets; one of them is no class of the model.
    let n = 8;
    let models: Vec<Classifier> = (0..2).map(|_| Classifier::new(&head(), 3, &Device::Cpu).unwrap()).collect();
    let collectives: Vec<Box<dyn Collective>> =
        LocalCollective::group(2).into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect();
    let config = TrainConfig { mixup_alpha: 0.0, ..config(n, 1) };
    let mut parallel = DataParallelTrainer::new(models.iter().collect(), collectives, &config).unwrap();
    let before = params(&models[0]);
    let (features, loc, _) = batch(n);
    let targets = candle_core::Tensor::new(&[0u32, 1, 2, 3, 4, 0, 99, 1], &Device::Cpu).unwrap();
    let step = StepContext { epoch: 1, iteration: 0, lr: 0.1 };
    let err = parallel.train_step(TensorBatch::single(features, Some(loc), targets), &step).unwrap_err().to_string();
    assert!(!err.contains("another replica"), "the failed replica's own error comes first: {err}");
    for model in &models {
        assert!(params(model) == before, "no replica updates in a failed step");
    }
}

#[test]
fn a_batch_without_two_images_a_replica_is_refused() {
    let models: Vec<Classifier> = (0..2).map(|_| Classifier::new(&head(), 3, &Device::Cpu).unwrap()).collect();
    let collectives: Vec<Box<dyn Collective>> =
        LocalCollective::group(2).into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect();
    let err = DataParallelTrainer::new(models.iter().collect(), collectives, &config(3, 1)).unwrap_err();
    assert!(err.to_string().contains("fewer than two images"), "{err}");
}
