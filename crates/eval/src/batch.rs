//! What training and evaluation consume: batches of tensors, from any source.

use candle_core::Tensor;

use crate::EvalError;

/// One batch on the model's device.
#[derive(Debug, Clone)]
pub struct TensorBatch {
    /// The images, one entry per view: a training batch has one view of one crop; a test-time
    /// augmented evaluation batch has one view per scale, each of one or ten crops per image.
    pub views: Vec<ImageView>,
    /// `[B, cin]` encoded locations, for models that read them.
    pub loc: Option<Tensor>,
    /// `[B]` class indices (u32).
    pub targets: Tensor,
    /// The source's row of each image (for prediction files); empty when the source does not say.
    pub rows: Vec<usize>,
}

/// The images of one view of a batch.
#[derive(Debug, Clone)]
pub struct ImageView {
    /// `[B · crops, 3, H, W]`; the crops of one image are consecutive.
    pub images: Tensor,
    pub crops: usize,
}

impl TensorBatch {
    /// A batch of one view of one crop per image (`images: [B, 3, H, W]`).
    pub fn single(images: Tensor, loc: Option<Tensor>, targets: Tensor) -> Self {
        Self { views: vec![ImageView { images, crops: 1 }], loc, targets, rows: Vec::new() }
    }

    /// The images of a one-view, one-crop batch, as training needs.
    pub fn single_view(&self) -> Result<&Tensor, EvalError> {
        match self.views.as_slice() {
            [view] if view.crops == 1 => Ok(&view.images),
            _ => Err(EvalError::Data("this needs batches of one view of one crop per image".into())),
        }
    }
}

/// A split as epochs of batches. Implementations must give the same batches for the same epoch
/// (an exact resume relies on it).
pub trait BatchSource {
    /// Batches in one epoch.
    fn batches_per_epoch(&self) -> usize;

    /// Images in one epoch.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of `epoch` (1-based for training; evaluation passes 0).
    fn epoch(&self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<TensorBatch, EvalError>> + '_>, EvalError>;

    /// The files skipped since the last call (unreadable images a `bad_images = "skip"` source
    /// left out or replaced), each once per batch that met it.
    fn take_skipped(&self) -> Vec<SkippedItem> {
        Vec::new()
    }
}

/// Batches already in memory, the same for every epoch: features or scores computed elsewhere,
/// and the tests.
#[derive(Debug, Clone, Default)]
pub struct InMemoryBatches(pub Vec<TensorBatch>);

impl BatchSource for InMemoryBatches {
    fn batches_per_epoch(&self) -> usize {
        self.0.len()
    }

    fn len(&self) -> usize {
        self.0.iter().map(|b| b.targets.dims().first().copied().unwrap_or(0)).sum()
    }

    fn epoch(&self, _: usize) -> Result<Box<dyn Iterator<Item = Result<TensorBatch, EvalError>> + '_>, EvalError> {
        Ok(Box::new(self.0.iter().cloned().map(Ok)))
    }
}

/// A file a source skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SkippedItem {
    pub file: String,
    pub reason: String,
}
