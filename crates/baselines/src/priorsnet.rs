//! PriorsNet: a location prior `p(y | x) = σ(class_emb(FCNet(enc(x))))` trained alone on presence
//! data, multiplied into the image classifier's softmax at test time (spec §1).
//!
//! - Model: FCNet (`feats`: Linear(cin, 256), ReLU, 4 residual layers with dropout 0.5) and a
//!   bias-free `class_emb` to the classes, then a sigmoid per class. Keys `feats.*`,
//!   `class_emb.weight`, as geo_prior's (its `user_emb` is not built: our records carry no
//!   photographer, so the loss is `full_loss`, the one geo_prior uses for YFCC).
//! - Loss ("full assume negative", `losses.py`): for a batch of `B` presences and `B` background
//!   locations drawn uniformly on the sphere (with a uniform date), in one forward pass,
//!   `mean(M) + mean(N)` with `M_ij = −log(1 − P_ij + ε)` for `j ≠ y_i`, `M_iy = −λ·log(P_iy +
//!   ε)`, `N_ij = −log(1 − R_ij + ε)`, `ε = 1e-5`, `λ` = the number of classes.
//! - Sampler: class-balanced (each epoch a fresh random subset of at most `N` images per class,
//!   shuffled) or instance-balanced (every image, shuffled).
//! - Adam, `lr · 0.98^epoch`, batch 1024, 30 epochs (Table S2 varies batch, lr, sampler and N).
//! - Test: `softmax(image logits) ⊙ prior`, argmax; a row without a location keeps the image
//!   model's softmax.
//!
//! Every random draw derives from the seed, the epoch and the step, so a resumed run repeats the
//! uninterrupted one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, ModuleT, Tensor};
use dmlp_eval::{Accuracy, AccuracyCounter, score_rows, top_k_hits};
use dmlp_fusion::{FCNET_HIDDEN, FcNet};
use dmlp_model::{LoadPolicy, WeightsFile};
use dmlp_nn::{DropoutRng, ParamStore};
use dmlp_train::{
    Adam, AdamConfig, Batches, BestBy, FitObserver, FitPlan, FitSummary, RunDir, Schedule, SeedStream, StepContext,
    StepOutcome, TrainError, Trainable, fit,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::BaselineError;

/// How each epoch's training images are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Sampler {
    /// At most `per_class` images of each class, a fresh subset every epoch (Table S2's "CB").
    ClassBalanced { per_class: usize },
    /// Every image once per epoch (Table S2's "IB").
    InstanceBalanced,
}

/// How background (pseudo-negative) locations are drawn (spec §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    /// geo_prior's current `rand_samples`: uniform over the sphere's area.
    #[default]
    Spherical,
    /// The ICCV 2019 paper's sampler (`rand_samples_old`), biased at the poles.
    SphericalPaper,
}

/// PriorsNet's hyper-parameters; the defaults are geo_prior's (`train_geo_net.py`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorsNetConfig {
    #[serde(default = "PriorsNetConfig::default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "PriorsNetConfig::default_lr")]
    pub lr: f64,
    /// Per-epoch learning-rate factor.
    #[serde(default = "PriorsNetConfig::default_lr_decay")]
    pub lr_decay: f64,
    #[serde(default = "PriorsNetConfig::default_epochs")]
    pub epochs: usize,
    #[serde(default = "PriorsNetConfig::default_sampler")]
    pub sampler: Sampler,
    #[serde(default)]
    pub background: Background,
    /// The positive weight λ; `None`: the number of classes, as geo_prior.
    #[serde(default)]
    pub pos_weight: Option<f64>,
    #[serde(default = "PriorsNetConfig::default_dropout")]
    pub dropout: f32,
    #[serde(default = "PriorsNetConfig::default_seed")]
    pub seed: u64,
}

impl Default for PriorsNetConfig {
    fn default() -> Self {
        Self {
            batch_size: Self::default_batch_size(),
            lr: Self::default_lr(),
            lr_decay: Self::default_lr_decay(),
            epochs: Self::default_epochs(),
            sampler: Self::default_sampler(),
            background: Background::default(),
            pos_weight: None,
            dropout: Self::default_dropout(),
            seed: Self::default_seed(),
        }
    }
}

