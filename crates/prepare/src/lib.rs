//! `dmlp data prepare`: a dataset's records as a Parquet manifest, built with polars.
//!
//! The manifest of a dataset folder lives under a cache folder, never in the dataset folder
//! (which may be read-only): `<cache>/manifests/<dataset>-<scheme>-<hash of the root's absolute
//! path>/`, holding per split `records-<split>.parquet` (`image_id` u64, `path` relative to the
//! root, `label` u32, `latitude`, `longitude` f64 or null, `date` `YYYY-MM-DD` or null) and
//! `classes-<split>.parquet` (`source_id`, `name`, `supercategory`), plus `prepared.json` (the
//! size and modification time of every annotation file read, the record counts and the
//! reader's notes). [`load_split`] reads a split back only while every annotation file still
//! matches; otherwise [`prepare`] rebuilds it. The folder is written under a temporary name and
//! renamed into place, so a half-written manifest is never read.
//!
//! Architecture invariant: reads datasets only through `dmlp-datasets`' readers (the manifest
//! holds exactly what they return); no models, no trainer, no environment variables (the caller
//! says where the cache is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use dmlp_datasets::{ClassInfo, DatasetError, DatasetName, Record, Split, SplitScheme, read_split};
use dmlp_geo::{Date, Observation};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// What can go wrong while preparing or loading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("no split of {dataset} could be read under {root}: {errors}")]
    NothingToPrepare { dataset: DatasetName, root: PathBuf, errors: String },
}

/// One annotation file as it was when the manifest was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Relative to the dataset root.
    pub file: String,
    pub bytes: u64,
    pub modified_ns: u128,
}

/// The layout of the manifest's files: 2 added the `date_c` column (a fraction of the year where
/// a record has no date).
pub const MANIFEST_FORMAT: u32 = 2;

/// `prepared.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedInfo {
    /// The manifest layout's version ([`MANIFEST_FORMAT`]); a manifest of another is stale and
    /// rebuilt, never misread.
    #[serde(default)]
    pub format: u32,
    pub dataset: DatasetName,
    pub split_scheme: SplitScheme,
    pub root: PathBuf,
    pub splits: BTreeMap<String, PreparedSplit>,
    /// Splits whose annotation files were absent or unreadable, with the reason.
    pub skipped: BTreeMap<String, String>,
}

/// One prepared split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedSplit {
    pub records: usize,
    pub classes: usize,
    pub inputs: Vec<FileStamp>,
    pub notes: BTreeMap<String, usize>,
}

/// What `prepare` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareReport {
    pub dir: PathBuf,
    pub info: PreparedInfo,
    /// False when an up-to-date manifest was already there.
    pub rebuilt: bool,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> PrepareError {
    PrepareError::Io { path: path.to_owned(), message: e.to_string() }
}

fn parquet_err(path: &Path, e: impl std::fmt::Display) -> PrepareError {
    PrepareError::Parquet { path: path.to_owned(), message: e.to_string() }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn absolute(root: &Path) -> Result<PathBuf, PrepareError> {
    std::fs::canonicalize(root).or_else(|_| std::path::absolute(root)).map_err(|e| io_err(root, e))
}

/// The documented default cache folder, from the environment variables `var` looks up:
/// `$DMLP_CACHE_DIR`, else `$XDG_CACHE_HOME/dmlp`, else `$HOME/.cache/dmlp`. The caller passes
/// the lookup (`|k| std::env::var(k).ok()`), so that this crate reads no environment itself.
pub fn default_cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty());
    set("DMLP_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| set("XDG_CACHE_HOME").map(|d| Path::new(&d).join("dmlp")))
        .or_else(|| set("HOME").map(|h| Path::new(&h).join(".cache").join("dmlp")))
}

/// The folder holding the manifest of `dataset` at `root` under `cache_dir`.
pub fn manifest_dir(
    cache_dir: &Path,
    dataset: DatasetName,
    root: &Path,
    scheme: SplitScheme,
) -> Result<PathBuf, PrepareError> {
    let root = absolute(root)?;
    let hash = fnv1a64(root.to_string_lossy().as_bytes());
    Ok(cache_dir.join("manifests").join(format!("{dataset}-{}-{hash:016x}", scheme.as_str())))
}

fn stamp(root: &Path, path: &Path) -> Result<FileStamp, PrepareError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    let modified = meta.modified().map_err(|e| io_err(path, e))?;
    Ok(FileStamp {
        file: path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned(),
        bytes: meta.len(),
        modified_ns: modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    })
}

fn stamps(dataset: DatasetName, root: &Path, split: &str) -> Result<Vec<FileStamp>, PrepareError> {
    dataset.annotation_files(root, split).iter().map(|path| stamp(root, path)).collect()
}

