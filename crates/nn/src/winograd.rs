//! 3×3 convolutions with stride 1 and padding 1 on the CPU by Winograd's minimal filtering
//! F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
//! forward and both gradients as sixteen matrix products each, over 4×4 input tiles that
//! overlap by two.
//!
//! An im2col product multiplies every output pixel by nine weights per input channel; here a
//! 2×2 block of outputs takes sixteen products, four per pixel: 2.25× fewer multiply-adds on
//! maps of even size (a 7×7 map is covered by 4×4 tiles of 2×2, 64 outputs for 49). The column
//! matrix is also smaller: 16 values per tile (4 pixels) against im2col's 9 per pixel.
//!
//! ```text
//! tile transforms   V = Bᵀ d B (input 4×4)   U = G g Gᵀ (weight 3×3 → 4×4)   Y = Aᵀ M A (2×2)
//! forward           M[ξ]  = U[ξ] · V[ξ]                      [O/g × C/g] · [C/g × tiles]
//! input grad        the forward of `dout` with each group's weights transposed and turned 180°
//! weight grad       dU[ξ] = dM[ξ] · V[ξ]ᵀ,  dM = A dY Aᵀ,  dg = Gᵀ dU G
//! ```
//!
//! for each of the 16 positions ξ of a tile. The weight gradient follows from the forward being
//! linear in `U` and `U` linear in `g`. Rounding differs from im2col's: in f32 the outputs agree
//! to about 1e-6 of their scale (the transforms add and subtract up to four values and halve).

use candle_core::WithDType;
use rayon::prelude::*;

use crate::conv_op::even_block;
use crate::gemm_util::matmul_serial;
use crate::scratch::Scratch;

/// Positions of a 4×4 tile: one matrix product each.
const XI: usize = 16;
/// Tile values per batch block, in elements (`[C, 16, tiles]`; 1 Mi values = 4 MiB in f32), so
/// that a block's tile matrices stay in the caches between their transform and their products:
/// 0.63–0.98× the time of 32 MiB blocks from 112² to 14² maps (forward + backward, Zen 4), the
/// weight gradient's products, which read both matrices along their rows, gaining most.
const MAX_BLOCK_ELEMENTS: usize = 1 << 20;

/// A 3×3 convolution with stride 1, padding 1 and dilation 1, the output as large as the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Winograd {
    pub(crate) batch: usize,
    pub(crate) in_c: usize,
    pub(crate) out_c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) groups: usize,
}

impl Winograd {
    fn cg(&self) -> usize {
        self.in_c / self.groups
    }

    fn og(&self) -> usize {
        self.out_c / self.groups
    }

    /// Tile rows and columns: 2×2 outputs each, the last ones partly past an odd edge.
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }

    fn tiles_per_image(&self) -> usize {
        let (th, tw) = self.tiles();
        th * tw
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Images per batch block: as many as fit the budget for the larger of the two tile
    /// matrices (input and output channels), the blocks as even as the batch allows.
    fn block(&self) -> usize {
        let per_image = self.in_c.max(self.out_c) * XI * self.tiles_per_image();
        even_block(self.batch, MAX_BLOCK_ELEMENTS / per_image.max(1))
    }

    /// The batch blocks, as (first image, images).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (block, batch) = (self.block(), self.batch);
        (0..batch).step_by(block).map(move |first| (first, block.min(batch - first)))
    }

    /// The tile matrix `V` (`[C][16][tiles]`) of images `first..first + n` of `x`, in `buffer`.
    fn transformed_input<'a, T: WithDType>(
        &self,
        x: &[T],
        (first, n): (usize, usize),
        buffer: &'a mut Scratch<T>,
    ) -> &'a [T] {
        let v = buffer.slice(self.in_c * XI * n * self.tiles_per_image(), T::zero());
        input_transform(self, &x[first * self.in_c * self.hw()..(first + n) * self.in_c * self.hw()], n, v);
        v
    }

    /// The same convolution run backwards: `dout` in, the input gradient out.
    fn transposed(&self) -> Self {
        Self { in_c: self.out_c, out_c: self.in_c, ..*self }
    }
}

