//! `exp` and the standard normal's distribution function and density for f32, without branches
//! or library calls, so that a loop over a slice that calls them compiles to vector
//! instructions; and GELU's passes and the softmax numerators as such loops.
//!
//! The transformers' GELU needs `Φ(x)` of every hidden activation forward and `Φ` and `φ`
//! backward, and their softmaxes `exp` of every attention score. Through `libm`'s scalar `erff`
//! and glibc's `expf`, one call per element, GELU alone was about a tenth of a PVT-v2-b2 training
//! step on the CPU (`perf`, docs/performance.md). Here each is straight-line arithmetic on the
//! value and its bits, with `if`s that only choose between values computed either way, which the
//! compiler turns into vector selects. `exp` agrees with f64's to within two units of 2⁻²³
//! relative (measured 0.99); GELU, whose `Φ` comes from one fit of `erfcx` sharing its `exp` with
//! `φ` ([`normal`]), to within 8 on `|x| ≤ 5`, its lower tail included, and its derivative to
//! 3·10⁻⁷ (the tests below bound them). The slice passes are compiled for AVX-512, AVX2 and SSE2
//! and pick the widest at run time (`widest!`).
//!
//! Results below f32's normal range flush to zero (`exp(x)` for `x < −87.34`), which no caller
//! here can tell from the subnormal `expf` returns: a softmax divides by a sum of at least 1, and
//! GELU's tail and density multiply it by the activation.

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

/// Defines the function `$name` as its body compiled three times, for AVX-512, for AVX2 and for
/// x86-64's baseline (SSE2), calling the first the CPU reports: one binary uses 16, 8 or 4 lanes
/// in the loops the body has. The body and the `#[inline(always)]` functions it calls are inlined
/// into each copy (closures and other calls are not: LLVM does not inline them across the target
/// features, so a loop calling one stays scalar). Every copy gives the same bits: none fuses a
/// multiply with an add (Rust never contracts them), and the loops' lanes do not interact. On
/// this project's AVX-512 machine a branch-free `erf` over a slice (this module's first GELU,
/// since replaced by [`normal`]) ran 4.4× faster with AVX-512 than with SSE2, 2.4× with AVX2
/// (docs/performance.md, session 24).
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
    /// PyTorch's exact GELU, `out[i] = x·Φ(x)`, Φ the standard normal's distribution function.
    pub(crate) fn gelu(out: &mut [f32], xs: &[f32]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = x * normal(x).0;
        }
    }
}

widest! {
    /// GELU's input gradient, `dx[i] = dy·(Φ(x) + x·φ(x))`, φ the standard normal density.
    pub(crate) fn gelu_backward(dx: &mut [f32], xs: &[f32], dys: &[f32]) {
        for ((o, &x), &dy) in dx.iter_mut().zip(xs).zip(dys) {
            let (cdf, pdf) = normal(x);
            *o = dy * (cdf + x * pdf);
        }
    }
}

/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `p` of `t = 1/(1 + p·a)` (Abramowitz and Stegun's 7.1.26 uses the same).
const TAIL_P: f32 = 0.327_591_1;
/// `t` runs over `(0, 1]`; on `a ∈ [0, 6]`, over `[0.3372, 1]`, mapped to `s ∈ [−1, 1]` by
/// `s = (t − TAIL_MID) · TAIL_INV_HALF_WIDTH`.
const TAIL_MID: f32 = 0.668_603;
const TAIL_INV_HALF_WIDTH: f32 = 3.017_528_8;
/// `erfcx(a) / t = erfc(a)·e^{a²} / t` as a polynomial in `s`: a least-squares Chebyshev fit of
/// degree 7 in relative error at 800 Chebyshev nodes of `a ∈ [0, 6]` to f64's `erfc` (numpy),
/// converted to powers of `s` and rounded to f32: within 2.5·10⁻⁷ relative in f32.
const ERFCX_OVER_T: [f32; 8] = [
    0.477_811_04,
    0.310_312_06,
    0.148_507_73,
    0.051_136_09,
    0.011_466_77,
    0.001_048_923,
    -0.000_218_954_24,
    -6.373_4e-5,
];

/// `(Φ(x), φ(x))`, the standard normal's distribution function and density, sharing one `exp`:
/// the lower tail `Φ(−|x|) = erfc(a)/2 = erfcx(a)·e^{−x²/2}/2` with `a = |x|/√2`, `erfcx` from
/// [`ERFCX_OVER_T`], and `Φ(x) = 1 − Φ(−x)` above 0. The tail is computed directly rather than
/// as `1 + erf(x/√2)` (PyTorch's form), so it keeps its relative precision far below 0.
#[inline(always)]
fn normal(x: f32) -> (f32, f32) {
    let gauss = exp(-0.5 * x * x);
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + TAIL_P * a);
    let s = (t - TAIL_MID) * TAIL_INV_HALF_WIDTH;
    let lower_tail = 0.5 * t * polynomial(s, &ERFCX_OVER_T) * gauss;
    let cdf = if x > 0.0 { 1.0 - lower_tail } else { lower_tail };
    (cdf, FRAC_1_SQRT_2PI * gauss)
}

