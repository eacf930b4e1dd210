//! Ensembles (Table S1's last row): several trained models on one validation split, their
//! probabilities averaged.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use dmlp_eval::{Accuracy, AccuracyCounter, BatchSource, EvalError, TensorBatch, score_rows, to_u32};
use dmlp_model::Classifier;

use crate::predict::softmax_classes;
use crate::{ExperimentError, LoaderSource, RunConfig, read_splits};

/// One member: its config (model, and the evaluation views it was trained for) and weights.
#[derive(Debug, Clone)]
pub struct EnsembleMember {
    pub config: RunConfig,
    pub weights: PathBuf,
}

/// Each member's accuracy alone, and the ensemble's.
#[derive(Debug, Clone)]
pub struct EnsembleEvaluation {
    pub members: Vec<Accuracy>,
    pub ensemble: Accuracy,
}

/// Evaluates `members` on the validation split of `data` (its `[data]` table names the split;
/// each member keeps its own views): every member scores every image, and the ensemble ranks
/// classes by the mean of the members' softmax probabilities. The members must have the same
/// classes; their loaders read the same images in the same order (a bad image left out by one is
/// left out by all, and a disagreement is an error).
pub fn evaluate_ensemble(
    data: &RunConfig,
    members: &[EnsembleMember],
    device: &Device,
) -> Result<EnsembleEvaluation, ExperimentError> {
    let Some(first) = members.first() else {
        return Err(ExperimentError::Config { path: PathBuf::new(), message: "an ensemble of no members".into() });
    };
    for m in members {
        if m.config.model.num_classes != first.config.model.num_classes {
            return Err(ExperimentError::Config {
                path: m.weights.clone(),
                message: format!(
                    "{} classes, where {} has {}: an ensemble's members must share their classes",
                    m.config.model.num_classes,
                    first.weights.display(),
                    first.config.model.num_classes
                ),
            });
        }
    }
    let (_, val_split) = read_splits(data)?;
    let val_split = Arc::new(val_split);
    let models = members
        .iter()
        .map(|m| {
            let model = Classifier::new_zeroed(&m.config.model, device)?;
            dmlp_model::WeightsFile::read(&m.weights)?.load_into(model.store(), dmlp_model::LoadPolicy::STRICT)?;
            Ok(model)
        })
        .collect::<Result<Vec<_>, ExperimentError>>()?;
    let sources = members
        .iter()
        .map(|m| {
            let mut config = data.clone();
            config.model = m.config.model.clone();
            config.data.image_size = m.config.data.image_size;
            config.data.eval_resize = m.config.data.eval_resize;
            config.data.test_scales.clone_from(&m.config.data.test_scales);
            config.data.ten_crop = m.config.data.ten_crop;
            config.data.interpolation = m.config.data.interpolation;
            LoaderSource::eval(val_split.clone(), &config, device.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut epochs = sources.iter().map(|s| s.epoch(0)).collect::<Result<Vec<_>, EvalError>>()?;
    let mut counters = vec![AccuracyCounter::new(); members.len() + 1];
    loop {
        let batches: Vec<Option<Result<TensorBatch, EvalError>>> = epochs.iter_mut().map(Iterator::next).collect();
        if batches.iter().all(Option::is_none) {
            break;
        }
        let batches = batches
            .into_iter()
            .map(|b| b.ok_or_else(|| EvalError::Data("the members' loaders ended apart".into()))?)
            .collect::<Result<Vec<_>, EvalError>>()?;
        let targets = to_u32(&batches[0].targets)?;
        let mut mean: Vec<Vec<f32>> = Vec::new();
        for ((model, batch), counter) in models.iter().zip(&batches).zip(counters.iter_mut()) {
            if batch.rows != batches[0].rows {
                return Err(EvalError::Data("the members' loaders read different images (a bad image?)".into()).into());
            }
            let logits = dmlp_train::classifier_scores(model, batch)?;
            let probabilities = score_rows(&softmax_classes(&logits).map_err(EvalError::from)?)?;
            counter.add(&probabilities, &targets)?;
            if mean.is_empty() {
                mean = vec![vec![0.0; probabilities.first().map_or(0, Vec::len)]; probabilities.len()];
            }
            for (sum, row) in mean.iter_mut().zip(&probabilities) {
                for (s, p) in sum.iter_mut().zip(row) {
                    *s += p / members.len() as f32;
                }
            }
        }
        counters[members.len()].add(&mean, &targets)?;
    }
    let mut accuracies = counters.iter().map(AccuracyCounter::finish).collect::<Result<Vec<_>, _>>()?;
    let ensemble = accuracies.pop().ok_or_else(|| EvalError::Data("no ensemble".into()))?;
    Ok(EnsembleEvaluation { members: accuracies, ensemble })
}
