//! The training loop: the reference recipe, evaluation every epoch, checkpoints, resume.
//!
//! Every random draw comes from a stream derived from `(seed, purpose, epoch, iteration)`:
//! mixup's λ and permutation, the dropout masks, and (in the batch source) the order and the
//! augmentation. A run resumed from its last checkpoint therefore repeats exactly what the
//! uninterrupted run would have done, on the CPU.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use dmlp_model::{Classifier, LoadPolicy, WeightsFile};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

use crate::data::{BatchSource, TensorBatch};
use crate::run_dir::{CheckpointState, EpochMetrics, RunDir};
use crate::{
    Adam, AdamConfig, LrSchedule, OptimizerKind, Sgd, SgdConfig, TrainConfig, TrainError, label_smoothing_loss, lr_at,
    mixup, mixup_loss,
};

const MIXUP_STREAM: u64 = 11;
const DROPOUT_STREAM: u64 = 12;

/// How to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainOptions {
    /// Continue from the run folder's last checkpoint (an error if it has none).
    pub resume: bool,
    /// Draw a progress bar on standard error.
    pub progress: bool,
    /// Stop after this epoch even if `epochs` is larger (for tests and staged runs).
    pub stop_after: Option<usize>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub metrics: Vec<EpochMetrics>,
    pub best_top1: f64,
    pub best_epoch: usize,
}

