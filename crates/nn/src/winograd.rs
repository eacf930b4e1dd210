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
/// Tile values per batch block, in elements (`[C, 16, tiles]`; 8 Mi floats = 32 MiB in f32).
const MAX_BLOCK_ELEMENTS: usize = 8 << 20;

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
    let u = weight_transform(s, w);
    let tpi = s.tiles_per_image();
    let mut out = vec![T::zero(); s.batch * s.out_c * s.hw()];
    let (mut v_buffer, mut m_buffer) = (Scratch::take(), Scratch::take());
    for (first, n) in s.blocks() {
        let tiles = n * tpi;
        let v = s.transformed_input(x, (first, n), &mut v_buffer);
        let m = m_buffer.slice(XI * s.out_c * tiles, T::zero());
        // M[ξ] = U[ξ] · V[ξ] per group: U is [16][O][C/g], V [C][16][tiles], M [16][O][tiles].
        let (og, cg) = (s.og(), s.cg());
        m.par_chunks_mut(s.out_c * tiles).enumerate().for_each(|(xi, m_xi)| {
            for g in 0..s.groups {
                matmul_serial(
                    (og, tiles, cg),
                    (&mut m_xi[g * og * tiles..(g + 1) * og * tiles], tiles, 1),
                    false,
                    (&u[(xi * s.out_c + g * og) * cg..], cg, 1),
                    (&v[(g * cg * XI + xi) * tiles..], XI * tiles, 1),
                );
            }
        });
        output_transform(s, m, n, &mut out[first * s.out_c * s.hw()..(first + n) * s.out_c * s.hw()]);
    }
    out
}

/// `dx: [N, C, H, W]` from `dout: [N, O, H, W]` and `w: [O, C/g, 3, 3]`: the forward of `dout`
/// with each group's weight matrix transposed and every filter turned by 180°.
pub(crate) fn backward_input<T: WithDType>(s: &Winograd, dout: &[T], w: &[T]) -> Vec<T> {
    let (og, cg) = (s.og(), s.cg());
    // w_t[g·cg + c][o][ky][kx] = w[g·og + o][c][2 − ky][2 − kx].
    let mut w_t = vec![T::zero(); w.len()];
    for g in 0..s.groups {
        for o in 0..og {
            for c in 0..cg {
                let src = &w[((g * og + o) * cg + c) * 9..][..9];
                let dst = &mut w_t[((g * cg + c) * og + o) * 9..][..9];
                for (tap, slot) in dst.iter_mut().enumerate() {
                    *slot = src[8 - tap];
                }
            }
        }
    }
    forward(&s.transposed(), dout, &w_t)
}

/// `dw: [O, C/g, 3, 3]` from `x: [N, C, H, W]` and `dout: [N, O, H, W]`.
pub(crate) fn backward_weight<T: WithDType>(s: &Winograd, x: &[T], dout: &[T]) -> Vec<T> {
    let (og, cg, tpi) = (s.og(), s.cg(), s.tiles_per_image());
    // dU[ξ] = Σ over blocks of dM[ξ] · V[ξ]ᵀ: [16][O][C/g].
    let mut du = vec![T::zero(); XI * s.out_c * cg];
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
    weight_gradient_transform(s, &du)
}

/// `U[ξ][o][c] = (G g Gᵀ)[ξ]` for each filter `g = w[o][c]`.
fn weight_transform<T: WithDType>(s: &Winograd, w: &[T]) -> Vec<T> {
    let filters = s.out_c * s.cg();
    let mut u = vec![T::zero(); XI * filters];
    for (f, g) in w.chunks_exact(9).enumerate() {
        let rows: [[T; 3]; 4] = std::array::from_fn(|i| std::array::from_fn(|b| g_rows(i, [g[b], g[3 + b], g[6 + b]])));
        for i in 0..4 {
            for j in 0..4 {
                u[(i * 4 + j) * filters + f] = g_rows(j, rows[i]);
            }
        }
    }
    u
}

/// Row `i` of `G · [a, b, c]ᵀ` with `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`.
fn g_rows<T: WithDType>(i: usize, [a, b, c]: [T; 3]) -> T {
    let half = T::from_f64(0.5);
    match i {
        0 => a,
        1 => (a + b + c) * half,
        2 => (a - b + c) * half,
        _ => c,
    }
}

