//! Max and average pooling with PyTorch's semantics and a backward for every kernel, stride and
//! padding (candle's own pooling cannot differentiate when the kernel differs from the stride, and
//! scales max-pool gradients wrongly; see `shared/reference/candle-notes.md`).
//!
//! On the CPU these run as custom ops with hand-written forward and backward, on CUDA as the same
//! ops with dmlp's kernels (`crate::cuda_kernels`). On other devices, on CUDA with the kernels off
//! and on the CPU inside [`crate::with_generic_ops`], they run `forward_generic`: the input padded,
//! each window offset taken with `index_select`, the max picked by `argmax` + `gather` (so the
//! gradient goes to the first maximum of each window, as PyTorch routes it) and the mean divided
//! by each window's count; every primitive has a CUDA kernel and a backward, so no pooling
//! backward of candle's is used.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor, WithDType, bail};

use crate::cpu::{contiguous, dispatch_float};

/// `nn.MaxPool2d(kernel, stride, padding, ceil_mode=…)` with square windows and no dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub ceil_mode: bool,
}

/// `nn.AvgPool2d(kernel, stride, padding, ceil_mode=…, count_include_pad=…)`, square windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub ceil_mode: bool,
    pub count_include_pad: bool,
}

/// The window geometry shared by both pools.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
}

impl Geometry {
    fn check(&self, in_h: usize, in_w: usize) -> Result<(usize, usize)> {
        if self.kernel == 0 || self.stride == 0 {
            bail!("pooling needs a positive kernel and stride, got kernel {} stride {}", self.kernel, self.stride)
        }
        if 2 * self.padding > self.kernel {
            bail!("pooling padding {} exceeds half the kernel {}", self.padding, self.kernel)
        }
        Ok((self.out_len(in_h)?, self.out_len(in_w)?))
    }

    /// PyTorch's `pooling_output_shape` (dilation 1).
    fn out_len(&self, len: usize) -> Result<usize> {
        let padded = len + 2 * self.padding;
        if padded < self.kernel {
            bail!("pooling kernel {} is larger than the padded input {padded}", self.kernel)
        }
        let span = padded - self.kernel;
        let mut out = if self.ceil_mode { span.div_ceil(self.stride) + 1 } else { span / self.stride + 1 };
        // The last window must start inside the input or the left padding.
        if self.ceil_mode && (out - 1) * self.stride >= len + self.padding {
            out -= 1;
        }
        Ok(out)
    }

    /// The geometry as dmlp's CUDA kernels take it.
    #[cfg(feature = "cuda")]
    fn cuda(&self, input: (usize, usize), output: (usize, usize)) -> Result<crate::cuda_kernels::Pool> {
        crate::cuda_kernels::Pool::new(input, output, self.kernel, self.stride, self.padding)
    }

    /// Rows (or columns) of output `o`'s window: `(start, end)` clipped to the input, and the
    /// window's length clipped only to the padded input (PyTorch's `pool_size`).
    fn window(&self, o: usize, len: usize) -> (usize, usize, usize) {
        let start = (o * self.stride) as isize - self.padding as isize;
        let end_padded = (start + self.kernel as isize).min((len + self.padding) as isize);
        let padded_len = (end_padded - start) as usize;
        let lo = start.max(0) as usize;
        let hi = (end_padded.min(len as isize)).max(0) as usize;
        (lo, hi, padded_len)
    }
}

fn dims4(layout: &Layout) -> Result<(usize, usize, usize, usize)> {
    layout.shape().dims4()
}

fn is_nan<T: WithDType>(v: T) -> bool {
    #[allow(clippy::eq_op)]
    let nan = v != v;
    nan
}

