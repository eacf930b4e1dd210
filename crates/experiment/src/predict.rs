//! A trained run on people's own photos: the class list a run keeps (`classes.json`), each
//! photo's location and date (EXIF, or given), its evaluation views, and the top-k classes.

use std::path::{Path, PathBuf};

use candle_core::{D, Device, Tensor};
use dmlp_backbones::{IMAGENET_MEAN, IMAGENET_STD};
use dmlp_datasets::ClassInfo;
use dmlp_eval::{ImageView, TensorBatch};
use dmlp_geo::{Date, Metadata, Observation};
use dmlp_model::Classifier;
use dmlp_vision::{Normalization, Renderer, Transform};
use rand::SeedableRng;

use crate::{ExperimentError, RunConfig};

/// The file in a run folder that names its classes.
pub const CLASSES_FILE: &str = "classes.json";

/// Writes the class list of a run (index = label; source id, name, supercategory) to
/// `run_dir/classes.json`, so that prediction needs no dataset on disk.
pub fn write_classes(run_dir: &Path, dataset: &str, classes: &[ClassInfo]) -> Result<(), ExperimentError> {
    let list: Vec<serde_json::Value> = classes
        .iter()
        .enumerate()
        .map(|(index, c)| {
            serde_json::json!({"index": index, "source_id": c.source_id, "name": c.name, "supercategory": c.supercategory})
        })
        .collect();
    let json = serde_json::json!({"dataset": dataset, "classes": list});
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    dmlp_train::write_atomic(&run_dir.join(CLASSES_FILE), text.as_bytes())?;
    Ok(())
}

/// Reads `run_dir/classes.json`; `Ok(None)` when the run has none (runs from before it was
/// written), an error naming the file when it is malformed.
pub fn read_classes(run_dir: &Path) -> Result<Option<Vec<ClassInfo>>, ExperimentError> {
    let path = run_dir.join(CLASSES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ExperimentError::Config { path, message: e.to_string() }),
    };
    let bad = |message: String| ExperimentError::Config { path: path.clone(), message };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let list = json["classes"].as_array().ok_or_else(|| bad("no \"classes\" list".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            if c["index"].as_u64() != Some(i as u64) {
                return Err(bad(format!("class {i}: \"index\" is {}, not {i}", c["index"])));
            }
            let name = c["name"].as_str().ok_or_else(|| bad(format!("class {i} has no name")))?;
            Ok(ClassInfo {
                source_id: c["source_id"].as_u64().unwrap_or(i as u64),
                name: name.to_owned(),
                supercategory: c["supercategory"].as_str().map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Where a photo's location or date came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataSource {
    Exif,
    Flags,
    None,
}

impl MetadataSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataSource::Exif => "exif",
            MetadataSource::Flags => "flags",
            MetadataSource::None => "none",
        }
    }
}

/// Location and date given on the command line, each overriding the photo's own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GivenMetadata {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub date: Option<Date>,
}

/// One photo read and ready for the model.
#[derive(Debug, Clone)]
pub struct PreparedPhoto {
    pub path: PathBuf,
    pub observation: Observation,
    pub location_source: MetadataSource,
    pub date_source: MetadataSource,
    /// The EXIF orientation applied (1: as stored).
    pub orientation: u8,
    /// What the EXIF held that was not used, and why.
    pub notes: Vec<String>,
    /// The views' floats, one buffer per evaluation transform.
    views: Vec<Vec<f32>>,
}

impl PreparedPhoto {
    /// `exif`, `flags` or `none`: `flags` when a flag gave the location or the date, else `exif`
    /// when the photo's EXIF gave either.
    pub fn metadata_source(&self) -> MetadataSource {
        match (self.location_source, self.date_source) {
            (MetadataSource::Flags, _) | (_, MetadataSource::Flags) => MetadataSource::Flags,
            (MetadataSource::Exif, _) | (_, MetadataSource::Exif) => MetadataSource::Exif,
            _ => MetadataSource::None,
        }
    }
}

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassProbability {
    pub class: usize,
    pub probability: f32,
}

