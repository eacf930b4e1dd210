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
use crate::vecmath::widest;

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

/// Sizes of a channels-last depthwise convolution.
#[derive(Debug, Clone, Copy)]
struct Nhwc {
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    oh: usize,
    ow: usize,
}

impl Depthwise {
    /// `x` is `[B, H, W, C]`, or `[B, H·W, C]` tokens of a map of `size`.
    fn nhwc(&self, x: &[usize], weight: &[usize], size: Option<(usize, usize)>) -> Result<Nhwc> {
        let (batch, h, w, c) = match (x, size) {
            (&[batch, h, w, c], None) => (batch, h, w, c),
            (&[batch, n, c], Some((h, w))) if n == h * w => (batch, h, w, c),
            _ => bail!("channels-last depthwise convolution: input {x:?} is not a map (of {size:?})"),
        };
        let &[wc, one, k, k2] = weight else { bail!("depthwise convolution: weight {weight:?} is not 4-D") };
        let g = self.planes(&[batch, c, h, w], &[wc, one, k, k2])?;
        Ok(Nhwc { batch, h, w, c, k, oh: g.oh, ow: g.ow })
    }

    /// Input row of output row `oy` under tap row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize, h: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.padding).filter(|&iy| iy < h)
    }

    /// `y[b, oy, ox, c] = bias[c] + Σ_taps w[c, tap] · x[b, iy, ix, c]`, one output row per task.
    fn forward_nhwc<T: WithDType + Send + Sync>(&self, g: &Nhwc, x: &[T], taps: &[T], bias: &[T]) -> Vec<T> {
        let mut y = vec![T::from_f64(0.0); g.batch * g.oh * g.ow * g.c];
        y.par_chunks_mut(g.ow * g.c).enumerate().for_each(|(row, out)| forward_row(self, g, row, out, x, taps, bias));
        y
    }

    /// `dx[b, iy, ix, c] = Σ_taps w[c, tap] · dy[b, oy, ox, c]` over the outputs that read it,
    /// one input row per task (gathered, so tasks never write the same row).
    fn input_grad_nhwc<T: WithDType + Send + Sync>(&self, g: &Nhwc, taps: &[T], dy: &[T]) -> Vec<T> {
        let mut dx = vec![T::from_f64(0.0); g.batch * g.h * g.w * g.c];
        dx.par_chunks_mut(g.w * g.c)
            .enumerate()
            .for_each(|(row, grad_in)| input_grad_row(self, g, row, grad_in, taps, dy));
        dx
    }

    /// `(dW as [taps, C], db)`: per-task partial sums over output rows, added together.
    fn param_grads_nhwc<T: WithDType + Send + Sync>(&self, g: &Nhwc, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        let zero = || (vec![T::from_f64(0.0); g.k * g.k * g.c], vec![T::from_f64(0.0); g.c]);
        (0..g.batch * g.oh)
            .into_par_iter()
            .fold(zero, |(mut dw, mut db), row| {
                param_grads_row(self, g, row, x, dy, &mut dw, &mut db);
                (dw, db)
            })
            .reduce(zero, |(mut dw, mut db), (dw2, db2)| {
                dw.iter_mut().zip(dw2).for_each(|(a, b)| *a += b);
                db.iter_mut().zip(db2).for_each(|(a, b)| *a += b);
                (dw, db)
            })
    }
}

// The channels-last passes' rows, a pass per tap along the row with the channels innermost,
// compiled for the CPU's widest vectors (`widest!`): on AVX-512 their share of a PVT-v2-b2 step
// went from 8.3 % to 6.9 % of `perf`'s samples. Taking each pixel's taps together instead (its
// accumulators in L1) was measured slower (8.5 %).

widest! {
    /// Output row `row` (image-major) of [`Depthwise::forward_nhwc`] into `out`.
    fn forward_row<T: WithDType>(d: &Depthwise, g: &Nhwc, row: usize, out: &mut [T], x: &[T], taps: &[T], bias: &[T]) {
        let (s, p, c) = (d.stride, d.padding, g.c);
        let (b, oy) = (row / g.oh, row % g.oh);
        for px in out.chunks_mut(c) {
            px.copy_from_slice(bias);
        }
        for ky in 0..g.k {
            let Some(iy) = d.input_row(oy, ky, g.h) else { continue };
            let input = &x[(b * g.h + iy) * g.w * c..][..g.w * c];
            for kx in 0..g.k {
                let tap = &taps[(ky * g.k + kx) * c..][..c];
                for ox in d.columns(kx, g.w, g.ow) {
                    let src = &input[(ox * s + kx - p) * c..][..c];
                    for ((o, &v), &wv) in out[ox * c..][..c].iter_mut().zip(src).zip(tap) {
                        *o += wv * v;
                    }
                }
            }
        }
    }
}

widest! {
    /// Input row `row` (image-major) of [`Depthwise::input_grad_nhwc`] into `grad_in`.
    fn input_grad_row<T: WithDType>(d: &Depthwise, g: &Nhwc, row: usize, grad_in: &mut [T], taps: &[T], dy: &[T]) {
        let (s, p, c) = (d.stride, d.padding, g.c);
        let (b, iy) = (row / g.h, row % g.h);
        for ky in 0..g.k {
            // oy·s + ky − p = iy.
            let Some(num) = (iy + p).checked_sub(ky) else { continue };
            if num % s != 0 || num / s >= g.oh {
                continue;
            }
            let grad_out = &dy[(b * g.oh + num / s) * g.ow * c..][..g.ow * c];
            for kx in 0..g.k {
                let tap = &taps[(ky * g.k + kx) * c..][..c];
                for ox in d.columns(kx, g.w, g.ow) {
                    let dst = &mut grad_in[(ox * s + kx - p) * c..][..c];
                    for ((dv, &gv), &wv) in dst.iter_mut().zip(&grad_out[ox * c..][..c]).zip(tap) {
                        *dv += wv * gv;
                    }
                }
            }
        }
    }
}

