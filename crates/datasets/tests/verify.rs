//! `verify` on a hand-made iNat 2017 folder: exact counts, the missing and corrupt files named,
//! and the good non-RGB images (PNG, grayscale, CMYK) counted as good.

use std::path::Path;

use dmlp_datasets::verify::{VerifyOptions, verify};
use dmlp_datasets::{DatasetName, SplitScheme};

/// The image fixtures live with the decoder, in `dmlp-vision`.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../vision/tests/fixtures");

fn write(root: &Path, name: &str, bytes: &[u8]) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
    bytes
}

/// An iNat 2017 folder: train has 6 images (a JPEG, a PNG, a grayscale JPEG, a CMYK JPEG, a
/// truncated JPEG and a missing one); val's annotation file is absent.
fn folder(root: &Path) {
    let images: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "file_name": "train_val_images/Aves/a/{i}.{}"}}"#,
                if i == 1 { "png" } else { "jpg" }
            )
        })
        .collect();
    let annotations: Vec<String> =
        (0..6).map(|i| format!(r#"{{"image_id": {i}, "category_id": {}}}"#, i % 2)).collect();
    write(
        root,
        "train2017.json",
        format!(
            r#"{{"images": [{}], "annotations": [{}], "categories": [{{"id": 0, "name": "a"}}, {{"id": 1, "name": "b"}}]}}"#,
            images.join(","),
            annotations.join(",")
        )
        .as_bytes(),
    );
    write(
        root,
        "train2017_locations.json",
        br#"[{"id": 0, "lat": 1.0, "lon": 2.0, "date": "2017-01-02 00:00:00+00:00"},
             {"id": 1, "lat": null, "lon": 2.0, "date": "2017-01-02 00:00:00+00:00"},
             {"id": 2, "lat": 1.0, "lon": 2.0, "date": null},
             {"id": 3, "lat": 1.0, "lon": 2.0, "date": "2017-01-02 00:00:00+00:00", "valid": false}]"#,
    );
    let dir = "train_val_images/Aves/a";
    write(root, &format!("{dir}/0.jpg"), &jpeg(40, 30));
    let mut png = Vec::new();
    image::RgbaImage::from_pixel(9, 7, image::Rgba([1, 2, 3, 128]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    write(root, &format!("{dir}/1.png"), &png);
    let mut gray = Vec::new();
    image::GrayImage::from_pixel(16, 16, image::Luma([77]))
        .write_to(&mut std::io::Cursor::new(&mut gray), image::ImageFormat::Jpeg)
        .unwrap();
    write(root, &format!("{dir}/2.jpg"), &gray);
    write(root, &format!("{dir}/3.jpg"), &std::fs::read(Path::new(FIXTURES).join("cmyk.jpg")).unwrap());
    let whole = jpeg(64, 48);
    write(root, &format!("{dir}/4.jpg"), &whole[..whole.len() * 9 / 10]);
    // 5.jpg is missing.
}

#[test]
fn verify_counts_every_record_and_names_missing_and_corrupt_files() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path());
    let options = VerifyOptions { decode: true, max_listed: 10, threads: 3 };
    let report = verify(DatasetName::Inat2017, tmp.path(), SplitScheme::Official, options, &|_, _, _| {}).unwrap();
    assert!(!report.ok);
    assert_eq!(report.official_classes, 5089);
    let train = &report.splits["train"];
    assert_eq!(train.error, None);
    assert_eq!(
        (train.records, train.classes, train.images_found, train.images_missing, train.images_corrupt),
        (Some(6), Some(2), Some(5), Some(1), Some(1))
    );
    // 1: null lat; 3: valid=false; 4, 5: no location record.
    assert_eq!((train.without_location, train.without_date), (Some(4), Some(3)));
    assert_eq!(train.missing_files, vec!["train_val_images/Aves/a/5.jpg".to_owned()]);
    assert_eq!(train.corrupt_files, vec!["train_val_images/Aves/a/4.jpg".to_owned()]);
    assert_eq!(train.official_records, Some(579_184));
    assert_eq!(train.annotation_files, vec!["train2017.json".to_owned(), "train2017_locations.json".to_owned()]);
    assert_eq!(train.notes.get("images without a location record (metadata missing)"), Some(&2));
    let val = &report.splits["val"];
    assert!(val.error.as_deref().is_some_and(|e| e.contains("val2017")), "{val:?}");
    assert_eq!(val.records, None);

    // The JSON shape the README documents.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["dataset"], "inat2017");
    for key in
        ["records", "classes", "images_found", "images_missing", "images_corrupt", "without_location", "without_date"]
    {
        assert!(json["splits"]["train"][key].is_u64(), "{key}");
    }
    assert!(json["splits"]["train"]["missing_files"].is_array());

    // Without decoding, corrupt images are not counted (null), and the truncated one is "found".
    let quick = VerifyOptions { decode: false, ..options };
    let report = verify(DatasetName::Inat2017, tmp.path(), SplitScheme::Official, quick, &|_, _, _| {}).unwrap();
    let train = &report.splits["train"];
    assert_eq!((train.images_found, train.images_corrupt), (Some(5), None));
    assert!(serde_json::to_value(&report).unwrap()["splits"]["train"]["images_corrupt"].is_null());

    // Once the missing image exists, the truncated one is the only fault; fixed too, all is ok
    // but for val's absent file.
    write(tmp.path(), "train_val_images/Aves/a/5.jpg", &jpeg(8, 8));
    write(tmp.path(), "train_val_images/Aves/a/4.jpg", &jpeg(8, 8));
    let report = verify(DatasetName::Inat2017, tmp.path(), SplitScheme::Official, options, &|_, _, _| {}).unwrap();
    assert_eq!(report.splits["train"].images_corrupt, Some(0));
    assert!(!report.ok);
    let listing = VerifyOptions { max_listed: 0, ..options };
    std::fs::remove_file(tmp.path().join("train_val_images/Aves/a/5.jpg")).unwrap();
    let report = verify(DatasetName::Inat2017, tmp.path(), SplitScheme::Official, listing, &|_, _, _| {}).unwrap();
    assert!(report.splits["train"].missing_files.is_empty() && report.splits["train"].listing_truncated);
    assert_eq!(report.splits["train"].images_missing, Some(1));
}

