//! `σ(α)·GAP(a) + (1 − σ(α))·GAP(b)`: the input of SK-Res2Net's selective-kernel gate, two
//! global average pools mixed by a learnt scalar, as one op forward and two backward (on the CPU
//! as loops, on CUDA as dmlp's kernels, `crate::cuda_kernels`).
//!
//! Composed from candle's primitives it is about ten launches forward (a sigmoid, `1 − a`, two
//! means of two reductions each, two broadcast products, a sum) and twice that backward, every
//! one on a tensor of `B·C` values or a scalar except the means' backward: SK-Res2Net-101 has 33
//! such gates, and on an H200 a bf16 step is bound by its launches, not its arithmetic
//! (session 17's profile). Here:
//!
//! ```text
//! forward   [gv | m₁ − m₂] per (image, channel), m₁ = GAP(a), m₂ = GAP(b), gv = a·m₁ + (1 − a)·m₂
//! backward  da = dgv·σ/HW, db = dgv·(1 − σ)/HW   (one pass, into one buffer)
//!           dα = Σ dgv·(m₁ − m₂)·σ(1 − σ)        (one reduction)
//! ```
//!
//! The means and the mix accumulate in f64 on the CPU (f32 per block on CUDA, f64 for f64), so
//! they differ from the composed ops (which round after each step) in the last bits.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::blend_op::rows;
use crate::cpu::{contiguous, dispatch_float};

/// `(a, b, α) → [gv… | (m₁ − m₂)…]`, `2·rows` values; see the module docs.
struct PoolMixOp;
/// `(dgv, α) → [da… | db…]`, `2n` values (`n`, the inputs' size, is not in `dgv`'s shape).
struct PoolMixInputGradsOp {
    n: usize,
}
/// `(dgv, m₁ − m₂, α) → dα`, one value.
struct PoolMixAlphaGradOp;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn one_value<T: WithDType>(values: &[T], what: &str) -> Result<f64> {
    match values {
        [value] => Ok(value.to_f64()),
        _ => bail!("{what}: α must be one value, got {}", values.len()),
    }
}

fn pool_mix_slice<T: WithDType + Send + Sync>(a: &[T], b: &[T], alpha: f64, rows: usize, hw: usize) -> Vec<T> {
    let s = sigmoid(alpha);
    let mean = |xs: &[T]| xs.iter().map(|x| x.to_f64()).sum::<f64>() / hw.max(1) as f64;
    let pooled: Vec<(f64, f64)> = if hw == 0 {
        vec![(0.0, 0.0); rows]
    } else {
        a.par_chunks(hw).zip(b.par_chunks(hw)).map(|(xa, xb)| (mean(xa), mean(xb))).collect()
    };
    let mut out = Vec::with_capacity(2 * rows);
    out.extend(pooled.iter().map(|&(m1, m2)| T::from_f64(s * m1 + (1.0 - s) * m2)));
    out.extend(pooled.iter().map(|&(m1, m2)| T::from_f64(m1 - m2)));
    out
}

fn input_grads_slice<T: WithDType + Send + Sync>(dgv: &[T], alpha: f64, hw: usize) -> Vec<T> {
    let s = sigmoid(alpha);
    let n = dgv.len() * hw;
    let mut out = vec![T::from_f64(0.0); 2 * n];
    if hw == 0 {
        return out;
    }
    let (da, db) = out.split_at_mut(n);
    da.par_chunks_mut(hw).zip(db.par_chunks_mut(hw)).zip(dgv.par_iter()).for_each(|((da, db), g)| {
        let g = g.to_f64() / hw as f64;
        da.fill(T::from_f64(g * s));
        db.fill(T::from_f64(g * (1.0 - s)));
    });
    out
}

fn alpha_grad<T: WithDType>(dgv: &[T], diff: &[T], alpha: f64) -> T {
    let s = sigmoid(alpha);
    let sum: f64 = dgv.iter().zip(diff).map(|(g, d)| g.to_f64() * d.to_f64()).sum();
    T::from_f64(sum * s * (1.0 - s))
}

