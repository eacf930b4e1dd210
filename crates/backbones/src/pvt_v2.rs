//! PVT v2, in timm's `PyramidVisionTransformerV2` layout and `state_dict` names (timm 1.0,
//! `models/pvt_v2.py`): overlapping patch embeddings (7×7 stride 4, then 3×3 stride 2 at the
//! start of every later stage), spatial-reduction attention (keys and values from a map shrunk
//! by a strided convolution, or, in the `linear` variant, average-pooled to 7×7 and projected),
//! MLPs with a 3×3 depthwise convolution, a LayerNorm closing each stage, and the mean over the
//! last stage's map.
//!
//! LayerNorm epsilons follow timm: 1e-5 in the patch embeddings and the attention's reduction
//! (`nn.LayerNorm`), 1e-6 in the blocks and stage norms (timm's own `LayerNorm`).

use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;
use dmlp_nn::{
    Conv2d, Conv2dConfig, DropoutRng, LayerNorm, Linear, adaptive_avg_pool2d, conv2d_zero_bias, drop_path, init,
    layer_norm, layer_norm_with_eps,
};

use crate::transformer::{check_sr_stage, check_stages, dense, drop_path_rates, gelu};

/// timm's `LayerNorm` default.
const BLOCK_NORM_EPS: f64 = 1e-6;

/// Side of the map the `linear` variant pools keys and values to.
const LINEAR_POOL: usize = 7;

/// The explicit description of a PVT v2 (timm's constructor arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct PvtV2Config {
    pub embed_dims: Vec<usize>,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    /// Side of the strided convolution that shrinks keys and values, per stage (8, 4, 2, 1).
    pub sr_ratios: Vec<usize>,
    /// MLP hidden width over the stage width, per stage (8, 8, 4, 4).
    pub mlp_ratios: Vec<f64>,
    /// timm's `_li` variant: keys and values from a 7×7 average pool, ReLU in the MLPs.
    pub linear: bool,
    /// Stochastic depth at the last block, growing linearly from 0.
    pub drop_path_rate: f64,
}

/// A built PVT v2.
#[derive(Debug)]
pub struct PvtV2 {
    patch_embed: OverlapPatchEmbed,
    stages: Vec<Stage>,
    num_features: usize,
}

/// `patch_embed` / `stages.{i}.downsample`: a strided convolution, then LayerNorm over channels.
#[derive(Debug)]
struct OverlapPatchEmbed {
    proj: Conv2d,
    norm: LayerNorm,
}

#[derive(Debug)]
struct Stage {
    downsample: Option<OverlapPatchEmbed>,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: MlpWithDepthwiseConv,
    drop_path: f64,
    rng: DropoutRng,
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    kv: Linear,
    proj: Linear,
    /// The reduction of keys and values: `sr` (a convolution) then `norm`, and in the linear
    /// variant a 7×7 pool before and a GELU after.
    reduction: Option<(Conv2d, LayerNorm)>,
    linear: bool,
    num_heads: usize,
}

#[derive(Debug)]
struct MlpWithDepthwiseConv {
    fc1: Linear,
    dwconv: Conv2d,
    fc2: Linear,
    relu: bool,
}

/// A convolution as timm's PVT v2 initialises it: N(0, 2/fan_out), `fan_out = k²·out/groups`;
/// bias 0.
fn pvt_conv(in_c: usize, out_c: usize, kernel: usize, config: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    let fan_out = kernel * kernel * out_c / config.groups;
    conv2d_zero_bias(in_c, out_c, kernel, config, init::kaiming_normal_fan_out(fan_out), vb)
}

