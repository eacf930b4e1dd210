//! Reading weights from safetensors and PyTorch checkpoints, and loading them into a model.
//!
//! Formats, recognised by their first bytes rather than their names:
//! - safetensors, any of F32, F16, BF16 (converted to the model's dtype);
//! - PyTorch's zip `.pth` / `.pt`: a plain `state_dict`, or a dict that holds one under `model`
//!   or `state_dict` (the reference `train.py` saves `{epoch, model, optimizer}`), keys with or
//!   without DataParallel's `module.` prefix; `epoch` is read back when present.
//!
//! Loading checks everything before it changes anything: a missing key, an unexpected key or a
//! wrong shape is an error naming each offending tensor, unless the [`LoadPolicy`] allows it.
//! BatchNorm's `num_batches_tracked` entries are always accepted and ignored.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::{Device, Tensor, Var};
use dmlp_nn::ParamStore;

use crate::ModelError;

/// Tensors read from a weights file, by name, on the CPU.
#[derive(Debug)]
pub struct WeightsFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    /// The epoch stored beside the weights (reference `train.py` checkpoints).
    pub epoch: Option<i64>,
}

/// What to do with tensors of the file that the model does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnusedKeys {
    /// An error naming them (the default).
    Error,
    /// Skip them (an image-only model read from a fused model's weights, a backbone from a
    /// classifier's).
    Ignore,
}

/// How strict loading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPolicy {
    pub unused_keys: UnusedKeys,
    /// Leave parameters the file lacks at their initial values instead of failing (fine-tuning
    /// from ImageNet weights, where the head is new).
    pub allow_missing: bool,
}

impl LoadPolicy {
    /// Every model tensor present, nothing extra.
    pub const STRICT: LoadPolicy = LoadPolicy { unused_keys: UnusedKeys::Error, allow_missing: false };
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Model tensors the file lacks (left as they were; only with `allow_missing`).
    pub missing: Vec<String>,
    /// File tensors the model lacks (ignored; only with `UnusedKeys::Ignore`).
    pub unused: Vec<String>,
}

const STATE_DICT_KEYS: [&str; 2] = ["model", "state_dict"];
const DATA_PARALLEL_PREFIX: &str = "module.";

