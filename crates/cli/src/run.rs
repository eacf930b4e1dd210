//! `dmlp train`, `dmlp eval` and `dmlp data synth`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_experiment::{
    ProgressBars, Provenance, RunConfig, RunOptions, evaluate_checkpoint_on, train_run, write_split_predictions,
};
use dmlp_model::parse_device;
use dmlp_train::{FitObserver, RunDir, Silent, Which};

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
    /// With --resume: accept a config that differs from the run's own config.toml (the
    /// differences are recorded in provenance-resume.json).
    #[arg(long, requires = "resume")]
    allow_config_change: bool,
    /// Override one config key, e.g. --set train.lr=0.1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// cpu or cuda:N; several, comma-separated (`--devices cuda:0,cuda:1`), train data parallel:
    /// one replica per device, each batch split across them.
    #[arg(long, visible_alias = "devices", value_delimiter = ',', default_value = "cpu")]
    device: Vec<String>,
    /// Stop after this epoch (the schedule still spans the configured epochs).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Processes (nodes) in a data-parallel job, each with its --devices; start one per node
    /// with the same --nodes and --rendezvous and its own --node-rank.
    #[arg(long, default_value_t = 1, requires = "rendezvous")]
    nodes: usize,
    /// This process's place in the job, 0..nodes; node 0 evaluates and writes the run folder
    /// (the others write nothing: their --run-dir is not used).
    #[arg(long, default_value_t = 0, requires = "rendezvous")]
    node_rank: usize,
    /// host:port that node 0 listens on and the other nodes connect to (e.g. node0:29500).
    #[arg(long, value_name = "HOST:PORT")]
    rendezvous: Option<String>,
    /// Seconds to wait for every node to join.
    #[arg(long, default_value_t = 600)]
    rendezvous_timeout: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    #[arg(long)]
    config: PathBuf,
    /// A run folder (its best checkpoint), a checkpoint folder, or a weights file. Several
    /// (repeat it) evaluate an ensemble: their softmax probabilities averaged, beside each alone;
    /// each member inside a run folder takes its model and views from the run's config.toml.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// cpu or cuda:N; several, comma-separated (`--devices cuda:0,cuda:1`), split each batch's
    /// images across them (one checkpoint; an ensemble evaluates on one device).
    #[arg(long, visible_alias = "devices", value_delimiter = ',', default_value = "cpu")]
    device: Vec<String>,
    /// Ten-crop (corners, centre and their mirrors) at each test scale; logits averaged.
    #[arg(long)]
    ten_crop: bool,
    /// Multi-scale test: crop sides, comma-separated (e.g. 256,288,320,352,384); each resizes the
    /// shorter side to round(s·256/224). Default: the config's image_size.
    #[arg(long, value_delimiter = ',')]
    test_scales: Vec<u32>,
    /// Print one JSON object (with the per-class accuracy).
    #[arg(long)]
    json: bool,
    /// Write each image's top-k classes and probabilities here (.csv or .parquet).
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// Classes per image in --predictions.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
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
pub(crate) fn read_config(path: &Path, overrides: &[String]) -> anyhow::Result<RunConfig> {
    let mut config = RunConfig::from_file(path, overrides)?;
    if config.data.cache_dir.is_none() {
        config.data.cache_dir = dmlp_prepare::default_cache_dir(|k| std::env::var(k).ok());
    }
    Ok(config)
}

pub(crate) fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    let config = read_config(&args.config, &args.overrides)?;
    let devices = args.device.iter().map(|name| parse_device(name)).collect::<Result<Vec<_>, _>>()?;
    let provenance = Provenance {
        git_commit: git_commit(),
        device: args.device.join(","),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let cluster = match &args.rendezvous {
        Some(address) => {
            let spec = dmlp_train::ClusterSpec {
                nodes: args.nodes,
                node_rank: args.node_rank,
                address: address.clone(),
                timeout: std::time::Duration::from_secs(args.rendezvous_timeout),
            };
            spec.validate()?;
            Some(spec)
        }
        None => None,
    };
    if let Some(cluster) = cluster.as_ref().filter(|c| c.node_rank > 0) {
        if args.resume || args.stop_after.is_some() {
            anyhow::bail!("--resume and --stop-after are node 0's to give: the other nodes follow it");
        }
        let epochs =
            dmlp_experiment::follow_run(&config, &devices, cluster, &provenance, observer(args.quiet, "").as_mut())
                .with_context(|| format!("node {} of {}", cluster.node_rank, cluster.nodes))?;
        println!("done: node {} trained epochs {:?} beside node 0", cluster.node_rank, epochs);
        return Ok(());
    }
    let hub = crate::weights::hub_settings(args.quiet);
    let options = RunOptions {
        resume: args.resume,
        stop_after: args.stop_after,
        hub: Some(hub),
        allow_config_change: args.allow_config_change,
        cluster,
    };
    let summary = train_run(&config, &args.run_dir, &devices, options, &provenance, observer(args.quiet, "").as_mut())
        .with_context(|| format!("training into {}", args.run_dir.display()))?;
    println!(
        "done: {} epochs in {}; best val top-1 {:.3} at epoch {}",
        summary.metrics.len(),
        args.run_dir.display(),
        summary.best_top1(),
        summary.best_epoch
    );
    Ok(())
}

