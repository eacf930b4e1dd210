//! The per-channel blend `z = a + s·(b − a)` of two activations (SK-Res2Net's selective-kernel
//! fusion of a block's input split and its Res2Net path) as one op, forward and backward: on the
//! CPU as parallel loops, on CUDA as dmlp's kernels (`crate::cuda_kernels`).
//!
//! Composed from candle's primitives it is three passes forward (`b − a`, the broadcast product,
//! the sum) and in the backward two broadcast products, a sum over the spatial dimensions, a
//! negation and the additions into the inputs' gradients: by session 17's H200 profile the
//! broadcast products and additions of SK-Res2Net-101's step were 38 of its 269 ms on the device,
//! each launch a host round of its own. Here the forward is one pass, the backward two:
//!
//! ```text
//! da = g − g·s     db = g·s          (one pass, both into one buffer)
//! ds = Σ_hw g·(b − a)                (one reduction per (image, channel))
//! ```
//!
//! The forward rounds as the composed ops do (`b − a`, then `·s`, then `+ a`, each rounded), so
//! it equals them to the bit in f32 and f64; `da` and `db` too; `ds` accumulates in f64 on the
//! CPU (in f32 per block on CUDA) and so differs from candle's f32 sum in the last bits.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous, dispatch_float};

/// `z = a + s·(b − a)` with `s` per (image, channel); see the module docs.
struct BlendOp;
/// `(g, s) → [da | db]`, `2n` values.
struct BlendInputGradsOp;
/// `(a, b, g) → ds`, one value per (image, channel).
struct BlendWeightGradsOp;

/// `(rows, hw)`: the (image, channel) rows of an `[N, C, ...]` layout and the elements in each.
pub(crate) fn rows(layout: &Layout, what: &str) -> Result<(usize, usize)> {
    let dims = layout.dims();
    if dims.len() < 2 {
        bail!("{what}: needs [N, C, ...], got {dims:?}")
    }
    let rows = dims[0] * dims[1];
    Ok((rows, layout.shape().elem_count().checked_div(rows).unwrap_or(0)))
}

fn check_weights(rows: usize, sl: &Layout, what: &str) -> Result<()> {
    if sl.shape().elem_count() != rows {
        bail!("{what}: {} weights for {rows} (image, channel) rows", sl.shape().elem_count())
    }
    Ok(())
}

fn blend_slice<T: WithDType + Send + Sync>(a: &[T], b: &[T], s: &[T], hw: usize) -> Vec<T> {
    let mut z = vec![T::from_f64(0.0); a.len()];
    if hw == 0 {
        return z;
    }
    z.par_chunks_mut(hw).zip(a.par_chunks(hw).zip(b.par_chunks(hw))).zip(s.par_iter()).for_each(
        |((out, (xa, xb)), &w)| {
            for ((o, &u), &v) in out.iter_mut().zip(xa).zip(xb) {
                *o = (v - u) * w + u;
            }
        },
    );
    z
}

/// `[da | db]` with `da = g − g·s`, `db = g·s`.
fn input_grads_slice<T: WithDType + Send + Sync>(g: &[T], s: &[T], hw: usize) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::from_f64(0.0); 2 * n];
    if hw == 0 {
        return out;
    }
    let (da, db) = out.split_at_mut(n);
    da.par_chunks_mut(hw).zip(db.par_chunks_mut(hw)).zip(g.par_chunks(hw).zip(s.par_iter())).for_each(
        |((da, db), (gs, &w))| {
            for ((x, y), &v) in da.iter_mut().zip(db.iter_mut()).zip(gs) {
                let m = v * w;
                *y = m;
                *x = v - m;
            }
        },
    );
    out
}

/// `ds = Σ_hw g·(b − a)` per row, accumulated in f64.
fn weight_grads_slice<T: WithDType + Send + Sync>(a: &[T], b: &[T], g: &[T], rows: usize, hw: usize) -> Vec<T> {
    if hw == 0 {
        return vec![T::from_f64(0.0); rows];
    }
    a.par_chunks(hw)
        .zip(b.par_chunks(hw).zip(g.par_chunks(hw)))
        .map(|(xa, (xb, gs))| {
            let sum: f64 = xa.iter().zip(xb).zip(gs).map(|((&u, &v), &d)| (d * (v - u)).to_f64()).sum();
            T::from_f64(sum)
        })
        .collect()
}

impl CustomOp3 for BlendOp {
    fn name(&self) -> &'static str {
        "dmlp-channel-blend"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        s: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, hw) = rows(al, self.name())?;
        check_weights(rows, sl, self.name())?;
        let z = dispatch_float!(a, self.name(), |T| T::to_cpu_storage_owned(blend_slice(
            contiguous::<T>(a, al, self.name())?,
            contiguous::<T>(b, bl, self.name())?,
            contiguous::<T>(s, sl, self.name())?,
            hw
        )));
        Ok((z, al.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, hw) = rows(al, self.name())?;
        check_weights(rows, sl, self.name())?;
        Ok((crate::cuda_kernels::blend(a, al, b, bl, s, sl, hw)?, al.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        s: &Tensor,
        _z: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let n = grad.elem_count();
        let packed = grad.apply_op2_no_bwd(s, &BlendInputGradsOp)?;
        let da = packed.narrow(0, 0, n)?.reshape(a.shape())?;
        let db = packed.narrow(0, n, n)?.reshape(b.shape())?;
        let ds = a.apply_op3_no_bwd(b, &grad, &BlendWeightGradsOp)?.reshape(s.shape())?;
        Ok((Some(da), Some(db), Some(ds)))
    }
}

impl CustomOp2 for BlendInputGradsOp {
    fn name(&self) -> &'static str {
        "dmlp-channel-blend-input-grads"
    }

    fn cpu_fwd(&self, g: &CpuStorage, gl: &Layout, s: &CpuStorage, sl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, hw) = rows(gl, self.name())?;
        check_weights(rows, sl, self.name())?;
        let out = dispatch_float!(g, self.name(), |T| T::to_cpu_storage_owned(input_grads_slice(
            contiguous::<T>(g, gl, self.name())?,
            contiguous::<T>(s, sl, self.name())?,
            hw
        )));
        Ok((out, Shape::from(2 * gl.shape().elem_count())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, hw) = rows(gl, self.name())?;
        check_weights(rows, sl, self.name())?;
        let out = crate::cuda_kernels::blend_input_grads(g, gl, s, sl, hw)?;
        Ok((out, Shape::from(2 * gl.shape().elem_count())))
    }
}

