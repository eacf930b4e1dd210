//! Mixed precision for training (`[train] precision`): which dtype the products and
//! convolutions compute in, and f16's dynamic loss scaling.
//!
//! The model's parameters and the optimiser's state stay in the model's dtype (f32): under
//! `bf16` or `f16` the step runs inside [`dmlp_nn::with_autocast`], so only the computation is
//! in half precision (BatchNorm, LayerNorm, softmax and the loss in f32), and checkpoints stay
//! f32. f16's narrow range needs the loss scaled before backward so that small gradients do not
//! flush to zero: [`LossScaler`] does what PyTorch's `GradScaler` does with its defaults.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The dtype a training step computes its products and convolutions in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in the model's dtype (the default).
    #[default]
    F32,
    /// bfloat16 autocast: f32's range, no loss scaling needed.
    Bf16,
    /// float16 autocast with dynamic loss scaling.
    F16,
}

impl Precision {
    /// The autocast dtype, `None` for f32.
    pub fn autocast(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::F16 => Some(DType::F16),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// Dynamic loss scaling, PyTorch's `GradScaler` defaults: start at 2¹⁶, halve the scale and skip
/// the update when a gradient is not finite, double it after 2000 finite steps in a row.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    scale: f64,
    finite_steps: u64,
}

/// Optimiser-state keys the scaler checkpoints under.
const SCALE_KEY: &str = "amp.loss_scale";
const FINITE_STEPS_KEY: &str = "amp.finite_steps";

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl LossScaler {
    pub const INITIAL_SCALE: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;

    pub fn new() -> Self {
        Self { scale: Self::INITIAL_SCALE, finite_steps: 0 }
    }

    /// What the loss is multiplied by before backward.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// After a step: grow after `GROWTH_INTERVAL` finite steps, back off (and restart the count)
    /// on a non-finite one.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.finite_steps += 1;
            if self.finite_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.finite_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(f64::MIN_POSITIVE);
            self.finite_steps = 0;
        }
    }

    /// The state to checkpoint beside the optimiser's.
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(HashMap::from([
            (SCALE_KEY.to_string(), Tensor::new(&[self.scale], &Device::Cpu)?),
            (FINITE_STEPS_KEY.to_string(), Tensor::new(&[self.finite_steps as f64], &Device::Cpu)?),
        ]))
    }

    /// Takes the scaler's entries out of a checkpoint's optimiser state. A checkpoint without
    /// them is an error: resuming at 2¹⁶ would overflow the first steps again.
    pub fn take_state(tensors: &mut HashMap<String, Tensor>) -> Result<Self, TrainError> {
        let mut read = |key: &str| -> Result<f64, TrainError> {
            let tensor = tensors.remove(key).ok_or_else(|| {
                TrainError::Checkpoint(format!("the optimiser state has no `{key}` (a checkpoint of an f16 run has)"))
            })?;
            let values = tensor.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            match values.as_slice() {
                [value] if value.is_finite() && *value >= 0.0 => Ok(*value),
                _ => Err(TrainError::Checkpoint(format!("`{key}` holds {values:?}, not one finite value"))),
            }
        };
        let scale = read(SCALE_KEY)?;
        let finite_steps = read(FINITE_STEPS_KEY)?;
        if scale <= 0.0 {
            return Err(TrainError::Checkpoint(format!("`{SCALE_KEY}` is {scale}")));
        }
        Ok(Self { scale, finite_steps: finite_steps as u64 })
    }

    /// Removes the scaler's entries, if any (a run resumed in another precision).
    pub fn discard_state(tensors: &mut HashMap<String, Tensor>) {
        tensors.remove(SCALE_KEY);
        tensors.remove(FINITE_STEPS_KEY);
    }
}

/// A run's precision and, for f16, its loss scaler.
#[derive(Debug, Clone, PartialEq)]
pub struct Amp {
    precision: Precision,
    scaler: Option<LossScaler>,
}

impl Amp {
    pub fn new(precision: Precision) -> Self {
        let scaler = (precision == Precision::F16).then(LossScaler::new);
        Self { precision, scaler }
    }

    /// Full precision: no autocast, no scaling.
    pub fn f32() -> Self {
        Self::new(Precision::F32)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What the loss is multiplied by before backward (1 without a scaler).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, LossScaler::scale)
    }

    pub fn scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// Runs `f` (a forward pass) in this precision.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        dmlp_nn::with_autocast(self.precision.autocast(), f)
    }

    /// After a step whose gradients were (`finite`) or were not all finite.
    pub fn update(&mut self, finite: bool) {
        if let Some(scaler) = &mut self.scaler {
            scaler.update(finite);
        }
    }

    /// The scaler's state, to checkpoint with the optimiser's.
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        self.scaler.as_ref().map_or_else(|| Ok(HashMap::new()), LossScaler::state)
    }

    /// Takes this precision's entries out of a checkpoint's optimiser state.
    pub fn take_state(&mut self, tensors: &mut HashMap<String, Tensor>) -> Result<(), TrainError> {
        match &mut self.scaler {
            Some(scaler) => *scaler = LossScaler::take_state(tensors)?,
            None => LossScaler::discard_state(tensors),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_a_run_of_finite_steps() {
        let mut scaler = LossScaler::new();
        scaler.update(false);
        assert_eq!(scaler.scale(), 32768.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            scaler.update(true);
        }
        assert_eq!(scaler.scale(), 32768.0);
        scaler.update(true);
        assert_eq!(scaler.scale(), 65536.0);
        // An overflow restarts the count.
        for _ in 0..10 {
            scaler.update(true);
        }
        scaler.update(false);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            scaler.update(true);
        }
        assert_eq!(scaler.scale(), 32768.0);
    }

    #[test]
    fn the_scaler_state_round_trips_and_is_required_for_f16() {
        let mut scaler = LossScaler::new();
        scaler.update(false);
        scaler.update(true);
        let mut state = scaler.state().unwrap();
        state.insert("fc.weight".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
        let mut amp = Amp::new(Precision::F16);
        amp.take_state(&mut state).unwrap();
        assert_eq!(amp.scaler(), Some(&scaler));
        assert_eq!(state.len(), 1, "the optimiser's own entries stay");
        let err = Amp::new(Precision::F16).take_state(&mut state).unwrap_err();
        assert!(err.to_string().contains("amp.loss_scale"), "{err}");
        // f32 and bf16 drop a scaler's entries (a run resumed in another precision).
        let mut state = scaler.state().unwrap();
        Amp::new(Precision::Bf16).take_state(&mut state).unwrap();
        assert!(state.is_empty());
    }
}
