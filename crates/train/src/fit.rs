//! The one training loop: whatever is trained implements [`Trainable`]; [`fit`] owns the rest.
//!
//! `fit` runs the epochs, asks the [`Schedule`] for each step's learning rate, stops on a
//! non-finite loss (the step reports it before its update), evaluates after every epoch, keeps
//! `best` by the metric the plan names, and writes the run folder: each epoch's checkpoint first
//! (with the metrics so far inside it), then `metrics.jsonl`/`metrics.csv`, so a run killed at any
//! moment resumes from a checkpoint whose metrics it carries. Resume is one rule for everyone:
//! `resume` without a checkpoint is an error naming the folder, and a folder that already holds a
//! run (a checkpoint or metrics) is an error without `resume`.
//!
//! Progress goes to a [`FitObserver`] that the binaries attach; this crate prints nothing.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use dmlp_eval::{Accuracy, BatchSource, SkippedItem, TensorBatch};
use serde::{Deserialize, Serialize};

use crate::run_dir::{CheckpointState, EpochMetrics, RunDir};
use crate::{LrSchedule, TrainError, lr_at};

/// Where a training step happens, and its learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// 1-based.
    pub epoch: usize,
    /// 0-based within the epoch.
    pub iteration: usize,
    pub lr: f64,
}

impl StepContext {
    /// `loss` if finite; otherwise the error that stops the run (call it before the update).
    pub fn check_loss(&self, loss: f64) -> Result<f64, TrainError> {
        if loss.is_finite() {
            Ok(loss)
        } else {
            Err(TrainError::NonFinite { epoch: self.epoch, iteration: self.iteration, loss })
        }
    }
}

/// What one training step measured.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The batch's mean loss before the update (NaN while `pending`).
    pub loss: f64,
    pub images: usize,
    /// Top-1 hits on the training batch (λ-weighted against both targets under mixup; NaN while
    /// `pending`).
    pub top1_hits: f64,
    /// `[2]` (loss, top-1 hits) still on the device: the step did not wait for them, and [`fit`]
    /// reads a run of them back in one copy every `sync_every` steps.
    pub pending: Option<Tensor>,
}

impl StepOutcome {
    /// A step whose figures are on the host.
    pub fn measured(loss: f64, images: usize, top1_hits: f64) -> Self {
        Self { loss, images, top1_hits, pending: None }
    }

    /// A step whose figures, `[2]` (loss, top-1 hits), are still on the device.
    pub fn pending(figures: Tensor, images: usize) -> Self {
        Self { loss: f64::NAN, images, top1_hits: f64::NAN, pending: Some(figures) }
    }
}

/// A model with its optimiser, as the loop sees it.
pub trait Trainable {
    /// What one step consumes.
    type Batch;

    /// One optimisation step (forward, loss, backward, update).
    fn train_step(&mut self, batch: Self::Batch, step: &StepContext) -> Result<StepOutcome, TrainError>;

    /// Measures the model on `val`.
    fn evaluate(&self, val: &dyn Batches<Self::Batch>) -> Result<Accuracy, TrainError>;

    /// The model's tensors by their `state_dict` names (parameters and buffers).
    fn model_tensors(&self) -> HashMap<String, Tensor>;

    /// The optimiser's state by name.
    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError>;

    /// Loads a checkpoint's model file and optimiser state (on the CPU; move them to the device).
    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError>;

    /// Called once before the first step with the epochs this process would train (by [`fit`]
    /// after any resume, by [`follow`] with an empty span); returns the epochs to train. A
    /// trainer spanning processes gives every process the leader's span and state; the default,
    /// one process, returns `epochs`.
    fn synchronise_start(&mut self, epochs: RangeInclusive<usize>) -> Result<RangeInclusive<usize>, TrainError> {
        Ok(epochs)
    }
}

/// A split as epochs of batches of any kind (the same batches for the same epoch).
pub trait Batches<B> {
    fn batches_per_epoch(&self) -> usize;
    /// Items (images, locations) per epoch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batches of `epoch` (1-based for training; evaluation passes 0).
    fn epoch(&self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<B, TrainError>> + '_>, TrainError>;

    /// The files skipped since the last call (see [`BatchSource::take_skipped`]).
    fn take_skipped(&self) -> Vec<SkippedItem> {
        Vec::new()
    }
}

impl<S: BatchSource + ?Sized> Batches<TensorBatch> for S {
    fn batches_per_epoch(&self) -> usize {
        BatchSource::batches_per_epoch(self)
    }

