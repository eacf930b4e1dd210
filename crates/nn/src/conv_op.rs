//! 2-D convolution on the CPU as large matrix products, forward and backward.
//!
//! candle's CPU convolution differentiates through a nested-loop transposed convolution and runs
//! forward + backward at 3–5 GFLOP/s on this project's machine, while its matrix product reaches
//! about 60 (`shared/reference/candle-notes.md`). Here all three products are `gemm` calls over
//! im2col columns, blocked over the batch so that the column buffer stays bounded:
//!
//! ```text
//! forward        out[g]   = W[g]            · cols[g]        [O/g × K]   · [K × n·HW']
//! input grad     dcols[g] = W[g]ᵀ           · dout[g]        then col2im into dx
//! weight grad    dW[g]   += dout[g]         · cols[g]ᵀ       summed over batch blocks
//! ```
//!
//! with `K = C/g · kh · kw`. 1×1 convolutions with stride 1 and no padding skip im2col.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::Conv2dConfig;
use crate::cpu::{contiguous, dispatch_float};
use crate::gemm_util::{matmul, matmul_strided};
use crate::scratch::Scratch;
use crate::winograd::{self, Winograd};

/// Column buffer budget per batch block, in elements (32 Mi floats = 128 MiB in f32).
const MAX_BLOCK_ELEMENTS: usize = 32 << 20;
/// Target width of a block's matrix product, in output pixels: enough images per block that the
/// product is large even on 7×7 maps.
const TARGET_BLOCK_COLUMNS: usize = 1024;

/// Channels per group (both sides) for which a 3×3 convolution takes the Winograd path; with
/// [`WINOGRAD_MIN_SIDE`], the least height and width of its map. Measured on an AMD EPYC Zen 4
/// (AVX-512) with 2 threads, forward + backward at batch 8, Winograd against im2col
/// (`DMLP_CPU_WINOGRAD=all` against `=0`, `bench ops --convs resnet50|sk2res2net101`;
/// docs/performance.md, session 23): 0.56–0.95× the time on every 3×3 shape of ResNet-50 and
/// SK-Res2Net-101 from 26 to 512 channels and 7² to 112² maps, with one of four runs slower
/// at 26 channels on 56² and one at 52; the smoke runs' 16-channel ResNet gave no clear answer
/// and stays on im2col. Outside the range nothing was measured. (Session 22's Zen 1 figures,
/// before the transforms were vectorised and the blocks cut to 4 MiB, had it lose at 52
/// channels and below and at 7² maps.)
const WINOGRAD_CHANNELS: std::ops::RangeInclusive<usize> = 24..=512;
/// The least side of a map that takes the Winograd path (see [`WINOGRAD_CHANNELS`]): on 7² maps
/// 4×4 tiles of 2×2 outputs cover 8×8, and it still paid there (208 and 512 channels).
const WINOGRAD_MIN_SIDE: usize = 7;

/// Images per block when `batch` images go in blocks of at most `most` (at least one), the
/// blocks as even as the batch allows: 8 images at most 6 a block go as 4 + 4, not 6 + 2.
pub(crate) fn even_block(batch: usize, most: usize) -> usize {
    let most = most.clamp(1, batch.max(1));
    batch.div_ceil(batch.div_ceil(most).max(1)).max(1)
}

/// Which 3×3 convolutions take the Winograd path, from `DMLP_CPU_WINOGRAD` (read once): unset,
/// those the thresholds pick; `0`, none (every convolution on im2col); `all`, every 3×3 one with
/// stride 1 and padding 1 whatever its channels and map. The last two are for measuring the two
/// paths against each other in one binary, as the thresholds were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WinogradUse {
    Thresholds,
    Never,
    Always,
}