/// Index of the max of one window, as PyTorch picks it: the first maximum in row-major order, a
/// NaN wins.
fn argmax<T: WithDType>(plane: &[T], width: usize, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> usize {
    let mut best_idx = y0 * width + x0;
    let mut best = plane[best_idx];
    for y in y0..y1 {
        for x in x0..x1 {
            let v = plane[y * width + x];
            if v > best || is_nan(v) {
                best = v;
                best_idx = y * width + x;
                if is_nan(v) {
                    return best_idx;
                }
            }
        }
    }
    best_idx
}

impl Geometry {
    fn max_forward<T: WithDType>(&self, xs: &[T], (b, c, h, w): (usize, usize, usize, usize)) -> Result<Vec<T>> {
        let (oh, ow) = self.check(h, w)?;
        let mut out = Vec::with_capacity(b * c * oh * ow);
        for plane in xs.chunks_exact(h * w) {
            for oy in 0..oh {
                let (y0, y1, _) = self.window(oy, h);
                for ox in 0..ow {
                    let (x0, x1, _) = self.window(ox, w);
                    out.push(plane[argmax(plane, w, (y0, y1), (x0, x1))]);
                }
            }
        }
        Ok(out)
    }

    fn max_backward<T: WithDType>(&self, xs: &[T], grads: &[T], (h, w): (usize, usize)) -> Result<Vec<T>> {
        let (oh, ow) = self.check(h, w)?;
        let mut grad_in = vec![T::zero(); xs.len()];
        for ((plane, grad_plane), grad_out) in
            xs.chunks_exact(h * w).zip(grad_in.chunks_exact_mut(h * w)).zip(grads.chunks_exact(oh * ow))
        {
            for oy in 0..oh {
                let (y0, y1, _) = self.window(oy, h);
                for ox in 0..ow {
                    let (x0, x1, _) = self.window(ox, w);
                    grad_plane[argmax(plane, w, (y0, y1), (x0, x1))] += grad_out[oy * ow + ox];
                }
            }
        }
        Ok(grad_in)
    }

    fn divisor(
        &self,
        count_include_pad: bool,
        (y0, y1, ph): (usize, usize, usize),
        (x0, x1, pw): (usize, usize, usize),
    ) -> f64 {
        if count_include_pad { (ph * pw) as f64 } else { ((y1 - y0) * (x1 - x0)) as f64 }
    }

    fn avg_forward<T: WithDType>(
        &self,
        xs: &[T],
        (b, c, h, w): (usize, usize, usize, usize),
        count_include_pad: bool,
    ) -> Result<Vec<T>> {
        let (oh, ow) = self.check(h, w)?;
        let mut out = Vec::with_capacity(b * c * oh * ow);
        for plane in xs.chunks_exact(h * w) {
            for oy in 0..oh {
                let rows = self.window(oy, h);
                for ox in 0..ow {
                    let cols = self.window(ox, w);
                    let mut sum = T::zero();
                    for y in rows.0..rows.1 {
                        for x in cols.0..cols.1 {
                            sum += plane[y * w + x];
                        }
                    }
                    out.push(sum / T::from_f64(self.divisor(count_include_pad, rows, cols)));
                }
            }
        }
        Ok(out)
    }

    fn avg_backward<T: WithDType>(
        &self,
        grads: &[T],
        (b, c, h, w): (usize, usize, usize, usize),
        count_include_pad: bool,
    ) -> Result<Vec<T>> {
        let (oh, ow) = self.check(h, w)?;
        let mut grad_in = vec![T::zero(); b * c * h * w];
        for (grad_plane, grad_out) in grad_in.chunks_exact_mut(h * w).zip(grads.chunks_exact(oh * ow)) {
            for oy in 0..oh {
                let rows = self.window(oy, h);
                for ox in 0..ow {
                    let cols = self.window(ox, w);
                    let g = grad_out[oy * ow + ox] / T::from_f64(self.divisor(count_include_pad, rows, cols));
                    for y in rows.0..rows.1 {
                        for x in cols.0..cols.1 {
                            grad_plane[y * w + x] += g;
                        }
                    }
                }
            }
        }
        Ok(grad_in)
    }
}

struct MaxPoolOp(Geometry);
struct MaxPoolBackwardOp(Geometry);
struct AvgPoolOp(Geometry, bool);
struct AvgPoolBackwardOp {
    geometry: Geometry,
    count_include_pad: bool,
    in_h: usize,
    in_w: usize,
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "dmlp-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = dims4(layout)?;
        let (oh, ow) = self.0.check(h, w)?;
        let out = dispatch_float!(storage, self.name(), |T| T::to_cpu_storage_owned(
            self.0.max_forward(contiguous::<T>(storage, layout, self.name())?, (b, c, h, w))?
        ));
        Ok((out, Shape::from((b, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w) = dims4(layout)?;
        let (oh, ow) = self.0.check(h, w)?;
        let pool = self.0.cuda((h, w), (oh, ow))?;
        Ok((crate::cuda_kernels::max_pool_forward(storage, layout, b * c, pool)?, Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolBackwardOp(self.0))?))
    }
}

impl CustomOp2 for MaxPoolBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-max-pool2d-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, _, h, w) = dims4(l1)?;
        let out = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(self.0.max_backward(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            (h, w)
        )?));
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w) = dims4(l1)?;
        let (oh, ow) = self.0.check(h, w)?;
        if l2.dims() != [b, c, oh, ow] {
            bail!("max pool backward: gradient {:?} for an output of {:?}", l2.dims(), [b, c, oh, ow])
        }
        let pool = self.0.cuda((h, w), (oh, ow))?;
        Ok((crate::cuda_kernels::max_pool_backward(s1, l1, s2, l2, b * c, pool)?, l1.shape().clone()))
    }
}

