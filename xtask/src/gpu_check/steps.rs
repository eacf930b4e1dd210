//! Training-step throughput: the trainer's own step (mixup, label smoothing, backward, SGD) of
//! an image-only classifier, timed with the device synchronised inside the timer. The loss
//! stays on the device between steps (`sync_every`, as a GPU run sets it; PyTorch's peer reads
//! it once at the end too), and the host's own time per step (building the graph and
//! launching kernels) is reported beside the wall time: where they are close, the step is
//! bound by the host, not the GPU.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_eval::TensorBatch;
use dmlp_model::{Classifier, ModelConfig};
use dmlp_train::{ClassifierTrainer, Precision, StepContext, TrainConfig, Trainable};

/// What one (model, precision) configuration measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StepTiming {
    pub(crate) model: String,
    pub(crate) precision: String,
    pub(crate) batch: usize,
    pub(crate) size: usize,
    /// Timed steps (after the warm-up); fewer than asked when the time budget ran out.
    pub(crate) steps: usize,
    pub(crate) step_s: Option<f64>,
    /// Seconds per step the host spent inside the step call (a full launch queue makes the
    /// host wait there too, so this equals the step time whenever the device is the bound).
    pub(crate) host_s: Option<f64>,
    /// Where a step's time goes, each phase timed on its own with the device synchronised
    /// (median of three): the forward and the loss, the backward, and the rest of the step
    /// (mixup, the update, the figures) as the step's time less the other two.
    pub(crate) forward_s: Option<f64>,
    pub(crate) backward_s: Option<f64>,
    pub(crate) rest_s: Option<f64>,
    pub(crate) images_per_s: Option<f64>,
    pub(crate) last_loss: Option<f64>,
    /// One more step traced with CUPTI (`--profile`, CUDA only): its kernels by device time.
    pub(crate) profile: Option<super::cupti::Profile>,
    /// Why the traced step has no profile (CUPTI missing or refusing).
    pub(crate) profile_error: Option<String>,
    /// Why the configuration did not run (out of memory, an op missing on the device, …).
    pub(crate) error: Option<String>,
}

/// What to time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepPlan {
    pub(crate) batch: usize,
    pub(crate) size: usize,
    pub(crate) warmup: usize,
    pub(crate) steps: usize,
    /// Seconds after which a configuration stops taking more timed steps.
    pub(crate) budget_s: f64,
    /// Trace one more step with CUPTI (CUDA only).
    pub(crate) profile: bool,
}

pub(crate) fn preset_name(preset: BackbonePreset) -> &'static str {
    match preset {
        BackbonePreset::Resnet50 => "resnet50",
        BackbonePreset::Sk2res2net101 => "sk2res2net101",
        _ => "other",
    }
}

/// Times `plan.steps` training steps of `preset` in `precision` on `device`.
pub(crate) fn time_training(
    preset: BackbonePreset,
    precision: Precision,
    device: &Device,
    plan: StepPlan,
) -> StepTiming {
    let mut timing = StepTiming::untimed(preset, precision, plan);
    if let Err(e) = run(preset, precision, device, plan, &mut timing) {
        timing.error = Some(format!("{e:#}"));
    }
    timing
}

impl StepTiming {
    fn untimed(preset: BackbonePreset, precision: Precision, plan: StepPlan) -> Self {
        StepTiming {
            model: preset_name(preset).into(),
            precision: precision.as_str().into(),
            batch: plan.batch,
            size: plan.size,
            steps: 0,
            step_s: None,
            host_s: None,
            forward_s: None,
            backward_s: None,
            rest_s: None,
            images_per_s: None,
            last_loss: None,
            profile: None,
            profile_error: None,
            error: None,
        }
    }

    /// A configuration that stopped before its timing (a panic inside it, say).
    pub(crate) fn failed(preset: BackbonePreset, precision: Precision, plan: StepPlan, error: &anyhow::Error) -> Self {
        StepTiming { error: Some(format!("{error:#}")), ..Self::untimed(preset, precision, plan) }
    }
}