fn winograd_use() -> WinogradUse {
    static USE: std::sync::OnceLock<WinogradUse> = std::sync::OnceLock::new();
    *USE.get_or_init(|| match std::env::var("DMLP_CPU_WINOGRAD").as_deref() {
        Ok("0") => WinogradUse::Never,
        Ok("all") => WinogradUse::Always,
        _ => WinogradUse::Thresholds,
    })
}

/// One tap's image for [`Geometry::shifts_flat`] geometry, as output indices: `rows` the
/// output rows whose input row is inside the image, `run` (within them) the indices whose
/// input is inside the plane, read from input index `from` on.
struct TapRun {
    rows: std::ops::Range<usize>,
    run: std::ops::Range<usize>,
    from: usize,
}

/// Everything about one convolution's shapes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    in_c: usize,
    in_h: usize,
    in_w: usize,
    out_c: usize,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
    config: Conv2dConfig,
}

impl Geometry {
    fn new(input: &[usize], weight: &[usize], config: Conv2dConfig) -> Result<Self> {
        let (&[batch, in_c, in_h, in_w], &[out_c, c_per_group, kh, kw]) = (input, weight) else {
            bail!("conv2d expects a 4-D input and weight, got {input:?} and {weight:?}")
        };
        let g = config.groups;
        if g == 0 || in_c % g != 0 || out_c % g != 0 || c_per_group != in_c / g {
            bail!("conv2d: input {input:?}, weight {weight:?} and groups {g} do not fit")
        }
        if config.stride == 0 || config.dilation == 0 {
            bail!("conv2d: stride and dilation must be positive")
        }
        let span = |k: usize| config.dilation * (k - 1) + 1;
        if in_h + 2 * config.padding < span(kh) || in_w + 2 * config.padding < span(kw) {
            bail!("conv2d: kernel {kh}×{kw} (dilation {}) larger than the padded input {in_h}×{in_w}", config.dilation)
        }
        let out_h = (in_h + 2 * config.padding - span(kh)) / config.stride + 1;
        let out_w = (in_w + 2 * config.padding - span(kw)) / config.stride + 1;
        Ok(Self { batch, in_c, in_h, in_w, out_c, kh, kw, out_h, out_w, config })
    }

    fn groups(&self) -> usize {
        self.config.groups
    }

    /// Input channels per group.
    fn cg(&self) -> usize {
        self.in_c / self.groups()
    }

    /// Output channels per group.
    fn og(&self) -> usize {
        self.out_c / self.groups()
    }

    /// Rows of a group's column matrix.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }

    fn out_hw(&self) -> usize {
        self.out_h * self.out_w
    }

    fn in_hw(&self) -> usize {
        self.in_h * self.in_w
    }

