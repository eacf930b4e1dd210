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
//! A checkpoint is written into a temporary folder, its files and the folder flushed to disk
//! (`fsync`), renamed into place, and only then named by `last` (itself replaced by a flushed
//! rename), so a run killed at any moment, or a machine losing power, leaves the previous
//! checkpoint intact. Folders no pointer names are removed afterwards. A pointer must name a
//! checkpoint folder of this run (`epoch-NNNN`), never a path elsewhere.
//!
//! A run folder opened for writing ([`RunDir::create`]) is locked (`RUN/.lock`, an advisory lock
//! the system releases when the process ends, even by `kill -9`), so two processes cannot write
//! one run.

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
    /// Training batches' unreadable files skipped this epoch (`bad_images = "skip"`).
    #[serde(default)]
    pub train_bad_images: usize,
    /// Validation images left out this epoch as unreadable.
    #[serde(default)]
    pub val_bad_images: usize,
}

impl EpochMetrics {
    pub const WALL_CLOCK_FIELDS: [&'static str; 2] = ["epoch_seconds", "images_per_s"];
    const CSV_HEADER: &'static str = "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,val_mean_class_top1,train_images,val_images,epoch_seconds,images_per_s,train_bad_images,val_bad_images";

    fn csv_line(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{:.3},{:.1},{},{}",
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
            self.images_per_s,
            self.train_bad_images,
            self.val_bad_images
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
    /// The open lock file, for folders opened for writing (shared by clones).
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

fn io_err(path: &Path, err: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.to_owned(), message: err.to_string() }
}

/// Writes `bytes` to `path` through a temporary file flushed to disk and a rename, then flushes
/// the folder, so that after a crash `path` holds either the old bytes or the new ones.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    sync_path(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    sync_parent(path)
}

/// Flushes a file's (or a folder's) data and metadata to disk.
fn sync_path(path: &Path) -> Result<(), TrainError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| io_err(path, format!("flushing to disk: {e}")))
}

/// Flushes the folder holding `path`, which makes a rename into it durable.
fn sync_parent(path: &Path) -> Result<(), TrainError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_path(parent),
        _ => Ok(()),
    }
}

/// Takes the run's advisory lock, or fails naming the folder when another process holds it.
#[cfg(unix)]
fn lock(root: &Path) -> Result<std::fs::File, TrainError> {
    use std::os::fd::AsRawFd;
    let path = root.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // SAFETY: flock on a file descriptor this function owns; it touches no memory.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !taken {
        return Err(io_err(
            root,
            "the run folder is in use by another process (it holds .lock): wait for it, or stop it",
        ));
    }
    Ok(file)
}

#[cfg(not(unix))]
fn lock(root: &Path) -> Result<std::fs::File, TrainError> {
    let path = root.join(".lock");
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io_err(&path, e))
}

/// A checkpoint folder's name: `epoch-` and digits, nothing that leaves the run folder.
fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("epoch-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl RunDir {
    /// Opens the existing run folder `root` for reading; creates nothing.
    pub fn open(root: &Path) -> Result<Self, TrainError> {
        if !root.join("checkpoints").is_dir() && !root.join("metrics.jsonl").is_file() {
            return Err(io_err(root, "not a run folder (no checkpoints/ and no metrics.jsonl)"));
        }
        Ok(Self { root: root.to_owned(), _lock: None })
    }

    /// Opens (creating if needed) the run folder `root` for writing, and locks it for as long as
    /// this value (or a clone) lives.
    pub fn create(root: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root.join("checkpoints")).map_err(|e| io_err(root, e))?;
        let lock = lock(root)?;
        Ok(Self { root: root.to_owned(), _lock: Some(std::sync::Arc::new(lock)) })
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

    /// `bad_images.txt`: every unreadable file the run skipped, one per line
    /// (`training|validation <TAB> file <TAB> reason`); each epoch's count is in the metrics.
    pub fn bad_images_file(&self) -> PathBuf {
        self.root.join("bad_images.txt")
    }

    /// Adds these skipped files to `bad_images.txt` (each line once, sorted; rewritten
    /// atomically, so a resumed epoch adds nothing twice). No file while nothing was skipped.
    pub fn record_bad_images(
        &self,
        train: &[dmlp_eval::SkippedItem],
        val: &[dmlp_eval::SkippedItem],
    ) -> Result<(), TrainError> {
        if train.is_empty() && val.is_empty() {
            return Ok(());
        }
        let path = self.bad_images_file();
        let mut lines: std::collections::BTreeSet<String> = match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(io_err(&path, e)),
        };
        for (split, items) in [("training", train), ("validation", val)] {
            for item in items {
                let reason = item.reason.replace(['\t', '\n'], " ");
                lines.insert(format!("{split}\t{}\t{reason}", item.file));
            }
        }
        let text: String = lines.into_iter().map(|line| line + "\n").collect();
        write_atomic(&path, text.as_bytes())
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
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            sync_path(&tmp.join(file))?;
        }
        sync_path(&tmp)?;
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        sync_path(&self.checkpoints())?;
        write_atomic(&self.checkpoints().join("last"), name.as_bytes())?;
        if is_best {
            write_atomic(&self.checkpoints().join("best"), name.as_bytes())?;
        }
        self.remove_unreferenced()
    }

    fn pointer(&self, which: &str) -> Result<Option<String>, TrainError> {
        let path = self.checkpoints().join(which);
        match std::fs::read_to_string(&path) {
            Ok(name) if is_checkpoint_name(name.trim()) => Ok(Some(name.trim().to_owned())),
            Ok(name) => {
                Err(io_err(&path, format!("names {:?}, not a checkpoint folder of this run (epoch-NNNN)", name.trim())))
            }
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
