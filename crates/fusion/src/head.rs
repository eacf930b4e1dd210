//! The fusion module (`loc_att`), its configuration, and the head that pairs it with `loc_net`.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use dmlp_nn::{DropoutRng, LayerNorm, Linear, layer_norm, linear};

use crate::attention::{AttentionBlock, AttentionInputs};
use crate::dagger::DaggerBlock;
use crate::matched::{FuseOp, MatchedBlock};
use crate::{DynamicMlpA, DynamicMlpB, DynamicMlpC, FcNet, FusionError};

/// Which block the fusion module stacks: the reference's `--mlp_type`, widened with the
/// matched-complexity baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionKind {
    /// Dynamic MLP, version A (`--mlp_type a`).
    DynamicMlpA,
    /// Dynamic MLP, version B (`--mlp_type b`).
    DynamicMlpB,
    /// Dynamic MLP, version C (`--mlp_type c`, the reference's default).
    DynamicMlpC,
    /// "Concatenation*" of Table S4 (a reconstruction, see [`crate::matched`]).
    ConcatMatched,
    /// "Addition*" of Table S4 (a reconstruction).
    AddMatched,
    /// "Multiplication*" of Table S4 (a reconstruction).
    MulMatched,
    /// Table S3's attention with the query from the image, keys and values from the location
    /// (a reconstruction, see [`crate::attention`]).
    AttentionImageQuery,
    /// Table S3's attention with the query from the location, keys and values from the image.
    AttentionLocationQuery,
    /// Table S3's attention with query, keys and values from the concatenation of both.
    AttentionConcat,
    /// "Concatenation†" of Table S5 (a reconstruction, see [`crate::dagger`]).
    ConcatDagger,
    /// "Addition†" of Table S5.
    AddDagger,
    /// "Multiplication†" of Table S5.
    MulDagger,
}

impl FusionKind {
    pub const ALL: [FusionKind; 12] = [
        FusionKind::DynamicMlpA,
        FusionKind::DynamicMlpB,
        FusionKind::DynamicMlpC,
        FusionKind::ConcatMatched,
        FusionKind::AddMatched,
        FusionKind::MulMatched,
        FusionKind::AttentionImageQuery,
        FusionKind::AttentionLocationQuery,
        FusionKind::AttentionConcat,
        FusionKind::ConcatDagger,
        FusionKind::AddDagger,
        FusionKind::MulDagger,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FusionKind::DynamicMlpA => "dynamic_mlp_a",
            FusionKind::DynamicMlpB => "dynamic_mlp_b",
            FusionKind::DynamicMlpC => "dynamic_mlp_c",
            FusionKind::ConcatMatched => "concat_matched",
            FusionKind::AddMatched => "add_matched",
            FusionKind::MulMatched => "mul_matched",
            FusionKind::AttentionImageQuery => "attention_image_query",
            FusionKind::AttentionLocationQuery => "attention_location_query",
            FusionKind::AttentionConcat => "attention_concat",
            FusionKind::ConcatDagger => "concat_dagger",
            FusionKind::AddDagger => "add_dagger",
            FusionKind::MulDagger => "mul_dagger",
        }
    }

    /// Whether the layers are a reconstruction of an unpublished design.
    pub fn is_reconstruction(self) -> bool {
        !matches!(self, FusionKind::DynamicMlpA | FusionKind::DynamicMlpB | FusionKind::DynamicMlpC)
    }
}

impl std::fmt::Display for FusionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FusionKind {
    type Err = FusionError;

    fn from_str(s: &str) -> std::result::Result<Self, FusionError> {
        FusionKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = FusionKind::ALL.iter().map(|k| k.as_str()).collect();
            FusionError::Config(format!("unknown fusion type {s:?}, expected one of {}", names.join(", ")))
        })
    }
}

/// The fusion head's hyper-parameters: the reference's `--mlp_type`, `--mlp_d`, `--mlp_h`,
/// `--mlp_n` (defaults 256, 64, 2), and FCNet's dropout (0.5).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionConfig {
    #[serde(rename = "type")]
    pub kind: FusionKind,
    #[serde(default = "FusionConfig::default_mlp_d")]
    pub mlp_d: usize,
    #[serde(default = "FusionConfig::default_mlp_h")]
    pub mlp_h: usize,
    #[serde(default = "FusionConfig::default_mlp_n")]
    pub mlp_n: usize,
    #[serde(default = "FusionConfig::default_loc_dropout")]
    pub loc_dropout: f32,
}

