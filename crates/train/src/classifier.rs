//! The Dynamic MLP classifier (or an image-only one) as a [`Trainable`]: the reference's step.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use dmlp_eval::{Accuracy, EvalError, ScoreKind, TensorBatch, evaluate_batches, view_mean_logits};
use dmlp_model::{Classifier, LoadPolicy, WeightsFile};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

use crate::fit::{Batches, StepContext, StepOutcome, Trainable};
use crate::precision::{Amp, Precision};
use crate::{
    Optimizer, SeedStream, TrainConfig, TrainError, label_smoothing_loss, mixup, mixup_loss_permuted, mixup_loss_share,
};

/// One step's mixup: `λ` and the permutation `[B]` (u32) that pairs each sample with another;
/// with `cut`, CutMix: the box `[y0, y1, x0, x1)` of each image comes from its partner (`λ` is
/// then the area kept) and the metadata blend with `λ`.
#[derive(Debug, Clone)]
pub struct Mixup {
    pub lambda: f64,
    pub perm: Tensor,
    pub cut: Option<[usize; 4]>,
}

/// One step's draw from the mixing stream ([`draw_mixup`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MixDraw {
    pub lambda: f64,
    pub perm: Vec<u32>,
    /// CutMix's box `[y0, y1, x0, x1)`, when this batch takes CutMix.
    pub cut: Option<[usize; 4]>,
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

impl<'a> StepInput<'a> {
    /// Pixels when `xs` is `[B, 3, H, W]`, pooled features when it is `[B, F]` (a model without
    /// a backbone).
    pub fn of(xs: &'a Tensor) -> Self {
        if xs.rank() == 4 { StepInput::Images(xs) } else { StepInput::Features(xs) }
    }
}

/// What one classifier step computed.
#[derive(Debug, Clone)]
pub struct ClassifierStep {
    /// The mixup loss before the update.
    pub loss: f64,
    /// `[B, C]` logits of the mixed batch.
    pub logits: Tensor,
    /// The update was skipped: f16's scaled gradients overflowed (the scale is halved).
    pub skipped: bool,
}

/// One batch's gradients before the update, summed over its parts: what data-parallel ranks
/// all-reduce.
#[derive(Debug, Clone)]
pub struct BatchGradients {
    /// By the model's trainable variables in `store().trainable_vars()` order (`None`: no
    /// gradient reached it), multiplied by the loss scale.
    pub grads: Vec<Option<Tensor>>,
    /// Scalar, f32, on the device: these parts' share of the batch's mean loss (unscaled).
    pub loss: Tensor,
    /// `[b, C]` logits of these parts, detached.
    pub logits: Tensor,
}