/// `[N, O, H, W]` from `x: [N, C, H, W]` and `w: [O, C/g, 3, 3]`.
pub(crate) fn forward<T: WithDType>(s: &Winograd, x: &[T], w: &[T]) -> Vec<T> {
    let mut u_buffer = Scratch::take();
    let u = weight_transform(w, &mut u_buffer);
    let (og, cg) = (s.og(), s.cg());
    // U[ξ] of group g: `[O/g × C/g]`, rows `cg` apart.
    convolve(s, x, |xi, g| (&u[(xi * s.out_c + g * og) * cg..], cg, 1))
}

/// `dx: [N, C, H, W]` from `dout: [N, O, H, W]` and `w: [O, C/g, 3, 3]`: the forward of `dout`
/// with each group's weight matrix transposed and every filter turned by 180°.
///
/// Turning a filter `g` by 180° is `J g J` (`J` reverses three rows), and `G J = P G` with `P`
/// swapping rows 0 and 3 of four, so its transform is `P (G g Gᵀ) Pᵀ`: the forward's `U` with
/// tile positions swapped by [`TURNED`] and each group's matrix read transposed. No second
/// weight transform, no turned copy of `w`.
pub(crate) fn backward_input<T: WithDType>(s: &Winograd, dout: &[T], w: &[T]) -> Vec<T> {
    let mut u_buffer = Scratch::take();
    let u = weight_transform(w, &mut u_buffer);
    let (og, cg) = (s.og(), s.cg());
    // U[TURNED[ξ]] of group g transposed: `[C/g × O/g]`, element (c, o) at `o · cg + c`.
    convolve(&s.transposed(), dout, |xi, g| (&u[(TURNED[xi] * s.out_c + g * og) * cg..], 1, cg))
}

/// The position of each tile position `ξ = 4i + j` in the transform of a filter turned by 180°:
/// `4 p(i) + p(j)` with `p` swapping 0 and 3.
const TURNED: [usize; XI] = {
    const P: [usize; 4] = [3, 1, 2, 0];
    let mut turned = [0; XI];
    let mut xi = 0;
    while xi < XI {
        turned[xi] = P[xi / 4] * 4 + P[xi % 4];
        xi += 1;
    }
    turned
};

/// `[N, O, H, W]` from `x: [N, C, H, W]` through the sixteen products `M[ξ] = U[ξ] · V[ξ]` per
/// group, `u(ξ, g)` giving `U[ξ]` of group g (`[O/g × C/g]`) as (values, row stride, column
/// stride).
fn convolve<'u, T: WithDType>(
    s: &Winograd,
    x: &[T],
    u: impl Fn(usize, usize) -> (&'u [T], usize, usize) + Sync,
) -> Vec<T> {
    let tpi = s.tiles_per_image();
    let mut out = vec![T::zero(); s.batch * s.out_c * s.hw()];
    let (mut v_buffer, mut m_buffer) = (Scratch::take(), Scratch::take());
    for (first, n) in s.blocks() {
        let tiles = n * tpi;
        let v = s.transformed_input(x, (first, n), &mut v_buffer);
        let m = m_buffer.slice(XI * s.out_c * tiles, T::zero());
        // V is [C][16][tiles], M [16][O][tiles].
        let (og, cg) = (s.og(), s.cg());
        m.par_chunks_mut(s.out_c * tiles).enumerate().for_each(|(xi, m_xi)| {
            for g in 0..s.groups {
                matmul_serial(
                    (og, tiles, cg),
                    (&mut m_xi[g * og * tiles..(g + 1) * og * tiles], tiles, 1),
                    false,
                    u(xi, g),
                    (&v[(g * cg * XI + xi) * tiles..], XI * tiles, 1),
                );
            }
        });
        output_transform(s, m, n, &mut out[first * s.out_c * s.hw()..(first + n) * s.out_c * s.hw()]);
    }
    out
}

