//! `cargo xtask bench model`: forward + backward timings of the Dynamic MLP-C head, ResNet-50,
//! SK-Res2Net-101, Swin-T and PVT-v2-b2, beside PyTorch's (timm's, for the transformers) for the
//! same work on the same machine and thread count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use clap::Subcommand;
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_fusion::{FusionConfig, FusionHead, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig};
use dmlp_nn::ParamStore;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Dynamic MLP-C head at batch 512, ResNet-50, SK-Res2Net-101, Swin-T and PVT-v2-b2 at batch
    /// 8 × 224², forward +
    /// backward.
    Model(ModelBenchArgs),
    /// The training ops: conv2d GFLOP/s on ResNet-50's shapes, BatchNorm, whole training steps.
    Ops(crate::bench_ops::OpsBenchArgs),
    /// The input pipeline: training and evaluation transforms per core, beside PIL's.
    Data(crate::bench_data::DataBenchArgs),
    /// `dmlp predict`'s work on 64 photo-sized JPEGs with EXIF GPS and dates (ResNet-50 +
    /// Dynamic MLP-C), beside PyTorch + PIL.
    Predict(crate::bench_predict::PredictBenchArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ModelBenchArgs {
    /// A Python interpreter with PyTorch (and timm, for `swin` and `pvt`): runs the same work in
    /// PyTorch in the same run.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Threads on both sides (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed iterations of the head step (median reported, after one warm-up).
    #[arg(long, default_value_t = 5)]
    head_iters: usize,
    /// Timed iterations of the ResNet-50 step (median reported, after one warm-up).
    #[arg(long, default_value_t = 3)]
    resnet_iters: usize,
    /// Timed iterations of the SK-Res2Net-101 step (median reported, after one warm-up).
    #[arg(long, default_value_t = 2)]
    sk_iters: usize,
    /// Timed iterations of the Swin-T and PVT-v2-b2 steps (median reported, after one warm-up).
    #[arg(long, default_value_t = 2)]
    transformer_iters: usize,
    /// Rounds of both sides in turn (dmlp, then PyTorch, again), so that both meet the same
    /// machine load; each round's ratio is printed and the JSON carries the best time of each side.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Time only this step (`head`, `resnet`, `sk`, `swin` or `pvt`), on both sides.
    #[arg(long, value_enum)]
    only: Option<ModelStep>,
    /// Print one JSON object as the last line of standard output.
    #[arg(long)]
    json: bool,
    /// cpu or cuda:N (the device is synchronised inside every timer; `--python` compares on
    /// the CPU only: on a GPU, `cargo xtask gpu-check` runs PyTorch beside dmlp).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per backbone step (both sides).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Image side of the backbone steps (both sides). ResNet-50 and SK-Res2Net-101 take any
    /// size from 32; a small one (`--batch 1 --image-size 32`) leaves little arithmetic, so the
    /// step times the framework's cost per op. Swin-T and PVT-v2-b2 run at 224 only.
    #[arg(long, default_value_t = 224)]
    image_size: usize,
}

/// The steps `bench model` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub(crate) enum ModelStep {
    Head,
    Resnet,
    Sk,
    Swin,
    Pvt,
}

impl ModelStep {
    const ALL: [ModelStep; 5] = [ModelStep::Head, ModelStep::Resnet, ModelStep::Sk, ModelStep::Swin, ModelStep::Pvt];

    fn name(self) -> &'static str {
        match self {
            ModelStep::Head => "head",
            ModelStep::Resnet => "resnet",
            ModelStep::Sk => "sk",
            ModelStep::Swin => "swin",
            ModelStep::Pvt => "pvt",
        }
    }

    /// What the step runs, for the table.
    fn model(self) -> &'static str {
        match self {
            ModelStep::Head => "Dynamic MLP-C head",
            ModelStep::Resnet => "ResNet-50",
            ModelStep::Sk => "SK-Res2Net-101",
            ModelStep::Swin => "Swin-T",
            ModelStep::Pvt => "PVT-v2-b2",
        }
    }

    /// The JSON key of its time (`torch_` prefixed for PyTorch's), as `bench_model.py` prints it.
    fn key(self) -> &'static str {
        match self {
            ModelStep::Head => "head_step_s",
            ModelStep::Resnet => "resnet50_step_s",
            ModelStep::Sk => "sk2res2net101_step_s",
            ModelStep::Swin => "swin_tiny_step_s",
            ModelStep::Pvt => "pvt_v2_b2_step_s",
        }
    }

    fn iters(self, args: &ModelBenchArgs) -> usize {
        match self {
            ModelStep::Head => args.head_iters,
            ModelStep::Resnet => args.resnet_iters,
            ModelStep::Sk => args.sk_iters,
            ModelStep::Swin | ModelStep::Pvt => args.transformer_iters,
        }
    }

    fn build(self, args: &ModelBenchArgs, device: &Device) -> anyhow::Result<Step> {
        let images = (args.batch, args.image_size);
        match self {
            ModelStep::Head => head_step(device),
            ModelStep::Resnet => backbone_step(BackbonePreset::Resnet50, images, device),
            ModelStep::Sk => backbone_step(BackbonePreset::Sk2res2net101, images, device),
            ModelStep::Swin => backbone_step(BackbonePreset::SwinTiny, images, device),
            ModelStep::Pvt => backbone_step(BackbonePreset::PvtV2B2, images, device),
        }
    }

    /// What the step is, with its batch (and the image size `args` give the backbones).
    fn describe(self, args: &ModelBenchArgs) -> String {
        match self {
            ModelStep::Head => format!("{}, batch {HEAD_BATCH}", self.model()),
            _ => format!("{}, batch {} × {}²", self.model(), args.batch, args.image_size),
        }
    }
}

