//! `cargo xtask smoke-train`: CI's proof that training works end to end. A tiny fused model on
//! tiny synthetic data must reach three times chance top-1, and a run stopped after epoch 3 and
//! resumed must end with the uninterrupted run's metrics (wall-clock fields aside), and the same
//! run in bf16 mixed precision must learn within a few points of f32 and checkpoint f32 weights.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use candle_core::Device;
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_experiment::{Provenance, RunConfig, RunOptions, train_run};
use dmlp_train::{EpochMetrics, RunDir, Silent};

#[derive(Debug, clap::Args)]
pub(crate) struct SmokeTrainArgs {
    /// Working folder (default: target/smoke-train, cleared first).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The device the runs train on (`cpu`, or `cuda:N` in a CUDA build).
    #[arg(long, default_value = "cpu")]
    device: String,
}

const CONFIG: &str = r#"
[model]
backbone = { type = "resnet", block = "basic", layers = [1, 1, 1, 1], width = 8 }
num_classes = 9
metadata = "geo_temporal"

[model.fusion]
type = "dynamic_mlp_c"
mlp_d = 32
mlp_h = 8

[data]
root = "data"
image_size = 16
workers = 2

[train]
epochs = 6
batch_size = 16
lr = 0.1
warmup_epochs = 1
seed = 3
"#;

/// How many top-1 points a bf16 run may trail the f32 one by.
const BF16_POINTS: f64 = 10.0;

/// The distinct dtypes of the floating-point tensors (weights and optimiser state) in a run's
/// last checkpoint.
fn checkpoint_dtypes(run: &Path) -> anyhow::Result<Vec<String>> {
    let checkpoint = RunDir::open(run)?.checkpoint("last")?.context("the bf16 run left no checkpoint")?;
    let model = candle_core::safetensors::load(&checkpoint.model, &Device::Cpu)?;
    let mut dtypes: Vec<String> = model
        .values()
        .chain(checkpoint.optimizer.values())
        .map(|tensor| tensor.dtype())
        .filter(|dtype| dtype.is_float())
        .map(|dtype| format!("{dtype:?}"))
        .collect();
    dtypes.sort();
    dtypes.dedup();
    Ok(dtypes)
}

fn deterministic(metrics: &[EpochMetrics]) -> Vec<serde_json::Value> {
    metrics
        .iter()
        .map(|m| {
            let mut value = serde_json::to_value(m).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                for field in EpochMetrics::WALL_CLOCK_FIELDS {
                    object.remove(field);
                }
            }
            value
        })
        .collect()
}

pub(crate) fn run(args: &SmokeTrainArgs) -> anyhow::Result<ExitCode> {
    let out = args.out.clone().unwrap_or_else(|| crate::paths::project_root().join("target").join("smoke-train"));
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let synth = SynthConfig {
        groups: 3,
        per_group: 2,
        distinct: 3,
        train_per_class: 30,
        val_per_class: 10,
        image_size: 24,
        seed: 11,
        with_dates: true,
        missing_fraction: 0.02,
    };
    generate(&synth, &out.join("data"))?;
    let config_path = out.join("smoke.toml");
    std::fs::write(&config_path, CONFIG)?;
    let config = RunConfig::from_file(&config_path, &[])?;
    let device = dmlp_model::parse_device(&args.device)?;
    let provenance =
        Provenance { git_commit: None, device: args.device.clone(), command: "cargo xtask smoke-train".into() };
    let options = RunOptions { resume: false, stop_after: None, hub: None, allow_config_change: false, cluster: None };
    let devices = [device];
    let train = |dir: &Path, options| train_run(&config, dir, &devices, options, &provenance, &mut Silent);

    let whole = train(&out.join("whole"), options.clone())?;
    let whole_metrics = RunDir::open(&out.join("whole"))?.read_metrics()?;
    let chance = 100.0 / synth.n_classes() as f64;
    eprintln!("smoke-train: best top-1 {:.2} (chance {chance:.2})", whole.best_top1());
    train(&out.join("split"), RunOptions { stop_after: Some(3), ..options.clone() })?;
    train(&out.join("split"), RunOptions { resume: true, ..options.clone() })?;
    let resumed = RunDir::open(&out.join("split"))?.read_metrics()?;
    let bf16_config = RunConfig::from_file(&config_path, &["train.precision=bf16".to_string()])?;
    let bf16 = train_run(&bf16_config, &out.join("bf16"), &devices, options.clone(), &provenance, &mut Silent)?;
    eprintln!("smoke-train: bf16 best top-1 {:.2}", bf16.best_top1());
    let bf16_dtypes = checkpoint_dtypes(&out.join("bf16"))?;

    if whole.best_top1() < 3.0 * chance {
        bail!("the smoke model did not learn: best top-1 {:.2} < 3 × chance ({:.2})", whole.best_top1(), 3.0 * chance);
    }
    // Both files as written, and the uninterrupted run's in-memory figures read back exactly.
    let files_match = deterministic(&whole_metrics) == deterministic(&resumed);
    let read_back_exactly = deterministic(&whole.metrics) == deterministic(&whole_metrics);
    if !files_match || !read_back_exactly {
        bail!(
            "the resumed run's metrics differ from the uninterrupted run's (files match: {files_match}, read back exactly: {read_back_exactly}):\n{:#?}\nvs\n{:#?}",
            whole_metrics,
            resumed
        );
    }
    // One validation image is 1.1 points here: "a few points" is ten.
    if whole.best_top1() - bf16.best_top1() > BF16_POINTS {
        bail!(
            "the bf16 run learned {:.2} points less than f32 ({:.2} vs {:.2}; at most {BF16_POINTS})",
            whole.best_top1() - bf16.best_top1(),
            bf16.best_top1(),
            whole.best_top1()
        );
    }
    if bf16_dtypes != ["F32"] {
        bail!("the bf16 run's checkpoint holds {bf16_dtypes:?}, not f32 master weights only");
    }
    println!(
        "smoke-train: ok: top-1 {:.2} ≥ 3 × chance ({:.2}); a run stopped after epoch 3 and resumed matches the uninterrupted run over {} epochs; bf16 top-1 {:.2} with f32 checkpoints",
        whole.best_top1(),
        3.0 * chance,
        resumed.len(),
        bf16.best_top1()
    );
    Ok(ExitCode::SUCCESS)
}
