//! `cargo xtask reproduce TABLE [--smoke] [--data-root R]`: runs every cell of a table's
//! matrix (`configs/tables/TABLE.toml`), skipping finished cells and resuming interrupted ones,
//! then writes `results/TABLE.{md,csv}` (`results/smoke/...` with `--smoke`) with the measured
//! top-1 beside the paper's and each cell's parameter count, and beside them each column's
//! per-class and training-curve figures (`figures.rs`).
//!
//! A cell is an image-only model, a fused model (any fusion kind, any metadata), or a baseline
//! (PriorsNet, GeoNet) over the image-only cell of its backbone and dataset, which runs first.

mod data;
mod figures;
mod render;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use dmlp_backbones::BackboneSpec;
use dmlp_baselines::geonet::GeoNet;
use dmlp_baselines::priorsnet::{PriorsNet, Sampler};
use dmlp_datasets::{DatasetName, SplitScheme};
use dmlp_experiment::{
    BaselineConfig, BaselineType, DataConfig, EnsembleMember, PriorData, ProgressBars, Provenance, RunConfig,
    RunOptions, evaluate_checkpoint_on, evaluate_ensemble, train_run,
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
    /// cpu or cuda:N; several, comma-separated (`--devices cuda:0,cuda:1`), train and test each
    /// Dynamic MLP and fusion cell data parallel across them (the baselines' PriorsNet and GeoNet
    /// stages, ensembles and figures use the first).
    #[arg(long, visible_alias = "devices", value_delimiter = ',', default_value = "cpu")]
    device: Vec<String>,
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
        pretrained: None,
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

/// `value` with the keys of each `layer` set on top (a row's `[train]` or `[data]` overrides),
/// through its TOML form, so that any key of the config can be set and a wrong one is refused.
fn with_overrides<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: T,
    layers: &[&toml::Table],
    what: &str,
) -> anyhow::Result<T> {
    if layers.iter().all(|l| l.is_empty()) {
        return Ok(value);
    }
    let mut table: toml::Table = toml::from_str(&toml::to_string(&value)?)?;
    for layer in layers {
        for (key, v) in layer.iter() {
            table.insert(key.clone(), v.clone());
        }
    }
    table.try_into().with_context(|| format!("a row's [{what}] overrides"))
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

/// What every cell of one invocation shares.
struct Matrix<'a> {
    args: &'a ReproduceArgs,
    table: &'a TableSpec,
    recipe: Recipe,
    columns: Vec<ColumnData>,
    runs_root: PathBuf,
    /// Every device; `device` is the first.
    devices: Vec<candle_core::Device>,
    device: candle_core::Device,
    provenance: Provenance,
    smoke_baselines: Option<&'a SmokeBaselines>,
}

/// One cell: a backbone row, a method row and a dataset column.
struct Cell<'a> {
    backbone: &'a table::BackboneRow,
    method: &'a MethodRow,
    dataset: usize,
    name: String,
    tag: String,
}

/// A cell's top-1 and its parameter counts (smoke and full scale).
struct Measured {
    top1: f64,
    params: usize,
    full_params: usize,
}

