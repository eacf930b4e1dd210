//! A prepared manifest reads back exactly what the readers return, is kept while the annotation
//! files are unchanged, ignored once they change, and never written into the dataset folder.

use std::path::Path;

use dmlp_datasets::{DatasetName, SplitScheme, read_split};
use dmlp_prepare::{load_split, manifest_dir, prepare};
use polars::prelude::{Column, ParquetReader, ParquetWriter, SerReader};

fn write(root: &Path, name: &str, text: &str) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn inat2018(root: &Path) {
    write(
        root,
        "train2018.json",
        r#"{"images": [{"id": 5, "file_name": "train_val2018/Plantae/7477/a.jpg"}, {"id": 2, "file_name": "train_val2018/Aves/3731/b.jpg"}, {"id": 9, "file_name": "train_val2018/Aves/3731/c.jpg"}],
            "annotations": [{"image_id": 2, "category_id": 3731}, {"image_id": 5, "category_id": 7477}, {"image_id": 9, "category_id": 3731}],
            "categories": [{"id": 3731, "name": "Hylocichla mustelina", "supercategory": "Aves"}, {"id": 7477, "name": "Capsella bursa-pastoris"}]}"#,
    );
    write(
        root,
        "inat2018_locations/train2018_locations.json",
        r#"[{"id": 2, "lat": 42.5, "lon": -71.1, "date": "2018-05-20 07:00:00+00:00"}, {"id": 5, "lat": null, "lon": null, "date": "2017-12-01 00:00:00+00:00"}, {"id": 9, "lat": 3, "lon": 4, "date_c": 0.5}, {"id": 77, "lat": 1, "lon": 2, "date": null}]"#,
    );
}

#[test]
fn a_prepared_split_reads_back_exactly_and_goes_stale_when_its_files_change() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let root = data.path();
    inat2018(root);
    let report = prepare(DatasetName::Inat2018, root, SplitScheme::Official, cache.path(), false).unwrap();
    assert!(report.rebuilt);
    assert_eq!(report.info.splits["train"].records, 3);
    assert!(report.info.skipped.contains_key("val"), "{:?}", report.info.skipped);
    assert!(report.dir.starts_with(cache.path()));
    assert!(report.dir.join("records-train.parquet").is_file());
    // Nothing was written into the dataset folder.
    let mut in_root: Vec<_> = walk(root);
    in_root.sort();
    assert_eq!(in_root, vec!["inat2018_locations/train2018_locations.json".to_owned(), "train2018.json".to_owned()]);

    let direct = read_split(DatasetName::Inat2018, root, "train", SplitScheme::Official).unwrap();
    let cached = load_split(DatasetName::Inat2018, root, "train", SplitScheme::Official, cache.path()).unwrap();
    assert_eq!(cached.as_ref(), Some(&direct));
    assert!(direct.records.iter().any(|r| r.observation.year_fraction() == Some(0.5)), "date_c kept through Parquet");
    assert!(!direct.notes.is_empty());
    assert_eq!(load_split(DatasetName::Inat2018, root, "val", SplitScheme::Official, cache.path()).unwrap(), None);

    // Unchanged files: kept.
    let again = prepare(DatasetName::Inat2018, root, SplitScheme::Official, cache.path(), false).unwrap();
    assert!(!again.rebuilt);

    // A changed location file: the manifest is stale until prepared again.
    write(
        root,
        "inat2018_locations/train2018_locations.json",
        r#"[{"id": 2, "lat": 40.0, "lon": -70.0, "date": "2018-05-21 07:00:00+00:00"}]"#,
    );
    assert_eq!(load_split(DatasetName::Inat2018, root, "train", SplitScheme::Official, cache.path()).unwrap(), None);
    let rebuilt = prepare(DatasetName::Inat2018, root, SplitScheme::Official, cache.path(), false).unwrap();
    assert!(rebuilt.rebuilt);
    let cached =
        load_split(DatasetName::Inat2018, root, "train", SplitScheme::Official, cache.path()).unwrap().unwrap();
    assert_eq!(cached.records[1].observation.latitude(), Some(40.0));
    assert_eq!(cached, read_split(DatasetName::Inat2018, root, "train", SplitScheme::Official).unwrap());
    // Another scheme or root has its own folder.
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        manifest_dir(cache.path(), DatasetName::Inat2018, root, SplitScheme::Official).unwrap(),
        manifest_dir(cache.path(), DatasetName::Inat2018, other.path(), SplitScheme::Official).unwrap()
    );
}