fn read_info(dir: &Path) -> Option<PreparedInfo> {
    let text = std::fs::read_to_string(dir.join("prepared.json")).ok()?;
    serde_json::from_str::<PreparedInfo>(&text).ok().filter(|info| info.format == MANIFEST_FORMAT)
}

/// Whether the manifest's record of `split` still matches the annotation files.
fn split_is_current(info: &PreparedInfo, dataset: DatasetName, root: &Path, split: &str) -> bool {
    info.splits.get(split).is_some_and(|s| stamps(dataset, root, split).is_ok_and(|now| now == s.inputs))
}

/// Builds (or keeps, when every split still matches its files) the manifest of `dataset` at
/// `root` under `cache_dir`. Splits whose annotation files are absent are skipped and listed.
pub fn prepare(
    dataset: DatasetName,
    root: &Path,
    scheme: SplitScheme,
    cache_dir: &Path,
    force: bool,
) -> Result<PrepareReport, PrepareError> {
    dataset.check_scheme(scheme)?;
    let dir = manifest_dir(cache_dir, dataset, root, scheme)?;
    if !force && let Some(info) = read_info(&dir) {
        let all_current = dataset.splits(scheme).iter().all(|split| {
            split_is_current(&info, dataset, root, split)
                || (info.skipped.contains_key(*split) && stamps(dataset, root, split).is_err())
        });
        if all_current {
            return Ok(PrepareReport { dir, info, rebuilt: false });
        }
    }
    let mut info = PreparedInfo {
        format: MANIFEST_FORMAT,
        dataset,
        split_scheme: scheme,
        root: absolute(root)?,
        splits: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    let parent = dir.parent().unwrap_or(cache_dir);
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    if let Err(err) = write_splits(dataset, root, scheme, &tmp, &mut info) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err);
    }
    if info.splits.is_empty() {
        let _ = std::fs::remove_dir_all(&tmp);
        let errors = info.skipped.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>().join("; ");
        return Err(PrepareError::NothingToPrepare { dataset, root: root.to_owned(), errors });
    }
    let json = serde_json::to_string_pretty(&info).map_err(|e| io_err(&tmp, e))?;
    std::fs::write(tmp.join("prepared.json"), json).map_err(|e| io_err(&tmp, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
    Ok(PrepareReport { dir, info, rebuilt: true })
}

/// Reads every split whose annotation files exist and writes its Parquet files into `dir`.
fn write_splits(
    dataset: DatasetName,
    root: &Path,
    scheme: SplitScheme,
    dir: &Path,
    info: &mut PreparedInfo,
) -> Result<(), PrepareError> {
    for &split in dataset.splits(scheme) {
        let inputs = match stamps(dataset, root, split) {
            Ok(inputs) => inputs,
            Err(e) => {
                info.skipped.insert(split.to_owned(), e.to_string());
                continue;
            }
        };
        // Files that exist but do not read are errors: a manifest must not hide them.
        let read = read_split(dataset, root, split, scheme)?;
        write_records(&dir.join(format!("records-{split}.parquet")), &read, root)?;
        write_classes(&dir.join(format!("classes-{split}.parquet")), &read.classes)?;
        info.splits.insert(
            split.to_owned(),
            PreparedSplit { records: read.records.len(), classes: read.classes.len(), inputs, notes: read.notes },
        );
    }
    Ok(())
}

fn write_parquet(path: &Path, mut frame: DataFrame) -> Result<(), PrepareError> {
    let file = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    ParquetWriter::new(file).finish(&mut frame).map_err(|e| parquet_err(path, e))?;
    Ok(())
}

fn write_records(path: &Path, split: &Split, root: &Path) -> Result<(), PrepareError> {
    let r = &split.records;
    let relative: Vec<String> =
        r.iter().map(|x| x.path.strip_prefix(root).unwrap_or(&x.path).to_string_lossy().into_owned()).collect();
    let frame = DataFrame::new_infer_height(vec![
        Column::new("image_id".into(), r.iter().map(|x| x.image_id).collect::<Vec<u64>>()),
        Column::new("path".into(), relative),
        Column::new("label".into(), r.iter().map(|x| x.label).collect::<Vec<u32>>()),
        Column::new("latitude".into(), r.iter().map(|x| x.observation.latitude()).collect::<Vec<_>>()),
        Column::new("longitude".into(), r.iter().map(|x| x.observation.longitude()).collect::<Vec<_>>()),
        Column::new("date".into(), r.iter().map(|x| x.observation.date().map(|d| d.to_string())).collect::<Vec<_>>()),
        Column::new("date_c".into(), r.iter().map(|x| x.observation.year_fraction()).collect::<Vec<_>>()),
    ])
    .map_err(|e| parquet_err(path, e))?;
    write_parquet(path, frame)
}

fn write_classes(path: &Path, classes: &[ClassInfo]) -> Result<(), PrepareError> {
    let frame = DataFrame::new_infer_height(vec![
        Column::new("source_id".into(), classes.iter().map(|c| c.source_id).collect::<Vec<u64>>()),
        Column::new("name".into(), classes.iter().map(|c| c.name.clone()).collect::<Vec<_>>()),
        Column::new("supercategory".into(), classes.iter().map(|c| c.supercategory.clone()).collect::<Vec<_>>()),
    ])
    .map_err(|e| parquet_err(path, e))?;
    write_parquet(path, frame)
}

fn read_parquet(path: &Path) -> Result<DataFrame, PrepareError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    ParquetReader::new(file).finish().map_err(|e| parquet_err(path, e))
}

