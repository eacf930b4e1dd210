//! Each reader on small hand-made files in its official format: exactly the right records, and
//! every kind of bad input an error naming the file and the record (or a counted note).

use std::path::{Path, PathBuf};

use dmlp_datasets::{DatasetError, DatasetName, Split, SplitScheme, read_split};
use dmlp_geo::Metadata;

fn write(root: &Path, name: &str, text: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn read(dataset: DatasetName, root: &Path, split: &str) -> Result<Split, DatasetError> {
    read_split(dataset, root, split, SplitScheme::Official)
}

fn err(dataset: DatasetName, root: &Path, split: &str) -> String {
    read(dataset, root, split).expect_err("bad input must be an error").to_string()
}

/// `(image id, label, lat, lon, date)` of one record.
type RecordSummary = (u64, u32, Option<f64>, Option<f64>, Option<String>);

/// Every record's summary, in file order.
fn summary(split: &Split) -> Vec<RecordSummary> {
    split
        .records
        .iter()
        .map(|r| {
            let o = r.observation;
            (r.image_id, r.label, o.latitude(), o.longitude(), o.date().map(|d| d.to_string()))
        })
        .collect()
}

const INAT17_TRAIN: &str = r#"{
  "info": {"year": 2017, "version": "1.0", "description": "iNat 2017", "contributor": "", "url": "", "date_created": "2017-03-01"},
  "images": [
    {"id": 10, "width": 800, "height": 600, "file_name": "train_val_images/Plantae/Capsella bursa-pastoris/00b3.jpg", "license": 3, "rights_holder": "x"},
    {"id": 11, "width": 600, "height": 800, "file_name": "train_val_images/Aves/Turdus migratorius/11aa.jpg", "license": 1, "rights_holder": "y"},
    {"id": 12, "width": 800, "height": 533, "file_name": "train_val_images/Aves/Turdus migratorius/12bb.jpg", "license": 1, "rights_holder": "y"},
    {"id": 13, "width": 800, "height": 533, "file_name": "train_val_images/Aves/Hylocichla mustelina/13cc.jpg", "license": 1, "rights_holder": "z"},
    {"id": 14, "width": 500, "height": 500, "file_name": "train_val_images/Plantae/Capsella bursa-pastoris/14dd.jpg", "license": 2, "rights_holder": "z"}
  ],
  "annotations": [
    {"id": 4, "image_id": 14, "category_id": 0},
    {"id": 0, "image_id": 10, "category_id": 0},
    {"id": 1, "image_id": 11, "category_id": 7},
    {"id": 3, "image_id": 13, "category_id": 3},
    {"id": 2, "image_id": 12, "category_id": 7}
  ],
  "categories": [
    {"id": 7, "name": "Turdus migratorius", "supercategory": "Aves"},
    {"id": 0, "name": "Capsella bursa-pastoris", "supercategory": "Plantae"},
    {"id": 3, "name": "Hylocichla mustelina", "supercategory": "Aves"}
  ],
  "licenses": [{"id": 1, "name": "CC BY", "url": ""}]
}"#;

// Image 10: complete; 11: null latitude; 12: valid=false; 13: no record; 14: date null;
// 99: an image of another split.
const INAT17_TRAIN_LOCATIONS: &str = r#"[
  {"id": 12, "lat": 40.0, "lon": -75.0, "date": "2016-06-01 08:00:00+00:00", "date_c": 0.41, "user_id": 5, "valid": false, "loc_uncert": 30},
  {"id": 10, "lat": 37.7821, "lon": -122.4662, "date": "2017-05-06 12:34:00+00:00", "date_c": 0.3425, "user_id": 12345, "valid": true, "loc_uncert": 24},
  {"id": 11, "lat": null, "lon": 151.2, "date": "2015-12-31 23:59:00+00:00", "date_c": 0.99, "user_id": null, "valid": true, "loc_uncert": null},
  {"id": 14, "lat": -33.9, "lon": 18.4, "date": null, "date_c": null, "user_id": 7, "valid": true, "loc_uncert": null},
  {"id": 99, "lat": 1.0, "lon": 2.0, "date": "2016-01-01 00:00:00+00:00", "date_c": 0.0, "user_id": 1, "valid": true, "loc_uncert": 1}
]"#;

