//! A run's folder: metrics per epoch and checkpoints written atomically.
//!
//! ```text
//! RUN/metrics.jsonl, RUN/metrics.csv        one line per finished epoch
//! RUN/checkpoints/epoch-0003/               model.safetensors (parameters and BatchNorm
//!                                           buffers, a plain state_dict), optimizer.safetensors
//!                                           (momentum buffers), state.json (epoch, best epoch,
//!                                           the metrics of every epoch so far)
//! RUN/checkpoints/last, RUN/checkpoints/best   the name of a checkpoint folder
//! ```
//!
//! A checkpoint is written into a temporary folder, renamed into place, and only then named by
//! `last` (itself replaced by a rename), so a run killed at any moment leaves the previous
//! checkpoint intact. Folders no pointer names are removed afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// What one epoch measured. `epoch_seconds` and `images_per_s` are wall-clock fields; the rest is
/// reproducible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    /// Training top-1 in percent, λ-weighted against both mixup targets.
    pub train_top1: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// Mean per-class validation top-1 (0 in runs written before it was recorded).
    #[serde(default)]
    pub val_mean_class_top1: f64,
    pub train_images: usize,
    pub val_images: usize,
    pub epoch_seconds: f64,
    pub images_per_s: f64,
}

impl EpochMetrics {
    pub const WALL_CLOCK_FIELDS: [&'static str; 2] = ["epoch_seconds", "images_per_s"];
    const CSV_HEADER: &'static str = "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,val_mean_class_top1,train_images,val_images,epoch_seconds,images_per_s";

    fn csv_line(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{:.3},{:.1}",
            self.epoch,
            self.lr,
            self.train_loss,
            self.train_top1,
            self.val_loss,
            self.val_top1,
            self.val_top5,
            self.val_mean_class_top1,
            self.train_images,
            self.val_images,
            self.epoch_seconds,
            self.images_per_s
        )
    }

    /// An error naming the first non-finite measurement: no such metric is ever recorded.
    pub fn check_finite(&self) -> Result<(), TrainError> {
        let fields = [
            ("lr", self.lr),
            ("train_loss", self.train_loss),
            ("train_top1", self.train_top1),
            ("val_loss", self.val_loss),
            ("val_top1", self.val_top1),
            ("val_top5", self.val_top5),
            ("val_mean_class_top1", self.val_mean_class_top1),
        ];
        match fields.iter().find(|(_, v)| !v.is_finite()) {
            Some((field, value)) => Err(TrainError::NonFiniteMetric { epoch: self.epoch, field, value: *value }),
            None => Ok(()),
        }
    }
}

/// What a checkpoint remembers beside the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub epoch: usize,
    /// The epoch of the `best` checkpoint, by the metric the run names.
    pub best_epoch: usize,
    /// Every epoch's metrics up to `epoch`: a resume restores the metrics files from here, so a
    /// run killed between its checkpoint and its metrics files loses nothing.
    #[serde(default)]
    pub metrics: Vec<EpochMetrics>,
}

/// Which checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
}

impl Which {
    fn pointer(self) -> &'static str {
        match self {
            Which::Best => "best",
            Which::Last => "last",
        }
    }
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: CheckpointState,
    pub model: PathBuf,
    pub optimizer: HashMap<String, Tensor>,
}

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

fn io_err(path: &Path, err: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.to_owned(), message: err.to_string() }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

impl RunDir {
    /// Opens the existing run folder `root` for reading; creates nothing.
    pub fn open(root: &Path) -> Result<Self, TrainError> {
        if !root.join("checkpoints").is_dir() && !root.join("metrics.jsonl").is_file() {
            return Err(io_err(root, "not a run folder (no checkpoints/ and no metrics.jsonl)"));
        }
        Ok(Self { root: root.to_owned() })
    }

