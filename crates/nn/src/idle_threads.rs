//! candle's CPU worker pool, told to sleep instead of spinning when it has no work.
//!
//! candle 0.11.1 runs its element-wise CPU ops on a pool of its own, beside rayon's (which runs
//! `gemm` and this crate's ops): among them the `zeros + add` with which its backward pass
//! accumulates every tensor's gradient. After each job those workers spin 25,000 times before
//! they park (`CANDLE_BARRIER_POOL_SPIN_LIMIT`). With as many threads as cores, a spinning
//! candle worker holds the core that a rayon worker needs for the next convolution; in a profile
//! of the ResNet-50 step (batch 8, 2 threads) candle's spin loops were 5% of all samples.
//! Parking at once costs a wake-up (microseconds) per element-wise op instead. Measured here with
//! `cargo xtask-release bench model --only resnet`, five runs of each alternating: median
//! 1.47 → 1.40 s, best 1.37 → 1.27 s.

/// The environment variable candle 0.11.1 reads, once, when its CPU pool starts.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The spin limit to set given the variable's current value: none where the user chose one.
fn spin_limit_to_set(current: Option<std::ffi::OsString>) -> Option<&'static str> {
    current.is_none().then_some("0")
}

/// Makes candle's CPU workers park as soon as they are idle (see the module docs), unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. Returns whether it set the variable.
///
/// It only takes effect before candle runs its first CPU op, when the pool starts.
///
/// # Safety
///
/// It sets an environment variable: call it first thing in `main`, while no other thread exists
/// that could read or write the environment at the same time.
pub unsafe fn park_idle_candle_workers() -> bool {
    match spin_limit_to_set(std::env::var_os(SPIN_LIMIT_VAR)) {
        Some(value) => {
            // SAFETY: the caller guarantees no other thread touches the environment now.
            unsafe { std::env::set_var(SPIN_LIMIT_VAR, value) };
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_zero_only_where_the_user_chose_nothing() {
        assert_eq!(spin_limit_to_set(None), Some("0"));
        assert_eq!(spin_limit_to_set(Some("25000".into())), None);
        assert_eq!(spin_limit_to_set(Some("".into())), None);
    }
}
