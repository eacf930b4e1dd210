//! `cargo xtask bench predict`: `dmlp predict`'s work (read each photo's EXIF, decode, the
//! evaluation view, ResNet-50 + Dynamic MLP-C, the top 5) on a folder of photo-sized JPEGs with
//! GPS and dates in their EXIF, beside PyTorch + PIL doing the same in the same run
//! (`xtask/python/bench_predict.py`). Both sides: every core, batches of 16, weights random (the
//! work does not depend on them); model loading is timed apart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use dmlp_datasets::ClassInfo;
use dmlp_datasets::synth::photo_like_jpeg;
use dmlp_experiment::{GivenMetadata, Predictor, RunConfig};
use dmlp_photo::PhotoMetadata;

#[derive(Debug, clap::Args)]
pub(crate) struct PredictBenchArgs {
    /// A Python with PyTorch and Pillow (torchvision for its transforms, if installed): runs the
    /// same work in the same run.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Photos of each size (about 500×375 and 800×600).
    #[arg(long, default_value_t = 32)]
    images: usize,
    /// Classes of the model (iNat 2021's 10,000 by default).
    #[arg(long, default_value_t = 10_000)]
    classes: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Rounds of both sides in turn (dmlp, then PyTorch); the best of each is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Threads on both sides (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object as the last line of standard output.
    #[arg(long)]
    json: bool,
}

/// One pass over the folder.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
struct PassTimes {
    /// Seconds to build the model and load its weights.
    load_s: f64,
    /// Seconds from the first photo read to the first batch's top 5.
    first_result_s: f64,
    /// Seconds for every photo, reading to top 5.
    total_s: f64,
}

fn write_photos(dir: &Path, per_size: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut paths = Vec::new();
    for (prefix, (w, h)) in [("s", (500u32, 375u32)), ("l", (800, 600))] {
        for i in 0..per_size {
            let (w, h) = if i % 4 == 3 { (h, w) } else { (w, h) };
            let jpeg = photo_like_jpeg(w, h, i as u64 + if prefix == "l" { 1000 } else { 0 }, 90)?;
            // Places and days spread over the globe and the year, as a phone writes them.
            let k = (i + if prefix == "l" { per_size } else { 0 }) as f64;
            let metadata = PhotoMetadata {
                latitude: Some(-60.0 + (k * 37.0) % 130.0),
                longitude: Some(-179.0 + (k * 97.0) % 358.0),
                date: Some(dmlp_geo::Date::new(2021, 1 + (i % 12) as u8, 1 + (i % 28) as u8)?),
                orientation: 1,
                ..PhotoMetadata::default()
            };
            let bytes = dmlp_photo::jpeg_with_exif(&jpeg, &metadata).map_err(anyhow::Error::msg)?;
            let path = dir.join(format!("{prefix}{i:03}.jpg"));
            std::fs::write(&path, bytes)?;
            paths.push(path);
        }
    }
    Ok(paths)
}

fn config_text(classes: usize) -> String {
    format!(
        "[model]\nbackbone = \"resnet50\"\nnum_classes = {classes}\nmetadata = \"geo_temporal\"\n\n[model.fusion]\ntype = \"dynamic_mlp_c\"\n\n[data]\nroot = \".\"\nimage_size = 224\n\n[train]\nepochs = 1\nbatch_size = 16\nlr = 0.1\n"
    )
}

/// One dmlp pass: the predictor loaded from `weights`, then the photos in batches.
fn dmlp_pass(
    config: &RunConfig,
    weights: &Path,
    classes: &[ClassInfo],
    photos: &[PathBuf],
    batch: usize,
    threads: usize,
) -> anyhow::Result<PassTimes> {
    let start = Instant::now();
    let predictor = Predictor::new(config, weights, classes.to_vec(), &Device::Cpu)?;
    let load_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut first_result_s = None;
    for chunk in photos.chunks(batch) {
        let prepared = predictor.prepare_all(chunk, &GivenMetadata::default(), threads);
        let prepared = prepared.into_iter().collect::<Result<Vec<_>, _>>()?;
        if let Some(photo) = prepared.iter().find(|p| !predictor.uses_metadata_of(&p.observation)) {
            anyhow::bail!("{}: its EXIF position and date were not read", photo.path.display());
        }
        let top = predictor.predict(&prepared, 5)?;
        std::hint::black_box(&top);
        first_result_s.get_or_insert(start.elapsed().as_secs_f64());
    }
    let total_s = start.elapsed().as_secs_f64();
    Ok(PassTimes { load_s, first_result_s: first_result_s.unwrap_or(total_s), total_s })
}

pub(crate) fn run(args: &PredictBenchArgs) -> anyhow::Result<ExitCode> {
    let threads = crate::bench::set_threads(args.threads);
    let dir = crate::paths::project_root().join("target").join("bench-predict");
    let photos = write_photos(&dir.join("photos"), args.images)?;
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config_text(args.classes))?;
    let config = RunConfig::from_file(&config_path, &[])?;
    let model = dmlp_model::Classifier::new(&config.model, 0, &Device::Cpu)?;
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(&model.store().tensors(), &weights)?;
    drop(model);
    let classes: Vec<ClassInfo> = (0..args.classes)
        .map(|i| ClassInfo { source_id: i as u64, name: format!("class {i}"), supercategory: None })
        .collect();
    let list: Vec<String> = photos.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(dir.join("photos.txt"), list.join("\n") + "\n")?;
    eprintln!(
        "bench predict: {} photos, ResNet-50 + Dynamic MLP-C, {} classes, batches of {}, {threads} threads, release build: {}",
        photos.len(),
        args.classes,
        args.batch_size,
        !cfg!(debug_assertions)
    );

