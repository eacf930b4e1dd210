//! The one training loop's rules, on a toy model: the resume rule, `best` by the named metric,
//! the non-finite stop, and a run killed between its checkpoint and its metrics files.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use dmlp_eval::{Accuracy, AccuracyCounter};
use dmlp_train::{
    Batches, BestBy, FitPlan, RunDir, Schedule, Silent, StepContext, StepOutcome, TrainError, Trainable, Which, fit,
};

/// One parameter `w` pulled towards each batch's value by SGD with momentum; the validation
/// top-1 is scripted per evaluation, the validation loss is real.
struct Toy {
    w: Var,
    momentum: Tensor,
    /// The validation top-1 of each evaluation, in turn (cycled).
    val_top1: Vec<f64>,
    evaluations: Cell<usize>,
}

impl Toy {
    fn new(val_top1: Vec<f64>) -> Self {
        Self {
            w: Var::new(&[0f32], &Device::Cpu).unwrap(),
            momentum: Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            val_top1,
            evaluations: Cell::new(0),
        }
    }

    fn w(&self) -> f32 {
        self.w.as_tensor().to_vec1::<f32>().unwrap()[0]
    }
}

impl Trainable for Toy {
    type Batch = f32;

    fn train_step(&mut self, target: f32, step: &StepContext) -> Result<StepOutcome, TrainError> {
        let diff = self.w() - target;
        let loss = step.check_loss(f64::from(diff * diff))?;
        self.momentum = ((&self.momentum * 0.5)? + f64::from(2.0 * diff))?;
        self.w.set(&(self.w.as_tensor() - (&self.momentum * step.lr)?)?)?;
        Ok(StepOutcome::measured(loss, 1, 0.0))
    }

    fn evaluate(&self, val: &dyn Batches<f32>) -> Result<Accuracy, TrainError> {
        let k = self.evaluations.get();
        self.evaluations.set(k + 1);
        let top1 = self.val_top1[k % self.val_top1.len()];
        // Four images; `top1` percent of them right.
        let right = (top1 / 25.0).round() as usize;
        let rows: Vec<Vec<f32>> = (0..4).map(|i| if i < right { vec![1.0, 0.0] } else { vec![0.0, 1.0] }).collect();
        let mut counter = AccuracyCounter::new();
        counter.add(&rows, &[0, 0, 0, 0])?;
        let mut loss = 0.0;
        for target in val.epoch(0)? {
            loss += f64::from((self.w() - target?).powi(2));
        }
        counter.add_loss_sum(loss * 4.0 / val.len() as f64, 4)?;
        Ok(counter.finish()?)
    }

    fn model_tensors(&self) -> HashMap<String, Tensor> {
        HashMap::from([("w".to_owned(), self.w.as_tensor().clone())])
    }

    fn optimizer_state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(HashMap::from([("w".to_owned(), self.momentum.clone())]))
    }

    fn restore(&mut self, model: &Path, optimizer: HashMap<String, Tensor>) -> Result<(), TrainError> {
        let tensors = candle_core::safetensors::load(model, &Device::Cpu)?;
        self.w.set(&tensors["w"])?;
        self.momentum = optimizer["w"].clone();
        Ok(())
    }
}

/// Values as batches of one; the order turns with the epoch.
struct Values(Vec<f32>);

