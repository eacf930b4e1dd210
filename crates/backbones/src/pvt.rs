//! PVT v1, the Pyramid Vision Transformer the paper cites, in the layout and `state_dict` names of
//! its authors' classification code (`whai362/PVT`, `classification/pvt.py`): per stage a
//! non-overlapping patch embedding (`patch_embed{i}`: a `patch_size`, then 2, strided
//! convolution and LayerNorm), a learned absolute position embedding (`pos_embed{i}`), blocks of
//! spatial-reduction attention and a plain MLP (`block{i}.{j}`); a class token (`cls_token`)
//! joins the last stage, and the pooled feature is that token after the final `norm`.
//!
//! At another input size the position embeddings are resized bilinearly, as the authors'
//! `_get_pos_embed` does (it compares with the first stage's patch count, so at the trained size
//! every later stage's embedding goes through an identity resize; here none does). LayerNorm
//! epsilons follow the code: 1e-6 in the blocks and the final norm (`partial(nn.LayerNorm,
//! eps=1e-6)`), 1e-5 in the patch embeddings and the attention's reduction.

use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;
use dmlp_nn::{
    Conv2d, Conv2dConfig, DropoutRng, LayerNorm, Linear, conv2d, drop_path, init, layer_norm, layer_norm_with_eps,
};

use crate::transformer::{Mlp, TRUNC_NORMAL, check_sr_stage, check_stages, dense, drop_path_rates};

const BLOCK_NORM_EPS: f64 = 1e-6;

/// The explicit description of a PVT v1 (the authors' constructor arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct PvtConfig {
    /// The resolution the position embeddings are laid out for (224).
    pub img_size: usize,
    /// The first stage's patch size (4); later stages merge 2×2.
    pub patch_size: usize,
    pub embed_dims: Vec<usize>,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub sr_ratios: Vec<usize>,
    pub mlp_ratios: Vec<f64>,
    /// Biases on `q` and `kv` (`qkv_bias=True` in every preset).
    pub qkv_bias: bool,
    pub drop_path_rate: f64,
}

/// A built PVT v1.
#[derive(Debug)]
pub struct Pvt {
    stages: Vec<Stage>,
    cls_token: Tensor,
    norm: LayerNorm,
    num_features: usize,
}

#[derive(Debug)]
struct Stage {
    proj: Conv2d,
    proj_norm: LayerNorm,
    patch: usize,
    /// `[1, grid_h · grid_w (+1 in the last stage), C]`.
    pos_embed: Tensor,
    /// The grid the position embedding is laid out on.
    grid: (usize, usize),
    blocks: Vec<Block>,
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    drop_path: f64,
    rng: DropoutRng,
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    kv: Linear,
    proj: Linear,
    reduction: Option<(Conv2d, LayerNorm)>,
    num_heads: usize,
}

