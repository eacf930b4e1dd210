//! `dmlp params` and `dmlp encode`.

use std::path::PathBuf;

use anyhow::Context;
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::{Metadata, Observation};
use dmlp_model::{Classifier, ModelConfig, ModelDType, parse_device};

#[derive(Debug, clap::Args)]
pub(crate) struct ParamsArgs {
    /// A config file whose [model] table describes the model (instead of the flags below).
    #[arg(long, conflicts_with_all = ["backbone", "fusion", "num_classes", "metadata"])]
    config: Option<PathBuf>,
    /// resnet18, resnet34, resnet50, resnet101, resnet152, sk2res2net50 or sk2res2net101.
    #[arg(long, default_value = "resnet50")]
    backbone: BackbonePreset,
    /// dynamic_mlp_a, dynamic_mlp_b, dynamic_mlp_c, concat_matched, add_matched, mul_matched, or
    /// none for the image-only model.
    #[arg(long, default_value = "dynamic_mlp_c")]
    fusion: String,
    #[arg(long, default_value_t = 256)]
    mlp_d: usize,
    #[arg(long, default_value_t = 64)]
    mlp_h: usize,
    #[arg(long, default_value_t = 2)]
    mlp_n: usize,
    /// Classes of the fc layer (iNat17 5089, iNat18 8142, iNat21 10000, YFCC 100).
    #[arg(long, default_value_t = 10000)]
    num_classes: usize,
    /// geo_temporal, geo or temporal.
    #[arg(long, default_value = "geo_temporal")]
    metadata: Metadata,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EncodeArgs {
    #[arg(long, allow_hyphen_values = true)]
    latitude: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    longitude: Option<f64>,
    /// YYYY-MM-DD, optionally followed by a time and a zone.
    #[arg(long)]
    date: Option<String>,
    #[arg(long, default_value = "geo_temporal")]
    metadata: Metadata,
}

fn model_config(args: &ParamsArgs) -> anyhow::Result<ModelConfig> {
    if let Some(path) = &args.config {
        return Ok(ModelConfig::from_toml_file(path)?);
    }
    let fusion = match args.fusion.as_str() {
        "none" | "image_only" => None,
        name => {
            let kind: FusionKind = name.parse()?;
            Some(FusionConfig {
                mlp_d: args.mlp_d,
                mlp_h: args.mlp_h,
                mlp_n: args.mlp_n,
                ..FusionConfig::with_defaults(kind)
            })
        }
    };
    Ok(ModelConfig {
        pretrained: None,
        backbone: Some(BackboneSpec::Preset(args.backbone)),
        feature_dim: None,
        num_classes: args.num_classes,
        metadata: fusion.as_ref().map(|_| args.metadata),
        fusion,
        dtype: ModelDType::F32,
    })
}

pub(crate) fn run_params(args: &ParamsArgs) -> anyhow::Result<()> {
    let config = model_config(args)?;
    let model = Classifier::new_zeroed(&config, &parse_device("cpu")?).context("building the model")?;
    let counts = model.param_counts();
    let backbone = config.backbone.as_ref().map_or_else(|| "none".to_owned(), BackboneSpec::name);
    let fusion = config.fusion.as_ref().map_or("none (image-only)", |f| f.kind.as_str());
    if args.json {
        let json = serde_json::json!({
            "backbone": backbone, "fusion": fusion, "num_classes": config.num_classes,
            "metadata": config.metadata.map(Metadata::as_str),
            "mlp": config.fusion.as_ref().map(|f| serde_json::json!({"d": f.mlp_d, "h": f.mlp_h, "n": f.mlp_n})),
            "params": {"backbone": counts.backbone, "loc_net": counts.loc_net, "loc_att": counts.loc_att, "fc": counts.fc, "total": counts.total()},
        });
        println!("{json}");
        return Ok(());
    }
    println!("model: {backbone} + {fusion}, {} classes", config.num_classes);
    if let Some(f) = &config.fusion {
        let metadata = config.metadata.map_or("-", Metadata::as_str);
        println!(
            "fusion: mlp_d {} mlp_h {} mlp_n {}, metadata {metadata} ({} inputs)",
            f.mlp_d,
            f.mlp_h,
            f.mlp_n,
            config.loc_inputs()
        );
        if f.kind.is_reconstruction() {
            println!("note: {} is a reconstruction of an unpublished design (spec §12), not the paper's code", f.kind);
        }
    }
    let rows =
        [("backbone", counts.backbone), ("loc_net", counts.loc_net), ("loc_att", counts.loc_att), ("fc", counts.fc)];
    for (name, n) in rows {
        println!("  {name:<9} {:>13}", group_thousands(n));
    }
    println!("  {:<9} {:>13}  ({:.2} M)", "total", group_thousands(counts.total()), counts.total() as f64 / 1e6);
    Ok(())
}

pub(crate) fn run_encode(args: &EncodeArgs) -> anyhow::Result<()> {
    let observation = Observation::parse(args.latitude, args.longitude, args.date.as_deref())?;
    let encoded = observation.encode(args.metadata);
    if !observation.is_complete_for(args.metadata) {
        eprintln!("note: a field {} uses is missing: the encoding is all zeros", args.metadata);
    }
    let values: Vec<String> = encoded.iter().map(|v| format!("{v:.6}")).collect();
    println!("[{}]", values.join(", "));
    Ok(())
}

/// `23508032` → `23,508,032`.
fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (idx, ch) in digits.chars().enumerate() {
        if idx > 0 && (digits.len() - idx).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::group_thousands(23_508_032), "23,508,032");
        assert_eq!(super::group_thousands(100), "100");
        assert_eq!(super::group_thousands(1000), "1,000");
    }
}