impl Matrix<'_> {
    fn run_dir(&self, name: &str) -> PathBuf {
        self.runs_root.join(name)
    }

    fn num_classes(&self, dataset: &DatasetColumn) -> usize {
        if self.args.smoke { self.table.smoke.synth.n_classes() } else { dataset.num_classes }
    }

    fn backbone(&self, row: &table::BackboneRow) -> BackboneSpec {
        if self.args.smoke { row.smoke_backbone.clone() } else { full_backbone(row) }
    }

    /// The row's training resolution at this run's scale.
    fn image_size(&self, row: &table::BackboneRow) -> u32 {
        let size = if self.args.smoke { row.smoke_image_size } else { row.image_size };
        size.unwrap_or(self.recipe.image_size)
    }

    /// The recipe's `[train]` with the row's overrides.
    fn train(&self, row: &table::BackboneRow) -> anyhow::Result<TrainConfig> {
        let mut layers = vec![&row.train];
        if self.args.smoke {
            layers.push(&row.smoke_train);
        }
        with_overrides(train_config(&self.recipe), &layers, "train")
    }

    /// The row's pretrained source, a relative file path resolved against the repository's root.
    fn pretrained(&self, row: &table::BackboneRow) -> String {
        match dmlp_pretrained::WeightsSource::parse(&row.pretrained) {
            Ok(dmlp_pretrained::WeightsSource::File(path)) if path.is_relative() => {
                crate::paths::project_root().join(path).to_string_lossy().into_owned()
            }
            _ => row.pretrained.clone(),
        }
    }

    /// The column's `[data]` at the row's resolution, with the row's overrides.
    fn data(&self, dataset: &DatasetColumn, d: usize, row: &table::BackboneRow) -> anyhow::Result<DataConfig> {
        let mut data = self.column_data(dataset, d);
        data.image_size = self.image_size(row);
        let mut layers = vec![&row.data];
        if self.args.smoke {
            layers.push(&row.smoke_data);
        }
        with_overrides(data, &layers, "data")
    }

    fn column_data(&self, dataset: &DatasetColumn, d: usize) -> DataConfig {
        let smoke = self.args.smoke;
        DataConfig {
            dataset: if smoke { DatasetName::Inat2021 } else { dataset.name },
            split_scheme: if smoke { SplitScheme::Official } else { dataset.split_scheme },
            root: self.columns[d].root.clone(),
            train_split: "train".into(),
            val_split: "val".into(),
            image_size: self.recipe.image_size,
            eval_resize: None,
            test_scales: None,
            ten_crop: false,
            interpolation: Default::default(),
            rand_augment: None,
            random_erasing: 0.0,
            workers: self.recipe.workers,
            cache_dir: if smoke { None } else { dmlp_prepare::default_cache_dir(|k| std::env::var(k).ok()) },
            allow_missing_metadata: false,
            bad_images: dmlp_experiment::BadImagesPolicy::default(),
        }
    }

    /// The model config of `method` at this run's scale, and at the paper's.
    fn models(&self, cell: &Cell<'_>, method: &MethodRow) -> (ModelConfig, ModelConfig) {
        let dataset = &self.table.datasets[cell.dataset];
        let mut model =
            model_config(self.backbone(cell.backbone), method, dataset, self.num_classes(dataset), &self.recipe);
        if !self.args.smoke {
            model.pretrained = Some(self.pretrained(cell.backbone));
        }
        let full = model_config(full_backbone(cell.backbone), method, dataset, dataset.num_classes, &self.table.full);
        (model, full)
    }

    /// An image-only or fused cell: trained (or resumed) unless finished earlier (by this row or
    /// another row of the same run), then measured on the row's test views if it has its own.
    fn model_cell(&self, cell: &Cell<'_>) -> anyhow::Result<Measured> {
        let (model, full_model) = self.models(cell, cell.method);
        let run_dir = self.run_dir(&cell.name);
        let data = self.data(&self.table.datasets[cell.dataset], cell.dataset, cell.backbone)?;
        let config = RunConfig { model: model.clone(), data, train: self.train(cell.backbone)? };
        let trained = match finished_top1(&run_dir, config.train.epochs)? {
            Some(top1) => {
                eprintln!("{}: finished earlier, top-1 {top1:.2}", cell.tag);
                top1
            }
            None => {
                let resume = has_checkpoint(&run_dir)?;
                eprintln!("{}: {}", cell.tag, if resume { "resuming" } else { "training" });
                let options =
                    RunOptions { resume, stop_after: None, hub: None, allow_config_change: false, cluster: None };
                let mut observer = ProgressBars::new("");
                train_run(&config, &run_dir, &self.devices, options, &self.provenance, &mut observer)
                    .with_context(|| format!("cell {}", cell.name))?
                    .best_top1()
            }
        };
        let top1 = match self.test_config(cell.backbone, &config) {
            Some(test) => {
                let weights = RunDir::open(&run_dir)?.weights(Which::Best)?;
                let (evaluation, _) = evaluate_checkpoint_on(&test, &weights, &self.devices, 0)
                    .with_context(|| format!("cell {}: its test", cell.name))?;
                let top1 = evaluation.accuracy.top1;
                eprintln!(
                    "{}: test {} top-1 {top1:.2} (the run's own views {trained:.2})",
                    cell.tag,
                    describe_test(&test)
                );
                top1
            }
            None => trained,
        };
        Ok(Measured { top1, params: count_params(&model)?, full_params: count_params(&full_model)? })
    }

    /// The run's config with the row's test views, if the row has its own.
    fn test_config(&self, row: &table::BackboneRow, config: &RunConfig) -> Option<RunConfig> {
        let test = row.test.as_ref()?;
        let mut config = config.clone();
        config.data.test_scales = Some(if self.args.smoke { test.smoke_scales.clone() } else { test.scales.clone() });
        config.data.ten_crop = test.ten_crop;
        config.data.eval_resize = None;
        Some(config)
    }

    /// The ensemble row: the ensemble method's model of every distinct run (at full scale, those
    /// whose row has a paper top-1 above the threshold), each with its last row's test views.
    fn ensemble(&self, spec: &table::EnsembleRow) -> anyhow::Result<Vec<CellResult>> {
        let method = self.table.methods.iter().find(|m| m.key == spec.method).context("the ensemble's method")?;
        let mut out = Vec::new();
        for (d, dataset) in self.table.datasets.iter().enumerate() {
            let started = Instant::now();
            let mut members = Vec::new();
            let (mut params, mut full_params) = (0, 0);
            let mut runs: Vec<&str> = Vec::new();
            for row in self.table.backbones.iter().rev() {
                if runs.contains(&row.run_key()) {
                    continue;
                }
                let paper =
                    self.table.paper.get(&row.key).and_then(|m| m.get(&spec.method)).and_then(|p| p.get(&dataset.key));
                if !self.args.smoke && spec.paper_above.is_some_and(|t| paper.is_none_or(|p| *p < t)) {
                    continue;
                }
                runs.push(row.run_key());
                let cell = Cell { backbone: row, method, dataset: d, name: String::new(), tag: String::new() };
                let (model, full_model) = self.models(&cell, method);
                let data = self.data(dataset, d, row)?;
                let config = RunConfig { model: model.clone(), data, train: self.train(row)? };
                let config = self.test_config(row, &config).unwrap_or(config);
                let run_dir = self.run_dir(&format!("{}-{}-{}", row.run_key(), method.key, dataset.key));
                let weights = RunDir::open(&run_dir)?.weights(Which::Best)?;
                params += count_params(&model)?;
                full_params += count_params(&full_model)?;
                members.push(EnsembleMember { config, weights });
            }
            members.reverse();
            eprintln!("{}: the ensemble of {} models", spec.label, members.len());
            let evaluation = evaluate_ensemble(&members[0].config, &members, &self.device)?;
            for (member, accuracy) in members.iter().zip(&evaluation.members) {
                eprintln!("  {}: top-1 {:.2}", member.weights.display(), accuracy.top1);
            }
            out.push(CellResult {
                backbone: ENSEMBLE.into(),
                method: spec.method.clone(),
                dataset: dataset.key.clone(),
                top1: evaluation.ensemble.top1,
                params,
                full_params,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(out)
    }

    /// A baseline cell over the image-only cell of its backbone and dataset (which ran first).
    fn baseline_cell(&self, cell: &Cell<'_>, spec: &MethodBaseline) -> anyhow::Result<Measured> {
        let dataset = &self.table.datasets[cell.dataset];
        let image_method = self.table.methods.iter().find(|m| m.key == "image-only").context("no image-only row")?;
        let (image_model, full_image) = self.models(cell, image_method);
        let column = &self.columns[cell.dataset];
        let baseline = baseline_config(spec, dataset, column, self.smoke_baselines);
        let full_baseline = baseline_config(spec, dataset, column, None);
        let run_dir = self.run_dir(&cell.name);
        let top1 = match dmlp_experiment::finished_baseline(&run_dir) {
            Some(summary) => {
                eprintln!("{}: finished earlier, top-1 {:.2}", cell.tag, summary.top1);
                summary.top1
            }
            None => {
                let image_dir = self.run_dir(&format!("{}-image-only-{}", cell.backbone.run_key(), dataset.key));
                let data = self.data(dataset, cell.dataset, cell.backbone)?;
                let image_config = RunConfig { model: image_model.clone(), data, train: self.train(cell.backbone)? };
                let weights = RunDir::open(&image_dir)
                    .and_then(|run| run.weights(Which::Best))
                    .with_context(|| format!("cell {}: its image-only run", cell.name))?;
                let resume = has_checkpoint(&run_dir)?;
                let doing = if resume { "resuming" } else { "training" };
                eprintln!("{}: {doing} over {}", cell.tag, image_dir.display());
                let options =
                    RunOptions { resume, stop_after: None, hub: None, allow_config_change: false, cluster: None };
                let mut observer = ProgressBars::new(&format!("{:?}", baseline.kind).to_lowercase());
                let summary = dmlp_experiment::baseline_run(
                    &image_config,
                    &weights,
                    &baseline,
                    &run_dir,
                    &self.device,
                    options,
                    &self.provenance,
                    &mut observer,
                )
                .with_context(|| format!("cell {}", cell.name))?;
                eprintln!("{}: top-1 {:.2} (image model alone {:.2})", cell.tag, summary.top1, summary.image_only_top1);
                summary.top1
            }
        };
        let num_classes = self.num_classes(dataset);
        Ok(Measured {
            top1,
            params: count_params(&image_model)? + baseline_params(&baseline, num_classes)?,
            full_params: count_params(&full_image)? + baseline_params(&full_baseline, dataset.num_classes)?,
        })
    }
}

pub(crate) fn run(args: &ReproduceArgs) -> anyhow::Result<ExitCode> {
    let root = crate::paths::project_root();
    let table_path = root.join("configs").join("tables").join(format!("{}.toml", args.table));
    let table = read_table(&table_path)?;
    let mode = if args.smoke { "smoke" } else { "full" };
    let smoke_baselines = if args.smoke { table.smoke.baselines.as_ref() } else { None };
    if args.smoke && table.methods.iter().any(|m| m.baseline.is_some()) && smoke_baselines.is_none() {
        bail!("{}: baselines need a [smoke.baselines] table", table_path.display());
    }
    let devices = args.device.iter().map(|name| dmlp_model::parse_device(name)).collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty() {
        bail!("--device names no device");
    }
    let matrix = Matrix {
        args,
        table: &table,
        recipe: if args.smoke { table.smoke.recipe.clone() } else { table.full.clone() },
        columns: data::dataset_roots(&table, args, &root)?,
        runs_root: if args.smoke { root.join("runs").join("smoke") } else { root.join("runs") }.join(&table.name),
        devices: devices.clone(),
        device: devices[0].clone(),
        provenance: Provenance {
            git_commit: git_commit(&root),
            device: args.device.join(","),
            command: format!("cargo xtask reproduce {} ({mode})", table.name),
        },
        smoke_baselines,
    };
    let results_dir = if args.smoke { root.join("results").join("smoke") } else { root.join("results") };
    if !args.smoke {
        // Every backbone's ImageNet file is found (or fetched) before hours of training start.
        let hub = dmlp_pretrained::HubSettings::from_env();
        for backbone in &table.backbones {
            let source = matrix.pretrained(backbone);
            let found = dmlp_experiment::resolve_pretrained(&source, &hub)
                .with_context(|| format!("{}: the {} backbone's pretrained weights", table.name, backbone.key))?;
            eprintln!("{}: pretrained {} (sha256 {})", backbone.key, found.path.display(), found.sha256);
        }
    }

    // Image-only rows first: the baselines sit on them.
    let mut order: Vec<&MethodRow> = table.methods.iter().filter(|m| m.baseline.is_none()).collect();
    order.extend(table.methods.iter().filter(|m| m.baseline.is_some()));
    let mut cells = Vec::new();
    for backbone in &table.backbones {
        for method in &order {
            for (d, dataset) in table.datasets.iter().enumerate() {
                let name = format!("{}-{}-{}", backbone.run_key(), method.key, dataset.key);
                cells.push(Cell { backbone, method, dataset: d, tag: String::new(), name });
            }
        }
    }
    let total = cells.len();
    let started = Instant::now();
    let mut results = Vec::new();
    for (idx, mut cell) in cells.into_iter().enumerate() {
        cell.tag = format!("[{}/{total}] {}", idx + 1, cell.name);
        let cell_started = Instant::now();
        let measured = match &cell.method.baseline {
            None => matrix.model_cell(&cell)?,
            Some(spec) => matrix.baseline_cell(&cell, spec)?,
        };
        results.push(CellResult {
            backbone: cell.backbone.key.clone(),
            method: cell.method.key.clone(),
            dataset: table.datasets[cell.dataset].key.clone(),
            top1: measured.top1,
            params: measured.params,
            full_params: measured.full_params,
            seconds: cell_started.elapsed().as_secs_f64(),
        });
    }
    if let Some(spec) = &table.ensemble {
        results.extend(matrix.ensemble(spec)?);
    }
    std::fs::create_dir_all(&results_dir)?;
    let markdown = render_markdown(&table, &results, args.smoke, &matrix.recipe);
    std::fs::write(results_dir.join(format!("{}.md", table.name)), &markdown)?;
    std::fs::write(results_dir.join(format!("{}.csv", table.name)), render_csv(&table, &results))?;
    // A figure that cannot be drawn is reported, never a reason to lose the table.
    match figures::write_figures(&table, &matrix.runs_root, &results_dir, &matrix.device) {
        Ok(files) => {
            for file in files {
                eprintln!("figure: {}", file.display());
            }
        }
        Err(e) => eprintln!("warning: the table's figures were not drawn: {e:#}"),
    }
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

/// The `backbone` of result rows that are an ensemble.
pub(crate) const ENSEMBLE: &str = "ensemble";

/// The row's backbone at full scale: its preset, with BoTNet's relative tables laid out for the
/// row's training resolution (the other presets keep the layout of their ImageNet weights).
fn full_backbone(row: &table::BackboneRow) -> BackboneSpec {
    let preset = BackboneSpec::Preset(row.backbone);
    match (preset.resolve(), row.image_size) {
        (dmlp_backbones::CustomBackbone::Botnet { layers, width, heads, .. }, Some(img_size)) => {
            BackboneSpec::Custom(dmlp_backbones::CustomBackbone::Botnet {
                layers,
                width,
                heads,
                img_size: img_size as usize,
            })
        }
        _ => preset,
    }
}

/// "256, 288 px, ten-crop" for logs.
fn describe_test(config: &RunConfig) -> String {
    let scales = config.data.test_scales.clone().unwrap_or_else(|| vec![config.data.image_size]);
    let scales: Vec<String> = scales.iter().map(ToString::to_string).collect();
    format!("{} px{}", scales.join(", "), if config.data.ten_crop { ", ten-crop" } else { "" })
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
