//! A baseline run over a trained image-only model: PriorsNet or GeoNet, from a `[baseline]`
//! table, on the image run's data, evaluated on its validation split beside the image model
//! alone.
//!
//! ```toml
//! [baseline]
//! type = "priorsnet"            # or "geonet"
//! metadata = "geo_temporal"     # what the baseline sees: geo_temporal or geo
//! # prior_data = { dataset = "inat2021", root = "...", split = "train" }   # PriorsNet: learn
//! #                             # the prior from another split (Table S2's full-train-set row)
//! [baseline.priorsnet]          # PriorsNetConfig: batch_size, lr, lr_decay, epochs, sampler, ...
//! [baseline.geonet]             # GeoNetConfig: fusion, lr, momentum, epochs, ...
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use dmlp_baselines::encoding::priorsnet_inputs;
use dmlp_baselines::frozen_image_logits;
use dmlp_baselines::geonet::{GeoNet, GeoNetConfig, geonet_scores, train_geonet};
use dmlp_baselines::priorsnet::{Presences, PriorsNet, PriorsNetConfig, train_priorsnet};
use dmlp_datasets::Split;
use dmlp_eval::{Accuracy, EvalError, ScoreKind, evaluate};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, LoadPolicy, WeightsFile};
use dmlp_train::{FitObserver, RunDir, write_atomic};
use serde::{Deserialize, Serialize};

use crate::{ExperimentError, LoaderSource, Provenance, RunConfig, RunOptions, read_splits};

/// Which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineType {
    Priorsnet,
    Geonet,
}

/// Where PriorsNet's presences come from, when not from the image run's training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorData {
    pub dataset: dmlp_datasets::DatasetName,
    pub root: PathBuf,
    pub split: String,
    #[serde(default)]
    pub split_scheme: dmlp_datasets::SplitScheme,
}

/// The `[baseline]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    #[serde(rename = "type")]
    pub kind: BaselineType,
    pub metadata: Metadata,
    /// PriorsNet: the prior learns from this split instead of the image run's training split
    /// (Table S2's "location prior of the full iNat21 train set").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_data: Option<PriorData>,
    #[serde(default)]
    pub priorsnet: PriorsNetConfig,
    #[serde(default)]
    pub geonet: GeoNetConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineFile {
    baseline: BaselineConfig,
}

impl BaselineConfig {
    /// Reads the `[baseline]` table of `path`, after `overrides` (`baseline.key=value`).
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let err = |message: String| ExperimentError::Config { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        for assignment in overrides {
            crate::apply_override(&mut doc, assignment).map_err(err)?;
        }
        let file: BaselineFile = toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| err(e.to_string()))?;
        let mut config = file.baseline;
        if let Some(prior) = &mut config.prior_data
            && prior.root.is_relative()
        {
            prior.root = path.parent().unwrap_or(Path::new(".")).join(&prior.root);
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        dmlp_baselines::encoding::priorsnet_columns(self.metadata)?;
        self.priorsnet.validate().map_err(|e| e.to_string())?;
        self.geonet.validate().map_err(|e| e.to_string())
    }
}

/// What a baseline run measured on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineSummary {
    pub kind: BaselineType,
    pub top1: f64,
    pub top5: f64,
    pub image_only_top1: f64,
    pub image_only_top5: f64,
    pub images: usize,
    /// Training records without the metadata the baseline needs (PriorsNet skips them).
    pub train_records_without_metadata: usize,
}

/// Dynamic MLP's encoding of every record of `split`: `[N, cin]`.
fn encoded_locations(split: &Split, metadata: Metadata, device: &Device) -> Result<Tensor, ExperimentError> {
    let cin = metadata.n_inputs();
    let mut values = vec![0f32; split.records.len() * cin];
    for (record, row) in split.records.iter().zip(values.chunks_mut(cin)) {
        record.observation.encode_into(metadata, row);
    }
    Ok(Tensor::from_vec(values, (split.records.len(), cin), device).map_err(dmlp_train::TrainError::from)?)
}

fn presences(split: &Split, metadata: Metadata, device: &Device) -> Result<(Presences, usize), ExperimentError> {
    let labels: Vec<u32> = split.records.iter().map(|r| r.label).collect();
    let loc = encoded_locations(split, metadata, device)?;
    Ok(Presences::from_encoded(&loc, &labels, metadata)?)
}

