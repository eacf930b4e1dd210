//! Swin Transformer, in timm's `SwinTransformer` layout and `state_dict` names (timm 1.0,
//! `models/swin_transformer.py`): a 4×4 patch embedding, stages of windowed self-attention with a
//! relative position bias, every second block's windows shifted by half a window, patch merging
//! at the start of every stage after the first, a final LayerNorm, and the mean over tokens.
//!
//! As in timm, window sizes and shifts are fixed at construction from `img_size`: a window larger
//! than a stage's feature map shrinks to the map, with no shift (so the relative position table's
//! shape follows the shrunk window). Maps that are not a multiple of the window are padded with
//! zeros after the shift, as timm pads them, and the shift mask is computed for the padded map.
//! Absolute position embeddings are off (timm's default).

use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;
use dmlp_nn::{Conv2d, Conv2dConfig, DropoutRng, LayerNorm, Linear, conv2d, drop_path, init, layer_norm};

use crate::transformer::{Mlp, TRUNC_NORMAL, check_stages, dense, drop_path_rates, mean_tokens, projection_slice};

/// The explicit description of a Swin Transformer (timm's constructor arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct SwinConfig {
    /// The training resolution the windows are laid out for (224 or 384 for the presets).
    pub img_size: usize,
    pub patch_size: usize,
    pub window_size: usize,
    /// Width of the first stage; stage `i` is `embed_dim · 2^i` wide.
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    /// Hidden width of each block's MLP over its width (4).
    pub mlp_ratio: f64,
    /// Stochastic depth at the last block (timm's `drop_path_rate`), growing linearly from 0.
    pub drop_path_rate: f64,
}

/// A built Swin Transformer.
#[derive(Debug)]
pub struct Swin {
    patch_proj: Conv2d,
    patch_norm: LayerNorm,
    patch_size: usize,
    stages: Vec<Stage>,
    norm: LayerNorm,
    num_features: usize,
}

#[derive(Debug)]
struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<Block>,
}

/// `layers.{i}.downsample`: 2×2 neighbouring tokens concatenated (timm's order), LayerNorm,
/// a bias-free projection to the next width.
#[derive(Debug)]
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    window: usize,
    shift: usize,
    drop_path: f64,
    rng: DropoutRng,
}

#[derive(Debug)]
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    /// `[(2w − 1)², heads]`.
    relative_position_bias_table: Tensor,
    /// `[w⁴]` (u32): the table row of each (query, key) pair of a window.
    relative_position_index: Tensor,
    num_heads: usize,
}