impl WeightsFile {
    /// Reads a safetensors or PyTorch file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let file_err = |message: String| ModelError::WeightsFile { path: path.to_owned(), message };
        let mut magic = [0u8; 4];
        std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|e| file_err(e.to_string()))?;
        let (tensors, epoch) = if magic == *b"PK\x03\x04" {
            read_pth(path).map_err(file_err)?
        } else if magic[..2] == [0x80, 0x02] || magic[..2] == [0x80, 0x04] {
            return Err(file_err("a legacy (non-zip) PyTorch pickle: re-save it with torch.save(..., _use_new_zipfile_serialization=True)".into()));
        } else {
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| file_err(format!("not a readable safetensors or PyTorch zip file: {e}")))?;
            (tensors.into_iter().collect(), None)
        };
        Ok(Self { path: path.to_owned(), tensors: strip_data_parallel_prefix(tensors), epoch })
    }

    /// Loads these tensors into `store`'s variables of the same names, converting dtype and
    /// device. Checks every name and shape first; changes nothing on error.
    pub fn load_into(&self, store: &ParamStore, policy: LoadPolicy) -> Result<LoadReport, ModelError> {
        let vars = store.vars();
        let Matched { pairs, missing, misshapen } =
            match_by_name(vars.iter(), |name| self.tensors.get(name), "the model");
        let model_names: std::collections::HashSet<&str> = vars.iter().map(|(name, _)| name.as_str()).collect();
        let unused: Vec<String> = self
            .tensors
            .keys()
            .filter(|name| !model_names.contains(name.as_str()) && !name.ends_with("num_batches_tracked"))
            .cloned()
            .collect();

        let mut problems = misshapen;
        if !missing.is_empty() && !policy.allow_missing {
            problems.push(format!("  missing from the file ({}): {}", missing.len(), list(&missing)));
        }
        if !unused.is_empty() && policy.unused_keys == UnusedKeys::Error {
            problems.push(format!("  not in the model ({}): {}", unused.len(), list(&unused)));
        }
        if !problems.is_empty() {
            return Err(ModelError::WeightsMismatch { path: self.path.clone(), details: problems.join("\n") });
        }
        for (var, tensor) in &pairs {
            var.set(&tensor.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(LoadReport { loaded: pairs.len(), missing, unused })
    }
}

/// The variables matched by name with a file's tensors.
pub(crate) struct Matched<'f> {
    /// Each variable with the file's tensor of its shape.
    pub(crate) pairs: Vec<(Var, &'f Tensor)>,
    /// Names the file lacks.
    pub(crate) missing: Vec<String>,
    /// One line per tensor of another shape (the first dozen, then a count).
    pub(crate) misshapen: Vec<String>,
}

/// Matches `vars` with the file's tensors that `get` finds by name; `owner` names the variables'
/// side in messages (`the model`, `resnet50`).
pub(crate) fn match_by_name<'f, 'v>(
    vars: impl Iterator<Item = &'v (String, Var)>,
    get: impl Fn(&str) -> Option<&'f Tensor>,
    owner: &str,
) -> Matched<'f> {
    const SHOWN: usize = 12;
    let (mut pairs, mut missing, mut misshapen, mut hidden) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (name, var) in vars {
        match get(name) {
            None => missing.push(name.clone()),
            Some(tensor) if tensor.dims() != var.dims() => {
                if misshapen.len() < SHOWN {
                    misshapen.push(format!("  {name}: file has shape {:?}, {owner} {:?}", tensor.dims(), var.dims()));
                } else {
                    hidden += 1;
                }
            }
            Some(tensor) => pairs.push((var.clone(), tensor)),
        }
    }
    if hidden > 0 {
        misshapen.push(format!("  … and {hidden} more tensors of another shape"));
    }
    Matched { pairs, missing, misshapen }
}

pub(crate) fn list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", … and {} more", names.len() - SHOWN));
    }
    text
}

/// Removes DataParallel's `module.` prefix from every key that has it.
fn strip_data_parallel_prefix(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, tensor)| match name.strip_prefix(DATA_PARALLEL_PREFIX) {
            Some(stripped) => (stripped.to_owned(), tensor),
            None => (name, tensor),
        })
        .collect()
}

type PthContents = (BTreeMap<String, Tensor>, Option<i64>);

/// The largest `data.pkl` read: a state dict's pickle holds names and shapes, a few MB at most.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Reads a PyTorch zip checkpoint: finds the state dict (top level, or under `model` /
/// `state_dict`) and the `epoch` beside it.
///
/// A `.pth` file is a pickle, untrusted input: candle's pickle reader executes nothing, but it
/// can panic on malformed opcodes; a panic becomes an error naming the file. Each tensor's data
/// is read only after checking that its storage in the archive holds the bytes its shape claims,
/// so a small file cannot make the reader allocate more than the file holds.
fn read_pth(path: &Path) -> Result<PthContents, String> {
    match std::panic::catch_unwind(|| read_pth_unguarded(path)) {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown");
            Err(format!("malformed pickle (the reader failed: {reason}); prefer safetensors files"))
        }
    }
}

