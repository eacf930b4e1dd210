//! Shared plumbing of the CPU custom ops: which path an op takes, float-type dispatch and
//! contiguous views.
//!
//! Every op of this crate has two paths: a CPU custom op (hand-written forward and backward) and
//! a device-generic one composed from candle primitives that have CUDA kernels and a correct
//! backward. The generic path is what runs on CUDA; [`with_generic_ops`] forces it on the CPU, so
//! the tests check it there against the custom ops, values and gradients.

use std::cell::Cell;

use candle_core::{CpuStorage, Device, Layout, Result, WithDType, bail};

thread_local! {
    static GENERIC_OPS: Cell<bool> = const { Cell::new(false) };
}

/// Whether this crate's CPU custom ops run for tensors on `device`: on the CPU, unless the
/// calling thread is inside [`with_generic_ops`].
pub(crate) fn custom_cpu_ops(device: &Device) -> bool {
    device.is_cpu() && !generic_forced()
}

/// Whether the calling thread is inside [`with_generic_ops`] (which also keeps cuDNN out).
pub(crate) fn generic_forced() -> bool {
    GENERIC_OPS.with(Cell::get)
}

/// Runs `f` with every op of this crate built on its device-generic path (the path CUDA takes
/// where cuDNN does not), even for CPU tensors, and on CUDA without cuDNN. An op's path is chosen when its forward runs, so a backward may run
/// outside. The setting is per thread and restored when `f` returns or panics.
pub fn with_generic_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC_OPS.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC_OPS.with(|g| g.replace(true)));
    f()
}

/// The slice of `storage` that the contiguous `layout` covers; `op` names the op in the error.
pub(crate) fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("{op} expects contiguous tensors"),
    }
}

/// Runs `f` on the contiguous CPU slice of `t` (copied contiguous first if it is not): for a
/// backward that computes several gradients in one pass outside candle's op interface.
pub(crate) fn with_cpu_slice<T: WithDType, R>(t: &candle_core::Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { bail!("a CPU op got a tensor on {:?}", t.device()) };
    f(contiguous::<T>(cpu, layout, "a CPU op's backward")?)
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