/// `dg = Gᵀ dU G` for every filter: `[O, C/g, 3, 3]` from `dU: [16][O][C/g]`.
fn weight_gradient_transform<T: WithDType>(s: &Winograd, du: &[T]) -> Vec<T> {
    let filters = s.out_c * s.cg();
    let mut dw = vec![T::zero(); filters * 9];
    for (f, dg) in dw.chunks_exact_mut(9).enumerate() {
        let d: [[T; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| du[(i * 4 + j) * filters + f]));
        // Gᵀ over the rows, then over the columns.
        let rows: [[T; 4]; 3] =
            std::array::from_fn(|a| std::array::from_fn(|j| gt_rows(a, [d[0][j], d[1][j], d[2][j], d[3][j]])));
        for a in 0..3 {
            for b in 0..3 {
                dg[a * 3 + b] = gt_rows(b, rows[a]);
            }
        }
    }
    dw
}

/// Row `a` of `Gᵀ · [p, q, r, t]ᵀ`.
fn gt_rows<T: WithDType>(a: usize, [p, q, r, t]: [T; 4]) -> T {
    let half = T::from_f64(0.5);
    match a {
        0 => p + (q + r) * half,
        1 => (q - r) * half,
        _ => (q + r) * half + t,
    }
}

/// `V[c][ξ][t] = (Bᵀ d B)[ξ]` for every tile `t` (image-major) of `n` images `x: [n, C, H, W]`,
/// `d` the tile's 4×4 input with zeros outside the image,
/// `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`.
fn input_transform<T: WithDType>(s: &Winograd, x: &[T], n: usize, v: &mut [T]) {
    let (th, tw) = s.tiles();
    let tiles = n * th * tw;
    let width = 2 * tw + 2;
    v.par_chunks_mut(XI * tiles).enumerate().for_each(|(c, v_c)| {
        // Four input rows with a zero column either side, then Bᵀ over them.
        let mut rows = vec![T::zero(); 4 * width];
        let mut bt = vec![T::zero(); 4 * width];
        for img in 0..n {
            let plane = &x[(img * s.in_c + c) * s.hw()..][..s.hw()];
            for ty in 0..th {
                for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                    let iy = (2 * ty + i) as isize - 1;
                    row.fill(T::zero());
                    if iy >= 0 && (iy as usize) < s.h {
                        row[1..=s.w].copy_from_slice(&plane[iy as usize * s.w..][..s.w]);
                    }
                }
                let (r0, rest) = rows.split_at(width);
                let (r1, rest) = rest.split_at(width);
                let (r2, r3) = rest.split_at(width);
                for j in 0..width {
                    bt[j] = r0[j] - r2[j];
                    bt[width + j] = r1[j] + r2[j];
                    bt[2 * width + j] = r2[j] - r1[j];
                    bt[3 * width + j] = r1[j] - r3[j];
                }
                let t0 = (img * th + ty) * tw;
                for (i, row) in bt.chunks_exact(width).enumerate() {
                    for tx in 0..tw {
                        let [d0, d1, d2, d3] = [row[2 * tx], row[2 * tx + 1], row[2 * tx + 2], row[2 * tx + 3]];
                        let t = t0 + tx;
                        v_c[(i * 4) * tiles + t] = d0 - d2;
                        v_c[(i * 4 + 1) * tiles + t] = d1 + d2;
                        v_c[(i * 4 + 2) * tiles + t] = d2 - d1;
                        v_c[(i * 4 + 3) * tiles + t] = d1 - d3;
                    }
                }
            }
        }
    });
}

/// `out[img][o]` from `M: [16][O][tiles]`: each tile's `Aᵀ M A` (2×2) with
/// `Aᵀ = [1 1 1 0; 0 1 −1 −1]`, cut at odd edges.
fn output_transform<T: WithDType>(s: &Winograd, m: &[T], n: usize, out: &mut [T]) {
    let (th, tw) = s.tiles();
    let tiles = n * th * tw;
    out.par_chunks_mut(s.hw()).enumerate().for_each(|(plane_idx, plane)| {
        let (img, o) = (plane_idx / s.out_c, plane_idx % s.out_c);
        let at = |xi: usize, t: usize| m[(xi * s.out_c + o) * tiles + t];
        for ty in 0..th {
            for tx in 0..tw {
                let t = (img * th + ty) * tw + tx;
                // Aᵀ over the rows: two rows of four.
                let col = |j: usize| {
                    let [a, b, c, d] = [at(j, t), at(4 + j, t), at(8 + j, t), at(12 + j, t)];
                    (a + b + c, b - c - d)
                };
                let [(p0, q0), (p1, q1), (p2, q2), (p3, q3)] = [col(0), col(1), col(2), col(3)];
                let y = [[p0 + p1 + p2, p1 - p2 - p3], [q0 + q1 + q2, q1 - q2 - q3]];
                for (dy, row) in y.iter().enumerate() {
                    let oy = 2 * ty + dy;
                    if oy >= s.h {
                        continue;
                    }
                    for (dx, &value) in row.iter().enumerate() {
                        let ox = 2 * tx + dx;
                        if ox < s.w {
                            plane[oy * s.w + ox] = value;
                        }
                    }
                }
            }
        }
    });
}

