//! The synthetic dataset through the real reading path: JSON reader, JPEG decoding, loader.

use std::sync::Arc;

use dmlp_datasets::loader::{BadImages, EpochBatches, LoaderConfig, RAW_PIXELS};
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_datasets::{DatasetError, DatasetName, Split, SplitScheme};
use dmlp_geo::Metadata;
use dmlp_vision::{Normalization, Transform};

fn read_inat2021(root: &std::path::Path, split: &str) -> Result<Split, DatasetError> {
    dmlp_datasets::read_split(DatasetName::Inat2021, root, split, SplitScheme::Official)
}

fn config(seed: u64, with_dates: bool) -> SynthConfig {
    SynthConfig {
        groups: 2,
        per_group: 3,
        distinct: 2,
        train_per_class: 5,
        val_per_class: 2,
        image_size: 24,
        seed,
        with_dates,
        missing_fraction: 0.1,
    }
}

fn loader(workers: usize, metadata: Option<Metadata>) -> LoaderConfig {
    LoaderConfig {
        batch_size: 7,
        transforms: vec![Transform::train(16)],
        normalization: Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
        interpolation: Default::default(),
        metadata,
        shuffle: true,
        drop_last: false,
        workers,
        prefetch: 2,
        seed: 3,
        bad_images: BadImages::Error,
        rows: None,
        u8_pixels: false,
    }
}

#[test]
fn a_bad_image_stops_the_epoch_or_is_replaced_or_left_out_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(1, true), tmp.path()).unwrap();
    let split = Arc::new(read_inat2021(tmp.path(), "train").unwrap());
    // Two damaged files: one truncated inside its scan, one that is not an image at all.
    let (truncated, garbage) = (split.records[3].path.clone(), split.records[17].path.clone());
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(&garbage, b"not a JPEG").unwrap();
    let batches = |bad_images| -> Vec<Result<dmlp_datasets::loader::Batch, DatasetError>> {
        let config = LoaderConfig { bad_images, workers: 2, ..loader(2, Some(Metadata::GeoTemporal)) };
        EpochBatches::new(split.clone(), config, 1).unwrap().collect()
    };

    let stopped = batches(BadImages::Error);
    let err = stopped.iter().find_map(|b| b.as_ref().err()).expect("an error").to_string();
    assert!(err.contains(&truncated.display().to_string()) || err.contains(&garbage.display().to_string()), "{err}");

    let replaced: Vec<_> = batches(BadImages::Replace).into_iter().map(Result::unwrap).collect();
    let skipped: Vec<_> = replaced.iter().flat_map(|b| b.skipped.iter().map(|s| s.path.clone())).collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.contains(&truncated) && skipped.contains(&garbage));
    assert_eq!(replaced.iter().map(|b| b.len).sum::<usize>(), 40, "replacing keeps every batch's size");
    for batch in &replaced {
        assert!(!batch.records.contains(&3) && !batch.records.contains(&17));
        if let Some(bad) = batch.skipped.first() {
            // The row took another row's sample whole: its record, label and image.
            let (n, views) = (batch.views[0].images.len() / batch.len, &batch.views[0].images);
            let twin =
                (0..batch.len).filter(|&r| batch.records.iter().filter(|&&x| x == batch.records[r]).count() == 2);
            let rows: Vec<usize> = twin.collect();
            assert_eq!(rows.len(), 2, "{bad:?}: one sample twice");
            assert_eq!(views[rows[0] * n..(rows[0] + 1) * n], views[rows[1] * n..(rows[1] + 1) * n]);
            assert_eq!(batch.targets[rows[0]], batch.targets[rows[1]]);
        }
    }
    // The same batches on every run (a resume re-reads them).
    let again: Vec<_> = batches(BadImages::Replace).into_iter().map(Result::unwrap).collect();
    assert_eq!(replaced, again);

    let left_out: Vec<_> = batches(BadImages::LeaveOut).into_iter().map(Result::unwrap).collect();
    assert_eq!(left_out.iter().map(|b| b.len).sum::<usize>(), 38);
    assert!(left_out.iter().all(|b| b.targets.len() == b.len && b.records.len() == b.len));
}

