//! The iNaturalist 2021 annotation files (`train.json`, `train_mini.json`, `val.json`).
//!
//! COCO-style: `images` (`id`, `file_name`, `latitude`, `longitude`, `date`, any of the three may
//! be null), `annotations` (`image_id`, `category_id`), `categories` (`id`, `name`,
//! `supercategory`). Joined by id (the reference zips the lists by position); every image needs
//! exactly one annotation. Labels index the categories sorted by id.
//!
//! Errors name the file and the record: malformed JSON (with line and column), duplicate image
//! ids, an annotation of an unknown image or category, an image without annotation, impossible
//! coordinates or dates.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dmlp_geo::Observation;
use serde::Deserialize;

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

/// Reads `root/<split>.json`; image paths are `root/<file_name>`.
pub fn read_split(root: &Path, split: &str) -> Result<Split, DatasetError> {
    let path = root.join(format!("{split}.json"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| DatasetError::Io { path: path.clone(), message: e.to_string() })?;
    let file: AnnotationFile =
        serde_json::from_str(&text).map_err(|e| DatasetError::Json { path: path.clone(), message: e.to_string() })?;
    let record_err = |what, index, message: String| DatasetError::Record { path: path.clone(), what, index, message };

    let mut categories: BTreeMap<u64, &CategoryEntry> = BTreeMap::new();
    for (index, category) in file.categories.iter().enumerate() {
        if categories.insert(category.id, category).is_some() {
            return Err(record_err("category", index, format!("duplicate category id {}", category.id)));
        }
    }
    let label_of: HashMap<u64, u32> = categories.keys().enumerate().map(|(label, id)| (*id, label as u32)).collect();
    let classes = categories
        .values()
        .map(|c| ClassInfo { source_id: c.id, name: c.name.clone(), supercategory: c.supercategory.clone() })
        .collect();

    let mut image_index: HashMap<u64, usize> = HashMap::with_capacity(file.images.len());
    for (index, image) in file.images.iter().enumerate() {
        if image_index.insert(image.id, index).is_some() {
            return Err(record_err("image", index, format!("duplicate image id {}", image.id)));
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

    let mut records = Vec::with_capacity(file.images.len());
    for (index, image) in file.images.iter().enumerate() {
        let label = label_for_image[index].ok_or_else(|| {
            record_err("image", index, format!("image id {} ({}) has no annotation", image.id, image.file_name))
        })?;
        let observation = Observation::parse(image.latitude, image.longitude, image.date.as_deref())
            .map_err(|e| record_err("image", index, format!("image id {} ({}): {e}", image.id, image.file_name)))?;
        records.push(Record { image_id: image.id, path: root.join(&image.file_name), label, observation });
    }
    Ok(Split { name: split.to_owned(), records, classes })
}
