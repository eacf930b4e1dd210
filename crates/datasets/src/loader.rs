//! Batches prepared on worker threads ahead of the consumer.
//!
//! Batch `k` of an epoch is built by worker `k mod workers`; each sample's augmentation draws from
//! a stream seeded by `(seed, epoch, position in the epoch)` and the epoch's order from
//! `(seed, epoch)`, so the batches are the same whatever the number of workers. Each worker keeps
//! at most `prefetch` finished batches, so memory stays bounded.
//!
//! A file that cannot be read or decoded stops the epoch with an error naming it, unless the
//! config says [`BadImages::Replace`] (training: the batch keeps its size, the bad row taking the
//! next good row's image, location and label, so the batch is the same on every run and a resume
//! stays exact) or [`BadImages::LeaveOut`] (evaluation: the batch shrinks, so no image counts
//! twice). Either way the batch names every file it skipped and why ([`Batch::skipped`]).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use dmlp_geo::Metadata;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{DatasetError, Split};
use dmlp_vision::{Interpolation, Normalization, Renderer, Transform, read_bytes};

/// How to batch a split.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// The views of each image: one for training; for evaluation one per test scale (each a
    /// centre crop or a ten-crop).
    pub transforms: Vec<Transform>,
    pub normalization: Normalization,
    /// The resize filter of every view.
    pub interpolation: Interpolation,
    /// Which metadata to encode into `Batch::loc` (none for image-only models).
    pub metadata: Option<Metadata>,
    pub shuffle: bool,
    pub drop_last: bool,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    /// What a file that cannot be read or decoded does.
    pub bad_images: BadImages,
    /// With `Some`, only the rows it flags are read and decoded; the others stay zero (label 0,
    /// no location). Needs `bad_images = Error`: a skipped image would change which rows other
    /// readers of the same batches decode.
    pub rows: Option<RowFilter>,
    /// The workers hand each view over as u8 pixel values ([`ViewBuffer::pixels`]) instead of
    /// floats: a quarter of the bytes for a device to receive, converted on the workers' threads
    /// rather than the consumer's (64 × 224² images are 9.6 M values a batch). Needs
    /// `normalization` = [`RAW_PIXELS`], whose values are whole numbers in 0–255.
    pub u8_pixels: bool,
}

/// The normalisation that writes each pixel's value (0–255) unchanged: `v · 1/(255·std) −
/// mean/std` with `std = 1/255` (`255 · std` rounds to exactly 1 in f32) and `mean = 0`. A
/// device normalises such values itself (the GPU default: `LoaderConfig::u8_pixels`).
pub const RAW_PIXELS: Normalization = Normalization { mean: [0.0; 3], std: [1.0 / 255.0; 3] };

/// Which rows of each batch to decode: `(epoch, batch index in the epoch, batch length)` → one
/// flag per row. A node of a multi-node job decodes the rows its devices read.
#[derive(Clone)]
pub struct RowFilter(pub Arc<dyn Fn(usize, usize, usize) -> Vec<bool> + Send + Sync>);

impl std::fmt::Debug for RowFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowFilter")
    }
}

impl PartialEq for RowFilter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a batch does with a file that cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadImages {
    /// The epoch stops with an error naming the file (the default).
    #[default]
    Error,
    /// The file's row takes the next good row's sample (cyclically in the batch).
    Replace,
    /// The file's row is left out of the batch.
    LeaveOut,
}

/// A file a batch skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SkippedImage {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// One view of every image of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewBuffer {
    /// `[len · crops, 3, size, size]`, normalised; the crops of one image are consecutive. Empty
    /// with [`LoaderConfig::u8_pixels`].
    pub images: Vec<f32>,
    /// With [`LoaderConfig::u8_pixels`], the same layout as u8 pixel values; otherwise empty.
    pub pixels: Vec<u8>,
    pub size: usize,
    pub crops: usize,
}

/// One batch, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// One buffer per transform of the config, in its order.
    pub views: Vec<ViewBuffer>,
    /// `[len, cin]` encoded locations (empty without metadata).
    pub loc: Vec<f32>,
    pub targets: Vec<u32>,
    /// The split's record index of each image.
    pub records: Vec<usize>,
    pub len: usize,
    /// Files this batch could not read or decode (with `BadImages::Replace` or `LeaveOut`).
    pub skipped: Vec<SkippedImage>,
}