#[test]
fn generated_data_reads_back_with_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(generate(&config(1, true), tmp.path()).unwrap(), 8 * 7);
    let train = read_inat2021(tmp.path(), "train").unwrap();
    let val = read_inat2021(tmp.path(), "val").unwrap();
    assert_eq!((train.records.len(), val.records.len(), train.classes.len()), (40, 16, 8));
    for label in 0..8 {
        assert_eq!(train.records.iter().filter(|r| r.label == label).count(), 5);
    }
    let with_date = train.records.iter().filter(|r| r.observation.date().is_some()).count();
    let with_location = train.records.iter().filter(|r| r.observation.latitude().is_some()).count();
    assert_eq!(with_date, with_location);
    assert!(with_location > 25 && with_location < 40, "{with_location}");
    assert_eq!(train.classes[3].supercategory.as_deref(), Some("group01"));
    // Same seed, same files; another seed, other files.
    let again = tempfile::tempdir().unwrap();
    generate(&config(1, true), again.path()).unwrap();
    let read = |dir: &std::path::Path| std::fs::read(dir.join("train/0000/0.jpg")).unwrap();
    assert_eq!(read(tmp.path()), read(again.path()));
    assert_eq!(
        std::fs::read(tmp.path().join("val.json")).unwrap(),
        std::fs::read(again.path().join("val.json")).unwrap()
    );
}

#[test]
fn the_yfcc_like_variant_has_locations_and_no_dates() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(2, false), tmp.path()).unwrap();
    let train = read_inat2021(tmp.path(), "train").unwrap();
    assert!(train.records.iter().all(|r| r.observation.date().is_none()));
    assert!(train.records.iter().filter(|r| r.observation.latitude().is_some()).count() > 25);
}

#[test]
fn batches_are_the_same_whatever_the_number_of_workers() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(4, true), tmp.path()).unwrap();
    let split = Arc::new(read_inat2021(tmp.path(), "train").unwrap());
    let collect = |workers| -> Vec<_> {
        EpochBatches::new(split.clone(), loader(workers, Some(Metadata::GeoTemporal)), 2)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    };
    let one = collect(1);
    assert_eq!(one.len(), 6); // 40 records in batches of 7
    assert_eq!(one.last().unwrap().len, 5);
    assert_eq!(one[0].views[0].images.len(), 7 * 3 * 16 * 16);
    assert_eq!(one[0].loc.len(), 7 * 6);
    assert_eq!(one, collect(3));
    // Another epoch shuffles differently.
    let other: Vec<_> = EpochBatches::new(split.clone(), loader(2, None), 3).unwrap().map(|b| b.unwrap()).collect();
    assert_ne!(one[0].targets, other[0].targets);
    assert!(other[0].loc.is_empty());
}

#[test]
fn u8_pixels_hold_the_raw_pixel_floats_and_need_their_normalisation() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(6, true), tmp.path()).unwrap();
    let split = Arc::new(read_inat2021(tmp.path(), "train").unwrap());
    let raw = LoaderConfig { normalization: RAW_PIXELS, ..loader(2, Some(Metadata::GeoTemporal)) };
    let floats: Vec<_> = EpochBatches::new(split.clone(), raw.clone(), 1).unwrap().map(|b| b.unwrap()).collect();
    let bytes: Vec<_> = EpochBatches::new(split.clone(), LoaderConfig { u8_pixels: true, ..raw }, 1)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(floats.len(), bytes.len());
    let mut distinct = std::collections::BTreeSet::new();
    for (f, b) in floats.iter().zip(&bytes) {
        assert_eq!((&f.targets, &f.loc, &f.records), (&b.targets, &b.loc, &b.records));
        let (f, b) = (&f.views[0], &b.views[0]);
        assert!(f.pixels.is_empty() && b.images.is_empty(), "each batch holds one form");
        assert_eq!(f.images.len(), b.pixels.len());
        for (&v, &p) in f.images.iter().zip(&b.pixels) {
            assert_eq!(v.to_bits(), f32::from(p).to_bits(), "a raw pixel value is a whole number in 0–255");
            distinct.insert(p);
        }
    }
    assert!(distinct.len() > 100, "the synthetic images span the range: {} values", distinct.len());
    // Normalised floats would be truncated into bytes: refused.
    let wrong = LoaderConfig { u8_pixels: true, ..loader(2, None) };
    let err = EpochBatches::new(split, wrong, 1).err().expect("u8 pixels of normalised values").to_string();
    assert!(err.contains("raw-pixel normalisation"), "{err}");
}