#[test]
fn an_older_manifest_is_rebuilt_and_a_tampered_one_is_an_error() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let root = data.path();
    inat2018(root);
    let report = prepare(DatasetName::Inat2018, root, SplitScheme::Official, cache.path(), false).unwrap();
    let info_path = report.dir.join("prepared.json");
    let load = || load_split(DatasetName::Inat2018, root, "train", SplitScheme::Official, cache.path());

    // A manifest of an earlier layout (no `format`, no date_c column) is never read as this one.
    let mut info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    info.as_object_mut().unwrap().remove("format");
    std::fs::write(&info_path, info.to_string()).unwrap();
    assert_eq!(load().unwrap(), None);
    assert!(prepare(DatasetName::Inat2018, root, SplitScheme::Official, cache.path(), false).unwrap().rebuilt);
    assert!(load().unwrap().is_some());

    // Labels beyond the class table, and paths that leave the dataset folder, are errors.
    let records = report.dir.join("records-train.parquet");
    let tamper = |column: &str, value: Column| {
        let mut frame = ParquetReader::new(std::fs::File::open(&records).unwrap()).finish().unwrap();
        frame.replace(column, value).unwrap();
        let file = std::fs::File::create(&records).unwrap();
        ParquetWriter::new(file).finish(&mut frame).unwrap();
    };
    let original = std::fs::read(&records).unwrap();
    tamper("label", Column::new("label".into(), vec![0u32, 7, 1]));
    let err = load().unwrap_err().to_string();
    assert!(err.contains("records-train.parquet") && err.contains("row 1") && err.contains("label 7"), "{err}");
    std::fs::write(&records, &original).unwrap();
    for escape in ["../outside.jpg", "/etc/passwd"] {
        tamper("path", Column::new("path".into(), vec!["a.jpg", escape, "c.jpg"]));
        let err = load().unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("leaves the dataset folder"), "{escape}: {err}");
    }
}

#[test]
fn a_broken_annotation_file_is_an_error_and_an_empty_folder_says_what_is_missing() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let err = prepare(DatasetName::YfccGeo100, data.path(), SplitScheme::Official, cache.path(), false).unwrap_err();
    assert!(err.to_string().contains("train_test_split.csv"), "{err}");
    write(data.path(), "class_names.csv", "id,name\n0,a\n");
    write(data.path(), "train_test_split.csv", "path,lat,lon,split,class\nx.jpg,95,0,train,0\n");
    let err = prepare(DatasetName::YfccGeo100, data.path(), SplitScheme::Official, cache.path(), false).unwrap_err();
    assert!(err.to_string().contains("line 2") && err.to_string().contains("latitude 95"), "{err}");
    // No manifest, and no half-written one, is left behind.
    assert_eq!(cache.path().join("manifests").read_dir().unwrap().count(), 0);
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn the_default_cache_folder_follows_the_documented_variables() {
    use dmlp_prepare::default_cache_dir;
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| (*v).to_owned())
    };
    assert_eq!(default_cache_dir(env(&[("DMLP_CACHE_DIR", "/c"), ("HOME", "/h")])), Some("/c".into()));
    assert_eq!(default_cache_dir(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])), Some("/x/dmlp".into()));
    assert_eq!(default_cache_dir(env(&[("DMLP_CACHE_DIR", ""), ("HOME", "/h")])), Some("/h/.cache/dmlp".into()));
    assert_eq!(default_cache_dir(env(&[])), None);
}