/// The gradients of `Σ_parts [λ·LS(out, y) + (1 − λ)·LS(out, y')] / batch_len` over an already
/// mixed `input` (all of a batch, or a data-parallel rank's share of one: `batch_len` is the
/// whole batch's size), in `micro_batches` near-equal parts each with its own BatchNorm
/// statistics, each part's loss multiplied by `amp`'s loss scale before backward and its
/// forward run in `amp`'s precision. A part never holds fewer than two images (BatchNorm needs
/// two), so a small batch takes fewer parts.
///
/// # Shapes
/// `input`: `[b, 3, H, W]` or `[b, F]`; `loc: [b, cin]`; `targets`, `permuted: [b]` → logits `[b, C]`.
pub fn classifier_gradients(
    model: &Classifier,
    input: StepInput<'_>,
    loc: Option<&Tensor>,
    targets: &Tensor,
    permuted: &Tensor,
    lambda: f64,
    smoothing: f64,
    batch_len: usize,
    micro_batches: usize,
    amp: &Amp,
) -> Result<BatchGradients, TrainError> {
    let (xs, images) = match input {
        StepInput::Images(images) => (images, true),
        StepInput::Features(features) => (features, false),
    };
    let n = xs.dim(0)?;
    let parts = micro_batches.clamp(1, (n / 2).max(1));
    let trainable = model.store().trainable_vars();
    let mut grads: Vec<Option<Tensor>> = vec![None; trainable.len()];
    let (mut loss, mut all_logits) = (None::<Tensor>, Vec::with_capacity(parts));
    let mut start = 0;
    for part in 0..parts {
        let len = n / parts + usize::from(part < n % parts);
        let part_input = xs.narrow(0, start, len)?;
        let part_loc = loc.map(|loc| loc.narrow(0, start, len)).transpose()?;
        let logits = amp.run(|| -> Result<Tensor, TrainError> {
            Ok(if images {
                model.forward_t(&part_input, part_loc.as_ref(), true)?.logits
            } else {
                model.forward_features_t(&part_input, part_loc.as_ref(), true)?.logits
            })
        })?;
        let (part_targets, part_permuted) = (targets.narrow(0, start, len)?, permuted.narrow(0, start, len)?);
        let share = if len == batch_len {
            // The whole batch in one pass: the reference's mean, to the last bit.
            mixup_loss_permuted(&logits, &part_targets, &part_permuted, lambda, smoothing)?
        } else {
            mixup_loss_share(&logits, &part_targets, &part_permuted, lambda, smoothing, batch_len)?
        };
        let scale = amp.loss_scale();
        let backward = if scale == 1.0 { share.backward()? } else { (&share * scale)?.backward()? };
        for ((_, var), sum) in trainable.iter().zip(grads.iter_mut()) {
            if let Some(grad) = backward.get(var.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(acc) => (acc + grad)?,
                    None => grad.clone(),
                });
            }
        }
        let share = share.detach().to_dtype(DType::F32)?;
        loss = Some(match loss {
            Some(acc) => (acc + share)?,
            None => share,
        });
        all_logits.push(logits.detach());
        start += len;
    }
    let loss = loss.ok_or_else(|| TrainError::Config("a training step over an empty batch".into()))?;
    Ok(BatchGradients { grads, loss, logits: Tensor::cat(&all_logits, 0)? })
}

/// Applies a batch's (all-reduced) gradients: reads the loss back and stops on a non-finite
/// one, unscales f16's gradients and skips the update (halving the scale) when one overflowed,
/// then steps the optimiser at `step.lr`. Returns the loss and whether the update was skipped.
pub fn apply_gradients(
    model: &Classifier,
    optimizer: &mut Optimizer,
    gradients: &BatchGradients,
    amp: &mut Amp,
    step: &StepContext,
) -> Result<(f64, bool), TrainError> {
    let loss = step.check_loss(gradients.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)?;
    let skipped = update(model, optimizer, gradients, amp, step)?;
    Ok((loss, skipped))
}

/// The update of [`apply_gradients`] without reading the loss back: the device keeps queueing
/// (the caller checks the loss later). Returns whether the update was skipped (f16 only, which
/// reads its gradients' finiteness back every step).
fn update(
    model: &Classifier,
    optimizer: &mut Optimizer,
    gradients: &BatchGradients,
    amp: &mut Amp,
    step: &StepContext,
) -> Result<bool, TrainError> {
    let trainable = model.store().trainable_vars();
    let scale = amp.loss_scale();
    let mut store = GradStore::default();
    let mut squares: Option<Tensor> = None;
    for ((_, var), grad) in trainable.iter().zip(&gradients.grads) {
        let Some(grad) = grad else { continue };
        let grad = if scale == 1.0 { grad.clone() } else { (grad / scale)? };
        if amp.scaler().is_some() {
            let sum = grad.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            squares = Some(match squares {
                Some(acc) => (acc + sum)?,
                None => sum,
            });
        }
        store.insert(var.as_tensor(), grad);
    }
    if amp.scaler().is_some() {
        let finite = match squares {
            Some(squares) => squares.to_scalar::<f32>()?.is_finite(),
            None => true,
        };
        amp.update(finite);
        if !finite {
            return Ok(true);
        }
    }
    optimizer.step(&store, step.lr)?;
    Ok(false)
}

