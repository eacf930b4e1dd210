//! `exp` and `erf` for f32 without branches or library calls, so that a loop over a slice that
//! calls them compiles to vector instructions.
//!
//! The transformers' GELU takes `erf` of every hidden activation forward and `erf` and `exp`
//! backward, and their softmaxes `exp` of every attention score. Through `libm`'s scalar `erff`
//! and glibc's `expf`, one call per element, GELU alone was about a tenth of a PVT-v2-b2 training
//! step on the CPU (`perf`, docs/performance.md). Here both are straight-line arithmetic on the
//! value and its bits, with `if`s that only choose between values computed either way, which the
//! compiler turns into vector selects; the results agree with the f64 functions to within two
//! units of 2⁻²³ relative (the tests below bound them; measured 0.99 for `exp`, 1.48 for `erf`).
//! The slice passes below are compiled for AVX-512, AVX2 and SSE2 and pick the widest at run time
//! (`widest!`).
//!
//! Results below f32's normal range flush to zero (`exp(x)` for `x < −87.34`), which no caller
//! here can tell from the subnormal `expf` returns: a softmax divides by a sum of at least 1, and
//! GELU's density multiplies it by the activation.

/// `ln 2` in two parts: `LN2_HI` has 9 significant bits, so `n · LN2_HI` is exact for the
/// `|n| ≤ 128` that occur, and `LN2_HI + LN2_LO` is `ln 2` to f32's precision twice over.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 · 2²³`: adding it rounds an f32 of magnitude below 2²² to an integer (to nearest, ties
/// to even), which then sits in the low bits of the sum's mantissa.
const ROUND: f32 = 12_582_912.0;
/// `ln` of the least normal f32 (2⁻¹²⁶) and of the greatest f32.
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.722_83;
/// Taylor coefficients of `eʳ` from `r²` on: on `|r| ≤ ln 2 / 2` the first term left out,
/// `r⁸/8!`, is below 6·10⁻⁹.
const EXP_TAYLOR: [f32; 6] = [1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];

/// `Σ coefficients[k] · xᵏ`, by Horner's rule.
#[inline(always)]
fn polynomial(x: f32, coefficients: &[f32]) -> f32 {
    coefficients.iter().rev().fold(0.0, |acc, &c| acc * x + c)
}

/// `eˣ`: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, `eʳ` by its Taylor polynomial, and `2ⁿ` written
/// into an f32's exponent bits (as two factors, so that `n = 128` fits). `+∞` above `ln(f32::MAX)`,
/// 0 below `ln 2⁻¹²⁶`, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // `clamp` keeps a NaN a NaN.
    let clamped = x.clamp(EXP_LO, EXP_HI);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_bits = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let e_r = 1.0 + r + r * r * polynomial(r, &EXP_TAYLOR);
    let half = n_bits >> 1;
    let two_to = |k: i32| f32::from_bits(((k + 127) << 23) as u32);
    let value = e_r * two_to(half) * two_to(n_bits - half);
    if x < EXP_LO {
        0.0
    } else if x > EXP_HI {
        f32::INFINITY
    } else {
        value
    }
}

/// Where `erf` changes from its series to `1 − erfc`.
const ERF_SERIES_END: f32 = 0.875;
/// Beyond this `erf` is 1 in f32 (`erfc(4) ≈ 1.5·10⁻⁸`, under half an ulp of 1).
const ERF_TAIL_END: f32 = 4.0;

/// `erf(x) / x` as a series in `x²`: `(2/√π) Σ (−1)ᵏ x²ᵏ / (k! (2k + 1))`, `k ≤ 10`. On
/// `|x| ≤ 0.875` the first term left out is below 3·10⁻¹¹.
const ERF_SERIES: [f32; 11] = {
    let mut c = [0.0f32; 11];
    let mut term = std::f64::consts::FRAC_2_SQRT_PI; // (−1)ᵏ (2/√π) / k!
    let mut k = 0;
    while k < 11 {
        c[k] = (term / (2 * k + 1) as f64) as f32;
        term = -term / (k + 1) as f64;
        k += 1;
    }
    c
};