/// Batches per epoch for `n` records.
pub fn batches_per_epoch(n: usize, config: &LoaderConfig) -> usize {
    if config.drop_last { n / config.batch_size.max(1) } else { n.div_ceil(config.batch_size.max(1)) }
}

/// A seed for one purpose, epoch and position: a stable mix (splitmix64) of the parts.
pub fn derive_seed(parts: &[u64]) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for part in parts {
        state ^= part.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(state << 6).wrapping_add(state >> 2);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

const ORDER_STREAM: u64 = 1;
const AUGMENT_STREAM: u64 = 2;

/// The order of the records in `epoch`.
pub fn epoch_order(n: usize, config: &LoaderConfig, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if config.shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(&[config.seed, ORDER_STREAM, epoch as u64])));
    }
    order
}

/// Builds one batch from the records at `indices` (positions `first..` of the epoch).
fn build_batch(
    split: &Split,
    config: &LoaderConfig,
    renderer: &mut Renderer,
    epoch: usize,
    first: usize,
    indices: &[usize],
) -> Result<Batch, DatasetError> {
    let cin = config.metadata.map_or(0, Metadata::n_inputs);
    let mut batch = Batch {
        views: config
            .transforms
            .iter()
            .map(|t| ViewBuffer {
                images: vec![0.0; indices.len() * t.floats_per_image()],
                pixels: Vec::new(),
                size: t.size() as usize,
                crops: t.crops(),
            })
            .collect(),
        loc: vec![0.0; indices.len() * cin],
        targets: vec![0; indices.len()],
        records: indices.to_vec(),
        len: indices.len(),
        skipped: Vec::new(),
    };
    let mut bad_rows = Vec::new();
    let wanted = config.rows.as_ref().map(|filter| (filter.0)(epoch, first / config.batch_size, indices.len()));
    if let Some(wanted) = &wanted
        && wanted.len() != indices.len()
    {
        return Err(DatasetError::Config(format!(
            "a row filter gave {} flags for {} rows",
            wanted.len(),
            indices.len()
        )));
    }
    for (row, &idx) in indices.iter().enumerate() {
        if wanted.as_ref().is_some_and(|w| !w[row]) {
            continue;
        }
        let record = &split.records[idx];
        let mut rng =
            ChaCha8Rng::seed_from_u64(derive_seed(&[config.seed, AUGMENT_STREAM, epoch as u64, (first + row) as u64]));
        let mut slots: Vec<&mut [f32]> = batch
            .views
            .iter_mut()
            .zip(&config.transforms)
            .map(|(view, t)| {
                let n = t.floats_per_image();
                &mut view.images[row * n..(row + 1) * n]
            })
            .collect();
        let rendered = read_bytes(&record.path).and_then(|bytes| {
            renderer.render(&bytes, &record.path, &config.transforms, &config.normalization, &mut rng, &mut slots)
        });
        if let Err(err) = rendered {
            if config.bad_images == BadImages::Error {
                return Err(err.into());
            }
            let reason = DatasetError::from(err).to_string();
            let reason = reason.strip_prefix(&format!("{}: ", record.path.display())).unwrap_or(&reason).to_string();
            batch.skipped.push(SkippedImage { path: record.path.clone(), reason });
            bad_rows.push(row);
            continue;
        }
        if let Some(metadata) = config.metadata {
            record.observation.encode_into(metadata, &mut batch.loc[row * cin..(row + 1) * cin]);
        }
        batch.targets[row] = record.label;
    }
    if !bad_rows.is_empty() {
        mend(&mut batch, config, &bad_rows)?;
    }
    if config.u8_pixels {
        for view in &mut batch.views {
            // Whole numbers in 0–255 under RAW_PIXELS (checked when the epoch starts): exact.
            view.pixels = view.images.iter().map(|&v| v as u8).collect();
            view.images = Vec::new();
        }
    }
    Ok(batch)
}

