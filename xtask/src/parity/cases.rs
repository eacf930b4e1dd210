//! Reading and computing each kind of case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use dmlp_backbones::BackboneSpec;
use dmlp_baselines::priorsnet::{PresenceBatch, PriorsNet, PriorsNetConfig, PriorsNetTrainer};
use dmlp_fusion::{FusionConfig, FusionHead};
use dmlp_geo::{Metadata, Observation};
use dmlp_model::{Classifier, LoadPolicy, ModelConfig, ModelDType, UnusedKeys, WeightsFile};
use dmlp_nn::ParamStore;
use dmlp_train::{AdamConfig, Mixup, Optimizer, Sgd, SgdConfig, StepContext, StepInput, Trainable, classifier_step};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Outcome;
use super::compare::{TensorCheck, Tolerance};

/// Reads `dir/case.json` and runs it. The error side carries the kind when it was read.
pub(super) fn load_and_run(dir: &Path, device: &Device) -> Result<(String, Outcome), (String, anyhow::Error)> {
    let unknown = || "?".to_owned();
    let path = dir.join("case.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(|e| (unknown(), e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", path.display()))
        .map_err(|e| (unknown(), e))?;
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| anyhow!("{}: no \"kind\" string", path.display()))
        .map_err(|e| (unknown(), e))?
        .to_owned();
    let outcome = match kind.as_str() {
        "encoding" => parse(&path, value).and_then(|case| run_encoding(&case)),
        "fusion" => parse(&path, value).and_then(|case| run_fusion(dir, &case, device)),
        "model" => parse(&path, value).and_then(|case| run_model(dir, &case, device)),
        "checkpoint" => parse(&path, value).and_then(|case| run_checkpoint(dir, &case)),
        "train_step" => parse(&path, value).and_then(|case| run_train_step(dir, &case, device)),
        "priorsnet_step" => parse(&path, value).and_then(|case| run_priorsnet_step(dir, &case, device)),
        "pretrained" => parse(&path, value).and_then(|case| run_pretrained(dir, &case, device)),
        other => Err(anyhow!(
            "unknown case kind {other:?}: expected encoding, fusion, model, checkpoint, train_step, priorsnet_step or \
             pretrained"
        )),
    };
    match outcome {
        Ok(outcome) => Ok((kind, outcome)),
        Err(err) => Err((kind, err)),
    }
}

fn parse<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(value).with_context(|| format!("{}: not a valid case", path.display()))
}

fn verdict(checks: Vec<TensorCheck>) -> Outcome {
    if checks.iter().all(TensorCheck::passed) { Outcome::Passed(checks) } else { Outcome::Failed(checks) }
}

fn load_tensors(dir: &Path, file: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let path = dir.join(file);
    candle_core::safetensors::load(&path, device).with_context(|| format!("reading {}", path.display()))
}

fn take(tensors: &HashMap<String, Tensor>, name: &str, file: &Path) -> anyhow::Result<Tensor> {
    tensors.get(name).cloned().with_context(|| format!("{} has no tensor {name:?}", file.display()))
}

/// Compares every expected tensor with the computed one of the same name; an expected tensor
/// this computation does not produce is an error, not a silent skip.
fn compare_all(
    computed: &[(&str, Option<Tensor>)],
    expected: &HashMap<String, Tensor>,
    tolerance: &Tolerance,
) -> anyhow::Result<Vec<TensorCheck>> {
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    let mut checks = Vec::new();
    for name in names {
        let actual = computed
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, t)| t.as_ref())
            .with_context(|| format!("the expected tensor {name:?} is not something this case computes"))?;
        checks.push(TensorCheck::new(name, actual, &expected[name], tolerance)?);
    }
    if checks.is_empty() {
        bail!("the expected file holds no tensors");
    }
    Ok(checks)
}

#[derive(Debug, Deserialize)]
struct EncodingCase {
    tolerance: Tolerance,
    cases: Vec<EncodingVector>,
}

#[derive(Debug, Deserialize)]
struct EncodingVector {
    latitude: Option<f64>,
    longitude: Option<f64>,
    date: Option<String>,
    metadata: Metadata,
    expected: Vec<f64>,
}

