//! The batched vector × matrix product of Dynamic MLP (`bmm(u[:, None, :], W.view(B, i, o))`) as
//! one CPU op: candle runs it as one tiny gemm per sample in each direction.
//!
//! ```text
//! forward   y[b, c]    = Σ_r u[b, r] · W[b, r·o + c]
//! backward  du[b, r]   = Σ_c dy[b, c] · W[b, r·o + c]
//!           dW[b, r·o + c] = u[b, r] · dy[b, c]
//! ```

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, bail};

use crate::cpu::{contiguous, dispatch_float};
use rayon::prelude::*;

/// `(batch, i, o)` from `u: [B, i]` and `W: [B, i·o]`.
fn dims(u: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    let (&[b, i], &[b_w, io]) = (u.dims(), w.dims()) else {
        bail!("batched vecmat expects u [B, i] and W [B, i·o], got {:?} and {:?}", u.dims(), w.dims())
    };
    if b != b_w || i == 0 || io % i != 0 {
        bail!("batched vecmat: u {:?} does not fit W {:?}", u.dims(), w.dims())
    }
    Ok((b, i, io / i))
}

/// `y[b] = u[b] · W[b]` for every row, in parallel.
pub(crate) fn vecmat_forward<T: WithDType + Send + Sync>(u: &[T], w: &[T], (_, i, o): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); u.len() / i * o];
    y.par_chunks_mut(o).zip(u.par_chunks(i)).zip(w.par_chunks(i * o)).for_each(|((out, u_row), w_mat)| {
        for (r, &ur) in u_row.iter().enumerate() {
            for (acc, &wv) in out.iter_mut().zip(&w_mat[r * o..(r + 1) * o]) {
                *acc += ur * wv;
            }
        }
    });
    y
}

/// One sample's backward: `du = W · dy` and `dW = u ⊗ dy` (`u: [i]`, `W: [i·o]`, `dy: [o]`).
pub(crate) fn vecmat_backward_rows<T: WithDType>(u: &[T], w: &[T], dy: &[T], du: &mut [T], dw: &mut [T]) {
    let o = dy.len();
    for ((du_r, &ur), (w_row, dw_row)) in du.iter_mut().zip(u).zip(w.chunks_exact(o).zip(dw.chunks_exact_mut(o))) {
        let mut acc = T::from_f64(0.0);
        for (&wv, &gv) in w_row.iter().zip(dy) {
            acc += wv * gv;
        }
        *du_r = acc;
        for (d, &gv) in dw_row.iter_mut().zip(dy) {
            *d = ur * gv;
        }
    }
}

/// `[du..., dW...]` packed.
fn backward<T: WithDType + Send + Sync>(u: &[T], w: &[T], dy: &[T], (b, i, o): (usize, usize, usize)) -> Vec<T> {
    let mut du = vec![T::from_f64(0.0); b * i];
    let mut dw = vec![T::from_f64(0.0); b * i * o];
    du.par_chunks_mut(i)
        .zip(dw.par_chunks_mut(i * o))
        .zip(u.par_chunks(i).zip(w.par_chunks(i * o)).zip(dy.par_chunks(o)))
        .for_each(|((du_row, dw_mat), ((u_row, w_mat), g))| vecmat_backward_rows(u_row, w_mat, g, du_row, dw_mat));
    du.extend(dw);
    du
}

/// `(u [B, i], W [B, i·o]) → [B, o]`.
pub(crate) struct VecmatOp;

impl CustomOp2 for VecmatOp {
    fn name(&self) -> &'static str {
        "dmlp-batched-vecmat"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = dims(l1, l2)?;
        let y = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(vecmat_forward(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            dims
        )));
        Ok((y, Shape::from((dims.0, dims.2))))
    }

    fn bwd(&self, u: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, i) = u.dims2()?;
        let packed = Tensor::cat(&[&u.flatten_all()?, &w.flatten_all()?], 0)?
            .apply_op2_no_bwd(&grad.contiguous()?, &VecmatBackwardOp { b, i, io: w.dim(1)? })?;
        let du = packed.narrow(0, 0, b * i)?.reshape((b, i))?;
        let dw = packed.narrow(0, b * i, w.elem_count())?.reshape(w.shape())?;
        Ok((Some(du), Some(dw)))
    }
}

/// `([u..., W...], dy) → [du..., dW...]` (u and W travel packed: custom ops take at most three
/// tensors and this one needs no third).
struct VecmatBackwardOp {
    b: usize,
    i: usize,
    io: usize,
}

impl CustomOp2 for VecmatBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-batched-vecmat-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, i, o) = (self.b, self.i, self.io / self.i);
        if l1.dims() != [b * i + b * i * o] || l2.dims() != [b, o] {
            bail!("batched vecmat backward: unexpected shapes {:?} and {:?}", l1.dims(), l2.dims())
        }
        let out = dispatch_float!(s1, self.name(), |T| {
            let packed = contiguous::<T>(s1, l1, self.name())?;
            let (u, w) = packed.split_at(b * i);
            T::to_cpu_storage_owned(backward(u, w, contiguous::<T>(s2, l2, self.name())?, (b, i, o)))
        });
        Ok((out, Shape::from(b * i + b * i * o)))
    }
}

/// `y[b] = u[b] · reshape(W[b], [i, o])`, the reference's `torch.bmm(u.unsqueeze(1),
/// W.view(-1, i, o)).squeeze(1)` with a row-major view.
///
/// # Shapes
/// `u: [B, i]`, `w: [B, i·o]` → `[B, o]`.
pub fn batched_vecmat(u: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (u, w) = (&crate::autocast::for_matmul(u)?, &crate::autocast::for_matmul(w)?);
    let (b, i) = u.dims2()?;
    let (b_w, io) = w.dims2()?;
    if b != b_w || i == 0 || io % i != 0 {
        bail!("batched vecmat: u {:?} does not fit W {:?}", u.dims(), w.dims())
    }
    let cpu_float = crate::cpu::custom_cpu_ops(u.device())
        && matches!(u.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if cpu_float {
        return u.contiguous()?.apply_op2(&w.contiguous()?, VecmatOp);
    }
    u.unsqueeze(1)?.matmul(&w.reshape((b, i, io / i))?)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn matches_the_batched_matmul_with_gradients() {
        let (b, i, o) = (5, 7, 3);
        let u = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, i), &Device::Cpu).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, i * o), &Device::Cpu).unwrap()).unwrap();
        let mix = Tensor::randn(0f64, 1.0, (b, o), &Device::Cpu).unwrap();
        let ours = super::batched_vecmat(u.as_tensor(), w.as_tensor()).unwrap();
        let theirs = u
            .as_tensor()
            .unsqueeze(1)
            .unwrap()
            .matmul(&w.as_tensor().reshape((b, i, o)).unwrap())
            .unwrap()
            .squeeze(1)
            .unwrap();
        let close =
            |a: Vec<f64>, b: Vec<f64>| assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12), "{a:?} vs {b:?}");
        close(values(&ours), values(&theirs));
        let ga = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [u.as_tensor(), w.as_tensor()] {
            close(values(ga.get(t).unwrap()), values(gb.get(t).unwrap()));
        }
        assert!(
            super::batched_vecmat(u.as_tensor(), &Tensor::zeros((b, 8), DType::F64, &Device::Cpu).unwrap()).is_err()
        );
    }
}
