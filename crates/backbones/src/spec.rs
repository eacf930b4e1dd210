//! Which backbone to build: a preset name or an explicit description.

use serde::{Deserialize, Serialize};

use crate::{BlockKind, BotNetConfig, PvtConfig, PvtV2Config, SwinConfig};

/// A backbone in a config: a preset name (`"resnet50"`) or an explicit table
/// (`{ type = "resnet", block = "basic", layers = [1, 1, 1, 1] }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackboneSpec {
    Preset(BackbonePreset),
    Custom(CustomBackbone),
}

/// The named backbones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackbonePreset {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    Sk2res2net50,
    Sk2res2net101,
    #[serde(rename = "swin_tiny_patch4_window7_224")]
    SwinTiny,
    #[serde(rename = "swin_small_patch4_window7_224")]
    SwinSmall,
    #[serde(rename = "swin_base_patch4_window7_224")]
    SwinBase,
    #[serde(rename = "swin_large_patch4_window7_224")]
    SwinLarge224,
    #[serde(rename = "swin_large_patch4_window12_384")]
    SwinLarge384,
    #[serde(rename = "pvt_v2_b0")]
    PvtV2B0,
    #[serde(rename = "pvt_v2_b1")]
    PvtV2B1,
    #[serde(rename = "pvt_v2_b2")]
    PvtV2B2,
    #[serde(rename = "pvt_v2_b2_li")]
    PvtV2B2Li,
    #[serde(rename = "pvt_v2_b3")]
    PvtV2B3,
    #[serde(rename = "pvt_v2_b4")]
    PvtV2B4,
    #[serde(rename = "pvt_v2_b5")]
    PvtV2B5,
    #[serde(rename = "pvt_tiny")]
    PvtTiny,
    #[serde(rename = "pvt_small")]
    PvtSmall,
    #[serde(rename = "pvt_medium")]
    PvtMedium,
    #[serde(rename = "pvt_large")]
    PvtLarge,
    Botnet50,
    Botnet152,
}

/// An explicit backbone description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CustomBackbone {
    /// torchvision ResNet with the given block, stage depths and stem width (64 in torchvision;
    /// smaller widths give the scaled-down backbones of smoke runs).
    Resnet {
        block: BlockKind,
        layers: Vec<usize>,
        #[serde(default = "default_width")]
        width: usize,
    },
    /// The reference's SK-Res2Net with the given stage depths; `width` scales the stem and the
    /// planes of every stage (64 in the reference; smaller widths give smoke-run backbones).
    Sk2res2net {
        layers: Vec<usize>,
        #[serde(default = "default_width")]
        width: usize,
    },
    /// timm's Swin Transformer ([`SwinConfig`]); `mlp_ratio` 4 and no stochastic depth unless
    /// given.
    Swin {
        img_size: usize,
        patch_size: usize,
        window_size: usize,
        embed_dim: usize,
        depths: Vec<usize>,
        num_heads: Vec<usize>,
        #[serde(default = "default_mlp_ratio")]
        mlp_ratio: f64,
        #[serde(default)]
        drop_path_rate: f64,
    },
    /// timm's PVT v2 ([`PvtV2Config`]); sr ratios 8-4-2-1 and MLP ratios 8-8-4-4 unless given,
    /// `linear` off, no stochastic depth.
    PvtV2 {
        embed_dims: Vec<usize>,
        depths: Vec<usize>,
        num_heads: Vec<usize>,
        #[serde(default = "default_sr_ratios")]
        sr_ratios: Vec<usize>,
        #[serde(default = "default_mlp_ratios")]
        mlp_ratios: Vec<f64>,
        #[serde(default)]
        linear: bool,
        #[serde(default)]
        drop_path_rate: f64,
    },
    /// PVT v1 in its authors' layout ([`PvtConfig`]); image size 224, patch 4, sr ratios
    /// 8-4-2-1, MLP ratios 8-8-4-4 and `q`/`kv` biases unless given.
    Pvt {
        #[serde(default = "default_img_size")]
        img_size: usize,
        #[serde(default = "default_patch_size")]
        patch_size: usize,
        embed_dims: Vec<usize>,
        depths: Vec<usize>,
        num_heads: Vec<usize>,
        #[serde(default = "default_sr_ratios")]
        sr_ratios: Vec<usize>,
        #[serde(default = "default_mlp_ratios")]
        mlp_ratios: Vec<f64>,
        #[serde(default = "default_true")]
        qkv_bias: bool,
        #[serde(default)]
        drop_path_rate: f64,
    },
    /// BoTNet, a reconstruction ([`BotNetConfig`]): torchvision's bottleneck ResNet whose last
    /// stage attends; stem width 64, 4 heads and relative tables for 224×224 inputs unless given.
    Botnet {
        layers: Vec<usize>,
        #[serde(default = "default_width")]
        width: usize,
        #[serde(default = "default_heads")]
        heads: usize,
        #[serde(default = "default_img_size")]
        img_size: usize,
    },
}

