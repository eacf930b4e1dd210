//! `dmlp train`, `dmlp eval` and `dmlp data synth`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_experiment::{Provenance, RunConfig, evaluate_checkpoint, train_run};
use dmlp_model::parse_device;
use dmlp_train::TrainOptions;

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// The run config: [model], [data] and [train] tables.
    #[arg(long)]
    config: PathBuf,
    /// The run folder (config, provenance, metrics, checkpoints).
    #[arg(long)]
    run_dir: PathBuf,
    /// Continue the run in --run-dir from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override one config key, e.g. --set train.lr=0.1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Stop after this epoch (the schedule still spans the configured epochs).
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    #[arg(long)]
    config: PathBuf,
    /// A run folder (its best checkpoint), a checkpoint folder, or a weights file.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Ten-crop (corners, centre and their mirrors) at each test scale; logits averaged.
    #[arg(long)]
    ten_crop: bool,
    /// Multi-scale test: crop sides, comma-separated (e.g. 256,288,320,352,384); each resizes the
    /// shorter side to round(s·256/224). Default: the config's image_size.
    #[arg(long, value_delimiter = ',')]
    test_scales: Vec<u32>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SynthArgs {
    /// Where to write the dataset (train.json, val.json and JPEGs).
    #[arg(long)]
    out: PathBuf,
    /// Groups of look-alike classes (same look, different region and season).
    #[arg(long, default_value_t = 6)]
    groups: usize,
    #[arg(long, default_value_t = 3)]
    per_group: usize,
    /// Classes that look distinct.
    #[arg(long, default_value_t = 6)]
    distinct: usize,
    #[arg(long, default_value_t = 60)]
    train_per_class: usize,
    #[arg(long, default_value_t = 20)]
    val_per_class: usize,
    #[arg(long, default_value_t = 40)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The YFCC-like variant: locations without dates (train it with metadata = "geo").
    #[arg(long)]
    no_dates: bool,
    /// Share of images without location and date.
    #[arg(long, default_value_t = 0.02)]
    missing_fraction: f64,
}

/// The checked-out commit, if this runs inside a git work tree.
pub(crate) fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Reads a run config and gives it the default manifest cache when it names none.
fn read_config(path: &Path, overrides: &[String]) -> anyhow::Result<RunConfig> {
    let mut config = RunConfig::from_file(path, overrides)?;
    if config.data.cache_dir.is_none() {
        config.data.cache_dir = dmlp_prepare::default_cache_dir(|k| std::env::var(k).ok());
    }
    Ok(config)
}

pub(crate) fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    let config = read_config(&args.config, &args.overrides)?;
    let device = parse_device(&args.device)?;
    let provenance = Provenance {
        git_commit: git_commit(),
        device: args.device.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let options = TrainOptions { resume: args.resume, progress: !args.quiet, stop_after: args.stop_after };
    let summary = train_run(&config, &args.run_dir, &device, options, &provenance)
        .with_context(|| format!("training into {}", args.run_dir.display()))?;
    println!(
        "done: {} epochs in {}; best val top-1 {:.3} at epoch {}",
        summary.metrics.len(),
        args.run_dir.display(),
        summary.best_top1,
        summary.best_epoch
    );
    Ok(())
}

/// A run folder → its best checkpoint's weights; a checkpoint folder → its weights; else the path.
fn weights_path(path: &Path) -> anyhow::Result<PathBuf> {
    let pointer = path.join("checkpoints").join("best");
    if pointer.is_file() {
        let name = std::fs::read_to_string(&pointer).with_context(|| format!("reading {}", pointer.display()))?;
        return Ok(path.join("checkpoints").join(name.trim()).join("model.safetensors"));
    }
    if path.join("model.safetensors").is_file() {
        return Ok(path.join("model.safetensors"));
    }
    Ok(path.to_owned())
}

pub(crate) fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    let mut overrides = args.overrides.clone();
    if args.ten_crop {
        overrides.push("data.ten_crop=true".into());
    }
    if !args.test_scales.is_empty() {
        let scales: Vec<String> = args.test_scales.iter().map(u32::to_string).collect();
        overrides.push(format!("data.test_scales=[{}]", scales.join(", ")));
    }
    let config = read_config(&args.config, &overrides)?;
    let device = parse_device(&args.device)?;
    let weights = weights_path(&args.checkpoint)?;
    let views: Vec<String> = config.data.eval_transforms().iter().map(|t| format!("{t:?}")).collect();
    let (loss, top1, top5, images) = evaluate_checkpoint(&config, &weights, &device)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"weights": weights, "images": images, "loss": loss, "top1": top1, "top5": top5, "views": views})
        );
    } else {
        println!(
            "{}: {images} images, top-1 {top1:.3}, top-5 {top5:.3}, loss {loss:.4} ({})",
            weights.display(),
            views.join(" + ")
        );
    }
    Ok(())
}

pub(crate) fn run_synth(args: &SynthArgs) -> anyhow::Result<()> {
    let config = SynthConfig {
        groups: args.groups,
        per_group: args.per_group,
        distinct: args.distinct,
        train_per_class: args.train_per_class,
        val_per_class: args.val_per_class,
        image_size: args.image_size,
        seed: args.seed,
        with_dates: !args.no_dates,
        missing_fraction: args.missing_fraction,
    };
    let written = generate(&config, &args.out)?;
    println!("wrote {written} images of {} classes to {}", config.n_classes(), args.out.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct BaselineArgs {
    /// The image-only run the baseline sits on (its config.toml and best checkpoint).
    #[arg(long)]
    image_run: PathBuf,
    /// A file with the [baseline] table (type, metadata, [baseline.priorsnet] or [baseline.geonet]).
    #[arg(long)]
    config: PathBuf,
    /// The baseline's run folder.
    #[arg(long)]
    run_dir: PathBuf,
    #[arg(long)]
    resume: bool,
    /// Override one key, e.g. --set baseline.priorsnet.lr=0.001 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn run_baseline(args: &BaselineArgs) -> anyhow::Result<()> {
    let image = read_config(&args.image_run.join("config.toml"), &[])?;
    let weights = weights_path(&args.image_run)?;
    let baseline = dmlp_experiment::BaselineConfig::from_file(&args.config, &args.overrides)?;
    let device = parse_device(&args.device)?;
    let provenance = Provenance {
        git_commit: git_commit(),
        device: args.device.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let options = dmlp_baselines::priorsnet::RunOptions { resume: args.resume, progress: !args.quiet };
    let summary =
        dmlp_experiment::baseline_run(&image, &weights, &baseline, &args.run_dir, &device, options, &provenance)
            .with_context(|| format!("baseline into {}", args.run_dir.display()))?;
    println!(
        "{:?} on {}: top-1 {:.3}, top-5 {:.3} (image model alone: top-1 {:.3}, top-5 {:.3}; {} images)",
        summary.kind,
        args.image_run.display(),
        summary.top1,
        summary.top5,
        summary.image_only_top1,
        summary.image_only_top5,
        summary.images
    );
    Ok(())
}
