//! Batch and layer normalisation that train: batch statistics, running-statistics updates as
//! PyTorch makes them, and gradients through every input.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{D, DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::batch_norm_op::{BatchNormTrainOp, Stats};
use crate::layer_norm_op::LayerNormOp;

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

    /// `max(0, BatchNorm(xs))`: in training on the CPU one op (the ReLU folded into the
    /// normalisation, forward and backward; see `batch_norm_op`), elsewhere the two in turn.
    ///
    /// # Shapes
    /// `xs: [B, C, H, W]` or `[B, C]` → same shape.
    pub fn forward_relu_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && crate::cpu::custom_cpu_ops(xs.device()) {
            self.forward_train(xs, true)
        } else {
            crate::relu(&self.forward_t(xs, train)?)
        }
    }

    fn forward_train(&self, xs: &Tensor, relu: bool) -> Result<Tensor> {
        let channels = xs.dim(1)?;
        let n = xs.elem_count() / channels.max(1);
        if n < 2 {
            candle_core::bail!(
                "batch norm in training needs more than one value per channel, got input {:?}",
                xs.shape()
            );
        }
        let (ys, mean, var) = if crate::cpu::custom_cpu_ops(xs.device()) {
            self.batch_statistics_fused(xs, relu)?
        } else if relu {
            candle_core::bail!("batch norm with a fused ReLU runs on the CPU only")
        } else if Self::cudnn_takes(xs, self.eps) {
            match self.batch_statistics_cudnn(xs)? {
                (ys, Some((mean, var))) => (ys, mean, var),
                // cuDNN updated the running statistics itself.
                (ys, None) => {
                    self.num_batches_tracked.fetch_add(1, Ordering::Relaxed);
                    return Ok(ys);
                }
            }
        } else {
            self.batch_statistics_composed(xs)?
        };
        // PyTorch: running = (1 − m)·running + m·batch, with the unbiased batch variance.
        let m = self.momentum;
        let mean = mean.to_dtype(self.running_mean.dtype())?;
        let unbiased_var = (var * (n as f64 / (n - 1) as f64))?.to_dtype(self.running_var.dtype())?;
        self.running_mean.set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased_var * m)?)?)?;
        self.num_batches_tracked.fetch_add(1, Ordering::Relaxed);
        Ok(ys)
    }

    /// The CPU path: one fused op (see `batch_norm_op`). Returns the output and the detached
    /// per-channel batch mean and biased variance.
    fn batch_statistics_fused(&self, xs: &Tensor, relu: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let stats = Arc::new(Mutex::new(None));
        let op = BatchNormTrainOp { eps: self.eps, stats: stats.clone(), relu };
        let dtype = xs.dtype();
        let compute = if matches!(dtype, DType::F32 | DType::F64) { dtype } else { DType::F32 };
        let ys = xs.to_dtype(compute)?.contiguous()?.apply_op3(
            &self.weight.to_dtype(compute)?.contiguous()?,
            &self.bias.to_dtype(compute)?.contiguous()?,
            op,
        )?;
        let taken = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(Stats { mean, var, .. }) = taken else { candle_core::bail!("batch norm forward left no statistics") };
        let channels = mean.len();
        let mean = Tensor::from_vec(mean, channels, xs.device())?;
        let var = Tensor::from_vec(var, channels, xs.device())?;
        Ok((ys.to_dtype(dtype)?, mean, var))
    }

    /// Whether cuDNN computes this training pass (`cudnn_batch_norm`).
    fn cudnn_takes(xs: &Tensor, eps: f64) -> bool {
        #[cfg(feature = "cuda")]
        return crate::cudnn_batch_norm::takes(xs, eps);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (xs, eps);
            false
        }
    }

    /// The CUDA path with cuDNN: one call forward, one backward (see `cudnn_batch_norm`). Returns
    /// the output and the batch statistics, or no statistics when the forward has updated the
    /// running ones itself.
    fn batch_statistics_cudnn(&self, xs: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        #[cfg(feature = "cuda")]
        return crate::cudnn_batch_norm::train(
            xs,
            &self.weight,
            &self.bias,
            self.eps,
            crate::cudnn_batch_norm::Running {
                mean: self.running_mean.as_tensor().clone(),
                var: self.running_var.as_tensor().clone(),
                momentum: self.momentum,
            },
        );
        #[cfg(not(feature = "cuda"))]
        {
            let _ = xs;
            candle_core::bail!("cuDNN batch norm needs the `cuda` feature")
        }
    }

    /// Any device: composed from differentiable primitives, in f32 for half-precision input
    /// (as PyTorch's autocast and cuDNN do), the output in the input's dtype.
    fn batch_statistics_composed(&self, input: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let shape = Self::channel_shape(input);
        let dims = Self::reduce_dims(input);
        let compute = crate::accumulation_dtype(input);
        let xs = &input.to_dtype(compute)?;
        let mean = xs.mean_keepdim(dims.as_slice())?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(dims.as_slice())?;
        let normed = centered.broadcast_div(&(var.clone() + self.eps)?.sqrt()?)?;
        let ys = normed
            .broadcast_mul(&self.weight.to_dtype(compute)?.reshape(shape.as_slice())?)?
            .broadcast_add(&self.bias.to_dtype(compute)?.reshape(shape.as_slice())?)?
            .to_dtype(input.dtype())?;
        Ok((ys, mean.detach().flatten_all()?, var.detach().flatten_all()?))
    }

    /// The running statistics' affine map, in f32 for half-precision input, the output in the
    /// input's dtype.
    fn forward_eval(&self, input: &Tensor) -> Result<Tensor> {
        let shape = Self::channel_shape(input);
        let compute = crate::accumulation_dtype(input);
        let scale = self.weight.div(&(self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - self.running_mean.as_tensor().mul(&scale)?)?;
        let (scale, shift) = (scale.to_dtype(compute)?, shift.to_dtype(compute)?);
        input
            .to_dtype(compute)?
            .broadcast_mul(&scale.reshape(shape.as_slice())?)?
            .broadcast_add(&shift.reshape(shape.as_slice())?)?
            .to_dtype(input.dtype())
    }
}

