//! `dmlp weights fetch` and `dmlp weights show`: pretrained files ahead of training.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::Context;
use candle_core::Device;
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_model::{Classifier, ModelConfig, WeightsFile};
use dmlp_pretrained::{HubSettings, WeightsSource};

#[derive(Debug, clap::Args)]
pub(crate) struct FetchArgs {
    /// hf:ORG/NAME[@REVISION], e.g. hf:timm/resnet50.tv_in1k.
    id: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// A weights file (safetensors, .pth, a reference checkpoint) or hf:ORG/NAME[@REVISION].
    source: String,
    /// Check the file against this backbone only (default: every preset).
    #[arg(long)]
    backbone: Option<BackbonePreset>,
    /// List every tensor (name, dtype, shape), not only the groups.
    #[arg(long)]
    tensors: bool,
}

/// The Hub settings of the environment, with a download bar on a terminal unless `quiet`.
pub(crate) fn hub_settings(quiet: bool) -> HubSettings {
    HubSettings { progress: !quiet && std::io::stderr().is_terminal(), ..HubSettings::from_env() }
}

pub(crate) fn run_fetch(args: &FetchArgs) -> anyhow::Result<()> {
    let WeightsSource::Hub(repo) = WeightsSource::parse(&args.id)? else {
        anyhow::bail!("{:?} is not a Hub id: expected hf:ORG/NAME[@REVISION]", args.id);
    };
    let hub = hub_settings(false);
    let file = dmlp_pretrained::hub::fetch(&hub, &repo)?;
    let (sha256, bytes) =
        dmlp_pretrained::sha256_file(&file.path).with_context(|| format!("hashing {}", file.path.display()))?;
    println!(
        "{repo}: commit {} ({})",
        file.origin.commit,
        if hub.offline { "offline: from the cache" } else { "up to date" }
    );
    println!("  file    {}", file.path.display());
    println!("  sha256  {sha256}");
    println!("  size    {}", human_bytes(bytes));
    println!("  cache   {}", hub.cache_dir.display());
    Ok(())
}

pub(crate) fn run_show(args: &ShowArgs) -> anyhow::Result<()> {
    let resolved = dmlp_pretrained::resolve(&args.source, std::path::Path::new(""), &hub_settings(false))?;
    for warning in &resolved.warnings {
        eprintln!("warning: {warning}");
    }
    let file = WeightsFile::read(&resolved.path)?;
    println!("{}", resolved.path.display());
    if let Some(hub) = &resolved.hub {
        println!("  hub     {}@{} (commit {})", hub.repo, hub.revision, hub.commit);
    }
    println!("  sha256  {}", resolved.sha256);
    println!("  size    {}", human_bytes(resolved.bytes));
    if let Some(epoch) = file.epoch {
        println!("  epoch   {epoch}");
    }
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (name, tensor) in &file.tensors {
        *dtypes.entry(format!("{:?}", tensor.dtype())).or_default() += 1;
        let group = name.split('.').next().unwrap_or(name).to_owned();
        let entry = groups.entry(group).or_default();
        entry.0 += 1;
        entry.1 += tensor.elem_count();
    }
    let total: usize = groups.values().map(|(_, n)| n).sum();
    let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{n} {d}")).collect();
    println!("  tensors {} ({}), {} values", file.tensors.len(), dtypes.join(", "), human_count(total));
    for (group, (count, values)) in &groups {
        println!("    {group:<16} {count:>4} tensors {:>10} values", human_count(*values));
    }
    if args.tensors {
        for (name, tensor) in &file.tensors {
            println!("    {name:<56} {:?} {:?}", tensor.dtype(), tensor.dims());
        }
    }
    println!("as a pretrained backbone:");
    let candidates: Vec<BackboneSpec> = match &args.backbone {
        Some(preset) => vec![BackboneSpec::Preset(*preset)],
        None => BackbonePreset::ALL.iter().map(|p| BackboneSpec::Preset(*p)).collect(),
    };
    let mut fits = 0;
    for spec in candidates {
        let config = ModelConfig::image_only(spec.clone(), 1);
        let model = Classifier::new_zeroed(&config, &Device::Cpu)?;
        match model.check_pretrained_backbone(&file) {
            Ok(load) => {
                fits += 1;
                println!("  {:<14} fits: {}", spec.name(), load.summary());
            }
            Err(err) if args.backbone.is_some() => println!("  {:<14} does not fit: {err}", spec.name()),
            Err(err) => {
                let text = err.to_string();
                let first = text.lines().nth(1).unwrap_or_default().trim();
                println!("  {:<14} does not fit: {first}", spec.name());
            }
        }
    }
    if fits == 0 && args.backbone.is_none() {
        println!("  no preset fits; `--backbone NAME` shows why for one of them");
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 { format!("{mib:.1} MiB ({bytes} bytes)") } else { format!("{bytes} bytes") }
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
