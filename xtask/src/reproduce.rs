//! `cargo xtask reproduce TABLE [--smoke] [--data-root R]`: runs every cell of a table's
//! matrix (`configs/tables/TABLE.toml`), skipping finished cells and resuming interrupted ones,
//! then writes `results/TABLE.{md,csv}` (`results/smoke/...` with `--smoke`) with the measured
//! top-1 beside the paper's and each cell's parameter count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_datasets::{DatasetName, SplitScheme};
use dmlp_experiment::{DataConfig, Provenance, RunConfig, train_run};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig, ModelDType};
use dmlp_train::{RunDir, TrainConfig, TrainOptions};
use serde::Deserialize;

#[derive(Debug, clap::Args)]
pub(crate) struct ReproduceArgs {
    /// The table: a file name in configs/tables without `.toml` (table-s4).
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TableSpec {
    name: String,
    title: String,
    backbones: Vec<BackboneRow>,
    methods: Vec<MethodRow>,
    datasets: Vec<DatasetColumn>,
    #[serde(default)]
    paper: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    full: Recipe,
    smoke: SmokeRecipe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackboneRow {
    key: String,
    label: String,
    backbone: BackbonePreset,
    smoke_backbone: BackboneSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodRow {
    key: String,
    label: String,
    #[serde(default)]
    fusion: Option<FusionKind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetColumn {
    key: String,
    label: String,
    name: DatasetName,
    /// The split definition of the real data (YFCC: the supplement's 2,000-image val split).
    #[serde(default)]
    split_scheme: SplitScheme,
    num_classes: usize,
    metadata: Metadata,
    smoke_dates: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    image_size: u32,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    warmup_epochs: usize,
    workers: usize,
    mlp_d: usize,
    mlp_h: usize,
    mlp_n: usize,
    seed: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmokeRecipe {
    #[serde(flatten)]
    recipe: Recipe,
    synth: SynthConfig,
}

/// One cell's outcome.
#[derive(Debug, Clone)]
struct CellResult {
    backbone: String,
    method: String,
    dataset: String,
    top1: f64,
    params: usize,
    full_params: usize,
    seconds: f64,
}

pub(crate) fn read_table(path: &Path) -> anyhow::Result<TableSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
        metadata: fusion.as_ref().map(|_| dataset.metadata),
        fusion,
        dtype: ModelDType::F32,
    }
}

fn train_config(recipe: &Recipe) -> TrainConfig {
    TrainConfig {
        epochs: recipe.epochs,
        batch_size: recipe.batch_size,
        lr: recipe.lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
        warmup_epochs: recipe.warmup_epochs,
        label_smoothing: 0.1,
        mixup_alpha: 0.4,
        seed: recipe.seed,
        eval_batch_size: None,
    }
}

/// Where each dataset's data is: generated for smoke runs, `R/<name>` otherwise (checked).
fn dataset_roots(table: &TableSpec, args: &ReproduceArgs, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if args.smoke {
        let mut roots = Vec::new();
        for dataset in &table.datasets {
            let dir = root.join("data").join("smoke").join(&table.name).join(&dataset.key);
            let synth = SynthConfig { with_dates: dataset.smoke_dates, ..table.smoke.synth };
            let stamp = dir.join("synth-config.json");
            let wanted = serde_json::to_string(&synth)?;
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
                }
                let written = generate(&synth, &dir)?;
                std::fs::write(&stamp, &wanted)?;
                eprintln!(
                    "synthetic {} ({}): {written} images of {} classes in {}",
                    dataset.label,
                    if synth.with_dates { "locations and dates" } else { "locations, no dates" },
                    synth.n_classes(),
                    dir.display()
                );
            }
            roots.push(dir);
        }
        return Ok(roots);
    }
    let Some(data_root) = &args.data_root else {
        bail!("give --smoke (synthetic data) or --data-root R (real data in R/<dataset>/)");
    };
    let data_root = std::path::absolute(data_root)?;
    let mut missing = Vec::new();
    let roots: Vec<PathBuf> = table.datasets.iter().map(|d| data_root.join(d.name.as_str())).collect();
    for (dataset, dir) in table.datasets.iter().zip(&roots) {
        let absent: Vec<String> = ["train", "val"]
            .iter()
            .flat_map(|split| dataset.name.annotation_files(dir, split))
            .filter(|file| !file.is_file())
            .map(|file| file.display().to_string())
            .collect();
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
    }
    if !missing.is_empty() {
        bail!("missing datasets under {}:\n{}", data_root.display(), missing.join("\n"));
    }
    Ok(roots)
}

/// The best top-1 of a finished run folder, if finished.
fn finished_top1(run: &Path, epochs: usize) -> anyhow::Result<Option<f64>> {
    if !run.exists() {
        return Ok(None);
    }
    let metrics = RunDir::create(run)?.read_metrics()?;
    let done = metrics.last().is_some_and(|m| m.epoch >= epochs);
    Ok(done.then(|| metrics.iter().map(|m| m.val_top1).fold(f64::NEG_INFINITY, f64::max)))
}

pub(crate) fn run(args: &ReproduceArgs) -> anyhow::Result<ExitCode> {
    let root = crate::paths::project_root();
    let table_path = root.join("configs").join("tables").join(format!("{}.toml", args.table));
    let table = read_table(&table_path)?;
    let device = dmlp_model::parse_device(&args.device)?;
    let recipe = if args.smoke { table.smoke.recipe.clone() } else { table.full.clone() };
    let mode = if args.smoke { "smoke" } else { "full" };
    let data_roots = dataset_roots(&table, args, &root)?;
    let runs_root = if args.smoke {
        root.join("runs").join("smoke").join(&table.name)
    } else {
        root.join("runs").join(&table.name)
    };
    let results_dir = if args.smoke { root.join("results").join("smoke") } else { root.join("results") };

    let n_datasets = table.datasets.len();
    let mut cells: Vec<(&BackboneRow, &MethodRow, usize)> = Vec::new();
    for b in &table.backbones {
        for m in &table.methods {
            cells.extend((0..n_datasets).map(|d| (b, m, d)));
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
        let model = model_config(spec, method, dataset, num_classes, &recipe);
        let full_model =
            model_config(BackboneSpec::Preset(backbone.backbone), method, dataset, dataset.num_classes, &table.full);
        let params = Classifier::new_zeroed(&model, &dmlp_model::parse_device("cpu")?)?.param_counts().total();
        let full_params =
            Classifier::new_zeroed(&full_model, &dmlp_model::parse_device("cpu")?)?.param_counts().total();
        let cell_started = Instant::now();
        let top1 = match finished_top1(&run_dir, recipe.epochs)? {
            Some(top1) => {
                eprintln!("[{}/{}] {cell}: finished earlier, top-1 {top1:.2}", idx + 1, cells.len());
                top1
            }
            None => {
                let resume = RunDir::create(&run_dir)?.checkpoint("last")?.is_some();
                eprintln!("[{}/{}] {cell}: {}", idx + 1, cells.len(), if resume { "resuming" } else { "training" });
                let config = RunConfig {
                    model,
                    data: DataConfig {
                        dataset: if args.smoke { DatasetName::Inat2021 } else { dataset.name },
                        split_scheme: if args.smoke { SplitScheme::Official } else { dataset.split_scheme },
                        root: data_roots[*d].clone(),
                        train_split: "train".into(),
                        val_split: "val".into(),
                        image_size: recipe.image_size,
                        eval_resize: None,
                        test_scales: None,
                        ten_crop: false,
                        workers: recipe.workers,
                        cache_dir: if args.smoke {
                            None
                        } else {
                            dmlp_prepare::default_cache_dir(|k| std::env::var(k).ok())
                        },
                    },
                    train: train_config(&recipe),
                };
                let provenance = Provenance {
                    git_commit: git_commit(&root),
                    device: args.device.clone(),
                    command: format!("cargo xtask reproduce {} ({mode})", table.name),
                };
                let options = TrainOptions { resume, progress: true, stop_after: None };
                train_run(&config, &run_dir, &device, options, &provenance)
                    .with_context(|| format!("cell {cell}"))?
                    .best_top1
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
    let failed_claim = args.smoke && fused_gap(&table, &results).iter().any(|(_, _, gap)| *gap <= 0.0);
    if failed_claim {
        eprintln!("warning: a fused model did not beat its image-only row on the synthetic data");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn git_commit(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(root).args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn find<'a>(results: &'a [CellResult], backbone: &str, method: &str, dataset: &str) -> Option<&'a CellResult> {
    results.iter().find(|r| r.backbone == backbone && r.method == method && r.dataset == dataset)
}

/// `(cell, dataset, top-1 gap over image-only)` for every fused cell.
fn fused_gap(table: &TableSpec, results: &[CellResult]) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r.method != "image-only") {
        if let Some(base) = find(results, &r.backbone, "image-only", &r.dataset) {
            let label = table.methods.iter().find(|m| m.key == r.method).map_or(r.method.clone(), |m| m.label.clone());
            out.push((format!("{} {label}", r.backbone), r.dataset.clone(), r.top1 - base.top1));
        }
    }
    out
}

fn paper(table: &TableSpec, backbone: &str, method: &str, dataset: &str) -> Option<f64> {
    table.paper.get(backbone)?.get(method)?.get(dataset).copied()
}

fn render_markdown(table: &TableSpec, results: &[CellResult], smoke: bool, recipe: &Recipe) -> String {
    let mut md = format!("# {}{}\n\n", table.title, if smoke { " — SMOKE RUN (synthetic data)" } else { "" });
    if smoke {
        md.push_str(&format!(
            "**Smoke run**: synthetic geo-aware data ({} classes, {} training and {} validation images per class, {}² crops), scaled-down backbones, {} epochs. The measured numbers show the pipeline works and that fusing location beats image-only on data built for it; they are not comparable with the paper's column.\n\n",
            table.smoke.synth.n_classes(),
            table.smoke.synth.train_per_class,
            table.smoke.synth.val_per_class,
            recipe.image_size,
            recipe.epochs
        ));
    }
    md.push_str("\"*\" baselines are a reconstruction (the paper does not publish their layers). Top-1 in %, best epoch on the validation split.\n\n");
    let mut header = "| backbone | method |".to_owned();
    let mut rule = "| --- | --- |".to_owned();
    for d in &table.datasets {
        header.push_str(&format!(" {} top-1 | paper | Δ vs image-only | params |", d.label));
        rule.push_str(" ---: | ---: | ---: | ---: |");
    }
    md.push_str(&format!("{header}\n{rule}\n"));
    for b in &table.backbones {
        for m in &table.methods {
            let mut row = format!("| {} | {} |", b.label, m.label);
            for d in &table.datasets {
                let cell = find(results, &b.key, &m.key, &d.key);
                let base = find(results, &b.key, "image-only", &d.key);
                let top1 = cell.map_or("—".into(), |c| format!("{:.2}", c.top1));
                let paper = paper(table, &b.key, &m.key, &d.key).map_or("—".into(), |p| format!("{p:.3}"));
                let gap = match (cell, base) {
                    (Some(c), Some(base)) if m.key != "image-only" => format!("{:+.2}", c.top1 - base.top1),
                    _ => "—".into(),
                };
                let params = cell.map_or("—".into(), |c| {
                    if smoke {
                        format!("{:.2} M (full scale {:.1} M)", c.params as f64 / 1e6, c.full_params as f64 / 1e6)
                    } else {
                        format!("{:.1} M", c.params as f64 / 1e6)
                    }
                });
                row.push_str(&format!(" {top1} | {paper} | {gap} | {params} |"));
            }
            md.push_str(&row);
            md.push('\n');
        }
    }
    let gaps = fused_gap(table, results);
    if let (Some(min), Some(max)) =
        (gaps.iter().map(|g| g.2).reduce(f64::min), gaps.iter().map(|g| g.2).reduce(f64::max))
    {
        md.push_str(&format!("\nEvery fused model against its image-only row: {min:+.2} to {max:+.2} points top-1.\n"));
    }
    let seconds: f64 = results.iter().map(|r| r.seconds).sum();
    md.push_str(&format!(
        "\nRuns: `runs/{}{}/<backbone>-<method>-<dataset>/`; this invocation spent {:.1} min.\n",
        if smoke { "smoke/" } else { "" },
        table.name,
        seconds / 60.0
    ));
    md
}

fn render_csv(table: &TableSpec, results: &[CellResult]) -> String {
    let mut csv = "backbone,method,dataset,top1,paper_top1,params,full_scale_params\n".to_owned();
    for r in results {
        let paper = paper(table, &r.backbone, &r.method, &r.dataset).map_or(String::new(), |p| format!("{p:.3}"));
        csv.push_str(&format!(
            "{},{},{},{:.3},{paper},{},{}\n",
            r.backbone, r.method, r.dataset, r.top1, r.params, r.full_params
        ));
    }
    csv
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
        assert!(n >= 1);
    }
}
