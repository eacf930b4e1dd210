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
//! - [`train`]: the loop over a [`BatchSource`], evaluation every epoch (top-1, top-5, loss),
//!   the best checkpoint by top-1, and a [`RunDir`] with metrics and atomic checkpoints that
//!   `--resume` continues exactly.
//!
//! Architecture invariant: generic over what it trains (the classifier and any batch source);
//! never names a dataset format or a fusion method.

mod adam;
mod config;
mod data;
mod loss;
mod optim;
mod run_dir;
mod schedule;
mod trainer;

use std::path::PathBuf;

pub use adam::{Adam, AdamConfig, AdamState};
pub use config::{OptimizerKind, TrainConfig};
pub use data::{BatchSource, ImageView, TensorBatch};
pub use loss::{label_smoothing_loss, mixup, mixup_loss};
pub use optim::{Sgd, SgdConfig};
pub use run_dir::{Checkpoint, CheckpointState, EpochMetrics, RunDir, write_atomic};
pub use schedule::{LrSchedule, lr_at};
pub use trainer::{TrainOptions, TrainSummary, evaluate, logit_rows, stream_seed, to_u32, top_k_hits, train};

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("data: {0}")]
    Data(String),
    #[error(
        "the loss became {loss} at epoch {epoch}, iteration {iteration}: stopping (lower the learning rate, or check the data)"
    )]
    NonFinite { epoch: usize, iteration: usize, loss: f64 },
    #[error(transparent)]
    Model(#[from] dmlp_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