impl PvtV2 {
    /// Builds the network under `vb` (keys at the root: `patch_embed.proj.weight`,
    /// `stages.0.blocks.0.attn.q.weight`, …); `rng` drives stochastic depth.
    pub fn new(config: &PvtV2Config, rng: DropoutRng, vb: VarBuilder) -> Result<Self> {
        let c = config;
        let stages = check_stages(
            "pvt_v2",
            &[
                ("embed_dims", c.embed_dims.len()),
                ("depths", c.depths.len()),
                ("num_heads", c.num_heads.len()),
                ("sr_ratios", c.sr_ratios.len()),
                ("mlp_ratios", c.mlp_ratios.len()),
            ],
        )?;
        if !(0.0..1.0).contains(&c.drop_path_rate) {
            bail!("pvt_v2: drop_path_rate {} must be in [0, 1)", c.drop_path_rate)
        }
        let patch_embed = OverlapPatchEmbed::new(3, c.embed_dims[0], 7, 4, vb.pp("patch_embed"))?;
        let rates = drop_path_rates(c.drop_path_rate, &c.depths);
        let mut built = Vec::with_capacity(stages);
        for (i, stage_rates) in rates.iter().enumerate() {
            let vb = vb.pp(format!("stages.{i}"));
            let dim = c.embed_dims[i];
            let (heads, sr, ratio) = (c.num_heads[i], c.sr_ratios[i], c.mlp_ratios[i]);
            check_sr_stage("pvt_v2", i, dim, heads, sr, ratio)?;
            let downsample = if i > 0 {
                Some(OverlapPatchEmbed::new(c.embed_dims[i - 1], dim, 3, 2, vb.pp("downsample"))?)
            } else {
                None
            };
            let blocks = (0..c.depths[i])
                .map(|j| {
                    let vb = vb.pp(format!("blocks.{j}"));
                    Ok(Block {
                        norm1: layer_norm_with_eps(dim, BLOCK_NORM_EPS, vb.pp("norm1"))?,
                        attn: Attention::new(dim, heads, sr, c.linear, vb.pp("attn"))?,
                        norm2: layer_norm_with_eps(dim, BLOCK_NORM_EPS, vb.pp("norm2"))?,
                        mlp: MlpWithDepthwiseConv::new(dim, (dim as f64 * ratio) as usize, c.linear, vb.pp("mlp"))?,
                        drop_path: stage_rates[j],
                        rng: rng.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let norm = layer_norm_with_eps(dim, BLOCK_NORM_EPS, vb.pp("norm"))?;
            built.push(Stage { downsample, blocks, norm });
        }
        Ok(Self { patch_embed, stages: built, num_features: c.embed_dims[stages - 1] })
    }

    /// Width of the pooled features (the last stage's).
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// timm's `forward_head(forward_features(x), pre_logits=True)`: the mean over the last
    /// stage's (normalised) map.
    ///
    /// # Shapes
    /// `images: [B, 3, H, W]` → `[B, num_features]`.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let mut map = images.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            // [B, C, H, W] → [B, H, W, C'].
            let embedded = match (i, &stage.downsample) {
                (0, _) => self.patch_embed.forward(&map)?,
                (_, Some(downsample)) => downsample.forward(&map)?,
                (_, None) => unreachable!("every stage after the first downsamples"),
            };
            let (b, h, w, c) = embedded.dims4()?;
            let mut tokens = embedded.reshape((b, h * w, c))?;
            for block in &stage.blocks {
                tokens = block.forward(&tokens, (h, w), train)?;
            }
            map = stage.norm.forward(&tokens)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
        }
        crate::transformer::mean_tokens(&map.permute((0, 2, 3, 1))?)
    }
}

impl OverlapPatchEmbed {
    fn new(in_c: usize, out_c: usize, kernel: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: pvt_conv(in_c, out_c, kernel, Conv2dConfig::new(stride, kernel / 2), vb.pp("proj"))?,
            norm: layer_norm(out_c, vb.pp("norm"))?,
        })
    }

    /// # Shapes
    /// `xs: [B, C, H, W]` → `[B, H', W', out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.norm.forward(&self.proj.forward(xs)?.permute((0, 2, 3, 1))?)
    }
}

