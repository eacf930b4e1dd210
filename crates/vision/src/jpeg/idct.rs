//! Inverse DCTs with libjpeg's integer arithmetic ("islow", `jidctint.c`, and the reduced-size
//! `jidctred.c` for 1/2, 1/4 and 1/8 scaling), bit-exact with libjpeg-turbo, which PIL decodes
//! with. Eight columns (or rows) go through each pass at once as eight lanes, which the
//! compiler vectorises, or, where the CPU has AVX2, as `idct_avx2` writes it in intrinsics.

/// Eight lanes of 32-bit integers, wrapping as libjpeg's C arithmetic would not overflow on
/// valid data and must not panic on corrupt data.
#[derive(Clone, Copy, Default)]
struct V([i32; 8]);

impl V {
    #[inline(always)]
    fn zip(self, o: V, f: impl Fn(i32, i32) -> i32) -> V {
        V(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }
    #[inline(always)]
    fn add(self, o: V) -> V {
        self.zip(o, i32::wrapping_add)
    }
    #[inline(always)]
    fn sub(self, o: V) -> V {
        self.zip(o, i32::wrapping_sub)
    }
    #[inline(always)]
    fn mul(self, c: i32) -> V {
        V(self.0.map(|x| x.wrapping_mul(c)))
    }
    #[inline(always)]
    fn shl(self, n: u32) -> V {
        V(self.0.map(|x| x.wrapping_shl(n)))
    }
    /// libjpeg's `DESCALE`: divide by `2^n`, rounding.
    #[inline(always)]
    fn descale(self, n: u32) -> V {
        V(self.0.map(|x| x.wrapping_add(1 << (n - 1)) >> n))
    }
}

#[inline(always)]
fn rows(coef: &[i32; 64]) -> [V; 8] {
    std::array::from_fn(|r| V(coef[8 * r..8 * r + 8].try_into().expect("8 lanes")))
}

#[inline(always)]
fn transpose(m: [V; 8]) -> [V; 8] {
    std::array::from_fn(|r| V(std::array::from_fn(|c| m[c].0[r])))
}

/// The 8-point inverse transform of `jpeg_idct_islow`, lane-wise, descaled by `shift`.
#[inline(always)]
fn idct8(x: [V; 8], shift: u32) -> [V; 8] {
    let z1 = x[2].add(x[6]).mul(4433);
    let tmp2 = z1.add(x[6].mul(-15137));
    let tmp3 = z1.add(x[2].mul(6270));
    let tmp0 = x[0].add(x[4]).shl(13);
    let tmp1 = x[0].sub(x[4]).shl(13);
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0.add(tmp3), tmp0.sub(tmp3), tmp1.add(tmp2), tmp1.sub(tmp2));
    let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
    let (z1, z2, z3, z4) = (t0.add(t3), t1.add(t2), t0.add(t2), t1.add(t3));
    let z5 = z3.add(z4).mul(9633);
    let (z1, z2) = (z1.mul(-7373), z2.mul(-20995));
    let z3 = z3.mul(-16069).add(z5);
    let z4 = z4.mul(-3196).add(z5);
    let t0 = t0.mul(2446).add(z1).add(z3);
    let t1 = t1.mul(16819).add(z2).add(z4);
    let t2 = t2.mul(25172).add(z2).add(z3);
    let t3 = t3.mul(12299).add(z1).add(z4);
    [
        tmp10.add(t3).descale(shift),
        tmp11.add(t2).descale(shift),
        tmp12.add(t1).descale(shift),
        tmp13.add(t0).descale(shift),
        tmp13.sub(t0).descale(shift),
        tmp12.sub(t1).descale(shift),
        tmp11.sub(t2).descale(shift),
        tmp10.sub(t3).descale(shift),
    ]
}

