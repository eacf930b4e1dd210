//! Training: the reference recipe's numeric pieces (`train.py`, `utils.py`; spec §7).
//!
//! - [`Sgd`]: SGD with momentum, dampening 0 and weight decay in PyTorch's semantics
//!   (`g += wd·p; buf = momentum·buf + g` with `buf = g` at the first step; `p −= lr·buf`, or
//!   `p −= lr·(g + momentum·buf)` with Nesterov). Weight decay applies to every parameter, as in
//!   the reference.
//! - [`label_smoothing_loss`]: cross-entropy against `1 − s` on the target and `s / (C − 1)` on
//!   every other class.
//! - [`mixup`] and [`mixup_loss`]: one λ and one permutation per batch, applied to the images
//!   *and* the encoded locations (the reference mixes both), loss
//!   `λ·LS(out, y) + (1 − λ)·LS(out, y[perm])`.
//! - [`lr_at`]: linear warm-up per iteration for the first epochs, then cosine per epoch.
//! - [`fit`]: **the** training loop, for anything that implements [`Trainable`] (the classifier
//!   here, PriorsNet and GeoNet in `dmlp-baselines`): the schedule, the non-finite stop,
//!   evaluation every epoch (through `dmlp-eval`), `best` by the metric the plan names, and a
//!   [`RunDir`] with metrics and atomic checkpoints that a resume continues exactly.
//! - [`classifier_step`]: the classifier's step (mixup → label-smoothed loss → backward →
//!   optimiser), which [`ClassifierTrainer`] runs and `cargo xtask parity` checks.
//! - [`DataParallelTrainer`]: one replica per device, gradients summed through a [`Collective`];
//!   [`join`] and [`follow`] spread it over processes and nodes (a TCP rendezvous at node 0).
//! - [`SeedStream`]: the named random streams one seed fans out into.
//!
//! Architecture invariant: the loop is generic over what it trains and what it reads; it never
//! names a dataset format or a fusion method, and it prints nothing (progress goes to a
//! [`FitObserver`]).

mod adam;
mod classifier;
mod cluster;
mod config;
mod fit;
mod loss;
#[cfg(feature = "nccl")]
mod nccl;
mod optim;
mod optimizer;
mod parallel;
mod precision;
mod run_dir;
mod schedule;
mod streams;

use std::path::PathBuf;

pub use adam::{Adam, AdamConfig, AdamState};
pub use classifier::{
    BatchGradients, ClassifierStep, ClassifierTrainer, MixDraw, Mixup, StepInput, apply_gradients,
    classifier_gradients, classifier_scores, classifier_step, cutmix, cutmix_pairs, draw_mixup, evaluate_classifier,
    evaluate_sharded, sharded_classifier_scores,
};
pub use cluster::{ClusterSpec, HubCollective, Membership, NcclIdMaker, join};
pub use config::{LrScheduleKind, OptimizerKind, TrainConfig};
pub use fit::{
    Batches, BestBy, FitObserver, FitPlan, FitSummary, Schedule, Silent, StepContext, StepOutcome, Trainable, fit,
    follow,
};
pub use loss::{label_smoothing_loss, mixup, mixup_loss, mixup_loss_permuted, mixup_loss_share};
#[cfg(feature = "nccl")]
pub use nccl::{NcclCollective, nccl_unique_id};
pub use optim::{Sgd, SgdConfig};
pub use optimizer::Optimizer;
pub use parallel::{Collective, DataParallelTrainer, LocalCollective, shards};
pub use precision::{Amp, LossScaler, Precision};
pub use run_dir::{Checkpoint, CheckpointState, EpochMetrics, RunDir, Which, write_atomic};
pub use schedule::{LrSchedule, lr_at, step_cosine_lr_at};
pub use streams::{SeedStream, stream_seed};

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("data: {0}")]
    Data(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("data parallel: {0}")]
    Parallel(String),
    #[error(
        "the loss became {loss} at epoch {epoch}, iteration {iteration}: stopping (lower the learning rate, or check the data)"
    )]
    NonFinite { epoch: usize, iteration: usize, loss: f64 },
    #[error("epoch {epoch}: {field} is {value}, not a number a run can record: stopping")]
    NonFiniteMetric { epoch: usize, field: &'static str, value: f64 },
    #[error(transparent)]
    Eval(#[from] dmlp_eval::EvalError),
    #[error(transparent)]
    Model(#[from] dmlp_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