    /// A 1×1, stride-1, unpadded convolution reads its input as the column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.config.stride == 1 && self.config.padding == 0
    }

    /// Images per batch block, the blocks as even as the batch allows: 8 images of 14×14 go
    /// as 4 + 4, not 6 + 2, whose second product is a third as wide (SK-Res2Net-101's 104→104
    /// 3×3 at 14², `bench ops --convs sk2res2net101`).
    fn block(&self) -> usize {
        let by_columns = TARGET_BLOCK_COLUMNS.div_ceil(self.out_hw()).max(1);
        let by_memory = (MAX_BLOCK_ELEMENTS / (self.k() * self.out_hw()).max(1)).max(1);
        even_block(self.batch, by_columns.min(by_memory))
    }

    /// Stride 1 with the output as wide as the input (a 3×3 with padding 1, say): each tap reads
    /// its image as one shifted run of the input plane, output pixel `j` from input `j + shift`.
    fn shifts_flat(&self) -> bool {
        self.config.stride == 1 && self.out_w == self.in_w
    }

    /// For [`Self::shifts_flat`] geometry and tap `(ky, kx)`: the output rows whose input row
    /// lies inside the image, and within them the run of output indices whose shifted input
    /// index lies inside the plane (the rest of those rows is padding).
    fn tap_run(&self, ky: usize, kx: usize) -> TapRun {
        let (d, p) = (self.config.dilation as isize, self.config.padding as isize);
        let (dy, dx) = (ky as isize * d - p, kx as isize * d - p);
        let shift = dy * self.in_w as isize + dx;
        let rows = self.out_h as isize;
        let first_row = (-dy).clamp(0, rows) as usize;
        let end_row = ((self.in_h as isize - dy).clamp(0, rows) as usize).max(first_row);
        let (a, b) = ((first_row * self.out_w) as isize, (end_row * self.out_w) as isize);
        let lo = a.max(-shift).min(b);
        let hi = b.min(self.in_hw() as isize - shift).max(lo);
        TapRun {
            rows: first_row * self.out_w..end_row * self.out_w,
            run: lo as usize..hi as usize,
            // An empty run reads nothing: from 0, so that the empty slice stays in bounds.
            from: if lo < hi { (lo + shift) as usize } else { 0 },
        }
    }

    /// The Winograd form of this convolution where it applies and pays: 3×3, stride 1,
    /// padding 1, dilation 1, channels per group in [`WINOGRAD_CHANNELS`] on both sides, maps of
    /// at least [`WINOGRAD_MIN_SIDE`] a side, unless `DMLP_CPU_WINOGRAD` says otherwise
    /// (see [`winograd_use`]).
    fn winograd(&self) -> Option<Winograd> {
        let c = self.config;
        let fits = self.kh == 3 && self.kw == 3 && c.stride == 1 && c.padding == 1 && c.dilation == 1;
        let pays = WINOGRAD_CHANNELS.contains(&self.cg())
            && WINOGRAD_CHANNELS.contains(&self.og())
            && self.in_h.min(self.in_w) >= WINOGRAD_MIN_SIDE;
        let taken = match winograd_use() {
            WinogradUse::Thresholds => fits && pays,
            WinogradUse::Never => false,
            WinogradUse::Always => fits,
        };
        taken.then_some(Winograd {
            batch: self.batch,
            in_c: self.in_c,
            out_c: self.out_c,
            h: self.in_h,
            w: self.in_w,
            groups: self.groups(),
        })
    }

    /// Output columns `[lo, hi)` whose input column `ox·s − p + kx·d` lies inside the image.
    fn valid_range(&self, out_len: usize, in_len: usize, k_idx: usize) -> (usize, usize) {
        let (s, p, d) = (self.config.stride as isize, self.config.padding as isize, self.config.dilation as isize);
        let offset = k_idx as isize * d - p;
        // ox·s + offset ≥ 0  and  ox·s + offset ≤ in_len − 1.
        let lo = if offset >= 0 { 0 } else { ((-offset) + s - 1) / s };
        let hi = (in_len as isize - 1 - offset).div_euclid(s) + 1;
        (lo.clamp(0, out_len as isize) as usize, hi.clamp(0, out_len as isize) as usize)
    }
}