/// The reference's training step (`train.py`): mixup of the inputs and the encoded locations with
/// one `λ` and permutation, `λ·LS(out, y) + (1 − λ)·LS(out, y[perm])` with label smoothing,
/// backward, and the optimiser's update at `step.lr`. A non-finite loss stops before the update.
///
/// With `micro_batches > 1` (gradient accumulation) the mixed batch goes through the model in
/// that many near-equal parts, each with its own BatchNorm statistics (as on that many GPUs), and
/// their gradients add up to the whole batch's mean loss before one update (see
/// [`classifier_gradients`]). `amp` sets the precision and, for f16, scales the loss.
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
    amp: &mut Amp,
    step: &StepContext,
) -> Result<ClassifierStep, TrainError> {
    let (gradients, _) = mixed_gradients(model, input, loc, targets, mix, smoothing, micro_batches, amp)?;
    let (loss, skipped) = apply_gradients(model, optimizer, &gradients, amp, step)?;
    Ok(ClassifierStep { loss, logits: gradients.logits, skipped })
}

/// Mixes the batch (inputs and encoded locations, one λ and permutation) and computes its
/// gradients ([`classifier_gradients`]); also returns the permuted targets `y[perm]`.
fn mixed_gradients(
    model: &Classifier,
    input: StepInput<'_>,
    loc: Option<&Tensor>,
    targets: &Tensor,
    mix: &Mixup,
    smoothing: f64,
    micro_batches: usize,
    amp: &Amp,
) -> Result<(BatchGradients, Tensor), TrainError> {
    let loc = loc.map(|loc| mixup(loc, &mix.perm, mix.lambda)).transpose()?;
    let (xs, images) = match input {
        StepInput::Images(xs) => (xs, true),
        StepInput::Features(xs) => (xs, false),
    };
    let mixed = match mix.cut {
        Some(cut) if images => cutmix(xs, &mix.perm, cut)?,
        _ => mixup(xs, &mix.perm, mix.lambda)?,
    };
    let input = if images { StepInput::Images(&mixed) } else { StepInput::Features(&mixed) };
    let permuted = targets.index_select(&mix.perm.to_dtype(DType::U32)?, 0)?;
    let n = mixed.dim(0)?;
    let gradients = classifier_gradients(
        model,
        input,
        loc.as_ref(),
        targets,
        &permuted,
        mix.lambda,
        smoothing,
        n,
        micro_batches,
        amp,
    )?;
    Ok((gradients, permuted))
}

/// λ and the permutation of one step, drawn from the mixup stream (λ = 1 and the identity when
/// mixing is off); with CutMix on, its box for `(height, width)` images. With mixup alone the
/// draws are the same as before CutMix existed, so earlier runs resume exactly.
pub fn draw_mixup(
    config: &TrainConfig,
    n: usize,
    (height, width): (usize, usize),
    step: &StepContext,
) -> Result<MixDraw, TrainError> {
    let mut perm: Vec<u32> = (0..n as u32).collect();
    let (mixup_on, cutmix_on) = (config.mixup_alpha > 0.0, config.cutmix_alpha > 0.0);
    if !mixup_on && !cutmix_on {
        return Ok(MixDraw { lambda: 1.0, perm, cut: None });
    }
    let seed = SeedStream::Mixup.seed(config.seed, &[step.epoch as u64, step.iteration as u64]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let use_cutmix = match (mixup_on, cutmix_on) {
        (true, true) => rng.random::<f64>() < config.mix_switch_prob,
        (false, true) => true,
        _ => false,
    };
    let alpha = if use_cutmix { config.cutmix_alpha } else { config.mixup_alpha };
    let name = if use_cutmix { "cutmix_alpha" } else { "mixup_alpha" };
    let beta = Beta::new(alpha, alpha).map_err(|e| TrainError::Config(format!("{name}: {e}")))?;
    let lambda = beta.sample(&mut rng);
    perm.shuffle(&mut rng);
    if !use_cutmix {
        return Ok(MixDraw { lambda, perm, cut: None });
    }
    let (cut, kept) = cutmix_box(lambda, (height, width), &mut rng);
    Ok(MixDraw { lambda: kept, perm, cut: Some(cut) })
}

/// timm's `rand_bbox` and `correct_lam`: a box of `√(1 − λ)` of each side centred uniformly
/// (clipped to the image), and the fraction of the image outside it.
fn cutmix_box(lambda: f64, (h, w): (usize, usize), rng: &mut ChaCha8Rng) -> ([usize; 4], f64) {
    let ratio = (1.0 - lambda).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
    let (cy, cx) = (rng.random_range(0..h.max(1)), rng.random_range(0..w.max(1)));
    let (y0, y1) = (cy.saturating_sub(cut_h / 2), (cy + cut_h / 2).min(h));
    let (x0, x1) = (cx.saturating_sub(cut_w / 2), (cx + cut_w / 2).min(w));
    let kept = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w).max(1) as f64;
    ([y0, y1, x0, x1], kept)
}