/// Progress bars on standard error, or nothing with `--quiet`.
fn observer(quiet: bool, label: &str) -> Box<dyn FitObserver> {
    if quiet { Box::new(Silent) } else { Box::new(ProgressBars::new(label)) }
}

/// A run folder → its best checkpoint's weights; a checkpoint folder → its weights; else the path.
pub(crate) fn weights_path(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join("checkpoints").is_dir() {
        return Ok(RunDir::open(path)?.weights(Which::Best)?);
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
    let devices = args.device.iter().map(|name| parse_device(name)).collect::<Result<Vec<_>, _>>()?;
    if args.checkpoint.len() > 1 {
        let [device] = devices.as_slice() else {
            anyhow::bail!("an ensemble evaluates on one device (--device), not {}", args.device.join(","));
        };
        return run_ensemble(args, &config, &overrides, device);
    }
    let weights = weights_path(&args.checkpoint[0])?;
    let views: Vec<String> = config.data.eval_transforms().iter().map(|t| format!("{t:?}")).collect();
    if let Some(path) = &args.predictions {
        dmlp_eval::PredictionFormat::from_path(path)?;
    }
    let top_k = if args.predictions.is_some() { args.top_k.max(1) } else { 0 };
    let (evaluation, split) = evaluate_checkpoint_on(&config, &weights, &devices, top_k)?;
    if let Some(path) = &args.predictions {
        write_split_predictions(path, &evaluation, &split, &config.data.root)
            .with_context(|| format!("writing predictions to {}", path.display()))?;
    }
    let a = &evaluation.accuracy;
    let loss = a.loss.unwrap_or(f64::NAN);
    if args.json {
        let per_class: Vec<serde_json::Value> = a
            .per_class
            .iter()
            .enumerate()
            .filter(|(_, c)| c.images > 0)
            .map(|(class, c)| {
                let name = split.classes.get(class).map(|c| c.name.clone());
                serde_json::json!({"class": class, "name": name, "images": c.images, "top1": c.top1()})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"weights": weights, "images": a.images, "loss": loss, "top1": a.top1, "top5": a.top5,
                "mean_class_top1": a.mean_class_top1, "views": views, "predictions": args.predictions, "per_class": per_class})
        );
    } else {
        println!(
            "{}: {} images, top-1 {:.3}, top-5 {:.3}, mean per-class top-1 {:.3}, loss {loss:.4} ({})",
            weights.display(),
            a.images,
            a.top1,
            a.top5,
            a.mean_class_top1,
            views.join(" + ")
        );
        if let Some(path) = &args.predictions {
            println!("wrote {} predictions (top-{top_k}) to {}", evaluation.predictions.len(), path.display());
        }
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
    let options =
        RunOptions { resume: args.resume, stop_after: None, hub: None, allow_config_change: false, cluster: None };
    let label = format!("{:?}", baseline.kind).to_lowercase();
    let mut observer = observer(args.quiet, &label);
    let summary = dmlp_experiment::baseline_run(
        &image,
        &weights,
        &baseline,
        &args.run_dir,
        &device,
        options,
        &provenance,
        observer.as_mut(),
    )
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

/// The run folder holding `path` (a run folder, one of its checkpoint folders, or a weights file
/// inside one), if any: the nearest ancestor with a `config.toml` and `checkpoints/`.
fn enclosing_run(path: &Path) -> Option<&Path> {
    path.ancestors().take(4).find(|dir| dir.join("config.toml").is_file() && dir.join("checkpoints").is_dir())
}

/// `dmlp eval` with several checkpoints: each member alone, and their mean probabilities.
fn run_ensemble(
    args: &EvalArgs,
    config: &dmlp_experiment::RunConfig,
    overrides: &[String],
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    if args.predictions.is_some() {
        anyhow::bail!("--predictions takes one checkpoint; an ensemble reports accuracy only");
    }
    let members = args
        .checkpoint
        .iter()
        .map(|path| {
            let weights = weights_path(path)?;
            // A member inside a run folder is evaluated as it was trained (its model and views,
            // with this command's --ten-crop and --test-scales); a bare file takes --config's.
            let member_config = match enclosing_run(path) {
                Some(run) => read_config(&run.join("config.toml"), overrides)?,
                None => config.clone(),
            };
            Ok(dmlp_experiment::EnsembleMember { config: member_config, weights })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let result = dmlp_experiment::evaluate_ensemble(config, &members, device)?;
    let row = |a: &dmlp_eval::Accuracy| serde_json::json!({"images": a.images, "top1": a.top1, "top5": a.top5, "mean_class_top1": a.mean_class_top1});
    if args.json {
        let members: Vec<serde_json::Value> = members
            .iter()
            .zip(&result.members)
            .map(|(m, a)| {
                let mut value = row(a);
                value["weights"] = serde_json::json!(m.weights);
                value
            })
            .collect();
        println!("{}", serde_json::json!({"members": members, "ensemble": row(&result.ensemble)}));
    } else {
        println!("| model | top-1 | top-5 | mean class top-1 | images |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        let line = |name: &str, a: &dmlp_eval::Accuracy| {
            println!("| {name} | {:.3} | {:.3} | {:.3} | {} |", a.top1, a.top5, a.mean_class_top1, a.images);
        };
        for (m, a) in members.iter().zip(&result.members) {
            line(&m.weights.display().to_string(), a);
        }
        line(&format!("ensemble of {} (mean probabilities)", members.len()), &result.ensemble);
    }
    Ok(())
}
