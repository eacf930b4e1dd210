//! `dmlp data verify`: what a dataset folder holds, against its annotation files and the
//! manifest's official counts. Works on a folder that was never prepared.
//!
//! Per split: records, classes, images found and missing, images that fail to decode and
//! images that decode despite damaged data (only when asked: decoding a whole dataset takes a
//! while), records without location or date, and the reader's notes; the missing, corrupt and
//! damaged files are named (relative to the root, at most `max_listed` of each; the counts are
//! always exact). A damaged file is one libjpeg (and so PIL, and training) decodes with
//! warnings: the pixels its damaged part gets are libjpeg's stand-ins, so it is listed, but it
//! does not make the report fail. A split whose annotation files are absent
//! or unreadable gets the reader's error instead of counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::manifest::DataManifest;
use crate::{DatasetName, Split, SplitScheme, read_split};
use dmlp_vision::decode_rgb_checked;

/// What to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Decode every image found.
    pub decode: bool,
    /// At most this many missing (and corrupt) files are named per split.
    pub max_listed: usize,
    /// Threads that check files.
    pub threads: usize,
}

/// The whole report; `--json` prints it as one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub dataset: DatasetName,
    pub root: String,
    pub split_scheme: SplitScheme,
    pub decoded: bool,
    /// The manifest's official number of classes.
    pub official_classes: usize,
    pub splits: BTreeMap<String, SplitReport>,
    /// No split failed to read, and no image is missing or corrupt.
    pub ok: bool,
}

/// One split's counts.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SplitReport {
    /// The files the split is read from, relative to the root.
    pub annotation_files: Vec<String>,
    /// Why the split could not be read (its counts are then null).
    pub error: Option<String>,
    pub records: Option<usize>,
    /// Categories in the split's class list.
    pub classes: Option<usize>,
    pub images_found: Option<usize>,
    pub images_missing: Option<usize>,
    /// Counted only when decoding was asked for.
    pub images_corrupt: Option<usize>,
    /// Images that decode, with damage noted (see the module docs); only when decoding.
    pub images_damaged: Option<usize>,
    pub without_location: Option<usize>,
    pub without_date: Option<usize>,
    /// The manifest's count for this split, and whether the spec confirmed it.
    pub official_records: Option<usize>,
    pub official_verified: Option<bool>,
    /// The reader's counted notes (records set aside and why).
    pub notes: BTreeMap<String, usize>,
    pub missing_files: Vec<String>,
    pub corrupt_files: Vec<String>,
    /// The decoder's message for each of `corrupt_files`, in the same order.
    pub corrupt_errors: Vec<String>,
    pub damaged_files: Vec<String>,
    /// The damage found in each of `damaged_files`, in the same order.
    pub damage: Vec<String>,
    /// Whether `missing_files` or `corrupt_files` were cut at `max_listed`.
    pub listing_truncated: bool,
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

/// Checks every split of `dataset` under `root`; `progress(done, total)` is called as image
/// files are checked (from several threads).
pub fn verify(
    dataset: DatasetName,
    root: &Path,
    scheme: SplitScheme,
    options: VerifyOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<VerifyReport, crate::DatasetError> {
    dataset.check_scheme(scheme)?;
    let manifest = DataManifest::of(dataset)?;
    let mut splits = BTreeMap::new();
    for &split in dataset.splits(scheme) {
        let files = dataset.annotation_files(root, split).iter().map(|p| relative(p, root)).collect();
        let official = manifest.split(split, scheme);
        let mut report = SplitReport {
            annotation_files: files,
            official_records: official.map(|o| o.records),
            official_verified: official.map(|o| o.verified),
            ..SplitReport::default()
        };
        match read_split(dataset, root, split, scheme) {
            Ok(read) => check_split(&read, root, options, &mut report, &|done, total| progress(split, done, total)),
            Err(err) => report.error = Some(err.to_string()),
        }
        splits.insert(split.to_owned(), report);
    }
    let ok =
        splits.values().all(|s| s.error.is_none() && s.images_missing == Some(0) && s.images_corrupt.unwrap_or(0) == 0);
    Ok(VerifyReport {
        dataset,
        root: root.display().to_string(),
        split_scheme: scheme,
        decoded: options.decode,
        official_classes: manifest.classes,
        splits,
        ok,
    })
}

fn check_split(
    split: &Split,
    root: &Path,
    options: VerifyOptions,
    report: &mut SplitReport,
    progress: &(dyn Fn(usize, usize) + Sync),
) {
    let records = &split.records;
    report.records = Some(records.len());
    report.classes = Some(split.classes.len());
    report.notes = split.notes.clone();
    report.without_location = Some(
        records.iter().filter(|r| r.observation.latitude().is_none() || r.observation.longitude().is_none()).count(),
    );
    report.without_date = Some(records.iter().filter(|r| !r.observation.has_time_of_year()).count());

    // Each file is checked once, by whichever thread takes its index next.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let missing: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let corrupt: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let damaged: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(record) = records.get(i) else { break };
                    if !record.path.is_file() {
                        missing.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                    } else if options.decode {
                        match decode_rgb_checked(&record.path) {
                            Err(err) => corrupt.lock().unwrap_or_else(|e| e.into_inner()).push((i, err.to_string())),
                            Ok((_, Some(damage))) => {
                                damaged.lock().unwrap_or_else(|e| e.into_inner()).push((i, damage))
                            }
                            Ok((_, None)) => {}
                        }
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if finished.is_multiple_of(256) || finished == records.len() {
                        progress(finished, records.len());
                    }
                }
            });
        }
    });
    let mut missing = missing.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut corrupt = corrupt.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut damaged = damaged.into_inner().unwrap_or_else(|e| e.into_inner());
    missing.sort_unstable();
    corrupt.sort_unstable_by_key(|(i, _)| *i);
    damaged.sort_unstable_by_key(|(i, _)| *i);
    report.images_missing = Some(missing.len());
    report.images_found = Some(records.len() - missing.len());
    report.images_corrupt = options.decode.then_some(corrupt.len());
    report.images_damaged = options.decode.then_some(damaged.len());
    report.listing_truncated = [missing.len(), corrupt.len(), damaged.len()].iter().any(|&n| n > options.max_listed);
    report.missing_files = missing.iter().take(options.max_listed).map(|&i| relative(&records[i].path, root)).collect();
    for (i, message) in corrupt.into_iter().take(options.max_listed) {
        report.corrupt_files.push(relative(&records[i].path, root));
        report.corrupt_errors.push(message);
    }
    for (i, damage) in damaged.into_iter().take(options.max_listed) {
        report.damaged_files.push(relative(&records[i].path, root));
        report.damage.push(damage);
    }
}
