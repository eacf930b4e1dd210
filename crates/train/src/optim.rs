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
        if self.step_all_at_once(grads, lr)? {
            return Ok(());
        }
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // On CUDA two kernels update the buffer and the parameter in place, as below.
            if let Some(buffer) = dmlp_nn::sgd_step_in_place(
                var.as_tensor(),
                grad,
                self.momentum_buffers.get(name),
                (lr, momentum, weight_decay),
                nesterov,
            )? {
                self.momentum_buffers.insert(name.clone(), buffer);
                continue;
            }
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

    /// On CUDA after the first step (every parameter with a gradient has its buffer), the update
    /// of every parameter by one kernel launch (`dmlp_nn::sgd_steps_in_place`). Returns whether
    /// it was done; `false` leaves everything as it was.
    fn step_all_at_once(&self, grads: &GradStore, lr: f64) -> Result<bool> {
        let mut items = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let Some(buffer) = self.momentum_buffers.get(name) else { return Ok(false) };
            if !var.device().is_cuda() {
                return Ok(false);
            }
            items.push((var.as_tensor(), grad, buffer));
        }
        let SgdConfig { momentum, weight_decay, nesterov } = self.config;
        dmlp_nn::sgd_steps_in_place(&items, (lr, momentum, weight_decay), nesterov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Two parameters added together receive one gradient tensor from candle's backward (the
    /// patched backward keeps a first contribution as it is, vendor/README.md): each still gets
    /// its own update and buffer, and a tensor used twice gets the sum of both contributions.
    #[test]
    fn parameters_sharing_one_gradient_update_apart_and_two_uses_add_up() {
        let a = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let b = Var::new(&[0.5f32, 0.25, -1.0], &Device::Cpu).unwrap();
        let c = Tensor::new(&[2.0f32, -1.0, 0.5], &Device::Cpu).unwrap();
        let sum = (a.as_tensor() + b.as_tensor()).unwrap();
        // loss = Σ c·(a + b) + Σ (a + b)²: `sum` reaches the loss twice.
        let loss = ((&sum * &c).unwrap().sum_all().unwrap() + sum.sqr().unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let expected: Vec<f32> = values(&sum).iter().zip(values(&c)).map(|(s, c)| c + 2.0 * s).collect();
        assert_eq!(values(grads.get(a.as_tensor()).unwrap()), expected);
        assert_eq!(values(grads.get(b.as_tensor()).unwrap()), expected);
        let config = SgdConfig { momentum: 0.9, weight_decay: 0.1, nesterov: false };
        let (a0, b0) = (values(a.as_tensor()), values(b.as_tensor()));
        let mut sgd = Sgd::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], config);
        sgd.step(&grads, 0.5).unwrap();
        for (name, before, after) in [("a", &a0, values(a.as_tensor())), ("b", &b0, values(b.as_tensor()))] {
            let buffer = values(&sgd.momentum_buffers()[name]);
            for i in 0..3 {
                let g = expected[i] + before[i] * 0.1;
                assert_eq!(buffer[i], g, "{name}[{i}]: the first buffer is the decayed gradient");
                assert_eq!(after[i], before[i] - g * 0.5, "{name}[{i}]");
            }
        }
        assert_eq!(values(grads.get(a.as_tensor()).unwrap()), expected, "the update left the gradient alone");
    }
}
