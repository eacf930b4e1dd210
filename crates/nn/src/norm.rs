//! Batch and layer normalisation that train: batch statistics, running-statistics updates as
//! PyTorch makes them, and gradients through every input.

use std::sync::atomic::{AtomicI64, Ordering};

use candle_core::{D, DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

/// `nn.BatchNorm2d` / `nn.BatchNorm1d`, PyTorch semantics: in training it normalises with the
/// batch statistics (biased variance) and updates `running = (1 − m)·running + m·batch` with the
/// unbiased batch variance; in evaluation it uses the running statistics.
///
/// Keys: `weight`, `bias`, `running_mean`, `running_var` (`num_batches_tracked` is counted here
/// and accepted, not required, when loading).
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: AtomicI64,
    eps: f64,
    momentum: f64,
}

/// `nn.BatchNorm2d(num_features)` (eps 1e-5, momentum 0.1; weight 1, bias 0) under `vb`.
pub fn batch_norm(num_features: usize, vb: VarBuilder) -> Result<BatchNorm> {
    let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
    let running_mean = Var::from_tensor(&vb.get_with_hints(num_features, "running_mean", Init::Const(0.0))?)?;
    let running_var = Var::from_tensor(&vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?)?;
    Ok(BatchNorm {
        weight,
        bias,
        running_mean,
        running_var,
        num_batches_tracked: AtomicI64::new(0),
        eps: 1e-5,
        momentum: 0.1,
    })
}

impl BatchNorm {
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Training batches seen since this layer was built.
    pub fn num_batches_tracked(&self) -> i64 {
        self.num_batches_tracked.load(Ordering::Relaxed)
    }

    /// Shape that broadcasts a per-channel vector against `xs` (`[1, C, 1, 1]` or `[1, C]`).
    fn channel_shape(xs: &Tensor) -> Vec<usize> {
        let mut shape = vec![1; xs.rank()];
        shape[1] = xs.dim(1).unwrap_or(1);
        shape
    }

    fn reduce_dims(xs: &Tensor) -> Vec<usize> {
        (0..xs.rank()).filter(|&d| d != 1).collect()
    }

    fn forward_train(&self, xs: &Tensor) -> Result<Tensor> {
        let shape = Self::channel_shape(xs);
        let dims = Self::reduce_dims(xs);
        let n = xs.elem_count() / shape[1];
        if n < 2 {
            candle_core::bail!(
                "batch norm in training needs more than one value per channel, got input {:?}",
                xs.shape()
            );
        }
        let mean = xs.mean_keepdim(dims.as_slice())?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(dims.as_slice())?;
        let normed = centered.broadcast_div(&(var.clone() + self.eps)?.sqrt()?)?;
        let ys = normed
            .broadcast_mul(&self.weight.reshape(shape.as_slice())?)?
            .broadcast_add(&self.bias.reshape(shape.as_slice())?)?;

        let m = self.momentum;
        let batch_mean = mean.detach().flatten_all()?.to_dtype(self.running_mean.dtype())?;
        let unbiased_var =
            (var.detach().flatten_all()? * (n as f64 / (n - 1) as f64))?.to_dtype(self.running_var.dtype())?;
        self.running_mean.set(&((self.running_mean.as_tensor() * (1.0 - m))? + (batch_mean * m)?)?)?;
        self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased_var * m)?)?)?;
        self.num_batches_tracked.fetch_add(1, Ordering::Relaxed);
        Ok(ys)
    }

    fn forward_eval(&self, xs: &Tensor) -> Result<Tensor> {
        let shape = Self::channel_shape(xs);
        let scale = self.weight.div(&(self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - self.running_mean.as_tensor().mul(&scale)?)?;
        xs.broadcast_mul(&scale.reshape(shape.as_slice())?)?.broadcast_add(&shift.reshape(shape.as_slice())?)
    }
}

impl ModuleT for BatchNorm {
    /// # Shapes
    /// `xs: [B, C, H, W]` or `[B, C]` → same shape.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train { self.forward_train(xs) } else { self.forward_eval(xs) }
    }
}

/// `nn.LayerNorm(n)` over the last dimension (eps 1e-5, affine; weight 1, bias 0), composed from
/// differentiable primitives: candle's fused layer norm returns no gradient.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// `nn.LayerNorm(normalized_shape)` under `vb`.
pub fn layer_norm(normalized_shape: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(normalized_shape, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(normalized_shape, "bias", Init::Const(0.0))?;
    Ok(LayerNorm { weight, bias, eps: 1e-5 })
}

impl Module for LayerNorm {
    /// # Shapes
    /// `xs: [..., n]` → same shape, normalised over the last dimension.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Half precision accumulates badly over 2048 values: normalise in f32, as PyTorch's autocast does.
        let dtype = xs.dtype();
        let xs = if matches!(dtype, DType::F16 | DType::BF16) { xs.to_dtype(DType::F32)? } else { xs.clone() };
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}