fn run_encoding(case: &EncodingCase) -> anyhow::Result<Outcome> {
    if case.cases.is_empty() {
        bail!("an encoding case with no vectors");
    }
    let mut per_mode: Vec<(Metadata, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut checks = Vec::new();
    for (idx, vector) in case.cases.iter().enumerate() {
        let observation = Observation::parse(vector.latitude, vector.longitude, vector.date.as_deref())
            .with_context(|| format!("vector #{idx}"))?;
        let got = observation.encode(vector.metadata);
        let label = format!(
            "vector #{idx} ({:?}, {:?}, {:?}, {})",
            vector.latitude, vector.longitude, vector.date, vector.metadata
        );
        if got.len() != vector.expected.len() {
            bail!("{label}: encoded width {}, expected {}", got.len(), vector.expected.len());
        }
        let single = TensorCheck::from_values(&label, &got, &vector.expected, &case.tolerance);
        if !single.passed() {
            checks.push(single);
        }
        match per_mode.iter_mut().find(|(m, _, _)| *m == vector.metadata) {
            Some((_, actual, expected)) => {
                actual.extend(&got);
                expected.extend(&vector.expected);
            }
            None => per_mode.push((vector.metadata, got, vector.expected.clone())),
        }
    }
    for (metadata, actual, expected) in &per_mode {
        let n = actual.len() / metadata.n_inputs();
        checks.insert(
            0,
            TensorCheck::from_values(&format!("{metadata} ({n} vectors)"), actual, expected, &case.tolerance),
        );
    }
    Ok(verdict(checks))
}

#[derive(Debug, Deserialize)]
struct FusionCase {
    metadata: Metadata,
    fusion: FusionConfig,
    image_features_dim: usize,
    weights: WeightFiles,
    inputs: PathBuf,
    expected: PathBuf,
    #[serde(default = "strict_keys")]
    unused_weight_keys: UnusedKeys,
    tolerance: Tolerance,
}

fn strict_keys() -> UnusedKeys {
    UnusedKeys::Error
}

/// A case's `weights`: one file, or several whose tensors together are the model's (so that
/// committed cases can share a large part, such as a 256-wide `loc_net`). A name in two files is
/// an error.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WeightFiles {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl WeightFiles {
    fn paths(&self) -> &[PathBuf] {
        match self {
            WeightFiles::One(path) => std::slice::from_ref(path),
            WeightFiles::Many(paths) => paths,
        }
    }
}

fn load_weights(dir: &Path, files: &WeightFiles, store: &ParamStore, unused_keys: UnusedKeys) -> anyhow::Result<()> {
    let mut paths = files.paths().iter();
    let Some(first) = paths.next() else { bail!("\"weights\" names no file") };
    let mut weights = WeightsFile::read(&dir.join(first))?;
    for path in paths {
        let more = WeightsFile::read(&dir.join(path))?;
        for (name, tensor) in more.tensors {
            if weights.tensors.insert(name.clone(), tensor).is_some() {
                bail!("{name} is in {} and in an earlier weights file", path.display());
            }
        }
    }
    weights.load_into(store, LoadPolicy { unused_keys, allow_missing: false })?;
    Ok(())
}

fn run_fusion(dir: &Path, case: &FusionCase, device: &Device) -> anyhow::Result<Outcome> {
    let store = ParamStore::zeroed();
    let vb = store.var_builder(DType::F32, device);
    let head = FusionHead::new(
        case.image_features_dim,
        case.metadata.n_inputs(),
        &case.fusion,
        dmlp_nn::DropoutRng::new(0),
        vb,
    )?;
    load_weights(dir, &case.weights, &store, case.unused_weight_keys)?;
    let inputs = load_tensors(dir, &case.inputs, device)?;
    let features = take(&inputs, "image_features", &case.inputs)?;
    let loc = take(&inputs, "loc", &case.inputs)?;
    let out = head.forward_t(&features, &loc, false)?;
    let expected = load_tensors(dir, &case.expected, &Device::Cpu)?;
    let computed = [("loc_features", Some(out.loc_features)), ("fused", Some(out.fused))];
    Ok(verdict(compare_all(&computed, &expected, &case.tolerance)?))
}

