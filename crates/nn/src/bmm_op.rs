//! Batched matrix products of many small matrices as a CPU op: attention's `q·kᵀ` and
//! `weights·v` over `[B·windows, heads]` batches of 49×32 matrices in a Swin block.
//!
//! candle's CPU matmul calls `gemm` once per batch item, each call splitting its small product
//! over the thread pool: thousands of dispatches per layer. Here the batch is split over the
//! threads and each product runs whole on one; transposed operands are read through strides (no
//! copies), and the backward is two more such products, `dA = dC·Bᵀ`, `dB = Aᵀ·dC`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous, dispatch_float};

/// `op(A)·op(B)` per batch item, `op` a transpose where the flag says so; operands are stored
/// contiguous as `[batch, rows, cols]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BmmOp {
    pub(crate) transpose_a: bool,
    pub(crate) transpose_b: bool,
}

impl BmmOp {
    /// (batch, m, n, k) of the product, checked.
    fn sizes(&self, a: &[usize], b: &[usize]) -> Result<(usize, usize, usize, usize)> {
        let (&[batch, ar, ac], &[bb, br, bc]) = (a, b) else { bail!("batched matmul: {a:?} · {b:?} are not 3-D") };
        let (m, k) = if self.transpose_a { (ac, ar) } else { (ar, ac) };
        let (k2, n) = if self.transpose_b { (bc, br) } else { (br, bc) };
        if batch != bb || k != k2 {
            bail!("batched matmul: {a:?} · {b:?} (transposed: {}, {}) do not fit", self.transpose_a, self.transpose_b)
        }
        Ok((batch, m, n, k))
    }

    fn run<T: WithDType + Send + Sync>(
        &self,
        a: &[T],
        b: &[T],
        (batch, m, n, k): (usize, usize, usize, usize),
    ) -> Vec<T> {
        let mut c = vec![T::from_f64(0.0); batch * m * n];
        // (row stride, column stride) of op(A) [m × k] and op(B) [k × n] in their stored layout.
        let a_strides = if self.transpose_a { (1, m) } else { (k, 1) };
        let b_strides = if self.transpose_b { (1, k) } else { (n, 1) };
        let product = |(item, out): (usize, &mut [T])| {
            crate::gemm_util::matmul_serial(
                (m, n, k),
                (out, n, 1),
                false,
                (&a[item * m * k..][..m * k], a_strides.0, a_strides.1),
                (&b[item * k * n..][..k * n], b_strides.0, b_strides.1),
            );
        };
        if m * n == 0 {
            return c;
        }
        c.par_chunks_mut(m * n).enumerate().for_each(product);
        c
    }
}

impl CustomOp2 for BmmOp {
    fn name(&self) -> &'static str {
        "dmlp-batched-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let sizes = self.sizes(l1.dims(), l2.dims())?;
        let c = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(self.run(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            sizes
        )));
        Ok((c, Shape::from((sizes.0, sizes.1, sizes.2))))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _c: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // C = A·B: dA = dC·Bᵀ, dB = Aᵀ·dC; with A or B stored transposed, the stored gradient
        // is the transpose of those, which swaps the operands.
        let da = match self.transpose_a {
            false => grad.apply_op2_no_bwd(b, &BmmOp { transpose_a: false, transpose_b: !self.transpose_b })?,
            true => b.apply_op2_no_bwd(&grad, &BmmOp { transpose_a: self.transpose_b, transpose_b: true })?,
        };
        let db = match self.transpose_b {
            false => a.apply_op2_no_bwd(&grad, &BmmOp { transpose_a: !self.transpose_a, transpose_b: false })?,
            true => grad.apply_op2_no_bwd(a, &BmmOp { transpose_a: true, transpose_b: self.transpose_a })?,
        };
        Ok((Some(da), Some(db)))
    }
}