/// A stable mix of seed parts (splitmix64), for the random streams.
pub fn stream_seed(parts: &[u64]) -> u64 {
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for part in parts {
        state = state.wrapping_add(*part).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

/// Logits `[B, C]` as rows on the CPU (one copy per batch, for the accuracy counts).
pub fn logit_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>, TrainError> {
    Ok(logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2()?)
}

/// Top-k hits of score `rows` against `targets` (ties count in the target's favour).
pub fn top_k_hits(rows: &[Vec<f32>], targets: &[u32], k: usize) -> usize {
    rows.iter()
        .zip(targets)
        .filter(|(row, target)| {
            let own = row[**target as usize];
            // Ranks ahead of the target: strictly larger logits (ties count in the target's favour).
            row.iter().filter(|v| **v > own).count() < k
        })
        .count()
}

/// Class indices `[B]` on the CPU.
pub fn to_u32(targets: &Tensor) -> Result<Vec<u32>, TrainError> {
    Ok(targets.to_dtype(DType::U32)?.to_device(&Device::Cpu)?.to_vec1()?)
}

/// Evaluates `model` on `source`: `(loss, top-1 %, top-5 %, images)`, loss label-smoothed and
/// averaged per image.
/// `[B, C]` logits averaged over every crop of every view of each image (the reference's
/// ten-crop averages logits; a multi-scale test averages over all crops of all scales).
fn view_mean_logits(model: &Classifier, batch: &TensorBatch) -> Result<Tensor, TrainError> {
    let mut sum: Option<Tensor> = None;
    let mut crops_total = 0usize;
    for view in &batch.views {
        let n = view.images.dim(0)? / view.crops.max(1);
        let loc = match (&batch.loc, view.crops) {
            (Some(loc), crops) if crops > 1 => {
                let cin = loc.dim(1)?;
                Some(loc.unsqueeze(1)?.broadcast_as((n, crops, cin))?.contiguous()?.reshape((n * crops, cin))?)
            }
            (loc, _) => loc.clone(),
        };
        let logits = model.forward_t(&view.images, loc.as_ref(), false)?.logits;
        let classes = logits.dim(1)?;
        let per_image = logits.reshape((n, view.crops, classes))?.sum(1)?;
        sum = Some(match sum {
            Some(acc) => (acc + per_image)?,
            None => per_image,
        });
        crops_total += view.crops;
    }
    let sum = sum.ok_or_else(|| TrainError::Data("an evaluation batch without images".into()))?;
    Ok((sum / crops_total as f64)?)
}

pub fn evaluate(
    model: &Classifier,
    source: &dyn BatchSource,
    smoothing: f64,
) -> Result<(f64, f64, f64, usize), TrainError> {
    let (mut loss_sum, mut top1, mut top5, mut seen) = (0.0, 0usize, 0usize, 0usize);
    for batch in source.epoch(0)? {
        let batch = batch?;
        let logits = view_mean_logits(model, &batch)?;
        let targets = to_u32(&batch.targets)?;
        let n = targets.len();
        let loss =
            label_smoothing_loss(&logits, &batch.targets, smoothing)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        loss_sum += loss * n as f64;
        let rows = logit_rows(&logits)?;
        top1 += top_k_hits(&rows, &targets, 1);
        top5 += top_k_hits(&rows, &targets, 5);
        seen += n;
    }
    if seen == 0 {
        return Err(TrainError::Data("the evaluation split is empty".into()));
    }
    let pct = |hits: usize| 100.0 * hits as f64 / seen as f64;
    Ok((loss_sum / seen as f64, pct(top1), pct(top5), seen))
}

fn model_tensors(model: &Classifier) -> HashMap<String, Tensor> {
    model.store().vars().into_iter().map(|(name, var)| (name, var.as_tensor().clone())).collect()
}

/// The optimiser of a run, with its state as named tensors for checkpoints.
enum Optimizer {
    Sgd(Sgd),
    AdamW(Adam),
}

impl Optimizer {
    fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<(), TrainError> {
        match self {
            Optimizer::Sgd(sgd) => sgd.step(grads, lr)?,
            Optimizer::AdamW(adam) => adam.step(grads, lr)?,
        }
        Ok(())
    }

    fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(match self {
            Optimizer::Sgd(sgd) => sgd.momentum_buffers().clone(),
            Optimizer::AdamW(adam) => adam.state_tensors()?,
        })
    }

    fn load_state(&mut self, tensors: HashMap<String, Tensor>) -> Result<(), TrainError> {
        match self {
            Optimizer::Sgd(sgd) => sgd.set_momentum_buffers(tensors),
            Optimizer::AdamW(adam) => adam.load_state_tensors(&tensors)?,
        }
        Ok(())
    }
}

/// Trains `model` on `train`, evaluating on `val` after every epoch, writing `run`.
pub fn train(
    model: &Classifier,
    config: &TrainConfig,
    train: &dyn BatchSource,
    val: &dyn BatchSource,
    run: &RunDir,
    options: TrainOptions,
) -> Result<TrainSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let vars = model.store().trainable_vars();
    let mut optimizer = match config.optimizer {
        OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(
            vars,
            SgdConfig { momentum: config.momentum, weight_decay: config.weight_decay, nesterov: config.nesterov },
        )),
        OptimizerKind::Adamw => Optimizer::AdamW(Adam::new(
            vars,
            AdamConfig { beta1: config.momentum, ..AdamConfig::adamw(config.weight_decay) },
        )),
    };
    let (mut start_epoch, mut best_top1, mut best_epoch) = (1, f64::NEG_INFINITY, 0);
    let mut metrics = Vec::new();
    if options.resume {
        let checkpoint = run.checkpoint("last")?.ok_or_else(|| {
            TrainError::Config(format!("--resume: {} holds no checkpoint to resume from", run.root().display()))
        })?;
        WeightsFile::read(&checkpoint.model)?.load_into(model.store(), LoadPolicy::STRICT)?;
        let buffers = checkpoint
            .optimizer
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(model.dtype())?.to_device(model.device())?)))
            .collect::<Result<HashMap<_, _>, TrainError>>()?;
        optimizer.load_state(buffers)?;
        start_epoch = checkpoint.state.epoch + 1;
        best_top1 = checkpoint.state.best_top1;
        best_epoch = checkpoint.state.best_epoch;
        // Epochs recorded after the checkpoint are redone.
        metrics = run.read_metrics()?.into_iter().filter(|m| m.epoch <= checkpoint.state.epoch).collect();
        run.write_metrics(&metrics)?;
        eprintln!("resuming {} after epoch {}", run.root().display(), checkpoint.state.epoch);
    } else if run.checkpoint("last")?.is_some() || !run.read_metrics()?.is_empty() {
        return Err(TrainError::Config(format!(
            "{} already holds a run: pass --resume to continue it, or choose another run folder",
            run.root().display()
        )));
    }

    let schedule = LrSchedule { base_lr: config.lr, warmup_epochs: config.warmup_epochs, epochs: config.epochs };
    let iters = train.batches_per_epoch();
    if iters == 0 {
        return Err(TrainError::Data("the training split gives no batch".into()));
    }
    let last_epoch = options.stop_after.map_or(config.epochs, |stop| stop.min(config.epochs));
    for epoch in start_epoch..=last_epoch {
        let started = Instant::now();
        let bar = progress_bar(options.progress, epoch, config.epochs, train.len());
        let (mut loss_sum, mut hits, mut seen, mut lr) = (0.0, 0.0, 0usize, 0.0);
        for (iteration, batch) in train.epoch(epoch)?.enumerate() {
            let batch = batch?;
            let images = batch.single_view()?.clone();
            let TensorBatch { loc, targets, .. } = batch;
            let n = images.dim(0)?;
            lr = lr_at(schedule, epoch, iteration, iters);
            let (lambda, perm_ids) = mixup_draw(config, n, epoch, iteration)?;
            let perm = Tensor::from_slice(&perm_ids, n, images.device())?;
            let images = mixup(&images, &perm, lambda)?;
            let loc = loc.map(|loc| mixup(&loc, &perm, lambda)).transpose()?;
            model.reseed_dropout(stream_seed(&[config.seed, DROPOUT_STREAM, epoch as u64, iteration as u64]));
            let out = model.forward_t(&images, loc.as_ref(), true)?;
            let loss = mixup_loss(&out.logits, &targets, &perm, lambda, config.label_smoothing)?;
            let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !loss_value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite { epoch, iteration, loss: loss_value });
            }
            optimizer.step(&loss.backward()?, lr)?;
            let target_ids = to_u32(&targets)?;
            let permuted: Vec<u32> = perm_ids.iter().map(|p| target_ids[*p as usize]).collect();
            let rows = logit_rows(&out.logits)?;
            hits += lambda * top_k_hits(&rows, &target_ids, 1) as f64
                + (1.0 - lambda) * top_k_hits(&rows, &permuted, 1) as f64;
            loss_sum += loss_value * n as f64;
            seen += n;
            bar.inc(n as u64);
            bar.set_message(format!("loss {:.4} lr {lr:.5}", loss_sum / seen as f64));
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_top1, val_top5, val_images) = evaluate(model, val, config.label_smoothing)?;
        let epoch_metrics = EpochMetrics {
            epoch,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: 100.0 * hits / seen.max(1) as f64,
            val_loss,
            val_top1,
            val_top5,
            train_images: seen,
            val_images,
            epoch_seconds: started.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_seconds.max(1e-9),
        };
        eprintln!(
            "epoch {epoch}/{}: train loss {:.4} top-1 {:.2} | val loss {:.4} top-1 {:.2} top-5 {:.2} | {:.0} img/s",
            config.epochs,
            epoch_metrics.train_loss,
            epoch_metrics.train_top1,
            val_loss,
            val_top1,
            val_top5,
            epoch_metrics.images_per_s
        );
        let is_best = val_top1 > best_top1;
        if is_best {
            best_top1 = val_top1;
            best_epoch = epoch;
        }
        run.append_metrics(&epoch_metrics)?;
        let state = CheckpointState { epoch, best_top1, best_epoch };
        run.save_checkpoint(&state, &model_tensors(model), &optimizer.state()?, is_best)?;
        metrics.push(epoch_metrics);
    }
    Ok(TrainSummary { metrics, best_top1, best_epoch })
}

