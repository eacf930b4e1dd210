//! Test-time augmentation: logits averaged over every view and crop of a batch.

use candle_core::Tensor;

use crate::{EvalError, TensorBatch};

/// A model's forward pass in eval mode: `images: [N, 3, H, W]`, `loc: [N, cin]` → logits `[N, C]`.
pub type Forward<'a> = dyn Fn(&Tensor, Option<&Tensor>) -> Result<Tensor, EvalError> + 'a;

/// `[B, C]` logits averaged over every crop of every view of each image: the reference's ten-crop
/// averages logits, a multi-scale test averages over all crops of all scales. `forward` maps
/// `images: [N, 3, H, W]` and `loc: [N, cin]` to logits `[N, C]`; each image's location is
/// repeated for its crops.
pub fn view_mean_logits(forward: &Forward<'_>, batch: &TensorBatch) -> Result<Tensor, EvalError> {
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
        let logits = forward(&view.images, loc.as_ref())?;
        let classes = logits.dim(1)?;
        let per_image = logits.reshape((n, view.crops, classes))?.sum(1)?;
        sum = Some(match sum {
            Some(acc) => (acc + per_image)?,
            None => per_image,
        });
        crops_total += view.crops;
    }
    let sum = sum.ok_or_else(|| EvalError::Data("an evaluation batch without images".into()))?;
    Ok((sum / crops_total as f64)?)
}
