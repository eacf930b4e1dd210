//! `dmlp figure`: the supplement's figures from runs and datasets, as PNG or SVG.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dmlp_figures::{Series, line_chart, location_heatmap, per_class_steps};
use dmlp_model::parse_device;
use dmlp_train::RunDir;

use crate::run::{read_config, weights_path};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum FigureCommand {
    /// Fig. S4: top-1 per category of several runs on one validation split, the categories
    /// ranked by the first run's accuracy and averaged over windows of adjacent categories.
    PerClass(PerClassArgs),
    /// Fig. S2: a metric per epoch (validation top-1 by default) of one or more runs.
    Curves(CurvesArgs),
    /// Fig. S1: where a dataset's photos were taken, counted on a world grid.
    Locations(LocationsArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct PerClassArgs {
    /// Run folders (repeat it); the first is the baseline that ranks the categories. Each is
    /// evaluated (best checkpoint) on its own config's validation split.
    #[arg(long = "run", required = true)]
    runs: Vec<PathBuf>,
    /// Categories averaged per step (the supplement's 100).
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// The figure: .png or .svg.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CurvesArgs {
    /// Run folders (repeat it), each with its metrics.jsonl.
    #[arg(long = "run", required = true)]
    runs: Vec<PathBuf>,
    /// A field of metrics.jsonl: val_top1, val_top5, val_mean_class_top1, val_loss, train_top1,
    /// train_loss or lr.
    #[arg(long, default_value = "val_top1")]
    metric: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LocationsArgs {
    /// inat2017, inat2018, inat2021, inat2021-mini or yfcc-geo100.
    #[arg(long)]
    dataset: String,
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value = "train")]
    split: String,
    /// Grid cell in degrees (0.5–10).
    #[arg(long, default_value_t = 1.0)]
    cell: f64,
    #[arg(long)]
    out: PathBuf,
}

/// A run's name in a legend: its folder's name.
fn label(run: &Path) -> String {
    run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned())
}

pub(crate) fn run_figure(command: &FigureCommand) -> anyhow::Result<()> {
    match command {
        FigureCommand::PerClass(args) => per_class(args),
        FigureCommand::Curves(args) => curves(args),
        FigureCommand::Locations(args) => locations(args),
    }
}

fn per_class(args: &PerClassArgs) -> anyhow::Result<()> {
    dmlp_figures::Format::of(&args.out)?;
    let device = parse_device(&args.device)?;
    let mut per_class = Vec::new();
    let mut labels = Vec::new();
    for run in &args.runs {
        let config = read_config(&run.join("config.toml"), &[])?;
        let weights = weights_path(run)?;
        let (evaluation, _) = dmlp_experiment::evaluate_checkpoint(&config, &weights, &device, 0)
            .with_context(|| format!("evaluating {}", run.display()))?;
        let a = &evaluation.accuracy;
        eprintln!("{}: top-1 {:.3} on {} images", run.display(), a.top1, a.images);
        per_class.push(a.per_class.iter().map(dmlp_eval::ClassAccuracy::top1).collect::<Vec<_>>());
        labels.push(format!("{} ({:.1} %)", label(run), a.top1));
    }
    let series = per_class_steps(&labels, &per_class, args.window)?;
    let title = format!("Top-1 per category, ranked by {}, {} per step", label(&args.runs[0]), args.window);
    line_chart(&args.out, &title, "categories (ranked by the first run's top-1)", "top-1 (%)", &series)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn curves(args: &CurvesArgs) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for run in &args.runs {
        let metrics = RunDir::open(run)?.read_metrics()?;
        let points = metrics
            .iter()
            .map(|m| {
                let value = serde_json::to_value(m)?;
                let y = value[&args.metric].as_f64().with_context(|| {
                    format!("{}: metrics.jsonl has no numeric field {:?}", run.display(), args.metric)
                })?;
                Ok((m.epoch as f64, y))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if points.is_empty() {
            anyhow::bail!("{}: no epochs in metrics.jsonl yet", run.display());
        }
        series.push(Series { label: label(run), points });
    }
    let title = format!("{} per epoch", args.metric);
    line_chart(&args.out, &title, "epoch", &args.metric, &series)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn locations(args: &LocationsArgs) -> anyhow::Result<()> {
    dmlp_figures::Format::of(&args.out)?;
    let dataset: dmlp_datasets::DatasetName = args.dataset.parse()?;
    let split = dmlp_datasets::read_split(dataset, &args.root, &args.split, dmlp_datasets::SplitScheme::default())?;
    let points: Vec<(f64, f64)> =
        split.records.iter().filter_map(|r| r.observation.latitude().zip(r.observation.longitude())).collect();
    let without = split.records.len() - points.len();
    let title = format!("{} {}: {} photos with a location", args.dataset, args.split, points.len());
    location_heatmap(&args.out, &title, &points, args.cell)?;
    println!("wrote {} ({} photos placed, {without} without a location)", args.out.display(), points.len());
    Ok(())
}