impl Pvt {
    /// Builds the network under `vb` (keys at the root: `patch_embed1.proj.weight`,
    /// `pos_embed1`, `block1.0.attn.q.weight`, `cls_token`, `norm.weight`).
    pub fn new(config: &PvtConfig, rng: DropoutRng, vb: VarBuilder) -> Result<Self> {
        let c = config;
        let stages = check_stages(
            "pvt",
            &[
                ("embed_dims", c.embed_dims.len()),
                ("depths", c.depths.len()),
                ("num_heads", c.num_heads.len()),
                ("sr_ratios", c.sr_ratios.len()),
                ("mlp_ratios", c.mlp_ratios.len()),
            ],
        )?;
        if c.sr_ratios[stages - 1] != 1 {
            bail!(
                "pvt: the last stage carries the class token, so its sr_ratio must be 1, not {}",
                c.sr_ratios[stages - 1]
            )
        }
        if c.patch_size == 0 || c.img_size < c.patch_size << (stages - 1) || !(0.0..1.0).contains(&c.drop_path_rate) {
            bail!(
                "pvt: img_size {} patch_size {} drop_path_rate {} do not make {stages} stages",
                c.img_size,
                c.patch_size,
                c.drop_path_rate
            )
        }
        let rates = drop_path_rates(c.drop_path_rate, &c.depths);
        let mut built = Vec::with_capacity(stages);
        let mut grid = c.img_size / c.patch_size;
        for (i, stage_rates) in rates.iter().enumerate() {
            let n = i + 1;
            let dim = c.embed_dims[i];
            let (heads, sr, ratio) = (c.num_heads[i], c.sr_ratios[i], c.mlp_ratios[i]);
            check_sr_stage("pvt", i, dim, heads, sr, ratio)?;
            let (in_c, patch) = if i == 0 { (3, c.patch_size) } else { (c.embed_dims[i - 1], 2) };
            if i > 0 {
                // The authors' `img_size // 2**(i+1)` over a patch of 2.
                grid = c.img_size / (1 << (i + 1)) / 2;
            }
            let proj = patch_conv(in_c, dim, patch, vb.pp(format!("patch_embed{n}.proj")))?;
            let proj_norm = layer_norm(dim, vb.pp(format!("patch_embed{n}.norm")))?;
            let tokens = grid * grid + usize::from(i == stages - 1);
            let pos_embed = vb.get_with_hints((1, tokens, dim), &format!("pos_embed{n}"), TRUNC_NORMAL)?;
            let blocks = stage_rates
                .iter()
                .enumerate()
                .map(|(j, &drop_path)| {
                    let vb = vb.pp(format!("block{n}.{j}"));
                    Ok(Block {
                        norm1: layer_norm_with_eps(dim, BLOCK_NORM_EPS, vb.pp("norm1"))?,
                        attn: Attention::new(dim, heads, sr, c.qkv_bias, vb.pp("attn"))?,
                        norm2: layer_norm_with_eps(dim, BLOCK_NORM_EPS, vb.pp("norm2"))?,
                        mlp: Mlp::new(dim, (dim as f64 * ratio) as usize, vb.pp("mlp"))?,
                        drop_path,
                        rng: rng.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            built.push(Stage { proj, proj_norm, patch, pos_embed, grid: (grid, grid), blocks });
        }
        let last = c.embed_dims[stages - 1];
        let cls_token = vb.get_with_hints((1, 1, last), "cls_token", TRUNC_NORMAL)?;
        let norm = layer_norm_with_eps(last, BLOCK_NORM_EPS, vb.pp("norm"))?;
        Ok(Self { stages: built, cls_token, norm, num_features: last })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The authors' `forward_features`: the class token after the final norm.
    ///
    /// # Shapes
    /// `images: [B, 3, H, W]` → `[B, num_features]`.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let b = images.dim(0)?;
        let mut map = images.clone();
        let last = self.stages.len() - 1;
        let mut tokens = None;
        for (i, stage) in self.stages.iter().enumerate() {
            let (_, _, h_in, w_in) = map.dims4()?;
            if h_in < stage.patch || w_in < stage.patch {
                bail!("pvt: a {h_in}×{w_in} map at stage {i} is smaller than its {0}×{0} patch", stage.patch)
            }
            let embedded = stage.proj.forward(&map)?;
            let (_, c, h, w) = embedded.dims4()?;
            let mut xs = stage.proj_norm.forward(&embedded.flatten_from(2)?.transpose(1, 2)?)?;
            let pos = stage.position_embedding((h, w), i == last)?;
            if i == last {
                let cls = self.cls_token.broadcast_as((b, 1, c))?;
                xs = Tensor::cat(&[&cls, &xs], 1)?;
            }
            xs = xs.broadcast_add(&pos)?;
            for block in &stage.blocks {
                xs = block.forward(&xs, (h, w), train)?;
            }
            if i == last {
                tokens = Some(xs);
            } else {
                map = xs.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
            }
        }
        let tokens = tokens.expect("a PVT has at least one stage");
        self.norm.forward(&tokens)?.narrow(1, 0, 1)?.squeeze(1)
    }
}

impl Stage {
    /// The position embedding for an `h × w` grid (`[1, h·w (+1), C]`), resized bilinearly
    /// from the trained grid when they differ; the class token's entry is kept as it is.
    fn position_embedding(&self, (h, w): (usize, usize), with_cls: bool) -> Result<Tensor> {
        if (h, w) == self.grid {
            return Ok(self.pos_embed.clone());
        }
        let c = self.pos_embed.dim(2)?;
        let skip = usize::from(with_cls);
        let (gh, gw) = self.grid;
        let grid = self.pos_embed.narrow(1, skip, gh * gw)?.reshape((1, gh, gw, c))?.permute((0, 3, 1, 2))?;
        let resized = dmlp_nn::resize_bilinear(&grid, (h, w))?.flatten_from(2)?.transpose(1, 2)?;
        if with_cls { Tensor::cat(&[&self.pos_embed.narrow(1, 0, 1)?, &resized], 1) } else { Ok(resized) }
    }
}

impl Block {
    /// # Shapes
    /// `xs: [B, N, C]` (`N = H·W`, plus the class token in the last stage) → same shape.
    fn forward(&self, xs: &Tensor, size: (usize, usize), train: bool) -> Result<Tensor> {
        let ys = self.attn.forward(&self.norm1.forward(xs)?, size)?;
        let xs = (xs + drop_path(&ys, self.drop_path, train, &self.rng)?)?;
        let ys = self.mlp.forward(&self.norm2.forward(&xs)?)?;
        xs + drop_path(&ys, self.drop_path, train, &self.rng)?
    }
}

/// A `k`×`k` convolution with stride `k` (a patch embedding, a spatial reduction), with bias and
/// PyTorch's default initialisation, as the authors' code leaves them.
fn patch_conv(in_c: usize, out_c: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(in_c, out_c, k, Conv2dConfig::new(k, 0), true, init::pytorch_default(in_c * k * k), vb)
}

impl Attention {
    fn new(dim: usize, num_heads: usize, sr_ratio: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        let reduction = if sr_ratio > 1 {
            let conv = patch_conv(dim, dim, sr_ratio, vb.pp("sr"))?;
            Some((conv, layer_norm(dim, vb.pp("norm"))?))
        } else {
            None
        };
        Ok(Self {
            q: dense(dim, dim, qkv_bias, vb.pp("q"))?,
            kv: dense(dim, 2 * dim, qkv_bias, vb.pp("kv"))?,
            proj: dense(dim, dim, true, vb.pp("proj"))?,
            reduction,
            num_heads,
        })
    }

    /// # Shapes
    /// `xs: [B, N, C]` → `[B, N, C]`.
    fn forward(&self, xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = xs.dims3()?;
        let q = self.q.forward(xs)?;
        let source = match &self.reduction {
            None => xs.clone(),
            Some((sr, norm)) => {
                let map = xs.transpose(1, 2)?.reshape((b, c, h, w))?;
                norm.forward(&sr.forward(&map)?.flatten_from(2)?.transpose(1, 2)?)?
            }
        };
        let kv = self.kv.forward(&source)?;
        let scale = ((c / self.num_heads) as f64).powf(-0.5);
        self.proj.forward(&dmlp_nn::multi_head_attention(&q, &kv, None, self.num_heads, scale)?)
    }
}
