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
use std::time::Instant;

use candle_core::{D, DType, Device, IndexOp, ModuleT, Tensor};
use dmlp_fusion::{FCNET_HIDDEN, FcNet};
use dmlp_model::{LoadPolicy, WeightsFile};
use dmlp_nn::{DropoutRng, ParamStore};
use dmlp_train::{Adam, AdamConfig, CheckpointState, EpochMetrics, RunDir, stream_seed, top_k_hits};
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

    /// The learning rate of 1-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * self.lr_decay.powi(epoch.saturating_sub(1) as i32)
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
        let store = ParamStore::new(stream_seed(&[seed, 1]));
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
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(&[seed, SAMPLER_STREAM, epoch as u64]));
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

const SAMPLER_STREAM: u64 = 11;
const BACKGROUND_STREAM: u64 = 12;
const DROPOUT_STREAM: u64 = 13;

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

/// Options of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    pub resume: bool,
    pub progress: bool,
}

fn model_tensors(store: &ParamStore) -> HashMap<String, Tensor> {
    store.vars().into_iter().map(|(name, var)| (name, var.as_tensor().clone())).collect()
}

/// Trains `model` on `train`, recording each epoch in `run` (metrics: the loss, the prior's own
/// top-1 on the training batches, geo_prior's validation loss `mean −log(P_iy + ε)` on `val` and
/// the prior's own top-1/top-5 there). Checkpoints (`last`, with Adam's state) are written
/// atomically after every epoch; with `resume` the run continues from the last one.
pub fn train_priorsnet(
    model: &PriorsNet,
    config: &PriorsNetConfig,
    train: &Presences,
    val: &Presences,
    run: &RunDir,
    options: RunOptions,
) -> Result<Vec<EpochMetrics>, BaselineError> {
    config.validate()?;
    if train.labels.is_empty() {
        return Err(BaselineError::Config("PriorsNet has no training location to learn from".into()));
    }
    let device = train.inputs.device().clone();
    let pos_weight = config.pos_weight.unwrap_or(model.num_classes as f64);
    let mut adam = Adam::new(model.store.trainable_vars(), AdamConfig::adam());
    let mut start = 1;
    if options.resume
        && let Some(checkpoint) = run.checkpoint("last")?
    {
        WeightsFile::read(&checkpoint.model)?.load_into(&model.store, LoadPolicy::STRICT)?;
        adam.load_state_tensors(&checkpoint.optimizer)?;
        start = checkpoint.state.epoch + 1;
    } else if !run.read_metrics()?.is_empty() {
        return Err(BaselineError::Config(format!(
            "{} already holds a run; resume it or choose another folder",
            run.root().display()
        )));
    }
    let mut metrics = run.read_metrics()?;
    metrics.retain(|m| m.epoch < start);
    for epoch in start..=config.epochs {
        let started = Instant::now();
        let lr = config.lr_at(epoch);
        let rows = epoch_rows(&train.labels, config.sampler, config.seed, epoch);
        let steps = rows.len().div_ceil(config.batch_size);
        let bar = progress_bar(options.progress, epoch, config.epochs, rows.len());
        let (mut loss_sum, mut hits, mut seen) = (0.0, 0usize, 0usize);
        for (step, chunk) in rows.chunks(config.batch_size).enumerate() {
            let index = Tensor::from_vec(chunk.iter().map(|&r| r as u32).collect::<Vec<_>>(), chunk.len(), &device)?;
            let inputs = train.inputs.index_select(&index, 0)?;
            let labels: Vec<u32> = chunk.iter().map(|&r| train.labels[r]).collect();
            let targets = Tensor::from_vec(labels.clone(), labels.len(), &device)?;
            let mut rng =
                ChaCha8Rng::seed_from_u64(stream_seed(&[config.seed, BACKGROUND_STREAM, epoch as u64, step as u64]));
            let background = background_inputs(chunk.len(), model.num_inputs, config.background, &mut rng, &device)?;
            model.dropout.reseed(stream_seed(&[config.seed, DROPOUT_STREAM, epoch as u64, step as u64]));
            let loss = assume_negative_loss(model, &inputs, &targets, &background, pos_weight, true)?;
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                bar.abandon();
                return Err(dmlp_train::TrainError::NonFinite { epoch, iteration: step, loss: value }.into());
            }
            adam.step(&loss.backward()?, lr)?;
            let rows_cpu = dmlp_train::logit_rows(&model.logits_t(&inputs, false)?)?;
            hits += top_k_hits(&rows_cpu, &labels, 1);
            loss_sum += value * chunk.len() as f64;
            seen += chunk.len();
            bar.inc(chunk.len() as u64);
            bar.set_message(format!("loss {:.4} ({}/{steps})", loss_sum / seen as f64, step + 1));
        }
        bar.finish_and_clear();
        let (val_loss, val_top1, val_top5, val_n) = evaluate_prior(model, val, config.batch_size)?;
        let seconds = started.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: 100.0 * hits as f64 / seen.max(1) as f64,
            val_loss,
            val_top1,
            val_top5,
            train_images: seen,
            val_images: val_n,
            epoch_seconds: seconds,
            images_per_s: seen as f64 / seconds.max(1e-9),
        };
        if options.progress {
            eprintln!(
                "prior epoch {epoch}/{}: loss {:.4}, prior top-1 {:.2} | val loss {:.4} top-1 {:.2}",
                config.epochs, m.train_loss, m.train_top1, m.val_loss, m.val_top1
            );
        }
        run.append_metrics(&m)?;
        let state = CheckpointState { epoch, best_top1: m.val_top1, best_epoch: epoch };
        run.save_checkpoint(&state, &model_tensors(&model.store), &adam.state_tensors()?, false)?;
        metrics.push(m);
    }
    Ok(metrics)
}

/// geo_prior's validation loss `mean −log(P_iy + ε)` and the prior's own top-1/top-5 (%).
pub fn evaluate_prior(
    model: &PriorsNet,
    val: &Presences,
    batch_size: usize,
) -> Result<(f64, f64, f64, usize), BaselineError> {
    let (mut loss, mut top1, mut top5) = (0.0, 0usize, 0usize);
    let n = val.labels.len();
    for first in (0..n).step_by(batch_size.max(1)) {
        let len = batch_size.min(n - first);
        let inputs = val.inputs.narrow(0, first, len)?;
        let labels = &val.labels[first..first + len];
        let logits = model.logits_t(&inputs, false)?;
        let rows = dmlp_train::logit_rows(&logits)?;
        for (row, label) in rows.iter().zip(labels) {
            let p = 1.0 / (1.0 + (-f64::from(row[*label as usize])).exp());
            loss -= (p + EPS).ln();
        }
        top1 += top_k_hits(&rows, labels, 1);
        top5 += top_k_hits(&rows, labels, 5);
    }
    if n == 0 {
        return Err(BaselineError::Config("PriorsNet's validation split has no location".into()));
    }
    let pct = |h: usize| 100.0 * h as f64 / n as f64;
    Ok((loss / n as f64, pct(top1), pct(top5), n))
}

pub(crate) fn progress_bar(show: bool, epoch: usize, epochs: usize, items: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(items as u64);
    let style =
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}