#[test]
fn inat2017_joins_the_location_file_by_image_id() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "train2017.json", INAT17_TRAIN);
    write(root, "inat2017_locations/train2017_locations.json", INAT17_TRAIN_LOCATIONS);
    let split = read(DatasetName::Inat2017, root, "train").unwrap();
    let names: Vec<_> =
        split.classes.iter().map(|c| (c.source_id, c.name.as_str(), c.supercategory.as_deref())).collect();
    assert_eq!(
        names,
        vec![
            (0, "Capsella bursa-pastoris", Some("Plantae")),
            (3, "Hylocichla mustelina", Some("Aves")),
            (7, "Turdus migratorius", Some("Aves")),
        ]
    );
    assert_eq!(
        summary(&split),
        vec![
            (10, 0, Some(37.7821), Some(-122.4662), Some("2017-05-06".into())),
            (11, 2, None, Some(151.2), Some("2015-12-31".into())),
            (12, 2, None, None, Some("2016-06-01".into())),
            (13, 1, None, None, None),
            (14, 0, Some(-33.9), Some(18.4), None),
        ]
    );
    assert_eq!(split.records[1].path, root.join("train_val_images/Aves/Turdus migratorius/11aa.jpg"));
    let notes: Vec<_> = split.notes.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        notes,
        vec![
            ("images without a location record (metadata missing)", 1),
            ("location records marked valid=false (location treated as missing)", 1),
            ("location records of images not in the split (ignored)", 1),
        ]
    );
}

#[test]
fn inat2018_reads_its_location_file_at_the_root_too() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "val2018.json",
        r#"{"images": [{"id": 5, "file_name": "train_val2018/Plantae/7477/3b60.jpg", "width": 800, "height": 600},
                       {"id": 2, "file_name": "train_val2018/Aves/3731/aa.jpg", "width": 800, "height": 600}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 3731}, {"id": 2, "image_id": 5, "category_id": 7477}],
            "categories": [{"id": 3731, "name": "Hylocichla mustelina", "supercategory": "Aves", "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes", "family": "Turdidae", "genus": "Hylocichla"},
                           {"id": 7477, "name": "Capsella bursa-pastoris", "supercategory": "Plantae", "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida", "order": "Brassicales", "family": "Brassicaceae", "genus": "Capsella"}]}"#,
    );
    write(
        root,
        "val2018_locations.json",
        r#"[{"id": 2, "lat": 42.5, "lon": -71.1, "date": "2018-05-20 07:00:00+00:00"}, {"id": 5, "lat": null, "lon": null, "date": null}]"#,
    );
    let split = read(DatasetName::Inat2018, root, "val").unwrap();
    assert_eq!(
        summary(&split),
        vec![(5, 1, None, None, None), (2, 0, Some(42.5), Some(-71.1), Some("2018-05-20".into()))]
    );
    assert!(split.notes.is_empty(), "{:?}", split.notes);
    assert_eq!(split.classes[1].supercategory.as_deref(), Some("Plantae"));
}

