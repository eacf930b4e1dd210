//! YFCC100M-GEO100 (Tang et al., ICCV 2015) in PriorsNet's `geo_prior` layout.
//!
//! - `train_test_split.csv`: a header, then `path,lat,lon,split,class` (columns found by name;
//!   `split` ∈ `train`, `val`, `test`; `class` an id of `class_names.csv`; an empty `lat`/`lon` is
//!   a missing location);
//! - `class_names.csv`: a header, then `id,name`.
//!
//! Locations only: YFCC has no dates, so train it with `metadata = "geo"`. Images are
//! `root/<path>`. Two split schemes: the CSV's own (`official`), and the supplement's
//! (`supplement`): val = the first [`SUPPLEMENT_VAL_PER_CLASS`] images of each class by `path`
//! among the CSV's val and test rows, train = every other image (86,986 on the full set); its
//! val holds 2,000 images when each class has 20 to give.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dmlp_geo::Observation;

use super::SplitScheme;
use crate::{ClassInfo, DatasetError, Record, Split};

pub const SPLIT_FILE: &str = "train_test_split.csv";
pub const CLASS_FILE: &str = "class_names.csv";
pub const SUPPLEMENT_VAL_PER_CLASS: usize = 20;

/// One CSV row with its line number.
struct Row {
    line: u64,
    path: String,
    observation: Observation,
    split: String,
    class_id: u64,
}

fn csv_err(path: &Path, line: u64, message: String) -> DatasetError {
    DatasetError::Csv { path: path.to_owned(), line, message }
}

/// Opens a CSV file and finds the named columns in its header.
fn open<const N: usize>(
    path: &Path,
    columns: [&str; N],
) -> Result<(csv::Reader<std::fs::File>, [usize; N]), DatasetError> {
    let file =
        std::fs::File::open(path).map_err(|e| DatasetError::Io { path: path.to_owned(), message: e.to_string() })?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(file);
    let header = reader.headers().map_err(|e| csv_err(path, 1, e.to_string()))?.clone();
    let mut index = [0; N];
    for (slot, name) in index.iter_mut().zip(columns) {
        *slot = header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            csv_err(path, 1, format!("no column {name:?} in the header (expected {})", columns.join(",")))
        })?;
    }
    Ok((reader, index))
}

/// Iterates the data rows of `reader` as (line, record), turning CSV errors into ours.
fn rows<'a>(
    path: &'a Path,
    reader: &'a mut csv::Reader<std::fs::File>,
) -> impl Iterator<Item = Result<(u64, csv::StringRecord), DatasetError>> + 'a {
    reader.records().map(move |record| {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            csv_err(path, line, e.to_string())
        })?;
        Ok((record.position().map_or(0, csv::Position::line), record))
    })
}

fn read_classes(path: &Path) -> Result<Vec<ClassInfo>, DatasetError> {
    let (mut reader, [id_col, name_col]) = open(path, ["id", "name"])?;
    let mut classes: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    for row in rows(path, &mut reader) {
        let (line, record) = row?;
        let id_text = record.get(id_col).unwrap_or("").trim();
        let id: u64 =
            id_text.parse().map_err(|_| csv_err(path, line, format!("class id {id_text:?} is not an integer")))?;
        let name = record.get(name_col).unwrap_or("").trim().to_owned();
        if let Some((first, _)) = classes.insert(id, (line, name)) {
            return Err(csv_err(path, line, format!("duplicate class id {id} (also line {first})")));
        }
    }
    Ok(classes.into_iter().map(|(id, (_, name))| ClassInfo { source_id: id, name, supercategory: None }).collect())
}

fn parse_coordinate(path: &Path, line: u64, what: &str, text: &str) -> Result<Option<f64>, DatasetError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<f64>().map(Some).map_err(|_| csv_err(path, line, format!("{what} {text:?} is not a number")))
}