/// λ and the permutation of one step (λ = 1 and the identity when mixup is off).
fn mixup_draw(config: &TrainConfig, n: usize, epoch: usize, iteration: usize) -> Result<(f64, Vec<u32>), TrainError> {
    let mut perm: Vec<u32> = (0..n as u32).collect();
    if config.mixup_alpha <= 0.0 {
        return Ok((1.0, perm));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(&[config.seed, MIXUP_STREAM, epoch as u64, iteration as u64]));
    let beta = Beta::new(config.mixup_alpha, config.mixup_alpha)
        .map_err(|e| TrainError::Config(format!("mixup_alpha: {e}")))?;
    let lambda = beta.sample(&mut rng);
    perm.shuffle(&mut rng);
    Ok((lambda, perm))
}

fn progress_bar(show: bool, epoch: usize, epochs: usize, images: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(images as u64);
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} img {per_sec} eta {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
    use dmlp_fusion::{FusionConfig, FusionKind};
    use dmlp_geo::Metadata;
    use dmlp_model::{Classifier, ModelConfig, ModelDType};

    use super::view_mean_logits;
    use crate::{ImageView, TensorBatch};

    #[test]
    fn test_time_views_average_logits_over_every_crop_with_locations_repeated() {
        let device = Device::Cpu;
        let config = ModelConfig {
            backbone: Some(BackboneSpec::Custom(CustomBackbone::Resnet {
                block: BlockKind::Basic,
                layers: vec![1, 1, 1, 1],
                width: 4,
            })),
            feature_dim: None,
            num_classes: 3,
            metadata: Some(Metadata::Geo),
            fusion: Some(FusionConfig { mlp_d: 8, mlp_h: 4, ..FusionConfig::with_defaults(FusionKind::DynamicMlpC) }),
            dtype: ModelDType::F32,
        };
        let model = Classifier::new(&config, 3, &device).unwrap();
        let one = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &device).unwrap();
        let three = Tensor::randn(0f32, 1.0, (6, 3, 8, 8), &device).unwrap();
        let loc = Tensor::randn(0f32, 1.0, (2, 4), &device).unwrap();
        let targets = Tensor::new(&[0u32, 2], &device).unwrap();
        let batch = TensorBatch {
            views: vec![ImageView { images: one.clone(), crops: 1 }, ImageView { images: three.clone(), crops: 3 }],
            loc: Some(loc.clone()),
            targets,
        };
        let got: Vec<Vec<f32>> = view_mean_logits(&model, &batch).unwrap().to_vec2().unwrap();
        let logits = |x: &Tensor, l: &Tensor| -> Vec<Vec<f32>> {
            model.forward_t(x, Some(l), false).unwrap().logits.to_vec2().unwrap()
        };
        let first = logits(&one, &loc);
        for image in 0..2 {
            let own_loc = loc.narrow(0, image, 1).unwrap();
            let mut expected = first[image].clone();
            for crop in 0..3 {
                let row = logits(&three.narrow(0, image * 3 + crop, 1).unwrap(), &own_loc);
                expected.iter_mut().zip(&row[0]).for_each(|(e, r)| *e += r);
            }
            for (g, e) in got[image].iter().zip(&expected) {
                assert!((g - e / 4.0).abs() < 1e-5, "image {image}: {g} vs {}", e / 4.0);
            }
        }
        // One view of one crop: the logits themselves.
        let single = TensorBatch::single(one.clone(), Some(loc.clone()), Tensor::new(&[0u32, 2], &device).unwrap());
        assert_eq!(view_mean_logits(&model, &single).unwrap().to_vec2::<f32>().unwrap(), first);
    }
}
