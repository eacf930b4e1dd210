//! SGD with momentum and weight decay, as `torch.optim.SGD` computes it.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// `torch.optim.SGD`'s hyper-parameters (dampening 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// SGD over named variables; momentum buffers are kept by name (for checkpoints).
#[derive(Debug)]
pub struct Sgd {
    vars: Vec<(String, Var)>,
    config: SgdConfig,
    momentum_buffers: HashMap<String, Tensor>,
}

impl Sgd {
    pub fn new(vars: Vec<(String, Var)>, config: SgdConfig) -> Self {
        Self { vars, config, momentum_buffers: HashMap::new() }
    }

    /// The names of the parameters it updates, with their variables.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn config(&self) -> SgdConfig {
        self.config
    }

    /// The momentum buffers by parameter name (absent before a parameter's first step).
    pub fn momentum_buffers(&self) -> &HashMap<String, Tensor> {
        &self.momentum_buffers
    }

    /// Restores momentum buffers saved from an earlier run.
    pub fn set_momentum_buffers(&mut self, buffers: HashMap<String, Tensor>) {
        self.momentum_buffers = buffers;
    }

    /// One update with learning rate `lr`. Parameters without a gradient are skipped, as
    /// PyTorch skips parameters whose `.grad` is `None`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let SgdConfig { momentum, weight_decay, nesterov } = self.config;
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let param = var.as_tensor().detach();
            let mut g = grad.detach();
            if weight_decay != 0.0 {
                g = (g + (&param * weight_decay)?)?;
            }
            if momentum != 0.0 {
                let buf = match self.momentum_buffers.get(name) {
                    Some(buf) => ((buf * momentum)? + &g)?,
                    None => g.clone(),
                };
                g = if nesterov { (&g + (&buf * momentum)?)? } else { buf.clone() };
                self.momentum_buffers.insert(name.clone(), buf);
            }
            var.set(&(param - (g * lr)?)?)?;
        }
        Ok(())
    }
}
