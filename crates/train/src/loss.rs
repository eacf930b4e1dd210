//! Label-smoothed cross-entropy and mixup, as the reference computes them (`utils.py`).

use candle_core::{D, DType, Result, Tensor, bail};

/// `mean_b(−Σ_c q_c · log_softmax(z)_c)` with `q = 1 − s` on the target and `s / (C − 1)` elsewhere.
///
/// # Shapes
/// `logits: [B, C]`, `targets: [B]` (integer class ids) → scalar.
pub fn label_smoothing_loss(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    smoothed_nll(&log_probs(logits, smoothing)?, targets, smoothing)
}

/// Checks the class count and smoothing, and returns `log_softmax(logits)` in f32.
fn log_probs(logits: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (_, classes) = logits.dims2()?;
    if classes < 2 {
        bail!("label smoothing needs at least two classes, got {classes}")
    }
    if !(0.0..1.0).contains(&smoothing) {
        bail!("label smoothing must be in [0, 1), got {smoothing}")
    }
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}

/// The smoothed negative log-likelihood from log-probabilities `[B, C]`, averaged over the batch.
fn smoothed_nll(log_probs: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    smoothed_nll_per_sample(log_probs, targets, smoothing)?.mean_all()
}

/// The smoothed negative log-likelihood of each sample `[B]`.
fn smoothed_nll_per_sample(log_probs: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    let classes = log_probs.dim(1)?;
    let off = smoothing / (classes - 1) as f64;
    let on = 1.0 - smoothing;
    let target_log_probs = log_probs.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?.squeeze(1)?;
    let all = log_probs.sum(1)?;
    // −(off·Σ_c log p + (on − off)·log p_target)
    ((all * off)? + (target_log_probs * (on - off))?)?.neg()
}

/// Mixes a batch with its permutation: `λ·x + (1 − λ)·x[perm]` along the first dimension.
pub fn mixup(xs: &Tensor, perm: &Tensor, lambda: f64) -> Result<Tensor> {
    let shuffled = xs.index_select(&perm.to_dtype(DType::U32)?, 0)?;
    (xs * lambda)? + (shuffled * (1.0 - lambda))?
}

/// `λ·LS(out, y) + (1 − λ)·LS(out, y[perm])`.
pub fn mixup_loss(logits: &Tensor, targets: &Tensor, perm: &Tensor, lambda: f64, smoothing: f64) -> Result<Tensor> {
    let permuted = targets.index_select(&perm.to_dtype(DType::U32)?, 0)?;
    mixup_loss_permuted(logits, targets, &permuted, lambda, smoothing)
}

/// [`mixup_loss`] with `permuted = y[perm]` already gathered.
pub fn mixup_loss_permuted(
    logits: &Tensor,
    targets: &Tensor,
    permuted: &Tensor,
    lambda: f64,
    smoothing: f64,
) -> Result<Tensor> {
    let log_probs = log_probs(logits, smoothing)?;
    let a = smoothed_nll(&log_probs, targets, smoothing)?;
    let b = smoothed_nll(&log_probs, permuted, smoothing)?;
    (a * lambda)? + (b * (1.0 - lambda))?
}

/// `Σ_b [λ·LS(out_b, y_b) + (1 − λ)·LS(out_b, y'_b)] / batch`: one micro-batch's share of a
/// whole batch's mixup loss, `permuted` being `y[perm]` already (gradient accumulation).
///
/// # Shapes
/// `logits: [b, C]`, `targets`, `permuted: [b]` → scalar.
pub fn mixup_loss_share(
    logits: &Tensor,
    targets: &Tensor,
    permuted: &Tensor,
    lambda: f64,
    smoothing: f64,
    batch: usize,
) -> Result<Tensor> {
    let log_probs = log_probs(logits, smoothing)?;
    let a = smoothed_nll_per_sample(&log_probs, targets, smoothing)?.sum_all()?;
    let b = smoothed_nll_per_sample(&log_probs, permuted, smoothing)?.sum_all()?;
    ((a * lambda)? + (b * (1.0 - lambda))?)? / batch as f64
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn smoothing_puts_the_documented_mass_on_each_class() {
        // Uniform logits over C classes: −Σ q log(1/C) = log C whatever the smoothing.
        let logits = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1u32, 3], &Device::Cpu).unwrap();
        let loss: f32 = label_smoothing_loss(&logits, &targets, 0.1).unwrap().to_scalar().unwrap();
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        // One sample, logits [0, ln 2]: log p = [−ln 3, ln 2 − ln 3]; target 1, s = 0.3, C = 2.
        let logits = Tensor::new(&[[0f32, 2f32.ln()]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let loss: f32 = label_smoothing_loss(&logits, &targets, 0.3).unwrap().to_scalar().unwrap();
        let expected = -(0.3 * (-(3f32.ln())) + 0.7 * (2f32.ln() - 3f32.ln()));
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        assert!(
            label_smoothing_loss(
                &Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap(),
                &Tensor::new(&[0u32], &Device::Cpu).unwrap(),
                0.1
            )
            .is_err()
        );
    }

    #[test]
    fn mixup_mixes_rows_with_their_permutation() {
        let xs = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        let perm = Tensor::new(&[2i64, 0, 1], &Device::Cpu).unwrap();
        let mixed: Vec<Vec<f32>> = mixup(&xs, &perm, 0.75).unwrap().to_vec2().unwrap();
        assert_eq!(mixed, vec![vec![2.0, 3.0], vec![2.5, 3.5], vec![4.5, 5.5]]);
    }

    #[test]
    fn gradient_of_the_mixed_smoothed_loss_matches_finite_differences() {
        // Covers log_softmax's backward, gather and the mixup weighting.
        let (b, c) = (4, 5);
        let z0: Vec<f64> = (0..b * c).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
        let targets = Tensor::new(&[0u32, 4, 2, 2], &Device::Cpu).unwrap();
        let perm = Tensor::new(&[3u32, 2, 0, 1], &Device::Cpu).unwrap();
        let loss = |z: &Tensor| mixup_loss(z, &targets, &perm, 0.7, 0.1).unwrap();
        // The loss computes in f32 (as the reference's autocast does): compare at f32 precision.
        let z = candle_core::Var::from_slice(&z0, (b, c), &Device::Cpu).unwrap();
        let grads = loss(z.as_tensor()).backward().unwrap();
        let analytic: Vec<f64> = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-3;
        for idx in 0..z0.len() {
            let (mut plus, mut minus) = (z0.clone(), z0.clone());
            plus[idx] += eps;
            minus[idx] -= eps;
            let f = |v: &[f64]| {
                f64::from(loss(&Tensor::from_slice(v, (b, c), &Device::Cpu).unwrap()).to_scalar::<f32>().unwrap())
            };
            let numeric = (f(&plus) - f(&minus)) / (2.0 * eps);
            assert!((numeric - analytic[idx]).abs() < 2e-3, "dz[{idx}]: {numeric} vs {}", analytic[idx]);
        }
    }
}