fn default_heads() -> usize {
    4
}

fn default_img_size() -> usize {
    224
}

fn default_patch_size() -> usize {
    4
}

fn default_true() -> bool {
    true
}

fn default_width() -> usize {
    64
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_sr_ratios() -> Vec<usize> {
    vec![8, 4, 2, 1]
}

fn default_mlp_ratios() -> Vec<f64> {
    vec![8.0, 8.0, 4.0, 4.0]
}

impl CustomBackbone {
    /// The Swin description, if this is one.
    pub fn swin_config(&self) -> Option<SwinConfig> {
        match self {
            CustomBackbone::Swin {
                img_size,
                patch_size,
                window_size,
                embed_dim,
                depths,
                num_heads,
                mlp_ratio,
                drop_path_rate,
            } => Some(SwinConfig {
                img_size: *img_size,
                patch_size: *patch_size,
                window_size: *window_size,
                embed_dim: *embed_dim,
                depths: depths.clone(),
                num_heads: num_heads.clone(),
                mlp_ratio: *mlp_ratio,
                drop_path_rate: *drop_path_rate,
            }),
            _ => None,
        }
    }

    /// The PVT v1 description, if this is one.
    pub fn pvt_config(&self) -> Option<PvtConfig> {
        match self {
            CustomBackbone::Pvt {
                img_size,
                patch_size,
                embed_dims,
                depths,
                num_heads,
                sr_ratios,
                mlp_ratios,
                qkv_bias,
                drop_path_rate,
            } => Some(PvtConfig {
                img_size: *img_size,
                patch_size: *patch_size,
                embed_dims: embed_dims.clone(),
                depths: depths.clone(),
                num_heads: num_heads.clone(),
                sr_ratios: sr_ratios.clone(),
                mlp_ratios: mlp_ratios.clone(),
                qkv_bias: *qkv_bias,
                drop_path_rate: *drop_path_rate,
            }),
            _ => None,
        }
    }

    /// The BoTNet description, if this is one.
    pub fn botnet_config(&self) -> Option<BotNetConfig> {
        match self {
            CustomBackbone::Botnet { layers, width, heads, img_size } => {
                Some(BotNetConfig { layers: layers.clone(), width: *width, heads: *heads, img_size: *img_size })
            }
            _ => None,
        }
    }

    /// Whether the backbone tensor `name` is one that no ImageNet checkpoint of this layout has,
    /// so that a pretrained load leaves it at its initialisation: BoTNet's attention
    /// (`layer{n}.{j}.self_attn.*`), which starts from a torchvision ResNet of the same depths
    /// (its `conv2` in that stage is skipped). No other backbone has any.
    pub fn fresh_when_pretrained(&self, name: &str) -> bool {
        matches!(self, CustomBackbone::Botnet { .. }) && name.contains(".self_attn.")
    }

    /// The PVT v2 description, if this is one.
    pub fn pvt_v2_config(&self) -> Option<PvtV2Config> {
        match self {
            CustomBackbone::PvtV2 { embed_dims, depths, num_heads, sr_ratios, mlp_ratios, linear, drop_path_rate } => {
                Some(PvtV2Config {
                    embed_dims: embed_dims.clone(),
                    depths: depths.clone(),
                    num_heads: num_heads.clone(),
                    sr_ratios: sr_ratios.clone(),
                    mlp_ratios: mlp_ratios.clone(),
                    linear: *linear,
                    drop_path_rate: *drop_path_rate,
                })
            }
            _ => None,
        }
    }
}

impl BackbonePreset {
    pub const ALL: [BackbonePreset; 25] = [
        BackbonePreset::Resnet18,
        BackbonePreset::Resnet34,
        BackbonePreset::Resnet50,
        BackbonePreset::Resnet101,
        BackbonePreset::Resnet152,
        BackbonePreset::Sk2res2net50,
        BackbonePreset::Sk2res2net101,
        BackbonePreset::SwinTiny,
        BackbonePreset::SwinSmall,
        BackbonePreset::SwinBase,
        BackbonePreset::SwinLarge224,
        BackbonePreset::SwinLarge384,
        BackbonePreset::PvtV2B0,
        BackbonePreset::PvtV2B1,
        BackbonePreset::PvtV2B2,
        BackbonePreset::PvtV2B2Li,
        BackbonePreset::PvtV2B3,
        BackbonePreset::PvtV2B4,
        BackbonePreset::PvtV2B5,
        BackbonePreset::PvtTiny,
        BackbonePreset::PvtSmall,
        BackbonePreset::PvtMedium,
        BackbonePreset::PvtLarge,
        BackbonePreset::Botnet50,
        BackbonePreset::Botnet152,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackbonePreset::Resnet18 => "resnet18",
            BackbonePreset::Resnet34 => "resnet34",
            BackbonePreset::Resnet50 => "resnet50",
            BackbonePreset::Resnet101 => "resnet101",
            BackbonePreset::Resnet152 => "resnet152",
            BackbonePreset::Sk2res2net50 => "sk2res2net50",
            BackbonePreset::Sk2res2net101 => "sk2res2net101",
            BackbonePreset::SwinTiny => "swin_tiny_patch4_window7_224",
            BackbonePreset::SwinSmall => "swin_small_patch4_window7_224",
            BackbonePreset::SwinBase => "swin_base_patch4_window7_224",
            BackbonePreset::SwinLarge224 => "swin_large_patch4_window7_224",
            BackbonePreset::SwinLarge384 => "swin_large_patch4_window12_384",
            BackbonePreset::PvtV2B0 => "pvt_v2_b0",
            BackbonePreset::PvtV2B1 => "pvt_v2_b1",
            BackbonePreset::PvtV2B2 => "pvt_v2_b2",
            BackbonePreset::PvtV2B2Li => "pvt_v2_b2_li",
            BackbonePreset::PvtV2B3 => "pvt_v2_b3",
            BackbonePreset::PvtV2B4 => "pvt_v2_b4",
            BackbonePreset::PvtV2B5 => "pvt_v2_b5",
            BackbonePreset::PvtTiny => "pvt_tiny",
            BackbonePreset::PvtSmall => "pvt_small",
            BackbonePreset::PvtMedium => "pvt_medium",
            BackbonePreset::PvtLarge => "pvt_large",
            BackbonePreset::Botnet50 => "botnet50",
            BackbonePreset::Botnet152 => "botnet152",
        }
    }

    /// The explicit description of this preset (timm's `create_model` arguments for the
    /// transformers, stochastic depth off).
    pub fn custom(self) -> CustomBackbone {
        let resnet = |block, layers: [usize; 4]| CustomBackbone::Resnet { block, layers: layers.to_vec(), width: 64 };
        let swin = |img_size, window_size, embed_dim, depths: [usize; 4], heads: [usize; 4]| CustomBackbone::Swin {
            img_size,
            patch_size: 4,
            window_size,
            embed_dim,
            depths: depths.to_vec(),
            num_heads: heads.to_vec(),
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
        };
        let pvt = |dims: [usize; 4], depths: [usize; 4], mlp: [f64; 4], linear| CustomBackbone::PvtV2 {
            embed_dims: dims.to_vec(),
            depths: depths.to_vec(),
            num_heads: vec![1, 2, 5, 8],
            sr_ratios: default_sr_ratios(),
            mlp_ratios: mlp.to_vec(),
            linear,
            drop_path_rate: 0.0,
        };
        let pvt1 = |depths: [usize; 4]| CustomBackbone::Pvt {
            img_size: 224,
            patch_size: 4,
            embed_dims: vec![64, 128, 320, 512],
            depths: depths.to_vec(),
            num_heads: vec![1, 2, 5, 8],
            sr_ratios: default_sr_ratios(),
            mlp_ratios: default_mlp_ratios(),
            qkv_bias: true,
            drop_path_rate: 0.0,
        };
        let botnet =
            |layers: [usize; 4]| CustomBackbone::Botnet { layers: layers.to_vec(), width: 64, heads: 4, img_size: 224 };
        let wide = [64, 128, 320, 512];
        let mlp = [8.0, 8.0, 4.0, 4.0];
        match self {
            BackbonePreset::Resnet18 => resnet(BlockKind::Basic, [2, 2, 2, 2]),
            BackbonePreset::Resnet34 => resnet(BlockKind::Basic, [3, 4, 6, 3]),
            BackbonePreset::Resnet50 => resnet(BlockKind::Bottleneck, [3, 4, 6, 3]),
            BackbonePreset::Resnet101 => resnet(BlockKind::Bottleneck, [3, 4, 23, 3]),
            BackbonePreset::Resnet152 => resnet(BlockKind::Bottleneck, [3, 8, 36, 3]),
            BackbonePreset::Sk2res2net50 => CustomBackbone::Sk2res2net { layers: vec![3, 4, 6, 3], width: 64 },
            BackbonePreset::Sk2res2net101 => CustomBackbone::Sk2res2net { layers: vec![3, 4, 23, 3], width: 64 },
            BackbonePreset::SwinTiny => swin(224, 7, 96, [2, 2, 6, 2], [3, 6, 12, 24]),
            BackbonePreset::SwinSmall => swin(224, 7, 96, [2, 2, 18, 2], [3, 6, 12, 24]),
            BackbonePreset::SwinBase => swin(224, 7, 128, [2, 2, 18, 2], [4, 8, 16, 32]),
            BackbonePreset::SwinLarge224 => swin(224, 7, 192, [2, 2, 18, 2], [6, 12, 24, 48]),
            BackbonePreset::SwinLarge384 => swin(384, 12, 192, [2, 2, 18, 2], [6, 12, 24, 48]),
            BackbonePreset::PvtV2B0 => pvt([32, 64, 160, 256], [2, 2, 2, 2], mlp, false),
            BackbonePreset::PvtV2B1 => pvt(wide, [2, 2, 2, 2], mlp, false),
            BackbonePreset::PvtV2B2 => pvt(wide, [3, 4, 6, 3], mlp, false),
            BackbonePreset::PvtV2B2Li => pvt(wide, [3, 4, 6, 3], mlp, true),
            BackbonePreset::PvtV2B3 => pvt(wide, [3, 4, 18, 3], mlp, false),
            BackbonePreset::PvtV2B4 => pvt(wide, [3, 8, 27, 3], mlp, false),
            BackbonePreset::PvtV2B5 => pvt(wide, [3, 6, 40, 3], [4.0; 4], false),
            BackbonePreset::PvtTiny => pvt1([2, 2, 2, 2]),
            BackbonePreset::PvtSmall => pvt1([3, 4, 6, 3]),
            BackbonePreset::PvtMedium => pvt1([3, 4, 18, 3]),
            BackbonePreset::PvtLarge => pvt1([3, 8, 27, 3]),
            BackbonePreset::Botnet50 => botnet([3, 4, 6, 3]),
            BackbonePreset::Botnet152 => botnet([3, 8, 36, 3]),
        }
    }
}