impl PriorsNetConfig {
    fn default_batch_size() -> usize {
        1024
    }
    fn default_lr() -> f64 {
        5e-4
    }
    fn default_lr_decay() -> f64 {
        0.98
    }
    fn default_epochs() -> usize {
        30
    }
    fn default_sampler() -> Sampler {
        Sampler::ClassBalanced { per_class: 100 }
    }
    fn default_dropout() -> f32 {
        0.5
    }
    fn default_seed() -> u64 {
        2001
    }

    pub fn validate(&self) -> Result<(), BaselineError> {
        let bad = |m: String| Err(BaselineError::Config(m));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.batch_size == 0 || self.epochs == 0 || !positive(self.lr) || !positive(self.lr_decay) {
            return bad(format!("PriorsNet needs batch_size, epochs, lr and lr_decay above 0: {self:?}"));
        }
        if let Sampler::ClassBalanced { per_class: 0 } = self.sampler {
            return bad("PriorsNet's class-balanced sampler needs per_class of at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }
}

/// The location prior.
#[derive(Debug, Clone)]
pub struct PriorsNet {
    store: ParamStore,
    net: FcNet,
    dropout: DropoutRng,
    num_inputs: usize,
    num_classes: usize,
}

impl PriorsNet {
    /// A freshly initialised prior (PyTorch's default Linear initialisation) for `num_inputs`
    /// encoded columns (4 without dates, 6 with) and `num_classes` classes.
    pub fn new(
        num_inputs: usize,
        num_classes: usize,
        dropout: f32,
        seed: u64,
        device: &Device,
    ) -> Result<Self, BaselineError> {
        let store = ParamStore::new(SeedStream::PriorsNetInit.seed(seed, &[]));
        let rng = DropoutRng::new(seed);
        let net = FcNet::new(num_inputs, num_classes, dropout, rng.clone(), store.var_builder(DType::F32, device))?;
        Ok(Self { store, net, dropout: rng, num_inputs, num_classes })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn num_inputs(&self) -> usize {
        self.num_inputs
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// # Shapes
    /// `inputs: [B, cin]` → logits `[B, C]` (the prior is their sigmoid).
    pub fn logits_t(&self, inputs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.net.forward_t(inputs, train)
    }

    /// # Shapes
    /// `inputs: [B, cin]` → `p(y | x)`: `[B, C]`, each in (0, 1).
    pub fn prior(&self, inputs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logits_t(inputs, false)?)
    }

    /// geo_prior's test-time fusion: `softmax(image_logits) ⊙ prior`, where `valid`; the image
    /// softmax alone elsewhere.
    ///
    /// # Shapes
    /// `image_logits: [B, C]`, `inputs: [B, cin]` → `[B, C]` scores (unnormalised).
    pub fn rescore(&self, image_logits: &Tensor, inputs: &Tensor, valid: &[bool]) -> candle_core::Result<Tensor> {
        let probs = candle_nn::ops::softmax(&image_logits.to_dtype(DType::F32)?, D::Minus1)?;
        let prior = self.prior(inputs)?;
        let mask: Vec<f32> = valid.iter().map(|v| f32::from(u8::from(*v))).collect();
        let mask = Tensor::from_vec(mask, (valid.len(), 1), prior.device())?;
        let factor = (prior.broadcast_mul(&mask)? + (1.0 - &mask)?.broadcast_as(prior.shape())?)?;
        probs * factor
    }

    /// The FCNet's hidden width (256).
    pub const HIDDEN: usize = FCNET_HIDDEN;
}

/// `ε` of geo_prior's `log_loss`.
const EPS: f64 = 1e-5;

/// The "full assume negative" loss (`full_loss`) of presences `inputs` with `targets`, against
/// `background` locations, in one forward pass; `pos_weight` is λ.
///
/// # Shapes
/// `inputs: [B, cin]`, `targets: [B]` (u32), `background: [B', cin]` → a scalar.
pub fn assume_negative_loss(
    model: &PriorsNet,
    inputs: &Tensor,
    targets: &Tensor,
    background: &Tensor,
    pos_weight: f64,
    train: bool,
) -> candle_core::Result<Tensor> {
    let b = inputs.dim(0)?;
    let classes = model.num_classes;
    let logits = model.logits_t(&Tensor::cat(&[inputs, background], 0)?, train)?;
    let probs = candle_nn::ops::sigmoid(&logits)?;
    let (p, r) = (probs.i(..b)?, probs.i(b..)?);
    let neg = |x: &Tensor| -> candle_core::Result<Tensor> { ((1.0 + EPS) - x)?.log()?.neg() };
    let onehot = one_hot(targets, classes, p.device())?;
    let pos = ((&p + EPS)?.log()?.neg()? * pos_weight)?;
    let neg_p = neg(&p)?;
    let m = (&neg_p + (&onehot * (pos - &neg_p)?)?)?;
    m.mean_all()? + neg(&r)?.mean_all()?
}

fn one_hot(targets: &Tensor, classes: usize, device: &Device) -> candle_core::Result<Tensor> {
    let ids = targets.to_dtype(DType::U32)?.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
    let mut values = vec![0f32; ids.len() * classes];
    for (row, id) in ids.iter().enumerate() {
        let id = *id as usize;
        if id >= classes {
            candle_core::bail!("target {id} is not below the {classes} classes");
        }
        values[row * classes + id] = 1.0;
    }
    Tensor::from_vec(values, (ids.len(), classes), device)
}

/// `n` background locations in PriorsNet's encoding (`cin` 4 without dates, 6 with).
pub fn background_inputs(
    n: usize,
    cin: usize,
    kind: Background,
    rng: &mut impl Rng,
    device: &Device,
) -> candle_core::Result<Tensor> {
    use std::f64::consts::PI;
    let mut values = Vec::with_capacity(n * cin);
    for _ in 0..n {
        let (lon, lat, t) = match kind {
            Background::Spherical => {
                let (u0, u1, u2): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
                (2.0 * u0 - 1.0, 1.0 - 2.0 * (2.0 * u1 - 1.0).acos() / PI, 2.0 * u2 - 1.0)
            }
            Background::SphericalPaper => {
                let u: [f64; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
                let theta = (u[1] + 1.0) / 2.0 * 2.0 * PI;
                let r = (1.0 - u[0] * u[0]).sqrt();
                (r * theta.cos(), r * theta.sin(), u[2])
            }
        };
        let mut row = vec![(PI * lon).sin(), (PI * lat).sin(), (PI * lon).cos(), (PI * lat).cos()];
        if cin == 6 {
            row.extend([(PI * t).sin(), (PI * t).cos()]);
        }
        values.extend(row.into_iter().map(|v| v as f32));
    }
    Tensor::from_vec(values, (n, cin), device)
}

/// The order of one epoch's training rows (1-based `epoch`).
pub fn epoch_rows(labels: &[u32], sampler: Sampler, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(SeedStream::PriorsNetSampler.seed(seed, &[epoch as u64]));
    let mut rows: Vec<usize> = match sampler {
        Sampler::InstanceBalanced => (0..labels.len()).collect(),
        Sampler::ClassBalanced { per_class } => {
            let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = std::collections::BTreeMap::new();
            for (i, label) in labels.iter().enumerate() {
                by_class.entry(*label).or_default().push(i);
            }
            let mut rows = Vec::new();
            for members in by_class.values_mut() {
                members.shuffle(&mut rng);
                rows.extend(members.iter().take(per_class));
            }
            rows
        }
    };
    rows.shuffle(&mut rng);
    rows
}

/// Presence data: PriorsNet-encoded locations (rows with a location only) and their labels.
#[derive(Debug, Clone)]
pub struct Presences {
    /// `[N, cin]`.
    pub inputs: Tensor,
    pub labels: Vec<u32>,
}

impl Presences {
    /// The rows of Dynamic MLP-encoded `loc: [N, cin]` that have a location, reordered for
    /// PriorsNet; also the number of rows dropped for lacking one.
    pub fn from_encoded(
        loc: &Tensor,
        labels: &[u32],
        metadata: dmlp_geo::Metadata,
    ) -> Result<(Self, usize), BaselineError> {
        let (inputs, valid) = crate::encoding::priorsnet_inputs(loc, metadata)?;
        let keep: Vec<u32> = (0..valid.len() as u32).filter(|&i| valid[i as usize]).collect();
        let dropped = valid.len() - keep.len();
        let index = Tensor::from_vec(keep.clone(), keep.len(), inputs.device())?;
        let labels = keep.iter().map(|&i| labels[i as usize]).collect();
        Ok((Self { inputs: inputs.index_select(&index, 0)?, labels }, dropped))
    }
}

/// One batch of presences: PriorsNet-encoded locations and their labels.
#[derive(Debug, Clone)]
pub struct PresenceBatch {
    /// `[B, cin]`.
    pub inputs: Tensor,
    pub labels: Vec<u32>,
    /// `[B', cin]` background locations; `None`: drawn from the background stream of the step
    /// (the parity fixtures give them, as geo_prior's own draws cannot be repeated).
    pub background: Option<Tensor>,
}

/// Presences as epochs of batches: each training epoch in the sampler's order, evaluation in
/// row order.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSource<'a> {
    presences: &'a Presences,
    batch_size: usize,
    /// `(sampler, seed)` for training; `None`: every row in order.
    sampling: Option<(Sampler, u64)>,
    /// Rows per epoch (the same every epoch: the sampler changes which, not how many).
    rows_per_epoch: usize,
}

impl<'a> PresenceSource<'a> {
    /// Training batches: the sampler's rows for each epoch, drawn from `seed`.
    pub fn train(presences: &'a Presences, sampler: Sampler, seed: u64, batch_size: usize) -> Self {
        let rows_per_epoch = match sampler {
            Sampler::InstanceBalanced => presences.labels.len(),
            Sampler::ClassBalanced { per_class } => {
                let mut counts = std::collections::BTreeMap::<u32, usize>::new();
                for label in &presences.labels {
                    *counts.entry(*label).or_default() += 1;
                }
                counts.values().map(|n| (*n).min(per_class)).sum()
            }
        };
        Self { presences, batch_size, sampling: Some((sampler, seed)), rows_per_epoch }
    }

    /// Evaluation batches: every row once, in order.
    pub fn eval(presences: &'a Presences, batch_size: usize) -> Self {
        Self { presences, batch_size, sampling: None, rows_per_epoch: presences.labels.len() }
    }

    fn rows(&self, epoch: usize) -> Vec<usize> {
        match self.sampling {
            Some((sampler, seed)) => epoch_rows(&self.presences.labels, sampler, seed, epoch),
            None => (0..self.presences.labels.len()).collect(),
        }
    }
}

impl Batches<PresenceBatch> for PresenceSource<'_> {
    fn batches_per_epoch(&self) -> usize {
        self.rows_per_epoch.div_ceil(self.batch_size.max(1))
    }

    fn len(&self) -> usize {
        self.rows_per_epoch
    }

    fn epoch(
        &self,
        epoch: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<PresenceBatch, TrainError>> + '_>, TrainError> {
        let rows = self.rows(epoch);
        let chunks: Vec<Vec<usize>> = rows.chunks(self.batch_size.max(1)).map(<[usize]>::to_vec).collect();
        Ok(Box::new(chunks.into_iter().map(move |chunk| {
            let device = self.presences.inputs.device();
            let index = Tensor::from_vec(chunk.iter().map(|&r| r as u32).collect::<Vec<_>>(), chunk.len(), device)?;
            Ok(PresenceBatch {
                inputs: self.presences.inputs.index_select(&index, 0)?,
                labels: chunk.iter().map(|&r| self.presences.labels[r]).collect(),
                background: None,
            })
        })))
    }
}

/// PriorsNet with its Adam optimiser and recipe, as the training loop sees it.
#[derive(Debug)]
pub struct PriorsNetTrainer<'a> {
    model: &'a PriorsNet,
    adam: Adam,
    config: PriorsNetConfig,
}

impl<'a> PriorsNetTrainer<'a> {
    /// Adam with PyTorch's defaults (β 0.9, 0.999, ε 1e-8, no weight decay), as geo_prior.
    pub fn new(model: &'a PriorsNet, config: &PriorsNetConfig) -> Result<Self, BaselineError> {
        Self::with_adam(model, config, AdamConfig::adam())
    }

    /// With Adam's hyper-parameters given (the parity fixtures name theirs).
    pub fn with_adam(model: &'a PriorsNet, config: &PriorsNetConfig, adam: AdamConfig) -> Result<Self, BaselineError> {
        config.validate()?;
        Ok(Self { model, adam: Adam::new(model.store.trainable_vars(), adam), config: config.clone() })
    }

    /// The positive weight λ: the configured one, else the number of classes (geo_prior).
    pub fn pos_weight(&self) -> f64 {
        self.config.pos_weight.unwrap_or(self.model.num_classes as f64)
    }
}

impl Trainable for PriorsNetTrainer<'_> {
    type Batch = PresenceBatch;

    /// geo_prior's step: presences and background through the network in one pass, the full
    /// assume-negative loss, Adam's update at `step.lr`. Reports the prior's own top-1 on the
    /// batch after the update.
    fn train_step(&mut self, batch: PresenceBatch, step: &StepContext) -> Result<StepOutcome, TrainError> {
        let model = self.model;
        let device = batch.inputs.device().clone();
        let n = batch.labels.len();
        let targets = Tensor::from_vec(batch.labels.clone(), n, &device)?;
        let background = match batch.background {
            Some(background) => background,
            None => {
                let seed =
                    SeedStream::PriorsNetBackground.seed(self.config.seed, &[step.epoch as u64, step.iteration as u64]);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                background_inputs(n, model.num_inputs, self.config.background, &mut rng, &device)?
            }
        };
        let dropout = SeedStream::PriorsNetDropout.seed(self.config.seed, &[step.epoch as u64, step.iteration as u64]);
        model.dropout.reseed(dropout);
        let loss = assume_negative_loss(model, &batch.inputs, &targets, &background, self.pos_weight(), true)?;
        let value = step.check_loss(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)?;
        self.adam.step(&loss.backward()?, step.lr)?;
        let rows = score_rows(&model.logits_t(&batch.inputs, false)?)?;
        let hits = top_k_hits(&rows, &batch.labels, 1)?;
        Ok(StepOutcome::measured(value, n, hits as f64))
    }

    /// geo_prior's validation loss `mean −log(P_iy + ε)` and the prior's own top-1/top-5.
    fn evaluate(&self, val: &dyn Batches<PresenceBatch>) -> Result<Accuracy, TrainError> {
        let mut counter = AccuracyCounter::new();
        for batch in val.epoch(0)? {
            let batch = batch?;
            let rows = score_rows(&self.model.logits_t(&batch.inputs, false)?)?;
            counter.add(&rows, &batch.labels)?;
            let loss: f64 = rows
                .iter()
                .zip(&batch.labels)
                .map(|(row, label)| -(1.0 / (1.0 + (-f64::from(row[*label as usize])).exp()) + EPS).ln())
                .sum();
            counter.add_loss_sum(loss, batch.labels.len())?;
        }
        Ok(counter.finish()?)
    }

    fn model_tensors(&self) -> HashMap<String, Tensor> {
        self.model.store.tensors()
    }

    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(self.adam.state_tensors()?)
    }

    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError> {
        WeightsFile::read(model)?.load_into(&self.model.store, LoadPolicy::STRICT)?;
        let device = self.model.store.vars().first().map_or(Device::Cpu, |(_, v)| v.device().clone());
        let state = optimizer
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&device)?)))
            .collect::<Result<HashMap<_, _>, TrainError>>()?;
        Ok(self.adam.load_state_tensors(&state)?)
    }
}