impl CustomOp1 for AvgPoolOp {
    fn name(&self) -> &'static str {
        "dmlp-avg-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = dims4(layout)?;
        let (oh, ow) = self.0.check(h, w)?;
        let out = dispatch_float!(storage, self.name(), |T| T::to_cpu_storage_owned(self.0.avg_forward(
            contiguous::<T>(storage, layout, self.name())?,
            (b, c, h, w),
            self.1
        )?));
        Ok((out, Shape::from((b, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w) = dims4(layout)?;
        let (oh, ow) = self.0.check(h, w)?;
        let pool = self.0.cuda((h, w), (oh, ow))?;
        let out = crate::cuda_kernels::avg_pool_forward(storage, layout, b * c, pool, self.1)?;
        Ok((out, Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, in_h, in_w) = arg.dims4()?;
        let op = AvgPoolBackwardOp { geometry: self.0, count_include_pad: self.1, in_h, in_w };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for AvgPoolBackwardOp {
    fn name(&self) -> &'static str {
        "dmlp-avg-pool2d-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = dims4(layout)?;
        let dims = (b, c, self.in_h, self.in_w);
        let out = dispatch_float!(storage, self.name(), |T| T::to_cpu_storage_owned(self.geometry.avg_backward(
            contiguous::<T>(storage, layout, self.name())?,
            dims,
            self.count_include_pad
        )?));
        Ok((out, Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, oh, ow) = dims4(layout)?;
        if self.geometry.check(self.in_h, self.in_w)? != (oh, ow) {
            bail!("avg pool backward: gradient {:?} for an input of {}×{}", layout.dims(), self.in_h, self.in_w)
        }
        let pool = self.geometry.cuda((self.in_h, self.in_w), (oh, ow))?;
        let out = crate::cuda_kernels::avg_pool_backward(storage, layout, b * c, pool, self.count_include_pad)?;
        Ok((out, Shape::from((b, c, self.in_h, self.in_w))))
    }
}

/// Applies a CPU op in f32 or f64; half precision goes through f32 and back.
fn apply_cpu(xs: &Tensor, op: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match xs.dtype() {
        DType::F32 | DType::F64 => op(&xs.contiguous()?),
        dtype => op(&xs.to_dtype(DType::F32)?.contiguous()?)?.to_dtype(dtype),
    }
}

impl MaxPool2d {
    fn geometry(&self) -> Geometry {
        Geometry { kernel: self.kernel, stride: self.stride, padding: self.padding, ceil_mode: self.ceil_mode }
    }

    /// # Shapes
    /// `xs: [B, C, H, W]` → `[B, C, H', W']`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let geometry = self.geometry();
        if crate::cpu::custom_cpu_ops(xs.device()) {
            return apply_cpu(xs, |xs| xs.apply_op1(MaxPoolOp(geometry)));
        }
        if crate::custom_cuda_ops(xs) {
            return xs.contiguous()?.apply_op1(MaxPoolOp(geometry));
        }
        self.forward_generic(xs)
    }

    /// Any device: the windows of the −∞-padded input side by side, the first maximum of each
    /// gathered (a NaN does not win here, unlike PyTorch; training stops on a NaN loss anyway).
    fn forward_generic(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let geometry = self.geometry();
        geometry.check(h, w)?;
        let padded = pad_for(geometry, xs, h, w, f64::NEG_INFINITY)?;
        let windows = Tensor::stack(&window_offsets(geometry, &padded, h, w)?, 4)?; // [B, C, H', W', k²]
        let first_max = windows.argmax_keepdim(4)?;
        windows.gather(&first_max, 4)?.squeeze(4)
    }
}

impl AvgPool2d {
    fn geometry(&self) -> Geometry {
        Geometry { kernel: self.kernel, stride: self.stride, padding: self.padding, ceil_mode: self.ceil_mode }
    }

    /// # Shapes
    /// `xs: [B, C, H, W]` → `[B, C, H', W']`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let geometry = self.geometry();
        if crate::cpu::custom_cpu_ops(xs.device()) {
            return apply_cpu(xs, |xs| xs.apply_op1(AvgPoolOp(geometry, self.count_include_pad)));
        }
        if crate::custom_cuda_ops(xs) {
            return xs.contiguous()?.apply_op1(AvgPoolOp(geometry, self.count_include_pad));
        }
        self.forward_generic(xs)
    }

    /// Any device: the sum of the window offsets of the zero-padded input, divided by each
    /// window's count (PyTorch's divisor: the padded window, or only the input's positions).
    fn forward_generic(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let geometry = self.geometry();
        let (oh, ow) = geometry.check(h, w)?;
        let padded = pad_for(geometry, xs, h, w, 0.0)?;
        let mut sum: Option<Tensor> = None;
        for offset in window_offsets(geometry, &padded, h, w)? {
            sum = Some(match sum {
                Some(sum) => (sum + offset)?,
                None => offset,
            });
        }
        let Some(sum) = sum else { candle_core::bail!("avg pool with an empty kernel") };
        let mut divisors = Vec::with_capacity(oh * ow);
        for oy in 0..oh {
            for ox in 0..ow {
                let (rows, cols) = (geometry.window(oy, h), geometry.window(ox, w));
                divisors.push(geometry.divisor(self.count_include_pad, rows, cols));
            }
        }
        let divisors = Tensor::from_vec(divisors, (1, 1, oh, ow), xs.device())?.to_dtype(xs.dtype())?;
        sum.broadcast_div(&divisors)
    }
}

/// For each offset `(ky, kx)` of the window, row-major, the `[B, C, H', W']` tensor of the padded
/// input's values at that offset of every window (`padded` from [`pad_for`]).
fn window_offsets(geometry: Geometry, padded: &Tensor, h: usize, w: usize) -> Result<Vec<Tensor>> {
    let (oh, ow) = geometry.check(h, w)?;
    let device = padded.device();
    let starts = |out: usize, offset: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..out).map(|o| (o * geometry.stride + offset) as u32).collect();
        Tensor::from_vec(idx, out, device)
    };
    let mut offsets = Vec::with_capacity(geometry.kernel * geometry.kernel);
    for ky in 0..geometry.kernel {
        let rows = padded.index_select(&starts(oh, ky)?, 2)?;
        for kx in 0..geometry.kernel {
            offsets.push(rows.index_select(&starts(ow, kx)?, 3)?);
        }
    }
    Ok(offsets)
}

/// Rows (or columns) beyond the padded input that `ceil_mode`'s last window reaches.
fn ceil_extra(geometry: Geometry, len: usize) -> Result<usize> {
    let out = geometry.out_len(len)?;
    let reach = (out - 1) * geometry.stride + geometry.kernel;
    Ok(reach.saturating_sub(len + 2 * geometry.padding))
}

/// Pads the unpadded `xs` (`h × w`) by the geometry's padding on every side, plus on the bottom
/// and right what `ceil_mode`'s last window reaches, with `value`.
fn pad_for(geometry: Geometry, xs: &Tensor, h: usize, w: usize, value: f64) -> Result<Tensor> {
    let p = geometry.padding;
    pad_sides(xs, (p, p + ceil_extra(geometry, h)?), (p, p + ceil_extra(geometry, w)?), value)
}

fn pad_sides(xs: &Tensor, (top, bottom): (usize, usize), (left, right): (usize, usize), value: f64) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let full = |rows, cols| Tensor::full(value, (b, c, rows, cols), xs.device())?.to_dtype(xs.dtype());
    let mut parts = Vec::new();
    if top > 0 {
        parts.push(full(top, w)?);
    }
    parts.push(xs.clone());
    if bottom > 0 {
        parts.push(full(bottom, w)?);
    }
    let xs = Tensor::cat(&parts, 2)?;
    let rows = top + h + bottom;
    let mut parts = Vec::new();
    if left > 0 {
        parts.push(full(rows, left)?);
    }
    parts.push(xs);
    if right > 0 {
        parts.push(full(rows, right)?);
    }
    Tensor::cat(&parts, 3)
}

