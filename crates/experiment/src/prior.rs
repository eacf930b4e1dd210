//! A trained PriorsNet baseline asked directly: which classes it finds likely at a place and
//! time, and where it expects one class (`dmlp prior`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dmlp_baselines::encoding::{priorsnet_columns, priorsnet_inputs};
use dmlp_baselines::priorsnet::PriorsNet;
use dmlp_datasets::ClassInfo;
use dmlp_geo::{Metadata, Observation};
use dmlp_train::{RunDir, Which};

use crate::{BaselineConfig, BaselineType, ExperimentError, RunConfig, read_classes, read_splits};

/// A PriorsNet run's prior, with its class names.
pub struct PriorModel {
    prior: PriorsNet,
    metadata: Metadata,
    device: Device,
    pub classes: Vec<ClassInfo>,
    /// The weights file read.
    pub weights: PathBuf,
}

#[derive(serde::Deserialize)]
struct Resolved {
    image: RunConfig,
    baseline: BaselineConfig,
}

impl PriorModel {
    /// Opens the PriorsNet run in `run_dir` (written by `dmlp baseline`): its config, its final
    /// weights (those it rescores with) and the image run's class names (its `classes.json`,
    /// else its dataset's; else `class N`).
    pub fn open(run_dir: &Path, device: &Device) -> Result<Self, ExperimentError> {
        let path = run_dir.join("config.toml");
        let err = |message: String| ExperimentError::Config { path: path.clone(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let resolved: Resolved = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if resolved.baseline.kind != BaselineType::Priorsnet {
            return Err(err(format!("a {:?} run; `dmlp prior` reads PriorsNet runs", resolved.baseline.kind)));
        }
        let metadata = resolved.baseline.metadata;
        let cin = priorsnet_columns(metadata).map_err(err)?.len();
        let num_classes = resolved.image.model.num_classes;
        let p = &resolved.baseline.priorsnet;
        let prior = PriorsNet::new(cin, num_classes, p.dropout, p.seed, device)?;
        let weights = RunDir::open(run_dir)?.weights(Which::Last)?;
        dmlp_model::WeightsFile::read(&weights)?.load_into(prior.store(), dmlp_model::LoadPolicy::STRICT)?;
        let classes = image_classes(run_dir, &resolved.image, num_classes);
        Ok(Self { prior, metadata, device: device.clone(), classes, weights })
    }

    /// The fields the prior reads (`geo` or `geo_temporal`).
    pub fn metadata(&self) -> Metadata {
        self.metadata
    }

    /// `p(class | place, time)` for each observation: `[n][classes]`, each in (0, 1). An
    /// observation lacking a field the prior reads is an error naming it.
    pub fn prior_at(&self, observations: &[Observation]) -> Result<Vec<Vec<f32>>, ExperimentError> {
        let cin = self.metadata.n_inputs();
        let mut rows = Vec::with_capacity(observations.len());
        for chunk in observations.chunks(8192) {
            let mut floats = vec![0f32; chunk.len() * cin];
            for (o, row) in chunk.iter().zip(floats.chunks_exact_mut(cin)) {
                if !o.is_complete_for(self.metadata) {
                    return Err(ExperimentError::Config {
                        path: self.weights.clone(),
                        message: format!(
                            "this prior reads {}: give a location{}",
                            self.metadata,
                            if self.metadata.uses_date() { " and a date" } else { "" }
                        ),
                    });
                }
                o.encode_into(self.metadata, row);
            }
            let tensor_err = |e: candle_core::Error| ExperimentError::Eval(dmlp_eval::EvalError::from(e));
            let loc = Tensor::from_vec(floats, (chunk.len(), cin), &self.device).map_err(tensor_err)?;
            let (inputs, _) = priorsnet_inputs(&loc, self.metadata).map_err(tensor_err)?;
            let prior = self.prior.prior(&inputs).map_err(tensor_err)?;
            rows.extend(dmlp_eval::score_rows(&prior)?);
        }
        Ok(rows)
    }
}

/// The image run's class names: the `classes.json` of the run whose weights the baseline sat
/// on (named in its provenance), else the image config's dataset, else `class N`.
fn image_classes(run_dir: &Path, image: &RunConfig, num_classes: usize) -> Vec<ClassInfo> {
    let provenance = std::fs::read_to_string(run_dir.join("provenance.json")).ok();
    let image_weights = provenance
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["image_weights"].as_str().map(PathBuf::from));
    if let Some(weights) = image_weights {
        for dir in weights.ancestors().take(4) {
            if let Ok(Some(classes)) = read_classes(dir)
                && classes.len() == num_classes
            {
                return classes;
            }
        }
    }
    if let Ok((train, _)) = read_splits(image)
        && train.classes.len() == num_classes
    {
        return train.classes;
    }
    (0..num_classes)
        .map(|i| ClassInfo { source_id: i as u64, name: format!("class {i}"), supercategory: None })
        .collect()
}