/// `h(a) = ln(erfc(a)) + a²` on `[0.875, 4]` as a polynomial in `s = (a − 2.4375) · 0.64`
/// (`s ∈ [−1, 1]`): a least-squares Chebyshev fit of degree 8 at 400 Chebyshev nodes to f64's
/// `erfc` (numpy), converted to powers of `s` and rounded to f32. `|error| < 1.3·10⁻⁸` in f64;
/// evaluated in f32, within 1.5·10⁻⁷ (the rounding of `h ≈ −1.5`), i.e. a relative error that
/// small in `erfc(a) = exp(h(a) − a²)`.
const ERFC_EXPONENT: [f32; 9] = [
    -1.534_551,
    -0.562_224_03,
    0.142_075_54,
    -0.043_550_79,
    0.013_715_385,
    -0.004_193_816,
    0.001_214_064_7,
    -0.000_320_804_16,
    5.703_640_6e-5,
];
const ERFC_MID: f32 = 2.4375;
const ERFC_INV_HALF_WIDTH: f32 = 0.64;

/// The error function: its series near 0, `±(1 − erfc(|x|))` beyond 0.875, `±1` beyond 4 (and
/// for `±∞`), NaN for NaN.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let series = x * polynomial(x * x, &ERF_SERIES);
    let tail_at = a.clamp(ERF_SERIES_END, ERF_TAIL_END);
    let s = (tail_at - ERFC_MID) * ERFC_INV_HALF_WIDTH;
    let erfc = exp(polynomial(s, &ERFC_EXPONENT) - tail_at * tail_at);
    let tail = (1.0 - erfc).copysign(x);
    if a <= ERF_SERIES_END { series } else { tail }
}