/// Trains the baseline `baseline` on top of the image-only model `image` (its config and weights)
/// into `run_dir`, and evaluates it beside the image model alone; writes `summary.json`. The
/// baseline's final weights (its last epoch, as geo_prior and GeoNet use them) rescore the image
/// model.
pub fn baseline_run(
    image: &RunConfig,
    image_weights: &Path,
    baseline: &BaselineConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions,
    provenance: &Provenance,
    observer: &mut dyn FitObserver,
) -> Result<BaselineSummary, ExperimentError> {
    if image.model.fusion.is_some() {
        return Err(ExperimentError::Config {
            path: image_weights.to_owned(),
            message: "a baseline sits on an image-only model: its [model] must have no fusion".into(),
        });
    }
    let (train_split, val_split) = read_splits(image)?;
    let run = RunDir::create(run_dir)?;
    #[derive(Serialize)]
    struct Resolved<'a> {
        image: &'a RunConfig,
        baseline: &'a BaselineConfig,
    }
    let config_text = toml::to_string_pretty(&Resolved { image, baseline })
        .map_err(|e| ExperimentError::Config { path: run_dir.to_owned(), message: e.to_string() })?;
    write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())?;
    let provenance_json = serde_json::json!({
        "git_commit": provenance.git_commit, "device": provenance.device, "command": provenance.command,
        "image_weights": image_weights, "resumed": options.resume,
    });
    write_atomic(
        &run_dir.join("provenance.json"),
        serde_json::to_string_pretty(&provenance_json).unwrap_or_default().as_bytes(),
    )?;

    let model = Classifier::new_zeroed(&image.model, device)?;
    WeightsFile::read(image_weights)?.load_into(model.store(), LoadPolicy::STRICT)?;
    let batch = image.train.eval_batch_size();
    let val_split = Arc::new(val_split);
    let val = LoaderSource::frozen_image(val_split.clone(), image, baseline.metadata, false, batch, device.clone());
    let alone = evaluate(&val, &|batch| frozen_image_logits(&model, batch), ScoreKind::Logits, None, 0)?.accuracy;
    let (accuracy, without): (Accuracy, usize) = match baseline.kind {
        BaselineType::Priorsnet => {
            let prior_source = match &baseline.prior_data {
                Some(p) => dmlp_datasets::read_split(p.dataset, &p.root, &p.split, p.split_scheme)?,
                None => train_split,
            };
            if prior_source.classes.len() != image.model.num_classes {
                return Err(ExperimentError::Config {
                    path: run_dir.to_owned(),
                    message: format!(
                        "the prior's data has {} classes, the image model {}",
                        prior_source.classes.len(),
                        image.model.num_classes
                    ),
                });
            }
            let (train_presences, without) = presences(&prior_source, baseline.metadata, device)?;
            let (val_presences, _) = presences(&val_split, baseline.metadata, device)?;
            let classes = image.model.num_classes;
            let prior = PriorsNet::new(
                train_presences.inputs.dim(1).map_err(dmlp_train::TrainError::from)?,
                classes,
                baseline.priorsnet.dropout,
                baseline.priorsnet.seed,
                device,
            )?;
            let priorsnet = &baseline.priorsnet;
            train_priorsnet(&prior, priorsnet, &train_presences, &val_presences, &run, options.resume, observer)?;
            let metadata = baseline.metadata;
            let rescore = |batch: &dmlp_eval::TensorBatch| -> Result<Tensor, EvalError> {
                let loc = batch.loc.as_ref().ok_or_else(|| EvalError::Data("PriorsNet needs locations".into()))?;
                let (inputs, valid) = priorsnet_inputs(loc, metadata).map_err(EvalError::model)?;
                Ok(prior.rescore(&frozen_image_logits(&model, batch)?, &inputs, &valid)?)
            };
            (evaluate(&val, &rescore, ScoreKind::NonNegative, None, 0)?.accuracy, without)
        }
        BaselineType::Geonet => {
            let train = LoaderSource::frozen_image(
                Arc::new(train_split),
                image,
                baseline.metadata,
                true,
                image.train.batch_size,
                device.clone(),
            );
            let geonet = GeoNet::new(image.model.num_classes, baseline.metadata.n_inputs(), &baseline.geonet, device)?;
            train_geonet(&geonet, &model, &baseline.geonet, &train, &val, &run, options.resume, observer)?;
            let scorer = |batch: &dmlp_eval::TensorBatch| geonet_scores(&geonet, &model, batch);
            let accuracy = evaluate(&val, &scorer, ScoreKind::Logits, None, 0)?.accuracy;
            (accuracy, 0)
        }
    };
    let summary = BaselineSummary {
        kind: baseline.kind,
        top1: accuracy.top1,
        top5: accuracy.top5,
        image_only_top1: alone.top1,
        image_only_top5: alone.top5,
        images: accuracy.images,
        train_records_without_metadata: without,
    };
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    write_atomic(&run_dir.join("summary.json"), json.as_bytes())?;
    Ok(summary)
}

/// The summary of a finished baseline run, if `run_dir` has one.
pub fn finished_baseline(run_dir: &Path) -> Option<BaselineSummary> {
    let text = std::fs::read_to_string(run_dir.join("summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}
