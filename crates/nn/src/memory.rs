//! Keeping freed memory in the process, as a training loop wants it.
//!
//! candle has no caching allocator: every op allocates its output afresh and frees it when the
//! tensor drops. glibc's `malloc` serves each allocation of 32 MB and over with its own `mmap`
//! and unmaps it on `free`, and gives the top of its heap back to the kernel past a threshold,
//! so the next training step's activations and gradients of the same sizes are page-faulted in
//! and zeroed by the kernel all over again. Profiled on the Dynamic MLP-C head step (batch 512,
//! its generated weights and their gradient 32 MB each), a third of the step was spent in the
//! kernel's page-fault path.
//!
//! [`keep_freed_memory`] turns both off (`M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD` unbounded): freed
//! blocks stay in the heap and the next step reuses them without faults. The process keeps its
//! peak heap for its lifetime, as a caching allocator does; the peak itself does not grow (the
//! same ResNet-50 step peaks at 1.40 GB either way). The binaries (`dmlp`, `xtask`) call it
//! first thing; a library user may too.
//!
//! On CUDA the same holds for the device: cudarc allocates with `cuMemAllocAsync` from the
//! device's memory pool, whose release threshold is 0 by default, so every synchronisation (the
//! timer's, a loss read back) hands all freed memory back to the driver and the next step maps
//! it in again. [`cuda_device`] opens a device whose pool keeps what it freed (the threshold
//! unbounded), as PyTorch's caching allocator keeps its blocks, and with cudarc's event tracking
//! off (two CUDA events made and destroyed with every allocation, for ordering several streams,
//! which dmlp never runs on one device).
//!
//! It also gives the device a stream of its own. candle's `Device::new_cuda` queues on CUDA's
//! per-thread default stream, which is a different stream on every host thread: work queued
//! from two threads is not ordered on the device. Data-parallel training builds its replicas on
//! the main thread, runs each step's replica work on a fresh scoped thread, and checkpoints and
//! evaluates from the main thread again, so on per-thread streams a step could read weights
//! still being uploaded or updated, and a checkpoint copy could read them mid-update. On one
//! stream per device, work runs in the order the host queued it, whichever thread queued it
//! (the threads hand over through joins). `DMLP_CUDA_STREAM=per-thread` keeps candle's stream,
//! to compare or rule this out.

/// Makes glibc keep freed memory for reuse (see the module docs). Returns whether it applied:
/// `false` off Linux with glibc, where the platform's allocator is left as it is.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; any value is accepted or refused.
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether [`cuda_device`] gives each device a stream of its own (the default), rather than
/// candle's per-thread stream (`DMLP_CUDA_STREAM=per-thread`, read once): where it does, all work
/// on a device runs in the order the host queued it, whatever the thread.
#[cfg(feature = "cuda")]
pub(crate) fn own_streams() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("DMLP_CUDA_STREAM").map_or(true, |v| v != "per-thread"))
}

/// CUDA device `ordinal` on a stream of its own, its stream-ordered memory pool set to keep
/// freed memory for reuse (see the module docs).
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> candle_core::Result<candle_core::Device> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let device = if !own_streams() {
        candle_core::Device::new_cuda(ordinal)?
    } else {
        candle_core::Device::new_cuda_with_stream(ordinal)?
    };
    if let candle_core::Device::Cuda(cuda) = &device {
        // SAFETY: cudarc's event tracking orders work between several streams of one context;
        // dmlp runs each device on one stream (its own), where cudarc need not wait on those
        // events, yet it still created and destroyed two for every allocation, a driver call
        // each on the host's critical path (thousands per training step).
        unsafe { cuda.disable_event_tracking() };
    }
    if let candle_core::Device::Cuda(cuda) = &device
        && let Some(pool) = memory_pool(cuda)?
    {
        let mut threshold: u64 = u64::MAX;
        // SAFETY: the pool is the device's; the release threshold is a cuuint64_t.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        }
        .map_err(pool_error)?;
    }
    Ok(device)
}

/// Hands the memory `device`'s pool keeps (see [`cuda_device`]) back to the driver, after the
/// device's queued work: for a library that allocates outside the pool (cuDNN's benchmarks).
#[cfg(feature = "cuda")]
pub(crate) fn release_cached_cuda_memory(device: &candle_core::cuda_backend::CudaDevice) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::result;
    // The blocks dmlp's cache keeps go back to the pool first (crate::alloc_cache).
    crate::alloc_cache::release(device)?;
    device.cuda_stream().synchronize().map_err(pool_error)?;
    if let Some(pool) = memory_pool(device)? {
        // SAFETY: the pool is the device's current one; trimming frees only unused memory.
        unsafe { result::mem_pool::trim_to(pool, 0) }.map_err(pool_error)?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn pool_error(e: candle_core::cuda_backend::cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA memory pool: {e:?}"))
}

/// The pool cudarc allocates `device`'s memory from (its context made current), or `None`
/// where the device has no stream-ordered allocation.
#[cfg(feature = "cuda")]
fn memory_pool(
    device: &candle_core::cuda_backend::CudaDevice,
) -> candle_core::Result<Option<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool>> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let stream = device.cuda_stream();
    let context = stream.context();
    if !context.has_async_alloc() {
        return Ok(None);
    }
    context.bind_to_thread().map_err(pool_error)?;
    // SAFETY: the device is the context's.
    Ok(Some(unsafe { result::device::get_mem_pool(context.cu_device()) }.map_err(pool_error)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn applies_on_linux_glibc_and_allocation_still_works() {
        let applied = super::keep_freed_memory();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // A block larger than a non-main arena's heap (64 MB) must still be served without mmap.
        let handle = std::thread::spawn(|| {
            let big = vec![1u8; 96 << 20];
            big.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>()
        });
        assert_eq!(handle.join().unwrap(), (96u64 << 20) / 4096);
    }
}