impl ModuleT for BatchNorm {
    /// # Shapes
    /// `xs: [B, C, H, W]` or `[B, C]` → same shape.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train { self.forward_train(xs, false) } else { self.forward_eval(xs) }
    }
}

/// `nn.LayerNorm(n)` over the last dimension (eps 1e-5, affine; weight 1, bias 0), with a
/// gradient for every input (candle's fused layer norm returns none): one fused op on the CPU,
/// differentiable primitives elsewhere.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// `nn.LayerNorm(normalized_shape)` under `vb`.
pub fn layer_norm(normalized_shape: usize, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm_with_eps(normalized_shape, 1e-5, vb)
}

/// `nn.LayerNorm(normalized_shape, eps=eps)` under `vb` (timm's own `LayerNorm` uses 1e-6).
pub fn layer_norm_with_eps(normalized_shape: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(normalized_shape, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(normalized_shape, "bias", Init::Const(0.0))?;
    Ok(LayerNorm { weight, bias, eps })
}

impl Module for LayerNorm {
    /// # Shapes
    /// `xs: [..., n]` → same shape, normalised over the last dimension.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Half precision accumulates badly over 2048 values: normalise in f32. Inside autocast the
        // output stays f32, as PyTorch's autocast returns it (layer_norm is on its f32 list).
        let compute = crate::accumulation_dtype(xs);
        let dtype = if crate::autocast_dtype().is_some() { compute } else { xs.dtype() };
        let xs = xs.to_dtype(compute)?;
        let (weight, bias) = (self.weight.to_dtype(compute)?, self.bias.to_dtype(compute)?);
        let ys = if crate::cpu::custom_cpu_ops(xs.device()) {
            xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: self.eps })?
        } else {
            layer_norm_composed(&xs, &weight, &bias, self.eps)?
        };
        ys.to_dtype(dtype)
    }
}

