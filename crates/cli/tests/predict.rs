//! Trained runs used as a user uses them: `dmlp predict` on photos whose EXIF carries their GPS position
//! and date (written here as cameras write them), the same photos without EXIF, a turned photo,
//! a damaged EXIF block and files that are not photos; `dmlp eval` of an ensemble; `dmlp figure`;
//! `dmlp prior` on a PriorsNet baseline.

use std::path::{Path, PathBuf};
use std::process::Command;

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};

/// Runs dmlp: (exit code, stdout, stderr).
fn dmlp(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmlp")).args(args).output().expect("running dmlp");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SMOKE: &str = r#"
[model]
backbone = { type = "resnet", block = "basic", layers = [1, 1, 1, 1], width = 8 }
num_classes = 9
metadata = "geo_temporal"

[model.fusion]
type = "dynamic_mlp_c"
mlp_d = 32
mlp_h = 8

[data]
root = "data"
image_size = 16
workers = 2

[train]
epochs = 6
batch_size = 16
lr = 0.1
warmup_epochs = 1
seed = 3
"#;

/// A validation photo: its file, class name, and position and date where it has them.
struct Photo {
    file: PathBuf,
    class: String,
    position: Option<(f64, f64)>,
    date: Option<(i32, u8, u8)>,
}

/// The smoke data (9 classes, 6 of them in look-alike pairs told apart by place and season)
/// and a run trained on it, in `dir`.
fn smoke_run(dir: &Path) -> (PathBuf, Vec<Photo>) {
    let data = dir.join("data");
    let (code, _, stderr) = dmlp(&[
        "data",
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--groups",
        "3",
        "--per-group",
        "2",
        "--distinct",
        "3",
        "--train-per-class",
        "30",
        "--val-per-class",
        "10",
        "--image-size",
        "24",
        "--seed",
        "11",
        "--missing-fraction",
        "0.02",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::write(dir.join("smoke.toml"), SMOKE).unwrap();
    let run = dir.join("run");
    let (code, _, stderr) = dmlp(&[
        "train",
        "--config",
        dir.join("smoke.toml").to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let val: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("val.json")).unwrap()).unwrap();
    let names: std::collections::HashMap<u64, String> = val["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_u64().unwrap(), c["name"].as_str().unwrap().to_owned()))
        .collect();
    let labels: std::collections::HashMap<u64, u64> = val["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["image_id"].as_u64().unwrap(), a["category_id"].as_u64().unwrap()))
        .collect();
    let photos = val["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            let date = image["date"].as_str().map(|d| {
                let p: Vec<&str> = d[..10].split('-').collect();
                (p[0].parse().unwrap(), p[1].parse().unwrap(), p[2].parse().unwrap())
            });
            Photo {
                file: data.join(image["file_name"].as_str().unwrap()),
                class: names[&labels[&image["id"].as_u64().unwrap()]].clone(),
                position: image["latitude"].as_f64().zip(image["longitude"].as_f64()),
                date,
            }
        })
        .collect();
    (run, photos)
}

/// Degrees as a camera writes them: whole degrees, whole minutes, seconds in hundredths.
fn dms(degrees: f64) -> Value {
    let d = degrees.abs();
    let whole = d.floor();
    let minutes = ((d - whole) * 60.0).floor();
    let hundredths = (((d - whole) * 60.0 - minutes) * 60.0 * 100.0).round();
    Value::Rational(vec![
        Rational { num: whole as u32, denom: 1 },
        Rational { num: minutes as u32, denom: 1 },
        Rational { num: hundredths as u32, denom: 100 },
    ])
}

fn ascii(text: &str) -> Value {
    Value::Ascii(vec![text.as_bytes().to_vec()])
}

/// `jpeg` with an EXIF APP1 segment holding `fields` right after its SOI, as cameras write it.
fn with_exif(jpeg: &[u8], fields: &[Field]) -> Vec<u8> {
    if fields.is_empty() {
        return jpeg.to_vec(); // nothing to say: no EXIF, as a photo without GPS or clock
    }
    let mut writer = Writer::new();
    for f in fields {
        writer.push_field(f);
    }
    let mut tiff = std::io::Cursor::new(Vec::new());
    writer.write(&mut tiff, false).unwrap();
    with_app1(jpeg, &tiff.into_inner())
}

fn with_app1(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend_from_slice(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(segment.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&segment);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn field(tag: Tag, value: Value) -> Field {
    Field { tag, ifd_num: In::PRIMARY, value }
}

/// The EXIF fields of `photo`'s position and date.
fn gps_fields(photo: &Photo) -> Vec<Field> {
    let mut fields = Vec::new();
    if let Some((lat, lon)) = photo.position {
        fields.push(field(Tag::GPSLatitudeRef, ascii(if lat < 0.0 { "S" } else { "N" })));
        fields.push(field(Tag::GPSLatitude, dms(lat)));
        fields.push(field(Tag::GPSLongitudeRef, ascii(if lon < 0.0 { "W" } else { "E" })));
        fields.push(field(Tag::GPSLongitude, dms(lon)));
    }
    if let Some((y, m, d)) = photo.date {
        fields.push(field(Tag::DateTimeOriginal, ascii(&format!("{y:04}:{m:02}:{d:02} 12:34:56"))));
    }
    fields
}

/// `--lat`, `--lon` and `--date` of a photo that has all three.
fn place_flags(photo: &Photo) -> Vec<String> {
    let (lat, lon) = photo.position.unwrap();
    let (y, m, d) = photo.date.unwrap();
    ["--lat".into(), lat.to_string(), "--lon".into(), lon.to_string(), "--date".into(), format!("{y:04}-{m:02}-{d:02}")]
        .into()
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn top_classes(line: &serde_json::Value) -> Vec<String> {
    line["top_k"].as_array().unwrap().iter().map(|c| c["class"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn predict_reads_gps_and_dates_from_exif_and_names_the_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, photos) = smoke_run(tmp.path());
    let folder = tmp.path().join("camera-roll");
    std::fs::create_dir_all(folder.join("trip")).unwrap();
    for (i, photo) in photos.iter().enumerate() {
        let jpeg = std::fs::read(&photo.file).unwrap();
        std::fs::write(folder.join("trip").join(format!("{i:03}.jpg")), with_exif(&jpeg, &gps_fields(photo))).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not a photo").unwrap();

    let (code, stdout, stderr) = dmlp(&["predict", "--run", run.to_str().unwrap(), folder.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("1 files in the folders are not .jpg"), "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), photos.len(), "one line per photo, the text file left out");
    let (mut top5, mut top1, mut with_metadata) = (0, 0, 0);
    for (photo, line) in photos.iter().zip(&lines) {
        assert!(line["file"].as_str().unwrap().ends_with(".jpg"), "{line}");
        assert_eq!(line["error"], serde_json::Value::Null);
        let classes = top_classes(line);
        assert_eq!(classes.len(), 5);
        let probabilities: Vec<f64> =
            line["top_k"].as_array().unwrap().iter().map(|c| c["probability"].as_f64().unwrap()).collect();
        assert!(probabilities.windows(2).all(|w| w[0] >= w[1]) && probabilities[0] <= 1.0, "{line}");
        top5 += usize::from(classes.contains(&photo.class));
        top1 += usize::from(classes[0] == photo.class);
        match (photo.position, photo.date) {
            (Some((lat, lon)), Some((y, m, d))) => {
                with_metadata += 1;
                assert_eq!(line["metadata_source"], "exif", "{line}");
                assert_eq!(line["metadata_used"], true, "{line}");
                // Hundredths of a second of arc: within 2e-6 degrees.
                assert!((line["latitude"].as_f64().unwrap() - lat).abs() < 2e-6, "{line} vs {lat}");
                assert!((line["longitude"].as_f64().unwrap() - lon).abs() < 2e-6, "{line} vs {lon}");
                assert_eq!(line["date"], format!("{y:04}-{m:02}-{d:02}"));
            }
            _ => assert_eq!(line["metadata_used"], false, "{line}"),
        }
    }
    let n = photos.len();
    assert!(with_metadata * 10 >= n * 9, "{with_metadata} of {n} photos have both position and date");
    assert!(top5 * 10 >= n * 9, "the right class in the top 5 for {top5} of {n}");

    // The same photos without EXIF: no location found, and the look-alike pairs are confused.
    let val = tmp.path().join("data").join("val");
    let (code, stdout, stderr) =
        dmlp(&["predict", "--run", run.to_str().unwrap(), val.to_str().unwrap(), "--json", "--quiet"]);
    assert_eq!(code, Some(0), "{stderr}");
    let bare = json_lines(&stdout);
    assert_eq!(bare.len(), n);
    let mut bare_top1 = 0;
    for (photo, line) in photos.iter().zip(&bare) {
        assert_eq!((line["metadata_source"].as_str(), line["latitude"].as_f64()), (Some("none"), None), "{line}");
        bare_top1 += usize::from(top_classes(line)[0] == photo.class);
    }
    eprintln!("smoke run: top-1 {top1} with the EXIF position and date, {bare_top1} without; top-5 {top5}; of {n}");
    assert!(top1 > bare_top1, "the EXIF location and date help: top-1 {top1} with, {bare_top1} without, of {n}");
    let (code, stdout, _) =
        dmlp(&["predict", "--run", run.to_str().unwrap(), val.to_str().unwrap(), "--top-k", "2", "--quiet"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("no location found; no date found; metadata incomplete: image only"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("2. ")), "{stdout}");

    // Flags supply what a photo lacks, and a CSV holds a row per photo and rank.
    let one = photos.iter().find(|p| p.position.is_some() && p.date.is_some()).unwrap();
    let csv = tmp.path().join("out.csv");
    let flags = place_flags(one);
    let mut args = vec!["predict", "--run", run.to_str().unwrap(), one.file.to_str().unwrap()];
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--csv", csv.to_str().unwrap(), "--top-k", "3"]);
    let (code, _, stderr) = dmlp(&args);
    assert_eq!(code, Some(0), "{stderr}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows[0],
        "file,latitude,longitude,date,metadata_source,metadata_used,rank,class,supercategory,probability,error"
    );
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows[1].contains(",flags,true,1,"), "{text}");
    let (code, _, stderr) =
        dmlp(&["predict", "--run", run.to_str().unwrap(), one.file.to_str().unwrap(), "--lat", "95", "--lon", "0"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("95"), "{stderr}");
}

#[test]
fn turned_photos_damaged_exif_and_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, photos) = smoke_run(tmp.path());
    let dir = tmp.path().join("odd");
    std::fs::create_dir_all(&dir).unwrap();
    let photo = &photos[0];
    let image = image::open(&photo.file).unwrap().to_rgb8();
    let encode = |image: &image::RgbImage| {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100).encode_image(image).unwrap();
        bytes
    };
    // Upright, and stored a quarter turn anticlockwise with orientation 6 (turn clockwise to show).
    std::fs::write(dir.join("a-upright.jpg"), with_exif(&encode(&image), &gps_fields(photo))).unwrap();
    let mut turned = gps_fields(photo);
    turned.push(field(Tag::Orientation, Value::Short(vec![6])));
    std::fs::write(dir.join("b-turned.jpg"), with_exif(&encode(&image::imageops::rotate270(&image)), &turned)).unwrap();
    // An EXIF block cut short: the photo is still predicted, with a note.
    let mut writer = Writer::new();
    let fields = gps_fields(photo);
    for f in &fields {
        writer.push_field(f);
    }
    let mut tiff = std::io::Cursor::new(Vec::new());
    writer.write(&mut tiff, true).unwrap();
    let tiff = tiff.into_inner();
    std::fs::write(dir.join("c-damaged-exif.jpg"), with_app1(&encode(&image), &tiff[..tiff.len() / 2])).unwrap();
    // Not a JPEG at all, and a JPEG cut short.
    std::fs::write(dir.join("d-not-a-photo.jpg"), b"hello").unwrap();
    let jpeg = std::fs::read(&photo.file).unwrap();
    std::fs::write(dir.join("e-truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();

    let (code, stdout, stderr) = dmlp(&["predict", "--run", run.to_str().unwrap(), dir.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(3), "some photos could not be read: {stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 5);
    let (upright, turned, damaged) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!((upright["orientation"].as_u64(), turned["orientation"].as_u64()), (Some(1), Some(6)));
    assert_eq!(top_classes(upright)[0], top_classes(turned)[0], "{upright}\n{turned}");
    let p = |l: &serde_json::Value| l["top_k"][0]["probability"].as_f64().unwrap();
    assert!((p(upright) - p(turned)).abs() < 0.05, "turned upright, the same photo: {upright}\n{turned}");
    assert_eq!(damaged["error"], serde_json::Value::Null, "{damaged}");
    assert_eq!(damaged["metadata_source"], "none", "{damaged}");
    assert!(damaged["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("EXIF")), "{damaged}");
    for line in &lines[3..] {
        let error = line["error"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(error.contains(line["file"].as_str().unwrap()), "the error names the file: {line}");
        assert_eq!(line["top_k"].as_array().unwrap().len(), 0);
    }
    assert!(stderr.contains("3 photos predicted, 2 could not be read"), "{stderr}");
    // `dmlp data exif` shows what predict read, file by file.
    let files: Vec<String> = ["b-turned.jpg", "c-damaged-exif.jpg", "d-not-a-photo.jpg", "missing.jpg"]
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    let mut args = vec!["data", "exif"];
    args.extend(files.iter().map(String::as_str));
    let (code, stdout, _) = dmlp(&args);
    assert_eq!(code, Some(1), "a missing file fails the command");
    let exif = json_lines(&stdout);
    assert_eq!(exif.len(), 4);
    assert_eq!((exif[0]["orientation"].as_u64(), exif[0]["date_field"].as_str()), (Some(6), Some("DateTimeOriginal")));
    assert_eq!(exif[0]["latitude"], lines[1]["latitude"], "the position predict used");
    assert!(exif[1]["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("EXIF")), "{}", exif[1]);
    assert_eq!(
        (exif[2]["latitude"].as_f64(), exif[2]["error"].as_str()),
        (None, None),
        "a text file has no EXIF: nothing read, no error"
    );
    assert!(exif[3]["error"].as_str().unwrap().contains("missing.jpg"), "{}", exif[3]);

    // A run folder without classes.json (from before it was written) names classes from its
    // dataset; one whose classes.json is malformed is an error naming it.
    std::fs::remove_file(run.join("classes.json")).unwrap();
    let (code, stdout, stderr) =
        dmlp(&["predict", "--run", run.to_str().unwrap(), photo.file.to_str().unwrap(), "--json", "--quiet"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(json_lines(&stdout)[0]["top_k"][0]["class"].as_str().unwrap().len() > 3);
    std::fs::write(run.join("classes.json"), "{\"classes\": [{\"index\": 5}]}").unwrap();
    let (code, _, stderr) = dmlp(&["predict", "--run", run.to_str().unwrap(), photo.file.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("classes.json"), "{stderr}");
    // No photos at all.
    std::fs::remove_file(run.join("classes.json")).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, stderr) = dmlp(&["predict", "--run", run.to_str().unwrap(), empty.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no photos"), "{stderr}");
}

#[test]
fn eval_of_several_checkpoints_reports_the_ensemble_beside_each_member() {
    let tmp = tempfile::tempdir().unwrap();
    let (run_a, _) = smoke_run(tmp.path());
    let config = tmp.path().join("smoke.toml");
    let run_b = tmp.path().join("run-b");
    let (code, _, stderr) = dmlp(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--run-dir",
        run_b.to_str().unwrap(),
        "--quiet",
        "--set",
        "train.seed=5",
        "--set",
        "model.backbone={type=\"resnet\", block=\"basic\", layers=[1, 1, 1, 1], width=4}",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let eval_with = |config: &Path, checkpoints: &[&Path]| -> serde_json::Value {
        let mut args = vec!["eval", "--config", config.to_str().unwrap(), "--json"];
        for c in checkpoints {
            args.extend(["--checkpoint", c.to_str().unwrap()]);
        }
        let (code, stdout, stderr) = dmlp(&args);
        assert_eq!(code, Some(0), "{stderr}");
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let eval = |checkpoints: &[&Path]| eval_with(&config, checkpoints);
    // Alone, run B (another width) is evaluated with its own config; in an ensemble each member
    // takes its run's.
    let (a, b) = (eval(&[&run_a]), eval_with(&run_b.join("config.toml"), &[&run_b]));
    let both = eval(&[&run_a, &run_b]);
    let members = both["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for (member, alone) in members.iter().zip([&a, &b]) {
        assert_eq!(
            (member["top1"].as_f64(), member["top5"].as_f64()),
            (alone["top1"].as_f64(), alone["top5"].as_f64())
        );
    }
    let ensemble = &both["ensemble"];
    assert_eq!(ensemble["images"], a["images"]);
    let top1 = ensemble["top1"].as_f64().unwrap();
    assert!(top1.is_finite() && (0.0..=100.0).contains(&top1), "{both}");
    // An ensemble of one model twice is that model.
    let twice = eval(&[&run_a, &run_a]);
    assert_eq!(twice["ensemble"]["top1"], a["top1"]);
    assert_eq!(twice["ensemble"]["top5"], a["top5"]);
    assert_eq!(twice["ensemble"]["mean_class_top1"], a["mean_class_top1"]);
    // The markdown table names each member and the ensemble.
    let (code, stdout, _) = dmlp(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        run_a.to_str().unwrap(),
        "--checkpoint",
        run_b.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("| ensemble of 2 (mean probabilities) |") && stdout.contains("run-b"), "{stdout}");
    // Members with different classes: an error naming them.
    let other = tmp.path().join("run-10-classes");
    std::fs::create_dir_all(other.join("checkpoints")).unwrap();
    let text =
        std::fs::read_to_string(run_a.join("config.toml")).unwrap().replace("num_classes = 9", "num_classes = 10");
    std::fs::write(other.join("config.toml"), text).unwrap();
    let weights = std::fs::read_dir(run_a.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path().join("model.safetensors"))
        .find(|p| p.is_file())
        .unwrap();
    std::fs::copy(&weights, other.join("checkpoints").join("model.safetensors")).unwrap();
    let (code, _, stderr) = dmlp(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        run_a.to_str().unwrap(),
        "--checkpoint",
        other.join("checkpoints").join("model.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("10 classes") && stderr.contains("share their classes"), "{stderr}");
}

#[test]
fn figure_commands_write_pngs_and_svgs_from_runs_and_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, _) = smoke_run(tmp.path());
    let out = tmp.path().join("figures");
    let run = run.to_str().unwrap();
    let path = |name: &str| out.join(name).to_str().unwrap().to_owned();
    for args in [
        vec!["figure", "per-class", "--run", run, "--run", run, "--window", "3", "--out", &path("per-class.png")],
        vec!["figure", "curves", "--run", run, "--out", &path("curves.svg")],
        vec!["figure", "curves", "--run", run, "--metric", "val_loss", "--out", &path("loss.png")],
    ] {
        let (code, stdout, stderr) = dmlp(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.starts_with("wrote "), "{stdout}");
    }
    let data = tmp.path().join("data");
    let (code, stdout, stderr) = dmlp(&[
        "figure",
        "locations",
        "--dataset",
        "inat2021",
        "--root",
        data.to_str().unwrap(),
        "--out",
        &path("map.png"),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("photos placed"), "{stdout}");
    for name in ["per-class.png", "loss.png", "map.png"] {
        let image = image::open(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(image.width() >= 900, "{name}");
    }
    assert!(std::fs::read_to_string(out.join("curves.svg")).unwrap().contains("val_top1 per epoch"));
    // A field metrics.jsonl lacks, and a format no one can open: errors naming them.
    let (code, _, stderr) = dmlp(&["figure", "curves", "--run", run, "--metric", "accuracy", "--out", &path("x.png")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("\"accuracy\""), "{stderr}");
    let (code, _, stderr) = dmlp(&["figure", "curves", "--run", run, "--out", &path("x.jpg")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(".png or .svg"), "{stderr}");
}

#[test]
fn prior_names_the_classes_likely_at_a_place_and_maps_where_one_is_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, photos) = smoke_run(tmp.path());
    let image_config = tmp.path().join("image.toml");
    let text = SMOKE
        .replace("metadata = \"geo_temporal\"\n", "")
        .replace("[model.fusion]\ntype = \"dynamic_mlp_c\"\nmlp_d = 32\nmlp_h = 8\n", "");
    std::fs::write(&image_config, text).unwrap();
    let (image_run, prior_run) = (tmp.path().join("image-run"), tmp.path().join("priorsnet"));
    let train = ["train", "--config", image_config.to_str().unwrap(), "--run-dir", image_run.to_str().unwrap()];
    let (code, _, stderr) = dmlp(&[&train[..], &["--quiet"]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    let baseline = tmp.path().join("priorsnet.toml");
    std::fs::write(
        &baseline,
        "[baseline]\ntype = \"priorsnet\"\nmetadata = \"geo_temporal\"\n\n[baseline.priorsnet]\nepochs = 20\nbatch_size = 64\nsampler = { type = \"instance_balanced\" }\n",
    )
    .unwrap();
    let paths = [image_run.to_str().unwrap(), baseline.to_str().unwrap(), prior_run.to_str().unwrap()];
    let (code, _, stderr) =
        dmlp(&["baseline", "--image-run", paths[0], "--config", paths[1], "--run-dir", paths[2], "--quiet"]);
    assert_eq!(code, Some(0), "{stderr}");
    let prior = prior_run.to_str().unwrap();
    // At the place and date of validation photos, their class is among the 3 likeliest.
    let placed: Vec<&Photo> = photos.iter().filter(|p| p.position.is_some() && p.date.is_some()).step_by(9).collect();
    let mut hits = 0;
    for photo in &placed {
        let flags = place_flags(photo);
        let mut args = vec!["prior", "--run", prior];
        args.extend(flags.iter().map(String::as_str));
        args.extend(["--top-k", "3", "--json"]);
        let (code, stdout, stderr) = dmlp(&args);
        assert_eq!(code, Some(0), "{stderr}");
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let top = top_classes(&json);
        assert_eq!(top.len(), 3);
        hits += usize::from(top.contains(&photo.class));
    }
    assert!(hits * 10 >= placed.len() * 8, "{hits} of {} places", placed.len());
    // A range map of one class.
    let map = tmp.path().join("range.png");
    let class = &placed[0].class;
    let (code, stdout, stderr) = dmlp(&[
        "prior",
        "--run",
        prior,
        "--class",
        class,
        "--map",
        map.to_str().unwrap(),
        "--date",
        "2010-06-01",
        "--cell",
        "2",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("16200 cells of 2°"), "{stdout}");
    assert_eq!(image::open(&map).unwrap().width(), 1000);
    // A geo_temporal prior without a date, an unknown class, an image run: errors naming them.
    let (code, _, stderr) = dmlp(&["prior", "--run", prior, "--lat", "10", "--lon", "10"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("a date"), "{stderr}");
    let (code, _, stderr) = dmlp(&[
        "prior",
        "--run",
        prior,
        "--class",
        "no-such-bird",
        "--map",
        map.to_str().unwrap(),
        "--date",
        "2010-06-01",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no-such-bird"), "{stderr}");
    let (code, _, stderr) = dmlp(&["prior", "--run", image_run.to_str().unwrap(), "--lat", "10", "--lon", "10"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("config.toml"), "{stderr}");
}
