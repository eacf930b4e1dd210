//! A reproduced table as Markdown and CSV, the paper's numbers beside the measured ones.

use super::CellResult;
use super::table::{Recipe, TableSpec};

pub(crate) fn find<'a>(
    results: &'a [CellResult],
    backbone: &str,
    method: &str,
    dataset: &str,
) -> Option<&'a CellResult> {
    results.iter().find(|r| r.backbone == backbone && r.method == method && r.dataset == dataset)
}

fn paper(table: &TableSpec, backbone: &str, method: &str, dataset: &str) -> Option<f64> {
    if backbone == super::ENSEMBLE {
        return table.ensemble.as_ref().filter(|e| e.method == method)?.paper.get(dataset).copied();
    }
    table.paper.get(backbone)?.get(method)?.get(dataset).copied()
}

/// One ordering the smoke data must show.
pub(crate) struct Claimed {
    pub what: String,
    pub dataset: String,
    /// Top-1 of the better method minus the worse one's; ≤ 0 breaks the claim.
    pub gap: f64,
    pub over_image_only: bool,
}

/// Every pair the smoke data must order: each method above image-only, then the table's own
/// claims.
pub(crate) fn claims(table: &TableSpec, results: &[CellResult]) -> Vec<Claimed> {
    let label = |key: &str| table.methods.iter().find(|m| m.key == key).map_or(key.to_owned(), |m| m.label.clone());
    let mut pairs: Vec<(String, String)> = table
        .methods
        .iter()
        .filter(|m| m.key != "image-only")
        .map(|m| (m.key.clone(), "image-only".to_owned()))
        .collect();
    pairs.extend(table.smoke_claims.iter().map(|c| (c.better.clone(), c.worse.clone())));
    let mut out = Vec::new();
    for b in &table.backbones {
        for d in &table.datasets {
            for (better, worse) in &pairs {
                if let (Some(x), Some(y)) =
                    (find(results, &b.key, better, &d.key), find(results, &b.key, worse, &d.key))
                {
                    out.push(Claimed {
                        what: format!("{} {} over {}", b.label, label(better), label(worse)),
                        dataset: d.label.clone(),
                        gap: x.top1 - y.top1,
                        over_image_only: worse == "image-only",
                    });
                }
            }
        }
    }
    out
}

/// One dataset's columns of a row: ` top-1 | paper | gap | params |`.
fn columns(cell: Option<&CellResult>, paper: Option<f64>, gap: &str, smoke: bool) -> String {
    let top1 = cell.map_or("—".into(), |c| format!("{:.2}", c.top1));
    let paper = paper.map_or("—".into(), |p| format!("{p:.3}"));
    let params = cell.map_or("—".into(), |c| {
        if smoke {
            format!("{:.2} M (full scale {:.1} M)", c.params as f64 / 1e6, c.full_params as f64 / 1e6)
        } else {
            format!("{:.1} M", c.params as f64 / 1e6)
        }
    });
    format!(" {top1} | {paper} | {gap} | {params} |")
}

pub(crate) fn render_markdown(table: &TableSpec, results: &[CellResult], smoke: bool, recipe: &Recipe) -> String {
    let mut md = format!("# {}{}\n\n", table.title, if smoke { " — SMOKE RUN (synthetic data)" } else { "" });
    if smoke {
        md.push_str(&format!(
            "**Smoke run**: synthetic geo-aware data ({} classes, {} training and {} validation images per class, {}² crops), scaled-down backbones, {} epochs. The measured numbers show the pipeline works and that using the location beats image-only on data built for it; they are not comparable with the paper's column.\n\n",
            table.smoke.synth.n_classes(),
            table.smoke.synth.train_per_class,
            table.smoke.synth.val_per_class,
            recipe.image_size,
            recipe.epochs
        ));
    }
    if let Some(note) = &table.note {
        md.push_str(note.trim());
        md.push_str("\n\n");
    }
    md.push_str("Top-1 in %, best epoch on the validation split (baselines: after their last epoch).\n\n");
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
                let gap = match (cell, base) {
                    (Some(c), Some(base)) if m.key != "image-only" => format!("{:+.2}", c.top1 - base.top1),
                    _ => "—".into(),
                };
                row.push_str(&columns(cell, paper(table, &b.key, &m.key, &d.key), &gap, smoke));
            }
            md.push_str(&row);
            md.push('\n');
        }
    }
    if let Some(ensemble) = &table.ensemble {
        let mut row = format!("| {} | |", ensemble.label);
        for d in &table.datasets {
            let cell = find(results, super::ENSEMBLE, &ensemble.method, &d.key);
            row.push_str(&columns(cell, paper(table, super::ENSEMBLE, &ensemble.method, &d.key), "—", smoke));
        }
        md.push_str(&row);
        md.push('\n');
    }
    let gaps = claims(table, results);
    let over_image: Vec<f64> = gaps.iter().filter(|g| g.over_image_only).map(|g| g.gap).collect();
    if let (Some(min), Some(max)) =
        (over_image.iter().copied().reduce(f64::min), over_image.iter().copied().reduce(f64::max))
    {
        md.push_str(&format!("\nEvery method against its image-only row: {min:+.2} to {max:+.2} points top-1.\n"));
    }
    for g in gaps.iter().filter(|g| !g.over_image_only) {
        md.push_str(&format!("\n{} on {}: {:+.2} points.\n", g.what, g.dataset, g.gap));
    }
    let seconds: f64 = results.iter().map(|r| r.seconds).sum();
    md.push_str(&format!(
        "\nRuns: `runs/{}{}/<backbone or run>-<method>-<dataset>/`; this invocation spent {:.1} min.\n",
        if smoke { "smoke/" } else { "" },
        table.name,
        seconds / 60.0
    ));
    md
}

pub(crate) fn render_csv(table: &TableSpec, results: &[CellResult]) -> String {
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
