//! `cargo xtask reproduce TABLE [--smoke] [--data-root R]`: runs every cell of a table's
//! matrix (`configs/tables/TABLE.toml`), skipping finished cells and resuming interrupted ones,
//! then writes `results/TABLE.{md,csv}` (`results/smoke/...` with `--smoke`) with the measured
//! top-1 beside the paper's and each cell's parameter count.
//!
//! A cell is an image-only model, a fused model (any fusion kind, any metadata), or a baseline
//! (PriorsNet, GeoNet) over the image-only cell of its backbone and dataset, which runs first.

mod render;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use dmlp_backbones::BackboneSpec;
use dmlp_baselines::geonet::GeoNet;
use dmlp_baselines::priorsnet::{PriorsNet, Sampler};
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_datasets::{DatasetName, SplitScheme};
use dmlp_experiment::{
    BaselineConfig, BaselineType, DataConfig, PriorData, ProgressBars, Provenance, RunConfig, RunOptions, train_run,
};
use dmlp_fusion::FusionConfig;
use dmlp_model::{Classifier, ModelConfig, ModelDType};
use dmlp_train::{RunDir, TrainConfig, Which};

use render::{claims, render_csv, render_markdown};
pub(crate) use table::read_table;
use table::{DatasetColumn, MethodBaseline, MethodRow, Recipe, SmokeBaselines, TableSpec};

