//! One run from a config file: the data, the model and the trainer composed.
//!
//! A run config has three tables: `[model]` ([`dmlp_model::ModelConfig`]), `[data]`
//! ([`DataConfig`]) and `[train]` ([`dmlp_train::TrainConfig`]). `--set table.key=value`
//! overrides one key ([`apply_override`]). [`train_run`] writes the run folder: the resolved
//! config (`config.toml`), `provenance.json` (git commit, seed, device, data), the class list
//! (`classes.json`), metrics and checkpoints, on one device or data parallel over several (and
//! over nodes: node 0 runs [`train_run`], the others [`follow_run`]). [`Predictor`] runs a
//! trained model on photos
//! (their EXIF location and date, their evaluation views).
//!
//! Architecture invariant: composition only; no model layers, no file formats of its own beyond
//! the run folder's.

mod baseline;
mod config;
mod ensemble;
mod parallel;
mod predict;
mod pretrained;
mod prior;
mod progress;
mod source;

pub use baseline::{BaselineConfig, BaselineSummary, BaselineType, PriorData, baseline_run, finished_baseline};
pub use config::{BadImagesPolicy, DataConfig, RunConfig, apply_override};
pub use ensemble::{EnsembleEvaluation, EnsembleMember, evaluate_ensemble};
pub use predict::{
    CLASSES_FILE, ClassProbability, GivenMetadata, MetadataSource, Predictor, PreparedPhoto, read_classes,
    write_classes,
};
pub use pretrained::{PretrainedInit, load_pretrained, resolve_pretrained};
pub use prior::PriorModel;
pub use progress::ProgressBars;
pub use source::LoaderSource;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use dmlp_datasets::read_split;
use dmlp_eval::{Evaluation, PredictionRecord};
use dmlp_model::Classifier;
use dmlp_train::{
    BestBy, ClassifierTrainer, DataParallelTrainer, FitObserver, FitPlan, FitSummary, RunDir, write_atomic,
};