impl std::fmt::Display for BackbonePreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackbonePreset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        BackbonePreset::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = BackbonePreset::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown backbone {s:?}, expected one of {}", names.join(", "))
        })
    }
}

impl BackboneSpec {
    /// The explicit description, presets expanded.
    pub fn resolve(&self) -> CustomBackbone {
        match self {
            BackboneSpec::Preset(preset) => preset.custom(),
            BackboneSpec::Custom(custom) => custom.clone(),
        }
    }

    /// A short name for tables and logs (`resnet50`, `resnet-basic-1-1-1-1-w16`).
    pub fn name(&self) -> String {
        match self {
            BackboneSpec::Preset(preset) => preset.as_str().to_owned(),
            BackboneSpec::Custom(CustomBackbone::Resnet { block, layers, width }) => {
                let depths: Vec<_> = layers.iter().map(ToString::to_string).collect();
                format!("resnet-{}-{}-w{width}", block.as_str(), depths.join("-"))
            }
            BackboneSpec::Custom(CustomBackbone::Sk2res2net { layers, width }) => {
                format!("sk2res2net-{}-w{width}", joined(layers))
            }
            BackboneSpec::Custom(CustomBackbone::Swin { embed_dim, depths, window_size, .. }) => {
                format!("swin-{}-e{embed_dim}-win{window_size}", joined(depths))
            }
            BackboneSpec::Custom(CustomBackbone::Pvt { embed_dims, depths, .. }) => {
                format!("pvt-{}-e{}", joined(depths), embed_dims[0])
            }
            BackboneSpec::Custom(CustomBackbone::Botnet { layers, width, img_size, .. }) => {
                format!("botnet-{}-w{width}-{img_size}", joined(layers))
            }
            BackboneSpec::Custom(CustomBackbone::PvtV2 { embed_dims, depths, linear, .. }) => {
                format!("pvt_v2{}-{}-e{}", if *linear { "_li" } else { "" }, joined(depths), embed_dims[0])
            }
        }
    }
}