/// `AdaptiveAvgPool2d(1)` then flatten.
///
/// # Shapes
/// `xs: [B, C, H, W]` → `[B, C]`.
pub fn global_avg_pool(xs: &Tensor) -> Result<Tensor> {
    // Half precision sums 49 (or 144) values badly: average in f32 and round back.
    xs.to_dtype(crate::accumulation_dtype(xs))?.mean(D::Minus1)?.mean(D::Minus1)?.to_dtype(xs.dtype())
}

/// `nn.AdaptiveAvgPool2d((out_h, out_w))`: output cell `i` averages input rows
/// `⌊i·H/out_h⌋ .. ⌈(i+1)·H/out_h⌉` (PyTorch's windows, which overlap when `H` is not a multiple),
/// likewise columns. Computed as two products with fixed averaging matrices, so it differentiates
/// and runs on any device.
///
/// # Shapes
/// `xs: [B, C, H, W]` → `[B, C, out_h, out_w]`.
pub fn adaptive_avg_pool2d(xs: &Tensor, (out_h, out_w): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        candle_core::bail!("adaptive average pool of {h}×{w} to {out_h}×{out_w}: sizes must be positive")
    }
    let compute = crate::accumulation_dtype(xs);
    let averaging = |len: usize, out: usize| -> Result<Tensor> {
        // [len, out]: column i holds 1/count over its window.
        let mut m = vec![0f32; len * out];
        for i in 0..out {
            let (start, end) = (i * len / out, ((i + 1) * len).div_ceil(out));
            for row in start..end {
                m[row * out + i] = 1.0 / (end - start) as f32;
            }
        }
        Tensor::from_vec(m, (len, out), xs.device())?.to_dtype(compute)
    };
    let dtype = xs.dtype();
    // [B, C, H, W] · [W, out_w] → [B, C, H, out_w]; transposed, · [H, out_h] → [B, C, out_w, out_h].
    let cols = rows_times(&xs.to_dtype(compute)?, &averaging(w, out_w)?)?;
    let rows = rows_times(&cols.transpose(2, 3)?, &averaging(h, out_h)?)?;
    rows.transpose(2, 3)?.contiguous()?.to_dtype(dtype)
}

