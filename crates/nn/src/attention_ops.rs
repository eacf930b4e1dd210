//! The transformers' element-wise ops as CPU ops with one-pass backward: softmax over the last
//! dimension and the exact (erf) GELU.
//!
//! candle's differentiable softmax is five tensor ops forward and about as many backward, each a
//! pass over the attention scores (`[B·windows, heads, 49, 49]` in a Swin block), and its fused
//! `softmax_last_dim` has no gradient at all. candle's GELU backward composes six ops over the
//! MLP's hidden activation. Here each is one parallel pass forward and one backward:
//! softmax `dx = y ⊙ (dy − Σ dy ⊙ y)` per row, GELU `dx = dy · (Φ(x) + x·φ(x))`.
//! Elsewhere (CUDA, or inside [`crate::with_generic_ops`]) both are candle's own composed ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous, dispatch_float};

/// Elements per parallel task of the element-wise passes.
const CHUNK: usize = 1 << 15;

/// What the passes need of f32 and f64.
pub(crate) trait Real:
    WithDType
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    const NEG_INFINITY: Self;
    const FRAC_1_SQRT_2: Self;
    /// 1/√(2π).
    const FRAC_1_SQRT_2PI: Self;
    fn exp(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn recip(self) -> Self;
    fn erf(self) -> Self;

    /// `out[i] = x·Φ(x)` of `xs[i]`, Φ the standard normal's distribution function.
    fn gelu_into(out: &mut [Self], xs: &[Self]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = Self::HALF * x * (Self::ONE + (x * Self::FRAC_1_SQRT_2).erf());
        }
    }

    /// `dx[i] = dy·(Φ(x) + x·φ(x))` of `xs[i]`, `dys[i]`, φ the standard normal's density.
    fn gelu_backward_into(dx: &mut [Self], xs: &[Self], dys: &[Self]) {
        for ((o, &x), &dy) in dx.iter_mut().zip(xs).zip(dys) {
            let cdf = Self::HALF * (Self::ONE + (x * Self::FRAC_1_SQRT_2).erf());
            let pdf = Self::FRAC_1_SQRT_2PI * (-Self::HALF * x * x).exp();
            *o = dy * (cdf + x * pdf);
        }
    }

    /// `values[i] = exp(values[i] − shift)`.
    fn exp_shifted(values: &mut [Self], shift: Self) {
        for v in values.iter_mut() {
            *v = (*v - shift).exp();
        }
    }
}

macro_rules! real {
    ($t:ident, $exp:path, $erf:path $(, $slices:item)*) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const HALF: Self = 0.5;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            const FRAC_1_SQRT_2: Self = std::$t::consts::FRAC_1_SQRT_2;
            const FRAC_1_SQRT_2PI: Self = (0.398_942_280_401_432_7_f64) as $t;
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            fn max(self, other: Self) -> Self {
                $t::max(self, other)
            }
            fn recip(self) -> Self {
                $t::recip(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            $($slices)*
        }
    };
}

// f32's slice passes through `vecmath` (branch-free `exp` and normal distribution, compiled for
// the CPU's widest vectors); its scalar `erf`, which they do not use, through libm. f64 (the
// tests' reference precision) through the standard library and libm, one element at a time.
real!(
    f32,
    crate::vecmath::exp,
    candle_core::cpu::erf::erf_f32,
    fn gelu_into(out: &mut [f32], xs: &[f32]) {
        crate::vecmath::gelu(out, xs)
    },
    fn gelu_backward_into(dx: &mut [f32], xs: &[f32], dys: &[f32]) {
        crate::vecmath::gelu_backward(dx, xs, dys)
    },
    fn exp_shifted(values: &mut [f32], shift: f32) {
        crate::vecmath::exp_shifted(values, shift)
    }
);
real!(f64, f64::exp, candle_core::cpu::erf::erf_f64);

fn rows_per_task(row_len: usize) -> usize {
    (CHUNK / row_len.max(1)).max(1)
}

pub(crate) fn softmax_rows<T: Real>(x: &[T], row_len: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    let task = rows_per_task(row_len) * row_len;
    y.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(out, inp)| {
        for (o, i) in out.chunks_mut(row_len).zip(inp.chunks(row_len)) {
            let max = i.iter().copied().fold(T::NEG_INFINITY, Real::max);
            o.copy_from_slice(i);
            T::exp_shifted(o, max);
            let sum = o.iter().fold(T::ZERO, |acc, &e| acc + e);
            let inv = sum.recip();
            for o in o.iter_mut() {
                *o *= inv;
            }
        }
    });
    y
}

/// `y ⊙ (dy − Σ_row dy ⊙ y)`.
fn softmax_backward_rows<T: Real>(y: &[T], dy: &[T], row_len: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; y.len()];
    let task = rows_per_task(row_len) * row_len;
    dx.par_chunks_mut(task).zip(y.par_chunks(task).zip(dy.par_chunks(task))).for_each(|(out, (ys, gs))| {
        for ((o, y), g) in out.chunks_mut(row_len).zip(ys.chunks(row_len)).zip(gs.chunks(row_len)) {
            let dot = y.iter().zip(g).fold(T::ZERO, |acc, (&a, &b)| acc + a * b);
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        }
    });
    dx
}

fn gelu_slice<T: Real>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, inp)| T::gelu_into(out, inp));
    y
}

/// `dy · (Φ(x) + x·φ(x))`, Φ the standard normal's distribution and φ its density.
fn gelu_backward_slice<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(out, (xs, gs))| T::gelu_backward_into(out, xs, gs));
    dx
}