impl Swin {
    /// Builds the network under `vb` (keys at the root: `patch_embed.proj.weight`, `layers.0…`,
    /// `norm.weight`); `rng` drives stochastic depth.
    pub fn new(config: &SwinConfig, rng: DropoutRng, vb: VarBuilder) -> Result<Self> {
        let c = config;
        let stages = check_stages("swin", &[("depths", c.depths.len()), ("num_heads", c.num_heads.len())])?;
        if c.patch_size == 0 || c.window_size == 0 || c.embed_dim == 0 || c.img_size < c.patch_size {
            bail!(
                "swin: img_size {} patch_size {} window_size {} embed_dim {}: sizes must be positive, the image at least a patch",
                c.img_size,
                c.patch_size,
                c.window_size,
                c.embed_dim
            )
        }
        if !c.img_size.is_multiple_of(c.patch_size) {
            bail!("swin: img_size {} is not a multiple of patch_size {}", c.img_size, c.patch_size)
        }
        if c.mlp_ratio.is_nan() || c.mlp_ratio <= 0.0 || !(0.0..1.0).contains(&c.drop_path_rate) {
            bail!("swin: mlp_ratio {} must be positive and drop_path_rate {} in [0, 1)", c.mlp_ratio, c.drop_path_rate)
        }
        let in_fan = 3 * c.patch_size * c.patch_size;
        let patch_proj = conv2d(
            3,
            c.embed_dim,
            c.patch_size,
            Conv2dConfig::new(c.patch_size, 0),
            true,
            init::pytorch_default(in_fan),
            vb.pp("patch_embed.proj"),
        )?;
        let patch_norm = layer_norm(c.embed_dim, vb.pp("patch_embed.norm"))?;
        let rates = drop_path_rates(c.drop_path_rate, &c.depths);
        let mut resolution = c.img_size / c.patch_size;
        let mut dim = c.embed_dim;
        let mut built = Vec::with_capacity(stages);
        for (i, stage_rates) in rates.iter().enumerate() {
            let vb = vb.pp(format!("layers.{i}"));
            let downsample = if i > 0 {
                let merged = PatchMerging::new(dim, 2 * dim, vb.pp("downsample"))?;
                dim *= 2;
                resolution = resolution.div_ceil(2);
                Some(merged)
            } else {
                None
            };
            let heads = c.num_heads[i];
            if heads == 0 || !dim.is_multiple_of(heads) {
                bail!("swin: stage {i} is {dim} wide, which {heads} heads do not divide")
            }
            // timm's `_calc_window_shift`: a window no smaller than the map becomes the map, unshifted.
            let (window, shift) =
                if resolution <= c.window_size { (resolution, 0) } else { (c.window_size, c.window_size / 2) };
            let blocks = (0..c.depths[i])
                .map(|j| {
                    let block_shift = if j % 2 == 0 { 0 } else { shift };
                    let hidden = (dim as f64 * c.mlp_ratio) as usize;
                    Block::new(
                        dim,
                        heads,
                        window,
                        block_shift,
                        hidden,
                        stage_rates[j],
                        rng.clone(),
                        vb.pp(format!("blocks.{j}")),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            built.push(Stage { downsample, blocks });
        }
        let norm = layer_norm(dim, vb.pp("norm"))?;
        Ok(Self { patch_proj, patch_norm, patch_size: c.patch_size, stages: built, norm, num_features: dim })
    }

    /// Width of the pooled features (`embed_dim · 2^(stages − 1)`).
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// timm's `forward_head(forward_features(x), pre_logits=True)`: the final LayerNorm, then
    /// the mean over tokens.
    ///
    /// # Shapes
    /// `images: [B, 3, H, W]` (`H`, `W` multiples of the patch size) → `[B, num_features]`.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = images.dims4()?;
        if h % self.patch_size != 0 || w % self.patch_size != 0 {
            bail!("swin: a {h}×{w} image is not a whole number of {0}×{0} patches", self.patch_size)
        }
        let mut xs = self.patch_norm.forward(&self.patch_proj.forward(images)?.permute((0, 2, 3, 1))?)?;
        for stage in &self.stages {
            if let Some(merge) = &stage.downsample {
                xs = merge.forward(&xs)?;
            }
            for block in &stage.blocks {
                xs = block.forward(&xs, train)?;
            }
        }
        mean_tokens(&self.norm.forward(&xs)?)
    }
}

impl PatchMerging {
    fn new(dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(4 * dim, vb.pp("norm"))?,
            reduction: dense(4 * dim, out_dim, false, vb.pp("reduction"))?,
        })
    }

    /// # Shapes
    /// `xs: [B, H, W, C]` → `[B, ⌈H/2⌉, ⌈W/2⌉, out_dim]` (odd sizes padded with zeros).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = xs.dims4()?;
        let xs = xs.pad_with_zeros(1, 0, h % 2)?.pad_with_zeros(2, 0, w % 2)?;
        let (h, w) = (h.div_ceil(2), w.div_ceil(2));
        // timm: reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3).
        let merged = xs.reshape((b, h, 2, w, 2, c))?.permute((0, 1, 3, 4, 2, 5))?.reshape((b, h, w, 4 * c))?;
        self.reduction.forward(&self.norm.forward(&merged)?)
    }
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        dim: usize,
        heads: usize,
        window: usize,
        shift: usize,
        hidden: usize,
        drop_path: f64,
        rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, vb.pp("norm1"))?,
            attn: WindowAttention::new(dim, heads, window, vb.pp("attn"))?,
            norm2: layer_norm(dim, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, hidden, vb.pp("mlp"))?,
            window,
            shift,
            drop_path,
            rng,
        })
    }

    /// # Shapes
    /// `xs: [B, H, W, C]` → same shape.
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = xs.dims4()?;
        let (ws, shift) = (self.window, self.shift as i32);
        let mut ys = self.norm1.forward(xs)?;
        if shift > 0 {
            ys = ys.roll(-shift, 1)?.roll(-shift, 2)?;
        }
        let (pad_h, pad_w) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let ys = ys.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?;
        let (hp, wp) = (h + pad_h, w + pad_w);
        let windows = window_partition(&ys, ws)?;
        let mask = if shift > 0 { Some(shift_mask(hp, wp, ws, self.shift, xs.device())?) } else { None };
        let attended = self.attn.forward(&windows, mask.as_ref())?;
        let mut ys = window_reverse(&attended, ws, b, hp, wp, c)?.narrow(1, 0, h)?.narrow(2, 0, w)?;
        if shift > 0 {
            ys = ys.roll(shift, 1)?.roll(shift, 2)?;
        }
        let xs = (xs + drop_path(&ys, self.drop_path, train, &self.rng)?)?;
        let ys = self.mlp.forward(&self.norm2.forward(&xs)?)?;
        xs + drop_path(&ys, self.drop_path, train, &self.rng)?
    }
}