    fn len(&self) -> usize {
        BatchSource::len(self)
    }

    fn epoch(
        &self,
        epoch: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<TensorBatch, TrainError>> + '_>, TrainError> {
        Ok(Box::new(BatchSource::epoch(self, epoch)?.map(|b| b.map_err(TrainError::from))))
    }

    fn take_skipped(&self) -> Vec<SkippedItem> {
        BatchSource::take_skipped(self)
    }
}

/// An epoch's running training figures.
#[derive(Debug, Default)]
struct StepSums {
    loss_sum: f64,
    hits: f64,
    seen: usize,
}

impl StepSums {
    fn add(
        &mut self,
        step: &StepContext,
        images: usize,
        loss: f64,
        hits: f64,
        observer: &mut dyn FitObserver,
    ) -> Result<(), TrainError> {
        let loss = step.check_loss(loss)?;
        self.loss_sum += loss * images as f64;
        self.hits += hits;
        self.seen += images;
        observer.step_finished(images, self.loss_sum / self.seen.max(1) as f64, step.lr);
        Ok(())
    }

    /// Reads the pending steps' figures back in one copy and adds them in order; the first
    /// non-finite loss stops the run naming its step (the steps after it updated the weights in
    /// memory, but no checkpoint is written from them).
    fn read_back(
        &mut self,
        pending: &mut Vec<(StepContext, usize, Tensor)>,
        observer: &mut dyn FitObserver,
    ) -> Result<(), TrainError> {
        if pending.is_empty() {
            return Ok(());
        }
        let figures: Vec<Tensor> =
            pending.iter().map(|(_, _, f)| f.to_dtype(candle_core::DType::F32)).collect::<Result<_, _>>()?;
        let rows = Tensor::stack(&figures, 0)?.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        for ((step, images, _), row) in pending.drain(..).zip(rows) {
            self.add(&step, images, f64::from(row[0]), f64::from(row[1]), observer)?;
        }
        Ok(())
    }
}

/// The learning rate over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The reference's linear warm-up per iteration, then cosine per epoch.
    WarmupCosine(LrSchedule),
    /// Linear warm-up and cosine, both per step, down to `min_lr` (the transformer recipe).
    StepCosine {
        schedule: LrSchedule,
        min_lr: f64,
    },
    /// `lr · decay^(epoch − 1)` (PriorsNet).
    Exponential {
        lr: f64,
        decay: f64,
    },
    Constant(f64),
}

impl Schedule {
    /// The learning rate at 1-based `epoch`, 0-based `iteration` of `iters_per_epoch`.
    pub fn lr(&self, epoch: usize, iteration: usize, iters_per_epoch: usize) -> f64 {
        match *self {
            Schedule::WarmupCosine(s) => lr_at(s, epoch, iteration, iters_per_epoch),
            Schedule::StepCosine { schedule, min_lr } => {
                crate::schedule::step_cosine_lr_at(schedule, min_lr, epoch, iteration, iters_per_epoch)
            }
            Schedule::Exponential { lr, decay } => lr * decay.powi(epoch.saturating_sub(1) as i32),
            Schedule::Constant(lr) => lr,
        }
    }
}

/// Which validation metric picks the `best` checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestBy {
    /// The highest validation top-1 (the earliest epoch on ties).
    #[default]
    ValTop1,
    /// The lowest validation loss.
    ValLoss,
}

impl BestBy {
    fn value(self, m: &EpochMetrics) -> f64 {
        match self {
            BestBy::ValTop1 => m.val_top1,
            BestBy::ValLoss => m.val_loss,
        }
    }

    fn improves(self, candidate: f64, best: Option<f64>) -> bool {
        match (self, best) {
            (_, None) => true,
            (BestBy::ValTop1, Some(best)) => candidate > best,
            (BestBy::ValLoss, Some(best)) => candidate < best,
        }
    }
}

/// How long and how to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitPlan {
    pub epochs: usize,
    pub schedule: Schedule,
    pub best_by: BestBy,
    /// Stop after this epoch even if `epochs` is larger (the schedule still spans `epochs`).
    pub stop_after: Option<usize>,
    /// Steps whose figures stay on the device before one read brings them back (see
    /// [`StepOutcome::pending`]); 1 reads every step.
    pub sync_every: usize,
}