/// A trained classifier with its evaluation views and class list.
pub struct Predictor {
    model: Classifier,
    transforms: Vec<Transform>,
    metadata: Option<Metadata>,
    device: Device,
    pub classes: Vec<ClassInfo>,
}

impl Predictor {
    /// The model `config` describes with the weights in `weights` (every tensor required), and
    /// the run's class list (as many as the model has outputs).
    pub fn new(
        config: &RunConfig,
        weights: &Path,
        classes: Vec<ClassInfo>,
        device: &Device,
    ) -> Result<Self, ExperimentError> {
        if classes.len() != config.model.num_classes {
            return Err(ExperimentError::Config {
                path: weights.to_owned(),
                message: format!(
                    "the model has {} classes, its class list {}",
                    config.model.num_classes,
                    classes.len()
                ),
            });
        }
        let model = Classifier::new_zeroed(&config.model, device)?;
        dmlp_model::WeightsFile::read(weights)?.load_into(model.store(), dmlp_model::LoadPolicy::STRICT)?;
        Ok(Self {
            model,
            transforms: config.data.eval_transforms(),
            metadata: config.model.fusion.as_ref().and(config.model.metadata),
            device: device.clone(),
            classes,
        })
    }

    /// The fields the model reads (`None`: an image-only model).
    pub fn metadata(&self) -> Option<Metadata> {
        self.metadata
    }

    /// Whether `observation` reaches the model: an image-only model reads none, and a field the
    /// model uses that is missing zeroes the whole location vector, as in training.
    pub fn uses_metadata_of(&self, observation: &Observation) -> bool {
        self.metadata.is_some_and(|m| observation.is_complete_for(m))
    }

    /// Reads the photo at `path`: its EXIF location and date (each overridden by `given`), its
    /// orientation (applied), and its evaluation views. An error names the file.
    pub fn prepare(&self, path: &Path, given: &GivenMetadata) -> Result<PreparedPhoto, ExperimentError> {
        self.prepare_with(&mut Renderer::new(), path, given)
    }