#[derive(Debug, Deserialize)]
struct ModelCase {
    backbone: BackboneSpec,
    fusion: Option<FusionConfig>,
    metadata: Option<Metadata>,
    num_classes: usize,
    weights: WeightFiles,
    #[serde(default = "strict_keys")]
    unused_weight_keys: UnusedKeys,
    inputs: PathBuf,
    expected: PathBuf,
    tolerance: Tolerance,
}

fn run_model(dir: &Path, case: &ModelCase, device: &Device) -> anyhow::Result<Outcome> {
    let config = ModelConfig {
        pretrained: None,
        backbone: Some(case.backbone.clone()),
        feature_dim: None,
        num_classes: case.num_classes,
        metadata: case.metadata,
        fusion: case.fusion.clone(),
        dtype: ModelDType::F32,
    };
    let model = Classifier::new_zeroed(&config, device)?;
    load_weights(dir, &case.weights, model.store(), case.unused_weight_keys)?;
    let inputs = load_tensors(dir, &case.inputs, device)?;
    let image = take(&inputs, "image", &case.inputs)?;
    let loc = if case.fusion.is_some() { Some(take(&inputs, "loc", &case.inputs)?) } else { None };
    let out = model.forward_t(&image, loc.as_ref(), false)?;
    let expected = load_tensors(dir, &case.expected, &Device::Cpu)?;
    let computed = [
        ("logits", Some(out.logits)),
        ("features", Some(out.features)),
        ("loc_features", out.loc_features),
        ("fused", out.fused),
    ];
    Ok(verdict(compare_all(&computed, &expected, &case.tolerance)?))
}

#[derive(Debug, Deserialize)]
struct PretrainedCase {
    backbone: BackboneSpec,
    /// A path (relative to the case folder) or an `hf:ORG/NAME[@REV]` id.
    weights: String,
    /// The Hugging Face cache an `hf:` id resolves in, offline (relative to the case folder).
    hf_cache: Option<PathBuf>,
    inputs: PathBuf,
    expected: PathBuf,
    loaded: usize,
    skipped: Vec<String>,
    tolerance: Tolerance,
}

/// A backbone initialised through `[model] pretrained`'s own path (resolve → read → load the
/// backbone by name), then run in eval mode. `num_batches_tracked` entries are neither loaded
/// nor skipped on either side.
fn run_pretrained(dir: &Path, case: &PretrainedCase, device: &Device) -> anyhow::Result<Outcome> {
    let (source, hub) = match dmlp_pretrained::WeightsSource::parse(&case.weights)? {
        dmlp_pretrained::WeightsSource::Hub(_) => {
            let cache = case.hf_cache.as_ref().context("an hf: id needs the case's hf_cache folder")?;
            (case.weights.clone(), dmlp_pretrained::HubSettings::offline(dir.join(cache)))
        }
        dmlp_pretrained::WeightsSource::File(path) => (
            dir.join(path).to_string_lossy().into_owned(),
            // A file needs no cache; an empty folder keeps the Hub out of it.
            dmlp_pretrained::HubSettings::offline(dir.join("no-hub-cache")),
        ),
    };
    let config =
        ModelConfig { pretrained: Some(source.clone()), ..ModelConfig::image_only(case.backbone.clone(), 1000) };
    let model = Classifier::new(&config, 0, device)?;
    let resolved = dmlp_experiment::resolve_pretrained(&source, &hub)?;
    let init = dmlp_experiment::load_pretrained(&model, resolved)?;
    let inputs = load_tensors(dir, &case.inputs, device)?;
    let image = take(&inputs, "image", &case.inputs)?;
    let out = model.forward_t(&image, None, false)?;
    let expected = load_tensors(dir, &case.expected, &Device::Cpu)?;
    let mut checks = compare_all(&[("features", Some(out.features))], &expected, &case.tolerance)?;
    let exact = Tolerance { rel_l2: None, max_abs: Some(0.0) };
    checks.push(TensorCheck::from_values(
        &format!("loaded: {} backbone tensors (expected {})", init.load.loaded, case.loaded),
        &[init.load.loaded as f64],
        &[case.loaded as f64],
        &exact,
    ));
    let not_counter = |name: &&String| !name.ends_with("num_batches_tracked");
    let skipped: Vec<&String> = init.load.skipped.keys().filter(not_counter).collect();
    let mut expected_skipped: Vec<&String> = case.skipped.iter().filter(not_counter).collect();
    expected_skipped.sort();
    let same = skipped == expected_skipped;
    checks.push(TensorCheck::from_values(
        &if same {
            format!("skipped: {skipped:?}")
        } else {
            format!("skipped: {skipped:?}, expected {expected_skipped:?}")
        },
        &[f64::from(u8::from(!same))],
        &[0.0],
        &exact,
    ));
    Ok(verdict(checks))
}

