//! COCO-style annotation files: iNaturalist 2017, 2018 and 2021.
//!
//! `images` (`id`, `file_name`; in 2021 also `latitude`, `longitude`, `date`, each may be null),
//! `annotations` (`image_id`, `category_id`), `categories` (`id`, `name`, `supercategory`).
//! Joined by id (the reference zips the lists by position); every image needs exactly one
//! annotation. Labels index the categories sorted by id.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dmlp_geo::Observation;
use serde::Deserialize;

use super::locations::LocationTable;
use super::read_json;
use crate::{ClassInfo, DatasetError, Record, Split};

#[derive(Debug, Deserialize)]
struct AnnotationFile {
    images: Vec<ImageEntry>,
    #[serde(default)]
    annotations: Vec<AnnotationEntry>,
    categories: Vec<CategoryEntry>,
}

#[derive(Debug, Deserialize)]
struct ImageEntry {
    id: u64,
    file_name: String,
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(default)]
    date: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnnotationEntry {
    image_id: u64,
    category_id: u64,
}

#[derive(Debug, Deserialize)]
struct CategoryEntry {
    id: u64,
    name: String,
    #[serde(default)]
    supercategory: Option<String>,
}

/// Where the images' locations and dates come from.
#[derive(Debug)]
pub enum MetadataSource {
    /// In the image records (iNat 2021).
    Inline,
    /// A separate location file joined by image id (iNat 2017, 2018).
    Joined(LocationTable),
}

/// Reads the annotation file `path`; image paths are `root/<file_name>`.
pub fn read(path: &Path, root: &Path, split: &str, metadata: MetadataSource) -> Result<Split, DatasetError> {
    let file: AnnotationFile = read_json(path)?;
    let record_err =
        |what, index, message: String| DatasetError::Record { path: path.to_owned(), what, index, message };

    let mut categories: BTreeMap<u64, (usize, &CategoryEntry)> = BTreeMap::new();
    for (index, category) in file.categories.iter().enumerate() {
        if let Some((first, _)) = categories.insert(category.id, (index, category)) {
            return Err(record_err(
                "category",
                index,
                format!("duplicate category id {} (also category #{first})", category.id),
            ));
        }
    }
    let label_of: HashMap<u64, u32> = categories.keys().enumerate().map(|(label, id)| (*id, label as u32)).collect();
    let classes = categories
        .values()
        .map(|(_, c)| ClassInfo { source_id: c.id, name: c.name.clone(), supercategory: c.supercategory.clone() })
        .collect();

    let mut image_index: HashMap<u64, usize> = HashMap::with_capacity(file.images.len());
    for (index, image) in file.images.iter().enumerate() {
        if let Some(first) = image_index.insert(image.id, index) {
            return Err(record_err("image", index, format!("duplicate image id {} (also image #{first})", image.id)));
        }
    }
    let mut label_for_image: Vec<Option<u32>> = vec![None; file.images.len()];
    for (index, annotation) in file.annotations.iter().enumerate() {
        let Some(&image) = image_index.get(&annotation.image_id) else {
            return Err(record_err(
                "annotation",
                index,
                format!("image id {} is not among the images", annotation.image_id),
            ));
        };
        let Some(&label) = label_of.get(&annotation.category_id) else {
            return Err(record_err(
                "annotation",
                index,
                format!("category id {} is not among the categories", annotation.category_id),
            ));
        };
        if label_for_image[image].replace(label).is_some() {
            return Err(record_err(
                "annotation",
                index,
                format!("image id {} has a second annotation", annotation.image_id),
            ));
        }
    }

    let mut notes = BTreeMap::new();
    let mut records = Vec::with_capacity(file.images.len());
    for (index, image) in file.images.iter().enumerate() {
        let label = label_for_image[index].ok_or_else(|| {
            record_err("image", index, format!("image id {} ({}) has no annotation", image.id, image.file_name))
        })?;
        super::check_inside_root(&image.file_name)
            .map_err(|e| record_err("image", index, format!("image id {}: {e}", image.id)))?;
        let observation = match &metadata {
            MetadataSource::Inline => Observation::parse(image.latitude, image.longitude, image.date.as_deref())
                .map_err(|e| record_err("image", index, format!("image id {} ({}): {e}", image.id, image.file_name)))?,
            MetadataSource::Joined(table) => table.observation(image.id).unwrap_or_default(),
        };
        records.push(Record { image_id: image.id, path: root.join(&image.file_name), label, observation });
    }
    if let MetadataSource::Joined(table) = &metadata {
        table.add_notes(&image_index, &mut notes);
    }
    Ok(Split { name: split.to_owned(), records, classes, notes })
}