/// Defines the function `$name` as its body compiled three times, for AVX-512, for AVX2 and for
/// x86-64's baseline (SSE2), calling the first the CPU reports: one binary uses 16, 8 or 4 lanes
/// in the loops the body has. The body and the `#[inline(always)]` functions it calls are inlined
/// into each copy (closures and other calls are not: LLVM does not inline them across the target
/// features, so a loop calling one stays scalar). Every copy gives the same bits: none fuses a
/// multiply with an add (Rust never contracts them), and the loops' lanes do not interact. On
/// this project's AVX-512 machine `erf` over a slice ran 4.4× faster with AVX-512 than with SSE2,
/// 2.4× with AVX2 (docs/performance.md, session 24).
macro_rules! widest {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$gen:ident: $bound:path>)? ($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$gen: $bound>)? ($($arg: $ty),*) {
            #[inline(always)]
            fn run $(<$gen: $bound>)? ($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512 $(<$gen: $bound>)? ($($arg: $ty),*) {
                run($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2 $(<$gen: $bound>)? ($($arg: $ty),*) {
                run($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            run($($arg),*)
        }
    };
}
pub(crate) use widest;

widest! {
    /// PyTorch's exact GELU, `out[i] = x·Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2`.
    pub(crate) fn gelu(out: &mut [f32], xs: &[f32]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

widest! {
    /// GELU's input gradient, `dx[i] = dy·(Φ(x) + x·φ(x))`, `φ` the standard normal density.
    pub(crate) fn gelu_backward(dx: &mut [f32], xs: &[f32], dys: &[f32]) {
        for ((o, &x), &dy) in dx.iter_mut().zip(xs).zip(dys) {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
            *o = dy * (cdf + x * pdf);
        }
    }
}

widest! {
    /// `values[i] = exp(values[i] − shift)`: a softmax row's numerators, `shift` its maximum.
    pub(crate) fn exp_shifted(values: &mut [f32], shift: f32) {
        for v in values.iter_mut() {
            *v = exp(*v - shift);
        }
    }
}

/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[cfg(test)]
mod tests {
    use super::*;

    /// Units in the last place of f32 at `reference`.
    fn ulps(value: f32, reference: f64) -> f64 {
        let ulp = f64::from(f32::EPSILON) * reference.abs().max(f64::from(f32::MIN_POSITIVE));
        (f64::from(value) - reference).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulps_of_f64_over_f32s_normal_range() {
        let mut worst = (0.0, 0.0f32);
        let mut x = EXP_LO + 1e-3;
        while x < EXP_HI - 1e-3 {
            let err = ulps(exp(x), f64::from(x).exp());
            if err > worst.0 {
                worst = (err, x);
            }
            x += 3.7e-4;
        }
        assert!(worst.0 <= 2.0, "exp: {:.2} ulps at x = {}", worst.0, worst.1);
        // Exact where f32's own exp is.
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
    }

    #[test]
    fn exp_edges_are_those_of_expf_but_for_subnormals() {
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // The largest finite results are still finite and close.
        let top = 88.72;
        assert!(ulps(exp(top), f64::from(top).exp()) <= 2.0, "{}", exp(top));
        let bottom = -87.33;
        assert!(ulps(exp(bottom), f64::from(bottom).exp()) <= 2.0, "{}", exp(bottom));
    }

    #[test]
    fn erf_is_within_two_ulps_of_f64_over_both_parts() {
        let mut worst = (0.0, 0.0f32);
        let mut x = -5.0f32;
        while x < 5.0 {
            let err = ulps(erf(x), candle_core::cpu::erf::erf_f64(f64::from(x)));
            if err > worst.0 {
                worst = (err, x);
            }
            x += 1.3e-5;
        }
        assert!(worst.0 <= 2.0, "erf: {:.2} ulps at x = {}", worst.0, worst.1);
        // Around 0, where a relative error shows.
        for x in [1e-30f32, 1e-10, 1e-5, -3e-3, 0.1] {
            assert!(ulps(erf(x), candle_core::cpu::erf::erf_f64(f64::from(x))) <= 1.0, "erf({x})");
        }
    }

    #[test]
    fn erf_edges_keep_signs_limits_and_nan() {
        assert_eq!(erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-4.5), -1.0);
        assert!(erf(f32::NAN).is_nan());
        // Odd, exactly, on both parts.
        for x in [0.3f32, 0.875, 0.876, 2.0, 3.9] {
            assert_eq!(erf(-x), -erf(x), "erf(-{x})");
        }
    }

    /// The slice passes, on whatever vectors this CPU dispatches to, give the bits of the same
    /// formula one element at a time, over values that reach every part of `erf` and `exp`.
    #[test]
    fn slice_passes_equal_their_formula_element_by_element() {
        let xs: Vec<f32> =
            (0..4099).map(|i| (i as f32 - 2049.0) * 0.004_9).chain([f32::NAN, 0.0, -0.0, 1e-20]).collect();
        let dys: Vec<f32> = xs.iter().map(|x| 1.0 - 0.3 * x).collect();
        let same = |name: &str, got: &[f32], want: &[f32]| {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{name}[{i}] (x = {}): {g} vs {w}",
                    xs[i]
                );
            }
        };
        let mut out = vec![0.0; xs.len()];
        gelu(&mut out, &xs);
        let want: Vec<f32> = xs.iter().map(|&x| 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))).collect();
        same("gelu", &out, &want);
        gelu_backward(&mut out, &xs, &dys);
        let want: Vec<f32> = xs
            .iter()
            .zip(&dys)
            .map(|(&x, &dy)| {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                dy * (cdf + x * (FRAC_1_SQRT_2PI * exp(-0.5 * x * x)))
            })
            .collect();
        same("gelu_backward", &out, &want);
        let mut shifted = xs.clone();
        exp_shifted(&mut shifted, 3.0);
        let want: Vec<f32> = xs.iter().map(|&x| exp(x - 3.0)).collect();
        same("exp_shifted", &shifted, &want);
    }
}
