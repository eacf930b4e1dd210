//! 2-D convolution.

use candle_core::{DType, Module, Result, Tensor};

use crate::conv_op::Conv2dOp;
use crate::depthwise_op::{Depthwise, DepthwiseOp};
use candle_nn::{Init, VarBuilder};

/// Hyper-parameters of a convolution, as `nn.Conv2d` takes them (square kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Conv2dConfig {
    /// Stride `stride`, padding `padding`, no dilation, one group.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self { stride, padding, dilation: 1, groups: 1 }
    }
}

/// `nn.Conv2d`: weight `[out, in/groups, k, k]` (key `weight`), optional bias `[out]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

/// A convolution under `vb`. `init` is the weight initialisation (PyTorch's default is
/// [`crate::init::pytorch_default`] of `in/groups · k · k`; the bias, if any, always uses it).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    bias: bool,
    init: Init,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get_with_hints((out_channels, in_channels / config.groups, kernel, kernel), "weight", init)?;
    let fan_in = in_channels / config.groups * kernel * kernel;
    let bias =
        if bias { Some(vb.get_with_hints(out_channels, "bias", crate::init::pytorch_default(fan_in))?) } else { None };
    Ok(Conv2d { weight, bias, config })
}

/// A convolution with a bias initialised to zero (timm's transformers: `bias.data.zero_()`).
pub fn conv2d_zero_bias(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    init: Init,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get_with_hints((out_channels, in_channels / config.groups, kernel, kernel), "weight", init)?;
    let bias = Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?);
    Ok(Conv2d { weight, bias, config })
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn config(&self) -> Conv2dConfig {
        self.config
    }
}

impl Module for Conv2d {
    /// # Shapes
    /// `xs: [B, in, H, W]` → `[B, out, H', W']`, `H' = (H + 2p − d(k−1) − 1)/s + 1`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = conv2d_forward(xs, &self.weight, self.config)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(&bias.to_dtype(ys.dtype())?.reshape((1, (), 1, 1))?),
            None => Ok(ys),
        }
    }
}

