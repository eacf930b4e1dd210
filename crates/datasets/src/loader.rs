//! Batches prepared on worker threads ahead of the consumer.
//!
//! Batch `k` of an epoch is built by worker `k mod workers`; each sample's augmentation draws from
//! a stream seeded by `(seed, epoch, position in the epoch)` and the epoch's order from
//! `(seed, epoch)`, so the batches are the same whatever the number of workers. Each worker keeps
//! at most `prefetch` finished batches, so memory stays bounded.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use dmlp_geo::Metadata;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{DatasetError, Split};
use dmlp_vision::{Normalization, Renderer, Transform, read_bytes};

/// How to batch a split.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// The views of each image: one for training; for evaluation one per test scale (each a
    /// centre crop or a ten-crop).
    pub transforms: Vec<Transform>,
    pub normalization: Normalization,
    /// Which metadata to encode into `Batch::loc` (none for image-only models).
    pub metadata: Option<Metadata>,
    pub shuffle: bool,
    pub drop_last: bool,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
}

/// One view of every image of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewBuffer {
    /// `[len · crops, 3, size, size]`, normalised; the crops of one image are consecutive.
    pub images: Vec<f32>,
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
                size: t.size() as usize,
                crops: t.crops(),
            })
            .collect(),
        loc: vec![0.0; indices.len() * cin],
        targets: Vec::with_capacity(indices.len()),
        records: indices.to_vec(),
        len: indices.len(),
    };
    for (row, &idx) in indices.iter().enumerate() {
        let record = &split.records[idx];
        let bytes = read_bytes(&record.path)?;
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
        renderer.render(&bytes, &record.path, &config.transforms, &config.normalization, &mut rng, &mut slots)?;
        if let Some(metadata) = config.metadata {
            record.observation.encode_into(metadata, &mut batch.loc[row * cin..(row + 1) * cin]);
        }
        batch.targets.push(record.label);
    }
    Ok(batch)
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
        let order = Arc::new(epoch_order(split.records.len(), &config, epoch));
        let total = batches_per_epoch(order.len(), &config);
        let n_workers = config.workers.min(total.max(1));
        let mut receivers = Vec::with_capacity(n_workers);
        let mut workers = Vec::with_capacity(n_workers);
        for worker in 0..n_workers {
            let (sender, receiver): (SyncSender<_>, _) = sync_channel(config.prefetch.max(1));
            let (split, order, config) = (split.clone(), order.clone(), config.clone());
            workers.push(std::thread::spawn(move || {
                let mut renderer = Renderer::new();
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
