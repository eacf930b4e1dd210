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
use std::time::Instant;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use dmlp_fusion::{FCNET_HIDDEN, FcNet};
use dmlp_model::{Classifier, LoadPolicy, WeightsFile};
use dmlp_nn::{DropoutRng, Linear, ParamStore, linear};
use dmlp_train::{
    BatchSource, CheckpointState, EpochMetrics, RunDir, Sgd, SgdConfig, label_smoothing_loss, logit_rows, stream_seed,
    to_u32, top_k_hits,
};

use crate::BaselineError;
use crate::eval::{Accuracy, evaluate_rescored};
use crate::priorsnet::{RunOptions, progress_bar};

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
        if self.epochs == 0 || !positive(self.lr) || !(0.0..1.0).contains(&self.dropout) {
            return Err(BaselineError::Config(format!(
                "GeoNet needs epochs and lr above 0 and dropout in [0, 1): {self:?}"
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
        let store = ParamStore::new(stream_seed(&[config.seed, 2]));
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

const DROPOUT_STREAM: u64 = 21;

/// A finite number above zero (NaN is not).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Trains `model` over `train` (images through the frozen `image` classifier, with their encoded
/// locations), evaluating the combination on `val` after every epoch; metrics and checkpoints go
/// to `run` as for any run. Returns the last epoch's validation accuracy.
pub fn train_geonet(
    model: &GeoNet,
    image: &Classifier,
    config: &GeoNetConfig,
    train: &dyn BatchSource,
    val: &dyn BatchSource,
    run: &RunDir,
    options: RunOptions,
) -> Result<Accuracy, BaselineError> {
    config.validate()?;
    let sgd_config = SgdConfig { momentum: config.momentum, weight_decay: config.weight_decay, nesterov: false };
    let mut sgd = Sgd::new(model.store.trainable_vars(), sgd_config);
    let mut start = 1;
    if options.resume
        && let Some(checkpoint) = run.checkpoint("last")?
    {
        WeightsFile::read(&checkpoint.model)?.load_into(&model.store, LoadPolicy::STRICT)?;
        sgd.set_momentum_buffers(checkpoint.optimizer);
        start = checkpoint.state.epoch + 1;
    } else if !run.read_metrics()?.is_empty() {
        return Err(BaselineError::Config(format!(
            "{} already holds a run; resume it or choose another folder",
            run.root().display()
        )));
    }
    let rescore = |logits: &Tensor, loc: Option<&Tensor>| -> Result<Tensor, dmlp_train::TrainError> {
        let loc = loc.ok_or_else(|| dmlp_train::TrainError::Data("GeoNet needs encoded locations".into()))?;
        Ok(model.forward_t(logits, loc, false)?)
    };
    let mut last = None;
    for epoch in start..=config.epochs {
        let started = Instant::now();
        let bar = progress_bar(options.progress, epoch, config.epochs, train.len());
        let (mut loss_sum, mut hits, mut seen) = (0.0, 0usize, 0usize);
        for (step, batch) in train.epoch(epoch)?.enumerate() {
            let batch = batch?;
            let images = batch.single_view()?;
            let loc = batch.loc.as_ref().ok_or_else(|| BaselineError::Config("GeoNet needs locations".into()))?;
            let z = image.forward_t(images, None, false)?.logits.detach();
            model.dropout.reseed(stream_seed(&[config.seed, DROPOUT_STREAM, epoch as u64, step as u64]));
            let out = model.forward_t(&z, loc, true)?;
            let loss = label_smoothing_loss(&out, &batch.targets, config.label_smoothing)?;
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                bar.abandon();
                return Err(dmlp_train::TrainError::NonFinite { epoch, iteration: step, loss: value }.into());
            }
            sgd.step(&loss.backward()?, config.lr)?;
            let targets = to_u32(&batch.targets)?;
            hits += top_k_hits(&logit_rows(&out)?, &targets, 1);
            loss_sum += value * targets.len() as f64;
            seen += targets.len();
            bar.inc(targets.len() as u64);
            bar.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        bar.finish_and_clear();
        let accuracy = evaluate_rescored(image, val, &rescore, Some(config.label_smoothing))?;
        let seconds = started.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch,
            lr: config.lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: 100.0 * hits as f64 / seen.max(1) as f64,
            val_loss: accuracy.loss.unwrap_or_default(),
            val_top1: accuracy.top1,
            val_top5: accuracy.top5,
            train_images: seen,
            val_images: accuracy.images,
            epoch_seconds: seconds,
            images_per_s: seen as f64 / seconds.max(1e-9),
        };
        if options.progress {
            eprintln!("geonet epoch {epoch}/{}: loss {:.4} | val top-1 {:.2}", config.epochs, m.train_loss, m.val_top1);
        }
        run.append_metrics(&m)?;
        let tensors: HashMap<String, Tensor> =
            model.store.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let state = CheckpointState { epoch, best_top1: m.val_top1, best_epoch: epoch };
        run.save_checkpoint(&state, &tensors, sgd.momentum_buffers(), false)?;
        last = Some(accuracy);
    }
    match last {
        Some(accuracy) => Ok(accuracy),
        None => Ok(evaluate_rescored(image, val, &rescore, Some(config.label_smoothing))?),
    }
}
