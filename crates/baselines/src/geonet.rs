//! GeoNet's post-processing model (Chu et al., "Geo-Aware Networks for Fine-Grained
//! Recognition", 2019): a network over a frozen image-only classifier's outputs and the encoded
//! location.
//!
//! **Reconstruction**: no reference code exists and the paper's layers could not be read (spec
//! §2.2, **UNVERIFIED**); this is the spec's recommended version (§2.3), every part configurable:
//!
//! ```text
//! z = image_logits (frozen)                     [B, C]
//! h = geo_net(loc)                               FCNet (Dynamic MLP's loc_net), 256 wide
//! out = fc([z; h])        (fusion "concat")      Linear(C + 256 → C), starting as [I 0] with a
//!                                                zero bias (our choice), so training starts from
//!                                                the image model's own predictions
//!     = z + fc(h)         (fusion "add")         Linear(256 → C): a learned log-prior
//! ```
//!
//! trained with label-smoothed cross-entropy and SGD (momentum 0.9) at a constant learning rate
//! of 0.02 (the supplement's value, **UNVERIFIED**). Keys: `geo_net.*` (as `loc_net`), `fc.*`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use dmlp_eval::{Accuracy, EvalError, ScoreKind, TensorBatch, evaluate_batches, score_rows, to_u32, top_k_hits};
use dmlp_fusion::{FCNET_HIDDEN, FcNet};
use dmlp_model::{Classifier, LoadPolicy, WeightsFile};
use dmlp_nn::{DropoutRng, Linear, ParamStore, linear};
use dmlp_train::{
    Batches, BestBy, FitObserver, FitPlan, FitSummary, RunDir, Schedule, SeedStream, Sgd, SgdConfig, StepContext,
    StepOutcome, TrainError, Trainable, fit, label_smoothing_loss,
};

use crate::BaselineError;

/// How the location joins the image logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoNetFusion {
    /// `fc([z; h])`.
    #[default]
    Concat,
    /// `z + fc(h)`.
    Add,
}

/// GeoNet's hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoNetConfig {
    #[serde(default)]
    pub fusion: GeoNetFusion,
    #[serde(default = "GeoNetConfig::default_lr")]
    pub lr: f64,
    #[serde(default = "GeoNetConfig::default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "GeoNetConfig::default_epochs")]
    pub epochs: usize,
    #[serde(default = "GeoNetConfig::default_label_smoothing")]
    pub label_smoothing: f64,
    #[serde(default = "GeoNetConfig::default_dropout")]
    pub dropout: f32,
    #[serde(default = "GeoNetConfig::default_seed")]
    pub seed: u64,
}

impl Default for GeoNetConfig {
    fn default() -> Self {
        Self {
            fusion: GeoNetFusion::default(),
            lr: Self::default_lr(),
            momentum: Self::default_momentum(),
            weight_decay: 0.0,
            epochs: Self::default_epochs(),
            label_smoothing: Self::default_label_smoothing(),
            dropout: Self::default_dropout(),
            seed: Self::default_seed(),
        }
    }
}

impl GeoNetConfig {
    fn default_lr() -> f64 {
        0.02
    }
    fn default_momentum() -> f64 {
        0.9
    }
    fn default_epochs() -> usize {
        10
    }
    fn default_label_smoothing() -> f64 {
        0.1
    }
    fn default_dropout() -> f32 {
        0.5
    }
    fn default_seed() -> u64 {
        37
    }

    pub fn validate(&self) -> Result<(), BaselineError> {
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if self.epochs == 0
            || !positive(self.lr)
            || !(0.0..1.0).contains(&self.dropout)
            || !non_negative(self.momentum)
            || !non_negative(self.weight_decay)
            || !(0.0..1.0).contains(&self.label_smoothing)
        {
            return Err(BaselineError::Config(format!(
                "GeoNet needs epochs and lr above 0, dropout and label_smoothing in [0, 1), momentum and weight_decay finite and non-negative: {self:?}"
            )));
        }
        Ok(())
    }
}

/// The post-processing model.
#[derive(Debug, Clone)]
pub struct GeoNet {
    store: ParamStore,
    geo_net: FcNet,
    fc: Linear,
    fusion: GeoNetFusion,
    dropout: DropoutRng,
}

