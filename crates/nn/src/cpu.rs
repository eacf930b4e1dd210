//! Shared plumbing of the CPU custom ops: float-type dispatch and contiguous views.

use candle_core::{CpuStorage, Layout, Result, WithDType, bail};

/// The slice of `storage` that the contiguous `layout` covers; `op` names the op in the error.
pub(crate) fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("{op} expects contiguous tensors"),
    }
}

/// Runs `$body` with the type `$ty` set to `f32` or `f64` after `$storage`'s dtype; any other
/// dtype is an error naming the op `$op`.
macro_rules! dispatch_float {
    ($storage:expr, $op:expr, |$ty:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => {
                type $ty = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $ty = f64;
                $body
            }
            other => candle_core::bail!(
                "{} supports f32 and f64 on the CPU, got {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}

pub(crate) use dispatch_float;
