//! The reference's SK-Res2Net (`models/sk2res2net.py`, spec §5.2), trainable.
//!
//! `SK2Res2Net(depth, scales=4, base_width=26, ratio=4, avg_down_after=True, deep_stem=True,
//! avg_down=True)` on an mmdet-style ResNet base: a three-convolution stem, Res2Net bottlenecks
//! whose splits are fused by a selective-kernel (SK) layer, and average-pool downsampling. In the
//! first block of a stage the 3×3 convolutions and the SK layer run at the input resolution and
//! the 3×3 average pool comes after the SK layer.

use candle_core::{Module, ModuleT, Result, Tensor, bail};
use candle_nn::{Init, VarBuilder};
use dmlp_nn::{AvgPool2d, BatchNorm, Conv2d, Conv2dConfig, MaxPool2d, batch_norm, conv2d, global_avg_pool, init};

const SCALES: usize = 4;
const BASE_WIDTH: usize = 26;
/// The reference's planes per split relate to 64 channels: width = planes · 26 / 64.
const BASE_CHANNELS: usize = 64;
const SK_RATIO: usize = 4;
const SK_MIN_HIDDEN: usize = 32;
const EXPANSION: usize = 4;

/// A convolution with PyTorch's default initialisation (the reference never re-initialises).
fn conv(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv2d(
        in_c,
        out_c,
        kernel,
        Conv2dConfig::new(stride, padding),
        bias,
        init::pytorch_default(in_c * kernel * kernel),
        vb,
    )
}

/// The selective-kernel layer: keys `alpha` `[1, 1, 1, 1]` and
/// `sk_proj.{0: conv 1×1 W4→h, 1: BN h, 3: conv 1×1 h→W4 with bias}`.
#[derive(Debug)]
struct SkLayer {
    alpha: Tensor,
    reduce: Conv2d,
    bn: BatchNorm,
    expand: Conv2d,
}

impl SkLayer {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = (channels / SK_RATIO).max(SK_MIN_HIDDEN);
        let proj = vb.pp("sk_proj");
        Ok(Self {
            alpha: vb.get_with_hints((1, 1, 1, 1), "alpha", Init::Const(0.0))?,
            reduce: conv(channels, hidden, 1, 1, 0, false, proj.pp("0"))?,
            bn: batch_norm(hidden, proj.pp("1"))?,
            expand: conv(hidden, channels, 1, 1, 0, true, proj.pp("3"))?,
        })
    }

    /// `z = s·fx + (1 − s)·out` with `s = σ(expand(ReLU(BN(reduce(a·GAP(out) + (1 − a)·GAP(fx))))))`,
    /// `a = σ(alpha)`.
    ///
    /// # Shapes
    /// `out, fx: [B, W4, H, W]` → `[B, W4, H, W]`.
    fn forward_t(&self, out: &Tensor, fx: &Tensor, train: bool) -> Result<Tensor> {
        // a·GAP(out) + (1 − a)·GAP(fx), one op forward and backward (dmlp_nn::pool_mix).
        let gv = dmlp_nn::pool_mix(out, fx, &self.alpha)?; // [B, W4, 1, 1]
        let hidden = self.bn.forward_relu_t(&self.reduce.forward(&gv)?, train)?; // [B, h, 1, 1]
        let s = candle_nn::ops::sigmoid(&self.expand.forward(&hidden)?)?; // [B, W4, 1, 1]
        // (fx − out)·s + out, one op forward and backward (dmlp_nn::channel_blend).
        dmlp_nn::channel_blend(out, fx, &s)
    }
}

/// `downsample = Sequential(AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
/// conv1x1, BN)`: keys `downsample.1`, `downsample.2`.
#[derive(Debug)]
struct AvgDownsample {
    pool: AvgPool2d,
    conv: Conv2d,
    bn: BatchNorm,
}

impl AvgDownsample {
    fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            pool: AvgPool2d { kernel: stride, stride, padding: 0, ceil_mode: true, count_include_pad: false },
            conv: conv(in_c, out_c, 1, 1, 0, false, vb.pp("1"))?,
            bn: batch_norm(out_c, vb.pp("2"))?,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = if self.pool.stride == 1 { xs.clone() } else { self.pool.forward(xs)? };
        self.bn.forward_t(&self.conv.forward(&xs)?, train)
    }
}

/// `Bottle2neck` with SK fusion. Keys `conv1`, `bn1`, `convs.{0,1,2}`, `bns.{0,1,2}`, `sk.*`,
/// `conv3`, `bn3`, `downsample.*`.
#[derive(Debug)]
struct Bottle2neck {
    conv1: Conv2d,
    bn1: BatchNorm,
    convs: Vec<(Conv2d, BatchNorm)>,
    sk: SkLayer,
    after_sk_pool: Option<AvgPool2d>,
    conv3: Conv2d,
    bn3: BatchNorm,
    downsample: Option<AvgDownsample>,
    /// First block of a stage (`stage_type='stage'`): no hierarchical adds between the splits.
    first_in_stage: bool,
    split_width: usize,
}