impl GeoNet {
    pub fn new(
        num_classes: usize,
        loc_inputs: usize,
        config: &GeoNetConfig,
        device: &Device,
    ) -> Result<Self, BaselineError> {
        config.validate()?;
        let store = ParamStore::new(SeedStream::GeoNetInit.seed(config.seed, &[]));
        let vb = store.var_builder(DType::F32, device);
        let rng = DropoutRng::new(config.seed);
        let geo_net = FcNet::new(loc_inputs, FCNET_HIDDEN, config.dropout, rng.clone(), vb.pp("geo_net"))?;
        let fc = match config.fusion {
            GeoNetFusion::Concat => {
                let fc = linear(num_classes + FCNET_HIDDEN, num_classes, true, vb.pp("fc"))?;
                // Start as the image model: the z-block of the weight is the identity, the location
                // block and the bias zero (the first step gives the location block a gradient).
                let weight = store.get("fc.weight").ok_or_else(|| BaselineError::Config("no fc.weight".into()))?;
                let eye = Tensor::eye(num_classes, DType::F32, device)?;
                let geo_block = Tensor::zeros((num_classes, FCNET_HIDDEN), DType::F32, device)?;
                weight.set(&Tensor::cat(&[&eye, &geo_block], 1)?)?;
                let bias = store.get("fc.bias").ok_or_else(|| BaselineError::Config("no fc.bias".into()))?;
                bias.set(&bias.as_tensor().zeros_like()?)?;
                fc
            }
            GeoNetFusion::Add => linear(FCNET_HIDDEN, num_classes, true, vb.pp("fc"))?,
        };
        Ok(Self { store, geo_net, fc, fusion: config.fusion, dropout: rng })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// # Shapes
    /// `image_logits: [B, C]`, `loc: [B, cin]` → `[B, C]` logits.
    pub fn forward_t(&self, image_logits: &Tensor, loc: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let z = image_logits.to_dtype(DType::F32)?.detach();
        let h = self.geo_net.forward_t(loc, train)?;
        match self.fusion {
            GeoNetFusion::Concat => self.fc.forward(&Tensor::cat(&[&z, &h], 1)?),
            GeoNetFusion::Add => z + self.fc.forward(&h)?,
        }
    }
}

/// A finite number above zero (NaN is not).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// GeoNet over a frozen image classifier, with its SGD optimiser and recipe, as the training loop
/// sees it.
#[derive(Debug)]
pub struct GeoNetTrainer<'a> {
    model: &'a GeoNet,
    image: &'a Classifier,
    sgd: Sgd,
    config: GeoNetConfig,
}

impl<'a> GeoNetTrainer<'a> {
    pub fn new(model: &'a GeoNet, image: &'a Classifier, config: &GeoNetConfig) -> Result<Self, BaselineError> {
        config.validate()?;
        let sgd_config = SgdConfig { momentum: config.momentum, weight_decay: config.weight_decay, nesterov: false };
        Ok(Self { model, image, sgd: Sgd::new(model.store.trainable_vars(), sgd_config), config: config.clone() })
    }
}

/// `[B, C]` scores of GeoNet over the frozen `image` classifier's logits, for evaluation.
pub fn geonet_scores(model: &GeoNet, image: &Classifier, batch: &TensorBatch) -> Result<Tensor, EvalError> {
    let loc = batch.loc.as_ref().ok_or_else(|| EvalError::Data("GeoNet needs encoded locations".into()))?;
    Ok(model.forward_t(&crate::frozen_image_logits(image, batch)?, loc, false)?)
}

impl Trainable for GeoNetTrainer<'_> {
    type Batch = TensorBatch;

    /// The image model's logits (frozen), GeoNet over them and the location, label-smoothed
    /// cross-entropy, SGD's update at `step.lr`.
    fn train_step(&mut self, batch: TensorBatch, step: &StepContext) -> Result<StepOutcome, TrainError> {
        let images = batch.single_view()?;
        let loc = batch.loc.as_ref().ok_or_else(|| TrainError::Data("GeoNet needs encoded locations".into()))?;
        let z = self.image.forward_t(images, None, false)?.logits.detach();
        let dropout = SeedStream::GeoNetDropout.seed(self.config.seed, &[step.epoch as u64, step.iteration as u64]);
        self.model.dropout.reseed(dropout);
        let out = self.model.forward_t(&z, loc, true)?;
        let loss = label_smoothing_loss(&out, &batch.targets, self.config.label_smoothing)?;
        let value = step.check_loss(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)?;
        self.sgd.step(&loss.backward()?, step.lr)?;
        let targets = to_u32(&batch.targets)?;
        let hits = top_k_hits(&score_rows(&out)?, &targets, 1)?;
        Ok(StepOutcome::measured(value, targets.len(), hits as f64))
    }

    /// The combination's accuracy and label-smoothed loss.
    fn evaluate(&self, val: &dyn Batches<TensorBatch>) -> Result<Accuracy, TrainError> {
        let smoothing = self.config.label_smoothing;
        let loss = move |logits: &Tensor, targets: &Tensor| label_smoothing_loss(logits, targets, smoothing);
        let scorer = |batch: &TensorBatch| geonet_scores(self.model, self.image, batch);
        Ok(evaluate_batches(val.epoch(0)?, &scorer, ScoreKind::Logits, Some(&loss), 0)?.accuracy)
    }

    fn model_tensors(&self) -> HashMap<String, Tensor> {
        self.model.store.tensors()
    }

    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(self.sgd.momentum_buffers().clone())
    }

    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError> {
        WeightsFile::read(model)?.load_into(&self.model.store, LoadPolicy::STRICT)?;
        let device = self.image.device();
        let buffers = optimizer
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(device)?)))
            .collect::<Result<HashMap<_, _>, TrainError>>()?;
        self.sgd.set_momentum_buffers(buffers);
        Ok(())
    }
}

/// Trains `model` over `train` (images through the frozen `image` classifier, with their encoded
/// locations) at GeoNet's constant learning rate, evaluating the combination on `val` after every
/// epoch, through the one training loop.
pub fn train_geonet(
    model: &GeoNet,
    image: &Classifier,
    config: &GeoNetConfig,
    train: &dyn Batches<TensorBatch>,
    val: &dyn Batches<TensorBatch>,
    run: &RunDir,
    resume: bool,
    observer: &mut dyn FitObserver,
) -> Result<FitSummary, BaselineError> {
    let mut trainer = GeoNetTrainer::new(model, image, config)?;
    let plan = FitPlan {
        epochs: config.epochs,
        schedule: Schedule::Constant(config.lr),
        best_by: BestBy::ValTop1,
        stop_after: None,
        sync_every: 1,
    };
    Ok(fit(&mut trainer, &plan, train, val, run, resume, observer)?)
}