#[test]
fn a_corrupt_image_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(5, true), tmp.path()).unwrap();
    let split = read_inat2021(tmp.path(), "val").unwrap();
    let victim = split.records[3].path.clone();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let mut config = loader(2, None);
    config.shuffle = false;
    let results: Vec<_> = EpochBatches::new(Arc::new(split), config, 0).unwrap().collect();
    let err = results.into_iter().find_map(Result::err).expect("the truncated JPEG fails");
    assert!(matches!(&err, DatasetError::Image { path, .. } if *path == victim), "{err}");
}

#[test]
fn malformed_annotation_files_are_errors_naming_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |json: &str| std::fs::write(tmp.path().join("val.json"), json).unwrap();
    let cats = r#""categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]"#;
    write(&format!(
        r#"{{"images": [{{"id": 1, "file_name": "x.jpg", "latitude": 10.0, "longitude": 20.0, "date": "2011-02-30"}}], "annotations": [{{"image_id": 1, "category_id": 9}}], {cats}}}"#
    ));
    let err = read_inat2021(tmp.path(), "val").unwrap_err().to_string();
    assert!(err.contains("val.json") && err.contains("image #0") && err.contains("2011-02-30"), "{err}");
    write(&format!(
        r#"{{"images": [{{"id": 1, "file_name": "x.jpg"}}], "annotations": [{{"image_id": 1, "category_id": 5}}], {cats}}}"#
    ));
    let err = read_inat2021(tmp.path(), "val").unwrap_err().to_string();
    assert!(err.contains("annotation #0") && err.contains("category id 5"), "{err}");
    write(&format!(r#"{{"images": [{{"id": 1, "file_name": "x.jpg"}}, {{"id": 1, "file_name": "y.jpg"}}], {cats}}}"#));
    assert!(read_inat2021(tmp.path(), "val").unwrap_err().to_string().contains("duplicate image id 1"));
    write(&format!(r#"{{"images": [{{"id": 1, "file_name": "x.jpg"}}], "annotations": [], {cats}}}"#));
    assert!(read_inat2021(tmp.path(), "val").unwrap_err().to_string().contains("no annotation"));
    write(r#"{"images": [{"id": 1, "file_name": "x.jpg", "latitude": 95.0}], "#);
    let err = read_inat2021(tmp.path(), "val").unwrap_err().to_string();
    assert!(err.contains("malformed JSON") && err.contains("line"), "{err}");
    // Labels follow category ids sorted; the join is by id, whatever the order of the lists.
    write(&format!(
        r#"{{"images": [{{"id": 7, "file_name": "a.jpg"}}, {{"id": 3, "file_name": "b.jpg", "latitude": null}}], "annotations": [{{"image_id": 3, "category_id": 4}}, {{"image_id": 7, "category_id": 9}}], {cats}}}"#
    ));
    let split = read_inat2021(tmp.path(), "val").unwrap();
    assert_eq!(split.records.iter().map(|r| (r.image_id, r.label)).collect::<Vec<_>>(), vec![(7, 1), (3, 0)]);
}

#[test]
fn grayscale_and_alpha_images_decode_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let gray = tmp.path().join("gray.png");
    image::GrayImage::from_fn(5, 3, |x, _| image::Luma([x as u8 * 50])).save(&gray).unwrap();
    let rgba = tmp.path().join("rgba.png");
    image::RgbaImage::from_fn(4, 4, |_, _| image::Rgba([10, 20, 30, 0])).save(&rgba).unwrap();
    let gray_jpeg = tmp.path().join("gray.jpg");
    image::GrayImage::from_fn(8, 8, |_, _| image::Luma([128])).save(&gray_jpeg).unwrap();
    let decoded = dmlp_vision::decode_rgb(&gray).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (5, 3));
    assert_eq!(decoded.get_pixel(2, 1).0, [100, 100, 100]);
    assert_eq!(dmlp_vision::decode_rgb(&rgba).unwrap().get_pixel(1, 1).0, [10, 20, 30]);
    let jpeg = dmlp_vision::decode_rgb(&gray_jpeg).unwrap();
    assert!(jpeg.pixels().all(|p| p.0.iter().all(|v| v.abs_diff(128) <= 2)));
    let missing = tmp.path().join("absent.jpg");
    let err = dmlp_vision::decode_rgb(&missing).unwrap_err().to_string();
    assert!(err.contains("absent.jpg"), "{err}");
}

#[test]
fn missing_images_are_named_before_any_batch_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(6, true), tmp.path()).unwrap();
    let split = read_inat2021(tmp.path(), "val").unwrap();
    split.check_images_exist().unwrap();
    std::fs::remove_file(&split.records[2].path).unwrap();
    std::fs::remove_file(&split.records[5].path).unwrap();
    let err = split.check_images_exist().unwrap_err().to_string();
    assert!(err.contains("2 of the 16 images") && err.contains(&split.records[2].path.display().to_string()), "{err}");
}