/// Fills `cols` (`[K, n·HW']`, row-major) from `n` images of one group.
/// `images` holds those images' channels of this group: `[n][C][H·W]` with channel offset `c0`.
fn im2col<T: WithDType>(geo: &Geometry, x: &[T], first_image: usize, n: usize, c0: usize, cols: &mut [T]) {
    let width = n * geo.out_hw();
    let (s, d, p) = (geo.config.stride, geo.config.dilation, geo.config.padding);
    cols.par_chunks_mut(width).enumerate().for_each(|(row, out_row)| {
        let c = row / (geo.kh * geo.kw);
        let ky = (row / geo.kw) % geo.kh;
        let kx = row % geo.kw;
        let (ox_lo, ox_hi) = geo.valid_range(geo.out_w, geo.in_w, kx);
        for img in 0..n {
            let plane_start = ((first_image + img) * geo.in_c + c0 + c) * geo.in_hw();
            let plane = &x[plane_start..plane_start + geo.in_hw()];
            let dst_img = &mut out_row[img * geo.out_hw()..(img + 1) * geo.out_hw()];
            if geo.shifts_flat() {
                shifted_copy(geo, plane, dst_img, (ky, kx), (ox_lo, ox_hi));
                continue;
            }
            for oy in 0..geo.out_h {
                let dst = &mut dst_img[oy * geo.out_w..(oy + 1) * geo.out_w];
                let iy = (oy * s + ky * d) as isize - p as isize;
                if iy < 0 || iy >= geo.in_h as isize || ox_lo >= ox_hi {
                    dst.fill(T::zero());
                    continue;
                }
                let src_row = &plane[iy as usize * geo.in_w..(iy as usize + 1) * geo.in_w];
                dst[..ox_lo].fill(T::zero());
                dst[ox_hi..].fill(T::zero());
                let ix0 = ox_lo * s + kx * d - p;
                if s == 1 {
                    dst[ox_lo..ox_hi].copy_from_slice(&src_row[ix0..ix0 + (ox_hi - ox_lo)]);
                } else {
                    for (slot, ix) in dst[ox_lo..ox_hi].iter_mut().zip((ix0..).step_by(s)) {
                        *slot = src_row[ix];
                    }
                }
            }
        }
    });
}

/// One tap of one image for [`Geometry::shifts_flat`] geometry: the valid rows as a single
/// copy of the plane shifted by the tap's offset, then the rows above and below and the padding
/// columns (which the shifted copy filled from the neighbouring row) zeroed. On 14×14 maps this
/// is one copy where the row-by-row loop made fourteen of 14 values each.
fn shifted_copy<T: WithDType>(
    geo: &Geometry,
    plane: &[T],
    dst: &mut [T],
    (ky, kx): (usize, usize),
    (ox_lo, ox_hi): (usize, usize),
) {
    let w = geo.out_w;
    let TapRun { rows, run, from } = geo.tap_run(ky, kx);
    dst[..rows.start].fill(T::zero());
    dst[rows.end..].fill(T::zero());
    dst[rows.start..run.start].fill(T::zero());
    dst[run.end..rows.end].fill(T::zero());
    dst[run.clone()].copy_from_slice(&plane[from..from + run.len()]);
    if ox_lo > 0 || ox_hi < w {
        for row in dst[rows].chunks_mut(w) {
            row[..ox_lo.min(w)].fill(T::zero());
            row[ox_hi.min(w)..].fill(T::zero());
        }
    }
}

/// Zeroes the padding columns of `cols` (`[K, n·HW']` from a product) for
/// [`Geometry::shifts_flat`] geometry, so that [`col2im`] can add each tap's rows as one
/// shifted run: those entries would land on the neighbouring row's pixels.
fn zero_padding_columns<T: WithDType>(geo: &Geometry, n: usize, cols: &mut [T]) {
    let width = n * geo.out_hw();
    cols.par_chunks_mut(width).enumerate().for_each(|(row, out_row)| {
        let (ky, kx) = ((row / geo.kw) % geo.kh, row % geo.kw);
        let (ox_lo, ox_hi) = geo.valid_range(geo.out_w, geo.in_w, kx);
        if ox_lo == 0 && ox_hi >= geo.out_w {
            return;
        }
        let rows = geo.tap_run(ky, kx).rows;
        for img in out_row.chunks_mut(geo.out_hw()) {
            for line in img[rows.clone()].chunks_mut(geo.out_w) {
                line[..ox_lo.min(geo.out_w)].fill(T::zero());
                line[ox_hi.min(geo.out_w)..].fill(T::zero());
            }
        }
    });
}