impl Batches<f32> for Values {
    fn batches_per_epoch(&self) -> usize {
        self.0.len()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn epoch(&self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<f32, TrainError>> + '_>, TrainError> {
        let n = self.0.len();
        Ok(Box::new((0..n).map(move |i| Ok(self.0[(i + epoch) % n]))))
    }
}

fn plan(epochs: usize) -> FitPlan {
    FitPlan {
        epochs,
        schedule: Schedule::Exponential { lr: 0.1, decay: 0.9 },
        best_by: BestBy::ValTop1,
        stop_after: None,
        sync_every: 1,
    }
}

fn bits(run: &RunDir) -> Vec<(usize, u64, u64, u64, u64)> {
    let metrics = run.read_metrics().unwrap();
    metrics
        .iter()
        .map(|m| (m.epoch, m.lr.to_bits(), m.train_loss.to_bits(), m.val_loss.to_bits(), m.val_top1.to_bits()))
        .collect()
}

#[test]
fn best_follows_the_named_metric_not_the_last_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    let (train, val) = (Values(vec![1.0, 2.0]), Values(vec![1.5]));
    let mut toy = Toy::new(vec![25.0, 75.0, 50.0]);
    let summary = fit(&mut toy, &plan(3), &train, &val, &run, false, &mut Silent).unwrap();
    assert_eq!(summary.best_epoch, 2);
    assert_eq!(summary.best_top1(), 75.0);
    assert!(run.weights(Which::Best).unwrap().ends_with("epoch-0002/model.safetensors"));
    assert!(run.weights(Which::Last).unwrap().ends_with("epoch-0003/model.safetensors"));
    let state = RunDir::open(tmp.path()).unwrap().last_state().unwrap().unwrap();
    assert_eq!((state.epoch, state.best_epoch, state.metrics.len()), (3, 2, 3));

    // By the loss instead: the lowest validation loss wins.
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    let by_loss = FitPlan { best_by: BestBy::ValLoss, ..plan(3) };
    let summary = fit(&mut Toy::new(vec![25.0]), &by_loss, &train, &val, &run, false, &mut Silent).unwrap();
    let lowest = summary.metrics.iter().min_by(|a, b| a.val_loss.total_cmp(&b.val_loss)).unwrap();
    assert_eq!(summary.best_epoch, lowest.epoch);
}

#[test]
fn one_resume_rule_no_checkpoint_is_an_error_and_a_run_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    let (train, val) = (Values(vec![1.0]), Values(vec![1.0]));
    let err = fit(&mut Toy::new(vec![50.0]), &plan(2), &train, &val, &run, true, &mut Silent).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("holds no checkpoint") && text.contains(&tmp.path().display().to_string()), "{text}");
    fit(&mut Toy::new(vec![50.0]), &plan(1), &train, &val, &run, false, &mut Silent).unwrap();
    let err = fit(&mut Toy::new(vec![50.0]), &plan(2), &train, &val, &run, false, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("already holds a run"), "{err}");
    assert!(RunDir::open(&tmp.path().join("absent")).is_err(), "open creates nothing");
    assert!(!tmp.path().join("absent").exists());
}

#[test]
fn a_run_killed_between_checkpoint_and_metrics_resumes_to_the_uninterrupted_result() {
    let (train, val) = (Values(vec![1.0, 3.0, -2.0]), Values(vec![0.5, 1.5]));
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = RunDir::create(straight_dir.path()).unwrap();
    let mut whole = Toy::new(vec![10.0, 20.0, 30.0, 40.0]);
    fit(&mut whole, &plan(4), &train, &val, &straight, false, &mut Silent).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let mut first = Toy::new(vec![10.0, 20.0, 30.0, 40.0]);
    fit(&mut first, &FitPlan { stop_after: Some(2), ..plan(4) }, &train, &val, &run, false, &mut Silent).unwrap();
    // The kill: the checkpoint of epoch 2 is written, the metrics files are not.
    std::fs::remove_file(run.metrics_jsonl()).unwrap();
    std::fs::remove_file(run.metrics_csv()).unwrap();
    let mut second = Toy::new(vec![30.0, 40.0]);
    fit(&mut second, &plan(4), &train, &val, &run, true, &mut Silent).unwrap();
    assert_eq!(bits(&run), bits(&straight));
    assert_eq!(second.w().to_bits(), whole.w().to_bits());
    let csv = std::fs::read_to_string(run.metrics_csv()).unwrap();
    assert_eq!(csv.lines().count(), 5, "a header and four epochs");
}

