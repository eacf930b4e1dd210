//! `dmlp data verify`, `dmlp data prepare` and `dmlp data decode`.

use std::path::PathBuf;
use std::sync::Mutex;

use dmlp_datasets::verify::{SplitReport, VerifyOptions, VerifyReport, verify};
use dmlp_datasets::{DatasetName, SplitScheme};
use indicatif::{ProgressBar, ProgressStyle};

/// Which dataset folder a data command works on.
#[derive(Debug, clap::Args)]
pub(crate) struct DatasetArgs {
    /// inat2017, inat2018, inat2021, inat2021-mini or yfcc-geo100.
    #[arg(long)]
    dataset: DatasetName,
    /// The dataset folder (annotation files and images, as data-manifests/<dataset>.toml lays
    /// out); it is only read.
    #[arg(long)]
    root: PathBuf,
    /// official, or supplement (yfcc-geo100: the supplement's 2,000-image val split).
    #[arg(long, default_value = "official")]
    split_scheme: SplitScheme,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    data: DatasetArgs,
    /// Also decode every image (slow on a whole dataset) and count those that fail.
    #[arg(long)]
    decode: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Name at most this many missing and corrupt files per split (counts stay exact).
    #[arg(long, default_value_t = 1000)]
    max_listed: usize,
    /// Threads checking files (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `dmlp data verify`; `Ok(false)` when the folder does not match its annotations.
pub(crate) fn run_verify(args: &VerifyArgs) -> anyhow::Result<bool> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = VerifyOptions { decode: args.decode, max_listed: args.max_listed, threads };
    let bar: Mutex<Option<(String, ProgressBar)>> = Mutex::new(None);
    let progress = |split: &str, done: usize, total: usize| {
        let mut slot = bar.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|(name, _)| name != split) {
            if let Some((_, old)) = slot.take() {
                old.finish_and_clear();
            }
            let new = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            new.set_style(style);
            new.set_prefix(split.to_owned());
            *slot = Some((split.to_owned(), new));
        }
        if let Some((_, b)) = slot.as_ref() {
            b.set_position(done as u64);
        }
    };
    let DatasetArgs { dataset, root, split_scheme } = &args.data;
    let report = verify(*dataset, root, *split_scheme, options, &progress)?;
    if let Some((_, b)) = bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.ok)
}

fn count(value: Option<usize>) -> String {
    value.map_or_else(|| "—".into(), |v| v.to_string())
}

fn render(report: &VerifyReport) -> String {
    let mut out = format!(
        "{} at {} (split scheme {}; official classes {}){}\n\n",
        report.dataset,
        report.root,
        report.split_scheme.as_str(),
        report.official_classes,
        if report.decoded { "" } else { "; images not decoded (--decode checks them)" }
    );
    out.push_str(
        "| split | records | official | classes | found | missing | corrupt | damaged | no location | no date |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (name, s) in &report.splits {
        let official = match (s.official_records, s.official_verified) {
            (Some(n), Some(false)) => format!("{n} (unverified)"),
            (Some(n), _) => n.to_string(),
            (None, _) => "—".into(),
        };
        out.push_str(&format!(
            "| {name} | {} | {official} | {} | {} | {} | {} | {} | {} | {} |\n",
            count(s.records),
            count(s.classes),
            count(s.images_found),
            count(s.images_missing),
            count(s.images_corrupt),
            count(s.images_damaged),
            count(s.without_location),
            count(s.without_date),
        ));
    }
    for (name, s) in &report.splits {
        out.push_str(&render_details(name, s));
    }
    out.push_str(if report.ok { "\nok\n" } else { "\nNOT OK: see above\n" });
    out
}

fn render_details(name: &str, s: &SplitReport) -> String {
    let mut out = String::new();
    if let Some(error) = &s.error {
        out.push_str(&format!("\n{name}: cannot be read: {error}\n"));
    }
    for (note, n) in &s.notes {
        out.push_str(&format!("\n{name}: {n} {note}"));
    }
    if !s.notes.is_empty() {
        out.push('\n');
    }
    const SHOWN: usize = 20;
    if !s.missing_files.is_empty() {
        out.push_str(&format!("\n{name}: missing files (first {}):\n", s.missing_files.len().min(SHOWN)));
        for path in s.missing_files.iter().take(SHOWN) {
            out.push_str(&format!("  {path}\n"));
        }
    }
    if !s.corrupt_files.is_empty() {
        out.push_str(&format!("\n{name}: files that fail to decode (first {}):\n", s.corrupt_files.len().min(SHOWN)));
        for (path, error) in s.corrupt_files.iter().zip(&s.corrupt_errors).take(SHOWN) {
            out.push_str(&format!("  {path}: {error}\n"));
        }
    }
    if !s.damaged_files.is_empty() {
        out.push_str(&format!(
            "\n{name}: files that decode with damaged data, as PIL reads them (first {}):\n",
            s.damaged_files.len().min(SHOWN)
        ));
        for (path, damage) in s.damaged_files.iter().zip(&s.damage).take(SHOWN) {
            out.push_str(&format!("  {path}: {damage}\n"));
        }
    }
    out
}

