//! Planes to interleaved RGB: libjpeg-turbo's "fancy" (triangular) chroma upsampling
//! (`h2v1_fancy_upsample`, `h2v2_fancy_upsample`, `h1v2_fancy_upsample`, with the image's edge
//! samples replicated) or its replication for other factors, its fixed-point YCbCr → RGB
//! conversion (`jdcolor.c`), and four-component files as PIL converts them to RGB.

use super::Plane;
use super::header::Color;

/// `FIX(x)` of `jdcolor.c`: `x · 2^16`, rounded.
const CR_R: i32 = 91_881; // 1.40200
const CB_B: i32 = 116_130; // 1.77200
const CR_G: i32 = -46_802; // −0.71414
const CB_G: i32 = -22_554; // −0.34414
const HALF: i32 = 1 << 15;

/// Appends the output pixels `out_x × out_y` (scaled-image coordinates) of `planes` (the
/// frame's components, read as `color`) as RGB to `rgb`, a row at a time (each row is zeroed
/// just before it is written, while in cache, rather than the whole image beforehand).
pub(super) fn to_rgb(planes: &[Plane], color: Color, out_x: (usize, usize), out_y: (usize, usize), rgb: &mut Vec<u8>) {
    let n = out_x.1 - out_x.0;
    let mut scratch = Scratch::default();
    let mut bufs: [Vec<u8>; 4] = Default::default();
    let mut converted = Vec::new();
    for y in out_y.0..out_y.1 {
        let start = rgb.len();
        rgb.resize(start + n * 3, 0);
        let out = &mut rgb[start..];
        let [b0, b1, b2, b3] = &mut bufs;
        let first = plane_row(&planes[0], y, out_x, &mut scratch, b0);
        if color == Color::Gray {
            for (px, &l) in out.chunks_exact_mut(3).zip(first) {
                px.fill(l);
            }
            continue;
        }
        let second = plane_row(&planes[1], y, out_x, &mut scratch, b1);
        let third = plane_row(&planes[2], y, out_x, &mut scratch, b2);
        match color {
            Color::YCbCr => ycc_to_rgb(first, second, third, out),
            Color::Rgb => {
                for (((px, &r), &g), &b) in out.chunks_exact_mut(3).zip(first).zip(second).zip(third) {
                    px.copy_from_slice(&[r, g, b]);
                }
            }
            Color::Cmyk => {
                let k = plane_row(&planes[3], y, out_x, &mut scratch, b3);
                cmyk_to_rgb([first, second, third, k], out);
            }
            Color::Ycck => {
                // libjpeg's `ycck_cmyk_convert` gives C = 255 − R (R as YCbCr → RGB computes
                // it), likewise M and Y, and K as stored; then as CMYK.
                converted.resize(n * 3, 0);
                ycc_to_rgb(first, second, third, &mut converted);
                let [c, m, ye]: [Vec<u8>; 3] =
                    std::array::from_fn(|i| converted.iter().skip(i).step_by(3).map(|&v| 255 - v).collect());
                let k = plane_row(&planes[3], y, out_x, &mut scratch, b3);
                cmyk_to_rgb([&c, &m, &ye, k], out);
            }
            Color::Gray => unreachable!("handled above"),
        }
    }
}

/// libjpeg's CMYK samples as PIL turns them into RGB: it reads four-component JPEGs as Adobe's
/// inverted CMYK (raw mode `CMYK;I`: each sample `255 − v`), and `convert("RGB")` computes
/// `R = (255 − K) − C·(255 − K)/255` with its `MULDIV255` rounding (`cmyk2rgb`, Convert.c).
fn cmyk_to_rgb([c, m, y, k]: [&[u8]; 4], rgb: &mut [u8]) {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    for ((((px, &c), &m), &y), &k) in rgb.chunks_exact_mut(3).zip(c).zip(m).zip(y).zip(k) {
        // After PIL's inversion: ink = 255 − sample; 255 − ink K is the sample itself.
        let nk = i32::from(k);
        for (out, sample) in px.iter_mut().zip([c, m, y]) {
            *out = (nk - muldiv255(255 - i32::from(sample), nk)).clamp(0, 255) as u8;
        }
    }
}