#[derive(Debug, clap::Args)]
pub(crate) struct ReproduceArgs {
    /// The table: a file name in configs/tables without `.toml` (table-s2, -s3, -s4, -s5, -s6).
    table: String,
    /// Synthetic data, scaled-down backbones and few epochs: minutes on a CPU.
    #[arg(long)]
    smoke: bool,
    /// Real data: R/<dataset name>/ for each dataset of the table.
    #[arg(long, conflicts_with = "smoke")]
    data_root: Option<PathBuf>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One cell's outcome.
#[derive(Debug, Clone)]
pub(crate) struct CellResult {
    pub backbone: String,
    pub method: String,
    pub dataset: String,
    pub top1: f64,
    pub params: usize,
    pub full_params: usize,
    pub seconds: f64,
}

/// The data of one dataset column: its folder, and where a full prior learns from.
struct ColumnData {
    root: PathBuf,
    full_prior: Option<PriorData>,
}

fn model_config(
    backbone: BackboneSpec,
    method: &MethodRow,
    dataset: &DatasetColumn,
    num_classes: usize,
    recipe: &Recipe,
) -> ModelConfig {
    let fusion = method.fusion.map(|kind| FusionConfig {
        mlp_d: recipe.mlp_d,
        mlp_h: recipe.mlp_h,
        mlp_n: recipe.mlp_n,
        ..FusionConfig::with_defaults(kind)
    });
    ModelConfig {
        backbone: Some(backbone),
        feature_dim: None,
        num_classes,
        metadata: fusion.as_ref().map(|_| method.metadata.unwrap_or(dataset.metadata)),
        fusion,
        dtype: ModelDType::F32,
    }
}

/// The paper's recipe (`TrainConfig::recipe`) at the table's epochs, batch, learning rate, warm-up
/// and seed.
fn train_config(recipe: &Recipe) -> TrainConfig {
    TrainConfig {
        warmup_epochs: recipe.warmup_epochs,
        seed: recipe.seed,
        ..TrainConfig::recipe(recipe.epochs, recipe.batch_size, recipe.lr)
    }
}

/// Generates `synth` into `dir` unless it is there already (a stamp file holds its config).
fn ensure_synthetic(synth: &SynthConfig, dir: &Path, what: &str) -> anyhow::Result<()> {
    let stamp = dir.join("synth-config.json");
    let wanted = serde_json::to_string(synth)?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let written = generate(synth, dir)?;
    std::fs::write(&stamp, &wanted)?;
    eprintln!(
        "synthetic {what} ({}): {written} images of {} classes in {}",
        if synth.with_dates { "locations and dates" } else { "locations, no dates" },
        synth.n_classes(),
        dir.display()
    );
    Ok(())
}

/// Where each dataset's data is: generated for smoke runs, `R/<name>` otherwise (checked).
fn dataset_roots(table: &TableSpec, args: &ReproduceArgs, root: &Path) -> anyhow::Result<Vec<ColumnData>> {
    let wants_full_prior = table.methods.iter().any(|m| m.baseline.as_ref().is_some_and(|b| b.full_prior));
    if args.smoke {
        let mut columns = Vec::new();
        for dataset in &table.datasets {
            let dir = root.join("data").join("smoke").join(&table.name).join(&dataset.key);
            let synth = SynthConfig {
                with_dates: dataset.smoke_dates,
                seed: dataset.smoke_seed.unwrap_or(table.smoke.synth.seed),
                ..table.smoke.synth
            };
            ensure_synthetic(&synth, &dir, &dataset.label)?;
            let full_prior = match (&table.smoke.baselines, wants_full_prior) {
                (Some(b), true) => {
                    // The same classes (habitats depend on the seed only), more training images.
                    let full = SynthConfig { train_per_class: synth.train_per_class * b.full_prior_scale, ..synth };
                    let full_dir =
                        root.join("data").join("smoke").join(&table.name).join(format!("{}-full", dataset.key));
                    ensure_synthetic(&full, &full_dir, &format!("{} (full training set)", dataset.label))?;
                    Some(PriorData {
                        dataset: DatasetName::Inat2021,
                        root: full_dir,
                        split: "train".into(),
                        split_scheme: SplitScheme::Official,
                    })
                }
                _ => None,
            };
            columns.push(ColumnData { root: dir, full_prior });
        }
        return Ok(columns);
    }
    let Some(data_root) = &args.data_root else {
        bail!("give --smoke (synthetic data) or --data-root R (real data in R/<dataset>/)");
    };
    let data_root = std::path::absolute(data_root)?;
    let mut missing = Vec::new();
    let mut columns = Vec::new();
    for dataset in &table.datasets {
        let dir = data_root.join(dataset.name.as_str());
        let mut needed: Vec<PathBuf> =
            ["train", "val"].iter().flat_map(|split| dataset.name.annotation_files(&dir, split)).collect();
        let full_prior = match (&dataset.full_prior, wants_full_prior) {
            (Some(full), true) => {
                let full_dir = data_root.join(full.name.as_str());
                needed.extend(full.name.annotation_files(&full_dir, &full.split));
                Some(PriorData {
                    dataset: full.name,
                    root: full_dir,
                    split: full.split.clone(),
                    split_scheme: SplitScheme::Official,
                })
            }
            _ => None,
        };
        let absent: Vec<String> = needed.iter().filter(|f| !f.is_file()).map(|f| f.display().to_string()).collect();
        if !absent.is_empty() {
            missing.push(format!(
                "  {} ({}): no {}; see data-manifests/{}.toml for where to get it, then `dmlp data verify --dataset {} --root {}`",
                dataset.label,
                dataset.name,
                absent.join(", "),
                dataset.name,
                dataset.name,
                dir.display()
            ));
        }
        columns.push(ColumnData { root: dir, full_prior });
    }
    if !missing.is_empty() {
        bail!("missing datasets under {}:\n{}", data_root.display(), missing.join("\n"));
    }
    Ok(columns)
}

/// The best epoch's top-1 of a finished run folder (its last checkpoint at `epochs`), if finished.
fn finished_top1(run: &Path, epochs: usize) -> anyhow::Result<Option<f64>> {
    if !run.join("checkpoints").is_dir() {
        return Ok(None);
    }
    let Some(state) = RunDir::open(run)?.last_state()? else { return Ok(None) };
    if state.epoch < epochs {
        return Ok(None);
    }
    let best = state.metrics.iter().find(|m| m.epoch == state.best_epoch);
    Ok(best.map(|m| m.val_top1))
}

/// Whether `run` holds a checkpoint to resume from.
fn has_checkpoint(run: &Path) -> anyhow::Result<bool> {
    Ok(run.join("checkpoints").is_dir() && RunDir::open(run)?.last_state()?.is_some())
}

/// A baseline's settings for this run: the table's, scaled down for the smoke data.
fn baseline_config(
    spec: &MethodBaseline,
    dataset: &DatasetColumn,
    column: &ColumnData,
    smoke: Option<&SmokeBaselines>,
) -> BaselineConfig {
    let mut priorsnet = spec.priorsnet.clone();
    let mut geonet = spec.geonet.clone();
    if let Some(s) = smoke {
        priorsnet.batch_size = (priorsnet.batch_size / s.priorsnet_batch_divisor.max(1)).max(1);
        priorsnet.epochs = s.priorsnet_epochs;
        if let Sampler::ClassBalanced { per_class } = priorsnet.sampler {
            let scaled = (per_class as f64 * s.priorsnet_per_class_scale).round() as usize;
            priorsnet.sampler = Sampler::ClassBalanced { per_class: scaled.max(1) };
        }
        geonet.epochs = s.geonet_epochs;
    }
    BaselineConfig {
        kind: spec.kind,
        metadata: dataset.metadata,
        prior_data: if spec.full_prior { column.full_prior.clone() } else { None },
        priorsnet,
        geonet,
    }
}

/// Parameters of a baseline model on top of its image model.
fn baseline_params(baseline: &BaselineConfig, num_classes: usize) -> anyhow::Result<usize> {
    let device = dmlp_model::parse_device("cpu")?;
    let store = match baseline.kind {
        BaselineType::Priorsnet => {
            let cin = dmlp_baselines::encoding::priorsnet_columns(baseline.metadata).map_err(anyhow::Error::msg)?.len();
            PriorsNet::new(cin, num_classes, 0.5, 0, &device)?.store().clone()
        }
        BaselineType::Geonet => {
            GeoNet::new(num_classes, baseline.metadata.n_inputs(), &baseline.geonet, &device)?.store().clone()
        }
    };
    Ok(store.vars().iter().map(|(_, v)| v.elem_count()).sum())
}

fn count_params(model: &ModelConfig) -> anyhow::Result<usize> {
    Ok(Classifier::new_zeroed(model, &dmlp_model::parse_device("cpu")?)?.param_counts().total())
}

pub(crate) fn run(args: &ReproduceArgs) -> anyhow::Result<ExitCode> {
    let root = crate::paths::project_root();
    let table_path = root.join("configs").join("tables").join(format!("{}.toml", args.table));
    let table = read_table(&table_path)?;
    let device = dmlp_model::parse_device(&args.device)?;
    let recipe = if args.smoke { table.smoke.recipe.clone() } else { table.full.clone() };
    let mode = if args.smoke { "smoke" } else { "full" };
    let columns = dataset_roots(&table, args, &root)?;
    let runs_root = if args.smoke {
        root.join("runs").join("smoke").join(&table.name)
    } else {
        root.join("runs").join(&table.name)
    };
    let results_dir = if args.smoke { root.join("results").join("smoke") } else { root.join("results") };
    let provenance = Provenance {
        git_commit: git_commit(&root),
        device: args.device.clone(),
        command: format!("cargo xtask reproduce {} ({mode})", table.name),
    };
    let smoke_baselines = if args.smoke { table.smoke.baselines.as_ref() } else { None };
    if args.smoke && table.methods.iter().any(|m| m.baseline.is_some()) && smoke_baselines.is_none() {
        bail!("{}: baselines need a [smoke.baselines] table", table_path.display());
    }

    // Image-only rows first: the baselines sit on them.
    let mut order: Vec<&MethodRow> = table.methods.iter().filter(|m| m.baseline.is_none()).collect();
    order.extend(table.methods.iter().filter(|m| m.baseline.is_some()));
    let mut cells: Vec<(&table::BackboneRow, &MethodRow, usize)> = Vec::new();
    for b in &table.backbones {
        for m in &order {
            cells.extend((0..table.datasets.len()).map(|d| (b, *m, d)));
        }
    }
    let started = Instant::now();
    let mut results = Vec::new();
    for (idx, (backbone, method, d)) in cells.iter().enumerate() {
        let dataset = &table.datasets[*d];
        let cell = format!("{}-{}-{}", backbone.key, method.key, dataset.key);
        let run_dir = runs_root.join(&cell);
        let num_classes = if args.smoke { table.smoke.synth.n_classes() } else { dataset.num_classes };
        let spec = if args.smoke { backbone.smoke_backbone.clone() } else { BackboneSpec::Preset(backbone.backbone) };
        let tag = format!("[{}/{}] {cell}", idx + 1, cells.len());
        let cell_started = Instant::now();
        let data = DataConfig {
            dataset: if args.smoke { DatasetName::Inat2021 } else { dataset.name },
            split_scheme: if args.smoke { SplitScheme::Official } else { dataset.split_scheme },
            root: columns[*d].root.clone(),
            train_split: "train".into(),
            val_split: "val".into(),
            image_size: recipe.image_size,
            eval_resize: None,
            test_scales: None,
            ten_crop: false,
            workers: recipe.workers,
            cache_dir: if args.smoke { None } else { dmlp_prepare::default_cache_dir(|k| std::env::var(k).ok()) },
        };
        let (top1, params, full_params) = match &method.baseline {
            None => {
                let model = model_config(spec, method, dataset, num_classes, &recipe);
                let full_model = model_config(
                    BackboneSpec::Preset(backbone.backbone),
                    method,
                    dataset,
                    dataset.num_classes,
                    &table.full,
                );
                let top1 = match finished_top1(&run_dir, recipe.epochs)? {
                    Some(top1) => {
                        eprintln!("{tag}: finished earlier, top-1 {top1:.2}");
                        top1
                    }
                    None => {
                        let resume = has_checkpoint(&run_dir)?;
                        eprintln!("{tag}: {}", if resume { "resuming" } else { "training" });
                        let config = RunConfig { model: model.clone(), data, train: train_config(&recipe) };
                        let options = RunOptions { resume, stop_after: None };
                        train_run(&config, &run_dir, &device, options, &provenance, &mut ProgressBars::new(""))
                            .with_context(|| format!("cell {cell}"))?
                            .best_top1()
                    }
                };
                (top1, count_params(&model)?, count_params(&full_model)?)
            }
            Some(spec_baseline) => {
                let image_dir = runs_root.join(format!("{}-image-only-{}", backbone.key, dataset.key));
                let image_method = table.methods.iter().find(|m| m.key == "image-only").context("no image-only row")?;
                let image_model = model_config(spec.clone(), image_method, dataset, num_classes, &recipe);
                let full_image = model_config(
                    BackboneSpec::Preset(backbone.backbone),
                    image_method,
                    dataset,
                    dataset.num_classes,
                    &table.full,
                );
                let baseline = baseline_config(spec_baseline, dataset, &columns[*d], smoke_baselines);
                let full_baseline = baseline_config(spec_baseline, dataset, &columns[*d], None);
                let top1 = match dmlp_experiment::finished_baseline(&run_dir) {
                    Some(summary) => {
                        eprintln!("{tag}: finished earlier, top-1 {:.2}", summary.top1);
                        summary.top1
                    }
                    None => {
                        let image_config = RunConfig { model: image_model.clone(), data, train: train_config(&recipe) };
                        let weights = RunDir::open(&image_dir)
                            .and_then(|run| run.weights(Which::Best))
                            .with_context(|| format!("cell {cell}: its image-only run"))?;
                        let resume = has_checkpoint(&run_dir)?;
                        eprintln!(
                            "{tag}: {} over {}",
                            if resume { "resuming" } else { "training" },
                            image_dir.display()
                        );
                        let options = RunOptions { resume, stop_after: None };
                        let label = format!("{:?}", baseline.kind).to_lowercase();
                        let summary = dmlp_experiment::baseline_run(
                            &image_config,
                            &weights,
                            &baseline,
                            &run_dir,
                            &device,
                            options,
                            &provenance,
                            &mut ProgressBars::new(&label),
                        )
                        .with_context(|| format!("cell {cell}"))?;
                        eprintln!(
                            "{tag}: top-1 {:.2} (image model alone {:.2})",
                            summary.top1, summary.image_only_top1
                        );
                        summary.top1
                    }
                };
                (
                    top1,
                    count_params(&image_model)? + baseline_params(&baseline, num_classes)?,
                    count_params(&full_image)? + baseline_params(&full_baseline, dataset.num_classes)?,
                )
            }
        };
        results.push(CellResult {
            backbone: backbone.key.clone(),
            method: method.key.clone(),
            dataset: dataset.key.clone(),
            top1,
            params,
            full_params,
            seconds: cell_started.elapsed().as_secs_f64(),
        });
    }
    std::fs::create_dir_all(&results_dir)?;
    let markdown = render_markdown(&table, &results, args.smoke, &recipe);
    std::fs::write(results_dir.join(format!("{}.md", table.name)), &markdown)?;
    std::fs::write(results_dir.join(format!("{}.csv", table.name)), render_csv(&table, &results))?;
    println!("{markdown}");
    eprintln!(
        "{} cells in {:.1} min; wrote {}",
        results.len(),
        started.elapsed().as_secs_f64() / 60.0,
        results_dir.join(format!("{}.md", table.name)).display()
    );
    let broken: Vec<_> = claims(&table, &results).into_iter().filter(|c| c.gap <= 0.0).collect();
    if args.smoke && !broken.is_empty() {
        for c in &broken {
            eprintln!("warning: on the synthetic data, {} fails on {} ({:+.2})", c.what, c.dataset, c.gap);
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn git_commit(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(root).args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_table_config_parses_and_names_its_paper_cells() {
        let dir = crate::paths::project_root().join("configs").join("tables");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let table = super::read_table(&entry.path()).unwrap();
            n += 1;
            for (backbone, methods) in &table.paper {
                assert!(table.backbones.iter().any(|b| &b.key == backbone), "{backbone}");
                for (method, datasets) in methods {
                    assert!(table.methods.iter().any(|m| &m.key == method), "{method}");
                    assert!(datasets.keys().all(|d| table.datasets.iter().any(|c| &c.key == d)));
                }
            }
        }
        assert!(n >= 5, "tables S2 to S6");
    }
}