struct SoftmaxOp;
/// `(y, dy) → dx` of [`SoftmaxOp`].
struct SoftmaxBackwardOp;
struct GeluOp;
/// `(x, dy) → dx` of [`GeluOp`].
struct GeluBackwardOp;

fn last_dim(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => bail!("softmax over the last dimension of {:?}", layout.dims()),
    }
}

fn same_dims(op: &str, l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.dims() != l2.dims() {
        bail!("{op}: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
    }
    Ok(())
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "dmlp-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(layout)?;
        let y = dispatch_float!(storage, self.name(), |T| T::to_cpu_storage_owned(softmax_rows(
            contiguous::<T>(storage, layout, self.name())?,
            n
        )));
        Ok((y, layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackwardOp)?))
    }
}

impl CustomOp2 for SoftmaxBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-softmax-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        same_dims(self.name(), l1, l2)?;
        let n = last_dim(l1)?;
        let dx = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(softmax_backward_rows(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            n
        )));
        Ok((dx, l1.shape().clone()))
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "dmlp-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = dispatch_float!(storage, self.name(), |T| T::to_cpu_storage_owned(gelu_slice(contiguous::<T>(
            storage,
            layout,
            self.name()
        )?)));
        Ok((y, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackwardOp)?))
    }
}

impl CustomOp2 for GeluBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-gelu-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        same_dims(self.name(), l1, l2)?;
        let dx = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(gelu_backward_slice(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((dx, l1.shape().clone()))
    }
}

/// Whether `xs` takes the CPU op: on the CPU, f32/f64 (half precision computes in f32 around it).
fn takes_cpu_op(xs: &Tensor) -> bool {
    crate::cpu::custom_cpu_ops(xs.device())
}

/// Softmax over the last dimension, with a gradient, computed in f32 for half-precision inputs
/// (PyTorch's autocast keeps softmax in f32) and returned in the input's dtype.
///
/// # Shapes
/// `xs: [..., n]` → same shape.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    let wide = xs.to_dtype(crate::accumulation_dtype(xs))?;
    let ys = if takes_cpu_op(&wide) {
        wide.contiguous()?.apply_op1(SoftmaxOp)?
    } else {
        candle_nn::ops::softmax(&wide, D::Minus1)?
    };
    ys.to_dtype(dtype)
}

/// `nn.GELU()`: `x·Φ(x)` with the exact (erf) distribution function, as PyTorch's default.
///
/// # Shapes
/// `xs: any` → same shape.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    if takes_cpu_op(xs) {
        match xs.dtype() {
            DType::F32 | DType::F64 => xs.contiguous()?.apply_op1(GeluOp),
            dtype => xs.to_dtype(DType::F32)?.contiguous()?.apply_op1(GeluOp)?.to_dtype(dtype),
        }
    } else {
        xs.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;

    use crate::test_util::{close, values};

    /// The CPU ops equal candle's composed ones, values and gradients, in f64 and f32.
    #[test]
    fn match_candles_composed_ops_with_gradients() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            let x = Var::from_tensor(
                &(Tensor::randn(0f64, 3.0, (3, 4, 7, 33), &Device::Cpu).unwrap()).to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let mix = Tensor::randn(0f64, 1.0, (3, 4, 7, 33), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            type Op = fn(&Tensor) -> candle_core::Result<Tensor>;
            let pairs: [(&str, Op, Op); 2] = [
                ("softmax", softmax_last_dim, |t| candle_nn::ops::softmax(t, candle_core::D::Minus1)),
                ("gelu", gelu, |t| t.gelu_erf()),
            ];
            for (name, ours, theirs) in pairs {
                let (a, b) = (ours(x.as_tensor()).unwrap(), theirs(x.as_tensor()).unwrap());
                close(name, &values(&a), &values(&b), tol);
                let ga = (a * &mix).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (b * &mix).unwrap().sum_all().unwrap().backward().unwrap();
                let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
                // candle's GELU backward rounds 1/√(2π) to 0.398942 (a 2e-7 relative error).
                let grad_tol = if name == "gelu" { tol.max(1e-6) } else { tol };
                close(&format!("{name} gradient"), &values(ga), &values(gb), grad_tol);
            }
        }
    }

    /// GELU's gradient against central differences of its own forward, in f64.
    #[test]
    fn gelu_gradient_matches_finite_differences() {
        let xs: Vec<f64> = (-40..=40).map(|i| i as f64 * 0.17).collect();
        let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let grads = gelu(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let grad = values(grads.get(x.as_tensor()).unwrap());
        let f = |v: f64| values(&gelu(&Tensor::new(&[v], &Device::Cpu).unwrap()).unwrap())[0];
        for (v, g) in xs.iter().zip(grad) {
            let h = 1e-5;
            let numeric = (f(v + h) - f(v - h)) / (2.0 * h);
            assert!((numeric - g).abs() < 1e-8, "at {v}: {g} vs {numeric}");
        }
    }

    #[test]
    fn softmax_is_stable_for_large_scores_and_masks() {
        let x = Tensor::new(&[[1000f32, 1000.0, -100.0], [-1e30, 0.0, 0.0]], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = softmax_last_dim(&x).unwrap().to_vec2().unwrap();
        assert!((y[0][0] - 0.5).abs() < 1e-6 && (y[0][1] - 0.5).abs() < 1e-6 && y[0][2] == 0.0, "{y:?}");
        assert!(y[1][0] == 0.0 && (y[1][1] - 0.5).abs() < 1e-6, "{y:?}");
    }
}