/// Adds the columns `cols` (`[K, n·HW']`) of one group back into `dx` (`[N][C][H·W]`).
fn col2im<T: WithDType>(geo: &Geometry, cols: &mut [T], first_image: usize, n: usize, c0: usize, dx: &mut [T]) {
    let width = n * geo.out_hw();
    let (s, d, p) = (geo.config.stride, geo.config.dilation, geo.config.padding);
    let taps = geo.kh * geo.kw;
    let flat = geo.shifts_flat();
    if flat {
        zero_padding_columns(geo, n, cols);
    }
    let cols: &[T] = cols;
    // One task per (image, channel) plane: every tap of a channel writes only its own plane.
    let planes: Vec<(usize, &mut [T])> = dx
        .chunks_mut(geo.in_hw())
        .enumerate()
        .filter_map(|(idx, plane)| {
            let (img, c) = (idx / geo.in_c, idx % geo.in_c);
            let in_block = img >= first_image && img < first_image + n && c >= c0 && c < c0 + geo.cg();
            in_block.then_some((idx, plane))
        })
        .collect();
    planes.into_par_iter().for_each(|(idx, plane)| {
        let (img, c) = (idx / geo.in_c - first_image, idx % geo.in_c - c0);
        for tap in 0..taps {
            let (ky, kx) = (tap / geo.kw, tap % geo.kw);
            let (ox_lo, ox_hi) = geo.valid_range(geo.out_w, geo.in_w, kx);
            if ox_lo >= ox_hi {
                continue;
            }
            let row = &cols[(c * taps + tap) * width + img * geo.out_hw()..][..geo.out_hw()];
            if flat {
                // The valid rows as one shifted run (padding columns zeroed above).
                let TapRun { run, from, .. } = geo.tap_run(ky, kx);
                for (acc, v) in plane[from..from + run.len()].iter_mut().zip(&row[run]) {
                    *acc += *v;
                }
                continue;
            }
            for oy in 0..geo.out_h {
                let iy = (oy * s + ky * d) as isize - p as isize;
                if iy < 0 || iy >= geo.in_h as isize {
                    continue;
                }
                let dst_row = &mut plane[iy as usize * geo.in_w..(iy as usize + 1) * geo.in_w];
                let src = &row[oy * geo.out_w..(oy + 1) * geo.out_w];
                let ix0 = ox_lo * s + kx * d - p;
                if s == 1 {
                    // Contiguous on both sides: a slice add the compiler vectorises.
                    let dst = &mut dst_row[ix0..ix0 + (ox_hi - ox_lo)];
                    for (acc, v) in dst.iter_mut().zip(&src[ox_lo..ox_hi]) {
                        *acc += *v;
                    }
                } else {
                    for (ox, ix) in (ox_lo..ox_hi).zip((ix0..).step_by(s)) {
                        dst_row[ix] += src[ox];
                    }
                }
            }
        }
    });
}

/// `cols` for a block: the input itself for pointwise convolutions of a single image, else an
/// im2col buffer. Returns the matrix and its row stride.
fn block_columns<'a, T: WithDType>(
    geo: &Geometry,
    x: &'a [T],
    first: usize,
    n: usize,
    group: usize,
    buffer: &'a mut Scratch<T>,
) -> &'a [T] {
    let c0 = group * geo.cg();
    if geo.is_pointwise() && n == 1 {
        let start = (first * geo.in_c + c0) * geo.in_hw();
        return &x[start..start + geo.cg() * geo.in_hw()];
    }
    let cols = buffer.slice(geo.k() * n * geo.out_hw(), T::zero());
    im2col(geo, x, first, n, c0, cols);
    cols
}