/// Reads `split` from the manifest under `cache_dir`, if one exists and every annotation file
/// still matches it; `Ok(None)` otherwise (read the annotation files, or `prepare` again).
pub fn load_split(
    dataset: DatasetName,
    root: &Path,
    split: &str,
    scheme: SplitScheme,
    cache_dir: &Path,
) -> Result<Option<Split>, PrepareError> {
    let dir = manifest_dir(cache_dir, dataset, root, scheme)?;
    let Some(info) = read_info(&dir) else { return Ok(None) };
    if !split_is_current(&info, dataset, root, split) {
        return Ok(None);
    }
    let records_path = dir.join(format!("records-{split}.parquet"));
    let frame = read_parquet(&records_path)?;
    let bad = |e: PolarsError| parquet_err(&records_path, e);
    let ids = frame.column("image_id").and_then(|c| c.u64().cloned()).map_err(bad)?;
    let paths = frame.column("path").and_then(|c| c.str().cloned()).map_err(bad)?;
    let labels = frame.column("label").and_then(|c| c.u32().cloned()).map_err(bad)?;
    let lats = frame.column("latitude").and_then(|c| c.f64().cloned()).map_err(bad)?;
    let lons = frame.column("longitude").and_then(|c| c.f64().cloned()).map_err(bad)?;
    let dates = frame.column("date").and_then(|c| c.str().cloned()).map_err(bad)?;
    let fractions = frame.column("date_c").and_then(|c| c.f64().cloned()).map_err(bad)?;
    let mut records = Vec::with_capacity(frame.height());
    for (i, (((((id, path), label), (lat, lon)), date), fraction)) in ids
        .iter()
        .zip(paths.iter())
        .zip(labels.iter())
        .zip(lats.iter().zip(lons.iter()))
        .zip(dates.iter())
        .zip(fractions.iter())
        .enumerate()
    {
        let invalid = |what: &str| parquet_err(&records_path, format!("row {i}: {what}"));
        let date = date.map(Date::parse).transpose().map_err(|e| invalid(&e.to_string()))?;
        let mut observation = Observation::new(lat, lon, date).map_err(|e| invalid(&e.to_string()))?;
        if let Some(fraction) = fraction {
            observation = observation.with_year_fraction(fraction).map_err(|e| invalid(&e.to_string()))?;
        }
        let path = path.ok_or_else(|| invalid("no path"))?;
        let relative = Path::new(path);
        if relative.is_absolute() || relative.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(invalid(&format!("path {path:?} leaves the dataset folder")));
        }
        records.push(Record {
            image_id: id.ok_or_else(|| invalid("no image_id"))?,
            path: root.join(relative),
            label: label.ok_or_else(|| invalid("no label"))?,
            observation,
        });
    }
    let classes_path = dir.join(format!("classes-{split}.parquet"));
    let frame = read_parquet(&classes_path)?;
    let bad = |e: PolarsError| parquet_err(&classes_path, e);
    let source_ids = frame.column("source_id").and_then(|c| c.u64().cloned()).map_err(bad)?;
    let names = frame.column("name").and_then(|c| c.str().cloned()).map_err(bad)?;
    let supers = frame.column("supercategory").and_then(|c| c.str().cloned()).map_err(bad)?;
    let classes: Vec<ClassInfo> = source_ids
        .iter()
        .zip(names.iter())
        .zip(supers.iter())
        .map(|((id, name), sup)| ClassInfo {
            source_id: id.unwrap_or_default(),
            name: name.unwrap_or_default().to_owned(),
            supercategory: sup.map(str::to_owned),
        })
        .collect();
    if let Some((row, record)) = records.iter().enumerate().find(|(_, r)| r.label as usize >= classes.len()) {
        return Err(parquet_err(
            &records_path,
            format!("row {row}: label {} but the split has {} classes", record.label, classes.len()),
        ));
    }
    let notes = info.splits.get(split).map(|s| s.notes.clone()).unwrap_or_default();
    Ok(Some(Split { name: split.to_owned(), records, classes, notes }))
}