impl Bottle2neck {
    fn new(in_c: usize, planes: usize, stride: usize, first_in_stage: bool, vb: VarBuilder) -> Result<Self> {
        let split_width = planes * BASE_WIDTH / BASE_CHANNELS;
        let width = split_width * SCALES;
        let out_c = planes * EXPANSION;
        let convs = (0..SCALES - 1)
            .map(|idx| {
                Ok((
                    conv(split_width, split_width, 3, 1, 1, false, vb.pp("convs").pp(idx))?,
                    batch_norm(split_width, vb.pp("bns").pp(idx))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let after_sk_pool = (first_in_stage && stride != 1).then_some(AvgPool2d {
            kernel: 3,
            stride,
            padding: 1,
            ceil_mode: false,
            count_include_pad: true,
        });
        let downsample = (stride != 1 || in_c != out_c)
            .then(|| AvgDownsample::new(in_c, out_c, stride, vb.pp("downsample")))
            .transpose()?;
        Ok(Self {
            conv1: conv(in_c, width, 1, 1, 0, false, vb.pp("conv1"))?,
            bn1: batch_norm(width, vb.pp("bn1"))?,
            convs,
            sk: SkLayer::new(width, vb.pp("sk"))?,
            after_sk_pool,
            conv3: conv(width, out_c, 1, 1, 0, false, vb.pp("conv3"))?,
            bn3: batch_norm(out_c, vb.pp("bn3"))?,
            downsample,
            first_in_stage,
            split_width,
        })
    }

    /// # Shapes
    /// `xs: [B, in, H, W]` → `[B, 4·planes, H/stride, W/stride]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let out = self.bn1.forward_relu_t(&self.conv1.forward(xs)?, train)?; // [B, W4, H, W]
        let splits = (0..SCALES)
            .map(|idx| out.narrow(1, idx * self.split_width, self.split_width))
            .collect::<Result<Vec<_>>>()?;
        let mut pieces: Vec<Tensor> = Vec::with_capacity(SCALES);
        for (idx, (conv, bn)) in self.convs.iter().enumerate() {
            let input = match (idx, self.first_in_stage) {
                (0, _) | (_, true) => splits[idx].clone(),
                (_, false) => (&pieces[idx - 1] + &splits[idx])?,
            };
            pieces.push(bn.forward_relu_t(&conv.forward(&input)?, train)?);
        }
        pieces.push(splits[SCALES - 1].clone()); // the last split passes through untouched
        let fx = Tensor::cat(&pieces, 1)?; // [B, W4, H, W]
        let mut z = self.sk.forward_t(&out, &fx, train)?;
        if let Some(pool) = &self.after_sk_pool {
            z = pool.forward(&z)?; // [B, W4, H/s, W/s]
        }
        let ys = self.bn3.forward_t(&self.conv3.forward(&z)?, train)?;
        let identity = match &self.downsample {
            Some(downsample) => downsample.forward_t(xs, train)?,
            None => xs.clone(),
        };
        dmlp_nn::add_relu(&ys, &identity)
    }
}

/// The deep stem: `stem.{0,3,6}` 3×3 convolutions (3→32/2, 32→32, 32→64) with `stem.{1,4,7}`
/// BatchNorms and ReLUs.
#[derive(Debug)]
struct DeepStem {
    layers: Vec<(Conv2d, BatchNorm)>,
}

impl DeepStem {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let half = channels / 2;
        let shapes = [(3, half, 2, 0), (half, half, 1, 3), (half, channels, 1, 6)];
        let layers = shapes
            .into_iter()
            .map(|(i, o, s, key)| Ok((conv(i, o, 3, s, 1, false, vb.pp(key))?, batch_norm(o, vb.pp(key + 1))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (conv, bn) in &self.layers {
            xs = bn.forward_relu_t(&conv.forward(&xs)?, train)?;
        }
        Ok(xs)
    }
}

/// SK-Res2Net without `fc`: deep stem, max-pool 3×3/2, stages of `layers[s]` Bottle2necks with
/// `width·2^s` planes (`width` 64 in the reference), global average pooling. `[3, 4, 6, 3]` is SK-Res2Net-50, `[3, 4, 23, 3]` the
/// paper's SK-Res2Net-101.
#[derive(Debug)]
pub struct Sk2Res2Net {
    stem: DeepStem,
    maxpool: MaxPool2d,
    stages: Vec<Vec<Bottle2neck>>,
    num_features: usize,
}

impl Sk2Res2Net {
    /// `width` is the stem's output and the first stage's planes (64 in the reference).
    pub fn new(layers: &[usize], width: usize, vb: VarBuilder) -> Result<Self> {
        if layers.is_empty() || layers.contains(&0) || width < 4 {
            bail!(
                "an SK-Res2Net needs at least one stage, one block per stage and a width of at least 4, got layers {layers:?} width {width}"
            )
        }
        let stem = DeepStem::new(width, vb.pp("stem"))?;
        let mut in_c = width;
        let mut stages = Vec::with_capacity(layers.len());
        for (stage_idx, &n_blocks) in layers.iter().enumerate() {
            let planes = width << stage_idx;
            let stride = if stage_idx == 0 { 1 } else { 2 };
            let stage_vb = vb.pp(format!("layer{}", stage_idx + 1));
            let mut blocks = Vec::with_capacity(n_blocks);
            for block_idx in 0..n_blocks {
                let first = block_idx == 0;
                blocks.push(Bottle2neck::new(
                    in_c,
                    planes,
                    if first { stride } else { 1 },
                    first,
                    stage_vb.pp(block_idx),
                )?);
                in_c = planes * EXPANSION;
            }
            stages.push(blocks);
        }
        let maxpool = MaxPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: false };
        Ok(Self { stem, maxpool, stages, num_features: in_c })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// # Shapes
    /// `images: [B, 3, H, W]` → `[B, num_features]`.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.stem.forward_t(images, train)?; // [B, 64, H/2, W/2]
        let mut xs = self.maxpool.forward(&xs)?; // [B, 64, H/4, W/4]
        for stage in &self.stages {
            for block in stage {
                xs = block.forward_t(&xs, train)?;
            }
        }
        global_avg_pool(&xs) // [B, num_features]
    }
}