/// The 4-point output of `jpeg_idct_4x4` from 8 inputs (the fifth unused), descaled by `shift`.
#[inline(always)]
fn idct4(x: [V; 8], shift: u32) -> [V; 4] {
    let tmp0 = x[0].shl(14);
    let tmp2 = x[2].mul(15137).add(x[6].mul(-6270));
    let (tmp10, tmp12) = (tmp0.add(tmp2), tmp0.sub(tmp2));
    let (z1, z2, z3, z4) = (x[7], x[5], x[3], x[1]);
    let t0 = z1.mul(-1730).add(z2.mul(11893)).add(z3.mul(-17799)).add(z4.mul(8697));
    let t2 = z1.mul(-4176).add(z2.mul(-4926)).add(z3.mul(7373)).add(z4.mul(20995));
    [
        tmp10.add(t2).descale(shift),
        tmp12.add(t0).descale(shift),
        tmp12.sub(t0).descale(shift),
        tmp10.sub(t2).descale(shift),
    ]
}

#[inline(always)]
fn store(x: V, out: &mut [u8]) {
    for (o, v) in out.iter_mut().zip(x.0) {
        *o = v.wrapping_add(128).clamp(0, 255) as u8;
    }
}

#[inline(always)]
fn idct_8x8_body(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    let pass1 = idct8(rows(coef), 11);
    let pass2 = transpose(idct8(transpose(pass1), 18));
    for (y, row) in pass2.into_iter().enumerate() {
        store(row, &mut out[y * stride..y * stride + 8]);
    }
}

