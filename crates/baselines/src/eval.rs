//! Top-1/top-5 of an image classifier whose scores another model rescales: how PriorsNet and
//! GeoNet are evaluated on the same split, with the same loader, as Dynamic MLP.

use candle_core::Tensor;
use dmlp_model::Classifier;
use dmlp_train::{BatchSource, TrainError, logit_rows, to_u32, top_k_hits};

/// Scores `[B, C]` from an image classifier's logits `[B, C]` and the batch's encoded locations.
pub type Rescore<'a> = dyn Fn(&Tensor, Option<&Tensor>) -> Result<Tensor, TrainError> + 'a;

/// What one evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// The label-smoothed cross-entropy of the scores, when they are logits and it was asked for.
    pub loss: Option<f64>,
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
}

/// Runs the frozen `image` model over `source` (its first view: the centre crop) and scores each
/// batch with `rescore(image_logits, loc)`; `[B, C]` scores, larger is likelier. With
/// `loss_smoothing`, the scores are logits and their label-smoothed loss is averaged too.
pub fn evaluate_rescored(
    image: &Classifier,
    source: &dyn BatchSource,
    rescore: &Rescore<'_>,
    loss_smoothing: Option<f64>,
) -> Result<Accuracy, TrainError> {
    let (mut top1, mut top5, mut seen, mut loss_sum) = (0usize, 0usize, 0usize, 0.0);
    for batch in source.epoch(0)? {
        let batch = batch?;
        let view = batch.views.first().ok_or_else(|| TrainError::Data("a batch without images".into()))?;
        if view.crops != 1 {
            return Err(TrainError::Data("baseline evaluation takes one crop per image".into()));
        }
        let logits = image.forward_t(&view.images, None, false)?.logits;
        let scores = rescore(&logits, batch.loc.as_ref())?;
        let targets = to_u32(&batch.targets)?;
        if let Some(smoothing) = loss_smoothing {
            let loss = dmlp_train::label_smoothing_loss(&scores, &batch.targets, smoothing)?;
            loss_sum += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? * targets.len() as f64;
        }
        let rows = logit_rows(&scores)?;
        top1 += top_k_hits(&rows, &targets, 1);
        top5 += top_k_hits(&rows, &targets, 5);
        seen += targets.len();
    }
    if seen == 0 {
        return Err(TrainError::Data("the evaluation split is empty".into()));
    }
    let pct = |h: usize| 100.0 * h as f64 / seen as f64;
    let loss = loss_smoothing.map(|_| loss_sum / seen as f64);
    Ok(Accuracy { loss, top1: pct(top1), top5: pct(top5), images: seen })
}