/// `dw: [O, C/g, 3, 3]` from `x: [N, C, H, W]` and `dout: [N, O, H, W]`.
pub(crate) fn backward_weight<T: WithDType>(s: &Winograd, x: &[T], dout: &[T]) -> Vec<T> {
    let (og, cg, tpi) = (s.og(), s.cg(), s.tiles_per_image());
    // dU[ξ] = Σ over blocks of dM[ξ] · V[ξ]ᵀ: [16][O][C/g], written by the first block.
    let mut du_buffer = Scratch::take();
    let du = du_buffer.slice(XI * s.out_c * cg, T::zero());
    let (mut v_buffer, mut dm_buffer) = (Scratch::take(), Scratch::take());
    for (first, n) in s.blocks() {
        let tiles = n * tpi;
        let v = s.transformed_input(x, (first, n), &mut v_buffer);
        let dm = dm_buffer.slice(s.out_c * XI * tiles, T::zero());
        output_gradient_transform(s, &dout[first * s.out_c * s.hw()..(first + n) * s.out_c * s.hw()], n, dm);
        let dm = &*dm;
        du.par_chunks_mut(s.out_c * cg).enumerate().for_each(|(xi, du_xi)| {
            for g in 0..s.groups {
                matmul_serial(
                    (og, cg, tiles),
                    (&mut du_xi[g * og * cg..(g + 1) * og * cg], cg, 1),
                    first > 0,
                    (&dm[(g * og * XI + xi) * tiles..], XI * tiles, 1),
                    (&v[(g * cg * XI + xi) * tiles..], 1, XI * tiles),
                );
            }
        });
    }
    weight_gradient_transform(du)
}

/// Filters per task of the weight transforms: their taps and half-transformed rows, one plane
/// each, stay in L1 (21 planes of 256 values, 21 KiB in f32), and each plane of `U` is written
/// in runs this long.
const FILTER_BLOCK: usize = 256;

/// `U[ξ][f] = (G g Gᵀ)[ξ]` for each filter `g = w[f]` of `w: [filters, 3, 3]`, in `buffer`;
/// `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`. A block of filters per task: their taps one plane each,
/// `G` over the rows, then over the columns, every step a loop along the block.
fn weight_transform<'a, T: WithDType>(w: &[T], buffer: &'a mut Scratch<T>) -> &'a [T] {
    let filters = w.len() / 9;
    let u = buffer.slice(XI * filters, T::zero());
    // Every plane of U cut into the same blocks of filters: one entry per block.
    let mut blocks: Vec<Vec<&mut [T]>> = (0..filters.div_ceil(FILTER_BLOCK)).map(|_| Vec::with_capacity(XI)).collect();
    for plane in u.chunks_exact_mut(filters.max(1)) {
        for (block, part) in blocks.iter_mut().zip(plane.chunks_mut(FILTER_BLOCK)) {
            block.push(part);
        }
    }
    blocks.into_par_iter().zip(w.par_chunks(9 * FILTER_BLOCK)).for_each(|(mut planes, w_block)| {
        let len = w_block.len() / 9;
        // taps[3a + b][k] = w[k][a][b]; rows[3i + b] = Σ_a G[i][a] taps[3a + b].
        let mut taps = vec![T::zero(); 9 * len];
        for (k, filter) in w_block.chunks_exact(9).enumerate() {
            for (tap, &value) in filter.iter().enumerate() {
                taps[tap * len + k] = value;
            }
        }
        let tap = |a: usize, b: usize| &taps[(3 * a + b) * len..][..len];
        let mut rows = vec![T::zero(); 12 * len];
        for (ib, row) in rows.chunks_exact_mut(len).enumerate() {
            let (i, b) = (ib / 3, ib % 3);
            g_rows(i, [tap(0, b), tap(1, b), tap(2, b)], row);
        }
        for (xi, plane) in planes.iter_mut().enumerate() {
            let (i, j) = (xi / 4, xi % 4);
            let row = |b: usize| &rows[(3 * i + b) * len..][..len];
            g_rows(j, [row(0), row(1), row(2)], plane);
        }
    });
    u
}