/// CutMix of a batch of images: the box `[y0, y1, x0, x1)` of each image replaced by its
/// partner's (`perm`).
///
/// # Shapes
/// `xs: [B, C, H, W]`, `perm: [B]` → `[B, C, H, W]`.
pub fn cutmix(xs: &Tensor, perm: &Tensor, cut: [usize; 4]) -> candle_core::Result<Tensor> {
    cutmix_pairs(xs, &xs.index_select(&perm.to_dtype(DType::U32)?, 0)?, cut)
}

/// [`cutmix`] with each image's partner given: `own` outside the box, `partner` inside.
///
/// # Shapes
/// `own: [B, C, H, W]`, `partner: [B, C, H, W]` → `[B, C, H, W]`.
pub fn cutmix_pairs(own: &Tensor, partner: &Tensor, [y0, y1, x0, x1]: [usize; 4]) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = own.dims4()?;
    let inside = |i: usize| (y0..y1).contains(&(i / w)) && (x0..x1).contains(&(i % w));
    let mask: Vec<f32> = (0..h * w).map(|i| if inside(i) { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (1, 1, h, w), own.device())?.to_dtype(own.dtype())?;
    own.broadcast_add(&(partner - own)?.broadcast_mul(&mask)?)
}

/// A classifier, its optimiser and its recipe.
#[derive(Debug)]
pub struct ClassifierTrainer<'a> {
    model: &'a Classifier,
    optimizer: Optimizer,
    amp: Amp,
    config: TrainConfig,
}

impl<'a> ClassifierTrainer<'a> {
    /// The optimiser `config` names over the model's trainable parameters, in `config.precision`.
    /// Mixed precision keeps f32 master weights: it needs a model held in f32.
    pub fn new(model: &'a Classifier, config: &TrainConfig) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        check_master_dtype(model, config.precision)?;
        let optimizer = Optimizer::from_config(model.store().trainable_vars(), config);
        Ok(Self { model, optimizer, amp: Amp::new(config.precision), config: config.clone() })
    }
}

/// Refuses mixed precision on a model not held in f32: it keeps f32 master weights.
pub(crate) fn check_master_dtype(model: &Classifier, precision: Precision) -> Result<(), TrainError> {
    if precision != Precision::F32 && model.dtype() != DType::F32 {
        return Err(TrainError::Config(format!(
            "precision = \"{}\" keeps f32 master weights and computes in half precision: set model.dtype = \"f32\" (it is {:?})",
            precision.as_str(),
            model.dtype()
        )));
    }
    Ok(())
}

/// The optimiser's state and the precision's (f16's loss scale), as a checkpoint keeps them.
pub(crate) fn replica_state(optimizer: &Optimizer, amp: &Amp) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut state = optimizer.state()?;
    state.extend(amp.state()?);
    Ok(state)
}

/// Loads a checkpoint into a model, its optimiser and its precision's state (moved to the
/// model's device and dtype).
pub(crate) fn restore_replica(
    model: &Classifier,
    optimizer: &mut Optimizer,
    amp: &mut Amp,
    weights: &Path,
    state: HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    WeightsFile::read(weights)?.load_into(model.store(), LoadPolicy::STRICT)?;
    load_replica_state(model, optimizer, amp, state)
}

