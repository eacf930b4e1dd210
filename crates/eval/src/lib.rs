//! Evaluation: the one place where scores become metrics and prediction files.
//!
//! - [`TensorBatch`], [`ImageView`] and [`BatchSource`]: what both training and evaluation
//!   consume (a split as epochs of batches on the model's device; an evaluation batch holds one
//!   view per test scale, each of one or ten crops per image).
//! - [`view_mean_logits`]: `[B, C]` logits averaged over every crop of every view (the
//!   reference's ten-crop averages logits; a multi-scale test averages over all of them).
//! - [`Accuracy`] and [`AccuracyCounter`]: top-1, top-5, per-class top-1, mean per-class top-1,
//!   the mean loss and the image count. A non-finite score is an error, never a hit: a model with
//!   NaN weights does not score 100 %.
//! - [`evaluate`]: a source through any scorer (a classifier, a classifier rescored by a location
//!   prior), with optional top-k [`Prediction`]s, which [`write_predictions`] writes as CSV or
//!   Parquet.
//!
//! Architecture invariant: knows scores, targets and batches, nothing of models, optimisers, run
//! folders or dataset formats; the trainer, the baselines, `dmlp eval` and `reproduce` all measure
//! through it.

mod accuracy;
mod batch;
mod evaluate;
mod predictions;
mod views;

use std::path::PathBuf;

pub use accuracy::{Accuracy, AccuracyCounter, ClassAccuracy, top_k_hits};
pub use batch::{BatchSource, ImageView, InMemoryBatches, SkippedItem, TensorBatch};
pub use evaluate::{Evaluation, LossFn, ScoreKind, Scorer, evaluate, evaluate_batches, score_rows, to_u32};
pub use predictions::{Prediction, PredictionFormat, PredictionRecord, write_predictions};
pub use views::{Forward, view_mean_logits};

/// What can stop an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("data: {0}")]
    Data(String),
    #[error(
        "a non-finite score ({value}) for image {image} of the evaluation: the model's outputs are not numbers, no metric is computed from them"
    )]
    NonFinite { image: usize, value: f32 },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The model behind a scorer failed (a shape it refuses, a missing location).
    #[error("{0}")]
    Model(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    /// Wraps the error of the model behind a scorer.
    pub fn model(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        EvalError::Model(Box::new(err))
    }
}