impl FusionConfig {
    /// `kind` with the reference's defaults for everything else.
    pub fn with_defaults(kind: FusionKind) -> Self {
        Self {
            kind,
            mlp_d: Self::default_mlp_d(),
            mlp_h: Self::default_mlp_h(),
            mlp_n: Self::default_mlp_n(),
            loc_dropout: Self::default_loc_dropout(),
        }
    }

    fn default_mlp_d() -> usize {
        256
    }

    fn default_mlp_h() -> usize {
        64
    }

    fn default_mlp_n() -> usize {
        2
    }

    fn default_loc_dropout() -> f32 {
        0.5
    }

    pub fn validate(&self) -> std::result::Result<(), FusionError> {
        if self.mlp_d == 0 || self.mlp_h == 0 || self.mlp_n == 0 {
            return Err(FusionError::Config(format!(
                "mlp_d, mlp_h and mlp_n must be at least 1, got {}, {}, {}",
                self.mlp_d, self.mlp_h, self.mlp_n
            )));
        }
        // The paper's widths are 256, 64 and 2: bounds far above them that still fit in memory
        // (Dynamic MLP-C generates an mlp_d × mlp_h matrix per image).
        if self.mlp_d > 8192 || self.mlp_h > 8192 || self.mlp_n > 64 || self.mlp_d * self.mlp_h > 1 << 22 {
            return Err(FusionError::Config(format!(
                "mlp_d and mlp_h must be at most 8192 with mlp_d · mlp_h at most 4194304, and mlp_n at most 64; got {}, {}, {}",
                self.mlp_d, self.mlp_h, self.mlp_n
            )));
        }
        if !(0.0..1.0).contains(&self.loc_dropout) {
            return Err(FusionError::Config(format!("loc_dropout must be in [0, 1), got {}", self.loc_dropout)));
        }
        Ok(())
    }

    /// `(in, out)` widths of each block: `[d → d]` for one block, else
    /// `[d → h] + [h → h]·(N − 2) + [h → d]`.
    pub fn block_widths(&self) -> Vec<(usize, usize)> {
        let (d, h, n) = (self.mlp_d, self.mlp_h, self.mlp_n);
        if n == 1 {
            return vec![(d, d)];
        }
        let mut widths = vec![(d, h)];
        widths.extend(std::iter::repeat_n((h, h), n - 2));
        widths.push((h, d));
        widths
    }
}

#[derive(Debug, Clone)]
enum Block {
    A(DynamicMlpA),
    B(DynamicMlpB),
    C(DynamicMlpC),
    Matched(MatchedBlock),
    Attention(AttentionBlock),
    Dagger(DaggerBlock),
}

impl Block {
    /// The reference's `RecursiveBlock` holds its block as `dynamic_conv`; the static baselines
    /// use `static_conv`, the attention variants `attention`.
    fn new(kind: FusionKind, i: usize, o: usize, loc_planes: usize, vb: VarBuilder) -> Result<Self> {
        let dynamic = vb.pp("dynamic_conv");
        let matched = |op| Ok(Block::Matched(MatchedBlock::new(op, i, o, loc_planes, vb.pp("static_conv"))?));
        let dagger = |op| Ok(Block::Dagger(DaggerBlock::new(op, i, o, loc_planes, vb.pp("static_conv"))?));
        let attention =
            |inputs| Ok(Block::Attention(AttentionBlock::new(inputs, i, o, loc_planes, vb.pp("attention"))?));
        match kind {
            FusionKind::DynamicMlpA => Ok(Block::A(DynamicMlpA::new(i, o, loc_planes, dynamic)?)),
            FusionKind::DynamicMlpB => Ok(Block::B(DynamicMlpB::new(i, o, loc_planes, dynamic)?)),
            FusionKind::DynamicMlpC => Ok(Block::C(DynamicMlpC::new(i, o, loc_planes, dynamic)?)),
            FusionKind::ConcatMatched => matched(FuseOp::Concatenation),
            FusionKind::AddMatched => matched(FuseOp::Addition),
            FusionKind::MulMatched => matched(FuseOp::Multiplication),
            FusionKind::AttentionImageQuery => attention(AttentionInputs::ImageQuery),
            FusionKind::AttentionLocationQuery => attention(AttentionInputs::LocationQuery),
            FusionKind::AttentionConcat => attention(AttentionInputs::Concatenation),
            FusionKind::ConcatDagger => dagger(FuseOp::Concatenation),
            FusionKind::AddDagger => dagger(FuseOp::Addition),
            FusionKind::MulDagger => dagger(FuseOp::Multiplication),
        }
    }

