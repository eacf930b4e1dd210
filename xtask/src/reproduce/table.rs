//! The table files of `configs/tables/`: which backbones, methods and datasets make a table's
//! cells, the paper's numbers beside them, and the full and smoke recipes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_baselines::geonet::GeoNetConfig;
use dmlp_baselines::priorsnet::PriorsNetConfig;
use dmlp_datasets::synth::SynthConfig;
use dmlp_datasets::{DatasetName, SplitScheme};
use dmlp_experiment::BaselineType;
use dmlp_fusion::FusionKind;
use dmlp_geo::Metadata;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TableSpec {
    pub name: String,
    pub title: String,
    /// What the table's cells measure, for the results file.
    #[serde(default)]
    pub note: Option<String>,
    pub backbones: Vec<BackboneRow>,
    pub methods: Vec<MethodRow>,
    pub datasets: Vec<DatasetColumn>,
    #[serde(default)]
    pub paper: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// Beyond "every method beats image-only": pairs `(better, worse)` the smoke data must show.
    #[serde(default)]
    pub smoke_claims: Vec<Claim>,
    /// A last row: the ensemble of one method's trained models (Table S1's).
    #[serde(default)]
    pub ensemble: Option<EnsembleRow>,
    pub full: Recipe,
    pub smoke: SmokeRecipe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Claim {
    pub better: String,
    pub worse: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackboneRow {
    pub key: String,
    pub label: String,
    pub backbone: BackbonePreset,
    /// The ImageNet weights a full run starts from (`[model] pretrained`; a relative path
    /// resolves against the repository's root); `--smoke` runs start from random weights.
    pub pretrained: String,
    pub smoke_backbone: BackboneSpec,
    /// The training run this row evaluates, shared by rows that differ only in their test
    /// (Table S1's rows of one backbone at one training resolution); default: the row's key.
    #[serde(default)]
    pub run: Option<String>,
    /// The training (and default test) resolution, if not the recipe's.
    #[serde(default)]
    pub image_size: Option<u32>,
    #[serde(default)]
    pub smoke_image_size: Option<u32>,
    /// How the row's top-1 is measured, if not on the run's own validation views: the best
    /// checkpoint evaluated at these test scales, with or without ten-crop.
    #[serde(default)]
    pub test: Option<TestViews>,
    /// `[train]` and `[data]` keys set for this row's runs (the transformer recipe), then for
    /// smoke runs only (`smoke_train`, `smoke_data`, on top).
    #[serde(default)]
    pub train: toml::Table,
    #[serde(default)]
    pub data: toml::Table,
    #[serde(default)]
    pub smoke_train: toml::Table,
    #[serde(default)]
    pub smoke_data: toml::Table,
}

impl BackboneRow {
    /// The training run's key: rows sharing it share one run folder per method and dataset.
    pub(crate) fn run_key(&self) -> &str {
        self.run.as_deref().unwrap_or(&self.key)
    }
}

/// A row's test: crop sides (several: a multi-scale test) and ten-crop, at full and smoke scale.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestViews {
    pub scales: Vec<u32>,
    pub smoke_scales: Vec<u32>,
    #[serde(default)]
    pub ten_crop: bool,
}

/// The ensemble row: `method`'s trained models of every distinct run, each with the test of the
/// last row that evaluates it, their softmax probabilities averaged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnsembleRow {
    pub label: String,
    pub method: String,
    /// Members at full scale: the rows whose paper top-1 is at least this (Table S1: "models
    /// above 91.00"); smoke runs take every run.
    #[serde(default)]
    pub paper_above: Option<f64>,
    /// The paper's top-1 for each dataset column.
    #[serde(default)]
    pub paper: BTreeMap<String, f64>,
}