#[derive(Debug, clap::Args)]
pub(crate) struct PrepareArgs {
    #[command(flatten)]
    data: DatasetArgs,
    /// Where manifests live (default: $DMLP_CACHE_DIR, else $XDG_CACHE_HOME/dmlp, else ~/.cache/dmlp).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Rebuild even if the manifest matches the annotation files.
    #[arg(long)]
    force: bool,
}

/// The cache folder the user named, else the documented default.
pub(crate) fn cache_dir(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    given.cloned().or_else(|| dmlp_prepare::default_cache_dir(|k| std::env::var(k).ok())).ok_or_else(|| {
        anyhow::anyhow!("no cache folder: give --cache-dir, or set DMLP_CACHE_DIR, XDG_CACHE_HOME or HOME")
    })
}

pub(crate) fn run_prepare(args: &PrepareArgs) -> anyhow::Result<()> {
    let cache = cache_dir(args.cache_dir.as_ref())?;
    let DatasetArgs { dataset, root, split_scheme } = &args.data;
    let report = dmlp_prepare::prepare(*dataset, root, *split_scheme, &cache, args.force)?;
    println!("{} {dataset}: {}", if report.rebuilt { "prepared" } else { "up to date" }, report.dir.display());
    for (split, s) in &report.info.splits {
        println!("  {split}: {} records, {} classes", s.records, s.classes);
        for (note, n) in &s.notes {
            println!("    {n} {note}");
        }
    }
    for (split, why) in &report.info.skipped {
        println!("  {split}: skipped ({why})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// Image files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where `<file stem>.png` is written for each (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `dmlp data decode`: each file as training decodes it (the same decoder, checks and
/// fallbacks; full resolution; EXIF orientation not applied, as PIL's `convert("RGB")`), as a
/// PNG. `Ok(false)` when a file failed (each is named; the others are still written).
pub(crate) fn run_decode(args: &DecodeArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))?;
    let mut written: std::collections::BTreeSet<PathBuf> = Default::default();
    let mut failed = 0;
    for file in &args.files {
        let stem = file.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        // Two inputs with one stem (a/x.jpg, b/x.jpg) get x.png and x-2.png.
        let target = (1..)
            .map(|k| args.out.join(if k == 1 { format!("{stem}.png") } else { format!("{stem}-{k}.png") }))
            .find(|path| !written.contains(path))
            .unwrap_or_else(|| args.out.join(format!("{stem}.png")));
        match dmlp_vision::decode_rgb_checked(file) {
            Ok((image, damage)) => {
                image.save(&target).map_err(|e| anyhow::anyhow!("{}: {e}", target.display()))?;
                println!("{} → {} ({} × {})", file.display(), target.display(), image.width(), image.height());
                if let Some(damage) = damage {
                    eprintln!(
                        "warning: {}: damaged data, decoded as libjpeg (and PIL) decodes it: {damage}",
                        file.display()
                    );
                }
                written.insert(target);
            }
            Err(err) => {
                eprintln!("error: {err}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} files could not be decoded", args.files.len());
    }
    Ok(failed == 0)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExifArgs {
    /// Photos.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Runs `dmlp data exif`: what `dmlp predict` reads from each photo's EXIF, one JSON object per
/// line (`file`, `latitude`, `longitude`, `date`, `date_field`, `orientation`, `notes`, `error`).
/// `Ok(false)` when a file could not be read.
pub(crate) fn run_exif(args: &ExifArgs) -> anyhow::Result<bool> {
    let mut ok = true;
    for file in &args.files {
        let line = match dmlp_vision::read_bytes(file) {
            Ok(bytes) => {
                let m = dmlp_photo::read_metadata(&bytes);
                serde_json::json!({"file": file, "latitude": m.latitude, "longitude": m.longitude,
                    "date": m.date.map(|d| d.to_string()), "date_field": m.date_field, "orientation": m.orientation,
                    "notes": m.notes, "error": null})
            }
            Err(e) => {
                ok = false;
                serde_json::json!({"file": file, "error": e.to_string()})
            }
        };
        println!("{line}");
    }
    Ok(ok)
}