    fn forward(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        match self {
            Block::A(block) => block.forward(x, g),
            Block::B(block) => block.forward(x, g),
            Block::C(block) => block.forward(x, g),
            Block::Matched(block) => block.forward(x, g),
            Block::Attention(block) => block.forward(x, g),
            Block::Dagger(block) => block.forward(x, g),
        }
    }
}

/// The reference's `FusionModule` (`loc_att`): `x + LN(conv3(blocks(conv1(x), g)))`.
/// Keys `conv1.*`, `conv2.{n}.dynamic_conv.*` (or `static_conv`), `conv3.*`, `norm3.*`.
#[derive(Debug, Clone)]
pub struct FusionModule {
    conv1: Linear,
    blocks: Vec<Block>,
    conv3: Linear,
    norm3: LayerNorm,
}

impl FusionModule {
    /// `inplanes` is the image feature width (2048 for the reference's backbones).
    pub fn new(inplanes: usize, config: &FusionConfig, vb: VarBuilder) -> std::result::Result<Self, FusionError> {
        config.validate()?;
        let d = config.mlp_d;
        let conv1 = linear(inplanes, d, true, vb.pp("conv1"))?;
        let blocks = config
            .block_widths()
            .into_iter()
            .enumerate()
            .map(|(idx, (i, o))| Block::new(config.kind, i, o, d, vb.pp("conv2").pp(idx)))
            .collect::<Result<Vec<_>>>()?;
        let conv3 = linear(d, inplanes, true, vb.pp("conv3"))?;
        let norm3 = layer_norm(inplanes, vb.pp("norm3"))?;
        Ok(Self { conv1, blocks, conv3, norm3 })
    }

    /// # Shapes
    /// `features: [B, inplanes]`, `loc_features: [B, d]` → `[B, inplanes]`.
    pub fn forward(&self, features: &Tensor, loc_features: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv1.forward(features)?;
        for block in &self.blocks {
            xs = block.forward(&xs, loc_features)?;
        }
        let xs = self.norm3.forward(&self.conv3.forward(&xs)?)?;
        xs + features
    }
}

/// `loc_net` (FCNet) and `loc_att` (the fusion module): everything between the pooled image
/// features and `fc`.
#[derive(Debug, Clone)]
pub struct FusionHead {
    loc_net: FcNet,
    loc_att: FusionModule,
}

/// What the head computes, kept apart for parity checks and analysis.
#[derive(Debug, Clone)]
pub struct FusionOutput {
    /// `loc_net(loc)`: `[B, d]`.
    pub loc_features: Tensor,
    /// `loc_att(features, loc_features)`: `[B, inplanes]`.
    pub fused: Tensor,
}

impl FusionHead {
    /// `image_features` is the pooled backbone width, `loc_inputs` the encoded location width.
    pub fn new(
        image_features: usize,
        loc_inputs: usize,
        config: &FusionConfig,
        dropout_rng: DropoutRng,
        vb: VarBuilder,
    ) -> std::result::Result<Self, FusionError> {
        config.validate()?;
        let loc_net = FcNet::new(loc_inputs, config.mlp_d, config.loc_dropout, dropout_rng, vb.pp("loc_net"))?;
        let loc_att = FusionModule::new(image_features, config, vb.pp("loc_att"))?;
        Ok(Self { loc_net, loc_att })
    }

    /// # Shapes
    /// `features: [B, F]`, `loc: [B, cin]` → `loc_features: [B, d]`, `fused: [B, F]`.
    pub fn forward_t(&self, features: &Tensor, loc: &Tensor, train: bool) -> Result<FusionOutput> {
        let loc_features = self.loc_net.forward_t(loc, train)?;
        let fused = self.loc_att.forward(features, &loc_features)?;
        Ok(FusionOutput { loc_features, fused })
    }
}