/// What the binaries watch: progress, per-epoch summaries.
pub trait FitObserver {
    fn resumed(&mut self, _run: &Path, _after_epoch: usize) {}
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _items: usize) {}
    fn step_finished(&mut self, _items: usize, _mean_loss: f64, _lr: f64) {}
    fn epoch_finished(&mut self, _metrics: &EpochMetrics, _epochs: usize) {}
    /// Something the operator should know that does not stop the run.
    fn warning(&mut self, _message: &str) {}
    /// A fact about the run worth one line (what was loaded, from where).
    fn note(&mut self, _message: &str) {}
    /// The run stops with an error.
    fn failed(&mut self) {}
}

/// Watches nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl FitObserver for Silent {}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct FitSummary {
    pub metrics: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub best_by: BestBy,
}

impl FitSummary {
    /// The metrics of the best epoch.
    pub fn best(&self) -> Option<&EpochMetrics> {
        self.metrics.iter().find(|m| m.epoch == self.best_epoch)
    }

    /// The best epoch's validation top-1 (NaN when no epoch ran).
    pub fn best_top1(&self) -> f64 {
        self.best().map_or(f64::NAN, |m| m.val_top1)
    }
}

/// One epoch's steps: the running figures and the last step's learning rate.
fn train_epoch<T: Trainable>(
    model: &mut T,
    plan: &FitPlan,
    train: &dyn Batches<T::Batch>,
    epoch: usize,
    observer: &mut dyn FitObserver,
) -> Result<(StepSums, f64), TrainError> {
    let iters = train.batches_per_epoch();
    observer.epoch_started(epoch, plan.epochs, train.len());
    let mut sums = StepSums::default();
    let mut lr = 0.0;
    let mut pending: Vec<(StepContext, usize, Tensor)> = Vec::new();
    for (iteration, batch) in train.epoch(epoch)?.enumerate() {
        lr = plan.schedule.lr(epoch, iteration, iters);
        let step = StepContext { epoch, iteration, lr };
        let outcome = model.train_step(batch?, &step)?;
        match outcome.pending {
            Some(figures) => {
                pending.push((step, outcome.images, figures));
                if pending.len() >= plan.sync_every.max(1) {
                    sums.read_back(&mut pending, observer)?;
                }
            }
            None => sums.add(&step, outcome.images, outcome.loss, outcome.top1_hits, observer)?,
        }
    }
    sums.read_back(&mut pending, observer)?;
    Ok((sums, lr))
}

/// A node of a job spanning processes other than the leader's: trains the leader's epochs
/// (from [`Trainable::synchronise_start`]) step for step beside it, and neither evaluates nor
/// writes anything (the leader's run folder is the run). Returns the epochs trained.
pub fn follow<T: Trainable>(
    model: &mut T,
    plan: &FitPlan,
    train: &dyn Batches<T::Batch>,
    observer: &mut dyn FitObserver,
) -> Result<Vec<usize>, TrainError> {
    let mut epochs = || -> Result<Vec<usize>, TrainError> {
        if train.batches_per_epoch() == 0 {
            return Err(TrainError::Data("the training split gives no batch".into()));
        }
        let mut trained = Vec::new();
        #[allow(clippy::reversed_empty_ranges)] // empty on purpose: the leader's span replaces it
        for epoch in model.synchronise_start(1..=0)? {
            let started = Instant::now();
            let (sums, lr) = train_epoch(model, plan, train, epoch, observer)?;
            let skipped = train.take_skipped().len();
            observer.note(&format!(
                "epoch {epoch}: {} images, train loss {:.4}, lr {lr:.3e}, {:.1} images/s{} (node 0 evaluates)",
                sums.seen,
                sums.loss_sum / sums.seen.max(1) as f64,
                sums.seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                if skipped > 0 { format!(", {skipped} unreadable images skipped") } else { String::new() }
            ));
            trained.push(epoch);
        }
        Ok(trained)
    };
    let result = epochs();
    if result.is_err() {
        observer.failed();
    }
    result
}

