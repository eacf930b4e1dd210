//! Datasets: records, readers, the synthetic generator, image transforms and the loader.
//!
//! - [`Split`]: one split's records (image path, label, location and date) and its class list.
//! - [`inat2021::read_split`]: the iNaturalist 2021 layout (`train.json`, `val.json`: COCO-style
//!   `images`, `annotations`, `categories`, with `latitude`, `longitude`, `date` per image),
//!   joined by id, never by position.
//! - [`synth`]: a deterministic, geo-aware synthetic dataset written in that same layout (JPEG
//!   files and JSON), so that tests and smoke runs exercise the real reading path.
//! - [`transform`]: decoding to RGB (grayscale, alpha, CMYK handled) and torchvision's
//!   `RandomResizedCrop` + flip and `Resize` + `CenterCrop`, normalised straight into a batch.
//! - [`loader`]: batches prepared on worker threads ahead of the consumer, deterministic per seed
//!   whatever the number of workers.
//!
//! Architecture invariant: no models, no trainer, no tensor library; errors name the file and
//! the record.

pub mod inat2021;
pub mod loader;
pub mod synth;
pub mod transform;

use std::path::PathBuf;

use dmlp_geo::Observation;

/// One image with its label and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The image id in the source annotation file.
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
}

/// What can be wrong with a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: malformed JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {what} #{index}: {message}")]
    Record { path: PathBuf, what: &'static str, index: usize, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}
