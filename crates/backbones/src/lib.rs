//! Trainable image backbones that pool an image into a feature vector.
//!
//! - [`ResNet`]: torchvision's layout (v1.5, stride on the 3×3 convolution) for any block and
//!   stage depths; ResNet-18/34/50/101/152 are presets. The pooled width follows the block: 512
//!   for basic blocks, 2048 for bottlenecks (times `width / 64`).
//! - [`Sk2Res2Net`]: the reference's SK-Res2Net (`models/sk2res2net.py`, spec §5.2): deep stem,
//!   average-pool downsampling, Res2Net scales 4 and base width 26, selective-kernel fusion with
//!   ratio 4, and pooling after the SK layer in the first block of a stage.
//! - [`Swin`]: timm's `SwinTransformer` (names, window clamping and shifting, padding to whole
//!   windows with the shift mask, patch merging); presets Swin-T/S/B/L.
//! - [`PvtV2`]: timm's `PyramidVisionTransformerV2` (spatial-reduction attention, overlapping
//!   patch embeddings, the `linear` variant); presets b0–b5 and b2-li.
//! - [`Pvt`]: PVT v1 in its authors' layout (`whai362/PVT`), position embeddings resized at other
//!   sizes; presets tiny–large.
//! - [`BotNet`]: a **reconstruction** of BoTNet (ResNet with multi-head self-attention and 2-D
//!   relative position logits in its last stage, timm's `BottleneckAttn`); presets BoT-50/152.
//!
//! Stochastic depth (`drop_path_rate`) draws from the model's dropout stream and is off in the
//! presets, as in parity.
//!
//! Every backbone implements [`Backbone::forward_features`] with a `train` flag: BatchNorm uses
//! batch statistics and updates its running statistics while training, and running statistics in
//! evaluation. Parameter names sit at the root (`conv1.weight`, `layer1.0.bn1.running_mean`,
//! `stem.0.weight`), as in the reference's `state_dict`.
//!
//! Architecture invariant: backbones see images only; nothing here knows locations, fusion heads
//! or datasets.

mod botnet;
mod pvt;
mod pvt_v2;
mod resnet;
mod sk2res2net;
mod spec;
mod swin;
mod transformer;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use dmlp_nn::DropoutRng;

pub use botnet::{BotNet, BotNetConfig};
pub use pvt::{Pvt, PvtConfig};
pub use pvt_v2::{PvtV2, PvtV2Config};
pub use resnet::{BlockKind, ResNet};
pub use sk2res2net::Sk2Res2Net;
pub use spec::{BackbonePreset, BackboneSpec, CustomBackbone};
pub use swin::{Swin, SwinConfig};

/// A built backbone.
#[derive(Debug)]
pub enum Backbone {
    ResNet(ResNet),
    Sk2Res2Net(Sk2Res2Net),
    Swin(Swin),
    PvtV2(PvtV2),
    Pvt(Pvt),
    BotNet(BotNet),
}

impl Backbone {
    /// Builds the backbone `spec` describes, its parameters under `vb` (at the root); `rng` is
    /// the model's dropout stream, which stochastic depth draws from.
    pub fn new(spec: &BackboneSpec, rng: DropoutRng, vb: VarBuilder) -> Result<Self> {
        let custom = spec.resolve();
        if let Some(config) = custom.swin_config() {
            return Ok(Backbone::Swin(Swin::new(&config, rng, vb)?));
        }
        if let Some(config) = custom.pvt_v2_config() {
            return Ok(Backbone::PvtV2(PvtV2::new(&config, rng, vb)?));
        }
        if let Some(config) = custom.pvt_config() {
            return Ok(Backbone::Pvt(Pvt::new(&config, rng, vb)?));
        }
        if let Some(config) = custom.botnet_config() {
            return Ok(Backbone::BotNet(BotNet::new(&config, vb)?));
        }
        match custom {
            CustomBackbone::Resnet { block, layers, width } => {
                Ok(Backbone::ResNet(ResNet::new(block, &layers, width, vb)?))
            }
            CustomBackbone::Sk2res2net { layers, width } => {
                Ok(Backbone::Sk2Res2Net(Sk2Res2Net::new(&layers, width, vb)?))
            }
            CustomBackbone::Swin { .. }
            | CustomBackbone::PvtV2 { .. }
            | CustomBackbone::Pvt { .. }
            | CustomBackbone::Botnet { .. } => {
                unreachable!("built above")
            }
        }
    }

    /// Width of the pooled feature vector.
    pub fn num_features(&self) -> usize {
        match self {
            Backbone::ResNet(net) => net.num_features(),
            Backbone::Sk2Res2Net(net) => net.num_features(),
            Backbone::Swin(net) => net.num_features(),
            Backbone::PvtV2(net) => net.num_features(),
            Backbone::Pvt(net) => net.num_features(),
            Backbone::BotNet(net) => net.num_features(),
        }
    }

    /// # Shapes
    /// `images: [B, 3, H, W]` → `[B, num_features]` (global average pool of the last stage).
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Backbone::ResNet(net) => net.forward_features(images, train),
            Backbone::Sk2Res2Net(net) => net.forward_features(images, train),
            Backbone::Swin(net) => net.forward_features(images, train),
            Backbone::PvtV2(net) => net.forward_features(images, train),
            Backbone::Pvt(net) => net.forward_features(images, train),
            Backbone::BotNet(net) => net.forward_features(images, train),
        }
    }
}

/// ImageNet normalisation every preset expects: per-channel mean and standard deviation of
/// images scaled to [0, 1] (torchvision's `Normalize`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
