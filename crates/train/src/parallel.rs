//! Data parallelism: one model replica per device, each batch split across them, gradients
//! summed over the replicas between backward and the update.
//!
//! Design: one process, one thread per replica. Each step spawns a scoped thread per replica
//! (its device's context bound to that thread; each CUDA device queues on one stream of its own,
//! `dmlp_nn::cuda_device`, so what the main thread and successive step threads queue on a device
//! runs in the order they queued it), which moves its rows of the batch to its device,
//! computes its gradients ([`classifier_gradients`]), sums them with the others' through its
//! [`Collective`], and applies the same update as every other replica. One process keeps one
//! data loader (images are decoded once and split, no launcher, no per-process copies of the
//! dataset index), one run folder writer (replica 0 checkpoints; every replica scores a share of
//! each evaluation batch on its device, `sharded_classifier_scores`) and an exact
//! resume; the price, the host side of all replicas in one process, is small next to a GPU step.
//! The collective is a trait: [`LocalCollective`] sums on the host between threads (the CPU, and
//! the tests), `NcclCollective` (feature `nccl`) sums on the GPUs, and
//! [`HubCollective`](crate::cluster::HubCollective) sums between processes over TCP.
//!
//! A job may span processes (nodes, `crate::cluster`): each process holds consecutive global
//! ranks, reads the same batches (same seed, same order; the loader may decode only the rows
//! its ranks read) and keeps its ranks' rows. Global rank
//! 0's process leads: its devices alone evaluate, it alone writes the run folder, and its epochs, weights and
//! resumed optimiser state reach every rank before the first step
//! ([`Trainable::synchronise_start`]), so the other nodes need neither the pretrained weights
//! nor the run folder.
//!
//! A batch of `n` images is split into near-equal contiguous shards in rank order; every rank's
//! share of the loss is divided by `n`, so the summed gradients are the whole batch's, and
//! **two ranks at batch `2B` update exactly as one device with `accumulate = 2` at `2B`**
//! (tested bit for bit). BatchNorm normalises with each shard's statistics, as PyTorch's
//! DistributedDataParallel does; each replica keeps its own running statistics and replica 0's
//! are checkpointed; before an evaluation every replica takes replica 0's (DDP broadcasts rank
//! 0's), so every share of it is scored by the checkpointed model. Mixup draws one λ and one
//! permutation for the whole batch; a replica receives its rows and their partners. Dropout
//! draws per replica from the step's seed and the rank.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use candle_core::{DType, Device, Tensor};
use dmlp_eval::{Accuracy, TensorBatch};
use dmlp_model::Classifier;

use crate::classifier::{
    check_master_dtype, classifier_evaluation, load_replica_state, replica_state, restore_replica, train_top1_hits,
};
use crate::fit::{Batches, StepContext, StepOutcome, Trainable};
use crate::precision::Amp;
use crate::{
    BatchGradients, Optimizer, SeedStream, StepInput, TrainConfig, TrainError, apply_gradients, classifier_gradients,
    draw_mixup,
};

/// One rank's handle on a group that sums tensors across ranks.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The elementwise sum over every rank of `tensors` (f32, on this rank's device), returned on
    /// this rank's device. Every rank calls it with tensors of the same shapes in the same order.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>, TrainError>;
}

/// Ranks as threads of one process, summing on the host in rank order (so a sum is the same
/// whichever rank arrives first).
#[derive(Debug)]
pub struct LocalCollective {
    rank: usize,
    exchange: Arc<Exchange>,
}

#[derive(Debug)]
struct Exchange {
    world: usize,
    state: Mutex<ExchangeState>,
    changed: Condvar,
}

/// One rank's tensors, flattened, and each tensor's shape.
type Contribution = (Vec<f32>, Vec<Vec<usize>>);

#[derive(Debug, Default)]
struct ExchangeState {
    /// Completed exchanges.
    generation: u64,
    /// This exchange's contributions by rank.
    slots: Vec<Option<Contribution>>,
    /// The last completed exchange's sum.
    sum: Arc<Vec<f32>>,
    failed: Option<String>,
}

