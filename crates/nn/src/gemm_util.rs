//! One place that calls `gemm`: a checked, strided matrix product on CPU slices.

use candle_core::WithDType;
use gemm::{Parallelism, gemm};

/// candle's CPU thread count, asked once: without `RAYON_NUM_THREADS` candle counts the cores
/// by parsing `/proc/cpuinfo` on every call (see `cpu_threads.rs`).
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// `dst[m × n] (row stride ld_dst) = (accumulate ? dst : 0) + lhs · rhs`, where `lhs` and `rhs`
/// are given by (pointer, row stride, column stride) so that transposes cost nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    ld_dst: usize,
    accumulate: bool,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
) {
    matmul_strided((m, n, k), (dst, ld_dst, 1), accumulate, lhs, rhs);
}

/// [`matmul`] with the destination too given by (slice, row stride, column stride): a product
/// can be written transposed (column stride > 1), which `gemm` runs faster for some shapes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (&mut [T], usize, usize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[T], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[T], usize, usize),
) {
    let threads = threads();
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    gemm_checked(
        (m, n, k),
        (dst, dst_rs, dst_cs),
        accumulate,
        (lhs, lhs_rs, lhs_cs),
        (rhs, rhs_rs, rhs_cs),
        T::one(),
        parallelism,
    );
}

/// [`matmul_strided`] on the calling thread only: for many small products run in parallel by
/// the caller (attention's per-window matrices).
pub(crate) fn matmul_serial<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [T], usize, usize),
    accumulate: bool,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
) {
    gemm_checked((m, n, k), dst, accumulate, lhs, rhs, T::one(), Parallelism::None);
}

/// [`matmul_serial`] of `scale · lhs · rhs` (gemm's `beta`, so the scaling costs no pass).
pub(crate) fn matmul_serial_scaled<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [T], usize, usize),
    accumulate: bool,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    scale: T,
) {
    gemm_checked((m, n, k), dst, accumulate, lhs, rhs, scale, Parallelism::None);
}

fn gemm_checked<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (&mut [T], usize, usize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[T], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[T], usize, usize),
    scale: T,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1) * dst_cs, "matmul destination too small");
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs, "matmul lhs too small");
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs, "matmul rhs too small");
    // SAFETY: the asserts above keep every index gemm computes from these strides inside the
    // slices; dst does not alias lhs or rhs (it is a distinct &mut).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