widest! {
    /// Output row `row`'s share of [`Depthwise::param_grads_nhwc`], added into `dw` (`[taps, C]`)
    /// and `db`.
    fn param_grads_row<T: WithDType>(d: &Depthwise, g: &Nhwc, row: usize, x: &[T], dy: &[T], dw: &mut [T], db: &mut [T]) {
        let (s, p, c) = (d.stride, d.padding, g.c);
        let (b, oy) = (row / g.oh, row % g.oh);
        let grad_out = &dy[row * g.ow * c..][..g.ow * c];
        for px in grad_out.chunks(c) {
            for (acc, &gv) in db.iter_mut().zip(px) {
                *acc += gv;
            }
        }
        for ky in 0..g.k {
            let Some(iy) = d.input_row(oy, ky, g.h) else { continue };
            let input = &x[(b * g.h + iy) * g.w * c..][..g.w * c];
            for kx in 0..g.k {
                let acc = &mut dw[(ky * g.k + kx) * c..][..c];
                for ox in d.columns(kx, g.w, g.ow) {
                    let src = &input[(ox * s + kx - p) * c..][..c];
                    for ((a, &gv), &v) in acc.iter_mut().zip(&grad_out[ox * c..][..c]).zip(src) {
                        *a += gv * v;
                    }
                }
            }
        }
    }
}

/// `[C, 1, k, k]` weights as `[k·k, C]` (a tap's weights for every channel contiguous), and back.
fn taps_last<T: WithDType>(weight: &[T], c: usize, k2: usize) -> Vec<T> {
    (0..k2 * c).map(|i| weight[(i % c) * k2 + i / c]).collect()
}

fn taps_first<T: WithDType>(taps: &[T], c: usize, k2: usize) -> Vec<T> {
    (0..c * k2).map(|i| taps[(i % k2) * c + i / k2]).collect()
}

/// `(x [B, H, W, C], weight [C, 1, k, k], bias [C]) → [B, OH, OW, C]`; with a map size, tokens
/// `[B, H·W, C]` → `[B, OH·OW, C]`.
pub(crate) struct DepthwiseNhwcOp(pub(crate) Depthwise, pub(crate) Option<(usize, usize)>);
/// `(weight, dy) → dx` with the input's dims (and map size).
struct DepthwiseNhwcInputGradOp(Depthwise, Vec<usize>, Option<(usize, usize)>);

impl Nhwc {
    /// The output's shape in the input's form (a map, or tokens).
    fn output_shape(&self, tokens: bool) -> Shape {
        if tokens {
            Shape::from((self.batch, self.oh * self.ow, self.c))
        } else {
            Shape::from((self.batch, self.oh, self.ow, self.c))
        }
    }
}

impl candle_core::CustomOp3 for DepthwiseNhwcOp {
    fn name(&self) -> &'static str {
        "dmlp-depthwise-conv2d-nhwc"
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
        let g = self.0.nhwc(l1.dims(), l2.dims(), self.1)?;
        if l3.dims() != [g.c] {
            bail!("depthwise convolution: bias {:?} for {} channels", l3.dims(), g.c)
        }
        let y = dispatch_float!(s1, self.name(), |T| {
            let taps = taps_last(contiguous::<T>(s2, l2, self.name())?, g.c, g.k * g.k);
            T::to_cpu_storage_owned(self.0.forward_nhwc(
                &g,
                contiguous::<T>(s1, l1, self.name())?,
                &taps,
                contiguous::<T>(s3, l3, self.name())?,
            ))
        });
        Ok((y, g.output_shape(self.1.is_some())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = weight.apply_op2_no_bwd(&grad, &DepthwiseNhwcInputGradOp(self.0, x.dims().to_vec(), self.1))?;
        let g = self.0.nhwc(x.dims(), weight.dims(), self.1)?;
        macro_rules! typed {
            ($t:ty) => {
                crate::cpu::with_cpu_slice::<$t, _>(x, |xs| {
                    crate::cpu::with_cpu_slice::<$t, _>(&grad, |dy| {
                        let (taps, db) = self.0.param_grads_nhwc(&g, xs, dy);
                        let dw = Tensor::from_vec(taps_first(&taps, g.c, g.k * g.k), weight.shape(), weight.device())?;
                        Ok((dw, Tensor::from_vec(db, bias.shape(), bias.device())?))
                    })
                })?
            };
        }
        let (dw, db) = match x.dtype() {
            candle_core::DType::F32 => typed!(f32),
            candle_core::DType::F64 => typed!(f64),
            other => bail!("depthwise convolution supports f32 and f64 on the CPU, got {other:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for DepthwiseNhwcInputGradOp {
    fn name(&self) -> &'static str {
        "dmlp-depthwise-conv2d-nhwc-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0.nhwc(&self.1, l1.dims(), self.2)?;
        if l2.dims() != g.output_shape(self.2.is_some()).dims() {
            bail!("depthwise convolution backward: gradient {:?} for output {:?}", l2.dims(), (g.oh, g.ow))
        }
        let dx = dispatch_float!(s1, self.name(), |T| {
            let taps = taps_last(contiguous::<T>(s1, l1, self.name())?, g.c, g.k * g.k);
            T::to_cpu_storage_owned(self.0.input_grad_nhwc(&g, &taps, contiguous::<T>(s2, l2, self.name())?))
        });
        Ok((dx, Shape::from(self.1.clone())))
    }
}
