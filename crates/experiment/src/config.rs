//! The run config file.

use std::path::{Path, PathBuf};

use dmlp_datasets::{DatasetName, SplitScheme};
use dmlp_model::ModelConfig;
use dmlp_train::TrainConfig;
use dmlp_vision::Interpolation;
use serde::{Deserialize, Serialize};

use crate::ExperimentError;

/// `[model]`, `[data]`, `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

/// Where the images are and how to batch them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Which dataset's files `root` holds: `inat2017`, `inat2018`, `inat2021` (the synthetic data
    /// is written in its layout), `inat2021-mini` or `yfcc-geo100`.
    #[serde(default = "DataConfig::default_dataset")]
    pub dataset: DatasetName,
    /// `official` (the files' own splits) or `supplement` (YFCC only: the supplement's 2,000-image
    /// val split).
    #[serde(default)]
    pub split_scheme: SplitScheme,
    /// The dataset folder (relative paths resolve against the config file's folder).
    pub root: PathBuf,
    #[serde(default = "DataConfig::default_train_split")]
    pub train_split: String,
    #[serde(default = "DataConfig::default_val_split")]
    pub val_split: String,
    /// Training crop and evaluation crop side (224 in the paper).
    pub image_size: u32,
    /// Evaluation resize of the shorter side (default `round(image_size · 256 / 224)`); with one
    /// test scale only.
    #[serde(default)]
    pub eval_resize: Option<u32>,
    /// Test-time crop sides (default: `[image_size]`). Several make a multi-scale test (Table S1):
    /// each scale `s` resizes the shorter side to `round(s · 256 / 224)` and crops `s`; the logits
    /// are averaged over every crop and scale.
    #[serde(default)]
    pub test_scales: Option<Vec<u32>>,
    /// Ten-crop at every test scale (the reference's `--tencrop`): corners, centre and mirrors.
    #[serde(default)]
    pub ten_crop: bool,
    /// The resize filter of training and evaluation views: `"bilinear"` (torchvision's default,
    /// the reference's) or `"bicubic"` (timm's transformer recipes, DeiT's and PVT's).
    #[serde(default, skip_serializing_if = "is_default")]
    pub interpolation: Interpolation,
    /// timm's RandAugment string for training views (`"rand-m9-mstd0.5-inc1"`, DeiT's and PVT's
    /// "augmentation"; see `dmlp_vision::augment`). Off when absent (the reference's recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rand_augment: Option<String>,
    /// Random erasing's probability per training image (0.25 in DeiT's recipe; timm's pixel mode:
    /// one box of 2–33 % of the image filled with N(0, 1) noise after normalisation). 0 = off.
    #[serde(default, skip_serializing_if = "is_default")]
    pub random_erasing: f64,
    /// Loader threads.
    #[serde(default = "DataConfig::default_workers")]
    pub workers: usize,
    /// Where `dmlp data prepare` keeps Parquet manifests: a split is read from its manifest when
    /// one matches the annotation files, else from the files. `dmlp` fills in its default
    /// (`$DMLP_CACHE_DIR`, else `$XDG_CACHE_HOME/dmlp`, else `~/.cache/dmlp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Train even when most training records lack a field the model's metadata uses (their
    /// location vectors are all zeros). Off: such a run stops before training, naming the count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_missing_metadata: bool,
    /// `"error"` (the default): an image that cannot be read or decoded stops the run, naming
    /// it. `"skip"`: training replaces it in its batch with the batch's next good image (the same
    /// way every run, so a resume stays exact), evaluation leaves it out; each epoch's count goes
    /// to the metrics and the files to the run folder's `bad_images.txt`.
    #[serde(default, skip_serializing_if = "BadImagesPolicy::is_error")]
    pub bad_images: BadImagesPolicy,
}

/// What a run does with an image it cannot read or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadImagesPolicy {
    #[default]
    Error,
    Skip,
}

