//! The dataset loader as the trainer's batch source.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use dmlp_backbones::{IMAGENET_MEAN, IMAGENET_STD};
use dmlp_datasets::Split;
use dmlp_datasets::loader::{BadImages, EpochBatches, LoaderConfig, RAW_PIXELS, batches_per_epoch};
use dmlp_eval::{BatchSource, EvalError, ImageView, SkippedItem, TensorBatch};
use dmlp_vision::{Normalization, Transform};

use crate::{ExperimentError, RunConfig};

/// A split, batched by worker threads, turned into tensors on `device`.
pub struct LoaderSource {
    split: Arc<Split>,
    config: LoaderConfig,
    device: Device,
    /// Files the batches skipped since the last `take_skipped`.
    skipped: Arc<Mutex<Vec<SkippedItem>>>,
    /// With `Some`, the workers write raw pixel values as u8 and the batch crosses to the device
    /// so (a quarter of f32's bytes), normalised there with this ([`LoaderSource::pixels_as_u8`]).
    device_normalization: Option<Normalization>,
    /// Sends the u8 pixels through page-locked buffers on CUDA.
    uploader: Arc<dmlp_nn::Uploader>,
}

/// Normalises u8 pixels on their device as the loader's table does on the host:
/// `v · 1/(255·std) − mean/std` in f32, per channel (the same operations in the same order, so the
/// values are the same).
///
/// # Shapes
/// `pixels: [N, 3, H, W]` (u8) → `[N, 3, H, W]` (f32).
fn normalise_on_device(pixels: &Tensor, norm: &Normalization) -> candle_core::Result<Tensor> {
    let scale: Vec<f32> = (0..3).map(|c| 1.0 / (255.0 * norm.std[c])).collect();
    let offset: Vec<f32> = (0..3).map(|c| norm.mean[c] / norm.std[c]).collect();
    let device = pixels.device();
    let scale = Tensor::from_vec(scale, (1, 3, 1, 1), device)?;
    let offset = Tensor::from_vec(offset, (1, 3, 1, 1), device)?;
    pixels.to_dtype(candle_core::DType::F32)?.broadcast_mul(&scale)?.broadcast_sub(&offset)
}

impl LoaderSource {
    /// A source over `split`; on a GPU the images cross as u8 unless a view writes values that
    /// are not pixels (random erasing's noise).
    fn with(split: Arc<Split>, config: LoaderConfig, device: Device) -> Self {
        let uploader = Arc::new(dmlp_nn::Uploader::new(&device));
        let mut source = Self { split, config, device, skipped: Arc::default(), device_normalization: None, uploader };
        if !source.device.is_cpu() {
            source.set_pixels_as_u8(true);
        }
        source
    }

    /// Sends the images to the device as u8 pixels and normalises them there (the default on a
    /// GPU; on the CPU the workers' normalised floats are already where the model reads them).
    /// Views with random erasing stay f32: its noise is written after normalisation.
    pub fn set_pixels_as_u8(&mut self, on: bool) {
        let erasing = self
            .config
            .transforms
            .iter()
            .any(|t| matches!(t, Transform::Train { augment, .. } if augment.random_erasing.is_some()));
        match (on && !erasing, self.device_normalization) {
            (true, None) => {
                self.device_normalization = Some(self.config.normalization);
                self.config.normalization = RAW_PIXELS;
                self.config.u8_pixels = true;
            }
            (false, Some(norm)) => {
                self.config.normalization = norm;
                self.config.u8_pixels = false;
                self.device_normalization = None;
            }
            _ => {}
        }
    }

    /// Decodes only the rows `filter` flags in each batch (the others stay zero): a node of a
    /// multi-node job reads the rows its devices train on. `false` (and nothing changes) when
    /// bad images are skipped, since a skipped image moves rows.
    pub fn set_row_filter(&mut self, filter: dmlp_datasets::loader::RowFilter) -> bool {
        if self.config.bad_images != BadImages::Error {
            return false;
        }
        self.config.rows = Some(filter);
        true
    }

    /// The side of the training view's images (0 for a source without a single-size view).
    pub fn view_size(&self) -> usize {
        self.config.transforms.first().map_or(0, |t| t.size() as usize)
    }

    /// Whether the images cross to the device as u8.
    pub fn pixels_as_u8(&self) -> bool {
        self.device_normalization.is_some()
    }

    /// The training loader: RandomResizedCrop + flip, shuffled per epoch, last partial batch kept
    /// (as the reference's `drop_last=False`) unless it would hold a single image.
    pub fn train(split: Arc<Split>, run: &RunConfig, device: Device) -> Result<Self, ExperimentError> {
        // Training keeps its batch size (BatchNorm, the schedule): a skipped image's row takes
        // the batch's next good sample.
        let transform =
            run.data.train_transform().map_err(|message| ExperimentError::Config { path: "[data]".into(), message })?;
        let transforms = vec![transform];
        let mut config = Self::config(run, transforms, run.train.batch_size, true, BadImages::Replace);
        config.drop_last = Self::drops_last_image(split.records.len(), run.train.batch_size);
        Ok(Self::with(split, config, device))
    }