/// Loads an optimiser's and a precision's state (as [`replica_state`] gives it) into a
/// replica, moved to the model's device and dtype.
pub(crate) fn load_replica_state(
    model: &Classifier,
    optimizer: &mut Optimizer,
    amp: &mut Amp,
    mut state: HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    amp.take_state(&mut state)?;
    let state = state
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(model.dtype())?.to_device(model.device())?)))
        .collect::<Result<HashMap<_, _>, TrainError>>()?;
    optimizer.load_state(state)
}

/// Top-1 hits of a mixed batch on its device, `λ·hits(y) + (1 − λ)·hits(y')` as a scalar f32:
/// a hit when the target's logit is the row's largest (ties in the target's favour, a NaN never
/// a hit), as `dmlp_eval::top_k_hits` counts, without copying the logits to the host.
///
/// # Shapes
/// `logits: [b, C]`, `targets`, `permuted: [b]` → scalar.
pub(crate) fn train_top1_hits(
    logits: &Tensor,
    targets: &Tensor,
    permuted: &Tensor,
    lambda: f64,
) -> Result<Tensor, TrainError> {
    let logits = logits.to_dtype(DType::F32)?;
    let best = logits.max_keepdim(1)?;
    let hits = |t: &Tensor| -> Result<Tensor, TrainError> {
        let own = logits.gather(&t.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
        Ok(own.ge(&best)?.to_dtype(DType::F32)?.sum_all()?)
    };
    Ok(((hits(targets)? * lambda)? + (hits(permuted)? * (1.0 - lambda))?)?)
}

/// `[B, C]` logits of `model` averaged over every view and crop of `batch`, in eval mode (in the
/// calling thread's autocast, if any).
pub fn classifier_scores(model: &Classifier, batch: &TensorBatch) -> Result<Tensor, EvalError> {
    sharded_classifier_scores(&[model], dmlp_nn::autocast_dtype(), batch)
}

/// `[B, C]` logits of `batch`, averaged over its views and crops as [`classifier_scores`], with
/// every forward's rows split across `models` (copies of one model, one per device), each
/// computing its share on its own thread and device under `autocast`; the shares come back to
/// the batch's device in row order. One model computes alone, on the calling thread.
pub fn sharded_classifier_scores(
    models: &[&Classifier],
    autocast: Option<DType>,
    batch: &TensorBatch,
) -> Result<Tensor, EvalError> {
    let forward = |model: &Classifier, images: &Tensor, loc: Option<&Tensor>| -> Result<Tensor, EvalError> {
        let logits = dmlp_nn::with_autocast(autocast, || model.forward_t(images, loc, false));
        Ok(logits.map_err(EvalError::model)?.logits)
    };
    if let [model] = models {
        return view_mean_logits(&|images, loc| forward(model, images, loc), batch);
    }
    view_mean_logits(
        &|images: &Tensor, loc: Option<&Tensor>| {
            let home = images.device();
            let rows = images.dim(0)?;
            let shares: Vec<Result<Tensor, EvalError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = models
                    .iter()
                    .zip(row_shares(rows, models.len()))
                    .filter(|(_, (_, len))| *len > 0)
                    .map(|(&model, (start, len))| {
                        scope.spawn(move || -> Result<Tensor, EvalError> {
                            let device = model.device();
                            let images = images.narrow(0, start, len)?.to_device(device)?;
                            let loc = loc.map(|l| l.narrow(0, start, len)?.to_device(device)).transpose()?;
                            Ok(forward(model, &images, loc.as_ref())?.to_device(home)?)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(EvalError::Data("an evaluation thread panicked".into()))))
                    .collect()
            });
            Ok(Tensor::cat(&shares.into_iter().collect::<Result<Vec<_>, _>>()?, 0)?)
        },
        batch,
    )
}

/// `rows` split into `parts` contiguous shares `(start, len)`, the first `rows % parts` one longer.
fn row_shares(rows: usize, parts: usize) -> Vec<(usize, usize)> {
    let mut start = 0;
    (0..parts)
        .map(|part| {
            let len = rows / parts + usize::from(part < rows % parts);
            start += len;
            (start - len, len)
        })
        .collect()
}

/// Evaluates `model` on `val`: accuracy and the label-smoothed loss per image, with each image's
/// `top_k` likeliest classes when `top_k > 0`.
pub fn evaluate_classifier(
    model: &Classifier,
    val: &dyn dmlp_eval::BatchSource,
    smoothing: f64,
    top_k: usize,
) -> Result<dmlp_eval::Evaluation, TrainError> {
    evaluate_sharded(&[model], val, smoothing, top_k)
}

/// [`evaluate_classifier`] with each batch's rows split across `models`, copies of one model on
/// several devices ([`sharded_classifier_scores`]).
pub fn evaluate_sharded(
    models: &[&Classifier],
    val: &dyn dmlp_eval::BatchSource,
    smoothing: f64,
    top_k: usize,
) -> Result<dmlp_eval::Evaluation, TrainError> {
    let batches = val.epoch(0)?.map(|b| b.map_err(TrainError::from));
    classifier_evaluation(models, None, batches, smoothing, top_k)
}

pub(crate) fn classifier_evaluation(
    models: &[&Classifier],
    autocast: Option<DType>,
    batches: impl Iterator<Item = Result<TensorBatch, TrainError>>,
    smoothing: f64,
    top_k: usize,
) -> Result<dmlp_eval::Evaluation, TrainError> {
    if models.is_empty() {
        return Err(TrainError::Parallel("an evaluation needs a model".into()));
    }
    let loss = move |logits: &Tensor, targets: &Tensor| label_smoothing_loss(logits, targets, smoothing);
    let scorer = |batch: &TensorBatch| sharded_classifier_scores(models, autocast, batch);
    evaluate_batches(batches, &scorer, ScoreKind::Logits, Some(&loss), top_k)
}

impl Trainable for ClassifierTrainer<'_> {
    type Batch = TensorBatch;

    fn train_step(&mut self, batch: TensorBatch, step: &StepContext) -> Result<StepOutcome, TrainError> {
        let images = batch.single_view()?;
        let n = images.dim(0)?;
        let hw = if images.rank() == 4 { (images.dim(2)?, images.dim(3)?) } else { (1, 1) };
        let draw = draw_mixup(&self.config, n, hw, step)?;
        let lambda = draw.lambda;
        let mix = Mixup { lambda, perm: Tensor::from_slice(&draw.perm, n, images.device())?, cut: draw.cut };
        let dropout = SeedStream::Dropout.seed(self.config.seed, &[step.epoch as u64, step.iteration as u64]);
        self.model.reseed_dropout(dropout);
        let (gradients, permuted) = mixed_gradients(
            self.model,
            StepInput::of(images),
            batch.loc.as_ref(),
            &batch.targets,
            &mix,
            self.config.label_smoothing,
            self.config.accumulate,
            &self.amp,
        )?;
        let hits = train_top1_hits(&gradients.logits, &batch.targets, &permuted, lambda)?;
        // f16's scaler reads its gradients back every step anyway: nothing to defer then.
        if self.config.sync_every_on(self.model.device()) > 1 && self.amp.scaler().is_none() {
            // The loss and hits stay on the device, `[2]`, for `fit` to read back with others.
            update(self.model, &mut self.optimizer, &gradients, &mut self.amp, step)?;
            let figures = Tensor::stack(&[gradients.loss.to_dtype(DType::F32)?, hits], 0)?;
            return Ok(StepOutcome::pending(figures, n));
        }
        let (loss, _) = apply_gradients(self.model, &mut self.optimizer, &gradients, &mut self.amp, step)?;
        Ok(StepOutcome::measured(loss, n, hits.to_dtype(DType::F64)?.to_scalar::<f64>()?))
    }

    fn evaluate(&self, val: &dyn Batches<TensorBatch>) -> Result<Accuracy, TrainError> {
        let autocast = self.config.precision.autocast();
        let evaluation = classifier_evaluation(&[self.model], autocast, val.epoch(0)?, self.config.label_smoothing, 0)?;
        Ok(evaluation.accuracy)
    }

    fn model_tensors(&self) -> HashMap<String, Tensor> {
        self.model.store().tensors()
    }

    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        replica_state(&self.optimizer, &self.amp)
    }

    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError> {
        restore_replica(self.model, &mut self.optimizer, &mut self.amp, model, optimizer)
    }
}
