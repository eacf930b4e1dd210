//! The device-generic convolution's backward, as two forward convolutions.
//!
//! candle differentiates `conv2d` through `conv_transpose2d`, whose CUDA kernel is a direct loop
//! per output element (no tiling, no tensor cores), while its forward `conv2d` is im2col plus one
//! cuBLAS product. So the generic path computes its forward with candle, detached, and routes the
//! gradients through [`ConvGradients`], whose backward uses only forward convolutions and copies:
//!
//! ```text
//! input grad   dx = conv2d(pad(dilate(dy, s)), flip(W)ᵀ per group, dilation d)
//! weight grad  dW = conv2d(xᵀ, dyᵀ, padding p, stride d, dilation s)ᵀ, cut to k × k, per group
//! ```
//!
//! `dilate` puts `s − 1` zeros between the rows and columns of `dy`; `pad` adds `d(k − 1) − p`
//! on each side (cutting where negative) plus, at the bottom and right, the input rows and
//! columns after the last window (which no window reads: their gradient is zero).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::Conv2dConfig;

/// Routes a detached forward convolution's gradient to its input and weight (see the module
/// docs). Its forward copies the forward's value.
#[derive(Debug, Clone, Copy)]
struct ConvGradients(Conv2dConfig);

fn copy_out<S: BackendStorage>(storage: &S, layout: &Layout) -> Result<(S, Shape)>
where
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: every element is written by the copy below.
    let mut out = unsafe { storage.device().alloc_uninit(layout.shape(), storage.dtype())? };
    storage.copy_strided_src(&mut out, 0, layout)?;
    Ok((out, layout.shape().clone()))
}

impl CustomOp3 for ConvGradients {
    fn name(&self) -> &'static str {
        "conv2d-generic-gradients"
    }

    fn cpu_fwd(
        &self,
        value: &CpuStorage,
        layout: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_out(value, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        value: &candle_core::CudaStorage,
        layout: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        copy_out(value, layout)
    }

    fn bwd(
        &self,
        _: &Tensor,
        xs: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (wants_dx, wants_dw) = (xs.track_op(), weight.track_op());
        let grad = grad.to_dtype(xs.dtype())?;
        let weight = weight.to_dtype(xs.dtype())?;
        // The images entering the first convolution want no gradient: none is computed.
        let dx = wants_dx.then(|| input_gradient(&grad, &weight, xs.dims4()?, self.0)).transpose()?;
        let dw = wants_dw.then(|| weight_gradient(xs, &grad, weight.dims4()?, self.0)).transpose()?;
        Ok((None, dx, dw))
    }
}

/// `value` (the forward, computed detached) carrying the gradients of `xs` and `weight`.
///
/// # Shapes
/// `value: [B, O, H', W']`, `xs: [B, C, H, W]`, `weight: [O, C/g, k, k]` → `value`'s.
pub(crate) fn with_gradients(value: &Tensor, xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> Result<Tensor> {
    value.apply_op3(xs, weight, ConvGradients(config))
}

/// `s − 1` zeros between consecutive entries of `dim` (3 or 4 of a rank-4 tensor).
fn dilate(t: &Tensor, dim: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(t.clone());
    }
    let n = t.dim(dim)?;
    let mut dims = t.dims().to_vec();
    dims.insert(dim + 1, s - 1);
    let zeros = Tensor::zeros(dims.as_slice(), t.dtype(), t.device())?;
    let spread = Tensor::cat(&[&t.unsqueeze(dim + 1)?, &zeros], dim + 1)?;
    let mut merged = t.dims().to_vec();
    merged[dim] = n * s;
    spread.reshape(merged)?.narrow(dim, 0, (n - 1) * s + 1)
}

/// `before` zeros (or, negative, that many entries cut) at the start of `dim`, `after` at the end.
fn pad_or_cut(t: &Tensor, dim: usize, before: isize, after: isize) -> Result<Tensor> {
    let t = t.pad_with_zeros(dim, before.max(0) as usize, after.max(0) as usize)?;
    let (cut_before, cut_after) = ((-before).max(0) as usize, (-after).max(0) as usize);
    if cut_before + cut_after == 0 {
        return Ok(t);
    }
    let len = t.dim(dim)?;
    t.narrow(dim, cut_before, len - cut_before - cut_after)
}

/// The input rows after the last window: `(len + 2p − d(k − 1) − 1) mod s`.
fn remainder(len: usize, k: usize, c: Conv2dConfig) -> usize {
    (len + 2 * c.padding - c.dilation * (k - 1) - 1) % c.stride
}

/// `dx` for `dy: [B, O, H', W']`, `weight: [O, C/g, k, k]`, input `[B, C, H, W]`.
fn input_gradient(
    grad: &Tensor,
    weight: &Tensor,
    (_, channels, h, w): (usize, usize, usize, usize),
    c: Conv2dConfig,
) -> Result<Tensor> {
    let (out, per_group, kh, kw) = weight.dims4()?;
    let g = c.groups;
    // Per group, [O/g, C/g] → [C/g, O/g], kernels flipped.
    let flipped = weight
        .flip(&[2, 3])?
        .reshape((g, out / g, per_group, kh, kw))?
        .transpose(1, 2)?
        .reshape((channels, out / g, kh, kw))?
        .contiguous()?;
    let spread = dilate(&dilate(grad, 2, c.stride)?, 3, c.stride)?;
    let (edge_h, edge_w) =
        ((c.dilation * (kh - 1)) as isize - c.padding as isize, (c.dilation * (kw - 1)) as isize - c.padding as isize);
    let (rem_h, rem_w) = (remainder(h, kh, c) as isize, remainder(w, kw, c) as isize);
    let dx = if edge_h == edge_w && edge_h >= 0 && rem_h == 0 && rem_w == 0 {
        // The padding the convolution takes itself (the common case: stride 1, or no remainder).
        spread.conv2d(&flipped, edge_h as usize, 1, c.dilation, g)?
    } else {
        let padded = pad_or_cut(&pad_or_cut(&spread, 2, edge_h, edge_h + rem_h)?, 3, edge_w, edge_w + rem_w)?;
        padded.conv2d(&flipped, 0, 1, c.dilation, g)?
    };
    debug_assert_eq!(dx.dims4()?, (grad.dim(0)?, channels, h, w));
    Ok(dx)
}

/// `dW: [O, C/g, k, k]` for input `xs: [B, C, H, W]` and `dy: [B, O, H', W']`.
fn weight_gradient(
    xs: &Tensor,
    grad: &Tensor,
    (out, per_group, kh, kw): (usize, usize, usize, usize),
    c: Conv2dConfig,
) -> Result<Tensor> {
    let g = c.groups;
    let one = |x: &Tensor, dy: &Tensor| -> Result<Tensor> {
        // The batch becomes the channels summed over: [C/g, B, H, W] ⋆ [O/g, B, H', W'].
        let dw = x.transpose(0, 1)?.contiguous()?.conv2d(
            &dy.transpose(0, 1)?.contiguous()?,
            c.padding,
            c.dilation,
            c.stride,
            1,
        )?;
        dw.narrow(2, 0, kh)?.narrow(3, 0, kw)?.transpose(0, 1)
    };
    if g == 1 {
        return one(xs, grad)?.contiguous();
    }
    let parts = (0..g)
        .map(|i| one(&xs.narrow(1, i * per_group, per_group)?, &grad.narrow(1, i * (out / g), out / g)?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}
