//! What the transformer backbones share: timm's initialisation, the two-layer MLP, scaled
//! dot-product attention, and the stochastic-depth schedule.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use dmlp_nn::{Linear, linear_with_init};

/// timm's `trunc_normal_(std=0.02)` for linear weights and position tables. candle draws an
/// untruncated normal; timm cuts at ±2 (absolute, i.e. ±100σ), which a normal of σ 0.02 never
/// reaches in practice, so the two draw the same distribution.
pub(crate) const TRUNC_NORMAL: Init = Init::Randn { mean: 0.0, stdev: 0.02 };

/// `nn.Linear` as timm's transformers initialise it (weights N(0, 0.02²), bias 0).
pub(crate) fn dense(in_features: usize, out_features: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    linear_with_init(in_features, out_features, bias, TRUNC_NORMAL, vb)
}

/// `nn.GELU()`: the exact (erf) form.
pub(crate) fn gelu(xs: &Tensor) -> Result<Tensor> {
    dmlp_nn::gelu(xs)
}

/// Output features `start .. start + len` of a projection, from those rows of its weight and
/// bias: a slice of timm's fused `qkv` (queries, then keys and values together) without the
/// split's backward, which builds a zero tensor the size of the whole output for every slice.
///
/// # Shapes
/// `xs: [..., in]` → `[..., len]`.
pub(crate) fn projection_slice(layer: &Linear, xs: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let weight = layer.weight().narrow(0, start, len)?;
    let bias = layer.bias().map(|b| b.narrow(0, start, len)).transpose()?;
    dmlp_nn::linear_nd(xs, &weight, bias.as_ref())
}

/// timm's `Mlp`: `fc2(gelu(fc1(x)))`, keys `fc1`, `fc2`.
#[derive(Debug)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub(crate) fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: dense(dim, hidden, true, vb.pp("fc1"))?, fc2: dense(hidden, dim, true, vb.pp("fc2"))? })
    }

    /// # Shapes
    /// `xs: [..., dim]` → `[..., dim]`.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&gelu(&self.fc1.forward(xs)?)?)
    }
}

/// timm's stochastic-depth rates: `linspace(0, rate, Σ depths)`, split by stage.
pub(crate) fn drop_path_rates(rate: f64, depths: &[usize]) -> Vec<Vec<f64>> {
    let total: usize = depths.iter().sum();
    let at = |i: usize| if total > 1 { rate * i as f64 / (total - 1) as f64 } else { 0.0 };
    let mut start = 0;
    depths
        .iter()
        .map(|&depth| {
            let rates = (start..start + depth).map(at).collect();
            start += depth;
            rates
        })
        .collect()
}

/// Mean over the token dimensions of a channels-last map.
///
/// # Shapes
/// `xs: [B, H, W, C]` → `[B, C]`.
pub(crate) fn mean_tokens(xs: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = xs.dims4()?;
    let wide = xs.to_dtype(dmlp_nn::accumulation_dtype(xs))?;
    wide.reshape((b, h * w, c))?.mean(1)?.to_dtype(xs.dtype())
}

/// Checks the shared shape of a transformer's stage lists.
pub(crate) fn check_stages(name: &str, lists: &[(&str, usize)]) -> Result<usize> {
    let stages = lists[0].1;
    if stages == 0 {
        candle_core::bail!("{name}: {} is empty", lists[0].0)
    }
    for (list, len) in lists {
        if *len != stages {
            candle_core::bail!("{name}: {list} has {len} entries, {} has {stages}", lists[0].0)
        }
    }
    Ok(stages)
}

/// A spatial-reduction stage's settings (PVT v1 and v2): a positive width that the heads
/// divide, a positive reduction and a positive MLP ratio.
pub(crate) fn check_sr_stage(name: &str, i: usize, dim: usize, heads: usize, sr: usize, ratio: f64) -> Result<()> {
    if dim == 0 || heads == 0 || !dim.is_multiple_of(heads) || sr == 0 || ratio.is_nan() || ratio <= 0.0 {
        candle_core::bail!(
            "{name}: stage {i} ({dim} wide, {heads} heads, sr_ratio {sr}, mlp_ratio {ratio}) is not a valid stage"
        )
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_path_rates_follow_timm_linspace() {
        let rates = drop_path_rates(0.3, &[1, 2, 1]);
        let flat: Vec<f64> = rates.iter().flatten().copied().collect();
        assert_eq!(rates.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2, 1]);
        for (got, want) in flat.iter().zip([0.0, 0.1, 0.2, 0.3]) {
            assert!((got - want).abs() < 1e-12, "{flat:?}");
        }
        assert_eq!(drop_path_rates(0.2, &[1]), vec![vec![0.0]]);
    }
}
