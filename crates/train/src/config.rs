//! The training recipe: the `[train]` table of a config.

use crate::Precision;
use serde::{Deserialize, Serialize};

/// Which optimiser updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with momentum and weight decay (the CNN recipe).
    #[default]
    Sgd,
    /// AdamW, β (`momentum`, 0.999), decoupled weight decay (the supplement's transformer recipe:
    /// lr 2e-4, weight decay 0.05).
    Adamw,
}

/// The reference recipe's knobs (`train.py` flags in brackets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs (`--stop_epoch`, 90).
    pub epochs: usize,
    /// Images per step (`--batch_size`, 512).
    pub batch_size: usize,
    /// Peak learning rate (`--start_lr`, 0.04).
    pub lr: f64,
    /// `sgd` (the default) or `adamw`.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    #[serde(default = "TrainConfig::default_momentum")]
    pub momentum: f64,
    #[serde(default = "TrainConfig::default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Epochs of linear warm-up per iteration before the cosine decay (2).
    #[serde(default = "TrainConfig::default_warmup_epochs")]
    pub warmup_epochs: usize,
    /// Label smoothing (0.1).
    #[serde(default = "TrainConfig::default_label_smoothing")]
    pub label_smoothing: f64,
    /// Beta(α, α) of mixup (0.4); 0 switches mixup off.
    #[serde(default = "TrainConfig::default_mixup_alpha")]
    pub mixup_alpha: f64,
    /// Beta(α, α) of CutMix (1.0 in DeiT's recipe; 0, the default, switches it off): a box of
    /// the partner image pasted in, λ corrected to the area kept (timm's `correct_lam`), the
    /// metadata and the targets mixed with that λ. With mixup on too, each batch takes one of
    /// the two ([`TrainConfig::mix_switch_prob`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutmix_alpha: f64,
    /// With mixup and CutMix both on, the probability that a batch takes CutMix (timm's
    /// `mixup_switch_prob`, 0.5).
    #[serde(default = "TrainConfig::default_mix_switch_prob")]
    pub mix_switch_prob: f64,
    /// `"reference"` (the default: linear warm-up per iteration, then cosine per epoch, as the
    /// reference's `adjust_learning_rate`) or `"step_cosine"` (linear warm-up, then cosine, both
    /// per step, down to `min_lr`: the transformer recipe).
    #[serde(default)]
    pub lr_schedule: LrScheduleKind,
    /// The floor of `step_cosine` (timm's `min_lr`; 0 by default).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_lr: f64,
    /// The seed every random stream derives from (the reference's 37).
    #[serde(default = "TrainConfig::default_seed")]
    pub seed: u64,
    /// Images per evaluation step (defaults to `batch_size`).
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Gradient accumulation: each batch goes through the model in this many parts (BatchNorm
    /// statistics per part, as on that many GPUs), one update per batch. The paper's 8 GPUs × 64
    /// on one GPU: `batch_size = 512`, `accumulate = 8`. Default 1.
    #[serde(default = "TrainConfig::default_accumulate")]
    pub accumulate: usize,
    /// `f32` (the default), `bf16` or `f16` (with dynamic loss scaling): the dtype products and
    /// convolutions compute in; weights, optimiser state and checkpoints stay f32, BatchNorm,
    /// LayerNorm, softmax and the loss compute in f32 (PyTorch's autocast).
    #[serde(default)]
    pub precision: Precision,
    /// Steps between reads of the training loss back to the host. 1 reads every step and stops
    /// on a non-finite loss before its update; N > 1 lets a GPU queue N steps without waiting
    /// (the loss is still checked for every step, N steps late, and the run stops naming the
    /// first bad one before any checkpoint is written). Unset (the default):
    /// [`TrainConfig::GPU_SYNC_EVERY`] on CUDA, 1 on the CPU (see [`TrainConfig::sync_every_on`]).
    /// f16's loss scaler and data-parallel training read every step whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_every: Option<usize>,
}

impl TrainConfig {
    /// The reference recipe (momentum 0.9, weight decay 1e-4, 2 warm-up epochs, smoothing 0.1,
    /// mixup α 0.4, seed 37, SGD) for `epochs` of `batch_size` at peak learning rate `lr`: the one
    /// place the recipe's defaults live, for configs, `reproduce` and tests alike.
    pub fn recipe(epochs: usize, batch_size: usize, lr: f64) -> Self {
        Self {
            epochs,
            batch_size,
            lr,
            optimizer: OptimizerKind::default(),
            momentum: Self::default_momentum(),
            weight_decay: Self::default_weight_decay(),
            nesterov: false,
            warmup_epochs: Self::default_warmup_epochs(),
            label_smoothing: Self::default_label_smoothing(),
            mixup_alpha: Self::default_mixup_alpha(),
            cutmix_alpha: 0.0,
            mix_switch_prob: Self::default_mix_switch_prob(),
            lr_schedule: LrScheduleKind::Reference,
            min_lr: 0.0,
            seed: Self::default_seed(),
            eval_batch_size: None,
            accumulate: Self::default_accumulate(),
            precision: Precision::F32,
            sync_every: None,
        }
    }