/// `xs · m` over the last dimension, as one 2-D product of contiguous rows: cuBLAS (candle's
/// CUDA matmul) refuses batched operands whose strides are not a plain batch of matrices, such
/// as a position embedding permuted to `[B, C, H, W]`.
///
/// # Shapes
/// `xs: [..., n]`, `m: [n, k]` → `[..., k]`.
fn rows_times(xs: &Tensor, m: &Tensor) -> Result<Tensor> {
    let dims = xs.dims();
    let n = dims[dims.len() - 1];
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank ≥ 1") = m.dim(1)?;
    xs.contiguous()?.reshape((xs.elem_count() / n.max(1), n))?.matmul(m)?.reshape(out_dims)
}

/// PyTorch's linear interpolation weights (`align_corners=False`) from `len` samples to `out`, as a
/// `[len, out]` matrix: output `i` reads source position `max((i + ½)·len/out − ½, 0)`, split
/// between its two neighbours.
fn linear_resize_matrix(len: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; len * out];
    let scale = len as f64 / out as f64;
    for i in 0..out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let lo = (src.floor() as usize).min(len - 1);
        let hi = (lo + 1).min(len - 1);
        let frac = (src - lo as f64) as f32;
        m[lo * out + i] += 1.0 - frac;
        m[hi * out + i] += frac;
    }
    m
}

