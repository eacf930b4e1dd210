//! `cargo xtask bench model`: forward + backward timings of the Dynamic MLP-C head, ResNet-50 and
//! SK-Res2Net-101, beside PyTorch's for the same work on the same machine and thread count.

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
    /// Dynamic MLP-C head at batch 512, ResNet-50 and SK-Res2Net-101 at batch 8 × 224², forward +
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
    /// A Python interpreter with PyTorch: runs the same work in PyTorch in the same run.
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
    /// Rounds of both sides in turn (dmlp, then PyTorch, again), so that both meet the same
    /// machine load; each round's ratio is printed and the JSON carries the best time of each side.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Time only this step (`head`, `resnet` or `sk`), on both sides: for profiling one of them.
    #[arg(long, value_enum)]
    only: Option<ModelStep>,
    /// Print one JSON object as the last line of standard output.
    #[arg(long)]
    json: bool,
    /// cpu or cuda:N (the device is synchronised inside every timer; `--python` compares on
    /// the CPU only: on a GPU, `cargo xtask gpu-check` runs PyTorch beside dmlp).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The steps `bench model` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModelStep {
    Head,
    Resnet,
    Sk,
}

impl ModelStep {
    fn name(self) -> &'static str {
        match self {
            ModelStep::Head => "head",
            ModelStep::Resnet => "resnet",
            ModelStep::Sk => "sk",
        }
    }
}