    /// [`Predictor::prepare`] with a renderer (and its scratch buffers) kept across photos.
    fn prepare_with(
        &self,
        renderer: &mut Renderer,
        path: &Path,
        given: &GivenMetadata,
    ) -> Result<PreparedPhoto, ExperimentError> {
        let bytes = dmlp_vision::read_bytes(path)?;
        let exif = dmlp_photo::read_metadata(&bytes);
        let (latitude, longitude, location_source) = match (given.latitude, given.longitude) {
            (Some(lat), Some(lon)) => (Some(lat), Some(lon), MetadataSource::Flags),
            _ if exif.has_position() => (exif.latitude, exif.longitude, MetadataSource::Exif),
            _ => (None, None, MetadataSource::None),
        };
        let (date, date_source) = match (given.date, exif.date) {
            (Some(date), _) => (Some(date), MetadataSource::Flags),
            (None, Some(date)) => (Some(date), MetadataSource::Exif),
            (None, None) => (None, MetadataSource::None),
        };
        let observation = Observation::new(latitude, longitude, date)
            .map_err(|e| ExperimentError::Config { path: path.to_owned(), message: e.to_string() })?;
        let norm = Normalization { mean: IMAGENET_MEAN, std: IMAGENET_STD };
        let mut views: Vec<Vec<f32>> = self.transforms.iter().map(|t| vec![0.0; t.floats_per_image()]).collect();
        let mut slots: Vec<&mut [f32]> = views.iter_mut().map(Vec::as_mut_slice).collect();
        // Evaluation views draw nothing at random; the generator only fills the signature.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        if exif.orientation == 1 {
            renderer.render(&bytes, path, &self.transforms, &norm, &mut rng, &mut slots)?;
        } else {
            let (image, _) = dmlp_vision::decode::decode_checked(&bytes, path)?;
            let upright = dmlp_vision::orient(image, exif.orientation);
            renderer.render_image(upright, path, &self.transforms, &norm, &mut rng, &mut slots)?;
        }
        Ok(PreparedPhoto {
            path: path.to_owned(),
            observation,
            location_source,
            date_source,
            orientation: exif.orientation,
            notes: exif.notes,
            views,
        })
    }

    /// [`Predictor::prepare`] of each of `paths` on up to `workers` threads; results in order.
    pub fn prepare_all(
        &self,
        paths: &[PathBuf],
        given: &GivenMetadata,
        workers: usize,
    ) -> Vec<Result<PreparedPhoto, ExperimentError>> {
        let per_thread = paths.len().div_ceil(workers.max(1)).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = paths
                .chunks(per_thread)
                .map(|part| {
                    (
                        part,
                        scope.spawn(move || {
                            let mut renderer = Renderer::new();
                            part.iter().map(|p| self.prepare_with(&mut renderer, p, given)).collect::<Vec<_>>()
                        }),
                    )
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(part, handle)| {
                    handle.join().unwrap_or_else(|_| {
                        part.iter()
                            .map(|p| {
                                Err(ExperimentError::Config { path: p.clone(), message: "reading it panicked".into() })
                            })
                            .collect()
                    })
                })
                .collect()
        })
    }

    /// The `top_k` likeliest classes of each photo, likeliest first: the softmax of the logits
    /// averaged over every view and crop (as `dmlp eval` scores).
    pub fn predict(
        &self,
        photos: &[PreparedPhoto],
        top_k: usize,
    ) -> Result<Vec<Vec<ClassProbability>>, ExperimentError> {
        if photos.is_empty() {
            return Ok(Vec::new());
        }
        let n = photos.len();
        let tensor_err = |e: candle_core::Error| ExperimentError::Eval(dmlp_eval::EvalError::from(e));
        let views = self
            .transforms
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let floats: Vec<f32> = photos.iter().flat_map(|p| p.views[k].iter().copied()).collect();
                let size = t.size() as usize;
                let images =
                    Tensor::from_vec(floats, (n * t.crops(), 3, size, size), &self.device).map_err(tensor_err)?;
                Ok(ImageView { images, crops: t.crops() })
            })
            .collect::<Result<Vec<_>, ExperimentError>>()?;
        let loc = match self.metadata {
            Some(m) => {
                let cin = m.n_inputs();
                let mut floats = vec![0f32; n * cin];
                for (p, row) in photos.iter().zip(floats.chunks_exact_mut(cin)) {
                    p.observation.encode_into(m, row);
                }
                Some(Tensor::from_vec(floats, (n, cin), &self.device).map_err(tensor_err)?)
            }
            None => None,
        };
        let targets = Tensor::zeros(n, candle_core::DType::U32, &self.device).map_err(tensor_err)?;
        let batch = TensorBatch { views, loc, targets, rows: Vec::new() };
        let logits = dmlp_train::classifier_scores(&self.model, &batch)?;
        let probabilities = softmax_classes(&logits).map_err(tensor_err)?;
        let rows: Vec<Vec<f32>> = probabilities.to_vec2().map_err(tensor_err)?;
        rows.into_iter()
            .zip(photos)
            .map(|(row, photo)| {
                if row.iter().any(|p| !p.is_finite()) {
                    return Err(ExperimentError::Config {
                        path: photo.path.clone(),
                        message: "the model gave non-finite scores (are the weights finite?)".into(),
                    });
                }
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                Ok(order
                    .into_iter()
                    .take(top_k)
                    .map(|class| ClassProbability { class, probability: row[class] })
                    .collect())
            })
            .collect()
    }
}

/// Softmax over the last dimension (classes), in f32.
pub(crate) fn softmax_classes(logits: &Tensor) -> candle_core::Result<Tensor> {
    let logits = logits.to_dtype(candle_core::DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let exp = logits.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}