#[derive(Debug, Deserialize)]
struct CheckpointCase {
    checkpoint: PathBuf,
    expected: PathBuf,
    epoch: Option<i64>,
    tolerance: Tolerance,
}

fn run_checkpoint(dir: &Path, case: &CheckpointCase) -> anyhow::Result<Outcome> {
    let file = WeightsFile::read(&dir.join(&case.checkpoint))?;
    let expected = load_tensors(dir, &case.expected, &Device::Cpu)?;
    let missing: Vec<&String> = expected.keys().filter(|k| !file.tensors.contains_key(*k)).collect();
    let extra: Vec<&String> = file.tensors.keys().filter(|k| !expected.contains_key(*k)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!("the checkpoint's tensors differ from the expected ones: missing {missing:?}, unexpected {extra:?}");
    }
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    let (mut all_actual, mut all_expected) = (Vec::new(), Vec::new());
    let mut checks = Vec::new();
    for name in names {
        let check = TensorCheck::new(name, &file.tensors[name], &expected[name], &case.tolerance)?;
        let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?) };
        all_actual.extend(flat(&file.tensors[name])?);
        all_expected.extend(flat(&expected[name])?);
        if !check.passed() {
            checks.push(check);
        }
    }
    let label = format!("all {} tensors, module. prefix stripped", expected.len());
    checks.insert(0, TensorCheck::from_values(&label, &all_actual, &all_expected, &case.tolerance));
    if let Some(epoch) = case.epoch {
        let read = file.epoch.context("the checkpoint holds no epoch")?;
        let exact = Tolerance { rel_l2: None, max_abs: Some(0.0) };
        checks.push(TensorCheck::from_values("epoch", &[read as f64], &[epoch as f64], &exact));
    }
    Ok(verdict(checks))
}

/// A training-step case's optimiser: `sgd` (`momentum`, `nesterov`), or `adam`/`adamw`
/// (`betas`, `eps`), in PyTorch's semantics.
#[derive(Debug, Deserialize)]
struct OptimizerSpec {
    kind: String,
    lr: f64,
    #[serde(default)]
    momentum: f64,
    weight_decay: f64,
    #[serde(default)]
    nesterov: bool,
    #[serde(default = "adam_betas")]
    betas: [f64; 2],
    #[serde(default = "adam_eps")]
    eps: f64,
}

/// PyTorch's defaults.
fn adam_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn adam_eps() -> f64 {
    1e-8
}

