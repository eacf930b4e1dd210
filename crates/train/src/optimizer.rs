//! The optimiser of a run, with its state as named tensors for checkpoints.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Adam, AdamConfig, OptimizerKind, Sgd, SgdConfig, TrainConfig, TrainError};

/// SGD or Adam(W), behind one interface.
#[derive(Debug)]
pub enum Optimizer {
    Sgd(Sgd),
    Adam(Adam),
}

impl Optimizer {
    /// The optimiser `config` names, over `vars`.
    pub fn from_config(vars: Vec<(String, Var)>, config: &TrainConfig) -> Self {
        match config.optimizer {
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(
                vars,
                SgdConfig { momentum: config.momentum, weight_decay: config.weight_decay, nesterov: config.nesterov },
            )),
            OptimizerKind::Adamw => Optimizer::Adam(Adam::new(
                vars,
                AdamConfig { beta1: config.momentum, ..AdamConfig::adamw(config.weight_decay) },
            )),
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        match self {
            Optimizer::Sgd(sgd) => sgd.step(grads, lr)?,
            Optimizer::Adam(adam) => adam.step(grads, lr)?,
        }
        Ok(())
    }

    /// The state to checkpoint (momentum buffers, or Adam's moments and step counts).
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(match self {
            Optimizer::Sgd(sgd) => sgd.momentum_buffers().clone(),
            Optimizer::Adam(adam) => adam.state_tensors()?,
        })
    }

    pub fn load_state(&mut self, tensors: HashMap<String, Tensor>) -> Result<(), TrainError> {
        match self {
            Optimizer::Sgd(sgd) => sgd.set_momentum_buffers(tensors),
            Optimizer::Adam(adam) => adam.load_state_tensors(&tensors)?,
        }
        Ok(())
    }
}