    /// Opens (creating if needed) the run folder `root`, for writing.
    pub fn create(root: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root.join("checkpoints")).map_err(|e| io_err(root, e))?;
        Ok(Self { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metrics_jsonl(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn metrics_csv(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Every recorded epoch's metrics, in order.
    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>, TrainError> {
        let path = self.metrics_jsonl();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(idx, line)| serde_json::from_str(line).map_err(|e| io_err(&path, format!("line {}: {e}", idx + 1))))
            .collect()
    }

    /// Rewrites both metrics files with `metrics` (used to drop epochs a resume will redo).
    pub fn write_metrics(&self, metrics: &[EpochMetrics]) -> Result<(), TrainError> {
        let mut jsonl = String::new();
        let mut csv = format!("{}\n", EpochMetrics::CSV_HEADER);
        for m in metrics {
            jsonl.push_str(&serde_json::to_string(m).map_err(|e| io_err(&self.metrics_jsonl(), e))?);
            jsonl.push('\n');
            csv.push_str(&m.csv_line());
            csv.push('\n');
        }
        write_atomic(&self.metrics_jsonl(), jsonl.as_bytes())?;
        write_atomic(&self.metrics_csv(), csv.as_bytes())
    }

    /// Writes the checkpoint of `state.epoch` and points `last` (and `best`, if asked) at it.
    pub fn save_checkpoint(
        &self,
        state: &CheckpointState,
        model: &HashMap<String, Tensor>,
        optimizer: &HashMap<String, Tensor>,
        is_best: bool,
    ) -> Result<(), TrainError> {
        let name = format!("epoch-{:04}", state.epoch);
        let dir = self.checkpoints().join(&name);
        let tmp = self.checkpoints().join(format!(".tmp-{name}"));
        for stale in [&tmp, &dir] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| io_err(stale, e))?;
            }
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        let on_cpu = |tensors: &HashMap<String, Tensor>| -> Result<HashMap<String, Tensor>, TrainError> {
            tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?))).collect()
        };
        candle_core::safetensors::save(&on_cpu(model)?, tmp.join("model.safetensors")).map_err(|e| io_err(&tmp, e))?;
        candle_core::safetensors::save(&on_cpu(optimizer)?, tmp.join("optimizer.safetensors"))
            .map_err(|e| io_err(&tmp, e))?;
        let state_json = serde_json::to_vec_pretty(state).map_err(|e| io_err(&tmp, e))?;
        std::fs::write(tmp.join("state.json"), state_json).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        write_atomic(&self.checkpoints().join("last"), name.as_bytes())?;
        if is_best {
            write_atomic(&self.checkpoints().join("best"), name.as_bytes())?;
        }
        self.remove_unreferenced()
    }

    fn pointer(&self, which: &str) -> Result<Option<String>, TrainError> {
        let path = self.checkpoints().join(which);
        match std::fs::read_to_string(&path) {
            Ok(name) => Ok(Some(name.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn remove_unreferenced(&self) -> Result<(), TrainError> {
        let keep: Vec<String> = [self.pointer("last")?, self.pointer("best")?].into_iter().flatten().collect();
        let dir = self.checkpoints();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && name.starts_with("epoch-") && !keep.contains(&name) {
                std::fs::remove_dir_all(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// The model weights of the `best` or `last` checkpoint; an error naming the folder when the
    /// run has none.
    pub fn weights(&self, which: Which) -> Result<PathBuf, TrainError> {
        let name = self.pointer(which.pointer())?.ok_or_else(|| {
            io_err(
                &self.root,
                format!("the run has no {} checkpoint (checkpoints/{} is missing)", which.pointer(), which.pointer()),
            )
        })?;
        let path = self.checkpoints().join(name).join("model.safetensors");
        if !path.is_file() {
            return Err(io_err(&path, "the checkpoint's weights are missing"));
        }
        Ok(path)
    }

    /// The state of the `last` checkpoint, if the run has one, without reading its tensors.
    pub fn last_state(&self) -> Result<Option<CheckpointState>, TrainError> {
        let Some(name) = self.pointer("last")? else { return Ok(None) };
        read_state(&self.checkpoints().join(name)).map(Some)
    }

    /// The checkpoint `last` (or `best`) names, if any.
    pub fn checkpoint(&self, which: &str) -> Result<Option<Checkpoint>, TrainError> {
        let Some(name) = self.pointer(which)? else { return Ok(None) };
        let dir = self.checkpoints().join(&name);
        let state = read_state(&dir)?;
        let optimizer_path = dir.join("optimizer.safetensors");
        let optimizer =
            candle_core::safetensors::load(&optimizer_path, &Device::Cpu).map_err(|e| io_err(&optimizer_path, e))?;
        Ok(Some(Checkpoint { model: dir.join("model.safetensors"), dir, state, optimizer }))
    }
}

fn read_state(dir: &Path) -> Result<CheckpointState, TrainError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io_err(&path, e))
}