fn read_rows(path: &Path) -> Result<Vec<Row>, DatasetError> {
    let (mut reader, [path_col, lat_col, lon_col, split_col, class_col]) =
        open(path, ["path", "lat", "lon", "split", "class"])?;
    let mut out = Vec::new();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    for row in rows(path, &mut reader) {
        let (line, record) = row?;
        let field = |col: usize| record.get(col).unwrap_or("");
        let image = field(path_col).trim().to_owned();
        if image.is_empty() {
            return Err(csv_err(path, line, "empty path".into()));
        }
        super::check_inside_root(&image).map_err(|e| csv_err(path, line, e))?;
        if let Some(first) = first_line.insert(image.clone(), line) {
            return Err(csv_err(path, line, format!("duplicate path {image:?} (also line {first})")));
        }
        let lat = parse_coordinate(path, line, "lat", field(lat_col))?;
        let lon = parse_coordinate(path, line, "lon", field(lon_col))?;
        let observation =
            Observation::parse(lat, lon, None).map_err(|e| csv_err(path, line, format!("{image}: {e}")))?;
        let split = field(split_col).trim().to_owned();
        if !matches!(split.as_str(), "train" | "val" | "test") {
            return Err(csv_err(path, line, format!("split {split:?} is not train, val or test")));
        }
        let class_text = field(class_col).trim();
        let class_id: u64 =
            class_text.parse().map_err(|_| csv_err(path, line, format!("class {class_text:?} is not an integer")))?;
        out.push(Row { line, path: image, observation, split, class_id });
    }
    Ok(out)
}

/// Which rows the supplement puts in its val split: the first `per_class` of each class by path
/// among the official val and test rows.
fn supplement_val(rows: &[Row], per_class: usize) -> Vec<bool> {
    let mut candidates: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if row.split != "train" {
            candidates.entry(row.class_id).or_default().push(i);
        }
    }
    let mut in_val = vec![false; rows.len()];
    for members in candidates.values_mut() {
        members.sort_by(|&a, &b| rows[a].path.cmp(&rows[b].path));
        for &i in members.iter().take(per_class) {
            in_val[i] = true;
        }
    }
    in_val
}

/// Reads `split` under `scheme`.
pub fn read(root: &Path, split: &str, scheme: SplitScheme) -> Result<Split, DatasetError> {
    let class_path = root.join(CLASS_FILE);
    let split_path = root.join(SPLIT_FILE);
    let classes = read_classes(&class_path)?;
    let label_of: HashMap<u64, u32> = classes.iter().enumerate().map(|(i, c)| (c.source_id, i as u32)).collect();
    let rows = read_rows(&split_path)?;
    for row in &rows {
        if !label_of.contains_key(&row.class_id) {
            return Err(csv_err(
                &split_path,
                row.line,
                format!("class {} is not in {}", row.class_id, class_path.display()),
            ));
        }
    }
    let mut notes = BTreeMap::new();
    let selected: Vec<bool> = match scheme {
        SplitScheme::Official => rows.iter().map(|r| r.split == split).collect(),
        SplitScheme::Supplement => {
            let in_val = supplement_val(&rows, SUPPLEMENT_VAL_PER_CLASS);
            if split == "val" {
                let mut per_class: HashMap<u64, usize> = HashMap::new();
                for (row, _) in rows.iter().zip(&in_val).filter(|(_, v)| **v) {
                    *per_class.entry(row.class_id).or_default() += 1;
                }
                let short = classes
                    .iter()
                    .filter(|c| per_class.get(&c.source_id).copied().unwrap_or(0) < SUPPLEMENT_VAL_PER_CLASS)
                    .count();
                if short > 0 {
                    notes.insert(
                        format!("classes with fewer than {SUPPLEMENT_VAL_PER_CLASS} val images to give"),
                        short,
                    );
                }
            }
            in_val.into_iter().map(|v| v == (split == "val")).collect()
        }
    };
    let records = rows
        .iter()
        .zip(selected)
        .filter(|(_, keep)| *keep)
        .map(|(row, _)| Record {
            image_id: row.line,
            path: root.join(&row.path),
            label: label_of[&row.class_id],
            observation: row.observation,
        })
        .collect();
    Ok(Split { name: split.to_owned(), records, classes, notes })
}