#[derive(Default)]
struct Scratch {
    sums: Vec<i32>,
    pairs: Vec<u8>,
}

/// The samples of `plane` under output row `y`, columns `out_x`, upsampled as libjpeg-turbo
/// does: fancy 2 × 1 and 2 × 2 (`h2v1_fancy_upsample`, `h2v2_fancy_upsample`), fancy 1 × 2
/// (`h1v2_fancy_upsample`), else replicated (`int_upsample`).
fn plane_row<'a>(
    plane: &'a Plane,
    y: usize,
    out_x: (usize, usize),
    scratch: &mut Scratch,
    buf: &'a mut Vec<u8>,
) -> &'a [u8] {
    let n = out_x.1 - out_x.0;
    let cy = y / plane.up_v;
    let near = plane.row(cy);
    let far = if plane.fancy_v {
        let far = if y.is_multiple_of(2) { cy.saturating_sub(1) } else { (cy + 1).min(plane.samples_h - 1) };
        Some(plane.row(far))
    } else {
        None
    };
    if plane.up_h == 1 {
        let at = out_x.0 - plane.origin_x;
        return match far {
            None => &near[at..][..n],
            Some(far) => {
                let bias = if y.is_multiple_of(2) { 1 } else { 2 };
                buf.clear();
                buf.extend(
                    near[at..][..n]
                        .iter()
                        .zip(&far[at..][..n])
                        .map(|(&a, &b)| ((3 * u16::from(a) + u16::from(b) + bias) >> 2) as u8),
                );
                buf
            }
        };
    }
    if !plane.fancy_h {
        buf.clear();
        buf.extend((out_x.0..out_x.1).map(|x| near[x / plane.up_h - plane.origin_x]));
        return buf;
    }
    // Sample columns lo..=hi cover the output; their neighbours are clamped to the image.
    let (lo, hi) = (out_x.0 / 2, (out_x.1 - 1) / 2);
    let first = lo.saturating_sub(1);
    let last = (hi + 1).min(plane.samples_w - 1);
    let local = |c: usize| c - plane.origin_x;
    let sums = &mut scratch.sums;
    sums.clear();
    sums.push(0); // the left neighbour of `lo`, set below
    match far {
        Some(far) => sums.extend(
            near[local(lo)..=local(hi)]
                .iter()
                .zip(&far[local(lo)..=local(hi)])
                .map(|(&a, &b)| 3 * i32::from(a) + i32::from(b)),
        ),
        None => sums.extend(near[local(lo)..=local(hi)].iter().map(|&a| i32::from(a))),
    }
    let column = |c: usize| match far {
        Some(far) => 3 * i32::from(near[local(c)]) + i32::from(far[local(c)]),
        None => i32::from(near[local(c)]),
    };
    sums[0] = column(first);
    sums.push(column(last));
    let pairs = &mut scratch.pairs;
    pairs.clear();
    pairs.resize(2 * (hi - lo + 1), 0);
    if far.is_some() {
        for (pair, w) in pairs.chunks_exact_mut(2).zip(sums.windows(3)) {
            pair[0] = ((3 * w[1] + w[0] + 8) >> 4) as u8;
            pair[1] = ((3 * w[1] + w[2] + 7) >> 4) as u8;
        }
    } else {
        for (pair, w) in pairs.chunks_exact_mut(2).zip(sums.windows(3)) {
            pair[0] = ((3 * w[1] + w[0] + 1) >> 2) as u8;
            pair[1] = ((3 * w[1] + w[2] + 2) >> 2) as u8;
        }
    }
    buf.clear();
    buf.extend_from_slice(&pairs[out_x.0 - 2 * lo..][..n]);
    buf
}