/// `out = ` row `i` of `G · [a, b, c]ᵀ`, element by element.
fn g_rows<T: WithDType>(i: usize, [a, b, c]: [&[T]; 3], out: &mut [T]) {
    let half = T::from_f64(0.5);
    let abc = a.iter().zip(b).zip(c);
    match i {
        0 => out.copy_from_slice(a),
        1 => out.iter_mut().zip(abc).for_each(|(o, ((&a, &b), &c))| *o = (a + b + c) * half),
        2 => out.iter_mut().zip(abc).for_each(|(o, ((&a, &b), &c))| *o = (a - b + c) * half),
        _ => out.copy_from_slice(c),
    }
}

/// `dg = Gᵀ dU G` for every filter: `[filters, 3, 3]` from `dU: [16][filters]`, a block of
/// filters per task as in [`weight_transform`].
fn weight_gradient_transform<T: WithDType>(du: &[T]) -> Vec<T> {
    let filters = du.len() / XI;
    let mut dw = vec![T::zero(); filters * 9];
    dw.par_chunks_mut(9 * FILTER_BLOCK).enumerate().for_each(|(block, dw_block)| {
        let (f0, len) = (block * FILTER_BLOCK, dw_block.len() / 9);
        let d = |i: usize, j: usize| &du[(i * 4 + j) * filters + f0..][..len];
        // Gᵀ over the rows (rows[4a + j]), then over the columns (taps[3a + b]).
        let mut rows = vec![T::zero(); 12 * len];
        for (aj, row) in rows.chunks_exact_mut(len).enumerate() {
            let (a, j) = (aj / 4, aj % 4);
            gt_rows(a, [d(0, j), d(1, j), d(2, j), d(3, j)], row);
        }
        let mut taps = vec![T::zero(); 9 * len];
        for (ab, tap) in taps.chunks_exact_mut(len).enumerate() {
            let (a, b) = (ab / 3, ab % 3);
            let row = |j: usize| &rows[(4 * a + j) * len..][..len];
            gt_rows(b, [row(0), row(1), row(2), row(3)], tap);
        }
        for (k, filter) in dw_block.chunks_exact_mut(9).enumerate() {
            for (tap, slot) in filter.iter_mut().enumerate() {
                *slot = taps[tap * len + k];
            }
        }
    });
    dw
}

/// `out = ` row `a` of `Gᵀ · [p, q, r, t]ᵀ`, element by element.
fn gt_rows<T: WithDType>(a: usize, [p, q, r, t]: [&[T]; 4], out: &mut [T]) {
    let half = T::from_f64(0.5);
    match a {
        0 => out.iter_mut().zip(p.iter().zip(q).zip(r)).for_each(|(o, ((&p, &q), &r))| *o = p + (q + r) * half),
        1 => out.iter_mut().zip(q.iter().zip(r)).for_each(|(o, (&q, &r))| *o = (q - r) * half),
        _ => out.iter_mut().zip(q.iter().zip(r).zip(t)).for_each(|(o, ((&q, &r), &t))| *o = (q + r) * half + t),
    }
}