/// The convolution itself: on the CPU the project's op (im2col + gemm, forward and backward as
/// matrix products; half precision goes through f32), on CUDA cuDNN where it is loaded
/// (`cudnn.rs`), elsewhere [`conv2d_generic`]. Inside
/// [`crate::with_autocast`] it computes in, and returns, the autocast dtype.
///
/// # Shapes
/// `xs: [B, C, H, W]`, `weight: [O, C/groups, kh, kw]` → `[B, O, H', W']`.
pub fn conv2d_forward(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> Result<Tensor> {
    let (xs, weight) = (&crate::autocast::for_matmul(xs)?, &crate::autocast::for_matmul(weight)?);
    if !crate::cpu::custom_cpu_ops(xs.device()) {
        #[cfg(feature = "cuda")]
        if crate::cudnn::takes(xs, weight, config) {
            return crate::cudnn::conv2d(xs, weight, config);
        }
        return conv2d_generic(xs, weight, config);
    }
    if is_depthwise(xs, weight, config)? {
        let op = || DepthwiseOp(Depthwise { stride: config.stride, padding: config.padding });
        return match xs.dtype() {
            DType::F32 | DType::F64 => xs.contiguous()?.apply_op2(&weight.contiguous()?, op()),
            dtype => xs
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op2(&weight.to_dtype(DType::F32)?.contiguous()?, op())?
                .to_dtype(dtype),
        };
    }
    match xs.dtype() {
        DType::F32 | DType::F64 => xs.contiguous()?.apply_op2(&weight.contiguous()?, Conv2dOp(config)),
        dtype => {
            let xs = xs.to_dtype(DType::F32)?.contiguous()?;
            let weight = weight.to_dtype(DType::F32)?.contiguous()?;
            xs.apply_op2(&weight, Conv2dOp(config))?.to_dtype(dtype)
        }
    }
}

/// A depthwise convolution with bias (`weight: [C, 1, k, k]`, one filter per channel) on a
/// channels-last map: PVT v2's MLP convolution, which timm runs on its tokens transposed to
/// `[B, C, H, W]` and back. On the CPU one op with the bias folded in (no transposes, whose
/// copies and backward cost as much as the convolution); elsewhere the transposes around
/// [`conv2d_forward`].
///
/// # Shapes
/// `xs: [B, H, W, C]` → `[B, H', W', C]`.
pub fn depthwise_conv2d_nhwc(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    depthwise_channels_last(xs, None, weight, bias, stride, padding)
}

/// [`depthwise_conv2d_nhwc`] on the tokens of an `h × w` map, which need no reshape.
///
/// # Shapes
/// `tokens: [B, h·w, C]` → `[B, h'·w', C]`.
pub fn depthwise_conv2d_tokens(
    tokens: &Tensor,
    (h, w): (usize, usize),
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    depthwise_channels_last(tokens, Some((h, w)), weight, bias, stride, padding)
}

fn depthwise_channels_last(
    xs: &Tensor,
    size: Option<(usize, usize)>,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if crate::cpu::custom_cpu_ops(xs.device()) {
        let dtype = xs.dtype();
        let compute = if matches!(dtype, DType::F32 | DType::F64) { dtype } else { DType::F32 };
        let op = crate::depthwise_op::DepthwiseNhwcOp(Depthwise { stride, padding }, size);
        let (x, w, b) = (xs.to_dtype(compute)?, weight.to_dtype(compute)?, bias.to_dtype(compute)?);
        return x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?.to_dtype(dtype);
    }
    let map = match size {
        Some((h, w)) => xs.reshape((xs.dim(0)?, h, w, xs.dim(2)?))?,
        None => xs.clone(),
    };
    let channels = map.dim(3)?;
    let config = Conv2dConfig { stride, padding, dilation: 1, groups: channels };
    let ys = conv2d_forward(&map.permute((0, 3, 1, 2))?, weight, config)?;
    let ys = ys.broadcast_add(&bias.to_dtype(ys.dtype())?.reshape((1, (), 1, 1))?)?.permute((0, 2, 3, 1))?;
    match size {
        Some(_) => {
            let (b, oh, ow, c) = ys.dims4()?;
            ys.reshape((b, oh * ow, c))
        }
        None => Ok(ys),
    }
}

/// One filter per channel (`groups` = input = output channels), no dilation: the depthwise op.
fn is_depthwise(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> Result<bool> {
    let (_, channels, _, _) = xs.dims4()?;
    let (out, per_group, kh, kw) = weight.dims4()?;
    Ok(config.groups > 1
        && config.groups == channels
        && out == channels
        && per_group == 1
        && kh == kw
        && config.dilation == 1)
}

/// candle's convolution, on any device, with a correct and fast backward.
///
/// The value is candle's `conv2d` (im2col and one matrix product on CUDA). Its backward is not
/// used: candle gets the input gradient from a transposed convolution whose output padding (the
/// input rows after the last window: the remainder of `(len + 2p − reach) / stride`) it derives
/// from the height alone, failing whenever a remainder is not zero (`crates/nn/tests/conv.rs`),
/// and whose CUDA kernel is a direct loop. So the forward runs detached, and `conv_grad`
/// computes both gradients as forward convolutions.
///
/// # Shapes
/// As [`conv2d_forward`].
pub(crate) fn conv2d_generic(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> Result<Tensor> {
    // candle's CPU convolution has no bf16 kernel (its tiled gemm refuses it); CUDA's has. On the
    // CPU (only the tests force this path there) bf16 computes in f32 and rounds back.
    if xs.device().is_cpu() && xs.dtype() == DType::BF16 {
        let widened = conv2d_generic(&xs.to_dtype(DType::F32)?, &weight.to_dtype(DType::F32)?, config)?;
        return widened.to_dtype(DType::BF16);
    }
    if !xs.track_op() && !weight.track_op() {
        return conv2d_value(xs, weight, config);
    }
    let value = conv2d_value(&xs.detach(), &weight.detach(), config)?;
    crate::conv_grad::with_gradients(&value, xs, weight, config)
}

/// candle's `conv2d`, with the input cut to the rows and columns the windows read (candle's own
/// backward, were it used, would then be right; the forward is the same either way).
fn conv2d_value(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> Result<Tensor> {
    let c = config;
    let (_, _, h, w) = xs.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    // (extent the windows read in the padded input, remainder after the last window).
    let windows = |len: usize, k: usize| -> Result<(usize, usize)> {
        let reach = c.dilation * (k.max(1) - 1) + 1;
        let padded = len + 2 * c.padding;
        if padded < reach || c.stride == 0 {
            candle_core::bail!("conv2d: a kernel of {k} (dilation {}) does not fit {len} + 2·{}", c.dilation, c.padding)
        }
        let remainder = (padded - reach) % c.stride;
        Ok((padded - remainder, remainder))
    };
    let ((extent_h, rem_h), (extent_w, rem_w)) = (windows(h, kh)?, windows(w, kw)?);
    if rem_h == 0 && rem_w == 0 {
        return xs.conv2d(weight, c.padding, c.stride, c.dilation, c.groups);
    }
    let p = c.padding;
    let padded = xs.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    padded.narrow(2, 0, extent_h)?.narrow(3, 0, extent_w)?.conv2d(weight, 0, c.stride, c.dilation, c.groups)
}