/// What can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Dataset(#[from] dmlp_datasets::DatasetError),
    #[error(transparent)]
    Prepared(#[from] dmlp_prepare::PrepareError),
    #[error(transparent)]
    Model(#[from] dmlp_model::ModelError),
    #[error(transparent)]
    Train(#[from] dmlp_train::TrainError),
    #[error(transparent)]
    Baseline(#[from] dmlp_baselines::BaselineError),
    #[error(transparent)]
    Eval(#[from] dmlp_eval::EvalError),
    #[error(transparent)]
    Pretrained(#[from] dmlp_pretrained::PretrainedError),
    /// An image that cannot be read (the error names the file).
    #[error(transparent)]
    Image(#[from] dmlp_vision::VisionError),
}

/// How to start a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Continue the run folder from its last checkpoint (an error if it has none).
    pub resume: bool,
    /// Stop after this epoch even if the config has more (the schedule still spans them all).
    pub stop_after: Option<usize>,
    /// Where `hf:` pretrained weights are looked up; `None` reads the Hugging Face variables of
    /// the environment ([`dmlp_pretrained::HubSettings::from_env`]).
    pub hub: Option<dmlp_pretrained::HubSettings>,
    /// Resume even though the config differs from the run's own `config.toml` (the differences
    /// are recorded in `provenance-resume.json`); without it they are an error naming each.
    pub allow_config_change: bool,
    /// A job spanning processes or nodes: this process is `node_rank` of `nodes`. [`train_run`]
    /// is node 0's part (it evaluates and writes the run folder); the others run [`follow_run`].
    pub cluster: Option<dmlp_train::ClusterSpec>,
}

/// Facts about a run that are not in its config, written to `provenance.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provenance {
    pub git_commit: Option<String>,
    pub device: String,
    pub command: String,
}

/// FNV-1a 64 of each annotation file of a split, as hex by file name: which exact data a run saw.
fn annotation_fingerprints(config: &RunConfig, split: &str) -> serde_json::Value {
    let files = config.data.dataset.annotation_files(&config.data.root, split);
    let fingerprint = |path: &Path| -> Option<String> {
        let bytes = std::fs::read(path).ok()?;
        let hash =
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        Some(format!("{hash:016x}"))
    };
    files
        .iter()
        .map(|path| {
            let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (name, serde_json::json!(fingerprint(path)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Reads one split: from its prepared Parquet manifest when `cache_dir` holds a current one,
/// else from the annotation files.
fn read_one_split(data: &DataConfig, split: &str) -> Result<dmlp_datasets::Split, ExperimentError> {
    if let Some(cache) = &data.cache_dir
        && let Some(prepared) = dmlp_prepare::load_split(data.dataset, &data.root, split, data.split_scheme, cache)?
    {
        return Ok(prepared);
    }
    Ok(read_split(data.dataset, &data.root, split, data.split_scheme)?)
}

/// Reads the train and validation splits the config names.
pub fn read_splits(config: &RunConfig) -> Result<(dmlp_datasets::Split, dmlp_datasets::Split), ExperimentError> {
    let data = &config.data;
    let train = read_one_split(data, &data.train_split)?;
    let val = read_one_split(data, &data.val_split)?;
    train.check_images_exist()?;
    val.check_images_exist()?;
    let (model_classes, data_classes) = (config.model.num_classes, train.classes.len());
    if model_classes != data_classes || val.classes.len() != data_classes {
        return Err(ExperimentError::Config {
            path: data.root.clone(),
            message: format!(
                "the model has {model_classes} classes, the data {data_classes} (train) and {} (val)",
                val.classes.len()
            ),
        });
    }
    Ok((train, val))
}

/// Trains the model `config` describes into `run_dir` (or continues it with `resume`), on one
/// device or, data parallel, on several: one replica per device, each batch split across them
/// (`dmlp_train::DataParallelTrainer`; every device scores a share of each evaluation batch, the first checkpoints).
pub fn train_run(
    config: &RunConfig,
    run_dir: &Path,
    devices: &[Device],
    options: RunOptions,
    provenance: &Provenance,
    observer: &mut dyn FitObserver,
) -> Result<FitSummary, ExperimentError> {
    // A resumed run checks its config first: a mismatch stops it before any work.
    let config_changes = if options.resume { config_changes(config, run_dir)? } else { Vec::new() };
    if !config_changes.is_empty() && !options.allow_config_change {
        return Err(ExperimentError::Config {
            path: run_dir.join("config.toml"),
            message: format!(
                "the config differs from the run's own: {}; resume with the run's config, or pass \
                 --allow-config-change to resume with these changes (they are recorded in provenance-resume.json)",
                config_changes.join("; ")
            ),
        });
    }
    // Found first (before the data is read and the run folder exists), so a missing file
    // (offline, not cached) stops the run at once and leaves nothing behind. A resumed run takes
    // every weight from its checkpoint instead.
    let pretrained_weights = match (&config.model.pretrained, options.resume) {
        (Some(source), false) => {
            let hub = options.hub.clone().unwrap_or_else(dmlp_pretrained::HubSettings::from_env);
            Some(resolve_pretrained(source, &hub)?)
        }
        _ => None,
    };
    let Some(device) = devices.first() else {
        return Err(ExperimentError::Config { path: run_dir.to_owned(), message: "no device to train on".into() });
    };
    let (train_split, val_split) = read_splits(config)?;
    let missing_metadata = check_metadata_coverage(config, &train_split)?;
    let model = Classifier::new(&config.model, config.train.seed, device)?;
    let pretrained = pretrained_weights.map(|weights| load_pretrained(&model, weights)).transpose()?;
    if let Some(init) = &pretrained {
        for warning in &init.weights.warnings {
            observer.warning(warning);
        }
        observer.note(&format!(
            "pretrained {} ({}, sha256 {}): {}",
            init.weights.source,
            init.weights.path.display(),
            init.weights.sha256,
            init.load.summary()
        ));
    }
    let run = RunDir::create(run_dir)?;
    let config_text = toml::to_string_pretty(config)
        .map_err(|e| ExperimentError::Config { path: run_dir.to_owned(), message: e.to_string() })?;
    if !options.resume {
        write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())?;
    }
    // What `dmlp predict` needs besides the config and weights (a resumed run from before this
    // file existed gets it too).
    if !options.resume || !run_dir.join(CLASSES_FILE).exists() {
        write_classes(run_dir, config.data.dataset.as_str(), &train_split.classes)?;
    }
    let last_image_dropped = LoaderSource::drops_last_image(train_split.records.len(), config.train.batch_size);
    if last_image_dropped {
        observer.warning(&format!(
            "{} training images in batches of {}: each epoch's last batch would hold one image, which training leaves out (BatchNorm cannot use it)",
            train_split.records.len(),
            config.train.batch_size
        ));
    }
    let data_summary = serde_json::json!({
        "dataset": config.data.dataset,
        "split_scheme": config.data.split_scheme,
        "root": config.data.root,
        "train": {"split": config.data.train_split, "images": train_split.records.len(), "records_missing_metadata": missing_metadata, "classes": train_split.classes.len(), "notes": train_split.notes, "annotations_fnv1a64": annotation_fingerprints(config, &config.data.train_split), "last_image_dropped": last_image_dropped},
        "val": {"split": config.data.val_split, "images": val_split.records.len(), "notes": val_split.notes, "annotations_fnv1a64": annotation_fingerprints(config, &config.data.val_split)},
    });
    let provenance_json = serde_json::json!({
        "git_commit": provenance.git_commit,
        "seed": config.train.seed,
        "device": provenance.device,
        "command": provenance.command,
        "data": data_summary,
        "pretrained": pretrained,
        "resumed": options.resume,
        "config_changes": config_changes,
    });
    let name = if options.resume { "provenance-resume.json" } else { "provenance.json" };
    write_atomic(&run_dir.join(name), serde_json::to_string_pretty(&provenance_json).unwrap_or_default().as_bytes())?;

    let val_source = LoaderSource::eval(Arc::new(val_split), config, device.clone())?;
    let plan = FitPlan {
        epochs: config.train.epochs,
        schedule: config.train.schedule(),
        best_by: BestBy::ValTop1,
        stop_after: options.stop_after,
        sync_every: config.train.sync_every_on(device),
    };
    if devices.len() == 1 && options.cluster.is_none() {
        let train_source = LoaderSource::train(Arc::new(train_split), config, device.clone())?;
        let mut trainer = ClassifierTrainer::new(&model, &config.train)?;
        return Ok(dmlp_train::fit(&mut trainer, &plan, &train_source, &val_source, &run, options.resume, observer)?);
    }
    // Data parallel: batches stay on the host and each replica takes its rows.
    let job = options.cluster.as_ref().map(|_| parallel::job_description(config, &train_split, provenance));
    let mut train_source = LoaderSource::train(Arc::new(train_split), config, Device::Cpu)?;
    let others = devices[1..]
        .iter()
        .map(|device| Classifier::new(&config.model, config.train.seed, device))
        .collect::<Result<Vec<_>, _>>()?;
    let (collectives, note) = match (&options.cluster, &job) {
        (Some(cluster), Some(job)) => parallel::cluster_collectives(devices, cluster, job)?,
        _ => parallel::collectives(devices)?,
    };
    observer.note(&format!("data parallel: {note}"));
    if options.cluster.is_some() {
        observer.note(&parallel::decode_own_rows(&mut train_source, &config.train, &collectives));
    }
    let models: Vec<&Classifier> = std::iter::once(&model).chain(&others).collect();
    let mut trainer = DataParallelTrainer::new(models, collectives, &config.train)?;
    Ok(dmlp_train::fit(&mut trainer, &plan, &train_source, &val_source, &run, options.resume, observer)?)
}

/// A node other than node 0 of a job spanning processes (`cluster.node_rank > 0`): trains its
/// devices' share of every batch beside node 0, which evaluates and writes the run folder. It
/// reads the same data (under its own `data.root`), takes node 0's weights, epochs and resumed
/// state at the start (so it needs neither the pretrained weights nor the run folder) and
/// writes nothing. Returns the epochs trained.
pub fn follow_run(
    config: &RunConfig,
    devices: &[Device],
    cluster: &dmlp_train::ClusterSpec,
    provenance: &Provenance,
    observer: &mut dyn FitObserver,
) -> Result<Vec<usize>, ExperimentError> {
    if cluster.node_rank == 0 {
        return Err(ExperimentError::Config {
            path: config.data.root.clone(),
            message: "node 0 leads the job: run it with train_run".into(),
        });
    }
    if devices.is_empty() {
        return Err(ExperimentError::Config {
            path: config.data.root.clone(),
            message: "no device to train on".into(),
        });
    }
    let (train_split, _) = read_splits(config)?;
    check_metadata_coverage(config, &train_split)?;
    let job = parallel::job_description(config, &train_split, provenance);
    let mut train_source = LoaderSource::train(Arc::new(train_split), config, Device::Cpu)?;
    let models = devices
        .iter()
        .map(|device| Classifier::new(&config.model, config.train.seed, device))
        .collect::<Result<Vec<_>, _>>()?;
    let (collectives, note) = parallel::cluster_collectives(devices, cluster, &job)?;
    observer.note(&format!("data parallel: {note}"));
    observer.note(&parallel::decode_own_rows(&mut train_source, &config.train, &collectives));
    let mut trainer = DataParallelTrainer::new(models.iter().collect(), collectives, &config.train)?;
    let plan = FitPlan {
        epochs: config.train.epochs,
        schedule: config.train.schedule(),
        best_by: BestBy::ValTop1,
        stop_after: None,
        sync_every: devices.first().map_or(1, |device| config.train.sync_every_on(device)),
    };
    Ok(dmlp_train::follow(&mut trainer, &plan, &train_source, observer)?)
}

/// Keys whose value may change between a run and its resumption without changing what it computes.
const NEUTRAL_KEYS: [&str; 5] =
    ["data.workers", "data.cache_dir", "train.eval_batch_size", "train.sync_every", "model.pretrained"];

/// The differences between `config` and the run folder's `config.toml`, key by key
/// (`train.lr: 0.04 → 0.1`), neutral keys aside. A folder without one compares as unchanged.
fn config_changes(config: &RunConfig, run_dir: &Path) -> Result<Vec<String>, ExperimentError> {
    let path = run_dir.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let err = |message: String| ExperimentError::Config { path: path.clone(), message };
    // Through RunConfig, so keys a later version added compare at their defaults.
    let mut saved: RunConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    // Runs written before roots were made absolute saved one relative to the directory training
    // ran in: read it from there, as that run did.
    if saved.data.root.is_relative()
        && let Ok(root) = std::path::absolute(&saved.data.root)
    {
        saved.data.root = root;
    }
    // One folder named two ways (`a/../b`, a symbolic link) is no change.
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&saved.data.root), std::fs::canonicalize(&config.data.root))
        && a == b
    {
        saved.data.root.clone_from(&config.data.root);
    }
    let saved = toml::Table::try_from(&saved).map_err(|e| err(e.to_string()))?;
    let current = toml::Table::try_from(config).map_err(|e| err(e.to_string()))?;
    let (mut saved_keys, mut current_keys) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &saved, &mut saved_keys);
    flatten("", &current, &mut current_keys);
    let keys: std::collections::BTreeSet<&String> = saved_keys.keys().chain(current_keys.keys()).collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
    Ok(keys
        .into_iter()
        .filter(|key| !NEUTRAL_KEYS.contains(&key.as_str()) && saved_keys.get(*key) != current_keys.get(*key))
        .map(|key| format!("{key}: {} → {}", show(saved_keys.get(key)), show(current_keys.get(key))))
        .collect())
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, out),
            other => {
                out.insert(name, other.to_string());
            }
        }
    }
}

/// Counts the training records that lack a field the model's metadata uses (their encoded
/// location is all zeros). More than half is an error unless `data.allow_missing_metadata`: a
/// "Dynamic MLP" trained on zeros is an image-only model under another name (a location file
/// read without its dates would do it silently).
fn check_metadata_coverage(config: &RunConfig, split: &dmlp_datasets::Split) -> Result<usize, ExperimentError> {
    let Some(metadata) = config.model.metadata else { return Ok(0) };
    let missing = split.records.iter().filter(|r| !r.observation.is_complete_for(metadata)).count();
    let total = split.records.len();
    if total > 0 && missing * 2 > total && !config.data.allow_missing_metadata {
        let fields = match metadata {
            dmlp_geo::Metadata::GeoTemporal => "a location or a date",
            dmlp_geo::Metadata::Geo => "a location",
            dmlp_geo::Metadata::Temporal => "a date",
        };
        return Err(ExperimentError::Config {
            path: config.data.root.clone(),
            message: format!(
                "{missing} of {total} records of split {:?} lack {fields}, so metadata = {metadata} would see all-zero \
                 vectors for them and train as an image-only model; check the annotation files with `dmlp data verify`, \
                 or set data.allow_missing_metadata = true to train anyway",
                config.data.train_split
            ),
        });
    }
    Ok(missing)
}

/// Evaluates the model weights in `weights` on the config's validation split (with its test-time
/// views): accuracy (top-1, top-5, per class, loss) and, with `top_k > 0`, each image's `top_k`
/// likeliest classes.
pub fn evaluate_checkpoint(
    config: &RunConfig,
    weights: &Path,
    device: &Device,
    top_k: usize,
) -> Result<(Evaluation, dmlp_datasets::Split), ExperimentError> {
    evaluate_checkpoint_on(config, weights, std::slice::from_ref(device), top_k)
}

/// [`evaluate_checkpoint`] on several devices: one copy of the model per device, each batch's
/// images split across them (`dmlp eval --devices cuda:0,cuda:1`); the batches are read and
/// their metrics computed on the first.
pub fn evaluate_checkpoint_on(
    config: &RunConfig,
    weights: &Path,
    devices: &[Device],
    top_k: usize,
) -> Result<(Evaluation, dmlp_datasets::Split), ExperimentError> {
    let Some(first) = devices.first() else {
        return Err(ExperimentError::Config { path: weights.to_owned(), message: "no device to evaluate on".into() });
    };
    parallel::check_distinct_gpus(devices)?;
    let (_, val_split) = read_splits(config)?;
    let file = dmlp_model::WeightsFile::read(weights)?;
    let models = devices
        .iter()
        .map(|device| {
            let model = Classifier::new_zeroed(&config.model, device)?;
            file.load_into(model.store(), dmlp_model::LoadPolicy::STRICT)?;
            Ok(model)
        })
        .collect::<Result<Vec<_>, ExperimentError>>()?;
    let val_split = Arc::new(val_split);
    let val_source = LoaderSource::eval(val_split.clone(), config, first.clone())?;
    let models: Vec<&Classifier> = models.iter().collect();
    let evaluation = dmlp_train::evaluate_sharded(&models, &val_source, config.train.label_smoothing, top_k)?;
    Ok((evaluation, Arc::unwrap_or_clone(val_split)))
}

/// Writes `evaluation`'s predictions for the images of `split` to `path` (`.csv` or `.parquet`):
/// the image id and file (relative to the dataset root where it lies under it), the label, and the
/// top-k classes by name with their probabilities.
pub fn write_split_predictions(
    path: &Path,
    evaluation: &Evaluation,
    split: &dmlp_datasets::Split,
    root: &Path,
) -> Result<(), ExperimentError> {
    let files: Vec<String> = evaluation
        .predictions
        .iter()
        .map(|p| {
            let record = split.records.get(p.row).ok_or_else(|| ExperimentError::Config {
                path: path.to_owned(),
                message: format!("prediction for row {} of a split of {} images", p.row, split.records.len()),
            })?;
            Ok(record.path.strip_prefix(root).unwrap_or(&record.path).display().to_string())
        })
        .collect::<Result<_, ExperimentError>>()?;
    let records: Vec<PredictionRecord<'_>> = evaluation
        .predictions
        .iter()
        .zip(&files)
        .map(|(p, file)| PredictionRecord { image_id: split.records[p.row].image_id, file, prediction: p })
        .collect();
    let names: Vec<String> = split.classes.iter().map(|c| c.name.clone()).collect();
    dmlp_eval::write_predictions(path, &records, &names)?;
    Ok(())
}
