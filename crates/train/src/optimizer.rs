//! The optimiser of a run, with its state as named tensors for checkpoints.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

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

    /// The entries of a complete state (after a first step, or restored), in a fixed order:
    /// name, shape and dtype. Momentum buffers and moments take their parameter's shape and
    /// dtype; Adam's step counts are one-element u32 tensors.
    pub fn state_layout(&self) -> Vec<(String, Vec<usize>, DType)> {
        match self {
            Optimizer::Sgd(sgd) if sgd.config().momentum == 0.0 => Vec::new(),
            Optimizer::Sgd(sgd) => {
                sgd.vars().iter().map(|(name, var)| (name.clone(), var.dims().to_vec(), var.dtype())).collect()
            }
            Optimizer::Adam(adam) => adam
                .vars()
                .iter()
                .flat_map(|(name, var)| {
                    [
                        (format!("{name}.exp_avg"), var.dims().to_vec(), var.dtype()),
                        (format!("{name}.exp_avg_sq"), var.dims().to_vec(), var.dtype()),
                        (format!("{name}.step"), vec![1], DType::U32),
                    ]
                })
                .collect(),
        }
    }

    /// Restores a checkpoint's optimiser state, which must be complete: after a step every
    /// parameter has its momentum buffer (SGD with momentum) or its two moments and step count
    /// (Adam), of its parameter's shape. A missing entry would restart that parameter's momentum
    /// silently, so it is an error naming it, as is an entry for no parameter.
    pub fn load_state(&mut self, tensors: HashMap<String, Tensor>) -> Result<(), TrainError> {
        // A step count's shape is not checked (one value however it is laid out).
        let expected: Vec<(String, Option<Vec<usize>>)> = self
            .state_layout()
            .into_iter()
            .map(|(name, dims, dtype)| {
                let dims = (dtype != DType::U32).then_some(dims);
                (name, dims)
            })
            .collect();
        let mut problems = Vec::new();
        let missing: Vec<&str> =
            expected.iter().filter(|(name, _)| !tensors.contains_key(name)).map(|(name, _)| name.as_str()).collect();
        if !missing.is_empty() {
            problems.push(format!("missing ({}): {}", missing.len(), shown(&missing)));
        }
        let names: std::collections::HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
        let mut unexpected: Vec<&str> = tensors.keys().map(String::as_str).filter(|k| !names.contains(k)).collect();
        unexpected.sort_unstable();
        if !unexpected.is_empty() {
            problems.push(format!("for no parameter ({}): {}", unexpected.len(), shown(&unexpected)));
        }
        for (name, dims) in &expected {
            if let (Some(dims), Some(tensor)) = (dims, tensors.get(name))
                && tensor.dims() != dims.as_slice()
            {
                problems.push(format!("{name}: shape {:?}, its parameter {dims:?}", tensor.dims()));
            }
        }
        if !problems.is_empty() {
            return Err(TrainError::Checkpoint(format!("the optimiser state does not fit: {}", problems.join("; "))));
        }
        match self {
            Optimizer::Sgd(sgd) => sgd.set_momentum_buffers(tensors),
            Optimizer::Adam(adam) => adam.load_state_tensors(&tensors)?,
        }
        Ok(())
    }
}

fn shown(names: &[&str]) -> String {
    let mut text = names.iter().take(8).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        text.push_str(", …");
    }
    text
}