#[inline(always)]
fn idct_4x4_body(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    let pass1 = idct4(rows(coef), 12);
    let mut ws = [V::default(); 8];
    ws[..4].copy_from_slice(&pass1);
    let pass2 = idct4(transpose(ws), 19);
    for y in 0..4 {
        for (x, column) in pass2.iter().enumerate() {
            out[y * stride + x] = column.0[y].wrapping_add(128).clamp(0, 255) as u8;
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `jpeg_idct_2x2`.
fn idct_2x2(c: &[i32; 64], out: &mut [u8], stride: usize) {
    let odd = |x1: i32, x3: i32, x5: i32, x7: i32| {
        x7.wrapping_mul(-5906)
            .wrapping_add(x5.wrapping_mul(6967))
            .wrapping_add(x3.wrapping_mul(-10426))
            .wrapping_add(x1.wrapping_mul(29692))
    };
    let descale = |x: i32, n: u32| x.wrapping_add(1 << (n - 1)) >> n;
    let mut ws = [[0i32; 8]; 2];
    for col in [0, 1, 3, 5, 7] {
        let tmp10 = c[col].wrapping_shl(15);
        let tmp0 = odd(c[8 + col], c[24 + col], c[40 + col], c[56 + col]);
        ws[0][col] = descale(tmp10.wrapping_add(tmp0), 13);
        ws[1][col] = descale(tmp10.wrapping_sub(tmp0), 13);
    }
    for (y, w) in ws.iter().enumerate() {
        let tmp10 = w[0].wrapping_shl(15);
        let tmp0 = odd(w[1], w[3], w[5], w[7]);
        out[y * stride] = descale(tmp10.wrapping_add(tmp0), 20).wrapping_add(128).clamp(0, 255) as u8;
        out[y * stride + 1] = descale(tmp10.wrapping_sub(tmp0), 20).wrapping_add(128).clamp(0, 255) as u8;
    }
}

/// The largest zigzag index inside the top-left 4 × 4 coefficients: up to it, every earlier
/// index is inside too.
const LAST_OF_LOW_4X4: usize = 9;

/// An inverse DCT producing `size × size` samples (8, 4, 2 or 1) per block.
#[derive(Debug, Clone, Copy)]
pub(super) struct Idct {
    size: usize,
    avx2: bool,
}

impl Idct {
    pub(super) fn new(size: usize) -> Self {
        assert!(matches!(size, 1 | 2 | 4 | 8), "IDCT size {size}");
        Self { size, avx2: has_avx2() }
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Transforms the dequantised coefficients `coef` (natural order) into `size × size`
    /// samples at `out[0]`, rows `stride` apart. `last`: zigzag index of the last non-zero
    /// coefficient (0 when only DC is, which every size reduces to the same flat block).
    #[inline]
    pub(super) fn run(&self, coef: &[i32; 64], last: usize, out: &mut [u8], stride: usize) {
        if last == 0 || self.size == 1 {
            // Only the DC is non-zero when `last` is 0: the 16-bit check is on it alone.
            if self.size == 8 && coef[0].unsigned_abs() > MAX_DC_IN_16_BITS {
                return idct_8x8_16_bit(coef, out, stride);
            }
            let v = (coef[0].wrapping_add(4) >> 3).wrapping_add(128).clamp(0, 255) as u8;
            for y in 0..self.size {
                out[y * stride..y * stride + self.size].fill(v);
            }
            return;
        }
        match (self.size, self.avx2) {
            #[cfg(target_arch = "x86_64")]
            (8, true) => {
                // SAFETY: `avx2` is true only where the CPU reported AVX2.
                if !unsafe { super::idct_avx2::idct_8x8(coef, last <= LAST_OF_LOW_4X4, out, stride) } {
                    idct_8x8_16_bit(coef, out, stride);
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `avx2` is true only where the CPU reported AVX2.
            (4, true) => unsafe { super::idct_avx2::idct_4x4(coef, out, stride) },
            (8, _) if columns_fit_16_bits(coef) => idct_8x8_body(coef, out, stride),
            (8, _) => idct_8x8_16_bit(coef, out, stride),
            (4, _) => idct_4x4_body(coef, out, stride),
            _ => idct_2x2(coef, out, stride),
        }
    }
}

/// The largest DC magnitude of a DC-only block that [`columns_fit_16_bits`] admits
/// (`100 · 4000 = 400 000`).
const MAX_DC_IN_16_BITS: u32 = 4000;

/// Whether every column of `coef` keeps the 8 × 8 inverse DCT's intermediates within 16 bits:
/// a column's first-pass outputs are at most `4 (|c₀| + 1.387 Σ |cₖ|)`, kept under 2¹⁴ so that
/// the second pass's sums of two of them fit too. Then libjpeg-turbo's SIMD inverse DCT (16-bit
/// lanes, what PIL runs) and its C code (32 bits), which this module's arithmetic follows, give
/// the same samples. Any block of a valid file passes; only corrupt data fails it.
#[inline(always)]
fn columns_fit_16_bits(coef: &[i32; 64]) -> bool {
    // Lane-wise over the eight columns (the compiler vectorises it); each magnitude is capped
    // at 2²⁰, past which the bound fails anyway, so that the sums cannot overflow.
    let magnitude = |x: i32| x.unsigned_abs().min(1 << 20) as i32;
    let mut ac = [0i32; 8];
    for row in coef[8..].chunks_exact(8) {
        for (a, &x) in ac.iter_mut().zip(row) {
            *a += magnitude(x);
        }
    }
    let mut over = 0i32;
    for (&a, &dc) in ac.iter().zip(&coef[..8]) {
        over |= i32::from(100 * magnitude(dc) + 139 * a > 400_000);
    }
    over == 0
}

/// One pass of libjpeg-turbo's SIMD `jsimd_idct_islow` (`jidctint-avx2.asm`; the SSE2 and NEON
/// versions compute alike) over eight 16-bit inputs: its sums of two inputs wrap at 16 bits,
/// its products are exact 32-bit multiply-adds (`pmaddwd`), its outputs, descaled by `shift`,
/// saturate to 16 bits (`packssdw`).
fn pass_16_bit(x: [i16; 8], shift: u32) -> [i16; 8] {
    const F0298: i32 = 2446;
    const F0390: i32 = 3196;
    const F0541: i32 = 4433;
    const F0765: i32 = 6270;
    const F0899: i32 = 7373;
    const F1175: i32 = 9633;
    const F1501: i32 = 12299;
    const F1847: i32 = 15137;
    const F1961: i32 = 16069;
    const F2053: i32 = 16819;
    const F2562: i32 = 20995;
    const F3072: i32 = 25172;
    let madd = |a: i16, b: i16, ca: i32, cb: i32| (i32::from(a) * ca).wrapping_add(i32::from(b) * cb);
    let tmp3 = madd(x[2], x[6], F0541 + F0765, F0541);
    let tmp2 = madd(x[6], x[2], F0541 - F1847, F0541);
    let tmp0 = i32::from(x[0].wrapping_add(x[4])) << 13;
    let tmp1 = i32::from(x[0].wrapping_sub(x[4])) << 13;
    let (tmp10, tmp13) = (tmp0.wrapping_add(tmp3), tmp0.wrapping_sub(tmp3));
    let (tmp11, tmp12) = (tmp1.wrapping_add(tmp2), tmp1.wrapping_sub(tmp2));
    let (z3, z4) = (x[7].wrapping_add(x[3]), x[5].wrapping_add(x[1]));
    let z3 = madd(z3, z4, F1175 - F1961, F1175);
    let z4 = madd(z4, x[7].wrapping_add(x[3]), F1175 - F0390, F1175);
    let t0 = madd(x[7], x[1], F0298 - F0899, -F0899).wrapping_add(z3);
    let t1 = madd(x[5], x[3], F2053 - F2562, -F2562).wrapping_add(z4);
    let t3 = madd(x[7], x[1], -F0899, F1501 - F0899).wrapping_add(z4);
    let t2 = madd(x[5], x[3], -F2562, F3072 - F2562).wrapping_add(z3);
    let out = |v: i32| (v.wrapping_add(1 << (shift - 1)) >> shift).clamp(-32768, 32767) as i16;
    [
        out(tmp10.wrapping_add(t3)),
        out(tmp11.wrapping_add(t2)),
        out(tmp12.wrapping_add(t1)),
        out(tmp13.wrapping_add(t0)),
        out(tmp13.wrapping_sub(t0)),
        out(tmp12.wrapping_sub(t1)),
        out(tmp11.wrapping_sub(t2)),
        out(tmp10.wrapping_sub(t3)),
    ]
}

/// The 8 × 8 inverse DCT as libjpeg-turbo's SIMD code computes it, for blocks whose
/// intermediates leave 16 bits (corrupt data; see [`columns_fit_16_bits`]): the dequantised
/// coefficients are 16-bit products (`pmullw`), a block whose rows 1–7 are zero takes the
/// shortcut of its first row shifted left by 2 in 16 bits, and the samples are the second
/// pass's outputs saturated to 8 bits plus 128.
fn idct_8x8_16_bit(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    let input: [i16; 64] = std::array::from_fn(|k| coef[k] as i16);
    let mut ws = [[0i16; 8]; 8]; // ws[row][column]
    if input[8..].iter().all(|&c| c == 0) {
        for row in &mut ws {
            for (w, &c) in row.iter_mut().zip(&input[..8]) {
                *w = c.wrapping_shl(2);
            }
        }
    } else {
        for c in 0..8 {
            let column = pass_16_bit(std::array::from_fn(|k| input[8 * k + c]), 11);
            for (row, v) in ws.iter_mut().zip(column) {
                row[c] = v;
            }
        }
    }
    for (y, row) in ws.iter().enumerate() {
        let samples = pass_16_bit(*row, 18);
        for (o, v) in out[y * stride..y * stride + 8].iter_mut().zip(samples) {
            *o = (v.clamp(-128, 127) as i8 as u8).wrapping_add(128);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook inverse DCT in floating point, rounded.
    fn reference(coef: &[i32; 64]) -> [[f64; 8]; 8] {
        let c = |u: usize| if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
        std::array::from_fn(|y| {
            std::array::from_fn(|x| {
                let mut s = 0.0;
                for v in 0..8 {
                    for u in 0..8 {
                        s += c(u)
                            * c(v)
                            * f64::from(coef[v * 8 + u])
                            * (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / 16.0).cos()
                            * (((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI) / 16.0).cos();
                    }
                }
                (s / 4.0 + 128.0).clamp(0.0, 255.0)
            })
        })
    }

    fn pseudo_random_block(seed: u32) -> [i32; 64] {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        std::array::from_fn(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let spread = 400 / (1 + (i / 8 + i % 8) as i32);
            (state % (2 * spread as u32 + 1)) as i32 - spread
        })
    }

    #[test]
    fn full_size_idct_is_within_one_level_of_the_exact_transform() {
        for avx2 in [false, has_avx2()] {
            let idct = Idct { size: 8, avx2 };
            for seed in 0..200 {
                let coef = pseudo_random_block(seed);
                let mut out = [0u8; 64];
                idct.run(&coef, 63, &mut out, 8);
                let exact = reference(&coef);
                for y in 0..8 {
                    for x in 0..8 {
                        let d = (f64::from(out[y * 8 + x]) - exact[y][x]).abs();
                        assert!(d <= 1.0, "seed {seed} ({x}, {y}): {} vs {:.2}", out[y * 8 + x], exact[y][x]);
                    }
                }
            }
        }
    }

    #[test]
    fn reduced_idcts_approximate_block_means_of_the_full_one() {
        for size in [4usize, 2, 1] {
            let f = 8 / size;
            for avx2 in [false, has_avx2()] {
                let idct = Idct { size, avx2 };
                for seed in 0..100 {
                    // Smooth blocks (low frequencies only), where a reduced IDCT is a good
                    // downscale: each output is close to the mean of the full block's f × f cell.
                    let mut coef = pseudo_random_block(seed);
                    for (i, c) in coef.iter_mut().enumerate() {
                        if i / 8 >= 3 || i % 8 >= 3 {
                            *c = 0;
                        }
                    }
                    let mut out = [0u8; 64];
                    idct.run(&coef, 63, &mut out, 8);
                    let exact = reference(&coef);
                    for y in 0..size {
                        for x in 0..size {
                            let mean: f64 =
                                (0..f * f).map(|i| exact[y * f + i / f][x * f + i % f]).sum::<f64>() / (f * f) as f64;
                            let d = (f64::from(out[y * 8 + x]) - mean).abs();
                            assert!(d <= 12.0, "size {size} seed {seed}: {} vs {mean:.1}", out[y * 8 + x]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avx2_and_portable_idcts_give_the_same_bits() {
        if !has_avx2() {
            return; // nothing to compare on this CPU; the portable path is tested above
        }
        for size in [8, 4] {
            for seed in 0..500 {
                let mut coef = pseudo_random_block(seed);
                coef[0] *= 3; // DC far enough out that some outputs saturate
                let (mut fast, mut portable) = ([0u8; 64], [0u8; 64]);
                Idct { size, avx2: true }.run(&coef, 63, &mut fast, 8);
                Idct { size, avx2: false }.run(&coef, 63, &mut portable, 8);
                assert_eq!(fast, portable, "size {size} seed {seed}");
                // Low-frequency blocks take the shortcut for the top-left 4 × 4.
                for (i, c) in coef.iter_mut().enumerate() {
                    if i / 8 >= 4 || i % 8 >= 4 {
                        *c = 0;
                    }
                }
                Idct { size, avx2: true }.run(&coef, LAST_OF_LOW_4X4, &mut fast, 8);
                Idct { size, avx2: false }.run(&coef, 63, &mut portable, 8);
                assert_eq!(fast, portable, "size {size} seed {seed}, low frequencies");
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_and_portable_paths_take_the_16_bit_arithmetic_for_the_same_blocks() {
        if !has_avx2() {
            return; // nothing to compare on this CPU
        }
        // Blocks scaled to either side of the check's bound, and some holding i32's extremes
        // (which the magnitudes' cap must keep from overflowing): both checks answer alike, and
        // both paths give the same samples.
        let mut failed = 0;
        for seed in 0..3000u32 {
            // Scaled so that the block's largest column bound lands within ±10 % of 400 000.
            let mut coef = pseudo_random_block(seed);
            let bound = (0..8)
                .map(|c| 100 * coef[c].abs() + 139 * (1..8).map(|k| coef[8 * k + c].abs()).sum::<i32>())
                .max()
                .unwrap();
            let target = 360_000.0 + f64::from(seed.wrapping_mul(7919) % 80_000);
            let stretch = target / f64::from(bound.max(1));
            coef.iter_mut().for_each(|c| *c = (f64::from(*c) * stretch).round() as i32);
            match seed % 7 {
                0 => coef[8 * (1 + seed as usize % 7) + seed as usize % 8] = i32::MIN,
                1 => coef[seed as usize % 8] = i32::MAX,
                _ => {}
            }
            let fits = columns_fit_16_bits(&coef);
            // SAFETY: the CPU reported AVX2.
            assert_eq!(unsafe { super::super::idct_avx2::columns_fit_16_bits_of(&coef) }, fits, "seed {seed}");
            failed += usize::from(!fits);
            let (mut fast, mut portable) = ([0u8; 64], [0u8; 64]);
            Idct { size: 8, avx2: true }.run(&coef, 63, &mut fast, 8);
            Idct { size: 8, avx2: false }.run(&coef, 63, &mut portable, 8);
            assert_eq!(fast, portable, "seed {seed}");
        }
        assert!((300..2700).contains(&failed), "{failed} of 3000 blocks failed the check");
    }

    #[test]
    fn the_16_bit_idct_equals_the_32_bit_one_wherever_the_check_admits_a_block() {
        // The check's bound is what makes the two agree: blocks right up to it, dense and
        // sparse, DC-only among them, give the same samples both ways.
        let mut checked = 0;
        for seed in 0..4000 {
            let mut coef = pseudo_random_block(seed);
            let stretch = 1 + (seed % 40) as i32;
            for (i, c) in coef.iter_mut().enumerate() {
                *c *= stretch;
                if seed % 3 == 0 && i >= 8 {
                    *c = 0; // rows 1–7 zero: the 16-bit code's shortcut
                }
            }
            if seed % 5 == 0 {
                coef[0] = 4000 - (seed % 97) as i32; // near the DC bound
            }
            if !columns_fit_16_bits(&coef) {
                continue;
            }
            checked += 1;
            let (mut wide, mut narrow) = ([0u8; 64], [0u8; 64]);
            idct_8x8_body(&coef, &mut wide, 8);
            idct_8x8_16_bit(&coef, &mut narrow, 8);
            assert_eq!(wide, narrow, "seed {seed}");
        }
        assert!(checked > 1000, "only {checked} blocks under the bound");
    }

    #[test]
    fn blocks_past_16_bits_take_libjpeg_turbos_simd_arithmetic() {
        // A DC of 9000 (a corrupt file's): PIL's SIMD code shifts it left by 2 in 16 bits
        // (36000 wraps to -29536), so the flat block is black; libjpeg's C code gives white.
        let mut coef = [0i32; 64];
        coef[0] = 9000;
        assert!(!columns_fit_16_bits(&coef));
        for last in [0, 63] {
            let mut out = [0u8; 64];
            Idct::new(8).run(&coef, last, &mut out, 8);
            assert_eq!(out, [0u8; 64], "last {last}");
        }
        // Valid data's largest DC passes the check; the DC-only bound is the check's.
        coef[0] = 8 * 255;
        assert!(columns_fit_16_bits(&coef));
        coef[0] = MAX_DC_IN_16_BITS as i32;
        assert!(columns_fit_16_bits(&coef));
        coef[0] = -(MAX_DC_IN_16_BITS as i32) - 1;
        assert!(!columns_fit_16_bits(&coef));
    }

    #[test]
    fn dc_only_blocks_are_flat_at_every_size() {
        let mut coef = [0i32; 64];
        coef[0] = -83;
        for size in [8, 4, 2, 1] {
            let mut fast = [0u8; 64];
            let mut full = [0u8; 64];
            Idct::new(size).run(&coef, 0, &mut fast, 8);
            Idct::new(size).run(&coef, 63, &mut full, 8);
            assert_eq!(fast, full, "size {size}");
            assert_eq!(fast[0], 118, "(−83 + 4) >> 3 = −10, + 128");
        }
    }
}
