//! Small building blocks shared by the fusion heads.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use dmlp_nn::{LayerNorm, Linear, layer_norm, linear};

/// The reference's `Basic1d(in, out, bias)`: `Linear(in, out, bias)`, then `LayerNorm(out)` only
/// when `bias` is false, then ReLU. Keys: `conv.0.*`, `conv.ln.*`.
#[derive(Debug, Clone)]
pub struct Basic1d {
    linear: Linear,
    norm: Option<LayerNorm>,
}

impl Basic1d {
    pub fn new(in_features: usize, out_features: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv");
        let linear = linear(in_features, out_features, bias, vb.pp("0"))?;
        let norm = if bias { None } else { Some(layer_norm(out_features, vb.pp("ln"))?) };
        Ok(Self { linear, norm })
    }
}

impl Module for Basic1d {
    /// # Shapes
    /// `xs: [B, in]` → `[B, out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.linear.forward(xs)?;
        let ys = match &self.norm {
            Some(norm) => norm.forward(&ys)?,
            None => ys,
        };
        dmlp_nn::relu(&ys)
    }
}

/// The reference's `br = Sequential(LayerNorm(o), ReLU)`: key `br.0.*`.
#[derive(Debug, Clone)]
pub(crate) struct NormRelu(LayerNorm);

impl NormRelu {
    pub(crate) fn new(features: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(layer_norm(features, vb.pp("0"))?))
    }
}

impl Module for NormRelu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        dmlp_nn::relu(&self.0.forward(xs)?)
    }
}
