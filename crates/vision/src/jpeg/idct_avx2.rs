//! The inverse DCTs of `idct.rs` in AVX2 intrinsics: eight 32-bit lanes per row, the same
//! arithmetic (so the same bits), for the sizes the input pipeline uses most (8 × 8 and 4 × 4).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `x · c` lane-wise (low 32 bits, wrapping as the scalar code).
#[inline(always)]
unsafe fn mul(x: __m256i, c: i32) -> __m256i {
    // SAFETY (all helpers here): called only from `#[target_feature(enable = "avx2")]`
    // functions, which run only where the CPU reported AVX2.
    unsafe { _mm256_mullo_epi32(x, _mm256_set1_epi32(c)) }
}

#[inline(always)]
unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
    unsafe { _mm256_add_epi32(a, b) }
}

#[inline(always)]
unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
    unsafe { _mm256_sub_epi32(a, b) }
}

/// `(x + bias) >> n`, arithmetic; `bias` is `2^(n−1)` for libjpeg's DESCALE (plus `128 · 2^n`
/// to centre output samples).
#[inline(always)]
unsafe fn descale(x: __m256i, bias: i32, n: i32) -> __m256i {
    unsafe { _mm256_sra_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(bias)), _mm_cvtsi32_si128(n)) }
}

#[inline(always)]
unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
    unsafe {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }
}

/// `jpeg_idct_islow`'s 8-point pass, lane-wise; outputs `(x + bias) >> shift`.
#[inline(always)]
unsafe fn idct8(x: [__m256i; 8], bias: i32, shift: i32) -> [__m256i; 8] {
    unsafe {
        let z1 = mul(add(x[2], x[6]), 4433);
        let tmp2 = add(z1, mul(x[6], -15137));
        let tmp3 = add(z1, mul(x[2], 6270));
        let tmp0 = _mm256_slli_epi32::<13>(add(x[0], x[4]));
        let tmp1 = _mm256_slli_epi32::<13>(sub(x[0], x[4]));
        let (tmp10, tmp13, tmp11, tmp12) = (add(tmp0, tmp3), sub(tmp0, tmp3), add(tmp1, tmp2), sub(tmp1, tmp2));
        let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
        let (z1, z2, z3, z4) = (add(t0, t3), add(t1, t2), add(t0, t2), add(t1, t3));
        let z5 = mul(add(z3, z4), 9633);
        let (z1, z2) = (mul(z1, -7373), mul(z2, -20995));
        let z3 = add(mul(z3, -16069), z5);
        let z4 = add(mul(z4, -3196), z5);
        let t0 = add(add(mul(t0, 2446), z1), z3);
        let t1 = add(add(mul(t1, 16819), z2), z4);
        let t2 = add(add(mul(t2, 25172), z2), z3);
        let t3 = add(add(mul(t3, 12299), z1), z4);
        let d = |v| descale(v, bias, shift);
        [
            d(add(tmp10, t3)),
            d(add(tmp11, t2)),
            d(add(tmp12, t1)),
            d(add(tmp13, t0)),
            d(sub(tmp13, t0)),
            d(sub(tmp12, t1)),
            d(sub(tmp11, t2)),
            d(sub(tmp10, t3)),
        ]
    }
}

/// `jpeg_idct_4x4`'s pass (input 4 unused), lane-wise; outputs `(x + bias) >> shift`.
#[inline(always)]
unsafe fn idct4(x: [__m256i; 8], bias: i32, shift: i32) -> [__m256i; 4] {
    unsafe {
        let tmp0 = _mm256_slli_epi32::<14>(x[0]);
        let tmp2 = add(mul(x[2], 15137), mul(x[6], -6270));
        let (tmp10, tmp12) = (add(tmp0, tmp2), sub(tmp0, tmp2));
        let (z1, z2, z3, z4) = (x[7], x[5], x[3], x[1]);
        let t0 = add(add(mul(z1, -1730), mul(z2, 11893)), add(mul(z3, -17799), mul(z4, 8697)));
        let t2 = add(add(mul(z1, -4176), mul(z2, -4926)), add(mul(z3, 7373), mul(z4, 20995)));
        let d = |v| descale(v, bias, shift);
        [d(add(tmp10, t2)), d(add(tmp12, t0)), d(sub(tmp12, t0)), d(sub(tmp10, t2))]
    }
}

#[inline(always)]
unsafe fn load_rows(coef: &[i32; 64]) -> [__m256i; 8] {
    // SAFETY: row r reads coef[8r..8r + 8], inside the array.
    unsafe { std::array::from_fn(|r| _mm256_loadu_si256(coef.as_ptr().add(8 * r).cast())) }
}