widest! {
    /// `values[i] = exp(values[i] − shift)`: a softmax row's numerators, `shift` its maximum.
    pub(crate) fn exp_shifted(values: &mut [f32], shift: f32) {
        for v in values.iter_mut() {
            *v = exp(*v - shift);
        }
    }
}

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

    /// The slice passes, on whatever vectors this CPU dispatches to, give the bits of the same
    /// formula one element at a time, over values that reach every part of `normal` and `exp`.
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
        let want: Vec<f32> = xs.iter().map(|&x| x * normal(x).0).collect();
        same("gelu", &out, &want);
        gelu_backward(&mut out, &xs, &dys);
        let want: Vec<f32> = xs
            .iter()
            .zip(&dys)
            .map(|(&x, &dy)| {
                let (cdf, pdf) = normal(x);
                dy * (cdf + x * pdf)
            })
            .collect();
        same("gelu_backward", &out, &want);
        let mut shifted = xs.clone();
        exp_shifted(&mut shifted, 3.0);
        let want: Vec<f32> = xs.iter().map(|&x| exp(x - 3.0)).collect();
        same("exp_shifted", &shifted, &want);
    }

    /// GELU and its derivative against f64 (libm's `erfc`): the value within 8 units of 2⁻²³
    /// relative wherever `|x| ≤ 5` (measured 6.77 at −4.56: the rounding of `x²` in `e^{−x²/2}`
    /// grows with it), its lower tail included, where `1 + erf` would lose it; the derivative
    /// (which crosses 0 near −0.75) within 3·10⁻⁷ absolute (measured 2.2·10⁻⁷).
    #[test]
    fn gelu_and_its_derivative_match_f64() {
        let xs: Vec<f32> = (0..=200_000).map(|i| -5.0 + i as f32 * 5e-5).collect();
        let (mut value, mut slope) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        gelu(&mut value, &xs);
        gelu_backward(&mut slope, &xs, &vec![1.0; xs.len()]);
        let (mut worst_value, mut worst_slope) = ((0.0, 0.0f32), (0.0, 0.0f32));
        for ((&x, &v), &d) in xs.iter().zip(&value).zip(&slope) {
            let x64 = f64::from(x);
            let cdf = 0.5 * candle_core::cpu::erf::erfc_f64(-x64 / std::f64::consts::SQRT_2);
            let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let value_err = ulps(v, x64 * cdf);
            let slope_err = (f64::from(d) - (cdf + x64 * pdf)).abs();
            if value_err > worst_value.0 {
                worst_value = (value_err, x);
            }
            if slope_err > worst_slope.0 {
                worst_slope = (slope_err, x);
            }
        }
        assert!(worst_value.0 <= 8.0, "gelu: {:.2} units at x = {}", worst_value.0, worst_value.1);
        assert!(worst_slope.0 <= 3e-7, "gelu': {:.2e} at x = {}", worst_slope.0, worst_slope.1);
    }
}
