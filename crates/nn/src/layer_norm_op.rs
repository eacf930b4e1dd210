//! LayerNorm over the last dimension as one CPU op, forward and backward.
//!
//! Composed from primitives a LayerNorm over `[512, 2048]` took 50 ms forward + backward here;
//! as one op it reads its input twice and writes once each way, parallel over rows:
//!
//! ```text
//! forward   μ, σ² per row;  y = γ·(x − μ)/√(σ² + ε) + β
//! backward  g = dy·γ;  dx = (g − mean(g) − x̂·mean(g·x̂)) / √(σ² + ε)
//!           dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType, bail};

use crate::cpu::{contiguous, dispatch_float};
use rayon::prelude::*;

/// Rows per parallel task of the backward (fixed, so sums are reproducible).
const ROWS_PER_CHUNK: usize = 32;

/// `(x [..., n], weight [n], bias [n]) → y`.
pub(crate) struct LayerNormOp {
    pub(crate) eps: f64,
}

/// Mean and 1/√(σ² + ε) of one row, accumulated in f64.
fn row_stats<T: WithDType>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = row.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn forward<T: WithDType + Send + Sync>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let mut y = vec![T::from_f64(0.0); x.len()];
    y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(out, row)| {
        let (mean, inv) = row_stats(row, eps);
        for ((o, v), (wi, bi)) in out.iter_mut().zip(row).zip(w.iter().zip(b)) {
            *o = T::from_f64((v.to_f64() - mean) * inv * wi.to_f64() + bi.to_f64());
        }
    });
    y
}

/// `[dx..., dγ..., dβ...]` packed in one buffer.
fn backward<T: WithDType + Send + Sync>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let mut dx = vec![T::from_f64(0.0); x.len()];
    // Per-row dx in parallel; the affine gradients as partial sums over fixed chunks of rows,
    // added in order, so the result does not depend on how the work was scheduled.
    let chunk = ROWS_PER_CHUNK * n;
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(out_rows, (rows, grads))| {
            let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
            for (out, (row, grad)) in out_rows.chunks_mut(n).zip(rows.chunks(n).zip(grads.chunks(n))) {
                let (mean, inv) = row_stats(row, eps);
                let mut mean_g = 0.0;
                let mut mean_gx = 0.0;
                for j in 0..n {
                    let xhat = (row[j].to_f64() - mean) * inv;
                    let g = grad[j].to_f64();
                    dw[j] += g * xhat;
                    db[j] += g;
                    let gw = g * w[j].to_f64();
                    mean_g += gw;
                    mean_gx += gw * xhat;
                }
                mean_g /= n as f64;
                mean_gx /= n as f64;
                for j in 0..n {
                    let xhat = (row[j].to_f64() - mean) * inv;
                    let gw = grad[j].to_f64() * w[j].to_f64();
                    out[j] = T::from_f64((gw - mean_g - xhat * mean_gx) * inv);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut d_weight, mut d_bias) = (vec![0f64; n], vec![0f64; n]);
    for (dw, db) in partials {
        d_weight.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
        d_bias.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    dx.extend(d_weight.into_iter().map(T::from_f64));
    dx.extend(d_bias.into_iter().map(T::from_f64));
    dx
}

fn check(l1: &Layout, l2: &Layout, l3: &Layout) -> Result<usize> {
    let n = *l1.dims().last().unwrap_or(&0);
    if n == 0 || l2.dims() != [n] || l3.dims() != [n] {
        bail!("layer norm over {:?} got weight {:?} and bias {:?}", l1.dims(), l2.dims(), l3.dims())
    }
    Ok(n)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "dmlp-layer-norm"
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
        check(l1, l2, l3)?;
        let y = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(forward(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            contiguous::<T>(s3, l3, self.name())?,
            self.eps
        )));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBackwardOp { eps: self.eps })?;
        let (len, n) = (x.elem_count(), w.elem_count());
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        Ok((Some(dx), Some(packed.narrow(0, len, n)?), Some(packed.narrow(0, len + n, n)?)))
    }
}

/// `(x, weight, dy) → [dx..., dγ..., dβ...]`.
struct LayerNormBackwardOp {
    eps: f64,
}

impl CustomOp3 for LayerNormBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-layer-norm-backward"
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
        let n = check(l1, l2, l2)?;
        if l3.dims() != l1.dims() {
            bail!("layer norm backward: gradient {:?} does not match input {:?}", l3.dims(), l1.dims())
        }
        let out = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(backward(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            contiguous::<T>(s3, l3, self.name())?,
            self.eps
        )));
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * n)))
    }
}
