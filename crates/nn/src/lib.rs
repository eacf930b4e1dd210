//! Layers and ops with correct gradients, on candle.
//!
//! candle 0.11.1 drops some gradients silently (its fused LayerNorm, see
//! `shared/reference/candle-notes.md`) and cannot differentiate pooling whose kernel differs from
//! its stride. Every model in this workspace builds its layers from this crate instead, so each
//! layer here is one that trains: [`LayerNorm`] is composed from differentiable primitives, the
//! pooling ops and the convolution are custom ops with their own backward (the convolution's as
//! large matrix products, several times faster than candle's on the CPU), [`BatchNorm`] updates running statistics
//! the way PyTorch does. Off the CPU every op takes a device-generic path built from candle
//! primitives with a correct backward; on CUDA the convolutions and BatchNorm's training pass go
//! through cuDNN where it can be loaded at run time ([`cudnn_status`]), and ReLU, the pools, the
//! half ↔ f32 casts and SGD's update ([`sgd_step_in_place`]) through dmlp's own kernels
//! (`cuda/kernels.cu`, compiled to PTX by `build.rs` with nvcc).
//!
//! Initialisation follows PyTorch's defaults ([`init`]), and parameter names follow PyTorch's
//! (`weight`, `bias`, `running_mean`, `running_var`), so reference checkpoints load unchanged.
//!
//! Architecture invariant: knows nothing of images, locations, datasets or models; depends on
//! candle and the libraries candle itself uses (gemm, rayon, rand, half; libc, for `dlopen` of
//! cuDNN).

mod activation_op;
mod alloc_cache;
mod attention_ops;
mod autocast;
mod batch_norm_op;
mod blend_op;
mod bmm_op;
mod conv;
mod conv_grad;
mod conv_op;
mod cpu;
mod cpu_threads;
#[cfg(feature = "cuda")]
mod cuda_kernels;
#[cfg(feature = "cuda")]
mod cudnn;
#[cfg(feature = "cuda")]
mod cudnn_batch_norm;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod cudnn_library;
mod depthwise_op;
mod gemm_util;
pub mod init;
mod layer_norm_op;
mod linear;
mod linear_op;
mod memory;
mod mha_op;
mod norm;
mod pool;
mod pool_mix_op;
mod projection_op;
mod scratch;
mod sgd_table;
mod store;
#[cfg(test)]
mod test_util;
mod upload;
mod vecmat_op;
mod vecmath;
mod winograd;

pub use activation_op::{add_relu, relu};
pub use attention_ops::{gelu, softmax_last_dim};
pub use autocast::{accumulation_dtype, autocast_dtype, cat_promoted, with_autocast};
pub use blend_op::channel_blend;
pub use conv::{
    Conv2d, Conv2dConfig, conv2d, conv2d_forward, conv2d_zero_bias, depthwise_conv2d_nhwc, depthwise_conv2d_tokens,
};
pub use cpu::with_generic_ops;
pub use cpu_threads::configure_cpu_threads;
#[cfg(feature = "cuda")]
pub use cudnn::{cudnn_status, set_cudnn};
#[cfg(feature = "cuda")]
pub use cudnn_batch_norm::half_precision_status as cudnn_half_batch_norm_status;
pub use linear::{Linear, linear, linear_forward, linear_nd, linear_with_init, matmul, matmul_nt};
#[cfg(feature = "cuda")]
pub use memory::cuda_device;
pub use memory::keep_freed_memory;
pub use mha_op::multi_head_attention;
pub use norm::{BatchNorm, LayerNorm, batch_norm, layer_norm, layer_norm_with_eps};
pub use pool::{AvgPool2d, MaxPool2d, adaptive_avg_pool2d, global_avg_pool, resize_bilinear, resize_linear_rows};
pub use pool_mix_op::pool_mix;
pub use projection_op::generated_projection;
pub use store::ParamStore;
pub use upload::Uploader;
pub use vecmat_op::batched_vecmat;