fn read_pth_unguarded(path: &Path) -> Result<PthContents, String> {
    let top = read_top_level_pickle(path)?;
    let mut epoch = None;
    let mut key = None;
    if let Object::Dict(entries) = top {
        for (k, v) in entries {
            let Object::Unicode(k) = k else { continue };
            if k == "epoch" {
                epoch = Some(v.int_or_long().map_err(|_| "`epoch` is not an integer".to_owned())?);
            } else if key.is_none() && STATE_DICT_KEYS.contains(&k.as_str()) && matches!(v, Object::Dict(_)) {
                key = Some(k);
            }
        }
    }
    let pth = PthTensors::new(path, key.as_deref()).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| format!("not a zip archive: {e}"))?;
    let mut tensors = BTreeMap::new();
    for (name, info) in pth.tensor_infos() {
        let tensor = read_pth_tensor(&mut zip, info).map_err(|e| format!("tensor {name}: {e}"))?;
        tensors.insert(name.clone(), tensor);
    }
    if tensors.is_empty() {
        return Err(format!("no tensors found (looked at the top level and under {STATE_DICT_KEYS:?})"));
    }
    Ok((tensors, epoch))
}

/// One tensor's data from its storage entry, after checking that the entry holds what the
/// tensor's offset and shape claim. Offsets count elements (candle's own reader skips bytes).
fn read_pth_tensor<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &candle_core::pickle::TensorInfo,
) -> Result<Tensor, String> {
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous() && !layout.is_contiguous();
    if !layout.is_contiguous() && !fortran {
        return Err(format!("a strided view ({layout:?}) is not supported"));
    }
    let elem = info.dtype.size_in_bytes() as u64;
    let claimed = (layout.start_offset() as u64)
        .checked_add(layout.shape().elem_count() as u64)
        .and_then(|n| n.checked_mul(elem))
        .ok_or("its shape overflows")?;
    let mut entry = zip.by_name(&info.path).map_err(|e| format!("storage {}: {e}", info.path))?;
    if entry.size() < claimed {
        return Err(format!(
            "shape {:?} at offset {} claims {claimed} bytes, but its storage {} holds {}",
            layout.dims(),
            layout.start_offset(),
            info.path,
            entry.size()
        ));
    }
    std::io::copy(&mut entry.by_ref().take(layout.start_offset() as u64 * elem), &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    let dims: Vec<usize> = if fortran { layout.dims().iter().rev().copied().collect() } else { layout.dims().to_vec() };
    let mut bytes = vec![0u8; layout.shape().elem_count() * info.dtype.size_in_bytes()];
    entry.read_exact(&mut bytes).map_err(|e| format!("storage {}: {e}", info.path))?;
    let tensor = Tensor::from_raw_buffer(&bytes, info.dtype, &dims, &Device::Cpu).map_err(|e| e.to_string())?;
    if fortran {
        let reversed: Vec<usize> = (0..dims.len()).rev().collect();
        return tensor.permute(reversed).map_err(|e| e.to_string());
    }
    Ok(tensor)
}

fn read_top_level_pickle(path: &Path) -> Result<Object, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| format!("not a zip archive: {e}"))?;
    let pickle_name = zip
        .file_names()
        .filter_map(|name| name.ok().map(|name| name.into_owned()))
        .find(|name| name.ends_with("data.pkl"))
        .ok_or("no data.pkl inside the archive")?;
    let entry = zip.by_name(&pickle_name).map_err(|e| e.to_string())?;
    if entry.size() > MAX_PICKLE_BYTES {
        return Err(format!(
            "{pickle_name} is {} bytes, more than a state dict's pickle ({MAX_PICKLE_BYTES})",
            entry.size()
        ));
    }
    let mut pickle = Vec::with_capacity(entry.size() as usize);
    entry.take(MAX_PICKLE_BYTES).read_to_end(&mut pickle).map_err(|e| format!("{pickle_name}: {e}"))?;
    // Nesting and memo copies bounded before candle's reader recurses into them.
    crate::pickle_guard::check(&pickle).map_err(|e| format!("{pickle_name}: {e}; prefer safetensors files"))?;
    let mut stack = Stack::empty();
    stack.read_loop(&mut std::io::Cursor::new(pickle)).map_err(|e| format!("{pickle_name}: {e}"))?;
    stack.finalize().map_err(|e| format!("{pickle_name}: {e}"))
}
