//! Two settings of candle 0.11.1's CPU threading that cost training time, fixed once per process.
//!
//! - **The thread count is looked up on every op.** Unless `RAYON_NUM_THREADS` is set, candle's
//!   `get_num_threads()` counts the physical cores by parsing `/proc/cpuinfo` (`num_cpus`), on
//!   every call, and candle asks it for each of its own matrix products (this crate's `gemm`
//!   calls ask once, `gemm_util.rs`). On the tiny ResNet of smoke runs (batch 32 × 32²) that
//!   parsing was a third of the step: 16–19 ms with the variable unset, 10 ms with it set to the
//!   same count. [`configure_cpu_threads`] sets it, once, to the count candle would have chosen,
//!   so nothing else changes.
//! - **Idle workers spin.** candle runs its element-wise CPU ops on a pool of its own, beside
//!   rayon's (which runs `gemm` and this crate's ops): among them the `zeros + add` with which its
//!   backward pass accumulates every tensor's gradient. After each job those workers spin 25,000
//!   times before they park (`CANDLE_BARRIER_POOL_SPIN_LIMIT`). With as many threads as cores, a
//!   spinning candle worker holds the core a rayon worker needs for the next convolution (5% of
//!   the ResNet-50 step's profile). Parking at once costs a wake-up per element-wise op instead.
//!   Measured with `cargo xtask-release bench model --only resnet` (batch 8, 2 threads), five
//!   runs of each alternating: median 1.47 → 1.40 s; on the tiny ResNet 11.5–16 → 10 ms.
//!
//! A variable the user has set is left as it is.

/// The thread count candle and rayon read, once each, and candle on every `get_num_threads()`.
const THREADS_VAR: &str = "RAYON_NUM_THREADS";
/// How long candle's idle CPU workers spin before parking, read when its pool starts.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The value to give a variable given its current one: none where the user chose one.
fn value_to_set(current: Option<std::ffi::OsString>, default: impl FnOnce() -> String) -> Option<String> {
    current.is_none().then(default)
}

/// Pins the CPU thread count in `RAYON_NUM_THREADS` (candle's own default, counted once) and
/// makes candle's idle CPU workers park at once (see the module docs); a variable already set is
/// left alone.
///
/// It only takes effect before candle or rayon start their thread pools, at their first CPU op.
///
/// # Safety
///
/// It sets environment variables: call it first thing in `main`, while no other thread exists
/// that could read or write the environment at the same time.
pub unsafe fn configure_cpu_threads() {
    let set_unless_chosen = |var: &str, default: &dyn Fn() -> String| {
        if let Some(value) = value_to_set(std::env::var_os(var), default) {
            // SAFETY: the caller guarantees no other thread touches the environment now.
            unsafe { std::env::set_var(var, value) };
        }
    };
    set_unless_chosen(THREADS_VAR, &|| candle_core::utils::get_num_threads().to_string());
    set_unless_chosen(SPIN_LIMIT_VAR, &|| "0".to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_a_value_only_where_the_user_chose_none() {
        assert_eq!(value_to_set(None, || "0".into()), Some("0".to_string()));
        assert_eq!(value_to_set(Some("25000".into()), || "0".into()), None);
        assert_eq!(value_to_set(Some("".into()), || unreachable!("not asked for")), None);
    }
}
