//! Where each dataset column's data is: generated synthetic data for smoke runs (kept while its
//! config is unchanged), `R/<dataset>/` for real runs (every annotation file checked first).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_datasets::{DatasetName, SplitScheme};
use dmlp_experiment::PriorData;

use super::table::TableSpec;
use super::{ColumnData, ReproduceArgs};

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
pub(super) fn dataset_roots(table: &TableSpec, args: &ReproduceArgs, root: &Path) -> anyhow::Result<Vec<ColumnData>> {
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