fn forward<T: WithDType>(geo: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    if let Some(plan) = geo.winograd() {
        return winograd::forward(&plan, x, w);
    }
    let (og, k, hw) = (geo.og(), geo.k(), geo.out_hw());
    let mut out = vec![T::zero(); geo.batch * geo.out_c * hw];
    let mut buffer = Scratch::take();
    let mut block_out = Scratch::take();
    let block = geo.block();
    for first in (0..geo.batch).step_by(block) {
        let n = block.min(geo.batch - first);
        for group in 0..geo.groups() {
            let cols = block_columns(geo, x, first, n, group, &mut buffer);
            let w_g = &w[group * og * k..(group + 1) * og * k];
            if n == 1 {
                // One image: its block of output channels is one contiguous run of `out`.
                let start = (first * geo.out_c + group * og) * hw;
                matmul((og, hw, k), &mut out[start..start + og * hw], hw, false, (w_g, k, 1), (cols, hw, 1));
                continue;
            }
            let block_out = block_out.slice(og * n * hw, T::zero());
            matmul((og, n * hw, k), block_out, n * hw, false, (w_g, k, 1), (cols, n * hw, 1));
            for img in 0..n {
                for o in 0..og {
                    let dst = ((first + img) * geo.out_c + group * og + o) * hw;
                    out[dst..dst + hw].copy_from_slice(&block_out[o * n * hw + img * hw..][..hw]);
                }
            }
        }
    }
    out
}

/// `dout` of a block and group as a `[O/g, n·HW']` matrix: a run of `dout` itself for one image,
/// else gathered into `buffer`.
fn block_grad<'a, T: WithDType>(
    geo: &Geometry,
    dout: &'a [T],
    first: usize,
    n: usize,
    group: usize,
    buffer: &'a mut Scratch<T>,
) -> &'a [T] {
    let (og, hw) = (geo.og(), geo.out_hw());
    if n == 1 {
        let start = (first * geo.out_c + group * og) * hw;
        return &dout[start..start + og * hw];
    }
    let buffer = buffer.slice(og * n * hw, T::zero());
    for img in 0..n {
        for o in 0..og {
            let src = ((first + img) * geo.out_c + group * og + o) * hw;
            buffer[o * n * hw + img * hw..][..hw].copy_from_slice(&dout[src..src + hw]);
        }
    }
    buffer
}

fn backward_input<T: WithDType>(geo: &Geometry, dout: &[T], w: &[T]) -> Vec<T> {
    if let Some(plan) = geo.winograd() {
        return winograd::backward_input(&plan, dout, w);
    }
    let (og, k, hw) = (geo.og(), geo.k(), geo.out_hw());
    let mut dx = vec![T::zero(); geo.batch * geo.in_c * geo.in_hw()];
    let mut grad_buffer = Scratch::take();
    let mut dcols = Scratch::take();
    // Pointwise convolutions too run in batch blocks: on 14×14 and 7×7 maps one image's product
    // is too narrow for gemm (SK-Res2Net-101's 832→2048 at 7², `bench ops --convs sk2res2net101`).
    let block = geo.block();
    for first in (0..geo.batch).step_by(block) {
        let n = block.min(geo.batch - first);
        for group in 0..geo.groups() {
            let grads = block_grad(geo, dout, first, n, group, &mut grad_buffer);
            let w_g = &w[group * og * k..(group + 1) * og * k];
            if geo.is_pointwise() && n == 1 {
                // dx[img, group] = W_gᵀ · dout[img, group], written in place.
                let start = (first * geo.in_c + group * geo.cg()) * geo.in_hw();
                let dst = &mut dx[start..start + geo.cg() * geo.in_hw()];
                matmul((k, hw, og), dst, hw, false, (w_g, 1, k), (grads, hw, 1));
                continue;
            }
            let dcols = dcols.slice(k * n * hw, T::zero());
            matmul((k, n * hw, og), dcols, n * hw, false, (w_g, 1, k), (grads, n * hw, 1));
            col2im(geo, dcols, first, n, group * geo.cg(), &mut dx);
        }
    }
    dx
}