    /// Steps between loss reads when `sync_every` is unset and the model trains on CUDA: the
    /// host queues this many steps without waiting for the device (on an H200 a ResNet-50 step
    /// is shorter than the host's wait for a read-back).
    pub const GPU_SYNC_EVERY: usize = 20;

    /// Steps between reads of the loss back to the host for a model on `device`: `sync_every`
    /// when set, else [`Self::GPU_SYNC_EVERY`] on CUDA and 1 elsewhere (on the CPU a read costs
    /// nothing and an early stop on a non-finite loss is worth having).
    pub fn sync_every_on(&self, device: &candle_core::Device) -> usize {
        self.sync_every.unwrap_or(if device.is_cuda() { Self::GPU_SYNC_EVERY } else { 1 })
    }

    /// The learning-rate schedule of this recipe.
    pub fn schedule(&self) -> crate::Schedule {
        let schedule = crate::LrSchedule { base_lr: self.lr, warmup_epochs: self.warmup_epochs, epochs: self.epochs };
        match self.lr_schedule {
            LrScheduleKind::Reference => crate::Schedule::WarmupCosine(schedule),
            LrScheduleKind::StepCosine => crate::Schedule::StepCosine { schedule, min_lr: self.min_lr },
        }
    }

    fn default_momentum() -> f64 {
        0.9
    }

    fn default_weight_decay() -> f64 {
        1e-4
    }

    fn default_warmup_epochs() -> usize {
        2
    }

    fn default_label_smoothing() -> f64 {
        0.1
    }

    fn default_mixup_alpha() -> f64 {
        0.4
    }

    fn default_mix_switch_prob() -> f64 {
        0.5
    }

    fn default_seed() -> u64 {
        37
    }

    fn default_accumulate() -> usize {
        1
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err("epochs and batch_size must be at least 1".into());
        }
        if self.epochs > 100_000
            || self.batch_size > 1 << 16
            || self.eval_batch_size.is_some_and(|b| b == 0 || b > 1 << 16)
        {
            return Err(format!(
                "epochs must be at most 100000, batch_size and eval_batch_size between 1 and 65536; got {}, {}, {:?}",
                self.epochs, self.batch_size, self.eval_batch_size
            ));
        }
        if self.accumulate == 0 || self.batch_size < 2 * self.accumulate {
            return Err(format!(
                "accumulate must be at least 1, with at least two images per part: batch_size {} in {} parts",
                self.batch_size, self.accumulate
            ));
        }
        if self.sync_every == Some(0) {
            return Err("sync_every must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr must be a positive number, got {}", self.lr));
        }
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !(0.0..1.0).contains(&self.label_smoothing)
            || !non_negative(self.mixup_alpha)
            || !non_negative(self.momentum)
            || !non_negative(self.weight_decay)
        {
            return Err(format!(
                "label_smoothing must be in [0, 1); mixup_alpha, momentum and weight_decay finite and non-negative (got {}, {}, {}, {})",
                self.label_smoothing, self.mixup_alpha, self.momentum, self.weight_decay
            ));
        }
        if !non_negative(self.cutmix_alpha) || !(0.0..=1.0).contains(&self.mix_switch_prob) {
            return Err(format!(
                "cutmix_alpha must be finite and non-negative, mix_switch_prob in [0, 1] (got {}, {})",
                self.cutmix_alpha, self.mix_switch_prob
            ));
        }
        if !non_negative(self.min_lr) || self.min_lr > self.lr {
            return Err(format!("min_lr must be between 0 and lr ({}), got {}", self.lr, self.min_lr));
        }
        if self.optimizer == OptimizerKind::Adamw && self.momentum >= 1.0 {
            return Err(format!("AdamW's β₁ (momentum) must be below 1, got {}", self.momentum));
        }
        Ok(())
    }

    pub fn eval_batch_size(&self) -> usize {
        self.eval_batch_size.unwrap_or(self.batch_size)
    }
}

/// The learning-rate schedule's shape ([`TrainConfig::lr_schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduleKind {
    /// The reference's: linear warm-up per iteration, cosine per epoch.
    #[default]
    Reference,
    /// Linear warm-up and cosine decay, both per step, to `min_lr`.
    StepCosine,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

#[cfg(test)]
mod tests {
    use super::TrainConfig;
    use candle_core::Device;

    #[test]
    fn the_loss_is_read_every_step_on_the_cpu_unless_set_and_zero_is_refused() {
        let unset = TrainConfig::recipe(1, 8, 0.1);
        assert_eq!(unset.sync_every, None);
        assert_eq!(unset.sync_every_on(&Device::Cpu), 1);
        let set = TrainConfig { sync_every: Some(7), ..unset.clone() };
        assert_eq!(set.sync_every_on(&Device::Cpu), 7);
        assert!(set.validate().is_ok());
        let zero = TrainConfig { sync_every: Some(0), ..unset };
        assert!(zero.validate().unwrap_err().contains("sync_every"));
    }
}