impl OptimizerSpec {
    /// The optimiser over `vars`, or why the case asks for one that is not implemented.
    fn build(&self, vars: Vec<(String, candle_core::Var)>) -> Result<Optimizer, String> {
        let adam = |decoupled| AdamConfig {
            beta1: self.betas[0],
            beta2: self.betas[1],
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled,
        };
        match self.kind.as_str() {
            "sgd" => Ok(Optimizer::Sgd(Sgd::new(
                vars,
                SgdConfig { momentum: self.momentum, weight_decay: self.weight_decay, nesterov: self.nesterov },
            ))),
            "adam" => Ok(Optimizer::Adam(dmlp_train::Adam::new(vars, adam(false)))),
            "adamw" => Ok(Optimizer::Adam(dmlp_train::Adam::new(vars, adam(true)))),
            other => Err(format!("optimizer {other:?}: sgd, adam and adamw are implemented")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct BatchNormSpec {
    momentum: f64,
    running_var: String,
}

#[derive(Debug, Deserialize)]
struct TrainTolerance {
    losses_max_abs: f64,
    rel_l2: Option<f64>,
    #[serde(default)]
    per_tensor: HashMap<String, f64>,
}

#[derive(Debug, Deserialize)]
struct TrainStepCase {
    backbone: Option<BackboneSpec>,
    fusion: Option<FusionConfig>,
    metadata: Option<Metadata>,
    num_classes: usize,
    weights: WeightFiles,
    inputs: PathBuf,
    expected: PathBuf,
    #[serde(default = "strict_keys")]
    unused_weight_keys: UnusedKeys,
    mixup_lambda: f64,
    label_smoothing: f64,
    dropout: Option<String>,
    steps: usize,
    optimizer: OptimizerSpec,
    batch_norm: Option<BatchNormSpec>,
    tolerance: TrainTolerance,
}

fn run_train_step(dir: &Path, case: &TrainStepCase, device: &Device) -> anyhow::Result<Outcome> {
    if !matches!(case.optimizer.kind.as_str(), "sgd" | "adam" | "adamw") {
        return Ok(Outcome::Unsupported(format!(
            "optimizer {:?}: sgd, adam and adamw are implemented",
            case.optimizer.kind
        )));
    }
    if let Some(bn) = &case.batch_norm
        && (bn.momentum != 0.1 || bn.running_var != "unbiased")
    {
        return Ok(Outcome::Unsupported(format!(
            "batch norm momentum {} with {} running variance",
            bn.momentum, bn.running_var
        )));
    }
    if case.dropout.as_deref() != Some("disabled") {
        bail!("a training-step case must disable dropout (\"dropout\": \"disabled\") to be deterministic");
    }
    let inputs = load_tensors(dir, &case.inputs, device)?;
    let target = take(&inputs, "target", &case.inputs)?;
    let perm = take(&inputs, "perm", &case.inputs)?;
    let features = if case.backbone.is_none() { Some(take(&inputs, "image_features", &case.inputs)?) } else { None };
    let config = ModelConfig {
        pretrained: None,
        backbone: case.backbone.clone(),
        feature_dim: features.as_ref().map(|f| f.dim(1)).transpose()?,
        num_classes: case.num_classes,
        metadata: case.metadata,
        fusion: case.fusion.clone().map(|f| FusionConfig { loc_dropout: 0.0, ..f }),
        dtype: ModelDType::F32,
    };
    let model = Classifier::new_zeroed(&config, device)?;
    load_weights(dir, &case.weights, model.store(), case.unused_weight_keys)?;
    let loc = if case.fusion.is_some() { Some(take(&inputs, "loc", &case.inputs)?) } else { None };
    let images = if features.is_none() { Some(take(&inputs, "image", &case.inputs)?) } else { None };
    let input = match (&features, &images) {
        (Some(features), _) => StepInput::Features(features),
        (None, Some(images)) => StepInput::Images(images),
        (None, None) => bail!("a training-step case needs image_features or image"),
    };
    let o = &case.optimizer;
    let mut optimizer = match o.build(model.store().trainable_vars()) {
        Ok(optimizer) => optimizer,
        Err(why) => return Ok(Outcome::Unsupported(why)),
    };
    let mix = Mixup { lambda: case.mixup_lambda, perm, cut: None };
    // The trainer's own step, with the case's λ and permutation instead of drawn ones.
    let mut losses = Vec::with_capacity(case.steps);
    for iteration in 0..case.steps {
        let step = StepContext { epoch: 1, iteration, lr: o.lr };
        let out = classifier_step(
            &model,
            &mut optimizer,
            input,
            loc.as_ref(),
            &target,
            &mix,
            case.label_smoothing,
            1,
            &mut dmlp_train::Amp::f32(),
            &step,
        )?;
        losses.push(out.loss);
    }
    let watched = |name: &str| model.store().get(name).map(|var| var.as_tensor().clone());
    Ok(verdict(compare_steps(dir, &case.expected, &losses, &case.tolerance, &watched)?))
}

/// Checks `losses` and every `after.NAME` tensor of the expected file against the model's.
fn compare_steps(
    dir: &Path,
    expected_file: &Path,
    losses: &[f64],
    tolerance: &TrainTolerance,
    watched: &dyn Fn(&str) -> Option<Tensor>,
) -> anyhow::Result<Vec<TensorCheck>> {
    let expected = load_tensors(dir, expected_file, &Device::Cpu)?;
    let mut checks = Vec::new();
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    for name in names {
        if name == "losses" {
            let reference: Vec<f64> = expected[name].to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            if reference.len() != losses.len() {
                bail!("expected {} losses, ran {} steps", reference.len(), losses.len());
            }
            let tol = Tolerance { rel_l2: None, max_abs: Some(tolerance.losses_max_abs) };
            checks.push(TensorCheck::from_values("losses", losses, &reference, &tol));
            continue;
        }
        let Some(param) = name.strip_prefix("after.") else {
            // Other expected tensors (a case's outputs before its steps) are checked by the caller.
            continue;
        };
        let actual = watched(param).with_context(|| format!("{name}: the model has no {param}"))?;
        let rel_l2 = tolerance.per_tensor.get(name).copied().or(tolerance.rel_l2);
        let tol = Tolerance { rel_l2, max_abs: None };
        checks.push(TensorCheck::new(name, &actual, &expected[name], &tol)?);
    }
    if checks.is_empty() {
        bail!("the expected file holds neither losses nor after.* tensors");
    }
    Ok(checks)
}

#[derive(Debug, Deserialize)]
struct AdamSpec {
    kind: String,
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
}

#[derive(Debug, Deserialize)]
struct PriorsNetStepCase {
    num_inputs: usize,
    num_classes: usize,
    #[serde(default = "default_filts")]
    num_filts: usize,
    weights: WeightFiles,
    inputs: PathBuf,
    expected: PathBuf,
    loss: String,
    pos_weight: f64,
    steps: usize,
    dropout: Option<String>,
    optimizer: AdamSpec,
    tolerance: TrainTolerance,
}

fn default_filts() -> usize {
    PriorsNet::HIDDEN
}

/// PriorsNet's step as its trainer runs it, on the case's presences and background locations.
fn run_priorsnet_step(dir: &Path, case: &PriorsNetStepCase, device: &Device) -> anyhow::Result<Outcome> {
    if case.loss != "full_loss" {
        return Ok(Outcome::Unsupported(format!("loss {:?}: only geo_prior's full_loss is implemented", case.loss)));
    }
    if case.optimizer.kind != "adam" {
        return Ok(Outcome::Unsupported(format!("optimizer {:?}: only adam is implemented", case.optimizer.kind)));
    }
    if case.num_filts != PriorsNet::HIDDEN {
        return Ok(Outcome::Unsupported(format!(
            "num_filts {}: PriorsNet is {} wide",
            case.num_filts,
            PriorsNet::HIDDEN
        )));
    }
    if case.dropout.as_deref() != Some("disabled") {
        bail!("a PriorsNet step case must disable dropout (\"dropout\": \"disabled\") to be deterministic");
    }
    let model = PriorsNet::new(case.num_inputs, case.num_classes, 0.0, 0, device)?;
    load_weights(dir, &case.weights, model.store(), UnusedKeys::Error)?;
    let inputs = load_tensors(dir, &case.inputs, device)?;
    let loc = take(&inputs, "loc", &case.inputs)?;
    let background = take(&inputs, "background", &case.inputs)?;
    let labels: Vec<u32> = take(&inputs, "target", &case.inputs)?.to_dtype(DType::U32)?.to_vec1()?;
    let probabilities = model.prior(&loc)?;
    let o = &case.optimizer;
    let config = PriorsNetConfig {
        lr: o.lr,
        pos_weight: Some(case.pos_weight),
        dropout: 0.0,
        batch_size: labels.len(),
        ..PriorsNetConfig::default()
    };
    let adam =
        AdamConfig { beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weight_decay: o.weight_decay, decoupled: false };
    let mut trainer = PriorsNetTrainer::with_adam(&model, &config, adam)?;
    let mut losses = Vec::with_capacity(case.steps);
    for iteration in 0..case.steps {
        let batch = PresenceBatch { inputs: loc.clone(), labels: labels.clone(), background: Some(background.clone()) };
        losses.push(trainer.train_step(batch, &StepContext { epoch: 1, iteration, lr: o.lr })?.loss);
    }
    let watched = |name: &str| model.store().get(name).map(|var| var.as_tensor().clone());
    let mut checks = compare_steps(dir, &case.expected, &losses, &case.tolerance, &watched)?;
    let expected = load_tensors(dir, &case.expected, &Device::Cpu)?;
    if let Some(reference) = expected.get("probabilities") {
        let tol = Tolerance { rel_l2: case.tolerance.rel_l2, max_abs: None };
        checks.insert(0, TensorCheck::new("probabilities", &probabilities, reference, &tol)?);
    }
    Ok(verdict(checks))
}
