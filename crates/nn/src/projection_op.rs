//! Dynamic MLP's projection with generated weights as one CPU op: the weight generator
//! (`get_weight` / `conv22`, a Linear layer) and the per-sample vector × matrix product.
//!
//! The generated matrices are the largest tensors of the head (`[B, i·o]`, 32 MB at the
//! reference's batch 512 and `16384 = 256 × 64` per sample). As two ops they cross candle's
//! graph as a tensor and its gradient: candle's backward then allocates a zeroed gradient for
//! them and adds into it, and the Linear backward reads that gradient three times. Here they
//! stay inside the op: the forward keeps them for the backward (no second product), and the
//! backward forms their gradient in blocks of rows, each used by both of its products while
//! it is in cache.
//!
//! With `G = h · Wᵀ` (`W: [i·o, k]`, the generator's weight) and `u: [B, i]`:
//!
//! ```text
//! forward   y[b, c]          = Σ_r u[b, r] · G[b, r·o + c]
//! backward  dG[b, r·o + c]   = u[b, r] · dy[b, c]
//!           du[b, r]         = Σ_c dy[b, c] · G[b, r·o + c]
//!           dh               = dG · W          [B × io] · [io × k]
//!           dW               = dGᵀ · h         [io × B] · [B × k]
//! ```
//!
//! The generator's bias enters as `u · reshape(b, [i, o])`, a small product outside the op,
//! which is the same sum: `Σ_r u[b, r] · (G[b, r·o + c] + b[r·o + c])`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous, dispatch_float};
use crate::gemm_util::matmul;
use crate::linear::Linear;
use crate::vecmat_op::{batched_vecmat, vecmat_backward_rows, vecmat_forward};

/// Rows of `dG` formed at a time in the backward (`256 × 16384` floats, 16 MB, at the
/// reference's sizes).
const BACKWARD_ROWS: usize = 256;

/// `(B, k, i, o)` from `h: [B, k]`, `u: [B, i]` and `W: [i·o, k]`.
fn dims(h: &Layout, u: &Layout, w: &Layout, o: usize) -> Result<(usize, usize, usize, usize)> {
    let (&[b, k], &[b_u, i], &[io, k_w]) = (h.dims(), u.dims(), w.dims()) else {
        bail!(
            "generated projection expects h [B, k], u [B, i], W [i·o, k], got {:?}, {:?}, {:?}",
            h.dims(),
            u.dims(),
            w.dims()
        )
    };
    if b != b_u || k != k_w || io != i * o {
        bail!("generated projection: h {:?}, u {:?} and W {:?} do not fit [{i} × {o}]", h.dims(), u.dims(), w.dims())
    }
    Ok((b, k, i, o))
}

/// `(h [B, k], u [B, i], W [i·o, k]) → [B, o]`; keeps `G` for its backward.
struct ProjectionOp {
    o: usize,
    generated: Mutex<Option<Arc<CpuStorage>>>,
}

impl CustomOp3 for ProjectionOp {
    fn name(&self) -> &'static str {
        "dmlp-generated-projection"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, k, i, o) = dims(l1, l2, l3, self.o)?;
        let (y, generated) = dispatch_float!(s1, self.name(), |T| {
            let h = contiguous::<T>(s1, l1, self.name())?;
            let u = contiguous::<T>(s2, l2, self.name())?;
            let w = contiguous::<T>(s3, l3, self.name())?;
            let mut g = vec![T::from_f64(0.0); b * i * o];
            // Wᵀ as the right operand: element (kk, j) lives at W[j·k + kk].
            matmul((b, i * o, k), &mut g, i * o, false, (h, k, 1), (w, 1, k));
            let y = vecmat_forward(u, &g, (b, i, o));
            (T::to_cpu_storage_owned(y), T::to_cpu_storage_owned(g))
        });
        *self.generated.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(generated));
        Ok((y, Shape::from((b, o))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        u: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(generated) = self.generated.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            bail!("generated projection: backward without a forward")
        };
        let (b, k) = h.dims2()?;
        let i = u.dim(1)?;
        let io = w.dim(0)?;
        // u and dy travel packed (custom ops take at most three tensors).
        let packed = Tensor::cat(&[&u.flatten_all()?, &grad.contiguous()?.flatten_all()?], 0)?;
        let op = ProjectionBackwardOp { b, k, i, o: self.o, generated };
        let out = h.apply_op3_no_bwd(&packed, w, &op)?;
        let dh = out.narrow(0, 0, b * k)?.reshape((b, k))?;
        let du = out.narrow(0, b * k, b * i)?.reshape((b, i))?;
        let dw = out.narrow(0, b * k + b * i, io * k)?.reshape((io, k))?;
        Ok((Some(dh), Some(du), Some(dw)))
    }
}

