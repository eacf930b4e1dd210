//! Layers and ops with correct gradients, on candle.
//!
//! candle 0.11.1 drops some gradients silently (its fused LayerNorm, see
//! `shared/reference/candle-notes.md`) and cannot differentiate pooling whose kernel differs from
//! its stride. Every model in this workspace builds its layers from this crate instead, so each
//! layer here is one that trains: [`LayerNorm`] is composed from differentiable primitives, the
//! pooling ops and the convolution are custom ops with their own backward (the convolution's as
//! large matrix products, several times faster than candle's on the CPU), [`BatchNorm`] updates running statistics
//! the way PyTorch does.
//!
//! Initialisation follows PyTorch's defaults ([`init`]), and parameter names follow PyTorch's
//! (`weight`, `bias`, `running_mean`, `running_var`), so reference checkpoints load unchanged.
//!
//! Architecture invariant: knows nothing of images, locations, datasets or models; depends on
//! candle and the libraries candle itself uses (gemm, rayon, rand).

mod activation_op;
mod batch_norm_op;
mod conv;
mod conv_op;
mod gemm_util;
pub mod init;
mod layer_norm_op;
mod linear;
mod linear_op;
mod norm;
mod pool;
mod store;
mod vecmat_op;

pub use activation_op::{add_relu, relu};
pub use conv::{Conv2d, Conv2dConfig, conv2d, conv2d_forward};
pub use linear::{Linear, linear, linear_forward};
pub use norm::{BatchNorm, LayerNorm, batch_norm, layer_norm};
pub use pool::{AvgPool2d, MaxPool2d, global_avg_pool};
pub use store::ParamStore;
pub use vecmat_op::batched_vecmat;

/// Names of buffers that are state but not trainable parameters (the optimiser must skip them).
pub fn is_buffer_name(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// Dropout with probability `p` while training, the identity in evaluation.
pub fn dropout(xs: &candle_core::Tensor, p: f32, train: bool) -> candle_core::Result<candle_core::Tensor> {
    if train && p > 0.0 { candle_nn::ops::dropout(xs, p) } else { Ok(xs.clone()) }
}
