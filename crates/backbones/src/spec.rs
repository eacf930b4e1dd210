//! Which backbone to build: a preset name or an explicit description.

use serde::{Deserialize, Serialize};

use crate::BlockKind;

/// A backbone in a config: a preset name (`"resnet50"`) or an explicit table
/// (`{ type = "resnet", block = "basic", layers = [1, 1, 1, 1] }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// An explicit backbone description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

fn default_width() -> usize {
    64
}

impl BackbonePreset {
    pub const ALL: [BackbonePreset; 7] = [
        BackbonePreset::Resnet18,
        BackbonePreset::Resnet34,
        BackbonePreset::Resnet50,
        BackbonePreset::Resnet101,
        BackbonePreset::Resnet152,
        BackbonePreset::Sk2res2net50,
        BackbonePreset::Sk2res2net101,
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
        }
    }

    /// The explicit description of this preset.
    pub fn custom(self) -> CustomBackbone {
        let resnet = |block, layers: [usize; 4]| CustomBackbone::Resnet { block, layers: layers.to_vec(), width: 64 };
        match self {
            BackbonePreset::Resnet18 => resnet(BlockKind::Basic, [2, 2, 2, 2]),
            BackbonePreset::Resnet34 => resnet(BlockKind::Basic, [3, 4, 6, 3]),
            BackbonePreset::Resnet50 => resnet(BlockKind::Bottleneck, [3, 4, 6, 3]),
            BackbonePreset::Resnet101 => resnet(BlockKind::Bottleneck, [3, 4, 23, 3]),
            BackbonePreset::Resnet152 => resnet(BlockKind::Bottleneck, [3, 8, 36, 3]),
            BackbonePreset::Sk2res2net50 => CustomBackbone::Sk2res2net { layers: vec![3, 4, 6, 3], width: 64 },
            BackbonePreset::Sk2res2net101 => CustomBackbone::Sk2res2net { layers: vec![3, 4, 23, 3], width: 64 },
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
                let depths: Vec<_> = layers.iter().map(ToString::to_string).collect();
                format!("sk2res2net-{}-w{width}", depths.join("-"))
            }
        }
    }
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
        assert!(
            serde_json::from_str::<BackboneSpec>(r#"{"type": "resnet", "block": "basic", "layers": [1], "depth": 3}"#)
                .is_err()
        );
    }
}
