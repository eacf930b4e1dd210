//! Readers of the datasets as they are distributed, into one [`Split`] type.
//!
//! | dataset | files read (relative to the root) | metadata |
//! | --- | --- | --- |
//! | `inat2017`, `inat2018` | `{train,val}20XX.json` (COCO-style) + `{train,val}20XX_locations.json`, at the root or in `inat20XX_locations/` | `lat`, `lon`, `date` (else `date_c`, the fraction of the year) from the location file, joined by image id |
//! | `inat2021` | `train.json`, `train_mini.json`, `val.json` (any `<split>.json`) | `latitude`, `longitude`, `date` in the image records |
//! | `inat2021-mini` | `train_mini.json` (split `train`), `val.json` | as `inat2021` |
//! | `yfcc-geo100` | `train_test_split.csv`, `class_names.csv` | `lat`, `lon`; no dates |
//!
//! Everything is joined by ids (image ids, category ids, class ids), never by position. Image
//! paths are the JSON `file_name` or the CSV `path` joined to the root. Labels index the class
//! list sorted by source id. The iNaturalist test sets carry no labels and are not splits here.
//!
//! What happens to bad input (each case has a test in `tests/readers.rs`):
//!
//! | input | outcome |
//! | --- | --- |
//! | malformed JSON or CSV, a missing column | error: file, line (and column for JSON) |
//! | a duplicate image id, category id, class id or YFCC path | error naming both records |
//! | an annotation of an unknown image or category; a YFCC class not in `class_names.csv` | error naming the record |
//! | an image without annotation, or with two | error naming the image |
//! | latitude or longitude outside [−90, 90] / [−180, 180], or NaN; an impossible date | error naming the record and the value |
//! | a null latitude, longitude or date; an image without a location record | kept, metadata missing (counted by `dmlp data verify`; a training split where most records lack a field the model's metadata uses stops the run, unless `data.allow_missing_metadata`) |
//! | a location record with `date_c` and no `date`; a `date_c` outside [0, 1] | the time of year from `date_c` (`2·date_c − 1`); error naming the record |
//! | a location record marked `"valid": false` | kept, location treated as missing; counted in [`Split::notes`] |
//! | a location record whose image id is not in the split | ignored; counted in [`Split::notes`] |
//! | two location records for one image | error naming both |
//! | a missing annotation or location file | error naming every place looked at |
//! | an image path (`file_name`, YFCC `path`) that is absolute or holds `..` | error naming the record: it would leave the dataset folder |
//!
//! Missing and corrupt image files are found by [`crate::verify`] (and by the loader, as an error
//! naming the file, when it reaches one).

pub mod coco;
pub mod locations;
pub mod yfcc;

use std::path::{Path, PathBuf};

use crate::{DatasetError, Split};

/// A dataset as named on the command line and in configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum DatasetName {
    #[serde(rename = "inat2017")]
    Inat2017,
    #[serde(rename = "inat2018")]
    Inat2018,
    #[serde(rename = "inat2021")]
    Inat2021,
    #[serde(rename = "inat2021-mini")]
    Inat2021Mini,
    #[serde(rename = "yfcc-geo100")]
    YfccGeo100,
}

/// Which split definition to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitScheme {
    /// The splits as the files define them (for YFCC: the CSV's `split` column).
    #[default]
    Official,
    /// YFCC100M-GEO100 as the supplement splits it: 2,000 val images (the first 20 per class by
    /// `path` among the CSV's val and test rows) and every other image in train.
    Supplement,
}

impl SplitScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitScheme::Official => "official",
            SplitScheme::Supplement => "supplement",
        }
    }
}

impl std::str::FromStr for SplitScheme {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self, DatasetError> {
        match s {
            "official" => Ok(SplitScheme::Official),
            "supplement" => Ok(SplitScheme::Supplement),
            _ => Err(DatasetError::Config(format!("unknown split scheme {s:?}, expected official or supplement"))),
        }
    }
}