impl CustomOp3 for PoolMixOp {
    fn name(&self) -> &'static str {
        "dmlp-pool-mix"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        alpha: &CpuStorage,
        alpha_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, hw) = rows(al, self.name())?;
        let out = dispatch_float!(a, self.name(), |T| {
            let alpha = one_value(contiguous::<T>(alpha, alpha_l, self.name())?, self.name())?;
            T::to_cpu_storage_owned(pool_mix_slice(
                contiguous::<T>(a, al, self.name())?,
                contiguous::<T>(b, bl, self.name())?,
                alpha,
                rows,
                hw,
            ))
        });
        Ok((out, Shape::from(2 * rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
        alpha: &candle_core::CudaStorage,
        alpha_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, hw) = rows(al, self.name())?;
        if alpha_l.shape().elem_count() != 1 {
            bail!("{}: α must be one value, got {:?}", self.name(), alpha_l.dims())
        }
        Ok((crate::cuda_kernels::pool_mix(a, al, b, bl, alpha, alpha_l, rows, hw)?, Shape::from(2 * rows)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        alpha: &Tensor,
        packed: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = packed.elem_count() / 2;
        let n = a.elem_count();
        let dgv = grad.narrow(0, 0, rows)?.contiguous()?;
        let both = dgv.apply_op2_no_bwd(alpha, &PoolMixInputGradsOp { n })?;
        let da = both.narrow(0, 0, n)?.reshape(a.shape())?;
        let db = both.narrow(0, n, n)?.reshape(b.shape())?;
        let diff = packed.narrow(0, rows, rows)?;
        let dalpha = dgv.apply_op3_no_bwd(&diff, alpha, &PoolMixAlphaGradOp)?.reshape(alpha.shape())?;
        Ok((Some(da), Some(db), Some(dalpha)))
    }
}

/// The elements per row of inputs of `n` elements in `rows` rows.
fn hw_of(rows: usize, n: usize) -> usize {
    n.checked_div(rows).unwrap_or(0)
}

impl CustomOp2 for PoolMixInputGradsOp {
    fn name(&self) -> &'static str {
        "dmlp-pool-mix-input-grads"
    }

    fn cpu_fwd(
        &self,
        dgv: &CpuStorage,
        gl: &Layout,
        alpha: &CpuStorage,
        alpha_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let hw = hw_of(gl.shape().elem_count(), self.n);
        let out = dispatch_float!(dgv, self.name(), |T| {
            let alpha = one_value(contiguous::<T>(alpha, alpha_l, self.name())?, self.name())?;
            T::to_cpu_storage_owned(input_grads_slice(contiguous::<T>(dgv, gl, self.name())?, alpha, hw))
        });
        Ok((out, Shape::from(2 * self.n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dgv: &candle_core::CudaStorage,
        gl: &Layout,
        alpha: &candle_core::CudaStorage,
        alpha_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let hw = hw_of(gl.shape().elem_count(), self.n);
        Ok((crate::cuda_kernels::pool_mix_input_grads(dgv, gl, alpha, alpha_l, self.n, hw)?, Shape::from(2 * self.n)))
    }
}

impl CustomOp3 for PoolMixAlphaGradOp {
    fn name(&self) -> &'static str {
        "dmlp-pool-mix-alpha-grad"
    }

    fn cpu_fwd(
        &self,
        dgv: &CpuStorage,
        gl: &Layout,
        diff: &CpuStorage,
        dl: &Layout,
        alpha: &CpuStorage,
        alpha_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_float!(dgv, self.name(), |T| {
            let alpha = one_value(contiguous::<T>(alpha, alpha_l, self.name())?, self.name())?;
            let (dgv, diff) = (contiguous::<T>(dgv, gl, self.name())?, contiguous::<T>(diff, dl, self.name())?);
            T::to_cpu_storage_owned(vec![alpha_grad(dgv, diff, alpha)])
        });
        Ok((out, Shape::from(1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dgv: &candle_core::CudaStorage,
        gl: &Layout,
        diff: &candle_core::CudaStorage,
        dl: &Layout,
        alpha: &candle_core::CudaStorage,
        alpha_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda_kernels::pool_mix_alpha_grad(dgv, gl, diff, dl, alpha, alpha_l)?, Shape::from(1)))
    }
}

/// `σ(α)·GAP(a) + (1 − σ(α))·GAP(b)`, the global average pools of two activations mixed by a
/// learnt scalar `α` (SK-Res2Net's gate input). One op on the CPU (f32, f64) and on CUDA
/// (dmlp's kernels); elsewhere candle's primitives, with `α` in the activations' dtype.
///
/// # Shapes
/// `a, b: [N, C, H, W]`, `alpha`: one value (`[1, 1, 1, 1]`) → `[N, C, 1, 1]`.
pub fn pool_mix(a: &Tensor, b: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let alpha = alpha.to_dtype(a.dtype())?;
    let custom = (crate::cpu::custom_cpu_ops(a.device())
        && matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64))
        || crate::custom_cuda_ops(a);
    if !(custom && a.rank() == 4 && a.dims() == b.dims() && a.dtype() == b.dtype() && alpha.elem_count() == 1) {
        return pool_mix_generic(a, b, &alpha);
    }
    let (n, c) = (a.dim(0)?, a.dim(1)?);
    let packed = a.contiguous()?.apply_op3(&b.contiguous()?, &alpha.contiguous()?, PoolMixOp)?;
    packed.narrow(0, 0, n * c)?.reshape((n, c, 1, 1))
}

/// Any device: `GAP(a)·σ(α) + GAP(b)·(1 − σ(α))` from candle's primitives.
fn pool_mix_generic(a: &Tensor, b: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let gap = |xs: &Tensor| xs.mean_keepdim(candle_core::D::Minus1)?.mean_keepdim(candle_core::D::Minus2);
    let s = candle_nn::ops::sigmoid(&alpha.reshape((1, 1, 1, 1))?)?;
    gap(a)?.broadcast_mul(&s)? + gap(b)?.broadcast_mul(&s.affine(-1.0, 1.0)?)?
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use crate::test_util::{close, values};

    /// The op and its three gradients against candle's primitives, f32 and f64.
    #[test]
    fn equals_the_composed_pools_with_gradients() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let var = |shape: &[usize], mean: f64| {
                let t = Tensor::randn(mean, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                Var::from_tensor(&t).unwrap()
            };
            let (a, b) = (var(&[3, 5, 7, 6], 0.5), var(&[3, 5, 7, 6], -0.25));
            let alpha = Var::from_tensor(&Tensor::new(&[[[[0.3f64]]]], &Device::Cpu).unwrap().to_dtype(dtype).unwrap())
                .unwrap();
            let mix = Tensor::randn(0f64, 1.0, (3, 5, 1, 1), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let ours = super::pool_mix(a.as_tensor(), b.as_tensor(), alpha.as_tensor()).unwrap();
            let theirs = super::pool_mix_generic(a.as_tensor(), b.as_tensor(), alpha.as_tensor()).unwrap();
            assert_eq!(ours.dims(), &[3, 5, 1, 1]);
            close(&format!("{dtype:?} output"), &values(&ours), &values(&theirs), tol);
            let g1 = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, t) in [("a", a.as_tensor()), ("b", b.as_tensor()), ("alpha", alpha.as_tensor())] {
                let (x, y) = (g1.get(t).unwrap(), g2.get(t).unwrap());
                assert_eq!(x.dims(), t.dims(), "{name}");
                close(&format!("{dtype:?} gradient of {name}"), &values(x), &values(y), tol);
            }
        }
    }
}