/// Trains `model` on `train`, evaluating on `val` after every epoch, writing `run`.
pub fn fit<T: Trainable>(
    model: &mut T,
    plan: &FitPlan,
    train: &dyn Batches<T::Batch>,
    val: &dyn Batches<T::Batch>,
    run: &RunDir,
    resume: bool,
    observer: &mut dyn FitObserver,
) -> Result<FitSummary, TrainError> {
    // Every error path tells the observer (a progress bar is abandoned, not left drawn).
    let mut epochs = || -> Result<FitSummary, TrainError> {
        if plan.epochs == 0 {
            return Err(TrainError::Config("a run needs at least one epoch".into()));
        }
        let (mut metrics, mut best_epoch) = (Vec::new(), 0);
        if resume {
            let checkpoint = run.checkpoint("last")?.ok_or_else(|| {
                TrainError::Config(format!("--resume: {} holds no checkpoint to resume from", run.root().display()))
            })?;
            model.restore(&checkpoint.model, checkpoint.optimizer)?;
            let epoch = checkpoint.state.epoch;
            if epoch > plan.epochs {
                return Err(TrainError::Config(format!(
                    "{}: the last checkpoint is of epoch {epoch}, beyond this run's {} epochs: resume with the run's own config",
                    run.root().display(),
                    plan.epochs
                )));
            }
            best_epoch = checkpoint.state.best_epoch;
            // The checkpoint carries the metrics up to its epoch; older checkpoints did not, and their
            // metrics file is cut at the checkpoint instead. Epochs recorded after it are redone.
            metrics = if checkpoint.state.metrics.is_empty() {
                run.read_metrics()?.into_iter().filter(|m| m.epoch <= epoch).collect()
            } else {
                checkpoint.state.metrics
            };
            run.write_metrics(&metrics)?;
            observer.resumed(run.root(), epoch);
        } else if run.last_state()?.is_some() {
            return Err(TrainError::Config(format!(
                "{} already holds a run: pass --resume to continue it, or choose another run folder",
                run.root().display()
            )));
        } else if !run.read_metrics()?.is_empty() {
            // Metrics without any checkpoint: a run that died before its first checkpoint was
            // published (older versions wrote metrics first). Nothing can be resumed from it.
            observer.warning(&format!(
                "{} holds metrics but no checkpoint (a run that stopped before its first checkpoint): starting afresh",
                run.root().display()
            ));
            run.write_metrics(&[])?;
        }
        if train.batches_per_epoch() == 0 {
            return Err(TrainError::Data("the training split gives no batch".into()));
        }
        let start_epoch = metrics.last().map_or(1, |m| m.epoch + 1);
        let last_epoch = plan.stop_after.map_or(plan.epochs, |stop| stop.min(plan.epochs));
        for epoch in model.synchronise_start(start_epoch..=last_epoch)? {
            let started = Instant::now();
            let (StepSums { loss_sum, hits, seen }, lr) = train_epoch(model, plan, train, epoch, observer)?;
            let train_seconds = started.elapsed().as_secs_f64();
            let train_skipped = train.take_skipped();
            let accuracy = model.evaluate(val)?;
            let val_skipped = val.take_skipped();
            for (split, skipped) in [("training", &train_skipped), ("validation", &val_skipped)] {
                if !skipped.is_empty() {
                    observer.warning(&format!(
                        "epoch {epoch}: {} unreadable {split} images skipped (bad_images = \"skip\"; listed in {})",
                        skipped.len(),
                        run.bad_images_file().display()
                    ));
                }
            }
            let epoch_metrics = EpochMetrics {
                epoch,
                lr,
                train_loss: loss_sum / seen.max(1) as f64,
                train_top1: 100.0 * hits / seen.max(1) as f64,
                val_loss: accuracy.loss.ok_or_else(|| TrainError::Data("the evaluation computed no loss".into()))?,
                val_top1: accuracy.top1,
                val_top5: accuracy.top5,
                val_mean_class_top1: accuracy.mean_class_top1,
                train_images: seen,
                val_images: accuracy.images,
                epoch_seconds: started.elapsed().as_secs_f64(),
                images_per_s: seen as f64 / train_seconds.max(1e-9),
                train_bad_images: train_skipped.len(),
                val_bad_images: val_skipped.len(),
            };
            epoch_metrics.check_finite()?;
            let best_so_far =
                metrics.iter().find(|m: &&EpochMetrics| m.epoch == best_epoch).map(|m| plan.best_by.value(m));
            let is_best = plan.best_by.improves(plan.best_by.value(&epoch_metrics), best_so_far);
            if is_best {
                best_epoch = epoch;
            }
            metrics.push(epoch_metrics.clone());
            let state = CheckpointState { epoch, best_epoch, metrics: metrics.clone() };
            run.save_checkpoint(&state, &model.model_tensors(), &model.optimizer_state()?, is_best)?;
            run.write_metrics(&metrics)?;
            run.record_bad_images(&train_skipped, &val_skipped)?;
            observer.epoch_finished(&epoch_metrics, plan.epochs);
        }
        Ok(FitSummary { metrics, best_epoch, best_by: plan.best_by })
    };
    let result = epochs();
    if result.is_err() {
        observer.failed();
    }
    result
}