/// Trains `model` on `train` through the one training loop, recording each epoch in `run`
/// (metrics: the loss, the prior's own top-1 on the training batches, geo_prior's validation loss
/// `mean −log(P_iy + ε)` on `val` and the prior's own top-1/top-5 there; `best` by that top-1).
/// With `resume` the run continues from its last checkpoint.
pub fn train_priorsnet(
    model: &PriorsNet,
    config: &PriorsNetConfig,
    train: &Presences,
    val: &Presences,
    run: &RunDir,
    resume: bool,
    observer: &mut dyn FitObserver,
) -> Result<FitSummary, BaselineError> {
    if train.labels.is_empty() {
        return Err(BaselineError::Config("PriorsNet has no training location to learn from".into()));
    }
    if val.labels.is_empty() {
        return Err(BaselineError::Config("PriorsNet's validation split has no location".into()));
    }
    let mut trainer = PriorsNetTrainer::new(model, config)?;
    let plan = FitPlan {
        epochs: config.epochs,
        schedule: Schedule::Exponential { lr: config.lr, decay: config.lr_decay },
        best_by: BestBy::ValTop1,
        stop_after: None,
        sync_every: 1,
    };
    let train = PresenceSource::train(train, config.sampler, config.seed, config.batch_size);
    let val = PresenceSource::eval(val, config.batch_size);
    Ok(fit(&mut trainer, &plan, &train, &val, run, resume, observer)?)
}