/// `dM[o][ξ][t] = (A dY Aᵀ)[ξ]` for every tile of `dout: [n, O, H, W]`, `dY` the tile's 2×2
/// output gradient with zeros past odd edges.
fn output_gradient_transform<T: WithDType>(s: &Winograd, dout: &[T], n: usize, dm: &mut [T]) {
    let (th, tw) = s.tiles();
    let tiles = n * th * tw;
    dm.par_chunks_mut(XI * tiles).enumerate().for_each(|(o, dm_o)| {
        for img in 0..n {
            let plane = &dout[(img * s.out_c + o) * s.hw()..][..s.hw()];
            let at = |y: usize, x: usize| if y < s.h && x < s.w { plane[y * s.w + x] } else { T::zero() };
            for ty in 0..th {
                for tx in 0..tw {
                    let t = (img * th + ty) * tw + tx;
                    let (y, x) = (2 * ty, 2 * tx);
                    let dy = [[at(y, x), at(y, x + 1)], [at(y + 1, x), at(y + 1, x + 1)]];
                    // A = Aᵀᵀ: [a, b] → [a, a + b, a − b, −b], over the rows, then the columns.
                    let expand = |[a, b]: [T; 2]| [a, a + b, a - b, T::zero() - b];
                    let cols = [expand(dy[0]), expand(dy[1])];
                    for j in 0..4 {
                        let column = expand([cols[0][j], cols[1][j]]);
                        for (i, value) in column.into_iter().enumerate() {
                            dm_o[(i * 4 + j) * tiles + t] = value;
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::test_util::{close, values};

    /// (batch, in, out, h, w, groups)
    const CASES: [(usize, usize, usize, usize, usize, usize); 7] = [
        (2, 3, 4, 6, 6, 1),   // even map: whole tiles
        (2, 5, 3, 7, 9, 1),   // odd sides: the last tiles half outside
        (1, 2, 2, 1, 1, 1),   // one pixel: one tile, three quarters outside
        (3, 4, 6, 5, 2, 2),   // groups, a map narrower than a tile row
        (2, 6, 6, 3, 4, 3),   // three groups
        (5, 2, 3, 2, 3, 1),   // several images in one block
        (1, 1, 1, 12, 12, 1), // one channel, many tiles
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
        // 128 channels × 16 positions × 32² tiles of 64² maps: 2 Mi elements an image, at most
        // four a block, so five images go as 3 + 2.
        let plan = Winograd { batch: 5, in_c: 128, out_c: 2, h: 64, w: 64, groups: 1 };
        assert_eq!(plan.block(), 3, "blocks of 3 + 2 images");
        let x = Tensor::randn(0f64, 1.0, (5, 128, 64, 64), &Device::Cpu).unwrap();
        let dout = Tensor::randn(0f64, 1.0, (5, 2, 64, 64), &Device::Cpu).unwrap();
        let dw = backward_weight(&plan, &values(&x), &values(&dout));
        let mut sum = vec![0f64; dw.len()];
        for img in 0..5 {
            let one = Winograd { batch: 1, ..plan };
            let part = backward_weight(&one, &values(&x.get(img).unwrap()), &values(&dout.get(img).unwrap()));
            sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
        assert_close("blocked weight grad", &dw, &sum);
        let w = Tensor::randn(0f64, 1.0, (2, 128, 3, 3), &Device::Cpu).unwrap();
        let out = forward(&plan, &values(&x), &values(&w));
        let first = forward(&Winograd { batch: 1, ..plan }, &values(&x.get(4).unwrap()), &values(&w));
        assert_close("the last block's image", &out[4 * 2 * 64 * 64..], &first);
    }
}