    /// Whether a training split of `n` images ends with a batch of one image, which training
    /// leaves out: BatchNorm cannot normalise one value per channel (SK-Res2Net's attention pools
    /// to 1×1), and one image is no batch.
    pub fn drops_last_image(n: usize, batch_size: usize) -> bool {
        batch_size > 1 && n % batch_size == 1
    }

    /// The evaluation loader: resize + centre crop (or ten-crop) at each test scale, in file order.
    pub fn eval(split: Arc<Split>, run: &RunConfig, device: Device) -> Result<Self, ExperimentError> {
        let config =
            Self::config(run, run.data.eval_transforms(), run.train.eval_batch_size(), false, BadImages::LeaveOut);
        Ok(Self::with(split, config, device))
    }

    /// A loader for the baselines over a frozen image model: the centre crop (no augmentation),
    /// the locations encoded for `metadata`, shuffled per epoch when `shuffle`.
    pub fn frozen_image(
        split: Arc<Split>,
        run: &RunConfig,
        metadata: dmlp_geo::Metadata,
        shuffle: bool,
        batch_size: usize,
        device: Device,
    ) -> Self {
        let transforms = vec![Transform::eval_for(run.data.image_size)];
        let mut config = Self::config(run, transforms, batch_size, shuffle, BadImages::LeaveOut);
        config.metadata = Some(metadata);
        Self::with(split, config, device)
    }

    /// The loader config; `skip` is what a bad image does under `bad_images = "skip"` (outside
    /// training it is left out, so that none counts twice).
    fn config(
        run: &RunConfig,
        transforms: Vec<Transform>,
        batch_size: usize,
        shuffle: bool,
        skip: BadImages,
    ) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            transforms,
            normalization: Normalization { mean: IMAGENET_MEAN, std: IMAGENET_STD },
            interpolation: run.data.interpolation,
            metadata: run.model.fusion.as_ref().and(run.model.metadata),
            shuffle,
            drop_last: false,
            workers: run.data.workers,
            prefetch: 2,
            seed: run.train.seed,
            bad_images: match run.data.bad_images {
                crate::config::BadImagesPolicy::Error => BadImages::Error,
                crate::config::BadImagesPolicy::Skip => skip,
            },
            rows: None,
            u8_pixels: false,
        }
    }
}

impl BatchSource for LoaderSource {
    fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.split.records.len(), &self.config)
    }

    fn len(&self) -> usize {
        self.split.records.len()
    }

    fn epoch(&self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<TensorBatch, EvalError>> + '_>, EvalError> {
        let batches = EpochBatches::new(self.split.clone(), self.config.clone(), epoch)
            .map_err(|e| EvalError::Data(e.to_string()))?;
        let device = self.device.clone();
        let device_normalization = self.device_normalization;
        let uploader = self.uploader.clone();
        let cin = self.config.metadata.map_or(0, dmlp_geo::Metadata::n_inputs);
        let skipped = self.skipped.clone();
        Ok(Box::new(batches.map(move |batch| {
            let batch = batch.map_err(|e| EvalError::Data(e.to_string()))?;
            if !batch.skipped.is_empty() {
                let mut list = skipped.lock().unwrap_or_else(|p| p.into_inner());
                list.extend(
                    batch
                        .skipped
                        .iter()
                        .map(|s| SkippedItem { file: s.path.display().to_string(), reason: s.reason.clone() }),
                );
            }
            let views = batch
                .views
                .into_iter()
                .map(|v| {
                    let shape = (batch.len * v.crops, 3, v.size, v.size);
                    let images = match &device_normalization {
                        // The workers wrote u8 pixels (`LoaderConfig::u8_pixels`).
                        Some(norm) => normalise_on_device(&uploader.u8(v.pixels, shape)?, norm)?,
                        None => Tensor::from_vec(v.images, shape, &device)?,
                    };
                    Ok(ImageView { images, crops: v.crops })
                })
                .collect::<Result<Vec<_>, EvalError>>()?;
            let loc = if cin > 0 { Some(Tensor::from_vec(batch.loc, (batch.len, cin), &device)?) } else { None };
            let targets = Tensor::from_vec(batch.targets, batch.len, &device)?;
            Ok(TensorBatch { views, loc, targets, rows: batch.records })
        })))
    }

    fn take_skipped(&self) -> Vec<SkippedItem> {
        std::mem::take(&mut *self.skipped.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
