//! The data manifests of `data-manifests/` (compiled in): where each dataset comes from, its
//! archives and checksums, and its official counts, which `verify` reports beside what it finds.

use serde::Deserialize;

use crate::{DatasetError, DatasetName, SplitScheme};

/// One dataset's manifest (`data-manifests/<name>.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataManifest {
    pub name: DatasetName,
    pub title: String,
    pub licence: String,
    pub source: String,
    #[serde(default)]
    pub base_url: Option<String>,
    pub metadata: String,
    /// The official number of classes.
    pub classes: usize,
    /// How to get it, step by step.
    pub download: String,
    pub splits: Vec<OfficialSplit>,
    #[serde(default)]
    pub archives: Vec<Archive>,
    pub layout: Layout,
}

/// The official size of one split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficialSplit {
    pub name: String,
    #[serde(default)]
    pub scheme: SplitScheme,
    pub records: usize,
    /// False where the count is derived or unconfirmed (the spec's UNVERIFIED).
    #[serde(default = "default_verified")]
    pub verified: bool,
    #[serde(default)]
    pub note: Option<String>,
}

fn default_verified() -> bool {
    true
}

/// A downloadable archive.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    pub file: String,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub md5: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// The folder layout under the dataset root.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub annotations: String,
    pub images: String,
}

const SOURCES: [(DatasetName, &str); 5] = [
    (DatasetName::Inat2017, include_str!("../../../data-manifests/inat2017.toml")),
    (DatasetName::Inat2018, include_str!("../../../data-manifests/inat2018.toml")),
    (DatasetName::Inat2021, include_str!("../../../data-manifests/inat2021.toml")),
    (DatasetName::Inat2021Mini, include_str!("../../../data-manifests/inat2021-mini.toml")),
    (DatasetName::YfccGeo100, include_str!("../../../data-manifests/yfcc-geo100.toml")),
];

impl DataManifest {
    /// The compiled-in manifest of `dataset`.
    pub fn of(dataset: DatasetName) -> Result<Self, DatasetError> {
        let text = SOURCES.iter().find(|(name, _)| *name == dataset).map(|(_, text)| *text).unwrap_or_default();
        let manifest: DataManifest =
            toml::from_str(text).map_err(|e| DatasetError::Config(format!("data-manifests/{dataset}.toml: {e}")))?;
        if manifest.name != dataset {
            return Err(DatasetError::Config(format!("data-manifests/{dataset}.toml names {}", manifest.name)));
        }
        Ok(manifest)
    }

    /// The official count of `split` under `scheme`, if the manifest has one.
    pub fn split(&self, split: &str, scheme: SplitScheme) -> Option<&OfficialSplit> {
        self.splits.iter().find(|s| s.name == split && s.scheme == scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_parses_and_counts_every_split_its_reader_has() {
        for dataset in DatasetName::ALL {
            let manifest = DataManifest::of(dataset).unwrap();
            assert!(manifest.classes > 0 && manifest.download.contains("dmlp data verify"), "{dataset}");
            for scheme in [SplitScheme::Official, SplitScheme::Supplement] {
                if dataset.check_scheme(scheme).is_err() {
                    continue;
                }
                for split in dataset.splits(scheme) {
                    assert!(manifest.split(split, scheme).is_some(), "{dataset} {split} ({scheme:?})");
                }
            }
            for archive in &manifest.archives {
                if let Some(md5) = &archive.md5 {
                    assert!(md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()), "{dataset}: {md5}");
                }
            }
        }
        let yfcc = DataManifest::of(DatasetName::YfccGeo100).unwrap();
        assert_eq!(yfcc.split("val", SplitScheme::Supplement).unwrap().records, 2000);
        assert!(!yfcc.split("train", SplitScheme::Official).unwrap().verified);
    }
}
