//! Datasets: records, readers, the synthetic generator, verification and the loader.
//!
//! - [`Split`]: one split's records (image path, label, location and date) and its class list.
//! - [`read_split`]: the readers of iNaturalist 2017, 2018, 2021 (full and mini) and
//!   YFCC100M-GEO100 as distributed ([`readers`] has the table of files and of what happens to
//!   bad input), joined by id, never by position.
//! - [`manifest`]: the data manifests of `data-manifests/` (sources, checksums, official counts);
//!   [`verify`]: a dataset folder against its annotation files and those counts.
//! - [`synth`]: a deterministic, geo-aware synthetic dataset written in that same layout (JPEG
//!   files and JSON), so that tests and smoke runs exercise the real reading path.
//! - [`loader`]: batches prepared on worker threads ahead of the consumer (each image through
//!   `dmlp-vision`'s decoding and transforms), deterministic per seed whatever the number of
//!   workers.
//!
//! Architecture invariant: no models, no trainer, no tensor library; the pixels are
//! `dmlp-vision`'s business, the records this crate's; errors name the file and the record.

pub mod loader;
pub mod manifest;
pub mod readers;
pub mod synth;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;

use dmlp_geo::Observation;
pub use readers::{DatasetName, SplitScheme, read_split};

/// One image with its label and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The image id in the source annotation file (YFCC, which has none: the CSV line).
    pub image_id: u64,
    /// The image file (the annotation's `file_name` joined to the dataset root).
    pub path: PathBuf,
    /// Index into the split's class list.
    pub label: u32,
    pub observation: Observation,
}

/// A class: its id in the source file, name and supercategory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub source_id: u64,
    pub name: String,
    pub supercategory: Option<String>,
}

/// One split of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub name: String,
    pub records: Vec<Record>,
    /// Labels index this list (classes sorted by their source id).
    pub classes: Vec<ClassInfo>,
    /// What the reader set aside or noticed on purpose, counted by description (location records
    /// of other images, records marked invalid, …); empty when nothing was.
    pub notes: BTreeMap<String, usize>,
}

impl Split {
    /// Fails naming the first few image files that do not exist, and how many are missing, so a
    /// run stops before its first step instead of hours into an epoch.
    pub fn check_images_exist(&self) -> Result<(), DatasetError> {
        let missing: Vec<&std::path::Path> =
            self.records.iter().map(|r| r.path.as_path()).filter(|p| !p.is_file()).collect();
        let Some(first) = missing.first() else { return Ok(()) };
        let shown: Vec<String> = missing.iter().take(5).map(|p| p.display().to_string()).collect();
        Err(DatasetError::Io {
            path: first.to_path_buf(),
            message: format!(
                "{} of the {} images of split {:?} are missing (first: {}); `dmlp data verify` lists them all",
                missing.len(),
                self.records.len(),
                self.name,
                shown.join(", ")
            ),
        })
    }
}

/// What can be wrong with a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: malformed JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Csv { path: PathBuf, line: u64, message: String },
    #[error("{path}: {what} #{index}: {message}")]
    Record { path: PathBuf, what: &'static str, index: usize, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<dmlp_vision::VisionError> for DatasetError {
    /// An image's error as the dataset reports it: the same file, the same message.
    fn from(err: dmlp_vision::VisionError) -> Self {
        use dmlp_vision::VisionError;
        match err {
            VisionError::Io { path, message } => DatasetError::Io { path, message },
            VisionError::Image { path, message } => DatasetError::Image { path, message },
            VisionError::Config(message) => DatasetError::Config(message),
        }
    }
}