/// `V[c][ξ][t] = (Bᵀ d B)[ξ]` for every tile `t` (image-major) of `n` images `x: [n, C, H, W]`,
/// `d` the tile's 4×4 input with zeros outside the image,
/// `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`.
///
/// Both stages run along whole rows of tiles, so that each loop reads and writes contiguous
/// slices (and vectorises): `Bᵀ` over four input rows, then `B` over the columns of those rows
/// split into even and odd ones (tile `tx` reads columns `2tx … 2tx + 3` of a padded row).
fn input_transform<T: WithDType>(s: &Winograd, x: &[T], n: usize, v: &mut [T]) {
    let (th, tw) = s.tiles();
    let tiles = n * th * tw;
    let width = 2 * tw + 2;
    v.par_chunks_mut(XI * tiles).enumerate().for_each(|(c, v_c)| {
        // Four input rows with a zero column either side; Bᵀ over them; one row's even and odd
        // columns.
        let mut rows = vec![T::zero(); 4 * width];
        let mut bt = vec![T::zero(); 4 * width];
        let (mut even, mut odd) = (vec![T::zero(); tw + 1], vec![T::zero(); tw + 1]);
        for img in 0..n {
            let plane = &x[(img * s.in_c + c) * s.hw()..][..s.hw()];
            for ty in 0..th {
                for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                    let iy = (2 * ty + i) as isize - 1;
                    if iy >= 0 && (iy as usize) < s.h {
                        row[1..=s.w].copy_from_slice(&plane[iy as usize * s.w..][..s.w]);
                        row[s.w + 1..].fill(T::zero());
                    } else {
                        row.fill(T::zero());
                    }
                }
                let [r0, r1, r2, r3] = four(&rows, width);
                let [b0, b1, b2, b3] = four_mut(&mut bt, width);
                for j in 0..width {
                    b0[j] = r0[j] - r2[j];
                    b1[j] = r1[j] + r2[j];
                    b2[j] = r2[j] - r1[j];
                    b3[j] = r1[j] - r3[j];
                }
                let t0 = (img * th + ty) * tw;
                for (i, row) in bt.chunks_exact(width).enumerate() {
                    for (k, pair) in row.chunks_exact(2).enumerate() {
                        (even[k], odd[k]) = (pair[0], pair[1]);
                    }
                    let (e0, e1, o0, o1) = (&even[..tw], &even[1..], &odd[..tw], &odd[1..]);
                    let [v0, v1, v2, v3] = four_mut(&mut v_c[i * 4 * tiles..(i + 1) * 4 * tiles], tiles)
                        .map(|plane| &mut plane[t0..t0 + tw]);
                    for k in 0..tw {
                        // d = (even[k], odd[k], even[k + 1], odd[k + 1])
                        v0[k] = e0[k] - e1[k];
                        v1[k] = o0[k] + e1[k];
                        v2[k] = e1[k] - o0[k];
                        v3[k] = o0[k] - o1[k];
                    }
                }
            }
        }
    });
}

/// `out[img][o]` from `M: [16][O][tiles]`: each tile's `Aᵀ M A` (2×2) with
/// `Aᵀ = [1 1 1 0; 0 1 −1 −1]`, cut at odd edges; a row of tiles at a time, as the input
/// transform.
fn output_transform<T: WithDType>(s: &Winograd, m: &[T], n: usize, out: &mut [T]) {
    let (th, tw) = s.tiles();
    let tiles = n * th * tw;
    out.par_chunks_mut(s.hw()).enumerate().for_each(|(plane_idx, plane)| {
        let (img, o) = (plane_idx / s.out_c, plane_idx % s.out_c);
        // Aᵀ over the tiles' rows (`[2][4][tw]`: rows p and q of each column j), then over
        // their columns (`[2][2][tw]`), then one output row at a time with its columns joined.
        let mut pq = vec![T::zero(); 8 * tw];
        let mut y = vec![T::zero(); 4 * tw];
        let mut row = vec![T::zero(); 2 * tw];
        for ty in 0..th {
            let t0 = (img * th + ty) * tw;
            let at = |xi: usize| &m[(xi * s.out_c + o) * tiles + t0..][..tw];
            let (p, q) = pq.split_at_mut(4 * tw);
            for j in 0..4 {
                let (a, b, c, d) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                let (p_j, q_j) = (&mut p[j * tw..(j + 1) * tw], &mut q[j * tw..(j + 1) * tw]);
                for k in 0..tw {
                    p_j[k] = a[k] + b[k] + c[k];
                    q_j[k] = b[k] - c[k] - d[k];
                }
            }
            for (half, y_half) in pq.chunks_exact(4 * tw).zip(y.chunks_exact_mut(2 * tw)) {
                let [c0, c1, c2, c3] = four(half, tw);
                let (left, right) = y_half.split_at_mut(tw);
                for k in 0..tw {
                    left[k] = c0[k] + c1[k] + c2[k];
                    right[k] = c1[k] - c2[k] - c3[k];
                }
            }
            for (dy, y_row) in y.chunks_exact(2 * tw).enumerate() {
                let oy = 2 * ty + dy;
                if oy >= s.h {
                    break;
                }
                let (left, right) = y_row.split_at(tw);
                for (k, pair) in row.chunks_exact_mut(2).enumerate() {
                    (pair[0], pair[1]) = (left[k], right[k]);
                }
                plane[oy * s.w..][..s.w].copy_from_slice(&row[..s.w]);
            }
        }
    });
}