fn inat2021_json(first_id: u64) -> String {
    format!(
        r#"{{"info": {{"date_created": "2021-03-01"}},
  "images": [
    {{"id": {a}, "width": 284, "height": 222, "file_name": "val/03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata/df8e.jpg", "license": 2, "rights_holder": "m", "date": "2007-10-31 00:00:00+00:00", "latitude": -21.93073, "longitude": 114.12239, "location_uncertainty": null}},
    {{"id": {b}, "width": 500, "height": 375, "file_name": "val/00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris/aa.jpg", "license": 1, "rights_holder": "n", "date": "2020-02-29 10:00:00+00:00", "latitude": null, "longitude": null, "location_uncertainty": -80}}
  ],
  "annotations": [{{"id": {b}, "image_id": {b}, "category_id": 0}}, {{"id": {a}, "image_id": {a}, "category_id": 3938}}],
  "categories": [
    {{"id": 3938, "name": "Ptilotula penicillata", "common_name": "White-plumed Honeyeater", "supercategory": "Birds", "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes", "family": "Meliphagidae", "genus": "Ptilotula", "specific_epithet": "penicillata", "image_dir_name": "03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata"}},
    {{"id": 0, "name": "Lumbricus terrestris", "common_name": "Common Earthworm", "supercategory": "Animalia", "kingdom": "Animalia", "phylum": "Annelida", "class": "Clitellata", "order": "Haplotaxida", "family": "Lumbricidae", "genus": "Lumbricus", "specific_epithet": "terrestris", "image_dir_name": "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris"}}
  ]}}"#,
        a = first_id,
        b = first_id + 1
    )
}

#[test]
fn inat2021_and_its_mini_variant_read_the_metadata_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "val.json", &inat2021_json(2_686_843));
    write(root, "train_mini.json", &inat2021_json(7));
    let val = read(DatasetName::Inat2021, root, "val").unwrap();
    assert_eq!(
        summary(&val),
        vec![
            (2_686_843, 1, Some(-21.93073), Some(114.12239), Some("2007-10-31".into())),
            (2_686_844, 0, None, None, Some("2020-02-29".into())),
        ]
    );
    assert_eq!(val.classes[0].name, "Lumbricus terrestris");
    // inat2021-mini's train split is train_mini.json; inat2021 reads any <split>.json.
    let mini = read(DatasetName::Inat2021Mini, root, "train").unwrap();
    assert_eq!(mini.records[0].image_id, 7);
    assert_eq!(read(DatasetName::Inat2021, root, "train_mini").unwrap().records.len(), 2);
    let missing = err(DatasetName::Inat2021, root, "train");
    assert!(missing.contains("train.json"), "{missing}");
}

const YFCC_CLASSES: &str = "id,name\n0,airport\n1,beach\n2,bridge\n";

#[test]
fn yfcc_reads_the_csv_split_and_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "class_names.csv", YFCC_CLASSES);
    write(
        root,
        "train_test_split.csv",
        "path,lat,lon,split,class\nbeach/1.jpg,10.5,-20.25,train,1\nairport/2.jpg,,,val,0\nbridge/3.jpg,-45,170,test,2\nbeach/4.jpg,0,0,train,1\n",
    );
    let train = read(DatasetName::YfccGeo100, root, "train").unwrap();
    assert_eq!(summary(&train), vec![(2, 1, Some(10.5), Some(-20.25), None), (5, 1, Some(0.0), Some(0.0), None)]);
    assert_eq!(train.records[0].path, root.join("beach/1.jpg"));
    assert_eq!(train.classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["airport", "beach", "bridge"]);
    assert_eq!(summary(&read(DatasetName::YfccGeo100, root, "val").unwrap()), vec![(3, 0, None, None, None)]);
    assert_eq!(
        summary(&read(DatasetName::YfccGeo100, root, "test").unwrap()),
        vec![(4, 2, Some(-45.0), Some(170.0), None)]
    );
    // Columns are found by name, in any order.
    write(root, "train_test_split.csv", "class,split,lon,lat,path\n1,train,-20.25,10.5,beach/1.jpg\n");
    let reordered = read(DatasetName::YfccGeo100, root, "train").unwrap();
    assert_eq!(summary(&reordered), vec![(2, 1, Some(10.5), Some(-20.25), None)]);
}