/// `(h, [u..., dy...], W) → [dh..., du..., dW...]`, with `G` from the forward.
struct ProjectionBackwardOp {
    b: usize,
    k: usize,
    i: usize,
    o: usize,
    generated: Arc<CpuStorage>,
}

fn backward<T: WithDType + Send + Sync>(
    h: &[T],
    u: &[T],
    dy: &[T],
    w: &[T],
    g: &[T],
    (b, k, i, o): (usize, usize, usize, usize),
) -> Vec<T> {
    let io = i * o;
    let mut out = vec![T::from_f64(0.0); b * k + b * i + io * k];
    let (dh, rest) = out.split_at_mut(b * k);
    let (du, dw) = rest.split_at_mut(b * i);
    let rows = BACKWARD_ROWS.min(b).max(1);
    let mut dg = vec![T::from_f64(0.0); rows * io];
    for start in (0..b).step_by(rows) {
        let n = rows.min(b - start);
        let dg = &mut dg[..n * io];
        fn span<T>(x: &[T], width: usize, start: usize, n: usize) -> &[T] {
            &x[start * width..(start + n) * width]
        }
        dg.par_chunks_mut(io)
            .zip(du[start * i..(start + n) * i].par_chunks_mut(i))
            .zip(
                span(u, i, start, n)
                    .par_chunks(i)
                    .zip(span(g, io, start, n).par_chunks(io))
                    .zip(span(dy, o, start, n).par_chunks(o)),
            )
            .for_each(|((dg_row, du_row), ((u_row, g_row), dy_row))| {
                vecmat_backward_rows(u_row, g_row, dy_row, du_row, dg_row);
            });
        matmul((n, k, io), &mut dh[start * k..(start + n) * k], k, false, (dg, io, 1), (w, k, 1));
        // dGᵀ as the left operand: element (j, bb) lives at dG[bb·io + j].
        matmul((io, k, n), dw, k, start > 0, (dg, 1, io), (span(h, k, start, n), k, 1));
    }
    out
}

impl CustomOp3 for ProjectionBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-generated-projection-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, k, i, o) = (self.b, self.k, self.i, self.o);
        if l1.dims() != [b, k] || l2.dims() != [b * i + b * o] || l3.dims() != [i * o, k] {
            bail!("generated projection backward: unexpected shapes {:?}, {:?}, {:?}", l1.dims(), l2.dims(), l3.dims())
        }
        let out = dispatch_float!(s1, self.name(), |T| {
            let h = contiguous::<T>(s1, l1, self.name())?;
            let (u, dy) = contiguous::<T>(s2, l2, self.name())?.split_at(b * i);
            let w = contiguous::<T>(s3, l3, self.name())?;
            let g = self.generated.as_slice::<T>()?;
            T::to_cpu_storage_owned(backward(h, u, dy, w, g, (b, k, i, o)))
        });
        Ok((out, Shape::from(b * k + b * i + i * o * k)))
    }
}