/// `F.interpolate(xs, size, mode="bilinear", align_corners=False)` (no antialiasing), as two
/// products with fixed interpolation matrices, so it differentiates on any device.
///
/// # Shapes
/// `xs: [B, C, H, W]` → `[B, C, out_h, out_w]`.
pub fn resize_bilinear(xs: &Tensor, (out_h, out_w): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        candle_core::bail!("bilinear resize of {h}×{w} to {out_h}×{out_w}: sizes must be positive")
    }
    if (h, w) == (out_h, out_w) {
        return Ok(xs.clone());
    }
    let compute = crate::accumulation_dtype(xs);
    let matrix =
        |len, out| Tensor::from_vec(linear_resize_matrix(len, out), (len, out), xs.device())?.to_dtype(compute);
    let dtype = xs.dtype();
    let cols = rows_times(&xs.to_dtype(compute)?, &matrix(w, out_w)?)?;
    let rows = rows_times(&cols.transpose(2, 3)?, &matrix(h, out_h)?)?;
    rows.transpose(2, 3)?.contiguous()?.to_dtype(dtype)
}

/// `F.interpolate(table.T[None], out, mode="linear", align_corners=False)`: each column of a
/// `[len, d]` table resized to `out` rows (a relative position table for another map size).
///
/// # Shapes
/// `table: [len, d]` → `[out, d]`.
pub fn resize_linear_rows(table: &Tensor, out: usize) -> Result<Tensor> {
    let (len, _) = table.dims2()?;
    if len == out {
        return Ok(table.clone());
    }
    let m = Tensor::from_vec(linear_resize_matrix(len, out), (len, out), table.device())?.to_dtype(table.dtype())?;
    m.t()?.matmul(table)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(data: &[f64], shape: (usize, usize, usize, usize)) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn output_sizes_follow_pytorch() {
        let g = |k, s, p, ceil| Geometry { kernel: k, stride: s, padding: p, ceil_mode: ceil };
        assert_eq!(g(3, 2, 1, false).out_len(112).unwrap(), 56);
        assert_eq!(g(3, 2, 1, false).out_len(7).unwrap(), 4);
        assert_eq!(g(2, 2, 0, true).out_len(7).unwrap(), 4);
        assert_eq!(g(2, 2, 0, false).out_len(7).unwrap(), 3);
        // ceil_mode never starts a window in the right padding.
        assert_eq!(g(3, 2, 1, true).out_len(6).unwrap(), 4);
        assert_eq!(g(2, 2, 1, true).out_len(5).unwrap(), 3);
        assert!(g(3, 2, 2, false).check(5, 5).is_err());
    }

    #[test]
    fn max_pool_forward_and_tie_routed_gradient() {
        // 1x1x3x3 with ties: the first maximum in row-major order gets the gradient, weight 1.
        let xs = t(&[1., 5., 5., 0., 5., 2., 3., 4., 1.], (1, 1, 3, 3));
        let pool = MaxPool2d { kernel: 2, stride: 1, padding: 0, ceil_mode: false };
        let var = candle_core::Var::from_tensor(&xs).unwrap();
        let ys = pool.forward(var.as_tensor()).unwrap();
        assert_eq!(ys.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![5., 5., 5., 5.]);
        let grads = ys.sum_all().unwrap().backward().unwrap();
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // Windows: [1 5; 0 5], [5 5; 5 2], [0 5; 3 4], [5 2; 4 1]: the first max of each.
        assert_eq!(g, vec![0., 2., 0., 0., 2., 0., 0., 0., 0.]);
    }

    #[test]
    fn avg_pool_ceil_mode_excludes_padding_and_overhang() {
        // 1x1x3x3, kernel 2 stride 2 ceil_mode: windows of 4, 2, 2 and 1 values.
        let xs = t(&[1., 2., 3., 4., 5., 6., 7., 8., 9.], (1, 1, 3, 3));
        let pool = AvgPool2d { kernel: 2, stride: 2, padding: 0, ceil_mode: true, count_include_pad: false };
        let ys = pool.forward(&xs).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(ys, vec![3.0, 4.5, 7.5, 9.0]);
        // count_include_pad with padding 1, kernel 3, stride 2: corners divide by 9.
        let pool = AvgPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: false, count_include_pad: true };
        let ys = pool.forward(&xs).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(ys, vec![12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]);
    }

    #[test]
    fn generic_path_computes_the_same_forward() {
        let data: Vec<f64> = (0..2 * 3 * 7 * 9).map(|i| ((i * 53 % 17) as f64) - 8.0).collect();
        let xs = t(&data, (2, 3, 7, 9));
        let values = |ys: Tensor| ys.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (1, 1, 0), (3, 3, 0), (2, 2, 1)] {
            for ceil_mode in [false, true] {
                let max = MaxPool2d { kernel, stride, padding, ceil_mode };
                let case = format!("max k{kernel} s{stride} p{padding} ceil {ceil_mode}");
                assert_eq!(values(max.forward(&xs).unwrap()), values(max.forward_generic(&xs).unwrap()), "{case}");
                for count_include_pad in [false, true] {
                    let avg = AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad };
                    let a = values(avg.forward(&xs).unwrap());
                    let b = values(avg.forward_generic(&xs).unwrap());
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(&b) {
                        assert!((x - y).abs() < 1e-12, "avg {case} include_pad {count_include_pad}: {a:?} vs {b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn avg_pool_gradient_matches_finite_differences() {
        let data: Vec<f64> = (0..2 * 5 * 7).map(|i| ((i * 37 % 11) as f64) / 7.0).collect();
        let pool = AvgPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: true, count_include_pad: false };
        let weights: Vec<f64> = (0..2 * 3 * 4).map(|i| (i as f64 * 0.3).sin()).collect();
        let w = t(&weights, (1, 2, 3, 4));
        let loss = |xs: &Tensor| pool.forward(xs).unwrap().mul(&w).unwrap().sum_all().unwrap();
        let var = candle_core::Var::from_tensor(&t(&data, (1, 2, 5, 7))).unwrap();
        let grads = loss(var.as_tensor()).backward().unwrap();
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for idx in 0..data.len() {
            let eps = 1e-6;
            let mut plus = data.clone();
            plus[idx] += eps;
            let mut minus = data.clone();
            minus[idx] -= eps;
            let f = |d: &[f64]| loss(&t(d, (1, 2, 5, 7))).to_scalar::<f64>().unwrap();
            let numeric = (f(&plus) - f(&minus)) / (2.0 * eps);
            assert!((numeric - analytic[idx]).abs() < 1e-6, "{idx}: {numeric} vs {}", analytic[idx]);
        }
    }
}
