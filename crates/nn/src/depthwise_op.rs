//! Depthwise convolution (`groups = in = out channels`, one filter per channel) as a CPU op:
//! PVT v2's 3×3 convolution inside every MLP.
//!
//! Through the grouped im2col path a depthwise convolution is one tiny matrix product per
//! channel (a 9-long dot product per pixel, 512 channels at PVT v2's first stage), dominated by
//! the copies around it. Here each channel plane is one pass per kernel tap, the inner loop over
//! a contiguous output row: forward and the input gradient in parallel over (image, channel)
//! planes, the weight gradient in parallel over channels.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous, dispatch_float};

/// Geometry of one depthwise convolution (square kernel, no dilation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Depthwise {
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

#[derive(Debug, Clone, Copy)]
struct Planes {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
}

impl Depthwise {
    fn planes(&self, x: &[usize], weight: &[usize]) -> Result<Planes> {
        let (&[batch, channels, h, w], &[wc, one, k, k2]) = (x, weight) else {
            bail!("depthwise convolution: input {x:?} and weight {weight:?} are not 4-D")
        };
        if wc != channels || one != 1 || k != k2 || k == 0 || self.stride == 0 {
            bail!("depthwise convolution: weight {weight:?} does not fit input {x:?} (stride {})", self.stride)
        }
        let (ph, pw) = (h + 2 * self.padding, w + 2 * self.padding);
        if ph < k || pw < k {
            bail!("depthwise convolution: a {k}×{k} kernel does not fit {h}×{w} padded by {}", self.padding)
        }
        Ok(Planes { batch, channels, h, w, k, oh: (ph - k) / self.stride + 1, ow: (pw - k) / self.stride + 1 })
    }

    /// Output columns `ox` whose input column `ox·s + kx − p` lies inside `[0, w)`.
    fn columns(&self, kx: usize, w: usize, ow: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride, self.padding);
        let lo = p.saturating_sub(kx).div_ceil(s);
        let hi = if w + p > kx { ((w + p - kx - 1) / s + 1).min(ow) } else { 0 };
        lo..hi.max(lo)
    }

    /// Calls `f(oy, iy, ky, kx, columns)` for every output row, tap and valid column range.
    fn for_each_tap(&self, g: &Planes, mut f: impl FnMut(usize, usize, usize, usize, std::ops::Range<usize>)) {
        let (s, p) = (self.stride, self.padding);
        for oy in 0..g.oh {
            for ky in 0..g.k {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < g.h) else { continue };
                for kx in 0..g.k {
                    f(oy, iy, ky, kx, self.columns(kx, g.w, g.ow));
                }
            }
        }
    }

    fn forward<T: WithDType + Send + Sync>(&self, g: &Planes, x: &[T], weight: &[T]) -> Vec<T> {
        let (s, p) = (self.stride, self.padding);
        let mut y = vec![T::from_f64(0.0); g.batch * g.channels * g.oh * g.ow];
        y.par_chunks_mut(g.oh * g.ow).enumerate().for_each(|(plane, out)| {
            let c = plane % g.channels;
            let input = &x[plane * g.h * g.w..][..g.h * g.w];
            let taps = &weight[c * g.k * g.k..][..g.k * g.k];
            self.for_each_tap(g, |oy, iy, ky, kx, cols| {
                let wv = taps[ky * g.k + kx];
                let row = &input[iy * g.w..][..g.w];
                let out_row = &mut out[oy * g.ow..][..g.ow];
                for ox in cols {
                    out_row[ox] += wv * row[ox * s + kx - p];
                }
            });
        });
        y
    }

    fn input_grad<T: WithDType + Send + Sync>(&self, g: &Planes, weight: &[T], dy: &[T]) -> Vec<T> {
        let (s, p) = (self.stride, self.padding);
        let mut dx = vec![T::from_f64(0.0); g.batch * g.channels * g.h * g.w];
        dx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(plane, grad_in)| {
            let c = plane % g.channels;
            let grad_out = &dy[plane * g.oh * g.ow..][..g.oh * g.ow];
            let taps = &weight[c * g.k * g.k..][..g.k * g.k];
            self.for_each_tap(g, |oy, iy, ky, kx, cols| {
                let wv = taps[ky * g.k + kx];
                let out_row = &grad_out[oy * g.ow..][..g.ow];
                let row = &mut grad_in[iy * g.w..][..g.w];
                for ox in cols {
                    row[ox * s + kx - p] += wv * out_row[ox];
                }
            });
        });
        dx
    }

    fn weight_grad<T: WithDType + Send + Sync>(&self, g: &Planes, x: &[T], dy: &[T]) -> Vec<T> {
        let (s, p) = (self.stride, self.padding);
        let mut dw = vec![T::from_f64(0.0); g.channels * g.k * g.k];
        dw.par_chunks_mut(g.k * g.k).enumerate().for_each(|(c, taps)| {
            for b in 0..g.batch {
                let plane = b * g.channels + c;
                let input = &x[plane * g.h * g.w..][..g.h * g.w];
                let grad_out = &dy[plane * g.oh * g.ow..][..g.oh * g.ow];
                self.for_each_tap(g, |oy, iy, ky, kx, cols| {
                    let row = &input[iy * g.w..][..g.w];
                    let out_row = &grad_out[oy * g.ow..][..g.ow];
                    let mut acc = T::from_f64(0.0);
                    for ox in cols {
                        acc += out_row[ox] * row[ox * s + kx - p];
                    }
                    taps[ky * g.k + kx] += acc;
                });
            }
        });
        dw
    }
}

/// `(x, weight) → y`.
pub(crate) struct DepthwiseOp(pub(crate) Depthwise);
/// `(weight, dy) → dx`, with the input's dims.
struct DepthwiseInputGradOp(Depthwise, [usize; 4]);
/// `(x, dy) → dw`, with the weight's dims.
struct DepthwiseWeightGradOp(Depthwise, [usize; 4]);

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "dmlp-depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0.planes(l1.dims(), l2.dims())?;
        let y = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(self.0.forward(
            &g,
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((y, Shape::from((g.batch, g.channels, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = weight.apply_op2_no_bwd(&grad, &DepthwiseInputGradOp(self.0, dims4(x)?))?;
        let dw = x.apply_op2_no_bwd(&grad, &DepthwiseWeightGradOp(self.0, dims4(weight)?))?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for DepthwiseInputGradOp {
    fn name(&self) -> &'static str {
        "dmlp-depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0.planes(&self.1, l1.dims())?;
        if l2.dims() != [g.batch, g.channels, g.oh, g.ow] {
            bail!("depthwise convolution backward: gradient {:?} for output {:?}", l2.dims(), (g.oh, g.ow))
        }
        let dx = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(self.0.input_grad(
            &g,
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((dx, Shape::from(self.1.to_vec())))
    }
}

impl CustomOp2 for DepthwiseWeightGradOp {
    fn name(&self) -> &'static str {
        "dmlp-depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0.planes(l1.dims(), &self.1)?;
        if l2.dims() != [g.batch, g.channels, g.oh, g.ow] {
            bail!("depthwise convolution backward: gradient {:?} for output {:?}", l2.dims(), (g.oh, g.ow))
        }
        let dw = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(self.0.weight_grad(
            &g,
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((dw, Shape::from(self.1.to_vec())))
    }
}
