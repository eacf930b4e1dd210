//! What the trainer consumes: batches of tensors, from any source.

use candle_core::Tensor;

use crate::TrainError;

/// One batch on the model's device.
#[derive(Debug, Clone)]
pub struct TensorBatch {
    /// `[B, 3, H, W]`.
    pub images: Tensor,
    /// `[B, cin]` encoded locations, for models with a fusion head.
    pub loc: Option<Tensor>,
    /// `[B]` class indices (u32).
    pub targets: Tensor,
}

/// A split as epochs of batches. Implementations must give the same batches for the same epoch
/// (the trainer's resume relies on it).
pub trait BatchSource {
    /// Batches in one epoch.
    fn batches_per_epoch(&self) -> usize;

    /// Images in one epoch.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of `epoch` (1-based for training; evaluation passes 0).
    fn epoch(&self, epoch: usize)
    -> Result<Box<dyn Iterator<Item = Result<TensorBatch, TrainError>> + '_>, TrainError>;
}