/// `dM[o][ξ][t] = (A dY Aᵀ)[ξ]` for every tile of `dout: [n, O, H, W]`, `dY` the tile's 2×2
/// output gradient with zeros past odd edges; a row of tiles at a time, as the input transform.
fn output_gradient_transform<T: WithDType>(s: &Winograd, dout: &[T], n: usize, dm: &mut [T]) {
    let (th, tw) = s.tiles();
    let tiles = n * th * tw;
    dm.par_chunks_mut(XI * tiles).enumerate().for_each(|(o, dm_o)| {
        // The tile row's two output rows split into even and odd columns (`dY = [[a, b], [c, d]]`
        // per tile, zeros past the edges), then A over the rows: `[2][4][tw]`.
        let mut abcd = vec![T::zero(); 4 * tw];
        let mut cols = vec![T::zero(); 8 * tw];
        for img in 0..n {
            let plane = &dout[(img * s.out_c + o) * s.hw()..][..s.hw()];
            for ty in 0..th {
                for (dy, pair) in abcd.chunks_exact_mut(2 * tw).enumerate() {
                    let (even, odd) = pair.split_at_mut(tw);
                    let y = 2 * ty + dy;
                    if y < s.h {
                        for (k, columns) in plane[y * s.w..][..s.w].chunks(2).enumerate() {
                            (even[k], odd[k]) = (columns[0], columns.get(1).copied().unwrap_or(T::zero()));
                        }
                    } else {
                        even.fill(T::zero());
                        odd.fill(T::zero());
                    }
                }
                // A = Aᵀᵀ: [a, b] → [a, a + b, a − b, −b], over the rows, then the columns.
                for (pair, expanded) in abcd.chunks_exact(2 * tw).zip(cols.chunks_exact_mut(4 * tw)) {
                    let (a, b) = pair.split_at(tw);
                    let [e0, e1, e2, e3] = four_mut(expanded, tw);
                    for k in 0..tw {
                        e0[k] = a[k];
                        e1[k] = a[k] + b[k];
                        e2[k] = a[k] - b[k];
                        e3[k] = T::zero() - b[k];
                    }
                }
                let t0 = (img * th + ty) * tw;
                let (top, bottom) = cols.split_at(4 * tw);
                for j in 0..4 {
                    let (x, y) = (&top[j * tw..(j + 1) * tw], &bottom[j * tw..(j + 1) * tw]);
                    let at = |i: usize| (i * 4 + j) * tiles + t0;
                    dm_o[at(0)..at(0) + tw].copy_from_slice(x);
                    for (slot, (&x, &y)) in dm_o[at(1)..at(1) + tw].iter_mut().zip(x.iter().zip(y)) {
                        *slot = x + y;
                    }
                    for (slot, (&x, &y)) in dm_o[at(2)..at(2) + tw].iter_mut().zip(x.iter().zip(y)) {
                        *slot = x - y;
                    }
                    for (slot, &y) in dm_o[at(3)..at(3) + tw].iter_mut().zip(y) {
                        *slot = T::zero() - y;
                    }
                }
            }
        }
    });
}

/// The first four `len`-long parts of `values`.
fn four<T>(values: &[T], len: usize) -> [&[T]; 4] {
    let (a, rest) = values.split_at(len);
    let (b, rest) = rest.split_at(len);
    let (c, rest) = rest.split_at(len);
    [a, b, c, &rest[..len]]
}

