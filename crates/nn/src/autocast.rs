//! Mixed precision as PyTorch's autocast does it: parameters (and so the optimiser's state) stay
//! in their own dtype, usually f32, while inside [`with_autocast`] the convolutions and matrix
//! products of this crate cast their inputs and weights to the autocast dtype (bf16 or f16) and
//! return it. Normalisation (BatchNorm, LayerNorm) computes in f32 whatever it is given, and
//! the loss takes f32 logits; so do the running statistics, which live in the parameters' dtype.
//!
//! Gradients flow back through the casts: a parameter's gradient arrives in the parameter's
//! dtype (rounded once to the compute dtype on the way, as PyTorch's are).

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with matrix products and convolutions computing in `dtype` (`None`: in their inputs'
/// own dtype, the default). Per thread; restored when `f` returns or panics.
pub fn with_autocast<R>(dtype: Option<DType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(dtype)));
    f()
}

/// The calling thread's autocast dtype, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// `xs` in the autocast dtype when one is set and `xs` is a float of another dtype.
pub(crate) fn for_matmul(xs: &Tensor) -> Result<Tensor> {
    match autocast_dtype() {
        Some(dtype) if xs.dtype() != dtype && xs.dtype().is_float() => crate::to_dtype(xs, dtype),
        _ => Ok(xs.clone()),
    }
}

/// The dtype a numerically sensitive op (normalisation, softmax, a mean) computes in for `xs`:
/// f32 for half precision, the input's own otherwise.
pub fn accumulation_dtype(xs: &Tensor) -> DType {
    match xs.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        dtype => dtype,
    }
}

/// `Tensor::cat` of float tensors whose dtypes may differ (image features in f32 beside location
/// features from a half-precision layer), in the widest of them: autocast's rule for `cat`.
pub fn cat_promoted(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    let rank = |dtype: DType| match dtype {
        DType::F64 => 3,
        DType::F32 => 2,
        _ => 1,
    };
    let widest = tensors.iter().map(|t| t.dtype()).max_by_key(|&d| rank(d));
    let Some(mut widest) = widest else { return Tensor::cat(tensors, dim) };
    if rank(widest) == 1 && tensors.iter().any(|t| t.dtype() != widest) {
        widest = DType::F32; // bf16 beside f16
    }
    let promoted = tensors.iter().map(|t| t.to_dtype(widest)).collect::<Result<Vec<_>>>()?;
    Tensor::cat(&promoted, dim)
}