impl LocalCollective {
    /// A group of `world` ranks, one handle per rank (give each to its thread).
    pub fn group(world: usize) -> Vec<LocalCollective> {
        let exchange = Arc::new(Exchange {
            world,
            state: Mutex::new(ExchangeState { slots: vec![None; world], ..ExchangeState::default() }),
            changed: Condvar::new(),
        });
        (0..world).map(|rank| LocalCollective { rank, exchange: exchange.clone() }).collect()
    }
}

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.exchange.world
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>, TrainError> {
        let device = tensors.first().map_or(Device::Cpu, |t| t.device().clone());
        let shapes: Vec<Vec<usize>> = tensors.iter().map(|t| t.dims().to_vec()).collect();
        let mut values = Vec::with_capacity(tensors.iter().map(Tensor::elem_count).sum());
        for tensor in tensors {
            values.extend(tensor.to_dtype(DType::F32)?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
        }
        let exchange = &self.exchange;
        let mut state = exchange.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &state.failed {
            return Err(TrainError::Parallel(format!("rank {}: another rank failed: {reason}", self.rank)));
        }
        let generation = state.generation;
        state.slots[self.rank] = Some((values, shapes.clone()));
        if state.slots.iter().all(Option::is_some) {
            let slots: Vec<Contribution> = state.slots.iter_mut().filter_map(Option::take).collect();
            if let Some((rank, _)) = slots.iter().enumerate().find(|(_, (_, s))| *s != slots[0].1) {
                let reason = format!("rank {rank} sent tensors of other shapes than rank 0");
                state.failed = Some(reason.clone());
                exchange.changed.notify_all();
                return Err(TrainError::Parallel(reason));
            }
            let mut sum = slots[0].0.clone();
            for (values, _) in &slots[1..] {
                for (acc, v) in sum.iter_mut().zip(values) {
                    *acc += v;
                }
            }
            state.sum = Arc::new(sum);
            state.generation += 1;
            exchange.changed.notify_all();
        } else {
            while state.generation == generation && state.failed.is_none() {
                state = exchange.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.generation == generation {
                let reason = state.failed.clone().unwrap_or_default();
                return Err(TrainError::Parallel(format!("rank {}: another rank failed: {reason}", self.rank)));
            }
        }
        let sum = state.sum.clone();
        drop(state);
        let mut out = Vec::with_capacity(shapes.len());
        let mut start = 0;
        for shape in shapes {
            let len: usize = shape.iter().product();
            out.push(Tensor::from_slice(&sum[start..start + len], shape, &device)?);
            start += len;
        }
        Ok(out)
    }
}

/// Sums `gradients` over the group: every parameter's gradient (zeros where this rank has
/// none), and one vector holding which ranks had each gradient, the loss shares, how many ranks
/// failed and the top-1 hits (`hits`, this rank's). So a rank without images this step (a last batch smaller than two per rank)
/// still takes part, and so does a rank whose forward or backward failed (`failed`): no rank
/// waits for one that will never come, and each learns that the step failed.
fn all_reduce_gradients(
    collective: &mut dyn Collective,
    model: &Classifier,
    gradients: Option<BatchGradients>,
    hits: Option<Tensor>,
    failed: bool,
) -> Result<(BatchGradients, usize, f64), TrainError> {
    let vars = model.store().trainable_vars();
    let device = model.device();
    let (grads, loss, logits) = match gradients {
        Some(g) => (g.grads, g.loss, Some(g.logits)),
        None => (vec![None; vars.len()], Tensor::zeros((), DType::F32, device)?, None),
    };
    let mut tensors = Vec::with_capacity(vars.len() + 1);
    for ((_, var), grad) in vars.iter().zip(&grads) {
        tensors.push(match grad {
            Some(grad) => grad.to_dtype(DType::F32)?,
            None => Tensor::zeros(var.dims(), DType::F32, device)?,
        });
    }
    // [presence of each gradient…, loss share, failed, top-1 hits]: one copy to the device, one
    // tensor.
    let presence: Vec<f32> = grads.iter().map(|g| f32::from(u8::from(g.is_some()))).collect();
    let flags = Tensor::from_vec(presence, vars.len(), device)?;
    let failed = Tensor::new(&[f32::from(u8::from(failed))], device)?;
    let hits = match hits {
        Some(hits) => hits.to_dtype(DType::F32)?.reshape(1)?,
        None => Tensor::zeros(1, DType::F32, device)?,
    };
    tensors.push(Tensor::cat(&[flags, loss.to_dtype(DType::F32)?.reshape(1)?, failed, hits], 0)?);
    let mut reduced = collective.all_reduce_sum(&tensors)?;
    let meta = reduced.pop().ok_or_else(|| TrainError::Parallel("the all-reduce returned nothing".into()))?;
    let flags = meta.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let (present, failures, hits) = (&flags[..vars.len()], flags[vars.len() + 1] as usize, flags[vars.len() + 2]);
    let loss = meta.narrow(0, vars.len(), 1)?.reshape(())?;
    let grads = reduced
        .into_iter()
        .zip(vars.iter())
        .zip(present)
        .map(|((grad, (_, var)), &present)| {
            (present > 0.0).then(|| grad.to_dtype(var.dtype())).transpose().map_err(TrainError::from)
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let logits = match logits {
        Some(logits) => logits,
        None => Tensor::zeros((0, model.num_classes()), DType::F32, device)?,
    };
    Ok((BatchGradients { grads, loss, logits }, failures, f64::from(hits)))
}

/// One model replica on its device, with its own optimiser state (kept identical to the
/// others' by identical updates) and its rank's collective.
struct Replica<'a> {
    model: &'a Classifier,
    optimizer: Optimizer,
    amp: Amp,
    collective: Box<dyn Collective>,
}

/// What every replica reads in one step: the whole batch (anywhere; each takes its rows) and
/// the mixup draw.
struct StepShare<'b> {
    images: &'b Tensor,
    loc: Option<&'b Tensor>,
    targets: &'b Tensor,
    perm: &'b [u32],
    lambda: f64,
    cut: Option<[usize; 4]>,
}

/// What one replica measured: the whole batch's loss (over every rank), whether the update was
/// skipped, and the whole batch's top-1 hits.
type ReplicaOutcome = (f64, bool, f64);

/// What a replica reports when another one failed the step (the failed one reports why).
const ANOTHER_FAILED: &str = "another replica failed this step";

impl Replica<'_> {
    /// This replica's gradients and top-1 hits (on its device) for its rows, `None` without rows.
    fn gradients(
        &self,
        share: &StepShare<'_>,
        (start, len): (usize, usize),
        config: &TrainConfig,
        step: &StepContext,
    ) -> Result<Option<(BatchGradients, Tensor)>, TrainError> {
        if len == 0 {
            return Ok(None);
        }
        let device = self.model.device().clone();
        let n = share.images.dim(0)?;
        let partners: Vec<u32> = share.perm[start..start + len].to_vec();
        let rows = |t: &Tensor| -> Result<Tensor, TrainError> { Ok(t.narrow(0, start, len)?.to_device(&device)?) };
        let paired = |t: &Tensor| -> Result<Tensor, TrainError> {
            let ids = Tensor::from_slice(&partners, len, t.device())?;
            Ok(t.index_select(&ids, 0)?.to_device(&device)?)
        };
        // The same expression as `mixup`, row for row.
        let mix = |t: &Tensor| -> Result<Tensor, TrainError> {
            Ok(((rows(t)? * share.lambda)? + (paired(t)? * (1.0 - share.lambda))?)?)
        };
        let images = match share.cut {
            // CutMix pastes the partner's box; the rows and partners as for mixup.
            Some(cut) if share.images.rank() == 4 => {
                crate::classifier::cutmix_pairs(&rows(share.images)?, &paired(share.images)?, cut)?
            }
            _ => mix(share.images)?,
        };
        let loc = share.loc.map(&mix).transpose()?;
        let (targets, permuted) = (rows(share.targets)?, paired(share.targets)?);
        let rank = self.collective.rank() as u64;
        let dropout = SeedStream::Dropout.seed(config.seed, &[step.epoch as u64, step.iteration as u64, rank]);
        self.model.reseed_dropout(dropout);
        let gradients = classifier_gradients(
            self.model,
            StepInput::of(&images),
            loc.as_ref(),
            &targets,
            &permuted,
            share.lambda,
            config.label_smoothing,
            n,
            config.accumulate,
            &self.amp,
        )?;
        let hits = train_top1_hits(&gradients.logits, &targets, &permuted, share.lambda)?;
        Ok(Some((gradients, hits)))
    }

    /// Rows `start..start + len` of the batch (and their mixup partners) on this replica's
    /// device: its gradients, summed with the other replicas', then the update.
    fn step(
        &mut self,
        share: &StepShare<'_>,
        (start, len): (usize, usize),
        config: &TrainConfig,
        step: &StepContext,
    ) -> Result<ReplicaOutcome, TrainError> {
        let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.gradients(share, (start, len), config, step)
        }))
        .unwrap_or_else(|_| Err(TrainError::Parallel(format!("replica {} panicked", self.collective.rank()))));
        let (gradients, hits, failure) = match computed {
            Ok(Some((gradients, hits))) => (Some(gradients), Some(hits), None),
            Ok(None) => (None, None, None),
            Err(e) => (None, None, Some(e)),
        };
        let (reduced, failures, hits) =
            all_reduce_gradients(self.collective.as_mut(), self.model, gradients, hits, failure.is_some())?;
        if let Some(e) = failure {
            return Err(e);
        }
        if failures > 0 {
            return Err(TrainError::Parallel(ANOTHER_FAILED.into()));
        }
        let (loss, skipped) = apply_gradients(self.model, &mut self.optimizer, &reduced, &mut self.amp, step)?;
        Ok((loss, skipped, hits))
    }

    /// Takes the leader's (global rank 0's) epochs, weights and, when `epochs` continue a run,
    /// its optimiser and precision state: every rank contributes negative zeros but rank 0, so
    /// the sum is rank 0's values bit for bit (`x + −0 = x` for every `x`, `+0` included).
    fn take_leaders_start(&mut self, epochs: &RangeInclusive<usize>) -> Result<RangeInclusive<usize>, TrainError> {
        let leader = self.collective.rank() == 0;
        let device = self.model.device().clone();
        let own = |tensor: Tensor| -> Result<Tensor, TrainError> {
            Ok(if leader { tensor.to_dtype(DType::F32)? } else { Tensor::full(-0.0f32, tensor.dims(), &device)? })
        };
        let span = Tensor::new(&[*epochs.start() as f32, *epochs.end() as f32], &device)?;
        let span =
            self.collective.all_reduce_sum(&[own(span)?])?.remove(0).to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let (first, last) = (span[0] as usize, span[1] as usize);

        let vars = self.model.store().vars();
        let weights = vars.iter().map(|(_, var)| own(var.as_tensor().clone())).collect::<Result<Vec<_>, _>>()?;
        let weights = self.collective.all_reduce_sum(&weights)?;
        if !leader {
            for ((_, var), value) in vars.iter().zip(weights) {
                var.set(&value.to_dtype(var.dtype())?)?;
            }
        }
        if first > 1 {
            // A resumed run: the optimiser's and the precision's state, in one fixed order.
            let mut state = replica_state(&self.optimizer, &self.amp)?;
            let mut layout = self.optimizer.state_layout();
            let mut precision: Vec<(String, Vec<usize>, DType)> =
                self.amp.state()?.iter().map(|(name, t)| (name.clone(), t.dims().to_vec(), t.dtype())).collect();
            precision.sort_by(|a, b| a.0.cmp(&b.0));
            layout.extend(precision);
            let tensors = layout
                .iter()
                .map(|(name, dims, _)| match state.remove(name) {
                    Some(tensor) => own(tensor.to_device(&device)?),
                    None if !leader => Ok(Tensor::full(-0.0f32, dims.as_slice(), &device)?),
                    None => Err(TrainError::Checkpoint(format!("the resumed optimiser state has no `{name}`"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let summed = self.collective.all_reduce_sum(&tensors)?;
            if !leader {
                let state = layout
                    .into_iter()
                    .zip(summed)
                    .map(|((name, _, dtype), value)| Ok((name, value.to_dtype(dtype)?)))
                    .collect::<Result<HashMap<_, _>, TrainError>>()?;
                load_replica_state(self.model, &mut self.optimizer, &mut self.amp, state)?;
            }
        }
        Ok(first..=last)
    }
}

/// Near-equal contiguous shards `(start, len)` of `n` images over `world` ranks, each of at
/// least two images (BatchNorm needs two) or none: a small last batch leaves ranks idle.
pub fn shards(n: usize, world: usize) -> Vec<(usize, usize)> {
    let active = world.min(n / 2).max(1);
    let mut start = 0;
    (0..world)
        .map(|rank| {
            let len = if rank < active { n / active + usize::from(rank < n % active) } else { 0 };
            let shard = (start, len);
            start += len;
            shard
        })
        .collect()
}

/// The variables of `models[0]` whose names `which` accepts, copied into the other models
/// (onto their devices, in their dtypes).
fn copy_from_first(models: &[&Classifier], which: impl Fn(&str) -> bool) -> Result<(), TrainError> {
    let source = models[0].store().tensors();
    for model in &models[1..] {
        for (name, var) in model.store().vars().into_iter().filter(|(name, _)| which(name)) {
            let tensor = source.get(&name).ok_or_else(|| {
                TrainError::Config(format!("replica 0 has no `{name}`: the replicas are not one model"))
            })?;
            var.set(&tensor.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
    }
    Ok(())
}

/// The classifier trained on several devices at once: see the module docs.
pub struct DataParallelTrainer<'a> {
    /// This process's replicas, global ranks `first_rank..first_rank + len` of `world`.
    replicas: Vec<Replica<'a>>,
    first_rank: usize,
    world: usize,
    config: TrainConfig,
}

impl std::fmt::Debug for DataParallelTrainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let devices: Vec<String> = self.replicas.iter().map(|r| format!("{:?}", r.model.device())).collect();
        f.debug_struct("DataParallelTrainer").field("devices", &devices).finish_non_exhaustive()
    }
}

impl<'a> DataParallelTrainer<'a> {
    /// Every replica takes replica 0's BatchNorm running statistics (its own were updated from
    /// its own shards), so each share of an evaluation is scored by the model replica 0 holds
    /// and checkpoints: DistributedDataParallel's `broadcast_buffers`. Training never reads them.
    fn share_leaders_buffers(&self) -> Result<(), TrainError> {
        let models: Vec<&Classifier> = self.replicas.iter().map(|r| r.model).collect();
        copy_from_first(&models, dmlp_nn::is_buffer_name)
    }

    /// One replica per model (rank order), each with its rank's collective. Replica 0's weights
    /// are copied into the others, so they start equal whatever each was initialised with.
    ///
    /// In a job spanning processes the collectives hold consecutive global ranks of a larger
    /// world (`crate::cluster`); the process holding rank 0 is the leader, and
    /// [`Trainable::synchronise_start`] gives every rank its weights.
    pub fn new(
        models: Vec<&'a Classifier>,
        collectives: Vec<Box<dyn Collective>>,
        config: &TrainConfig,
    ) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        let local = models.len();
        if local == 0 || collectives.len() != local {
            return Err(TrainError::Config(format!("{local} replicas for {} collectives", collectives.len())));
        }
        let (first_rank, world) = (collectives[0].rank(), collectives[0].world_size());
        for (index, collective) in collectives.iter().enumerate() {
            let rank = first_rank + index;
            if collective.rank() != rank || collective.world_size() != world || first_rank + local > world {
                return Err(TrainError::Config(format!(
                    "collective {index} is rank {} of {}, expected rank {rank} of {world}",
                    collective.rank(),
                    collective.world_size()
                )));
            }
        }
        if config.batch_size < 2 * world * config.accumulate {
            return Err(TrainError::Config(format!(
                "batch_size {} over {world} devices × accumulate {} leaves fewer than two images a part (BatchNorm needs two)",
                config.batch_size, config.accumulate
            )));
        }
        for model in &models {
            check_master_dtype(model, config.precision)?;
        }
        copy_from_first(&models, |_| true)?;
        let replicas = models
            .into_iter()
            .zip(collectives)
            .map(|(model, collective)| Replica {
                model,
                optimizer: Optimizer::from_config(model.store().trainable_vars(), config),
                amp: Amp::new(config.precision),
                collective,
            })
            .collect();
        Ok(Self { replicas, first_rank, world, config: config.clone() })
    }
}

impl Trainable for DataParallelTrainer<'_> {
    type Batch = TensorBatch;

    fn train_step(&mut self, batch: TensorBatch, step: &StepContext) -> Result<StepOutcome, TrainError> {
        let images = batch.single_view()?;
        let n = images.dim(0)?;
        let hw = if images.rank() == 4 { (images.dim(2)?, images.dim(3)?) } else { (1, 1) };
        let draw = draw_mixup(&self.config, n, hw, step)?;
        let share = StepShare {
            images,
            loc: batch.loc.as_ref(),
            targets: &batch.targets,
            perm: &draw.perm,
            lambda: draw.lambda,
            cut: draw.cut,
        };
        let config = &self.config;
        let shards = &shards(n, self.world)[self.first_rank..self.first_rank + self.replicas.len()];
        let outcomes: Vec<Result<ReplicaOutcome, TrainError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .zip(shards)
                .map(|(replica, &shard)| {
                    let share = &share;
                    scope.spawn(move || replica.step(share, shard, config, step))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Parallel("a replica's thread panicked".into()))))
                .collect()
        });
        // The failed replica's own error, rather than another's "another replica failed".
        if let Some(position) =
            outcomes.iter().position(|o| matches!(o, Err(e) if !e.to_string().contains(ANOTHER_FAILED)))
        {
            return Err(outcomes
                .into_iter()
                .nth(position)
                .and_then(Result::err)
                .unwrap_or_else(|| TrainError::Parallel(ANOTHER_FAILED.into())));
        }
        let results = outcomes.into_iter().collect::<Result<Vec<_>, TrainError>>()?;
        // Every replica holds the whole batch's figures.
        let (loss, _, top1_hits) = results[0];
        Ok(StepOutcome::measured(loss, n, top1_hits))
    }

    /// In a job spanning processes, every rank takes global rank 0's epochs, weights and (when
    /// it resumed) optimiser state; within one process the replicas already start equal.
    fn synchronise_start(&mut self, epochs: RangeInclusive<usize>) -> Result<RangeInclusive<usize>, TrainError> {
        if self.replicas.len() == self.world {
            return Ok(epochs);
        }
        let outcomes: Vec<Result<RangeInclusive<usize>, TrainError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .map(|replica| {
                    let epochs = &epochs;
                    scope.spawn(move || replica.take_leaders_start(epochs))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Parallel("a replica's thread panicked".into()))))
                .collect()
        });
        let spans = outcomes.into_iter().collect::<Result<Vec<_>, TrainError>>()?;
        Ok(spans.into_iter().next().unwrap_or(epochs))
    }

    /// Every replica of this process scores its share of each validation batch on its own
    /// device (the weights are equal); the other nodes of a job spanning processes do not
    /// evaluate.
    fn evaluate(&self, val: &dyn Batches<TensorBatch>) -> Result<Accuracy, TrainError> {
        self.share_leaders_buffers()?;
        let models: Vec<&Classifier> = self.replicas.iter().map(|r| r.model).collect();
        let autocast = self.config.precision.autocast();
        let evaluation = classifier_evaluation(&models, autocast, val.epoch(0)?, self.config.label_smoothing, 0)?;
        Ok(evaluation.accuracy)
    }

    fn model_tensors(&self) -> HashMap<String, Tensor> {
        self.replicas[0].model.store().tensors()
    }

    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        replica_state(&self.replicas[0].optimizer, &self.replicas[0].amp)
    }

    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError> {
        for replica in &mut self.replicas {
            restore_replica(replica.model, &mut replica.optimizer, &mut replica.amp, model, optimizer.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn shards_are_contiguous_near_equal_and_never_a_single_image() {
        assert_eq!(shards(12, 2), [(0, 6), (6, 6)]);
        assert_eq!(shards(11, 3), [(0, 4), (4, 4), (8, 3)]);
        assert_eq!(shards(5, 3), [(0, 3), (3, 2), (5, 0)]);
        assert_eq!(shards(3, 4), [(0, 3), (3, 0), (3, 0), (3, 0)]);
    }

    #[test]
    fn the_local_group_sums_in_rank_order_for_every_rank() {
        let group = LocalCollective::group(3);
        let sums: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|mut rank| {
                    scope.spawn(move || {
                        let r = rank.rank() as f32;
                        let mut out = Vec::new();
                        for round in 0..3 {
                            let a = Tensor::new(&[r, 10.0 * r + round as f32], &Device::Cpu).unwrap();
                            let b = Tensor::new(&[[1f32], [r]], &Device::Cpu).unwrap();
                            let reduced = rank.all_reduce_sum(&[a, b]).unwrap();
                            assert_eq!(reduced[1].dims(), [2, 1]);
                            out.push(reduced.iter().flat_map(values).collect());
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for rank in &sums {
            assert_eq!(rank, &[vec![3.0, 30.0, 3.0, 3.0], vec![3.0, 33.0, 3.0, 3.0], vec![3.0, 36.0, 3.0, 3.0]]);
        }
    }

    #[test]
    fn ranks_sending_other_shapes_get_an_error_not_a_wrong_sum() {
        let group = LocalCollective::group(2);
        let errors: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|mut rank| {
                    scope.spawn(move || {
                        let len = 1 + rank.rank();
                        rank.all_reduce_sum(&[Tensor::zeros(len, DType::F32, &Device::Cpu).unwrap()])
                            .unwrap_err()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(errors.iter().all(|e| e.contains("other shapes")), "{errors:?}");
    }
}