const HEAD_BATCH: usize = 512;
const RESNET_BATCH: usize = 8;
const IMAGE_SIZE: usize = 224;

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
    let wanted = |step: ModelStep| args.only.is_none_or(|only| only == step);
    let mut head = if wanted(ModelStep::Head) { Some(head_step(&device)?) } else { None };
    let mut resnet =
        if wanted(ModelStep::Resnet) { Some(backbone_step(BackbonePreset::Resnet50, &device)?) } else { None };
    let mut sk =
        if wanted(ModelStep::Sk) { Some(backbone_step(BackbonePreset::Sk2res2net101, &device)?) } else { None };
    let mut rounds: Vec<Round> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let head_s = head.as_mut().map(|step| time_steps(args.head_iters, step)).transpose()?;
        if let Some(head_s) = head_s {
            eprintln!("[round {round}] dmlp  head step (loc_net + loc_att C, batch {HEAD_BATCH}): {head_s:.3} s");
        }
        let resnet_s = resnet.as_mut().map(|step| time_steps(args.resnet_iters, step)).transpose()?;
        if let Some(resnet_s) = resnet_s {
            eprintln!("[round {round}] dmlp  ResNet-50 step (batch {RESNET_BATCH} × {IMAGE_SIZE}²): {resnet_s:.3} s");
        }
        let sk_s = sk.as_mut().map(|step| time_steps(args.sk_iters, step)).transpose()?;
        if let Some(sk_s) = sk_s {
            eprintln!("[round {round}] dmlp  SK-Res2Net-101 step (batch {RESNET_BATCH} × {IMAGE_SIZE}²): {sk_s:.3} s");
        }
        let torch = args.python.as_ref().map(|python| run_torch(python, threads, args)).transpose()?;
        rounds.push(Round { head_s, resnet_s, sk_s, torch });
    }

    println!("{:<34} {:>10} {:>10} {:>8}", "step (forward + backward)", "dmlp s", "torch s", "ratio");
    let row = |name: &str, ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
        (Some(ours), Some(t)) => println!("{name:<34} {ours:>10.3} {t:>10.3} {:>7.2}×", ours / t),
        (Some(ours), None) => println!("{name:<34} {ours:>10.3} {:>10} {:>8}", "-", "-"),
        (None, _) => {}
    };
    let many = rounds.len() > 1;
    for (idx, r) in rounds.iter().enumerate() {
        let tag = if many { format!(" [round {}]", idx + 1) } else { String::new() };
        row(&format!("Dynamic MLP-C head, batch 512{tag}"), r.head_s, r.torch.as_ref().and_then(|t| t.head_step_s));
        row(&format!("ResNet-50, batch 8 × 224²{tag}"), r.resnet_s, r.torch.as_ref().and_then(|t| t.resnet50_step_s));
        row(
            &format!("SK-Res2Net-101, batch 8 × 224²{tag}"),
            r.sk_s,
            r.torch.as_ref().and_then(|t| t.sk2res2net101_step_s),
        );
    }
    let best = |f: &dyn Fn(&Round) -> Option<f64>| rounds.iter().filter_map(f).min_by(f64::total_cmp);
    let (head_s, resnet_s, sk_s) = (best(&|r| r.head_s), best(&|r| r.resnet_s), best(&|r| r.sk_s));
    let torch_head = best(&|r| r.torch.as_ref().and_then(|t| t.head_step_s));
    let torch_resnet = best(&|r| r.torch.as_ref().and_then(|t| t.resnet50_step_s));
    let torch_sk = best(&|r| r.torch.as_ref().and_then(|t| t.sk2res2net101_step_s));
    if many {
        row("Dynamic MLP-C head, best of rounds", head_s, torch_head);
        row("ResNet-50, best of rounds", resnet_s, torch_resnet);
        row("SK-Res2Net-101, best of rounds", sk_s, torch_sk);
    }
    let torch_version = rounds.iter().find_map(|r| r.torch.as_ref().map(|t| t.torch_version.clone()));
    if torch_version.is_some() {
        println!("(ratio = dmlp time / PyTorch time; below 1 means dmlp is faster)");
    }
    if args.json {
        let mut json = serde_json::json!({
            "threads": threads,
            "rounds": rounds.len(),
            "head_step_s": head_s,
            "resnet50_step_s": resnet_s,
            "sk2res2net101_step_s": sk_s,
        });
        if let Some(version) = torch_version {
            json["torch_version"] = version.into();
            json["torch_head_step_s"] = torch_head.into();
            json["torch_resnet50_step_s"] = torch_resnet.into();
            json["torch_sk2res2net101_step_s"] = torch_sk.into();
        }
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One round of `bench model`: each side's median step times.
struct Round {
    head_s: Option<f64>,
    resnet_s: Option<f64>,
    sk_s: Option<f64>,
    torch: Option<TorchTimes>,
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

/// Forward + backward of a backbone's pooled features (no classifier), batch 8 × 224².
fn backbone_step(preset: BackbonePreset, device: &Device) -> anyhow::Result<Step> {
    let config = ModelConfig::image_only(BackboneSpec::Preset(preset), 1000);
    let model = Classifier::new(&config, 0, device)?;
    let images = Tensor::randn(0f32, 1.0, (RESNET_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), device)?;
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
    head_step_s: Option<f64>,
    resnet50_step_s: Option<f64>,
    sk2res2net101_step_s: Option<f64>,
}

fn run_torch(python: &Path, threads: usize, args: &ModelBenchArgs) -> anyhow::Result<TorchTimes> {
    let mut script_args = vec![
        "--threads".into(),
        threads.to_string(),
        "--head-iters".into(),
        args.head_iters.to_string(),
        "--resnet-iters".into(),
        args.resnet_iters.to_string(),
        "--sk-iters".into(),
        args.sk_iters.to_string(),
    ];
    if let Some(only) = args.only {
        script_args.extend(["--only".into(), only.name().into()]);
    }
    let times: TorchTimes = run_python_json(python, "bench_model.py", &script_args)?;
    let shown = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.3} s"));
    eprintln!(
        "torch {} head step: {}, ResNet-50 step: {}, SK-Res2Net-101 step: {}",
        times.torch_version,
        shown(times.head_step_s),
        shown(times.resnet50_step_s),
        shown(times.sk2res2net101_step_s)
    );
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