/// Four rows of eight samples (already centred) to bytes, with saturation: `[r0, r2, r1, r3]`
/// as 64-bit chunks.
#[inline(always)]
unsafe fn pack4(r: &[__m256i]) -> [u64; 4] {
    unsafe {
        let q01 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(r[0], r[1]));
        let q23 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(r[2], r[3]));
        let bytes = _mm256_packus_epi16(q01, q23);
        std::mem::transmute::<__m256i, [u64; 4]>(bytes)
    }
}

/// `idct::columns_fit_16_bits` on rows already loaded: lane c sums column c's magnitudes
/// (capped at 2²⁰, past which the bound fails anyway, so that nothing overflows).
#[inline(always)]
unsafe fn columns_fit_16_bits(r: &[__m256i; 8]) -> bool {
    unsafe {
        let cap = _mm256_set1_epi32(1 << 20);
        let magnitude = |x| _mm256_min_epu32(_mm256_abs_epi32(x), cap);
        let mut ac = magnitude(r[1]);
        for row in &r[2..] {
            ac = _mm256_add_epi32(ac, magnitude(*row));
        }
        let bound = add(mul(magnitude(r[0]), 100), mul(ac, 139));
        let over = _mm256_cmpgt_epi32(bound, _mm256_set1_epi32(400_000));
        _mm256_movemask_epi8(over) == 0
    }
}

/// The check above on `coef`, for tests comparing it with the portable one.
#[cfg(test)]
#[target_feature(enable = "avx2")]
pub(super) fn columns_fit_16_bits_of(coef: &[i32; 64]) -> bool {
    // SAFETY: as `idct_8x8`.
    unsafe { columns_fit_16_bits(&load_rows(coef)) }
}

/// 8 × 8 samples from dequantised coefficients (natural order) at `out[0]`, rows `stride` apart,
/// returning true; or false, writing nothing, when a column's intermediates would leave 16 bits
/// (see `idct::columns_fit_16_bits`: corrupt data, for libjpeg-turbo's 16-bit arithmetic).
/// `low`: only the top-left 4 × 4 coefficients are non-zero, so both passes skip inputs 4–7
/// (the compiler folds the zeros away; the result is the same).
#[target_feature(enable = "avx2")]
#[must_use]
pub(super) fn idct_8x8(coef: &[i32; 64], low: bool, out: &mut [u8], stride: usize) -> bool {
    // SAFETY: this function runs only where AVX2 is present (its caller checks).
    unsafe {
        let r = load_rows(coef);
        if !columns_fit_16_bits(&r) {
            return false;
        }
        let pass2 = if low {
            let zero = _mm256_setzero_si256();
            let pass1 = transpose(idct8([r[0], r[1], r[2], r[3], zero, zero, zero, zero], 1 << 10, 11));
            let low_half = [pass1[0], pass1[1], pass1[2], pass1[3], zero, zero, zero, zero];
            transpose(idct8(low_half, (1 << 17) + (128 << 18), 18))
        } else {
            let pass1 = idct8(r, 1 << 10, 11);
            transpose(idct8(transpose(pass1), (1 << 17) + (128 << 18), 18))
        };
        for half in 0..2 {
            let chunks = pack4(&pass2[4 * half..4 * half + 4]);
            for (k, row) in [0, 2, 1, 3].into_iter().enumerate() {
                let y = 4 * half + row;
                out[y * stride..y * stride + 8].copy_from_slice(&chunks[k].to_le_bytes());
            }
        }
        true
    }
}

/// 4 × 4 samples (`jpeg_idct_4x4`) at `out[0]`, rows `stride` apart.
#[target_feature(enable = "avx2")]
pub(super) fn idct_4x4(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    // SAFETY: as above.
    unsafe {
        let pass1 = idct4(load_rows(coef), 1 << 11, 12);
        let zero = _mm256_setzero_si256();
        let ws = transpose([pass1[0], pass1[1], pass1[2], pass1[3], zero, zero, zero, zero]);
        // Lane y of output x: sample (x, y). Transposed back, rows y hold samples x in lanes 0..4.
        let cols = idct4(ws, (1 << 18) + (128 << 19), 19);
        let rows = transpose([cols[0], cols[1], cols[2], cols[3], zero, zero, zero, zero]);
        let chunks = pack4(&rows[..4]);
        for (k, y) in [0, 2, 1, 3].into_iter().enumerate() {
            out[y * stride..y * stride + 4].copy_from_slice(&chunks[k].to_le_bytes()[..4]);
        }
    }
}