fn backward_weight<T: WithDType>(geo: &Geometry, x: &[T], dout: &[T]) -> Vec<T> {
    if let Some(plan) = geo.winograd() {
        return winograd::backward_weight(&plan, x, dout);
    }
    let (og, k, hw) = (geo.og(), geo.k(), geo.out_hw());
    let mut dw = vec![T::zero(); geo.out_c * k];
    let mut buffer = Scratch::take();
    let mut grad_buffer = Scratch::take();
    let block = geo.block();
    // gemm forms `dout · colsᵀ` with few output rows (O/g ≤ 64) and a long reduction up to 2.5×
    // faster into a transposed destination (64→64 3×3 at 56², forward + backward: 34.9 → 26.3 ms;
    // 256→64 1×1: 37.6 → 29.8 ms); there the product goes to `[K, O/g]` and is transposed once at
    // the end. With 128 rows and more the transposed form was measured slower (512→128 1×1 at
    // 28²: 15.9 → 23.5 ms; 512→512 3×3 at 7²: 23 → 39 ms), so it is not used there.
    let transposed = og <= 64 && og < k;
    let mut dw_t = if transposed { vec![T::zero(); k * og] } else { Vec::new() };
    for group in 0..geo.groups() {
        for first in (0..geo.batch).step_by(block) {
            let n = block.min(geo.batch - first);
            let grads = block_grad(geo, dout, first, n, group, &mut grad_buffer);
            let cols = block_columns(geo, x, first, n, group, &mut buffer);
            // dW_g += dout_g · colsᵀ: cols is [K, n·HW'], read transposed.
            let dst = if transposed {
                (dw_t.as_mut_slice(), 1, og)
            } else {
                (&mut dw[group * og * k..(group + 1) * og * k], k, 1)
            };
            matmul_strided((og, k, n * hw), dst, first > 0, (grads, n * hw, 1), (cols, 1, n * hw));
        }
        if transposed {
            transpose_into(&dw_t, k, og, &mut dw[group * og * k..(group + 1) * og * k]);
        }
    }
    dw
}

/// `dst[cols × rows] = srcᵀ` for a row-major `src[rows × cols]`, in cache-sized tiles.
fn transpose_into<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// The forward op: `(input [N, C, H, W], weight [O, C/g, kh, kw]) → [N, O, H', W']`.
pub(crate) struct Conv2dOp(pub(crate) Conv2dConfig);

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "dmlp-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(l1.dims(), l2.dims(), self.0)?;
        let out = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(forward(
            &geo,
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((out, Shape::from((geo.batch, geo.out_c, geo.out_h, geo.out_w))))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // Only what the graph needs: the stem's input is the image batch, which tracks no
        // gradient, and its input gradient (a large product and a stride-2 col2im) is skipped.
        let dx = input
            .track_op()
            .then(|| grad.apply_op2_no_bwd(weight, &InputGradOp { config: self.0, input_dims: input.dims().to_vec() }))
            .transpose()?;
        let dw = weight
            .track_op()
            .then(|| {
                input.apply_op2_no_bwd(&grad, &WeightGradOp { config: self.0, weight_dims: weight.dims().to_vec() })
            })
            .transpose()?;
        Ok((dx, dw))
    }
}

/// `(dout, weight) → dx`.
struct InputGradOp {
    config: Conv2dConfig,
    input_dims: Vec<usize>,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "dmlp-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(&self.input_dims, l2.dims(), self.config)?;
        if l1.dims() != [geo.batch, geo.out_c, geo.out_h, geo.out_w] {
            bail!("conv2d input grad: gradient {:?} does not fit the output shape", l1.dims())
        }
        let dx = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(backward_input(
            &geo,
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((dx, Shape::from(self.input_dims.clone())))
    }
}

/// `(input, dout) → dW`.
struct WeightGradOp {
    config: Conv2dConfig,
    weight_dims: Vec<usize>,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "dmlp-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(l1.dims(), &self.weight_dims, self.config)?;
        if l2.dims() != [geo.batch, geo.out_c, geo.out_h, geo.out_w] {
            bail!("conv2d weight grad: gradient {:?} does not fit the output shape", l2.dims())
        }
        let dw = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(backward_weight(
            &geo,
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?
        )));
        Ok((dw, Shape::from(self.weight_dims.clone())))
    }
}
