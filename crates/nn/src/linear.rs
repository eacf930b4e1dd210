//! Fully connected layers with PyTorch's initialisation.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::init::pytorch_default;

/// `y = x·Wᵀ + b` with `W: [out, in]` (key `weight`) and an optional `b: [out]` (key `bias`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// `nn.Linear(in_features, out_features, bias)` under `vb`, initialised as PyTorch does.
pub fn linear(in_features: usize, out_features: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let init = pytorch_default(in_features);
    let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
    let bias = if bias { Some(vb.get_with_hints(out_features, "bias", init)?) } else { None };
    Ok(Linear { weight, bias })
}

impl Linear {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    /// # Shapes
    /// `xs: [B, in]` → `[B, out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }
}