/// Replaces or removes a batch's bad rows (`bad_rows`, ascending) as the config says.
fn mend(batch: &mut Batch, config: &LoaderConfig, bad_rows: &[usize]) -> Result<(), DatasetError> {
    if bad_rows.len() == batch.len {
        let names: Vec<String> = batch.skipped.iter().map(|s| format!("{}: {}", s.path.display(), s.reason)).collect();
        return Err(DatasetError::Config(format!(
            "every image of a batch failed to decode (bad_images = \"skip\" needs one good image a batch): {}",
            names.join("; ")
        )));
    }
    let cin = batch.loc.len() / batch.len.max(1);
    let per_image: Vec<usize> = config.transforms.iter().map(|t| t.floats_per_image()).collect();
    let good = |row: usize| bad_rows.binary_search(&row).is_err();
    match config.bad_images {
        BadImages::Error => Ok(()),
        BadImages::Replace => {
            for &row in bad_rows {
                let source = (1..batch.len).map(|k| (row + k) % batch.len).find(|&r| good(r)).unwrap_or(row);
                for (view, &n) in batch.views.iter_mut().zip(&per_image) {
                    view.images.copy_within(source * n..(source + 1) * n, row * n);
                }
                batch.loc.copy_within(source * cin..(source + 1) * cin, row * cin);
                batch.targets[row] = batch.targets[source];
                batch.records[row] = batch.records[source];
            }
            Ok(())
        }
        BadImages::LeaveOut => {
            let keep: Vec<usize> = (0..batch.len).filter(|&r| good(r)).collect();
            for (view, &n) in batch.views.iter_mut().zip(&per_image) {
                view.images = keep.iter().flat_map(|&r| view.images[r * n..(r + 1) * n].to_vec()).collect();
            }
            batch.loc = keep.iter().flat_map(|&r| batch.loc[r * cin..(r + 1) * cin].to_vec()).collect();
            batch.targets = keep.iter().map(|&r| batch.targets[r]).collect();
            batch.records = keep.iter().map(|&r| batch.records[r]).collect();
            batch.len = keep.len();
            Ok(())
        }
    }
}

/// The batches of one epoch, in order, built ahead on worker threads.
pub struct EpochBatches {
    receivers: Vec<Receiver<Result<Batch, DatasetError>>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

impl EpochBatches {
    pub fn new(split: Arc<Split>, config: LoaderConfig, epoch: usize) -> Result<Self, DatasetError> {
        if config.batch_size == 0 || config.workers == 0 || config.transforms.is_empty() {
            return Err(DatasetError::Config("batch_size, workers and transforms must be at least 1".into()));
        }
        if config.u8_pixels && config.normalization != RAW_PIXELS {
            return Err(DatasetError::Config(format!(
                "u8 pixels need the raw-pixel normalisation (mean 0, std 1/255), not {:?}",
                config.normalization
            )));
        }
        if config.rows.is_some() && config.bad_images != BadImages::Error {
            return Err(DatasetError::Config(
                "decoding some rows of each batch needs bad_images = error (a skipped image moves rows)".into(),
            ));
        }
        let order = Arc::new(epoch_order(split.records.len(), &config, epoch));
        let total = batches_per_epoch(order.len(), &config);
        let n_workers = config.workers.min(total.max(1));
        let mut receivers = Vec::with_capacity(n_workers);
        let mut workers = Vec::with_capacity(n_workers);
        for worker in 0..n_workers {
            let (sender, receiver): (SyncSender<_>, _) = sync_channel(config.prefetch.max(1));
            let (split, order, config) = (split.clone(), order.clone(), config.clone());
            workers.push(std::thread::spawn(move || {
                let mut renderer = Renderer::with_interpolation(config.interpolation);
                for k in (worker..total).step_by(n_workers) {
                    let first = k * config.batch_size;
                    let last = (first + config.batch_size).min(order.len());
                    let batch = build_batch(&split, &config, &mut renderer, epoch, first, &order[first..last]);
                    // A dropped receiver means the consumer stopped: stop too.
                    if sender.send(batch).is_err() {
                        return;
                    }
                }
            }));
            receivers.push(receiver);
        }
        Ok(Self { receivers, workers, next: 0, total })
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let receiver = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        Some(
            receiver
                .recv()
                .unwrap_or_else(|_| Err(DatasetError::Config("a loader worker stopped unexpectedly".into()))),
        )
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Unblock the workers, then wait for them.
        self.receivers.clear();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
