//! One pass over an evaluation source: scores, accuracy, and optionally top-k predictions.

use candle_core::{D, DType, Device, Tensor};

use crate::{Accuracy, AccuracyCounter, BatchSource, EvalError, Prediction, TensorBatch};

/// Scores `[B, C]` of a batch, larger is likelier.
pub type Scorer<'a> = dyn Fn(&TensorBatch) -> Result<Tensor, EvalError> + 'a;

/// A batch's mean loss from its scores `[B, C]` and targets `[B]` (a scalar tensor).
pub type LossFn<'a> = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// What the scores are, for turning them into probabilities in prediction files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreKind {
    /// Logits: probabilities are their softmax.
    Logits,
    /// Non-negative scores (a softmax rescored by a prior): probabilities are them normalised.
    NonNegative,
}

/// An evaluation's result.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub accuracy: Accuracy,
    /// The top-k classes of each image, in source order, when asked for.
    pub predictions: Vec<Prediction>,
}

/// Scores `[B, C]` as rows on the CPU (one copy per batch).
pub fn score_rows(scores: &Tensor) -> Result<Vec<Vec<f32>>, EvalError> {
    Ok(scores.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2()?)
}

/// Class indices `[B]` on the CPU.
pub fn to_u32(targets: &Tensor) -> Result<Vec<u32>, EvalError> {
    Ok(targets.to_dtype(DType::U32)?.to_device(&Device::Cpu)?.to_vec1()?)
}

fn probabilities(scores: &Tensor, kind: ScoreKind) -> Result<Vec<Vec<f32>>, EvalError> {
    let scores = scores.to_dtype(DType::F32)?;
    let probs = match kind {
        ScoreKind::Logits => candle_nn::ops::softmax(&scores, D::Minus1)?,
        ScoreKind::NonNegative => scores.broadcast_div(&scores.sum_keepdim(D::Minus1)?)?,
    };
    score_rows(&probs)
}

/// Evaluates `scorer` over `source` (epoch 0, in source order): accuracy, the loss when `loss` is
/// given, and with `top_k > 0` each image's `top_k` likeliest classes.
pub fn evaluate(
    source: &dyn BatchSource,
    scorer: &Scorer<'_>,
    kind: ScoreKind,
    loss: Option<&LossFn<'_>>,
    top_k: usize,
) -> Result<Evaluation, EvalError> {
    evaluate_batches(source.epoch(0)?, scorer, kind, loss, top_k)
}

/// [`evaluate`] over any iterator of batches, in the caller's error type.
pub fn evaluate_batches<E: From<EvalError>>(
    batches: impl Iterator<Item = Result<TensorBatch, E>>,
    scorer: &Scorer<'_>,
    kind: ScoreKind,
    loss: Option<&LossFn<'_>>,
    top_k: usize,
) -> Result<Evaluation, E> {
    let mut counter = AccuracyCounter::new();
    let mut predictions = Vec::new();
    for batch in batches {
        let batch = batch?;
        let scores = scorer(&batch)?;
        let targets = to_u32(&batch.targets)?;
        let first = counter.images();
        counter.add(&score_rows(&scores)?, &targets)?;
        if let Some(loss) = loss {
            let mean = loss(&scores, &batch.targets)
                .and_then(|l| l.to_dtype(DType::F64)?.to_scalar::<f64>())
                .map_err(EvalError::from)?;
            counter.add_loss(mean, targets.len())?;
        }
        if top_k > 0 {
            for (i, (row, target)) in probabilities(&scores, kind)?.iter().zip(&targets).enumerate() {
                let row_in_source = batch.rows.get(i).copied().unwrap_or(first + i);
                predictions.push(Prediction::from_probabilities(row_in_source, *target, row, top_k));
            }
        }
    }
    Ok(Evaluation { accuracy: counter.finish()?, predictions })
}