const HEAD_BATCH: usize = 512;
/// The transformers' only image side (and the backbones' default, `--image-size`).
const DEFAULT_IMAGE_SIZE: usize = 224;

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Model(args) => bench_model(&args),
        BenchCommand::Ops(args) => crate::bench_ops::run(&args),
        BenchCommand::Data(args) => crate::bench_data::run(&args),
        BenchCommand::Predict(args) => crate::bench_predict::run(&args),
    }
}

/// Sets the thread count candle and gemm will use (they read RAYON_NUM_THREADS when their pools
/// start) and returns it.
pub(crate) fn set_threads(threads: Option<usize>) -> usize {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // SAFETY: called first thing in the command, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; `cargo xtask-release bench ...` gives real figures");
    }
    threads
}

fn bench_model(args: &ModelBenchArgs) -> anyhow::Result<ExitCode> {
    let threads = set_threads(args.threads);
    eprintln!("bench model: {threads} threads, release build: {}", !cfg!(debug_assertions));

    let device = dmlp_model::parse_device(&args.device)?;
    if !device.is_cpu() && args.python.is_some() {
        bail!("--python compares on the CPU; on a GPU, `cargo xtask gpu-check --python PY` runs PyTorch beside dmlp");
    }
    let wanted: Vec<ModelStep> =
        ModelStep::ALL.into_iter().filter(|step| args.only.is_none_or(|only| only == *step)).collect();
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.image_size < 32 {
        bail!("--image-size {} is below 32, the smallest the backbones downsample to 1 × 1", args.image_size);
    }
    // The last stage's BatchNorm sees batch × ⌈size / 32⌉² values per channel, and training
    // statistics need two.
    if args.batch * args.image_size.div_ceil(32).pow(2) < 2 {
        bail!(
            "--batch 1 --image-size {} leaves the last BatchNorm one value per channel: use --batch 2 or --image-size 64",
            args.image_size
        );
    }
    let transformers = wanted.iter().any(|step| matches!(step, ModelStep::Swin | ModelStep::Pvt));
    if transformers && args.image_size != DEFAULT_IMAGE_SIZE {
        bail!("Swin-T and PVT-v2-b2 run at 224² only: add `--only resnet` or `--only sk` with --image-size");
    }
    let mut steps: Vec<(ModelStep, Step)> =
        wanted.iter().map(|&kind| Ok((kind, kind.build(args, &device)?))).collect::<anyhow::Result<_>>()?;
    let mut rounds: Vec<Round> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut ours = HashMap::new();
        for (kind, step) in &mut steps {
            let seconds = time_steps(kind.iters(args), step)?;
            eprintln!("[round {round}] dmlp  {} step: {seconds:.3} s", kind.describe(args));
            ours.insert(*kind, seconds);
        }
        let torch = args.python.as_ref().map(|python| run_torch(python, threads, args)).transpose()?;
        rounds.push(Round { ours, torch });
    }

    println!("{:<38} {:>10} {:>10} {:>8}", "step (forward + backward)", "dmlp s", "torch s", "ratio");
    let row = |name: &str, ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
        (Some(ours), Some(t)) => println!("{name:<38} {ours:>10.3} {t:>10.3} {:>7.2}×", ours / t),
        (Some(ours), None) => println!("{name:<38} {ours:>10.3} {:>10} {:>8}", "-", "-"),
        (None, _) => {}
    };
    let many = rounds.len() > 1;
    for (idx, r) in rounds.iter().enumerate() {
        let tag = if many { format!(" [round {}]", idx + 1) } else { String::new() };
        for &kind in &wanted {
            row(&format!("{}{tag}", kind.describe(args)), r.ours.get(&kind).copied(), r.theirs(kind));
        }
    }
    let best = |f: &dyn Fn(&Round) -> Option<f64>| rounds.iter().filter_map(f).min_by(f64::total_cmp);
    if many {
        for &kind in &wanted {
            row(
                &format!("{}, best of rounds", kind.describe(args)),
                best(&|r| r.ours.get(&kind).copied()),
                best(&|r| r.theirs(kind)),
            );
        }
    }
    let torch_version = rounds.iter().find_map(|r| r.torch.as_ref().map(|t| t.torch_version.clone()));
    if torch_version.is_some() {
        println!("(ratio = dmlp time / PyTorch time; below 1 means dmlp is faster)");
    }
    if args.json {
        let mut json = serde_json::json!({
            "threads": threads,
            "rounds": rounds.len(),
            "batch": args.batch,
            "image_size": args.image_size,
        });
        for kind in ModelStep::ALL {
            json[kind.key()] = best(&|r| r.ours.get(&kind).copied()).into();
        }
        if let Some(version) = torch_version {
            json["torch_version"] = version.into();
            for kind in ModelStep::ALL {
                json[format!("torch_{}", kind.key())] = best(&|r| r.theirs(kind)).into();
            }
        }
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One round of `bench model`: each side's median step times.
struct Round {
    ours: HashMap<ModelStep, f64>,
    torch: Option<TorchTimes>,
}

impl Round {
    fn theirs(&self, kind: ModelStep) -> Option<f64> {
        self.torch.as_ref().and_then(|t| t.times.get(kind.key()).copied().flatten())
    }
}

type Step = Box<dyn FnMut() -> anyhow::Result<()>>;

/// Median of `iters` timed runs after one warm-up.
fn time_steps(iters: usize, step: &mut Step) -> anyhow::Result<f64> {
    step()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn head_step(device: &Device) -> anyhow::Result<Step> {
    let store = ParamStore::new(0);
    let config = FusionConfig::with_defaults(FusionKind::DynamicMlpC);
    let head = FusionHead::new(
        2048,
        Metadata::GeoTemporal.n_inputs(),
        &config,
        dmlp_nn::DropoutRng::new(0),
        store.var_builder(DType::F32, device),
    )?;
    let features = Tensor::randn(0f32, 1.0, (HEAD_BATCH, 2048), device)?;
    let loc = Tensor::rand(-1f32, 1.0, (HEAD_BATCH, 6), device)?;
    let device = device.clone();
    Ok(Box::new(move || {
        let out = head.forward_t(&features, &loc, true)?;
        let grads = out.fused.sum_all()?.backward()?;
        drop(grads);
        // The timer stops when the device is done, not when the work is queued.
        device.synchronize()?;
        Ok(())
    }))
}

/// Forward + backward of a backbone's pooled features (no classifier) on `batch` random
/// images of `size`² (`(batch, size)`).
fn backbone_step(preset: BackbonePreset, (batch, size): (usize, usize), device: &Device) -> anyhow::Result<Step> {
    let config = ModelConfig::image_only(BackboneSpec::Preset(preset), 1000);
    let model = Classifier::new(&config, 0, device)?;
    let images = Tensor::randn(0f32, 1.0, (batch, 3, size, size), device)?;
    let device = device.clone();
    Ok(Box::new(move || {
        let out = model.forward_t(&images, None, true)?;
        let grads = out.features.sum_all()?.backward()?;
        drop(grads);
        device.synchronize()?;
        Ok(())
    }))
}

#[derive(Debug, serde::Deserialize)]
struct TorchTimes {
    torch_version: String,
    /// Step times by [`ModelStep::key`] (null for steps not run).
    #[serde(flatten)]
    times: HashMap<String, Option<f64>>,
}

fn run_torch(python: &Path, threads: usize, args: &ModelBenchArgs) -> anyhow::Result<TorchTimes> {
    let mut script_args = vec![
        "--threads".into(),
        threads.to_string(),
        "--resnet-batch".into(),
        args.batch.to_string(),
        "--image-size".into(),
        args.image_size.to_string(),
    ];
    for (flag, iters) in [
        ("--head-iters", args.head_iters),
        ("--resnet-iters", args.resnet_iters),
        ("--sk-iters", args.sk_iters),
        ("--transformer-iters", args.transformer_iters),
    ] {
        script_args.extend([flag.to_string(), iters.to_string()]);
    }
    if let Some(only) = args.only {
        script_args.extend(["--only".into(), only.name().into()]);
    }
    let times: TorchTimes = run_python_json(python, "bench_model.py", &script_args)?;
    let shown: Vec<String> = ModelStep::ALL
        .iter()
        .filter_map(|kind| times.times.get(kind.key()).copied().flatten().map(|t| format!("{}: {t:.3} s", kind.name())))
        .collect();
    eprintln!("torch {} {}", times.torch_version, shown.join(", "));
    Ok(times)
}

/// Runs `xtask/python/<script>` with `python` and parses the JSON object on its last line of
/// standard output (the peer benchmarks' convention).
pub(crate) fn run_python_json<T: serde::de::DeserializeOwned>(
    python: &Path,
    script: &str,
    args: &[String],
) -> anyhow::Result<T> {
    let script = crate::paths::project_root().join("xtask").join("python").join(script);
    eprintln!("peer: running {} {}", python.display(), script.display());
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!("{} failed ({}):\n{}", script.display(), output.status, String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().with_context(|| format!("{} printed nothing", script.display()))?;
    serde_json::from_str(last).with_context(|| format!("parsing the output of {}: {last:?}", script.display()))
}