impl CustomOp3 for BlendWeightGradsOp {
    fn name(&self) -> &'static str {
        "dmlp-channel-blend-weight-grads"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, hw) = rows(al, self.name())?;
        let ds = dispatch_float!(a, self.name(), |T| T::to_cpu_storage_owned(weight_grads_slice(
            contiguous::<T>(a, al, self.name())?,
            contiguous::<T>(b, bl, self.name())?,
            contiguous::<T>(g, gl, self.name())?,
            rows,
            hw
        )));
        Ok((ds, Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, hw) = rows(al, self.name())?;
        Ok((crate::cuda_kernels::blend_weight_grads(a, al, b, bl, g, gl, rows, hw)?, Shape::from(rows)))
    }
}

/// `a + s·(b − a)`: the two activations blended per (image, channel) by `s` (`s = 1` takes `b`).
/// One op on the CPU (f32, f64) and on CUDA (dmlp's kernels); elsewhere, or for other shapes,
/// candle's primitives.
///
/// # Shapes
/// `a, b: [N, C, H, W]`, `s: [N, C, 1, 1]` → `[N, C, H, W]`.
pub fn channel_blend(a: &Tensor, b: &Tensor, s: &Tensor) -> Result<Tensor> {
    let custom = (crate::cpu::custom_cpu_ops(a.device())
        && matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64))
        || crate::custom_cuda_ops(a);
    let per_row = a.rank() >= 2
        && s.rank() == a.rank()
        && s.dims()[..2] == a.dims()[..2]
        && s.dims()[2..].iter().all(|&d| d == 1);
    if custom && per_row && a.dims() == b.dims() && a.dtype() == b.dtype() && a.dtype() == s.dtype() {
        a.contiguous()?.apply_op3(&b.contiguous()?, &s.contiguous()?, BlendOp)
    } else {
        channel_blend_generic(a, b, s)
    }
}

/// Any device: `(b − a)·s + a` from candle's primitives.
fn channel_blend_generic(a: &Tensor, b: &Tensor, s: &Tensor) -> Result<Tensor> {
    (b - a)?.broadcast_mul(s)? + a
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use crate::test_util::{close, values};

    /// The op and its three gradients against candle's primitives, f32 and f64: the output and
    /// the inputs' gradients to the bit, the weights' gradient to its summation's rounding.
    #[test]
    fn equals_the_composed_blend_with_gradients() {
        for dtype in [DType::F32, DType::F64] {
            let var = |shape: &[usize], mean: f64| {
                let t = Tensor::randn(mean, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                Var::from_tensor(&t).unwrap()
            };
            let (a, b, s) = (var(&[3, 5, 7, 6], 0.0), var(&[3, 5, 7, 6], 0.5), var(&[3, 5, 1, 1], 0.25));
            let mix = Tensor::randn(0f64, 1.0, (3, 5, 7, 6), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let ours = super::channel_blend(a.as_tensor(), b.as_tensor(), s.as_tensor()).unwrap();
            let theirs = super::channel_blend_generic(a.as_tensor(), b.as_tensor(), s.as_tensor()).unwrap();
            assert_eq!(values(&ours), values(&theirs), "{dtype:?} output");
            let g1 = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, t) in [("a", a.as_tensor()), ("b", b.as_tensor())] {
                assert_eq!(values(g1.get(t).unwrap()), values(g2.get(t).unwrap()), "{dtype:?} gradient of {name}");
            }
            let (ds1, ds2) = (values(g1.get(s.as_tensor()).unwrap()), values(g2.get(s.as_tensor()).unwrap()));
            close(&format!("{dtype:?} gradient of s"), &ds1, &ds2, if dtype == DType::F32 { 1e-5 } else { 1e-12 });
            assert_eq!(g1.get(s.as_tensor()).unwrap().dims(), &[3, 5, 1, 1]);
        }
    }

    /// Weights of another shape, or an input on a path without the op, take the primitives.
    #[test]
    fn other_shapes_take_the_primitives() {
        let a = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &Device::Cpu).unwrap();
        let per_channel_only = Tensor::randn(0f32, 1.0, (1, 3, 1, 1), &Device::Cpu).unwrap();
        let ours = super::channel_blend(&a, &b, &per_channel_only).unwrap();
        let theirs = ((&b - &a).unwrap().broadcast_mul(&per_channel_only).unwrap() + &a).unwrap();
        assert_eq!(values(&ours), values(&theirs));
        let generic = crate::with_generic_ops(|| super::channel_blend(&a, &b, &per_channel_only.repeat((2, 1, 1, 1))?));
        assert_eq!(generic.unwrap().dims(), &[2, 3, 4, 4]);
    }
}