fn run(
    preset: BackbonePreset,
    precision: Precision,
    device: &Device,
    plan: StepPlan,
    timing: &mut StepTiming,
) -> anyhow::Result<()> {
    let config = ModelConfig::image_only(BackboneSpec::Preset(preset), 1000);
    let model = Classifier::new(&config, 0, device)?;
    let train = TrainConfig {
        precision,
        sync_every: Some(TrainConfig::GPU_SYNC_EVERY),
        ..TrainConfig::recipe(1, plan.batch, 0.1)
    };
    let mut trainer = ClassifierTrainer::new(&model, &train)?;
    let images = Tensor::randn(0f32, 1.0, (plan.batch, 3, plan.size, plan.size), device)?;
    let targets =
        Tensor::from_vec((0..plan.batch as u32).map(|i| i * 7 % 1000).collect::<Vec<_>>(), plan.batch, device)?;
    let batch = || TensorBatch::single(images.clone(), None, targets.clone());
    let mut iteration = 0;
    let host = std::cell::Cell::new(0.0);
    let mut step = |trainer: &mut ClassifierTrainer| -> anyhow::Result<Tensor> {
        let context = StepContext { epoch: 1, iteration, lr: 0.01 };
        iteration += 1;
        let started = Instant::now();
        let outcome = trainer.train_step(batch(), &context)?;
        host.set(host.get() + started.elapsed().as_secs_f64());
        // `[loss, hits]` on the device, or the loss read back (the CPU's steps).
        Ok(match outcome.pending {
            Some(figures) => figures.get(0)?,
            None => Tensor::new(outcome.loss as f32, &Device::Cpu)?,
        })
    };
    let mut loss = None;
    for _ in 0..plan.warmup {
        loss = Some(step(&mut trainer)?);
    }
    device.synchronize()?;
    let warmup_host = host.get();
    let start = Instant::now();
    while timing.steps < plan.steps {
        loss = Some(step(&mut trainer)?);
        timing.steps += 1;
        if start.elapsed().as_secs_f64() > plan.budget_s {
            break;
        }
    }
    device.synchronize()?;
    timing.host_s = Some((host.get() - warmup_host) / timing.steps.max(1) as f64);
    timing.last_loss = loss.map(|l| l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()).transpose()?;
    let elapsed = start.elapsed().as_secs_f64();
    let step_s = elapsed / timing.steps.max(1) as f64;
    timing.step_s = Some(step_s);
    timing.images_per_s = Some(plan.batch as f64 / step_s);
    let (forward_s, backward_s) = phases(&model, precision, &images, &targets, device)?;
    timing.forward_s = Some(forward_s);
    timing.backward_s = Some(backward_s);
    timing.rest_s = Some(step_s - forward_s - backward_s);
    if plan.profile && device.is_cuda() {
        match super::cupti::Trace::start() {
            Ok(trace) => {
                step(&mut trainer)?;
                device.synchronize()?;
                match trace.finish() {
                    Ok(profile) => timing.profile = Some(profile),
                    Err(e) => timing.profile_error = Some(e),
                }
            }
            Err(e) => timing.profile_error = Some(e),
        }
    }
    Ok(())
}

/// Seconds of the forward with the loss, and of the backward, each the median of three with
/// the device synchronised around it, in the trainer's precision (its autocast).
fn phases(
    model: &Classifier,
    precision: Precision,
    images: &Tensor,
    targets: &Tensor,
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        device.synchronize()?;
        let started = Instant::now();
        let loss = dmlp_nn::with_autocast(precision.autocast(), || -> anyhow::Result<Tensor> {
            let out = model.forward_t(images, None, true)?;
            Ok(dmlp_train::label_smoothing_loss(&out.logits, targets, 0.1)?)
        })?;
        device.synchronize()?;
        forward.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        drop(loss.backward()?);
        device.synchronize()?;
        backward.push(started.elapsed().as_secs_f64());
    }
    Ok((median(forward), median(backward)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_step_is_timed_in_both_precisions() {
        let plan = StepPlan { batch: 2, size: 32, warmup: 0, steps: 1, budget_s: 60.0, profile: true };
        for precision in [Precision::F32, Precision::Bf16] {
            let timing = time_training(BackbonePreset::Resnet50, precision, &Device::Cpu, plan);
            assert_eq!(timing.error, None);
            assert_eq!(timing.steps, 1);
            assert!(timing.images_per_s.is_some_and(|r| r > 0.0) && timing.last_loss.is_some_and(f64::is_finite));
            assert!(timing.forward_s.is_some_and(|s| s > 0.0) && timing.backward_s.is_some_and(|s| s > 0.0));
        }
    }
}