#[test]
fn yfcc_supplement_split_takes_the_first_twenty_per_class_by_path_from_val_and_test() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "class_names.csv", YFCC_CLASSES);
    let mut csv = String::from("path,lat,lon,split,class\n");
    // Classes 0 and 1: 25 val/test rows each, written in descending path order, plus train rows;
    // class 2: only 3 val/test rows.
    for class in 0..3u32 {
        let n = if class == 2 { 3 } else { 25 };
        for i in (0..n).rev() {
            let split = if i % 2 == 0 { "val" } else { "test" };
            csv.push_str(&format!("c{class}/{i:03}.jpg,1,2,{split},{class}\n"));
        }
        for i in 0..4 {
            csv.push_str(&format!("c{class}/train{i}.jpg,1,2,train,{class}\n"));
        }
    }
    write(root, "train_test_split.csv", &csv);
    let read_scheme = |split| read_split(DatasetName::YfccGeo100, root, split, SplitScheme::Supplement).unwrap();
    let val = read_scheme("val");
    let train = read_scheme("train");
    assert_eq!(val.records.len(), 20 + 20 + 3);
    assert_eq!(train.records.len(), (25 + 4) * 2 + (3 + 4) - val.records.len());
    for class in 0..2u32 {
        let mut in_val: Vec<_> = val
            .records
            .iter()
            .filter(|r| r.label == class)
            .map(|r| r.path.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        in_val.sort();
        let expected: Vec<_> = (0..20).map(|i| format!("c{class}/{i:03}.jpg")).collect();
        assert_eq!(in_val, expected);
    }
    assert!(train.records.iter().any(|r| r.path.ends_with("c0/024.jpg")));
    assert_eq!(val.notes.get("classes with fewer than 20 val images to give"), Some(&1));
    let test = read_split(DatasetName::YfccGeo100, root, "test", SplitScheme::Supplement).unwrap_err().to_string();
    assert!(test.contains("no split \"test\""), "{test}");
}

#[test]
fn records_with_only_date_c_keep_their_time_of_year() {
    // PriorsNet's location files give `date_c` (a fraction of the year); a record without `date`
    // must not lose its time of year, or a geo_temporal model would see all-zero vectors.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let images = r#"{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 0}, {"image_id": 2, "category_id": 0}, {"image_id": 3, "category_id": 0}],
        "categories": [{"id": 0, "name": "a"}]}"#;
    inat17_with(
        root,
        images,
        r#"[{"id": 1, "lat": 10, "lon": 20, "date_c": 0.25},
            {"id": 2, "lat": 10, "lon": 20, "date": "2017-07-01 00:00:00+00:00", "date_c": 0.9},
            {"id": 3, "lat": 10, "lon": 20, "date": null, "date_c": null}]"#,
    );
    let split = read(DatasetName::Inat2017, root, "train").unwrap();
    let by_id = |id: u64| split.records.iter().find(|r| r.image_id == id).unwrap().observation;
    assert_eq!(by_id(1).year_fraction(), Some(0.25));
    assert!(by_id(1).is_complete_for(Metadata::GeoTemporal));
    assert_eq!(by_id(2).date().map(|d| d.to_string()).as_deref(), Some("2017-07-01"), "a date wins over date_c");
    assert!(!by_id(3).has_time_of_year());
    let options = dmlp_datasets::verify::VerifyOptions { decode: false, max_listed: 10, threads: 1 };
    let report =
        dmlp_datasets::verify::verify(DatasetName::Inat2017, root, SplitScheme::Official, options, &|_, _, _| {});
    assert_eq!(report.unwrap().splits["train"].without_date, Some(1), "verify counts date_c as a date");
    inat17_with(root, images, r#"[{"id": 1, "lat": 10, "lon": 20, "date_c": 1.5}]"#);
    let message = err(DatasetName::Inat2017, root, "train");
    assert!(message.contains("location record #0") && message.contains("date_c 1.5"), "{message}");
}

/// Writes a minimal valid iNat 2017 train split; `edit` changes the two JSON texts first.
fn inat17_with(root: &Path, images: &str, locations: &str) {
    write(root, "train2017.json", images);
    write(root, "train2017_locations.json", locations);
}

