//! Data parallelism on the CPU: `world` replicas (threads, summing through `LocalCollective`) at
//! batch `n` update exactly as one device with `accumulate = world` at batch `n`: the same losses
//! and the same weights, bit for bit, in every replica, mixup on; replicas initialised
//! differently are made equal first; and a small last batch leaves a replica idle as
//! accumulation takes fewer parts. Evaluation splits each batch's rows over the replicas and
//! scores as one device does (within float rounding).

use crate::common;

use candle_core::{Device, Tensor};
use common::{batch, head, params};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_eval::{ImageView, InMemoryBatches, TensorBatch};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig};
use dmlp_train::{
    ClassifierTrainer, Collective, DataParallelTrainer, LocalCollective, Precision, StepContext, TrainConfig,
    Trainable, sharded_classifier_scores,
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

/// A small ResNet with the Dynamic MLP head: evaluation runs whole models on images.
fn small_model(seed: u64) -> Classifier {
    let resnet = CustomBackbone::Resnet { block: BlockKind::Bottleneck, layers: vec![1, 1, 1, 1], width: 4 };
    let config = ModelConfig {
        metadata: Some(Metadata::GeoTemporal),
        fusion: Some(FusionConfig {
            mlp_d: 16,
            mlp_h: 8,
            mlp_n: 2,
            ..FusionConfig::with_defaults(FusionKind::DynamicMlpC)
        }),
        ..ModelConfig::image_only(BackboneSpec::Custom(resnet), 5)
    };
    Classifier::new(&config, seed, &Device::Cpu).unwrap()
}

/// A batch of `n` 12² images with two views: the images as one crop, and two crops per image
/// (the image and its mirror, consecutive per image), as a test-time augmented batch has.
fn two_view_batch(n: usize) -> TensorBatch {
    let (_, loc, targets) = batch(n);
    let values = (0..n * 3 * 12 * 12).map(|i| ((i * 7919 % 211) as f32 / 105.5) - 1.0).collect::<Vec<_>>();
    let images = Tensor::from_vec(values, (n, 3, 12, 12), &Device::Cpu).unwrap();
    let mirrored = images.flip(&[3]).unwrap();
    let crops = Tensor::stack(&[&images, &mirrored], 1).unwrap().reshape((2 * n, 3, 12, 12)).unwrap();
    TensorBatch {
        views: vec![ImageView { images, crops: 1 }, ImageView { images: crops, crops: 2 }],
        loc: Some(loc),
        targets,
        rows: Vec::new(),
    }
}

fn scores(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32).unwrap().to_vec2().unwrap()
}

/// The largest difference between two score tables of one shape.
fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!((a.len(), a[0].len()), (b.len(), b[0].len()));
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn scores_with_rows_split_over_replicas_equal_one_models() {
    let models: Vec<Classifier> = (0..3).map(|_| small_model(3)).collect();
    let all: Vec<&Classifier> = models.iter().collect();
    // 7 images: shares of 3, 2, 2 rows in the one-crop view, 5, 5, 4 in the two-crop view;
    // 1 image: one replica scores it, two stay idle.
    for n in [7, 1] {
        let batch = two_view_batch(n);
        let one = sharded_classifier_scores(&all[..1], None, &batch).unwrap();
        let three = sharded_classifier_scores(&all, None, &batch).unwrap();
        assert_eq!(three.dims(), [n, 5]);
        // Within float rounding: a convolution over fewer rows sums in another blocking (last-bit
        // differences, as in PyTorch, whose results also depend on the batch size).
        let difference = max_difference(&scores(&three), &scores(&one));
        assert!(difference < 1e-5, "{n} images: {difference}");
    }
    // A replica with other weights changes the scores of its share: the shares are its own.
    let other = small_model(4);
    let batch = two_view_batch(7);
    let mixed = sharded_classifier_scores(&[all[0], &other], None, &batch).unwrap();
    let (mixed, one) = (scores(&mixed), scores(&sharded_classifier_scores(&all[..1], None, &batch).unwrap()));
    // Replica 0 scores images 0..4 of the one-crop view and the crops of images 0..3.5 of the
    // two-crop view: images 0..3 are wholly its own.
    assert!(max_difference(&mixed[..3], &one[..3]) < 1e-5, "replica 0's share");
    assert!(max_difference(&mixed[4..], &one[4..]) > 1e-2, "replica 1's share");
}

/// BatchNorm's running statistics, by name.
fn buffers(model: &Classifier) -> Vec<(String, Vec<f32>)> {
    let mut buffers: Vec<(String, Vec<f32>)> = model
        .store()
        .tensors()
        .into_iter()
        .filter(|(name, _)| dmlp_nn::is_buffer_name(name))
        .map(|(name, t)| (name, t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    buffers.sort_by(|a, b| a.0.cmp(&b.0));
    buffers
}

/// After a training step, each replica's BatchNorm statistics have moved with its own shard;
/// the evaluation is still the checkpointed model's (replica 0's) on one device.
#[test]
fn a_data_parallel_evaluation_equals_one_devices_in_f32_and_bf16() {
    let val = InMemoryBatches(vec![two_view_batch(9), two_view_batch(4), two_view_batch(1)]);
    for precision in [Precision::F32, Precision::Bf16] {
        let config = TrainConfig { precision, ..config(9, 1) };
        let models: Vec<Classifier> = (0..3).map(|_| small_model(3)).collect();
        let collectives: Vec<Box<dyn Collective>> =
            LocalCollective::group(3).into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect();
        let mut parallel = DataParallelTrainer::new(models.iter().collect(), collectives, &config).unwrap();
        let train = two_view_batch(9);
        let train = TensorBatch::single(train.views[0].images.clone(), train.loc, train.targets);
        parallel.train_step(train, &StepContext { epoch: 1, iteration: 0, lr: 0.1 }).unwrap();
        assert_ne!(buffers(&models[0]), buffers(&models[1]), "the replicas' statistics differ before evaluating");

        let got = parallel.evaluate(&val).unwrap();
        let expected = ClassifierTrainer::new(&models[0], &config).unwrap().evaluate(&val).unwrap();
        assert_eq!(got.images, 14);
        assert_eq!((got.top1, got.top5, got.mean_class_top1), (expected.top1, expected.top5, expected.mean_class_top1));
        let (got, expected) = (got.loss.unwrap(), expected.loss.unwrap());
        assert!((got - expected).abs() < 1e-6 * expected, "{precision:?}: loss {got} against {expected}");
        assert_eq!(buffers(&models[2]), buffers(&models[0]), "replica 0's statistics were shared");
    }
    // bf16 evaluates in bf16: its loss is not f32's.
    let loss = |precision| {
        let model = small_model(3);
        let config = TrainConfig { precision, ..config(8, 1) };
        ClassifierTrainer::new(&model, &config).unwrap().evaluate(&val).unwrap().loss
    };
    assert_ne!(loss(Precision::F32), loss(Precision::Bf16));
}