#[test]
fn verify_lists_files_that_decode_despite_damaged_data() {
    let tmp = tempfile::tempdir().unwrap();
    folder(tmp.path());
    write(tmp.path(), "train_val_images/Aves/a/5.jpg", &jpeg(8, 8));
    // 4.jpg: its scan cut short, an end-of-image marker appended. PIL (libjpeg) reads it, with
    // a warning, and so does training; verify names it as damaged, without failing on it.
    let whole = jpeg(64, 48);
    let mut cut = whole[..whole.len() * 7 / 10].to_vec();
    cut.extend([0xFF, 0xD9]);
    write(tmp.path(), "train_val_images/Aves/a/4.jpg", &cut);
    let options = VerifyOptions { decode: true, max_listed: 10, threads: 2 };
    let report = verify(DatasetName::Inat2017, tmp.path(), SplitScheme::Official, options, &|_, _, _| {}).unwrap();
    let train = &report.splits["train"];
    assert_eq!((train.images_corrupt, train.images_damaged), (Some(0), Some(1)));
    assert_eq!(train.damaged_files, vec!["train_val_images/Aves/a/4.jpg".to_owned()]);
    assert!(train.damage[0].contains("ends early"), "{:?}", train.damage);
    assert!(serde_json::to_value(&report).unwrap()["splits"]["train"]["images_damaged"].is_u64());
    // Without decoding, nothing is counted.
    let quick = VerifyOptions { decode: false, ..options };
    let report = verify(DatasetName::Inat2017, tmp.path(), SplitScheme::Official, quick, &|_, _, _| {}).unwrap();
    assert_eq!(report.splits["train"].images_damaged, None);
}
