//! The Dynamic MLP classifier (or an image-only one) as a [`Trainable`]: the reference's step.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use dmlp_eval::{
    Accuracy, EvalError, ScoreKind, TensorBatch, evaluate_batches, score_rows, to_u32, top_k_hits, view_mean_logits,
};
use dmlp_model::{Classifier, LoadPolicy, WeightsFile};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

use crate::fit::{Batches, StepContext, StepOutcome, Trainable};
use crate::{
    Optimizer, SeedStream, TrainConfig, TrainError, label_smoothing_loss, mixup, mixup_loss, mixup_loss_share,
};

/// One step's mixup: `λ` and the permutation `[B]` (u32) that pairs each sample with another.
#[derive(Debug, Clone)]
pub struct Mixup {
    pub lambda: f64,
    pub perm: Tensor,
}

/// What the classifier's step reads for images: pixels through the backbone, or pooled features
/// straight into the head (the parity fixtures' head-only form).
#[derive(Debug, Clone, Copy)]
pub enum StepInput<'a> {
    /// `[B, 3, H, W]`.
    Images(&'a Tensor),
    /// `[B, F]` pooled backbone features.
    Features(&'a Tensor),
}

/// What one classifier step computed.
#[derive(Debug, Clone)]
pub struct ClassifierStep {
    /// The mixup loss before the update.
    pub loss: f64,
    /// `[B, C]` logits of the mixed batch.
    pub logits: Tensor,
}

/// The reference's training step (`train.py`): mixup of the inputs and the encoded locations with
/// one `λ` and permutation, `λ·LS(out, y) + (1 − λ)·LS(out, y[perm])` with label smoothing,
/// backward, and the optimiser's update at `step.lr`. A non-finite loss stops before the update.
///
/// With `micro_batches > 1` (gradient accumulation) the mixed batch goes through the model in
/// that many near-equal parts, each with its own BatchNorm statistics (as on that many GPUs), and
/// their gradients add up to the whole batch's mean loss before one update. A part never holds
/// fewer than two images (BatchNorm needs two), so a small last batch takes fewer parts.
///
/// # Shapes
/// `input`: `[B, 3, H, W]` or `[B, F]`; `loc: [B, cin]`; `targets: [B]` → logits `[B, C]`.
pub fn classifier_step(
    model: &Classifier,
    optimizer: &mut Optimizer,
    input: StepInput<'_>,
    loc: Option<&Tensor>,
    targets: &Tensor,
    mix: &Mixup,
    smoothing: f64,
    micro_batches: usize,
    step: &StepContext,
) -> Result<ClassifierStep, TrainError> {
    let loc = loc.map(|loc| mixup(loc, &mix.perm, mix.lambda)).transpose()?;
    let (mixed, images) = match input {
        StepInput::Images(images) => (mixup(images, &mix.perm, mix.lambda)?, true),
        StepInput::Features(features) => (mixup(features, &mix.perm, mix.lambda)?, false),
    };
    let forward = |xs: &Tensor, loc: Option<&Tensor>| -> Result<Tensor, TrainError> {
        Ok(if images {
            model.forward_t(xs, loc, true)?.logits
        } else {
            model.forward_features_t(xs, loc, true)?.logits
        })
    };
    let n = mixed.dim(0)?;
    let parts = micro_batches.clamp(1, (n / 2).max(1));
    if parts == 1 {
        let logits = forward(&mixed, loc.as_ref())?;
        let loss = mixup_loss(&logits, targets, &mix.perm, mix.lambda, smoothing)?;
        let value = step.check_loss(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)?;
        optimizer.step(&loss.backward()?, step.lr)?;
        return Ok(ClassifierStep { loss: value, logits });
    }
    let permuted = targets.index_select(&mix.perm.to_dtype(DType::U32)?, 0)?;
    let trainable = model.store().trainable_vars();
    let mut total: Option<candle_core::backprop::GradStore> = None;
    let (mut value, mut all_logits) = (0.0, Vec::with_capacity(parts));
    let mut start = 0;
    for part in 0..parts {
        let len = n / parts + usize::from(part < n % parts);
        let part_input = mixed.narrow(0, start, len)?;
        let part_loc = loc.as_ref().map(|loc| loc.narrow(0, start, len)).transpose()?;
        let logits = forward(&part_input, part_loc.as_ref())?;
        let share = mixup_loss_share(
            &logits,
            &targets.narrow(0, start, len)?,
            &permuted.narrow(0, start, len)?,
            mix.lambda,
            smoothing,
            n,
        )?;
        value += share.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = share.backward()?;
        match &mut total {
            None => total = Some(grads),
            Some(total) => {
                for (_, var) in &trainable {
                    if let Some(grad) = grads.get(var.as_tensor()) {
                        let sum = match total.get(var.as_tensor()) {
                            Some(acc) => (acc + grad)?,
                            None => grad.clone(),
                        };
                        total.insert(var.as_tensor(), sum);
                    }
                }
            }
        }
        all_logits.push(logits.detach());
        start += len;
    }
    let value = step.check_loss(value)?;
    if let Some(total) = total {
        optimizer.step(&total, step.lr)?;
    }
    Ok(ClassifierStep { loss: value, logits: Tensor::cat(&all_logits, 0)? })
}

/// λ and the permutation of one step, drawn from the mixup stream (λ = 1 and the identity when
/// mixup is off).
pub fn draw_mixup(config: &TrainConfig, n: usize, step: &StepContext) -> Result<(f64, Vec<u32>), TrainError> {
    let mut perm: Vec<u32> = (0..n as u32).collect();
    if config.mixup_alpha <= 0.0 {
        return Ok((1.0, perm));
    }
    let seed = SeedStream::Mixup.seed(config.seed, &[step.epoch as u64, step.iteration as u64]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let beta = Beta::new(config.mixup_alpha, config.mixup_alpha)
        .map_err(|e| TrainError::Config(format!("mixup_alpha: {e}")))?;
    let lambda = beta.sample(&mut rng);
    perm.shuffle(&mut rng);
    Ok((lambda, perm))
}

/// A classifier, its optimiser and its recipe.
#[derive(Debug)]
pub struct ClassifierTrainer<'a> {
    model: &'a Classifier,
    optimizer: Optimizer,
    config: TrainConfig,
}

impl<'a> ClassifierTrainer<'a> {
    /// The optimiser `config` names over the model's trainable parameters.
    pub fn new(model: &'a Classifier, config: &TrainConfig) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        let optimizer = Optimizer::from_config(model.store().trainable_vars(), config);
        Ok(Self { model, optimizer, config: config.clone() })
    }
}

/// `[B, C]` logits of `model` averaged over every view and crop of `batch`, in eval mode.
pub fn classifier_scores(model: &Classifier, batch: &TensorBatch) -> Result<Tensor, EvalError> {
    view_mean_logits(&|images, loc| Ok(model.forward_t(images, loc, false).map_err(EvalError::model)?.logits), batch)
}

/// Evaluates `model` on `val`: accuracy and the label-smoothed loss per image, with each image's
/// `top_k` likeliest classes when `top_k > 0`.
pub fn evaluate_classifier(
    model: &Classifier,
    val: &dyn dmlp_eval::BatchSource,
    smoothing: f64,
    top_k: usize,
) -> Result<dmlp_eval::Evaluation, TrainError> {
    let batches = val.epoch(0)?.map(|b| b.map_err(TrainError::from));
    classifier_evaluation(model, batches, smoothing, top_k)
}

fn classifier_evaluation(
    model: &Classifier,
    batches: impl Iterator<Item = Result<TensorBatch, TrainError>>,
    smoothing: f64,
    top_k: usize,
) -> Result<dmlp_eval::Evaluation, TrainError> {
    let loss = move |logits: &Tensor, targets: &Tensor| label_smoothing_loss(logits, targets, smoothing);
    let scorer = |batch: &TensorBatch| classifier_scores(model, batch);
    evaluate_batches(batches, &scorer, ScoreKind::Logits, Some(&loss), top_k)
}

impl Trainable for ClassifierTrainer<'_> {
    type Batch = TensorBatch;

    fn train_step(&mut self, batch: TensorBatch, step: &StepContext) -> Result<StepOutcome, TrainError> {
        let images = batch.single_view()?;
        let n = images.dim(0)?;
        let (lambda, perm_ids) = draw_mixup(&self.config, n, step)?;
        let mix = Mixup { lambda, perm: Tensor::from_slice(&perm_ids, n, images.device())? };
        let dropout = SeedStream::Dropout.seed(self.config.seed, &[step.epoch as u64, step.iteration as u64]);
        self.model.reseed_dropout(dropout);
        let out = classifier_step(
            self.model,
            &mut self.optimizer,
            StepInput::Images(images),
            batch.loc.as_ref(),
            &batch.targets,
            &mix,
            self.config.label_smoothing,
            self.config.accumulate,
            step,
        )?;
        let targets = to_u32(&batch.targets)?;
        let permuted: Vec<u32> = perm_ids.iter().map(|p| targets[*p as usize]).collect();
        let rows = score_rows(&out.logits)?;
        let top1_hits =
            lambda * top_k_hits(&rows, &targets, 1)? as f64 + (1.0 - lambda) * top_k_hits(&rows, &permuted, 1)? as f64;
        Ok(StepOutcome { loss: out.loss, images: n, top1_hits })
    }

    fn evaluate(&self, val: &dyn Batches<TensorBatch>) -> Result<Accuracy, TrainError> {
        Ok(classifier_evaluation(self.model, val.epoch(0)?, self.config.label_smoothing, 0)?.accuracy)
    }

    fn model_tensors(&self) -> HashMap<String, Tensor> {
        self.model.store().tensors()
    }

    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        self.optimizer.state()
    }

    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError> {
        WeightsFile::read(model)?.load_into(self.model.store(), LoadPolicy::STRICT)?;
        let state = optimizer
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(self.model.dtype())?.to_device(self.model.device())?)))
            .collect::<Result<HashMap<_, _>, TrainError>>()?;
        self.optimizer.load_state(state)
    }
}
