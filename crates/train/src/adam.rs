//! Adam and AdamW, as `torch.optim.Adam` / `torch.optim.AdamW` compute them (no amsgrad).
//!
//! Per parameter, at step `t`: Adam adds `weight_decay · p` to the gradient, AdamW instead
//! multiplies `p` by `1 − lr · weight_decay` first; then `m = β₁m + (1−β₁)g`,
//! `v = β₂v + (1−β₂)g²`, and `p −= lr / (1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)`.
//! PriorsNet trains with Adam (lr 5e-4, no weight decay); the supplement's transformer backbones
//! with AdamW (weight decay 0.05).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// `torch.optim.Adam(W)`'s hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
}

impl AdamConfig {
    /// PyTorch's `Adam` defaults: β (0.9, 0.999), ε 1e-8, no weight decay.
    pub fn adam() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }
    }

    /// PyTorch's `AdamW` with `weight_decay`.
    pub fn adamw(weight_decay: f64) -> Self {
        Self { weight_decay, decoupled: true, ..Self::adam() }
    }
}

/// One parameter's state: the step count and both moment estimates.
#[derive(Debug, Clone)]
pub struct AdamState {
    pub step: u64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

/// Adam over named variables; the state is kept by name (for checkpoints).
#[derive(Debug)]
pub struct Adam {
    vars: Vec<(String, Var)>,
    config: AdamConfig,
    state: HashMap<String, AdamState>,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> Self {
        Self { vars, config, state: HashMap::new() }
    }

    /// The names of the parameters it updates, with their variables.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn state(&self) -> &HashMap<String, AdamState> {
        &self.state
    }

    pub fn set_state(&mut self, state: HashMap<String, AdamState>) {
        self.state = state;
    }

    /// The state as named tensors for a checkpoint: `<param>.exp_avg`, `<param>.exp_avg_sq`,
    /// `<param>.step` (a one-element u32 tensor).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, s) in &self.state {
            out.insert(format!("{name}.exp_avg"), s.exp_avg.clone());
            out.insert(format!("{name}.exp_avg_sq"), s.exp_avg_sq.clone());
            let step =
                u32::try_from(s.step).map_err(|_| candle_core::Error::Msg(format!("{name}: step {}", s.step)))?;
            out.insert(format!("{name}.step"), Tensor::new(&[step], s.exp_avg.device())?);
        }
        Ok(out)
    }

    /// Restores what [`Adam::state_tensors`] saved, moved to each parameter's device and dtype.
    pub fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut state = HashMap::new();
        for (name, var) in &self.vars {
            let (Some(m), Some(v), Some(step)) = (
                tensors.get(&format!("{name}.exp_avg")),
                tensors.get(&format!("{name}.exp_avg_sq")),
                tensors.get(&format!("{name}.step")),
            ) else {
                continue;
            };
            let like = var.as_tensor();
            let step = step.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?.first().copied().unwrap_or(0);
            state.insert(
                name.clone(),
                AdamState {
                    step: u64::from(step),
                    exp_avg: m.to_dtype(like.dtype())?.to_device(like.device())?,
                    exp_avg_sq: v.to_dtype(like.dtype())?.to_device(like.device())?,
                },
            );
        }
        self.state = state;
        Ok(())
    }

    /// One update with learning rate `lr`; parameters without a gradient are skipped.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let AdamConfig { beta1, beta2, eps, weight_decay, decoupled } = self.config;
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let mut param = var.as_tensor().detach();
            let mut g = grad.detach();
            if weight_decay != 0.0 {
                if decoupled {
                    param = (param * (1.0 - lr * weight_decay))?;
                } else {
                    g = (g + (&param * weight_decay)?)?;
                }
            }
            let (step, m, v) = match self.state.get(name) {
                Some(s) => (s.step + 1, ((&s.exp_avg * beta1)? + (&g * (1.0 - beta1))?)?, {
                    ((&s.exp_avg_sq * beta2)? + (g.sqr()? * (1.0 - beta2))?)?
                }),
                None => (1, (&g * (1.0 - beta1))?, (g.sqr()? * (1.0 - beta2))?),
            };
            let bias1 = 1.0 - beta1.powi(step as i32);
            let bias2 = 1.0 - beta2.powi(step as i32);
            let denom = ((v.sqrt()? / bias2.sqrt())? + eps)?;
            let update = ((&m / denom)? * (lr / bias1))?;
            var.set(&(param - update)?)?;
            self.state.insert(name.clone(), AdamState { step, exp_avg: m, exp_avg_sq: v });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;

    /// Three steps on `p = [0.5, -1, 2, 0]` with gradients `[0.1, -0.2, 0.3, 0.05]·(k+1) + p/2`,
    /// lr 0.01; expected values printed by PyTorch 2.15 (float64).
    #[test]
    fn three_steps_match_pytorch_adam_and_adamw() {
        let cases = [
            (
                AdamConfig { weight_decay: 0.1, ..AdamConfig::adam() },
                [0.469_988_272_169_111, -0.969_992_655_897_204_3, 1.969_968_779_494_109, -0.029_359_680_037_379_67],
            ),
            (
                AdamConfig::adamw(0.1),
                [0.468_542_250_946_399_9, -0.967_048_706_048_163_4, 1.964_019_341_201_209, -0.029_308_309_075_421_04],
            ),
            (
                AdamConfig::adam(),
                [0.470_011_256_216_634, -0.970_016_229_572_465_5, 1.969_983_767_743_087, -0.029_338_040_049_452_36],
            ),
        ];
        let device = Device::Cpu;
        for (config, expected) in cases {
            let p = Var::from_tensor(&Tensor::new(&[0.5f64, -1.0, 2.0, 0.0], &device).unwrap()).unwrap();
            let mut adam = Adam::new(vec![("p".into(), p.clone())], config);
            for k in 0..3 {
                let target = Tensor::new(&[0.1f64, -0.2, 0.3, 0.05], &device).unwrap();
                // loss = (k+1)·target·p + p²/4 has gradient (k+1)·target + p/2.
                let loss = (((p.as_tensor() * &target).unwrap() * (k as f64 + 1.0)).unwrap().sum_all().unwrap()
                    + (p.as_tensor().sqr().unwrap() * 0.25).unwrap().sum_all().unwrap())
                .unwrap();
                adam.step(&loss.backward().unwrap(), 0.01).unwrap();
            }
            let got = p.as_tensor().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            for (g, e) in got.iter().zip(expected) {
                assert!((g - e).abs() < 1e-12, "{config:?}: {got:?} vs {expected:?}");
            }
            assert_eq!(adam.state()["p"].step, 3);
        }
    }
}