/// The first four `len`-long parts of `values`, each writable.
fn four_mut<T>(values: &mut [T], len: usize) -> [&mut [T]; 4] {
    let (a, rest) = values.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, rest) = rest.split_at_mut(len);
    [a, b, c, &mut rest[..len]]
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::test_util::{close, values};

    /// (batch, in, out, h, w, groups)
    const CASES: [(usize, usize, usize, usize, usize, usize); 8] = [
        (2, 3, 4, 6, 6, 1),   // even map: whole tiles
        (2, 5, 3, 7, 9, 1),   // odd sides: the last tiles half outside
        (1, 2, 2, 1, 1, 1),   // one pixel: one tile, three quarters outside
        (3, 4, 6, 5, 2, 2),   // groups, a map narrower than a tile row
        (2, 6, 6, 3, 4, 3),   // three groups
        (5, 2, 3, 2, 3, 1),   // several images in one block
        (1, 1, 1, 12, 12, 1), // one channel, many tiles
        (1, 17, 19, 5, 4, 1), // 323 filters: two blocks of the weight transforms, 256 + 67
    ];

    fn assert_close(what: &str, ours: &[f64], theirs: &[f64]) {
        close(what, ours, theirs, 1e-12);
    }

    /// Forward and both gradients against candle's convolution (slow, but correct for stride 1)
    /// in float64, with a loss that weighs every output differently.
    #[test]
    fn forward_and_gradients_match_candles_convolution() {
        for (idx, &(batch, in_c, out_c, h, w, groups)) in CASES.iter().enumerate() {
            let plan = Winograd { batch, in_c, out_c, h, w, groups };
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (batch, in_c, h, w), &Device::Cpu).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (out_c, in_c / groups, 3, 3), &Device::Cpu).unwrap())
                .unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), 1, 1, 1, groups).unwrap();
            let mix = Tensor::randn(0f64, 1.0, theirs.dims(), &Device::Cpu).unwrap();
            let grads = (&theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let (xs, ws, dout) = (values(x.as_tensor()), values(wt.as_tensor()), values(&mix));

            assert_close(&format!("case {idx} forward"), &forward(&plan, &xs, &ws), &values(&theirs));
            let dx = values(grads.get(x.as_tensor()).unwrap());
            assert_close(&format!("case {idx} input grad"), &backward_input(&plan, &dout, &ws), &dx);
            let dw = values(grads.get(wt.as_tensor()).unwrap());
            assert_close(&format!("case {idx} weight grad"), &backward_weight(&plan, &xs, &dout), &dw);
        }
    }

    /// Batch blocks: a block budget of a few images splits the batch, and the weight gradient
    /// sums over the blocks.
    #[test]
    fn batch_blocks_sum_like_one_block() {
        // 64 channels × 16 positions × 16² tiles of 32² maps: 256 Ki values an image, at most
        // four a block, so five images go as 3 + 2.
        let plan = Winograd { batch: 5, in_c: 64, out_c: 2, h: 32, w: 32, groups: 1 };
        assert_eq!(plan.block(), 3, "blocks of 3 + 2 images");
        let x = Tensor::randn(0f64, 1.0, (5, 64, 32, 32), &Device::Cpu).unwrap();
        let dout = Tensor::randn(0f64, 1.0, (5, 2, 32, 32), &Device::Cpu).unwrap();
        let dw = backward_weight(&plan, &values(&x), &values(&dout));
        let mut sum = vec![0f64; dw.len()];
        for img in 0..5 {
            let one = Winograd { batch: 1, ..plan };
            let part = backward_weight(&one, &values(&x.get(img).unwrap()), &values(&dout.get(img).unwrap()));
            sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
        assert_close("blocked weight grad", &dw, &sum);
        let w = Tensor::randn(0f64, 1.0, (2, 64, 3, 3), &Device::Cpu).unwrap();
        let out = forward(&plan, &values(&x), &values(&w));
        let first = forward(&Winograd { batch: 1, ..plan }, &values(&x.get(4).unwrap()), &values(&w));
        assert_close("the last block's image", &out[4 * 2 * 32 * 32..], &first);
    }
}
