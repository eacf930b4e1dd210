//! The location files of iNaturalist 2017 and 2018 (`inat2017_locations.zip`,
//! `inat2018_locations.zip`): a JSON array with one record per image, joined to the COCO-style
//! file by `id`.
//!
//! Fields (spec §4.4): `id`, `lat`, `lon` (degrees, or null), `date` (a string like
//! `2017-05-06 12:34:00+00:00`, or null), and, where present, `valid` (false: no usable
//! location), `date_c`, `user_id`, `loc_uncert`. Only the date part of `date` counts, as for iNat
//! 2021; where a record has no `date`, its `date_c` (PriorsNet's fraction of the year, which
//! PriorsNet's own loader reads) gives the time of year, so records carrying only `date_c` keep
//! it. The exact field set and date format are **UNVERIFIED** against the released files (spec
//! §6.3): a record whose date or `date_c` does not parse is an error naming it, so a different
//! format shows at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use dmlp_geo::Observation;
use serde::Deserialize;

use crate::DatasetError;

#[derive(Debug, Deserialize)]
struct LocationEntry {
    id: u64,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    date_c: Option<f64>,
    #[serde(default)]
    valid: Option<bool>,
}

/// A location file, validated and indexed by image id.
#[derive(Debug, Default)]
pub struct LocationTable {
    by_id: HashMap<u64, Observation>,
    /// Image ids whose record says `"valid": false` (their location is dropped, the date kept).
    invalid: Vec<u64>,
}

/// The location file of `split` for the iNat `year`: `root/<split><year>_locations.json` or
/// `root/inat<year>_locations/<split><year>_locations.json`. `Err` lists the places looked at.
pub fn find(root: &Path, year: u16, split: &str) -> Result<PathBuf, Vec<PathBuf>> {
    let name = format!("{split}{year}_locations.json");
    let places = vec![root.join(&name), root.join(format!("inat{year}_locations")).join(&name)];
    places.iter().find(|p| p.is_file()).cloned().ok_or(places)
}

/// Reads and validates a location file.
pub fn read(path: &Path) -> Result<LocationTable, DatasetError> {
    let entries: Vec<LocationEntry> = super::read_json(path)?;
    let record_err = |index, message: String| DatasetError::Record {
        path: path.to_owned(),
        what: "location record",
        index,
        message,
    };
    let mut table = LocationTable { by_id: HashMap::with_capacity(entries.len()), invalid: Vec::new() };
    let mut first_index: HashMap<u64, usize> = HashMap::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        if let Some(first) = first_index.insert(entry.id, index) {
            return Err(record_err(
                index,
                format!("a second record for image id {} (also location record #{first})", entry.id),
            ));
        }
        let valid = entry.valid != Some(false);
        let (lat, lon) = if valid { (entry.lat, entry.lon) } else { (None, None) };
        let observation = Observation::parse(lat, lon, entry.date.as_deref())
            .and_then(|o| match (entry.date.as_deref(), entry.date_c) {
                (None, Some(fraction)) => o.with_year_fraction(fraction),
                _ => Ok(o),
            })
            .map_err(|e| record_err(index, format!("image id {}: {e}", entry.id)))?;
        if !valid {
            table.invalid.push(entry.id);
        }
        table.by_id.insert(entry.id, observation);
    }
    Ok(table)
}

impl LocationTable {
    /// The observation of `image_id`, if the file has a record for it.
    pub fn observation(&self, image_id: u64) -> Option<Observation> {
        self.by_id.get(&image_id).copied()
    }

    /// Counts the records set aside against the split's images.
    pub(crate) fn add_notes(&self, images: &HashMap<u64, usize>, notes: &mut BTreeMap<String, usize>) {
        let unmatched = self.by_id.keys().filter(|id| !images.contains_key(id)).count();
        let invalid = self.invalid.iter().filter(|id| images.contains_key(id)).count();
        if unmatched > 0 {
            notes.insert("location records of images not in the split (ignored)".into(), unmatched);
        }
        if invalid > 0 {
            notes.insert("location records marked valid=false (location treated as missing)".into(), invalid);
        }
        let without = images.keys().filter(|id| !self.by_id.contains_key(id)).count();
        if without > 0 {
            notes.insert("images without a location record (metadata missing)".into(), without);
        }
    }
}