/// `[B, H, W, C]` (`H`, `W` multiples of `ws`) → `[B · nW, ws², C]`, windows row by row.
fn window_partition(xs: &Tensor, ws: usize) -> Result<Tensor> {
    let (b, h, w, c) = xs.dims4()?;
    xs.reshape((b, h / ws, ws, w / ws, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.reshape((
        b * (h / ws) * (w / ws),
        ws * ws,
        c,
    ))
}

/// The inverse of [`window_partition`]: `[B · nW, ws², C]` → `[B, H, W, C]`.
fn window_reverse(windows: &Tensor, ws: usize, b: usize, h: usize, w: usize, c: usize) -> Result<Tensor> {
    windows.reshape((b, h / ws, w / ws, ws, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.reshape((b, h, w, c))
}

/// timm's `get_attn_mask` for a shifted block on an `h × w` (padded) map: tokens of a window that
/// came from different regions of the rolled map get −100 between them, others 0.
///
/// # Shapes
/// → `[nW, ws², ws²]` (f32).
fn shift_mask(h: usize, w: usize, ws: usize, shift: usize, device: &candle_core::Device) -> Result<Tensor> {
    // Region of a coordinate: [0, len − ws), [len − ws, len − shift), [len − shift, len).
    let region = |x: usize, len: usize| usize::from(x >= len - ws) + usize::from(x >= len - shift);
    let (nh, nw, n) = (h / ws, w / ws, ws * ws);
    let mut mask = vec![0f32; nh * nw * n * n];
    for wy in 0..nh {
        for wx in 0..nw {
            let ids: Vec<usize> = (0..n)
                .map(|t| {
                    let (y, x) = (wy * ws + t / ws, wx * ws + t % ws);
                    region(y, h) * 3 + region(x, w)
                })
                .collect();
            let block = &mut mask[(wy * nw + wx) * n * n..][..n * n];
            for (i, &a) in ids.iter().enumerate() {
                for (j, &b) in ids.iter().enumerate() {
                    block[i * n + j] = if a == b { 0.0 } else { -100.0 };
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), device)
}

/// timm's `get_relative_position_index` for a `ws × ws` window: `(Δy + ws − 1)(2ws − 1) + Δx + ws − 1`.
fn relative_position_index(ws: usize, device: &candle_core::Device) -> Result<Tensor> {
    let n = ws * ws;
    let index: Vec<u32> = (0..n * n)
        .map(|pair| {
            let (i, j) = (pair / n, pair % n);
            let dy = (i / ws) as i64 - (j / ws) as i64 + ws as i64 - 1;
            let dx = (i % ws) as i64 - (j % ws) as i64 + ws as i64 - 1;
            (dy * (2 * ws as i64 - 1) + dx) as u32
        })
        .collect();
    Tensor::from_vec(index, n * n, device)
}

impl WindowAttention {
    fn new(dim: usize, num_heads: usize, window: usize, vb: VarBuilder) -> Result<Self> {
        let table_rows = (2 * window - 1) * (2 * window - 1);
        Ok(Self {
            qkv: dense(dim, 3 * dim, true, vb.pp("qkv"))?,
            proj: dense(dim, dim, true, vb.pp("proj"))?,
            relative_position_bias_table: vb.get_with_hints(
                (table_rows, num_heads),
                "relative_position_bias_table",
                TRUNC_NORMAL,
            )?,
            relative_position_index: relative_position_index(window, vb.device())?,
            num_heads,
        })
    }

    /// # Shapes
    /// `xs: [B · nW, N, C]` (`N = ws²`), `mask: [nW, N, N]` → `[B · nW, N, C]`.
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (_, n, c) = xs.dims3()?;
        let heads = self.num_heads;
        let q = projection_slice(&self.qkv, xs, 0, c)?;
        let kv = projection_slice(&self.qkv, xs, c, 2 * c)?;
        // [N·N, heads] → [1, heads, N, N], plus each window's mask → [nW, heads, N, N].
        let bias = self
            .relative_position_bias_table
            .index_select(&self.relative_position_index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        let bias = match mask {
            Some(mask) => bias.broadcast_add(&mask.to_dtype(bias.dtype())?.unsqueeze(1)?)?,
            None => bias,
        };
        let scale = ((c / heads) as f64).powf(-0.5);
        let out = dmlp_nn::multi_head_attention(&q, &kv, Some(&bias), heads, scale)?;
        self.proj.forward(&out)
    }
}
