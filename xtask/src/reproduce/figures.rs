//! The figures `reproduce` writes beside each table: for every backbone × dataset, the
//! supplement's per-class curve (Fig. S4: every trained model of the column, ranked by the
//! image-only run) and the validation top-1 per epoch of the same runs (Fig. S2).

use std::path::{Path, PathBuf};

use anyhow::Context;
use dmlp_experiment::{RunConfig, evaluate_checkpoint};
use dmlp_figures::{Series, line_chart, per_class_steps};
use dmlp_train::{RunDir, Which};

use super::table::TableSpec;

/// One column's trained runs, the image-only one first: (legend label, run folder).
fn column_runs(table: &TableSpec, runs_root: &Path, backbone: &str, dataset: &str) -> Vec<(String, PathBuf)> {
    let mut methods: Vec<_> = table.methods.iter().filter(|m| m.baseline.is_none()).collect();
    methods.sort_by_key(|m| m.fusion.is_some());
    methods
        .into_iter()
        .map(|m| (m.label.clone(), runs_root.join(format!("{backbone}-{}-{dataset}", m.key))))
        .filter(|(_, run)| run.join("checkpoints").is_dir())
        .collect()
}

/// Writes `TABLE-per-class-BACKBONE-DATASET.png` and `TABLE-curves-BACKBONE-DATASET.png` into
/// `results_dir` for every column with at least two trained runs; returns the files written.
pub(super) fn write_figures(
    table: &TableSpec,
    runs_root: &Path,
    results_dir: &Path,
    device: &candle_core::Device,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for backbone in &table.backbones {
        // Rows sharing a training run (Table S1's test variants) share its figures.
        if seen.contains(&backbone.run_key()) {
            continue;
        }
        seen.push(backbone.run_key());
        for dataset in &table.datasets {
            let runs = column_runs(table, runs_root, backbone.run_key(), &dataset.key);
            if runs.len() < 2 {
                continue;
            }
            let mut per_class = Vec::new();
            let mut curves = Vec::new();
            let mut labels = Vec::new();
            for (label, run) in &runs {
                let config = RunConfig::from_file(&run.join("config.toml"), &[])?;
                let weights = RunDir::open(run)?.weights(Which::Best)?;
                let (evaluation, _) = evaluate_checkpoint(&config, &weights, device, 0)
                    .with_context(|| format!("evaluating {} for its per-class figure", run.display()))?;
                let a = &evaluation.accuracy;
                per_class.push(a.per_class.iter().map(dmlp_eval::ClassAccuracy::top1).collect::<Vec<_>>());
                labels.push(format!("{label} ({:.1} %)", a.top1));
                let metrics = RunDir::open(run)?.read_metrics()?;
                curves.push(Series {
                    label: label.clone(),
                    points: metrics.iter().map(|m| (m.epoch as f64, m.val_top1)).collect(),
                });
            }
            let classes = per_class[0].len();
            let window = (classes / 10).clamp(1, 100);
            let stem = format!("{}-{{}}-{}-{}.png", table.name, backbone.run_key(), dataset.key);
            let path = results_dir.join(stem.replace("{}", "per-class"));
            let title = format!(
                "{}, {} on {}: top-1 per category, {window} per step",
                table.name, backbone.label, dataset.label
            );
            line_chart(
                &path,
                &title,
                "categories (ranked by image-only top-1)",
                "top-1 (%)",
                &per_class_steps(&labels, &per_class, window)?,
            )?;
            written.push(path);
            let path = results_dir.join(stem.replace("{}", "curves"));
            let title = format!("{}, {} on {}: validation top-1 per epoch", table.name, backbone.label, dataset.label);
            line_chart(&path, &title, "epoch", "top-1 (%)", &curves)?;
            written.push(path);
        }
    }
    Ok(written)
}