/// `y[b] = u[b] · reshape(generator(h)[b], [i, o])`: Dynamic MLP's projection of `u` by the
/// matrix that the Linear layer `generator` (`k → i·o`, with or without bias) makes from `h`,
/// the reference's `torch.bmm(u.unsqueeze(1), generator(h).view(-1, i, o)).squeeze(1)`.
///
/// On the CPU in f32 and f64 one op that never hands the generated matrices to candle (see the
/// module docs); elsewhere the generator's output and [`batched_vecmat`].
///
/// # Shapes
/// `u: [B, i]`, `h: [B, k]` → `[B, o]`.
pub fn generated_projection(u: &Tensor, h: &Tensor, generator: &Linear, (i, o): (usize, usize)) -> Result<Tensor> {
    let (b, i_u) = u.dims2()?;
    let (b_h, _) = h.dims2()?;
    let (io, _) = generator.weight().dims2()?;
    if i_u != i || b != b_h || io != i * o {
        bail!(
            "generated projection: u {:?}, h {:?} and a generator of {io} outputs do not fit [{i} × {o}]",
            u.dims(),
            h.dims()
        )
    }
    let fused = crate::cpu::custom_cpu_ops(u.device())
        && matches!(u.dtype(), DType::F32 | DType::F64)
        && h.dtype() == u.dtype()
        && generator.weight().dtype() == u.dtype();
    if !fused {
        return batched_vecmat(u, &candle_core::Module::forward(generator, h)?);
    }
    let op = ProjectionOp { o, generated: Mutex::new(None) };
    let ys = h.contiguous()?.apply_op3(&u.contiguous()?, &generator.weight().contiguous()?, op)?;
    match generator.bias() {
        Some(bias) => ys + u.matmul(&bias.reshape((i, o))?)?,
        None => Ok(ys),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};

    use crate::{ParamStore, linear};

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// The fused op against the two-op composition it replaces, values and every gradient, in
    /// float64, with more rows than one backward block so that blocks accumulate.
    #[test]
    fn matches_the_generator_then_the_batched_product() {
        let (b, k, i, o) = (super::BACKWARD_ROWS + 3, 5, 4, 3);
        for bias in [true, false] {
            let store = ParamStore::new(7);
            let generator = linear(k, i * o, bias, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
            let u = candle_core::Var::randn(0f64, 1.0, (b, i), &Device::Cpu).unwrap();
            let h = candle_core::Var::randn(0f64, 1.0, (b, k), &Device::Cpu).unwrap();
            let mix = Tensor::randn(0f64, 1.0, (b, o), &Device::Cpu).unwrap();
            let ours = super::generated_projection(u.as_tensor(), h.as_tensor(), &generator, (i, o)).unwrap();
            let theirs = u
                .as_tensor()
                .unsqueeze(1)
                .unwrap()
                .matmul(&generator.forward(h.as_tensor()).unwrap().reshape((b, i, o)).unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap();
            close(&values(&ours), &values(&theirs), 1e-12);
            let ga = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let mut tensors = vec![u.as_tensor(), h.as_tensor(), generator.weight()];
            tensors.extend(generator.bias());
            for t in tensors {
                close(&values(ga.get(t).unwrap()), &values(gb.get(t).unwrap()), 1e-12);
            }
        }
    }

    /// Central finite differences through the op alone (no bias), float64, odd sizes.
    #[test]
    fn gradients_match_finite_differences() {
        let (b, k, i, o) = (3, 5, 2, 7);
        let store = ParamStore::new(3);
        let generator = linear(k, i * o, false, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        let u0: Vec<f64> = (0..b * i).map(|x| (x as f64 * 0.37).sin()).collect();
        let h0: Vec<f64> = (0..b * k).map(|x| (x as f64 * 0.71).cos()).collect();
        let mix = Tensor::randn(0f64, 1.0, (b, o), &Device::Cpu).unwrap();
        let loss = |u: &[f64], h: &[f64]| -> f64 {
            let u = Tensor::from_slice(u, (b, i), &Device::Cpu).unwrap();
            let h = Tensor::from_slice(h, (b, k), &Device::Cpu).unwrap();
            let y = super::generated_projection(&u, &h, &generator, (i, o)).unwrap();
            (y * &mix).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let u = candle_core::Var::from_slice(&u0, (b, i), &Device::Cpu).unwrap();
        let h = candle_core::Var::from_slice(&h0, (b, k), &Device::Cpu).unwrap();
        let y = super::generated_projection(u.as_tensor(), h.as_tensor(), &generator, (i, o)).unwrap();
        let grads = (y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let eps = 1e-6;
        for (which, base) in [(0, &u0), (1, &h0)] {
            let analytic = values(grads.get(if which == 0 { u.as_tensor() } else { h.as_tensor() }).unwrap());
            for idx in 0..base.len() {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[idx] += eps;
                minus[idx] -= eps;
                let numeric = if which == 0 {
                    (loss(&plus, &h0) - loss(&minus, &h0)) / (2.0 * eps)
                } else {
                    (loss(&u0, &plus) - loss(&u0, &minus)) / (2.0 * eps)
                };
                assert!(
                    (numeric - analytic[idx]).abs() < 1e-7,
                    "input {which} [{idx}]: {numeric} vs {}",
                    analytic[idx]
                );
            }
        }
        let dw = values(grads.get(generator.weight()).unwrap());
        assert!(dw.iter().all(|v| v.is_finite()) && dw.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let store = ParamStore::new(0);
        let generator = linear(5, 12, true, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let u = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let h = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(super::generated_projection(&u, &h, &generator, (4, 3)).is_ok());
        assert!(super::generated_projection(&u, &h, &generator, (3, 4)).is_err());
        assert!(super::generated_projection(&u, &h.narrow(0, 0, 1).unwrap(), &generator, (4, 3)).is_err());
    }
}
