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