#[test]
fn a_non_finite_loss_stops_the_run_before_its_update_and_records_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    let mut toy = Toy::new(vec![50.0]);
    let err = fit(&mut toy, &plan(2), &Values(vec![1.0, f32::NAN]), &Values(vec![1.0]), &run, false, &mut Silent)
        .unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { epoch: 1, .. }), "{err}");
    assert!(toy.w().is_finite(), "the update after a NaN loss never happened");
    assert!(run.last_state().unwrap().is_none());
    // A finite training loss but a non-finite validation loss: stopped, nothing recorded.
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    let (train, val) = (Values(vec![1.0]), Values(vec![f32::INFINITY]));
    let err = fit(&mut Toy::new(vec![50.0]), &plan(2), &train, &val, &run, false, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    assert!(run.read_metrics().unwrap().is_empty());
    assert!(run.last_state().unwrap().is_none());
}

/// Records warnings.
#[derive(Default)]
struct Warnings(Vec<String>);

impl dmlp_train::FitObserver for Warnings {
    fn warning(&mut self, message: &str) {
        self.0.push(message.to_owned());
    }
}

#[test]
fn metrics_without_a_checkpoint_start_afresh_with_a_warning() {
    // What a run killed between its metrics and its first checkpoint left with older versions.
    let tmp = tempfile::tempdir().unwrap();
    let (train, val) = (Values(vec![1.0]), Values(vec![1.0]));
    {
        let run = RunDir::create(tmp.path()).unwrap();
        fit(&mut Toy::new(vec![50.0]), &plan(1), &train, &val, &run, false, &mut Silent).unwrap();
    }
    std::fs::remove_dir_all(tmp.path().join("checkpoints")).unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    assert_eq!(run.read_metrics().unwrap().len(), 1);
    let mut warnings = Warnings::default();
    let summary = fit(&mut Toy::new(vec![50.0]), &plan(2), &train, &val, &run, false, &mut warnings).unwrap();
    assert_eq!(summary.metrics.len(), 2);
    assert_eq!(warnings.0.len(), 1, "{:?}", warnings.0);
    assert!(warnings.0[0].contains("no checkpoint"), "{:?}", warnings.0);
}

#[test]
fn a_checkpoint_beyond_the_schedule_is_an_error_not_a_silent_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    let (train, val) = (Values(vec![1.0]), Values(vec![1.0]));
    fit(&mut Toy::new(vec![50.0]), &plan(3), &train, &val, &run, false, &mut Silent).unwrap();
    let err = fit(&mut Toy::new(vec![50.0]), &plan(2), &train, &val, &run, true, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("beyond this run's 2 epochs"), "{err}");
    // Resuming a finished run with its own schedule trains nothing and keeps its metrics.
    let summary = fit(&mut Toy::new(vec![50.0]), &plan(3), &train, &val, &run, true, &mut Silent).unwrap();
    assert_eq!(summary.metrics.len(), 3);
}

#[test]
fn pointers_that_leave_the_run_folder_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    fit(&mut Toy::new(vec![50.0]), &plan(1), &Values(vec![1.0]), &Values(vec![1.0]), &run, false, &mut Silent).unwrap();
    for hostile in ["../../elsewhere", "/etc", "epoch-0001/../../x", ""] {
        std::fs::write(tmp.path().join("checkpoints/best"), hostile).unwrap();
        let err = run.weights(Which::Best).unwrap_err().to_string();
        assert!(err.contains("not a checkpoint folder"), "{hostile:?}: {err}");
    }
    assert!(run.weights(Which::Last).is_ok());
}

#[test]
fn two_writers_cannot_hold_one_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let first = RunDir::create(tmp.path()).unwrap();
    let err = RunDir::create(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("in use by another process"), "{err}");
    assert!(RunDir::open(tmp.path()).is_ok(), "reading needs no lock");
    drop(first);
    RunDir::create(tmp.path()).expect("the lock goes with its holder");
}
