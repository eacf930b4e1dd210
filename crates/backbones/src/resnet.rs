//! torchvision's ResNet (v1.5: the stride sits on the 3×3 convolution), trainable.

use candle_core::{Module, ModuleT, Result, Tensor, bail};
use candle_nn::VarBuilder;
use dmlp_nn::{BatchNorm, Conv2d, Conv2dConfig, MaxPool2d, batch_norm, conv2d, global_avg_pool, init};
use serde::{Deserialize, Serialize};

/// The residual block of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions, expansion 1 (ResNet-18/34).
    Basic,
    /// 1×1, 3×3, 1×1 convolutions, expansion 4 (ResNet-50/101/152).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Basic => "basic",
            BlockKind::Bottleneck => "bottleneck",
        }
    }
}

/// A convolution without bias, torchvision's initialisation (kaiming normal, fan out).
pub(crate) fn resnet_conv(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv2d(
        in_c,
        out_c,
        kernel,
        Conv2dConfig::new(stride, padding),
        false,
        init::kaiming_normal_fan_out(out_c * kernel * kernel),
        vb,
    )
}

/// `downsample = Sequential(conv1x1(stride), BatchNorm)`: keys `downsample.0`, `downsample.1`.
#[derive(Debug)]
pub(crate) struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

impl Downsample {
    pub(crate) fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: resnet_conv(in_c, out_c, 1, stride, 0, vb.pp("0"))?, bn: batch_norm(out_c, vb.pp("1"))? })
    }

    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(xs)?, train)
    }
}

/// One residual block: keys `conv{1,2,3}`, `bn{1,2,3}`, `downsample.*`.
#[derive(Debug)]
pub(crate) struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<Downsample>,
}

impl Block {
    pub(crate) fn new(kind: BlockKind, in_c: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let out_c = planes * kind.expansion();
        // (in, out, kernel, stride, padding) of conv1, conv2[, conv3].
        let shapes = match kind {
            BlockKind::Basic => vec![(in_c, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            BlockKind::Bottleneck => {
                vec![(in_c, planes, 1, 1, 0), (planes, planes, 3, stride, 1), (planes, out_c, 1, 1, 0)]
            }
        };
        let convs = shapes
            .into_iter()
            .enumerate()
            .map(|(idx, (i, o, k, s, p))| {
                let n = idx + 1;
                Ok((resnet_conv(i, o, k, s, p, vb.pp(format!("conv{n}")))?, batch_norm(o, vb.pp(format!("bn{n}")))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || in_c != out_c {
            Some(Downsample::new(in_c, out_c, stride, vb.pp("downsample"))?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    /// # Shapes
    /// `xs: [B, in, H, W]` → `[B, out, H/stride, W/stride]`.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = xs.clone();
        let last = self.convs.len() - 1;
        for (idx, (conv, bn)) in self.convs.iter().enumerate() {
            let conv_out = conv.forward(&ys)?;
            ys = match idx == last {
                true => bn.forward_t(&conv_out, train)?,
                false => bn.forward_relu_t(&conv_out, train)?,
            };
        }
        let identity = match &self.downsample {
            Some(downsample) => downsample.forward_t(xs, train)?,
            None => xs.clone(),
        };
        dmlp_nn::add_relu(&ys, &identity)
    }
}

/// torchvision's stem: `conv1` 7×7/2, `bn1`, ReLU, max-pool 3×3/2.
#[derive(Debug)]
pub(crate) struct Stem {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
}

impl Stem {
    pub(crate) fn new(width: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: resnet_conv(3, width, 7, 2, 3, vb.pp("conv1"))?,
            bn1: batch_norm(width, vb.pp("bn1"))?,
            maxpool: MaxPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: false },
        })
    }

    /// # Shapes
    /// `images: [B, 3, H, W]` → `[B, width, ⌈H/4⌉, ⌈W/4⌉]`.
    pub(crate) fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.bn1.forward_relu_t(&self.conv1.forward(images)?, train)?; // [B, w, H/2, W/2]
        self.maxpool.forward(&xs)
    }
}

/// The stages of a ResNet: `layer{s+1}` of `layers[s]` blocks with `width·2^s`
/// planes, stride 2 from the second stage on. Returns the stages and their output width.
pub(crate) fn resnet_stages(
    kind: BlockKind,
    layers: &[usize],
    width: usize,
    vb: &VarBuilder,
) -> Result<(Vec<Vec<Block>>, usize)> {
    let mut in_c = width;
    let mut stages = Vec::with_capacity(layers.len());
    for (stage_idx, &n_blocks) in layers.iter().enumerate() {
        let planes = width << stage_idx;
        let stride = if stage_idx == 0 { 1 } else { 2 };
        let stage_vb = vb.pp(format!("layer{}", stage_idx + 1));
        let mut blocks = Vec::with_capacity(n_blocks);
        for block_idx in 0..n_blocks {
            let block_stride = if block_idx == 0 { stride } else { 1 };
            blocks.push(Block::new(kind, in_c, planes, block_stride, stage_vb.pp(block_idx))?);
            in_c = planes * kind.expansion();
        }
        stages.push(blocks);
    }
    Ok((stages, in_c))
}

/// torchvision's `ResNet` without `fc`: `conv1` 7×7/2, `bn1`, ReLU, max-pool 3×3/2, then stages
/// `layer1..` of `layers[s]` blocks with `width·2^s` planes (stride 2 from the second stage on),
/// then global average pooling.
#[derive(Debug)]
pub struct ResNet {
    stem: Stem,
    stages: Vec<Vec<Block>>,
    num_features: usize,
}

impl ResNet {
    pub fn new(kind: BlockKind, layers: &[usize], width: usize, vb: VarBuilder) -> Result<Self> {
        if layers.is_empty() || layers.contains(&0) || width == 0 {
            bail!(
                "a ResNet needs at least one stage, at least one block per stage and a positive width, got layers {layers:?} width {width}"
            )
        }
        let stem = Stem::new(width, &vb)?;
        let (stages, num_features) = resnet_stages(kind, layers, width, &vb)?;
        Ok(Self { stem, stages, num_features })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// # Shapes
    /// `images: [B, 3, H, W]` → `[B, num_features]`.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = self.stem.forward_t(images, train)?; // [B, w, H/4, W/4]
        for stage in &self.stages {
            for block in stage {
                xs = block.forward_t(&xs, train)?;
            }
        }
        global_avg_pool(&xs) // [B, num_features]
    }
}