/// LayerNorm from differentiable primitives (any device).
fn layer_norm_composed(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(weight)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, ModuleT, Tensor, Var};

    use super::*;
    use crate::ParamStore;

    use crate::test_util::{close, values};

    /// A BatchNorm over `channels` with non-trivial affine parameters and running statistics,
    /// the same for the same `seed`.
    fn random_bn(channels: usize, seed: u64) -> (ParamStore, BatchNorm) {
        let store = ParamStore::new(seed);
        let bn = batch_norm(channels, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        for (idx, (_, var)) in store.vars().into_iter().enumerate() {
            let fresh: Vec<f64> =
                (0..channels).map(|c| 0.4 + 0.37 * ((c * 7 + idx * 3 + seed as usize) % 5) as f64).collect();
            var.set(&Tensor::from_vec(fresh, channels, &Device::Cpu).unwrap()).unwrap();
        }
        (store, bn)
    }

    #[test]
    fn fused_training_pass_matches_the_composed_one() {
        for dims in [vec![3, 5, 4, 3], vec![6, 4], vec![4, 7, 1, 1], vec![2, 3, 5, 7]] {
            let channels = dims[1];
            let x = Var::from_tensor(&Tensor::randn(1f64, 2.0, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
            let mix = Tensor::randn(0f64, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
            let (store_a, a) = random_bn(channels, 1);
            let (store_b, b) = random_bn(channels, 1);
            let (ya, _, _) = a.batch_statistics_fused(x.as_tensor(), false).unwrap();
            let (yb, _, _) = b.batch_statistics_composed(x.as_tensor()).unwrap();
            close("forward", &values(&ya), &values(&yb), 1e-12);
            let ga = (ya * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (yb * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            close("dx", &values(ga.get(x.as_tensor()).unwrap()), &values(gb.get(x.as_tensor()).unwrap()), 1e-10);
            for name in ["weight", "bias"] {
                let (va, vb) = (store_a.get(name).unwrap(), store_b.get(name).unwrap());
                close(name, &values(ga.get(va.as_tensor()).unwrap()), &values(gb.get(vb.as_tensor()).unwrap()), 1e-10);
            }
            // The running update through forward_t, on the fused path, against the formula.
            let before_mean = values(a.running_mean());
            let before_var = values(a.running_var());
            a.forward_t(x.as_tensor(), true).unwrap();
            let n = (x.elem_count() / channels) as f64;
            let batch_mean = values(&x.as_tensor().transpose(0, 1).unwrap().flatten_from(1).unwrap().mean(1).unwrap());
            for c in 0..channels {
                let expected = 0.9 * before_mean[c] + 0.1 * batch_mean[c];
                assert!((values(a.running_mean())[c] - expected).abs() < 1e-12);
            }
            let xs = values(&x.as_tensor().transpose(0, 1).unwrap().flatten_from(1).unwrap());
            let per = xs.len() / channels;
            for c in 0..channels {
                let row = &xs[c * per..(c + 1) * per];
                let unbiased = row.iter().map(|v| (v - batch_mean[c]).powi(2)).sum::<f64>() / (n - 1.0);
                let expected = 0.9 * before_var[c] + 0.1 * unbiased;
                assert!((values(a.running_var())[c] - expected).abs() < 1e-12);
            }
            assert_eq!(a.num_batches_tracked(), 1);
        }
    }

    #[test]
    fn fused_gradients_match_finite_differences() {
        let dims = (3, 2, 3, 2);
        let x0 = values(&Tensor::randn(0f64, 1.5, dims, &Device::Cpu).unwrap());
        let mix = Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap();
        let (store, bn) = random_bn(2, 5);
        let loss = |x: &[f64]| -> f64 {
            let x = Tensor::from_slice(x, dims, &Device::Cpu).unwrap();
            let (y, _, _) = bn.batch_statistics_fused(&x, false).unwrap();
            (y * &mix).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        let x = Var::from_slice(&x0, dims, &Device::Cpu).unwrap();
        let (y, _, _) = bn.batch_statistics_fused(x.as_tensor(), false).unwrap();
        let grads = (y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = values(grads.get(x.as_tensor()).unwrap());
        let eps = 1e-6;
        for idx in 0..x0.len() {
            let (mut plus, mut minus) = (x0.clone(), x0.clone());
            plus[idx] += eps;
            minus[idx] -= eps;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps);
            assert!((numeric - dx[idx]).abs() < 1e-6, "dx[{idx}]: {numeric} vs {}", dx[idx]);
        }
        // d/dβ of Σ mix·y is Σ mix per channel; d/dγ is Σ mix·x̂.
        let db = values(grads.get(store.get("bias").unwrap().as_tensor()).unwrap());
        let mix_sums = values(&mix.transpose(0, 1).unwrap().flatten_from(1).unwrap().sum(1).unwrap());
        close("dbias", &db, &mix_sums, 1e-12);
    }

    /// The ReLU folded into the op against BatchNorm then the ReLU op, values and gradients, on
    /// shapes with a spatial tail (odd sizes) and without; half the pre-activations are negative.
    #[test]
    fn fused_relu_matches_batch_norm_then_relu() {
        for dims in [vec![3, 5, 4, 3], vec![6, 4], vec![2, 3, 5, 7]] {
            let channels = dims[1];
            let x = Var::from_tensor(&Tensor::randn(0f64, 2.0, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
            let mix = Tensor::randn(0f64, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
            let (store_a, a) = random_bn(channels, 4);
            let (store_b, b) = random_bn(channels, 4);
            let ya = a.forward_relu_t(x.as_tensor(), true).unwrap();
            let yb = crate::relu(&b.forward_t(x.as_tensor(), true).unwrap()).unwrap();
            let zeros = values(&ya).iter().filter(|v| **v == 0.0).count();
            assert!(zeros > 0 && zeros < x.elem_count(), "the test needs both signs, got {zeros} zeros");
            close("forward", &values(&ya), &values(&yb), 1e-12);
            let ga = (ya * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (yb * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            close("dx", &values(ga.get(x.as_tensor()).unwrap()), &values(gb.get(x.as_tensor()).unwrap()), 1e-10);
            for name in ["weight", "bias"] {
                let (va, vb) = (store_a.get(name).unwrap(), store_b.get(name).unwrap());
                close(name, &values(ga.get(va.as_tensor()).unwrap()), &values(gb.get(vb.as_tensor()).unwrap()), 1e-10);
            }
            close("running_mean", &values(a.running_mean()), &values(b.running_mean()), 1e-15);
            close("running_var", &values(a.running_var()), &values(b.running_var()), 1e-15);
            // Evaluation takes the unfused path and still rectifies.
            let eval = values(&a.forward_relu_t(x.as_tensor(), false).unwrap());
            assert!(eval.iter().all(|v| *v >= 0.0));
        }
    }

    #[test]
    fn evaluation_uses_running_statistics() {
        let (_, bn) = random_bn(3, 2);
        let x = Tensor::randn(0f64, 1.0, (2, 3, 2, 2), &Device::Cpu).unwrap();
        let y = values(&bn.forward_t(&x, false).unwrap());
        let (rm, rv) = (values(bn.running_mean()), values(bn.running_var()));
        let xs = values(&x);
        let (w, b) = (values(&bn.weight), values(&bn.bias));
        for (idx, v) in xs.iter().enumerate() {
            let c = (idx / 4) % 3;
            let expected = (v - rm[c]) / (rv[c] + 1e-5).sqrt() * w[c] + b[c];
            assert!((y[idx] - expected).abs() < 1e-12);
        }
        assert_eq!(bn.num_batches_tracked(), 0);
    }

    #[test]
    fn layer_norm_op_matches_the_composed_one_and_finite_differences() {
        let store = ParamStore::new(3);
        let ln = layer_norm(7, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        for (idx, (_, var)) in store.vars().into_iter().enumerate() {
            let fresh: Vec<f64> = (0..7).map(|j| 0.3 + 0.2 * ((j * 3 + idx) % 4) as f64).collect();
            var.set(&Tensor::from_vec(fresh, 7, &Device::Cpu).unwrap()).unwrap();
        }
        let (w, b) = (store.get("weight").unwrap(), store.get("bias").unwrap());
        let x0 = values(&Tensor::randn(1f64, 2.0, (3, 2, 7), &Device::Cpu).unwrap());
        let mix = Tensor::randn(0f64, 1.0, (3, 2, 7), &Device::Cpu).unwrap();
        let x = Var::from_slice(&x0, (3, 2, 7), &Device::Cpu).unwrap();
        let ours = ln.forward(x.as_tensor()).unwrap();
        let theirs = layer_norm_composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        close("forward", &values(&ours), &values(&theirs), 1e-12);
        let ga = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
            close("grad", &values(ga.get(t).unwrap()), &values(gb.get(t).unwrap()), 1e-10);
        }
        let loss = |x: &[f64]| -> f64 {
            let x = Tensor::from_slice(x, (3, 2, 7), &Device::Cpu).unwrap();
            (ln.forward(&x).unwrap() * &mix).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        let dx = values(ga.get(x.as_tensor()).unwrap());
        for idx in 0..x0.len() {
            let (mut plus, mut minus) = (x0.clone(), x0.clone());
            plus[idx] += 1e-6;
            minus[idx] -= 1e-6;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-6;
            assert!((numeric - dx[idx]).abs() < 1e-6, "dx[{idx}]: {numeric} vs {}", dx[idx]);
        }
    }
}