/// Names of buffers that are state but not trainable parameters (the optimiser must skip them).
pub fn is_buffer_name(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// Dropout with probability `p` while training (kept values scaled by `1/(1 − p)`), the identity
/// in evaluation. The mask comes from a seeded stream shared by the layers of a model, so a
/// training run is reproducible: reseed it before each step ([`DropoutRng::reseed`]).
pub fn dropout(
    xs: &candle_core::Tensor,
    p: f32,
    train: bool,
    rng: &DropoutRng,
) -> candle_core::Result<candle_core::Tensor> {
    if !train || p <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 - f64::from(p);
    let mask: Vec<f32> = {
        let mut rng = rng.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (0..xs.elem_count())
            .map(|_| if rand::Rng::random_bool(&mut *rng, keep) { (1.0 / keep) as f32 } else { 0.0 })
            .collect()
    };
    let mask = candle_core::Tensor::from_vec(mask, xs.shape(), &candle_core::Device::Cpu)?
        .to_dtype(xs.dtype())?
        .to_device(xs.device())?;
    xs * mask
}

/// Stochastic depth (timm's `DropPath`): while training each sample's residual branch is dropped
/// whole with probability `p` and kept ones scaled by `1/(1 − p)`; the identity in evaluation.
/// Draws one value per sample from the model's dropout stream.
///
/// # Shapes
/// `xs: [B, ...]` → same shape.
pub fn drop_path(
    xs: &candle_core::Tensor,
    p: f64,
    train: bool,
    rng: &DropoutRng,
) -> candle_core::Result<candle_core::Tensor> {
    if !train || p <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 - p;
    let batch = xs.dim(0)?;
    let mask: Vec<f32> = {
        let mut rng = rng.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (0..batch).map(|_| if rand::Rng::random_bool(&mut *rng, keep) { (1.0 / keep) as f32 } else { 0.0 }).collect()
    };
    let mut shape = vec![1; xs.rank()];
    shape[0] = batch;
    let mask = candle_core::Tensor::from_vec(mask, shape, &candle_core::Device::Cpu)?
        .to_dtype(xs.dtype())?
        .to_device(xs.device())?;
    xs.broadcast_mul(&mask)
}

/// The random stream of a model's dropout layers, shared by clones.
#[derive(Debug, Clone)]
pub struct DropoutRng(std::sync::Arc<std::sync::Mutex<rand_chacha::ChaCha8Rng>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(rand::SeedableRng::seed_from_u64(seed))))
    }

    /// Restarts the stream at `seed` (the trainer does this before each step).
    pub fn reseed(&self, seed: u64) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = rand::SeedableRng::seed_from_u64(seed);
    }
}

/// Whether an op over `xs` runs dmlp's own CUDA kernel (`cuda_kernels`): a CUDA float tensor,
/// the kernels on (`DMLP_CUDA_KERNELS`), the generic path not forced.
#[cfg(feature = "cuda")]
pub(crate) fn custom_cuda_ops(xs: &candle_core::Tensor) -> bool {
    cuda_kernels::takes(xs)
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn custom_cuda_ops(_: &candle_core::Tensor) -> bool {
    false
}

/// `xs` in `dtype` (candle's `to_dtype`), by one of dmlp's CUDA kernels for half precision to
/// f32 and back on CUDA: candle's bf16 → f32 cast runs at about a third of the bandwidth.
pub(crate) fn to_dtype(
    xs: &candle_core::Tensor,
    dtype: candle_core::DType,
) -> candle_core::Result<candle_core::Tensor> {
    #[cfg(feature = "cuda")]
    {
        cuda_kernels::cast(xs, dtype)
    }
    #[cfg(not(feature = "cuda"))]
    {
        xs.to_dtype(dtype)
    }
}

/// One step of SGD with momentum (dampening 0, PyTorch's `torch.optim.SGD`) on `param` in place,
/// by two of dmlp's CUDA kernels (the momentum buffer, then the parameter) instead of the seven
/// tensor ops and a copy the update is composed of, each product and sum rounded as those round
/// them. Returns the momentum buffer (a new one at the first step, when `buffer` is `None`, else
/// `buffer` itself, updated in place), or `None` where the kernels do not apply (not CUDA, the
/// kernels off, not all f32 and contiguous, no momentum): the caller then composes the update.
pub fn sgd_step_in_place(
    param: &candle_core::Tensor,
    grad: &candle_core::Tensor,
    buffer: Option<&candle_core::Tensor>,
    (lr, momentum, weight_decay): (f64, f64, f64),
    nesterov: bool,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    {
        let update = cuda_kernels::SgdUpdate::new((lr, momentum, weight_decay), nesterov);
        cuda_kernels::sgd_step(param, grad, buffer, update)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (param, grad, buffer, lr, momentum, weight_decay, nesterov);
        Ok(None)
    }
}

/// [`sgd_step_in_place`] over many `(param, grad, momentum buffer)` at once, every buffer
/// existing (after the first step): on CUDA one kernel launch over a table of their addresses
/// instead of two per parameter, the same arithmetic. Returns `false`, having changed nothing,
/// where that does not apply (not all contiguous f32 on one CUDA device, the kernels off, no
/// momentum, or two of the updated tensors sharing memory): the caller then updates each
/// parameter on its own.
pub fn sgd_steps_in_place(
    items: &[(&candle_core::Tensor, &candle_core::Tensor, &candle_core::Tensor)],
    (lr, momentum, weight_decay): (f64, f64, f64),
    nesterov: bool,
) -> candle_core::Result<bool> {
    #[cfg(feature = "cuda")]
    {
        cuda_kernels::sgd_step_many(items, cuda_kernels::SgdUpdate::new((lr, momentum, weight_decay), nesterov))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (items, lr, momentum, weight_decay, nesterov);
        Ok(false)
    }
}

/// Why convolutions take the generic path: this build has no CUDA (see the `cuda` feature's
/// `cudnn_status`).
#[cfg(not(feature = "cuda"))]
pub fn cudnn_status() -> Result<usize, String> {
    Err("built without the `cuda` feature".into())
}

/// How half-precision BatchNorm ran on cuDNN: never, in a build without CUDA.
#[cfg(not(feature = "cuda"))]
pub fn cudnn_half_batch_norm_status() -> String {
    "not tried (built without the `cuda` feature)".into()
}

/// Nothing to turn on or off without CUDA.
#[cfg(not(feature = "cuda"))]
pub fn set_cudnn(_enabled: bool) {}