impl DatasetName {
    pub const ALL: [DatasetName; 5] = [
        DatasetName::Inat2017,
        DatasetName::Inat2018,
        DatasetName::Inat2021,
        DatasetName::Inat2021Mini,
        DatasetName::YfccGeo100,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Inat2017 => "inat2017",
            DatasetName::Inat2018 => "inat2018",
            DatasetName::Inat2021 => "inat2021",
            DatasetName::Inat2021Mini => "inat2021-mini",
            DatasetName::YfccGeo100 => "yfcc-geo100",
        }
    }

    /// The splits this dataset has under `scheme`, in the order `verify` reports them.
    pub fn splits(self, scheme: SplitScheme) -> &'static [&'static str] {
        match (self, scheme) {
            (DatasetName::YfccGeo100, SplitScheme::Official) => &["train", "val", "test"],
            (DatasetName::Inat2021, _) => &["train", "train_mini", "val"],
            _ => &["train", "val"],
        }
    }

    /// Whether `scheme` applies to this dataset.
    pub fn check_scheme(self, scheme: SplitScheme) -> Result<(), DatasetError> {
        if scheme == SplitScheme::Supplement && self != DatasetName::YfccGeo100 {
            return Err(DatasetError::Config(format!(
                "split scheme \"supplement\" is defined for yfcc-geo100 only, not {self}"
            )));
        }
        Ok(())
    }

    fn check_split(self, split: &str, scheme: SplitScheme) -> Result<(), DatasetError> {
        self.check_scheme(scheme)?;
        if self.splits(scheme).contains(&split) {
            return Ok(());
        }
        let unlabelled = matches!(
            self,
            DatasetName::Inat2017 | DatasetName::Inat2018 | DatasetName::Inat2021 | DatasetName::Inat2021Mini
        ) && matches!(split, "test" | "public_test");
        let why = if unlabelled { " (the iNaturalist test sets carry no labels)" } else { "" };
        Err(DatasetError::Config(format!(
            "{self} has no split {split:?}{why}; its splits are {}",
            self.splits(scheme).join(", ")
        )))
    }

    /// The annotation files `split` is read from, as they would sit under `root` (the location
    /// file where it is first looked for; see [`locations::find`]).
    pub fn annotation_files(self, root: &Path, split: &str) -> Vec<PathBuf> {
        match self {
            DatasetName::Inat2017 | DatasetName::Inat2018 => {
                let year = self.year();
                let located = locations::find(root, year, split).unwrap_or_else(|looked| looked[0].clone());
                vec![root.join(format!("{split}{year}.json")), located]
            }
            DatasetName::Inat2021 => vec![root.join(format!("{split}.json"))],
            DatasetName::Inat2021Mini => vec![root.join(inat2021_mini_file(split))],
            DatasetName::YfccGeo100 => vec![root.join(yfcc::SPLIT_FILE), root.join(yfcc::CLASS_FILE)],
        }
    }

    fn year(self) -> u16 {
        match self {
            DatasetName::Inat2017 => 2017,
            DatasetName::Inat2018 => 2018,
            _ => 2021,
        }
    }
}

fn inat2021_mini_file(split: &str) -> String {
    if split == "train" { "train_mini.json".into() } else { format!("{split}.json") }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DatasetName {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self, DatasetError> {
        DatasetName::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = DatasetName::ALL.iter().map(|d| d.as_str()).collect();
            DatasetError::Config(format!("unknown dataset {s:?}, expected one of {}", names.join(", ")))
        })
    }
}

/// Reads one split of `dataset` from `root`.
pub fn read_split(dataset: DatasetName, root: &Path, split: &str, scheme: SplitScheme) -> Result<Split, DatasetError> {
    dataset.check_split(split, scheme)?;
    match dataset {
        DatasetName::Inat2017 | DatasetName::Inat2018 => {
            let year = dataset.year();
            let location_file = locations::find(root, year, split).map_err(|looked| DatasetError::Io {
                path: looked[0].clone(),
                message: format!(
                    "no location file: looked for {} (inat{year}_locations.zip, see data-manifests/{dataset}.toml)",
                    looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ")
                ),
            })?;
            let located = locations::read(&location_file)?;
            coco::read(&root.join(format!("{split}{year}.json")), root, split, coco::MetadataSource::Joined(located))
        }
        DatasetName::Inat2021 => {
            coco::read(&root.join(format!("{split}.json")), root, split, coco::MetadataSource::Inline)
        }
        DatasetName::Inat2021Mini => {
            coco::read(&root.join(inat2021_mini_file(split)), root, split, coco::MetadataSource::Inline)
        }
        DatasetName::YfccGeo100 => yfcc::read(root, split, scheme),
    }
}

/// Reads a JSON text file, naming it in every error.
/// An image path of an annotation file must name a file under the dataset folder: relative, no
/// `..`, not empty.
fn check_inside_root(relative: &str) -> Result<(), String> {
    let path = Path::new(relative);
    let inside = !relative.is_empty()
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if inside { Ok(()) } else { Err(format!("image path {relative:?} leaves the dataset folder")) }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DatasetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DatasetError::Io { path: path.to_owned(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| DatasetError::Json { path: path.to_owned(), message: e.to_string() })
}
