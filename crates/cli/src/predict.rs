//! `dmlp predict`: a trained run on your own photos, with their EXIF location and date.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dmlp_datasets::ClassInfo;
use dmlp_experiment::{ClassProbability, GivenMetadata, MetadataSource, Predictor, PreparedPhoto, RunConfig};
use dmlp_geo::{Date, Observation};
use dmlp_model::parse_device;
use indicatif::{ProgressBar, ProgressStyle};

use crate::run::{read_config, weights_path};

#[derive(Debug, clap::Args)]
pub(crate) struct PredictArgs {
    /// The run folder: its config.toml, classes.json and best checkpoint.
    #[arg(long)]
    run: PathBuf,
    /// Photos, and folders of photos (read recursively: .jpg, .jpeg, .png).
    #[arg(required = true, value_name = "PHOTO_OR_FOLDER")]
    photos: Vec<PathBuf>,
    /// Other weights than the run's best: a checkpoint folder or a weights file.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Classes listed per photo.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// One JSON object per photo per line on standard output.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Write a CSV file (one row per photo and rank) instead of printing.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Where and when, for every photo, overriding their EXIF.
    #[command(flatten)]
    place: PlaceArgs,
    /// Ten-crop (corners, centre and their mirrors), logits averaged.
    #[arg(long)]
    ten_crop: bool,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Photos per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `--lat`, `--lon` and `--date`, shared by the commands that take a place and time.
#[derive(Debug, clap::Args)]
pub(crate) struct PlaceArgs {
    /// Latitude (degrees north), with --lon.
    #[arg(long, visible_alias = "latitude", requires = "lon", allow_hyphen_values = true)]
    pub(crate) lat: Option<f64>,
    /// Longitude (degrees east), with --lat.
    #[arg(long, visible_alias = "longitude", requires = "lat", allow_hyphen_values = true)]
    pub(crate) lon: Option<f64>,
    /// Date (YYYY-MM-DD).
    #[arg(long)]
    pub(crate) date: Option<String>,
}

impl PlaceArgs {
    /// The flags as an observation; an impossible value is an error naming it.
    pub(crate) fn observation(&self) -> anyhow::Result<Observation> {
        let date = self.date.as_deref().map(Date::parse).transpose()?;
        Ok(Observation::new(self.lat, self.lon, date)?)
    }
}

/// The exit status when some photos could not be read (the others were predicted).
pub(crate) const SOME_PHOTOS_FAILED: u8 = 3;

/// Image files under `paths` (folders recursively, in sorted order; files as given), and how
/// many other files the folders held.
fn collect_photos(paths: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, usize)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, others: &mut usize) -> anyhow::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading the folder {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading the folder {}", dir.display()))?;
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out, others)?;
            } else if is_image_name(&path) {
                out.push(path);
            } else {
                *others += 1;
            }
        }
        Ok(())
    }
    let (mut photos, mut others) = (Vec::new(), 0);
    for path in paths {
        if path.is_dir() {
            walk(path, &mut photos, &mut others)?;
        } else {
            // A file given by name is read whatever its name (a missing one is reported per file).
            photos.push(path.clone());
        }
    }
    Ok((photos, others))
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// The run's classes: its `classes.json`, else (runs from before it existed) the class list
/// of its dataset's training split where that is still on disk.
fn run_classes(run: &Path, config: &RunConfig) -> anyhow::Result<Vec<ClassInfo>> {
    if let Some(classes) = dmlp_experiment::read_classes(run)? {
        return Ok(classes);
    }
    let (train, _) = dmlp_experiment::read_splits(config).with_context(|| {
        format!(
            "{} has no {} (a run from before it was written) and its dataset could not be read for the class names",
            run.display(),
            dmlp_experiment::CLASSES_FILE
        )
    })?;
    Ok(train.classes)
}

/// One photo's outcome.
struct Outcome {
    path: PathBuf,
    result: Result<(PreparedPhoto, Vec<ClassProbability>), String>,
}