    let (mut ours, mut theirs): (Vec<PassTimes>, Vec<PassTimes>) = (Vec::new(), Vec::new());
    let mut torch_version = None;
    for round in 0..args.rounds.max(1) {
        let t = dmlp_pass(&config, &weights, &classes, &photos, args.batch_size, threads)?;
        eprintln!(
            "round {}: dmlp    {:.1} photos/s, first result {:.2} s, load {:.2} s",
            round + 1,
            photos.len() as f64 / t.total_s,
            t.first_result_s,
            t.load_s
        );
        ours.push(t);
        if let Some(python) = &args.python {
            let script_args = vec![
                "--photos".into(),
                dir.join("photos.txt").display().to_string(),
                "--classes".into(),
                args.classes.to_string(),
                "--batch-size".into(),
                args.batch_size.to_string(),
                "--threads".into(),
                threads.to_string(),
            ];
            let peer: serde_json::Value = crate::bench::run_python_json(python, "bench_predict.py", &script_args)?;
            let t: PassTimes = serde_json::from_value(peer.clone())?;
            torch_version = peer["torch_version"].as_str().map(str::to_owned);
            eprintln!(
                "round {}: PyTorch {:.1} photos/s, first result {:.2} s, load {:.2} s",
                round + 1,
                photos.len() as f64 / t.total_s,
                t.first_result_s,
                t.load_s
            );
            theirs.push(t);
        }
    }
    let best = |v: &[PassTimes]| v.iter().copied().min_by(|a, b| a.total_s.total_cmp(&b.total_s));
    let rate = |t: &PassTimes| photos.len() as f64 / t.total_s;
    let ours = best(&ours).context("no pass")?;
    let theirs = best(&theirs);
    println!(
        "dmlp predict: {:.1} photos/s, first result {:.2} s (model load {:.2} s)",
        rate(&ours),
        ours.first_result_s,
        ours.load_s
    );
    match &theirs {
        Some(t) => println!(
            "PyTorch {} + PIL: {:.1} photos/s, first result {:.2} s (model build {:.2} s); dmlp / PyTorch throughput {:.2}×",
            torch_version.as_deref().unwrap_or("?"),
            rate(t),
            t.first_result_s,
            t.load_s,
            rate(&ours) / rate(t)
        ),
        None => println!("PyTorch side skipped (no --python)"),
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "photos": photos.len(), "classes": args.classes, "batch_size": args.batch_size, "threads": threads,
                "photos_per_s": rate(&ours), "first_result_s": ours.first_result_s, "load_s": ours.load_s,
                "torch_version": torch_version,
                "torch_photos_per_s": theirs.as_ref().map(rate), "torch_first_result_s": theirs.map(|t| t.first_result_s),
                "ratio": theirs.as_ref().map(|t| rate(&ours) / rate(t)),
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
