//! The reference's learning-rate schedule (`utils.py: adjust_learning_rate`, spec §7).

/// Warm-up + cosine: `warmup_epochs` of linear warm-up per iteration, then cosine per epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_epochs: usize,
    pub epochs: usize,
}

/// The learning rate at 1-based `epoch` and 0-based `iteration` of `iters_per_epoch`:
///
/// ```text
/// epoch ≤ W : lr0 · ((epoch − 1)/W + iteration/(W·n))
/// epoch > W : lr0 · ½ · (1 + cos((epoch − 1)·π / E))
/// ```
pub fn lr_at(schedule: LrSchedule, epoch: usize, iteration: usize, iters_per_epoch: usize) -> f64 {
    let LrSchedule { base_lr, warmup_epochs, epochs } = schedule;
    let epoch = epoch.max(1);
    if epoch <= warmup_epochs {
        let w = warmup_epochs as f64;
        base_lr * ((epoch - 1) as f64 / w + iteration as f64 / (w * iters_per_epoch.max(1) as f64))
    } else {
        base_lr * 0.5 * (1.0 + ((epoch - 1) as f64 * std::f64::consts::PI / epochs.max(1) as f64).cos())
    }
}

/// Warm-up then cosine, both per step (the transformer recipe's shape): at global step
/// `t = (epoch − 1)·n + iteration` of `T = epochs·n`, with `T_w = warmup_epochs·n`,
///
/// ```text
/// t < T_w : lr0 · t / T_w
/// t ≥ T_w : min + (lr0 − min) · ½ · (1 + cos(π · (t − T_w) / (T − T_w)))
/// ```
pub fn step_cosine_lr_at(
    schedule: LrSchedule,
    min_lr: f64,
    epoch: usize,
    iteration: usize,
    iters_per_epoch: usize,
) -> f64 {
    let LrSchedule { base_lr, warmup_epochs, epochs } = schedule;
    let n = iters_per_epoch.max(1) as f64;
    let t = (epoch.max(1) - 1) as f64 * n + iteration as f64;
    let warmup = warmup_epochs as f64 * n;
    let total = (epochs.max(1) as f64 * n).max(warmup + 1.0);
    if t < warmup {
        return base_lr * t / warmup;
    }
    let progress = ((t - warmup) / (total - warmup)).min(1.0);
    min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_values_for_the_readme_recipe() {
        // Spec §7: lr0 = 0.04, 977 iterations per epoch, 2 warm-up epochs, 90 epochs.
        let s = LrSchedule { base_lr: 0.04, warmup_epochs: 2, epochs: 90 };
        let at = |e, i| lr_at(s, e, i, 977);
        assert_eq!(at(1, 0), 0.0);
        assert!((at(2, 0) - 0.02).abs() < 1e-12);
        assert!((at(2, 976) - 0.03998).abs() < 1e-5);
        for (epoch, expected) in
            [(3, 0.039951), (10, 0.039021), (30, 0.030598), (46, 0.02), (60, 0.010611), (80, 0.001456), (90, 1.22e-5)]
        {
            assert!((at(epoch, 0) - expected).abs() < 1e-6, "epoch {epoch}: {} vs {expected}", at(epoch, 0));
            assert_eq!(at(epoch, 0), at(epoch, 500), "constant within an epoch");
        }
        // The official log's peak: lr0 = 0.5 gives 0.25 at epoch 2's start (0-indexed e1 in the log).
        let log = LrSchedule { base_lr: 0.5, warmup_epochs: 2, epochs: 90 };
        assert!((lr_at(log, 2, 0, 488) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn step_cosine_warms_up_then_decays_every_step_to_its_floor() {
        let s = LrSchedule { base_lr: 2e-4, warmup_epochs: 2, epochs: 10 };
        let at = |e, i| step_cosine_lr_at(s, 1e-5, e, i, 100);
        assert_eq!(at(1, 0), 0.0);
        assert!((at(1, 50) - 0.5e-4).abs() < 1e-15);
        assert!((at(2, 99) - 2e-4 * 199.0 / 200.0).abs() < 1e-15);
        assert!((at(3, 0) - 2e-4).abs() < 1e-15, "the peak as warm-up ends");
        // Half-way through the decay: the mean of peak and floor.
        assert!((at(7, 0) - (2e-4 + 1e-5) / 2.0).abs() < 1e-12);
        // Strictly decreasing within an epoch (per step, not per epoch) and never under the floor.
        assert!(at(5, 10) < at(5, 9));
        assert!((at(10, 99) - 1e-5).abs() < 1e-8 && at(10, 99) >= 1e-5);
    }
}