/// libjpeg's YCbCr → RGB, per pixel: `R = Y + 1.402 Cr′`, `G = Y − 0.34414 Cb′ − 0.71414 Cr′`,
/// `B = Y + 1.772 Cb′` in 16-bit fixed point (`Cb′ = Cb − 128`), clamped to 0..=255.
fn ycc_to_rgb(luma: &[u8], cb: &[u8], cr: &[u8], rgb: &mut [u8]) {
    // SAFETY: `ycc_to_rgb_avx2` runs only where the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    let done =
        if std::arch::is_x86_feature_detected!("avx2") { unsafe { ycc_to_rgb_avx2(luma, cb, cr, rgb) } } else { 0 };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    ycc_to_rgb_portable(&luma[done..], &cb[done..], &cr[done..], &mut rgb[3 * done..]);
}

/// [`ycc_to_rgb`] eight pixels at a time while 32 bytes of output remain; returns the pixels done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ycc_to_rgb_avx2(luma: &[u8], cb: &[u8], cr: &[u8], rgb: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let n = luma.len().min(cb.len()).min(cr.len()).min(rgb.len() / 3);
    let mut i = 0;
    // Each step stores 2 × 16 bytes at 3i and 3i + 12: 28 bytes past 3i must exist.
    while i + 8 <= n && 3 * i + 28 <= rgb.len() {
        // SAFETY: loads read 8 bytes at i < n - 7 of each input; stores write 16 bytes at
        // 3i and 3i + 12, inside `rgb` by the loop condition.
        unsafe {
            let load = |s: &[u8]| _mm256_cvtepu8_epi32(_mm_loadl_epi64(s.as_ptr().add(i).cast()));
            let (l, b, r) = (load(luma), load(cb), load(cr));
            let (b, r) = (_mm256_sub_epi32(b, _mm256_set1_epi32(128)), _mm256_sub_epi32(r, _mm256_set1_epi32(128)));
            let half = _mm256_set1_epi32(HALF);
            let mul = |x, c| _mm256_mullo_epi32(x, _mm256_set1_epi32(c));
            let red = _mm256_add_epi32(l, _mm256_srai_epi32::<16>(_mm256_add_epi32(mul(r, CR_R), half)));
            let green = _mm256_add_epi32(
                l,
                _mm256_srai_epi32::<16>(_mm256_add_epi32(_mm256_add_epi32(mul(b, CB_G), half), mul(r, CR_G))),
            );
            let blue = _mm256_add_epi32(l, _mm256_srai_epi32::<16>(_mm256_add_epi32(mul(b, CB_B), half)));
            let clamp = |x| _mm256_min_epi32(_mm256_max_epi32(x, _mm256_setzero_si256()), _mm256_set1_epi32(255));
            let packed = _mm256_or_si256(
                clamp(red),
                _mm256_or_si256(_mm256_slli_epi32::<8>(clamp(green)), _mm256_slli_epi32::<16>(clamp(blue))),
            );
            // Per 128-bit lane: 4 pixels of 4 bytes to 12 bytes (the last 4 zeroed).
            let shuffle = _mm256_setr_epi8(
                0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1,
                -1, -1,
            );
            let bytes = _mm256_shuffle_epi8(packed, shuffle);
            let out = rgb.as_mut_ptr().add(3 * i);
            _mm_storeu_si128(out.cast(), _mm256_castsi256_si128(bytes));
            _mm_storeu_si128(out.add(12).cast(), _mm256_extracti128_si256::<1>(bytes));
        }
        i += 8;
    }
    i
}

fn ycc_to_rgb_portable(luma: &[u8], cb: &[u8], cr: &[u8], rgb: &mut [u8]) {
    for (((px, &l), &b), &r) in rgb.chunks_exact_mut(3).zip(luma).zip(cb).zip(cr) {
        let (l, b, r) = (i32::from(l), i32::from(b) - 128, i32::from(r) - 128);
        px[0] = (l + ((CR_R * r + HALF) >> 16)).clamp(0, 255) as u8;
        px[1] = (l + ((CB_G * b + HALF + CR_G * r) >> 16)).clamp(0, 255) as u8;
        px[2] = (l + ((CB_B * b + HALF) >> 16)).clamp(0, 255) as u8;
    }
}