pub(crate) fn run_predict(args: &PredictArgs) -> anyhow::Result<u8> {
    // Validated once, up front: an impossible latitude is a usage error, not a per-photo one.
    let given = args.place.observation()?;
    let given = GivenMetadata { latitude: given.latitude(), longitude: given.longitude(), date: given.date() };
    let mut overrides = Vec::new();
    if args.ten_crop {
        overrides.push("data.ten_crop=true".to_owned());
    }
    let config = read_config(&args.run.join("config.toml"), &overrides)?;
    let weights = match &args.checkpoint {
        Some(path) => weights_path(path)?,
        None => weights_path(&args.run)?,
    };
    let classes = run_classes(&args.run, &config)?;
    let device = parse_device(&args.device)?;
    let predictor = Predictor::new(&config, &weights, classes, &device)
        .with_context(|| format!("loading {}", weights.display()))?;
    let (photos, others) = collect_photos(&args.photos)?;
    if photos.is_empty() {
        bail!(
            "no photos (.jpg, .jpeg, .png) in {}",
            args.photos.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    if others > 0 && !args.quiet {
        eprintln!("note: {others} files in the folders are not .jpg, .jpeg or .png and were not read");
    }
    let metadata_note = match predictor.metadata() {
        None => "an image-only model: locations and dates are not used".to_owned(),
        Some(m) => format!("the model reads {m}"),
    };
    if !args.quiet && !args.json {
        eprintln!("{} photos; {metadata_note}; weights {}", photos.len(), weights.display());
    }
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(photos.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut csv = match &args.csv {
        Some(path) => Some(CsvOut::create(path)?),
        None => None,
    };
    let top_k = args.top_k.max(1);
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (mut predicted, mut failed) = (0usize, 0usize);
    let mut stdout = std::io::stdout().lock();
    for chunk in photos.chunks(args.batch_size.max(1)) {
        let prepared = predictor.prepare_all(chunk, &given, workers);
        let ok: Vec<PreparedPhoto> = prepared.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let mut scores = predictor.predict(&ok, top_k)?.into_iter();
        let outcomes: Vec<Outcome> = chunk
            .iter()
            .zip(prepared)
            .map(|(path, r)| Outcome {
                path: path.clone(),
                result: r.map(|photo| (photo, scores.next().unwrap_or_default())).map_err(|e| format!("{e:#}")),
            })
            .collect();
        for outcome in &outcomes {
            match &outcome.result {
                Ok(_) => predicted += 1,
                Err(_) => failed += 1,
            }
            let written = if let Some(csv) = &mut csv {
                csv.write(outcome, &predictor)?;
                Ok(())
            } else if args.json {
                writeln!(stdout, "{}", json_line(outcome, &predictor))
            } else {
                bar.suspend(|| print_human(&mut stdout, outcome, &predictor))
            };
            match written {
                // The reader went away (`| head`): stop quietly, as command-line tools do.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
                other => other?,
            }
            if let Err(e) = &outcome.result
                && (args.json || csv.is_some())
            {
                bar.suspend(|| eprintln!("error: {e}"));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(csv) = csv {
        csv.finish()?;
    }
    if !args.quiet {
        eprintln!("{predicted} photos predicted, {failed} could not be read");
    }
    Ok(if failed > 0 { SOME_PHOTOS_FAILED } else { 0 })
}

fn source_label(photo: &PreparedPhoto) -> String {
    let o = &photo.observation;
    let place = match (o.latitude(), o.longitude()) {
        (Some(lat), Some(lon)) => format!("{lat:.5}, {lon:.5} ({})", photo.location_source.as_str()),
        _ => "no location found".to_owned(),
    };
    let date = match o.date() {
        Some(d) => format!("{d} ({})", photo.date_source.as_str()),
        None => "no date found".to_owned(),
    };
    format!("{place}; {date}")
}

fn print_human(out: &mut impl Write, outcome: &Outcome, predictor: &Predictor) -> std::io::Result<()> {
    match &outcome.result {
        // The error names the file.
        Err(e) => writeln!(out, "error: {e}"),
        Ok((photo, top)) => {
            let used = if predictor.metadata().is_none() {
                "image only"
            } else if predictor.uses_metadata_of(&photo.observation) {
                "metadata used"
            } else {
                "metadata incomplete: image only"
            };
            writeln!(out, "{}: {}; {used}", outcome.path.display(), source_label(photo))?;
            for note in &photo.notes {
                writeln!(out, "  note: {note}")?;
            }
            for (rank, c) in top.iter().enumerate() {
                let class = &predictor.classes[c.class];
                let supercategory = class.supercategory.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
                writeln!(out, "  {}. {:.4}  {}{supercategory}", rank + 1, c.probability, class.name)?;
            }
            Ok(())
        }
    }
}

fn json_line(outcome: &Outcome, predictor: &Predictor) -> serde_json::Value {
    let file = outcome.path.display().to_string();
    match &outcome.result {
        Err(e) => serde_json::json!({"file": file, "latitude": null, "longitude": null, "date": null,
            "metadata_source": MetadataSource::None.as_str(), "top_k": [], "error": e}),
        Ok((photo, top)) => {
            let o = &photo.observation;
            let top_k: Vec<serde_json::Value> = top
                .iter()
                .map(|c| {
                    let class = &predictor.classes[c.class];
                    serde_json::json!({"class": class.name, "supercategory": class.supercategory, "probability": c.probability, "index": c.class})
                })
                .collect();
            serde_json::json!({
                "file": file,
                "latitude": o.latitude(),
                "longitude": o.longitude(),
                "date": o.date().map(|d| d.to_string()),
                "metadata_source": photo.metadata_source().as_str(),
                "location_source": photo.location_source.as_str(),
                "date_source": photo.date_source.as_str(),
                "metadata_used": predictor.uses_metadata_of(o),
                "orientation": photo.orientation,
                "notes": photo.notes,
                "top_k": top_k,
                "error": null,
            })
        }
    }
}

/// The CSV output, written to a temporary file and renamed into place at the end.
struct CsvOut {
    path: PathBuf,
    tmp: PathBuf,
    writer: csv::Writer<std::fs::File>,
}

impl CsvOut {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let tmp = path.with_extension("csv.tmp");
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut writer = csv::Writer::from_writer(file);
        writer.write_record([
            "file",
            "latitude",
            "longitude",
            "date",
            "metadata_source",
            "metadata_used",
            "rank",
            "class",
            "supercategory",
            "probability",
            "error",
        ])?;
        Ok(Self { path: path.to_owned(), tmp, writer })
    }

    fn write(&mut self, outcome: &Outcome, predictor: &Predictor) -> anyhow::Result<()> {
        let file = outcome.path.display().to_string();
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        match &outcome.result {
            Err(e) => self.writer.write_record([file.as_str(), "", "", "", "none", "", "", "", "", "", e])?,
            Ok((photo, top)) => {
                let o = &photo.observation;
                for (rank, c) in top.iter().enumerate() {
                    let class = &predictor.classes[c.class];
                    self.writer.write_record([
                        file.clone(),
                        opt(o.latitude()),
                        opt(o.longitude()),
                        o.date().map(|d| d.to_string()).unwrap_or_default(),
                        photo.metadata_source().as_str().to_owned(),
                        predictor.uses_metadata_of(o).to_string(),
                        (rank + 1).to_string(),
                        class.name.clone(),
                        class.supercategory.clone().unwrap_or_default(),
                        c.probability.to_string(),
                        String::new(),
                    ])?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.writer.flush()?;
        drop(self.writer);
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}
