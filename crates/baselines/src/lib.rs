//! The location baselines of the paper's comparisons, trained and evaluated with the same data,
//! recipe and metrics as Dynamic MLP.
//!
//! - [`priorsnet`]: PriorsNet (Mac Aodha et al., ICCV 2019): FCNet with a sigmoid per class,
//!   trained alone on locations (and dates) with the presence-only "full assume negative" loss,
//!   a class-balanced or instance-balanced sampler and Adam; at test time the image classifier's
//!   softmax is multiplied by the prior, images without a location keep the image model's
//!   prediction.
//! - [`geonet`]: GeoNet's post-processing model (Chu et al., 2019): a small network over a frozen
//!   image-only classifier's logits and the encoded location. **No reference code exists**: this is
//!   the spec's reconstruction (§2.3), configurable.
//! - [`frozen_image_logits`]: the frozen image classifier's logits that both rescale.
//!
//! Both train through `dmlp-train`'s one loop ([`priorsnet::PriorsNetTrainer`] and
//! [`geonet::GeoNetTrainer`] implement its `Trainable`) and are measured through `dmlp-eval`.
//!
//! Both read the location as Dynamic MLP's loader encodes it (`[sin lat', sin lon', sin t, cos
//! lat', cos lon', cos t]`, zero when missing); PriorsNet reorders it to its own layout
//! ([`encoding`]).
//!
//! Architecture invariant: generic over the data (any [`dmlp_train::BatchSource`], location
//! tensors); never names a dataset format. Composes `dmlp-fusion`'s FCNet and `dmlp-model`'s
//! classifier; the experiment crate wires them to configs and loaders.

pub mod encoding;
pub mod geonet;
pub mod priorsnet;

use candle_core::Tensor;
use dmlp_eval::{EvalError, TensorBatch};
use dmlp_model::Classifier;

/// The frozen image classifier's logits `[B, C]` on a batch's one view of one crop (the centre
/// crop): what PriorsNet and GeoNet rescale.
pub fn frozen_image_logits(image: &Classifier, batch: &TensorBatch) -> Result<Tensor, EvalError> {
    let view = batch.views.first().ok_or_else(|| EvalError::Data("a batch without images".into()))?;
    if batch.views.len() != 1 || view.crops != 1 {
        return Err(EvalError::Data("baseline evaluation takes one view of one crop per image".into()));
    }
    Ok(image.forward_t(&view.images, None, false).map_err(EvalError::model)?.logits)
}

/// What can go wrong in a baseline.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("invalid baseline configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Train(#[from] dmlp_train::TrainError),
    #[error(transparent)]
    Eval(#[from] dmlp_eval::EvalError),
    #[error(transparent)]
    Model(#[from] dmlp_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<dmlp_fusion::FusionError> for BaselineError {
    fn from(e: dmlp_fusion::FusionError) -> Self {
        BaselineError::Config(e.to_string())
    }
}