/// One row: image-only (neither `fusion` nor `baseline`), a fused model, or a baseline over the
/// row `image-only` of the same backbone and dataset.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MethodRow {
    pub key: String,
    pub label: String,
    #[serde(default)]
    pub fusion: Option<FusionKind>,
    /// The metadata the fused model sees, if not the dataset's (Table S6).
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub baseline: Option<MethodBaseline>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MethodBaseline {
    #[serde(rename = "type")]
    pub kind: BaselineType,
    #[serde(default)]
    pub priorsnet: PriorsNetConfig,
    #[serde(default)]
    pub geonet: GeoNetConfig,
    /// Learn the prior from the dataset's `full_prior` split instead of its training split.
    #[serde(default)]
    pub full_prior: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatasetColumn {
    pub key: String,
    pub label: String,
    pub name: DatasetName,
    /// The split definition of the real data (YFCC: the supplement's 2,000-image val split).
    #[serde(default)]
    pub split_scheme: SplitScheme,
    pub num_classes: usize,
    pub metadata: Metadata,
    pub smoke_dates: bool,
    /// Another seed for this column's synthetic data (columns are different datasets).
    #[serde(default)]
    pub smoke_seed: Option<u64>,
    /// Where `full_prior` baselines learn their prior: another dataset's split (real data).
    #[serde(default)]
    pub full_prior: Option<FullPrior>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FullPrior {
    pub name: DatasetName,
    pub split: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recipe {
    pub image_size: u32,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_epochs: usize,
    pub workers: usize,
    pub mlp_d: usize,
    pub mlp_h: usize,
    pub mlp_n: usize,
    pub seed: u64,
}

/// The baselines' settings scaled to the smoke data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmokeBaselines {
    /// PriorsNet's batch sizes are divided by this (1024 → 32 for 40 images per class).
    pub priorsnet_batch_divisor: usize,
    /// PriorsNet's images per class are multiplied by this (100 → 40).
    pub priorsnet_per_class_scale: f64,
    pub priorsnet_epochs: usize,
    pub geonet_epochs: usize,
    /// The `full_prior` split: the same synthetic classes with this many times the training
    /// images.
    pub full_prior_scale: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmokeRecipe {
    #[serde(flatten)]
    pub recipe: Recipe,
    pub synth: SynthConfig,
    #[serde(default)]
    pub baselines: Option<SmokeBaselines>,
}

pub(crate) fn read_table(path: &Path) -> anyhow::Result<TableSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: TableSpec = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let has_image_only = table.methods.iter().any(|m| m.key == "image-only");
    for method in &table.methods {
        if method.baseline.is_some() && !has_image_only {
            anyhow::bail!("{}: baseline {} needs an image-only row to sit on", path.display(), method.key);
        }
        if method.baseline.is_some() && method.fusion.is_some() {
            anyhow::bail!("{}: {} is both a fused model and a baseline", path.display(), method.key);
        }
        if method.baseline.as_ref().is_some_and(|b| b.full_prior)
            && table.datasets.iter().any(|d| d.full_prior.is_none())
        {
            anyhow::bail!(
                "{}: {} asks for a full prior that a dataset column does not name",
                path.display(),
                method.key
            );
        }
    }
    if let Some(ensemble) = &table.ensemble
        && !table.methods.iter().any(|m| m.key == ensemble.method && m.baseline.is_none())
    {
        anyhow::bail!("{}: the ensemble names no trained method {}", path.display(), ensemble.method);
    }
    for row in &table.backbones {
        let same_run: Vec<_> = table.backbones.iter().filter(|b| b.run_key() == row.run_key()).collect();
        if same_run.iter().any(|b| {
            b.backbone != row.backbone || b.image_size != row.image_size || b.train != row.train || b.data != row.data
        }) {
            anyhow::bail!(
                "{}: rows sharing run {} must share their backbone, image size and recipe",
                path.display(),
                row.run_key()
            );
        }
    }
    for claim in &table.smoke_claims {
        for key in [&claim.better, &claim.worse] {
            if !table.methods.iter().any(|m| &m.key == key) {
                anyhow::bail!("{}: claim names no method {key}", path.display());
            }
        }
    }
    Ok(table)
}