impl Block {
    /// # Shapes
    /// `xs: [B, N, C]` with `N = H·W` → same shape.
    fn forward(&self, xs: &Tensor, size: (usize, usize), train: bool) -> Result<Tensor> {
        let ys = self.attn.forward(&self.norm1.forward(xs)?, size)?;
        let xs = (xs + drop_path(&ys, self.drop_path, train, &self.rng)?)?;
        let ys = self.mlp.forward(&self.norm2.forward(&xs)?, size)?;
        xs + drop_path(&ys, self.drop_path, train, &self.rng)?
    }
}

impl Attention {
    fn new(dim: usize, num_heads: usize, sr_ratio: usize, linear: bool, vb: VarBuilder) -> Result<Self> {
        let reduction = if linear {
            Some((pvt_conv(dim, dim, 1, Conv2dConfig::new(1, 0), vb.pp("sr"))?, layer_norm(dim, vb.pp("norm"))?))
        } else if sr_ratio > 1 {
            let conv = pvt_conv(dim, dim, sr_ratio, Conv2dConfig::new(sr_ratio, 0), vb.pp("sr"))?;
            Some((conv, layer_norm(dim, vb.pp("norm"))?))
        } else {
            None
        };
        Ok(Self {
            q: dense(dim, dim, true, vb.pp("q"))?,
            kv: dense(dim, 2 * dim, true, vb.pp("kv"))?,
            proj: dense(dim, dim, true, vb.pp("proj"))?,
            reduction,
            linear,
            num_heads,
        })
    }

    /// # Shapes
    /// `xs: [B, N, C]`, `N = H·W` → `[B, N, C]`.
    fn forward(&self, xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = xs.dims3()?;
        let (heads, head_dim) = (self.num_heads, c / self.num_heads);
        let q = self.q.forward(xs)?;
        let source = match &self.reduction {
            None => xs.clone(),
            Some((sr, norm)) => {
                let mut map = xs.permute((0, 2, 1))?.reshape((b, c, h, w))?;
                if self.linear {
                    map = adaptive_avg_pool2d(&map, (LINEAR_POOL, LINEAR_POOL))?;
                }
                let reduced = sr.forward(&map)?;
                let tokens = reduced.flatten_from(2)?.permute((0, 2, 1))?;
                let tokens = norm.forward(&tokens)?;
                if self.linear { gelu(&tokens)? } else { tokens }
            }
        };
        let kv = self.kv.forward(&source)?;
        let out = dmlp_nn::multi_head_attention(&q, &kv, None, heads, (head_dim as f64).powf(-0.5))?;
        self.proj.forward(&out)
    }
}

impl MlpWithDepthwiseConv {
    fn new(dim: usize, hidden: usize, relu: bool, vb: VarBuilder) -> Result<Self> {
        let depthwise = Conv2dConfig { stride: 1, padding: 1, dilation: 1, groups: hidden };
        Ok(Self {
            fc1: dense(dim, hidden, true, vb.pp("fc1"))?,
            dwconv: pvt_conv(hidden, hidden, 3, depthwise, vb.pp("dwconv"))?,
            fc2: dense(hidden, dim, true, vb.pp("fc2"))?,
            relu,
        })
    }

    /// `fc1`, (ReLU in the linear variant), 3×3 depthwise convolution over the map, GELU, `fc2`.
    /// The tokens are the map channels-last, so the convolution reads them as they are.
    ///
    /// # Shapes
    /// `xs: [B, N, C]`, `N = H·W` → `[B, N, C]`.
    fn forward(&self, xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let mut hidden = self.fc1.forward(xs)?;
        if self.relu {
            hidden = dmlp_nn::relu(&hidden)?;
        }
        let bias = self.dwconv.bias().ok_or_else(|| candle_core::Error::Msg("dwconv has a bias".into()))?;
        let mixed = dmlp_nn::depthwise_conv2d_tokens(&hidden, (h, w), self.dwconv.weight(), bias, 1, 1)?;
        self.fc2.forward(&gelu(&mixed)?)
    }
}