#[test]
fn bad_coco_files_are_errors_naming_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cats = r#""categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]"#;
    let case = |images: &str, annotations: &str| -> String {
        write(root, "val.json", &format!(r#"{{"images": [{images}], "annotations": [{annotations}], {cats}}}"#));
        err(DatasetName::Inat2021, root, "val")
    };
    let one = r#"{"id": 1, "file_name": "x.jpg"}"#;
    let check = |message: String, needles: &[&str]| {
        assert!(message.contains("val.json"), "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
    };
    check(case(one, r#"{"image_id": 1, "category_id": 5}"#), &["annotation #0", "category id 5"]);
    for escape in ["../../etc/passwd", "/etc/passwd", "train/../../x.jpg", ""] {
        let image = format!(r#"{{"id": 1, "file_name": "{escape}"}}"#);
        check(case(&image, r#"{"image_id": 1, "category_id": 4}"#), &["image #0", "leaves the dataset folder"]);
    }
    check(case(one, r#"{"image_id": 2, "category_id": 4}"#), &["annotation #0", "image id 2"]);
    check(
        case(&format!("{one}, {one}"), r#"{"image_id": 1, "category_id": 4}"#),
        &["image #1", "duplicate image id 1", "image #0"],
    );
    check(case(one, ""), &["image #0", "no annotation"]);
    check(
        case(one, r#"{"image_id": 1, "category_id": 4}, {"image_id": 1, "category_id": 9}"#),
        &["annotation #1", "second annotation"],
    );
    let located = |lat: &str, lon: &str, date: &str| {
        format!(r#"{{"id": 1, "file_name": "x.jpg", "latitude": {lat}, "longitude": {lon}, "date": {date}}}"#)
    };
    let ann = r#"{"image_id": 1, "category_id": 4}"#;
    check(case(&located("95.0", "0", "null"), ann), &["image #0", "latitude 95"]);
    check(case(&located("10", "-180.5", "null"), ann), &["image #0", "longitude -180.5"]);
    check(case(&located("10", "20", r#""2011-02-30""#), ann), &["image #0", "2011-02-30"]);
    check(case(&located("10", "20", r#""2011-13-01 00:00:00+00:00""#), ann), &["image #0", "2011-13-01"]);
    // NaN is not JSON: a malformed-JSON error with the line.
    check(case(&located("NaN", "20", "null"), ann), &["malformed JSON", "line 1"]);
    write(
        root,
        "val.json",
        "{\"images\": [\n{\"id\": 1, \"file_name\": \"x.jpg\"},\n{\"id\": 2 \"file_name\": \"y.jpg\"}]}",
    );
    check(err(DatasetName::Inat2021, root, "val"), &["malformed JSON", "line 3"]);
    write(
        root,
        "val.json",
        &format!(
            r#"{{"images": [{one}], "annotations": [{ann}], "categories": [{{"id": 4, "name": "a"}}, {{"id": 4, "name": "b"}}]}}"#
        ),
    );
    check(err(DatasetName::Inat2021, root, "val"), &["category #1", "duplicate category id 4"]);
}

#[test]
fn bad_location_files_are_errors_naming_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let images = r#"{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 0}, {"image_id": 2, "category_id": 0}],
        "categories": [{"id": 0, "name": "a"}]}"#;
    let case = |locations: &str| -> String {
        inat17_with(root, images, locations);
        err(DatasetName::Inat2017, root, "train")
    };
    let message = case(r#"[{"id": 1, "lat": 1, "lon": 2, "date": null}, {"id": 1, "lat": 3, "lon": 4, "date": null}]"#);
    assert!(
        message.contains("train2017_locations.json")
            && message.contains("location record #1")
            && message.contains("also location record #0"),
        "{message}"
    );
    let message = case(r#"[{"id": 1, "lat": -91, "lon": 2, "date": null}]"#);
    assert!(message.contains("location record #0") && message.contains("latitude -91"), "{message}");
    let message =
        case(r#"[{"id": 1, "lat": 1, "lon": 2}, {"id": 2, "lat": 1, "lon": 2, "date": "2017-02-29 00:00:00+00:00"}]"#);
    assert!(message.contains("location record #1") && message.contains("2017-02-29"), "{message}");
    let message = case(r#"[{"id": 1, "lat": 1, "lon": 2}"#);
    assert!(message.contains("malformed JSON"), "{message}");
    // No location file: the error names both places looked at.
    std::fs::remove_file(root.join("train2017_locations.json")).unwrap();
    let message = err(DatasetName::Inat2017, root, "train");
    assert!(message.contains("train2017_locations.json") && message.contains("inat2017_locations"), "{message}");
    // No annotation file.
    let message = err(DatasetName::Inat2018, root, "train");
    assert!(message.contains("train2018"), "{message}");
}

#[test]
fn bad_yfcc_files_are_errors_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "class_names.csv", YFCC_CLASSES);
    let case = |rows: &str| -> String {
        write(root, "train_test_split.csv", &format!("path,lat,lon,split,class\nok/1.jpg,1,2,train,0\n{rows}"));
        err(DatasetName::YfccGeo100, root, "train")
    };
    let check = |message: String, needles: &[&str]| {
        assert!(message.contains("train_test_split.csv"), "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
    };
    check(case("x/2.jpg,nan,2,train,0\n"), &["line 3", "latitude NaN"]);
    check(case("x/2.jpg,1,200,train,0\n"), &["line 3", "longitude 200"]);
    check(case("x/2.jpg,north,2,train,0\n"), &["line 3", "lat \"north\" is not a number"]);
    check(case("x/2.jpg,1,2,holdout,0\n"), &["line 3", "split \"holdout\""]);
    check(case("x/2.jpg,1,2,train,7\n"), &["line 3", "class 7 is not in"]);
    check(case("x/2.jpg,1,2,train,beach\n"), &["line 3", "class \"beach\" is not an integer"]);
    check(case("ok/1.jpg,1,2,val,0\n"), &["line 3", "duplicate path", "line 2"]);
    check(case("x/2.jpg,1,2\n"), &["line 3"]);
    check(case("../x/2.jpg,1,2,train,0\n"), &["line 3", "leaves the dataset folder"]);
    check(case("/abs/2.jpg,1,2,train,0\n"), &["line 3", "leaves the dataset folder"]);
    write(root, "train_test_split.csv", "path,latitude,lon,split,class\n");
    check(err(DatasetName::YfccGeo100, root, "train"), &["line 1", "no column \"lat\""]);
    write(root, "train_test_split.csv", "path,lat,lon,split,class\n");
    write(root, "class_names.csv", "id,name\n0,a\n0,b\n");
    let message = err(DatasetName::YfccGeo100, root, "train");
    assert!(
        message.contains("class_names.csv") && message.contains("line 3") && message.contains("duplicate class id 0"),
        "{message}"
    );
    std::fs::remove_file(root.join("class_names.csv")).unwrap();
    assert!(err(DatasetName::YfccGeo100, root, "train").contains("class_names.csv"));
}

#[test]
fn names_splits_and_schemes_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let message = err(DatasetName::Inat2018, tmp.path(), "test");
    assert!(message.contains("no labels") && message.contains("train, val"), "{message}");
    let message =
        read_split(DatasetName::Inat2021, tmp.path(), "val", SplitScheme::Supplement).unwrap_err().to_string();
    assert!(message.contains("yfcc-geo100 only"), "{message}");
    for name in DatasetName::ALL {
        assert_eq!(name.as_str().parse::<DatasetName>().unwrap(), name);
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, format!("\"{name}\""));
    }
    assert!("inat2019".parse::<DatasetName>().unwrap_err().to_string().contains("yfcc-geo100"));
}