fn joined(values: &[usize]) -> String {
    values.iter().map(ToString::to_string).collect::<Vec<_>>().join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_explicit_tables_parse() {
        let spec: BackboneSpec = serde_json::from_str("\"resnet50\"").unwrap();
        assert_eq!(spec, BackboneSpec::Preset(BackbonePreset::Resnet50));
        let spec: BackboneSpec =
            serde_json::from_str(r#"{"type": "resnet", "block": "basic", "layers": [1, 1, 1, 1]}"#).unwrap();
        assert_eq!(spec.resolve(), CustomBackbone::Resnet { block: BlockKind::Basic, layers: vec![1; 4], width: 64 });
        assert!(serde_json::from_str::<BackboneSpec>("\"resnet51\"").is_err());
        let spec: BackboneSpec = serde_json::from_str("\"swin_large_patch4_window12_384\"").unwrap();
        assert_eq!(spec, BackboneSpec::Preset(BackbonePreset::SwinLarge384));
        let spec: BackboneSpec = serde_json::from_str(
            r#"{"type": "pvt_v2", "embed_dims": [8, 16], "depths": [1, 1], "num_heads": [1, 2], "sr_ratios": [2, 1], "mlp_ratios": [4, 4]}"#,
        )
        .unwrap();
        let config = spec.resolve().pvt_v2_config().unwrap();
        assert_eq!((config.mlp_ratios, config.linear, config.drop_path_rate), (vec![4.0, 4.0], false, 0.0));
        let spec: BackboneSpec = serde_json::from_str(
            r#"{"type": "swin", "img_size": 64, "patch_size": 4, "window_size": 4, "embed_dim": 32, "depths": [2, 2], "num_heads": [1, 2]}"#,
        )
        .unwrap();
        assert_eq!(spec.resolve().swin_config().unwrap().mlp_ratio, 4.0);
        for preset in BackbonePreset::ALL {
            assert_eq!(preset.as_str().parse::<BackbonePreset>(), Ok(preset));
            let json = serde_json::to_string(&BackboneSpec::Preset(preset)).unwrap();
            assert_eq!(json, format!("\"{preset}\""));
        }
        assert!(
            serde_json::from_str::<BackboneSpec>(r#"{"type": "resnet", "block": "basic", "layers": [1], "depth": 3}"#)
                .is_err()
        );
    }
}