impl BadImagesPolicy {
    fn is_error(&self) -> bool {
        *self == BadImagesPolicy::Error
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl DataConfig {
    /// The training transform: the crop and flip, then the configured augmentations.
    pub fn train_transform(&self) -> Result<dmlp_vision::Transform, String> {
        let rand_augment = self
            .rand_augment
            .as_deref()
            .map(dmlp_vision::RandAugment::parse)
            .transpose()
            .map_err(|e| format!("data.{e}"))?
            // timm hands the transform's interpolation to RandAugment's geometric ops.
            .map(|ra| dmlp_vision::RandAugment { interpolation: self.interpolation, ..ra });
        let random_erasing =
            (self.random_erasing > 0.0).then_some(dmlp_vision::RandomErasing { probability: self.random_erasing });
        let augment = dmlp_vision::Augment { rand_augment, random_erasing };
        Ok(dmlp_vision::Transform::Train { size: self.image_size, augment })
    }

    /// The evaluation transforms: one per test scale, each a centre crop or a ten-crop.
    pub fn eval_transforms(&self) -> Vec<dmlp_vision::Transform> {
        use dmlp_vision::transform::{Transform, eval_resize_for};
        let scales = self.test_scales.clone().unwrap_or_else(|| vec![self.image_size]);
        let single = scales.len() == 1;
        scales
            .into_iter()
            .map(|size| {
                let resize = if single {
                    self.eval_resize.unwrap_or_else(|| eval_resize_for(size))
                } else {
                    eval_resize_for(size)
                };
                if self.ten_crop { Transform::TenCrop { size, resize } } else { Transform::Eval { size, resize } }
            })
            .collect()
    }

    fn default_dataset() -> DatasetName {
        DatasetName::Inat2021
    }

    fn default_train_split() -> String {
        "train".into()
    }

    fn default_val_split() -> String {
        "val".into()
    }

    fn default_workers() -> usize {
        2
    }
}

/// Sets `table.key = value` (`value` read as a TOML value, else as a string) in `doc`.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (path, value) =
        assignment.split_once('=').ok_or_else(|| format!("--set {assignment:?}: expected key=value"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = keys.split_last().ok_or_else(|| format!("--set {assignment:?}: empty key"))?;
    let mut table = doc;
    for key in parents {
        let entry = table.entry((*key).to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("--set {assignment:?}: {key} is not a table"))?;
    }
    table.insert((*last).to_owned(), parsed);
    Ok(())
}

impl RunConfig {
    /// Reads a config file, applies `overrides` (`table.key=value`), resolves relative paths
    /// (`data.root`, a `model.pretrained` file) against the file's folder, and validates.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let err = |message: String| ExperimentError::Config { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        for assignment in overrides {
            apply_override(&mut doc, assignment).map_err(err)?;
        }
        let mut config: RunConfig =
            toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| err(e.to_string()))?;
        // Absolute, so that the run folder's config.toml names the same folders wherever it is
        // read from (`dmlp predict`, `dmlp figure`, a resume from another directory).
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned());
        if config.data.root.is_relative() {
            config.data.root = base.join(&config.data.root);
        }
        if let Some(source) = &config.model.pretrained
            && let Ok(dmlp_pretrained::WeightsSource::File(file)) = dmlp_pretrained::WeightsSource::parse(source)
            && file.is_relative()
        {
            config.model.pretrained = Some(base.join(file).to_string_lossy().into_owned());
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.model.validate().map_err(|e| e.to_string())?;
        if let Some(source) = &self.model.pretrained {
            dmlp_pretrained::WeightsSource::parse(source).map_err(|e| e.to_string())?;
        }
        self.train.validate()?;
        self.data.dataset.check_scheme(self.data.split_scheme).map_err(|e| e.to_string())?;
        // Sides up to 4096 (Table S1 tests at 384); a side near u32::MAX once overflowed a product.
        const MAX_SIDE: u32 = 4096;
        if !(8..=MAX_SIDE).contains(&self.data.image_size) || self.data.workers == 0 || self.data.workers > 1024 {
            return Err(format!(
                "data.image_size must be between 8 and {MAX_SIDE} and data.workers between 1 and 1024; got {} and {}",
                self.data.image_size, self.data.workers
            ));
        }
        if self.data.eval_resize.is_some_and(|r| !(8..=MAX_SIDE).contains(&r)) {
            return Err(format!("data.eval_resize must be between 8 and {MAX_SIDE}, got {:?}", self.data.eval_resize));
        }
        if let Some(scales) = &self.data.test_scales {
            if scales.is_empty() || scales.len() > 16 || scales.iter().any(|&s| !(8..=MAX_SIDE).contains(&s)) {
                return Err(format!(
                    "data.test_scales must list 1 to 16 crop sides between 8 and {MAX_SIDE}, got {scales:?}"
                ));
            }
            if scales.len() > 1 && self.data.eval_resize.is_some() {
                return Err("data.eval_resize applies to a single test scale; drop it or list one scale".into());
            }
        }
        if !(0.0..=1.0).contains(&self.data.random_erasing) {
            return Err(format!("data.random_erasing is a probability, got {}", self.data.random_erasing));
        }
        self.data.train_transform()?;
        if self.model.backbone.is_none() {
            return Err("training from images needs a [model] backbone".into());
        }
        Ok(())
    }
}