#[test]
fn a_row_filter_decodes_the_rows_it_flags_and_leaves_the_others_zero() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&config(1, true), tmp.path()).unwrap();
    let split = Arc::new(read_inat2021(tmp.path(), "train").unwrap());
    // Odd rows of even batches, every row of odd batches.
    let filter = dmlp_datasets::loader::RowFilter(Arc::new(|_epoch, batch, n| {
        (0..n).map(|row| batch % 2 == 1 || row % 2 == 1).collect()
    }));
    let whole: Vec<_> = EpochBatches::new(split.clone(), loader(2, Some(Metadata::GeoTemporal)), 2)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let config = LoaderConfig { rows: Some(filter.clone()), ..loader(2, Some(Metadata::GeoTemporal)) };
    let some: Vec<_> = EpochBatches::new(split.clone(), config, 2).unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(whole.len(), some.len());
    let per_image = whole[0].views[0].images.len() / whole[0].len;
    let cin = whole[0].loc.len() / whole[0].len;
    for (k, (a, b)) in whole.iter().zip(&some).enumerate() {
        assert_eq!(a.records, b.records, "the same rows in the same order");
        for row in 0..a.len {
            let image = |batch: &dmlp_datasets::loader::Batch| {
                batch.views[0].images[row * per_image..(row + 1) * per_image].to_vec()
            };
            let loc = |batch: &dmlp_datasets::loader::Batch| batch.loc[row * cin..(row + 1) * cin].to_vec();
            if k % 2 == 1 || row % 2 == 1 {
                assert_eq!(image(a), image(b), "batch {k} row {row}");
                assert_eq!((loc(a), a.targets[row]), (loc(b), b.targets[row]));
            } else {
                assert!(image(b).iter().all(|&v| v == 0.0) && loc(b).iter().all(|&v| v == 0.0));
                assert!(image(a).iter().any(|&v| v != 0.0), "a decoded row is not all zeros");
            }
        }
    }
    // With bad images skipped a filter is refused.
    let skipping = LoaderConfig { rows: Some(filter), bad_images: BadImages::Replace, ..loader(2, None) };
    assert!(EpochBatches::new(split, skipping, 1).is_err());
}
