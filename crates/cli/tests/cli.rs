//! The `dmlp` binary as a user runs it.

use std::process::Command;

fn dmlp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmlp")).args(args).output().expect("running dmlp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn params_prints_the_parts_of_resnet50_with_dynamic_mlp_c() {
    let (ok, stdout, stderr) = dmlp(&[
        "params",
        "--backbone",
        "resnet50",
        "--fusion",
        "dynamic_mlp_c",
        "--num-classes",
        "8142",
        "--metadata",
        "geo_temporal",
    ]);
    assert!(ok, "{stderr}");
    for expected in ["23,508,032", "593,664", "6,775,232", "16,682,958", "47,559,886", "47.56 M"] {
        assert!(stdout.contains(expected), "{expected} missing from:\n{stdout}");
    }
}

#[test]
fn params_json_and_image_only() {
    let (ok, stdout, stderr) =
        dmlp(&["params", "--backbone", "sk2res2net101", "--fusion", "none", "--num-classes", "100", "--json"]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["params"]["backbone"], 46_331_777);
    assert_eq!(json["params"]["loc_net"], 0);
    assert_eq!(json["params"]["total"], 46_331_777 + 204_900);
}

#[test]
fn params_labels_reconstructions_and_rejects_unknown_names() {
    let (ok, stdout, _) = dmlp(&["params", "--fusion", "mul_matched", "--num-classes", "100", "--metadata", "geo"]);
    assert!(ok);
    assert!(stdout.contains("reconstruction"), "{stdout}");
    let (ok, _, stderr) = dmlp(&["params", "--fusion", "dynamic_mlp_d"]);
    assert!(!ok && stderr.contains("dynamic_mlp_d"), "{stderr}");
    let (ok, _, stderr) = dmlp(&["params", "--backbone", "resnet51"]);
    assert!(!ok && stderr.contains("resnet51"), "{stderr}");
}

#[test]
fn encode_prints_the_reference_vector_and_rejects_impossible_dates() {
    let (ok, stdout, stderr) =
        dmlp(&["encode", "--latitude", "44.02901", "--longitude", "-73.17711", "--date", "2011-07-15 00:00:00+00:00"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "[0.999426, -0.957204, 0.230306, 0.033887, 0.289414, 0.973118]");
    let (ok, _, stderr) = dmlp(&["encode", "--latitude", "10", "--longitude", "10", "--date", "2011-02-30"]);
    assert!(!ok && stderr.contains("2011-02-30"), "{stderr}");
    let (ok, _, stderr) = dmlp(&["encode", "--latitude", "95", "--longitude", "10"]);
    assert!(!ok && stderr.contains("95"), "{stderr}");
}

/// A tiny synthetic dataset (3 classes) in `dir/data` with `per_class` training and `val` validation
/// images, and a run config for a width-4 ResNet on it (`extra_data` appended to `[data]`).
fn tiny_run(
    dir: &std::path::Path,
    per_class: usize,
    val: usize,
    extra_data: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let (per_class, val) = (per_class.to_string(), val.to_string());
    let (ok, _, stderr) = dmlp(&[
        "data",
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--groups",
        "1",
        "--per-group",
        "2",
        "--distinct",
        "1",
        "--train-per-class",
        &per_class,
        "--val-per-class",
        &val,
        "--image-size",
        "24",
        "--missing-fraction",
        "0.2",
    ]);
    assert!(ok, "{stderr}");
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nbackbone = {{ type = \"resnet\", block = \"basic\", layers = [1, 1, 1, 1], width = 4 }}\nnum_classes = 3\n\n[data]\nroot = \"{}\"\nimage_size = 16\nworkers = 1\n{extra_data}\n[train]\nepochs = 1\nbatch_size = 4\nlr = 0.01\nwarmup_epochs = 0\n",
            data.display()
        ),
    )
    .unwrap();
    (data, config)
}

fn write(root: &std::path::Path, name: &str, bytes: &[u8]) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn tiny_jpeg() -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_fn(20, 14, |x, y| image::Rgb([(x * 9) as u8, (y * 11) as u8, 40]))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .unwrap();
    bytes
}

#[test]
fn data_verify_reports_a_yfcc_folder_as_json_and_fails_on_a_missing_image() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "class_names.csv", b"id,name\n0,airport\n1,beach\n");
    write(
        root,
        "train_test_split.csv",
        b"path,lat,lon,split,class\nbeach/1.jpg,10,20,train,1\nairport/2.jpg,,,train,0\nbeach/3.jpg,1,2,val,1\nairport/4.jpg,3,4,test,0\n",
    );
    for name in ["beach/1.jpg", "airport/2.jpg", "beach/3.jpg"] {
        write(root, name, &tiny_jpeg());
    }
    let root_arg = root.to_str().unwrap();
    let (ok, stdout, stderr) =
        dmlp(&["data", "verify", "--dataset", "yfcc-geo100", "--root", root_arg, "--json", "--decode"]);
    assert!(!ok, "a missing image must fail verify: {stdout}");
    let json: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
    assert_eq!(json["dataset"], "yfcc-geo100");
    let train = &json["splits"]["train"];
    assert_eq!((train["records"].as_u64(), train["images_found"].as_u64()), (Some(2), Some(2)));
    assert_eq!((train["without_location"].as_u64(), train["without_date"].as_u64()), (Some(1), Some(2)));
    assert_eq!(train["images_corrupt"].as_u64(), Some(0));
    assert_eq!(train["classes"].as_u64(), Some(2));
    assert_eq!(json["splits"]["test"]["missing_files"], serde_json::json!(["airport/4.jpg"]));
    write(root, "airport/4.jpg", &tiny_jpeg());
    let (ok, stdout, stderr) = dmlp(&["data", "verify", "--dataset", "yfcc-geo100", "--root", root_arg]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("| train | 2 | 66739 (unverified) | 2 | 2 | 0 |"), "{stdout}");
    // The supplement's split: test rows join val.
    let (ok, stdout, _) = dmlp(&[
        "data",
        "verify",
        "--dataset",
        "yfcc-geo100",
        "--root",
        root_arg,
        "--split-scheme",
        "supplement",
        "--json",
    ]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["splits"]["val"]["records"].as_u64(), Some(2));
    assert!(json["splits"].get("test").is_none());
}

#[test]
fn eval_with_ten_crop_and_several_scales_after_a_short_training_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, config) = tiny_run(tmp.path(), 4, 2, "");
    let run = tmp.path().join("run");
    let (ok, _, stderr) =
        dmlp(&["train", "--config", config.to_str().unwrap(), "--run-dir", run.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{stderr}");
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args =
            vec!["eval", "--config", config.to_str().unwrap(), "--checkpoint", run.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = dmlp(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let plain = eval(&[]);
    let tta = eval(&["--ten-crop", "--test-scales", "16,20"]);
    assert_eq!(plain["images"], 6);
    assert_eq!(tta["images"], 6);
    assert_eq!(plain["views"].as_array().unwrap().len(), 1);
    let views: Vec<&str> = tta["views"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(views, ["TenCrop { size: 16, resize: 18 }", "TenCrop { size: 20, resize: 23 }"]);
    assert_ne!(plain["loss"], tta["loss"], "test-time views must change the averaged logits");

    // Two devices split each batch's images (every crop of every scale) and count as one.
    let split = eval(&["--ten-crop", "--test-scales", "16,20", "--devices", "cpu,cpu"]);
    for key in ["images", "top1", "top5", "mean_class_top1"] {
        assert_eq!(split[key], tta[key], "{key}");
    }
    let (split_loss, tta_loss) = (split["loss"].as_f64().unwrap(), tta["loss"].as_f64().unwrap());
    assert!((split_loss - tta_loss).abs() <= 1e-6 * tta_loss, "loss {split_loss} against {tta_loss}");
    let ensemble = dmlp(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        run.to_str().unwrap(),
        "--checkpoint",
        run.to_str().unwrap(),
        "--devices",
        "cpu,cpu",
    ]);
    assert!(!ensemble.0 && ensemble.2.contains("an ensemble evaluates on one device"), "{}", ensemble.2);

    // Per-class accuracy in the output, and a predictions file with a row per validation image.
    let per_class = plain["per_class"].as_array().unwrap();
    assert_eq!(per_class.iter().map(|c| c["images"].as_u64().unwrap()).sum::<u64>(), 6);
    let mean: f64 = per_class.iter().map(|c| c["top1"].as_f64().unwrap()).sum::<f64>() / per_class.len() as f64;
    assert!((plain["mean_class_top1"].as_f64().unwrap() - mean).abs() < 1e-9);
    let csv = tmp.path().join("out.csv");
    let with_file = eval(&["--predictions", csv.to_str().unwrap(), "--top-k", "2"]);
    assert_eq!(with_file["top1"], plain["top1"], "writing predictions changes no metric");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "a header and one row per validation image:\n{text}");
    assert_eq!(
        lines[0],
        "image_id,file,label,label_name,correct,class_1,name_1,probability_1,class_2,name_2,probability_2"
    );
    let mut correct = 0;
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 11, "{line}");
        assert!(cells[1].ends_with(".jpg") && !cells[1].starts_with('/'), "relative file: {line}");
        let (p1, p2): (f64, f64) = (cells[7].parse().unwrap(), cells[10].parse().unwrap());
        assert!(p1 >= p2 && p1 <= 1.0 && p2 >= 0.0, "{line}");
        correct += usize::from(cells[4] == "true");
    }
    let top1 = plain["top1"].as_f64().unwrap();
    assert!((100.0 * correct as f64 / 6.0 - top1).abs() < 1e-9, "the file's top-1 column agrees with top-1 {top1}");
    let parquet = tmp.path().join("out.parquet");
    eval(&["--predictions", parquet.to_str().unwrap()]);
    assert!(std::fs::metadata(&parquet).unwrap().len() > 0);
    let (ok, _, stderr) = dmlp(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        run.to_str().unwrap(),
        "--predictions",
        tmp.path().join("out.txt").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains(".csv or .parquet"), "{stderr}");

    // A checkpoint whose classifier is NaN: an error, never 100 % top-1.
    let weights = run.join("checkpoints").join("epoch-0001").join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let fc = tensors["fc.weight"].clone();
    tensors.insert("fc.weight".into(), (fc * f64::NAN).unwrap());
    let broken = tmp.path().join("nan.safetensors");
    candle_core::safetensors::save(&tensors, &broken).unwrap();
    let (ok, stdout, stderr) =
        dmlp(&["eval", "--config", config.to_str().unwrap(), "--checkpoint", broken.to_str().unwrap()]);
    assert!(!ok && stderr.contains("non-finite"), "{stdout}{stderr}");
}

#[test]
fn data_prepare_builds_a_manifest_that_training_reads_instead_of_the_json() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (data, config) =
        tiny_run(tmp.path(), 4, 2, &format!("cache_dir = \"{}\"\n", tmp.path().join("cache").display()));
    let prepare = [
        "data",
        "prepare",
        "--dataset",
        "inat2021",
        "--root",
        data.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = dmlp(&prepare);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("prepared inat2021") && stdout.contains("train: 12 records, 3 classes"), "{stdout}");
    assert!(stdout.contains("train_mini: skipped"), "{stdout}");
    let (ok, stdout, _) = dmlp(&prepare);
    assert!(ok && stdout.starts_with("up to date"), "{stdout}");

    // Garble train.json but keep its size and time: only the manifest can still give the split.
    let train_json = data.join("train.json");
    let len = std::fs::metadata(&train_json).unwrap().len() as usize;
    let modified = std::fs::metadata(&train_json).unwrap().modified().unwrap();
    std::fs::write(&train_json, "x".repeat(len)).unwrap();
    std::fs::File::options().write(true).open(&train_json).unwrap().set_modified(modified).unwrap();
    let run = tmp.path().join("run");
    let train = |run: &std::path::Path, extra: &[&str]| {
        let mut args =
            vec!["train", "--config", config.to_str().unwrap(), "--run-dir", run.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        dmlp(&args)
    };
    let (ok, _, stderr) = train(&run, &[]);
    assert!(ok, "training from the prepared manifest: {stderr}");
    // Without the cache, the garbled file is read, and its error names it.
    let elsewhere = tmp.path().join("empty-cache");
    let (ok, _, stderr) =
        train(&tmp.path().join("run2"), &["--set", &format!("data.cache_dir={}", elsewhere.display())]);
    assert!(!ok && stderr.contains("train.json") && stderr.contains("malformed JSON"), "{stderr}");
}

#[test]
fn baselines_train_on_top_of_an_image_only_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, config) = tiny_run(tmp.path(), 6, 3, "");
    let image_run = tmp.path().join("image");
    let (ok, _, stderr) =
        dmlp(&["train", "--config", config.to_str().unwrap(), "--run-dir", image_run.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{stderr}");
    for (kind, table) in [
        (
            "priorsnet",
            "[baseline.priorsnet]\nbatch_size = 8\nepochs = 2\nsampler = { type = \"class_balanced\", per_class = 4 }\n",
        ),
        ("geonet", "[baseline.geonet]\nepochs = 1\nfusion = \"add\"\n"),
    ] {
        let file = tmp.path().join(format!("{kind}.toml"));
        std::fs::write(&file, format!("[baseline]\ntype = \"{kind}\"\nmetadata = \"geo_temporal\"\n\n{table}"))
            .unwrap();
        let run = tmp.path().join(kind);
        let args = [
            "baseline",
            "--image-run",
            image_run.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--quiet",
        ];
        let (ok, stdout, stderr) = dmlp(&args);
        assert!(ok, "{kind}: {stderr}");
        assert!(stdout.contains("top-1") && stdout.contains("image model alone"), "{stdout}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["images"], 9);
        let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
        assert_eq!(lines, if kind == "priorsnet" { 2 } else { 1 });
        assert!(run.join("checkpoints").join("last").is_file() && run.join("config.toml").is_file());
        // The same folder again, without --resume, is refused rather than overwritten.
        let (ok, _, stderr) = dmlp(&args);
        assert!(!ok && stderr.contains("already holds a run"), "{stderr}");
    }
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[baseline]\ntype = \"priorsnet\"\nmetadata = \"temporal\"\n").unwrap();
    let (ok, _, stderr) = dmlp(&[
        "baseline",
        "--image-run",
        image_run.to_str().unwrap(),
        "--config",
        bad.to_str().unwrap(),
        "--run-dir",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("needs a location"), "{stderr}");
}

/// `dmlp` with extra environment variables (the Hugging Face ones), HF_* of the caller removed.
fn dmlp_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dmlp"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HF_") || k == "HUGGINGFACE_HUB_CACHE") {
        command.env_remove(key);
    }
    command.env("HF_HUB_OFFLINE", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.args(args).output().expect("running dmlp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_paper_config_offline_with_an_empty_cache_stops_before_training_naming_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/inat21-mini/resnet50-dmlp-c.toml");
    let run_dir = tmp.path().join("run");
    let hf_home = tmp.path().join("hf");
    let (ok, _, stderr) = dmlp_env(
        &["train", "--config", config.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()],
        &[("HF_HOME", &hf_home)],
    );
    assert!(!ok);
    let cache = hf_home.join("hub");
    for needle in ["timm/resnet50.tv_in1k", cache.to_str().unwrap(), "dmlp weights fetch hf:timm/resnet50.tv_in1k"] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(!run_dir.exists() && !hf_home.exists(), "nothing written");
}

#[test]
fn weights_show_lists_a_file_and_the_backbone_it_fits() {
    let tmp = tempfile::tempdir().unwrap();
    // A ResNet-18-shaped file (zeros, float16) with a 1000-class fc, under HF_HUB_CACHE.
    let snapshot = tmp.path().join("hub/models--org--r18/snapshots/abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(tmp.path().join("hub/models--org--r18/refs")).unwrap();
    std::fs::write(tmp.path().join("hub/models--org--r18/refs/main"), "abc").unwrap();
    let shapes = dmlp_model::Classifier::new_zeroed(
        &dmlp_model::ModelConfig {
            dtype: dmlp_model::ModelDType::F16,
            ..dmlp_model::ModelConfig::image_only(
                dmlp_backbones::BackboneSpec::Preset(dmlp_backbones::BackbonePreset::Resnet18),
                1000,
            )
        },
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&shapes.store().tensors(), snapshot.join("model.safetensors")).unwrap();
    let (ok, stdout, stderr) =
        dmlp_env(&["weights", "show", "hf:org/r18"], &[("HF_HUB_CACHE", &tmp.path().join("hub"))]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("org/r18@main (commit abc)") && stdout.contains("sha256"), "{stdout}");
    let fits: Vec<&str> = stdout.lines().filter(|l| l.contains(" fits: ")).collect();
    assert_eq!(fits.len(), 1, "{stdout}");
    assert!(fits[0].contains("resnet18") && fits[0].contains("loaded 100 backbone tensors"), "{stdout}");
    assert!(fits[0].contains("fc.bias, fc.weight"), "{stdout}");
    // Offline with an empty cache: the repository, the cache and the command that fixes it.
    let (ok, _, stderr) = dmlp_env(&["weights", "fetch", "hf:org/other@v2"], &[("HF_HUB_CACHE", tmp.path())]);
    assert!(
        !ok && stderr.contains("org/other@v2") && stderr.contains("dmlp weights fetch hf:org/other@v2"),
        "{stderr}"
    );
}

#[test]
fn data_decode_writes_what_training_decodes_and_names_the_files_it_cannot() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a/leaf.jpg", &tiny_jpeg());
    write(tmp.path(), "b/leaf.jpg", &tiny_jpeg());
    let mut cut = tiny_jpeg();
    cut.truncate(cut.len() / 2);
    write(tmp.path(), "broken.jpg", &cut);
    let out = tmp.path().join("out");
    let (a, b, broken) = (tmp.path().join("a/leaf.jpg"), tmp.path().join("b/leaf.jpg"), tmp.path().join("broken.jpg"));
    let (ok, stdout, stderr) = dmlp(&[
        "data",
        "decode",
        a.to_str().unwrap(),
        broken.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "a file failed: the exit status says so\n{stdout}\n{stderr}");
    assert!(stderr.contains("broken.jpg") && stderr.contains("1 of 3"), "{stderr}");
    // The others are written, one stem twice as leaf.png and leaf-2.png, pixel for pixel what
    // the training pipeline's decoder gives.
    let expected = dmlp_vision::decode_rgb(&a).unwrap();
    for name in ["leaf.png", "leaf-2.png"] {
        let png = image::open(out.join(name)).unwrap().to_rgb8();
        assert_eq!(png, expected, "{name}");
    }
    assert!(!out.join("broken.png").exists());

    // A scan cut short with an end marker appended: PIL reads it (libjpeg warns), so does
    // training; decode writes it, exits 0, and warns that the data is damaged.
    let whole = tiny_jpeg();
    let sos = whole.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let scan = sos + 2 + usize::from(u16::from_be_bytes([whole[sos + 2], whole[sos + 3]]));
    let mut damaged = whole[..scan + (whole.len() - scan) / 2].to_vec();
    damaged.extend([0xFF, 0xD9]);
    write(tmp.path(), "damaged.jpg", &damaged);
    let damaged = tmp.path().join("damaged.jpg");
    let (ok, stdout, stderr) = dmlp(&["data", "decode", damaged.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("damaged.jpg") && stderr.contains("ends early"), "{stderr}");
    assert!(out.join("damaged.png").exists());
}

#[test]
fn two_processes_train_one_job_and_node_0_alone_writes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, config) = tiny_run(tmp.path(), 4, 2, "");
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (run, follower_dir) = (tmp.path().join("run"), tmp.path().join("node1"));
    let node = |rank: &str, dir: &std::path::Path, extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dmlp"));
        command.args(["train", "--config", config.to_str().unwrap(), "--run-dir", dir.to_str().unwrap(), "--quiet"]);
        command.args(["--nodes", "2", "--node-rank", rank, "--rendezvous", &address, "--rendezvous-timeout", "60"]);
        command.args(extra);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (leader, follower) = (node("0", &run, &[]), node("1", &follower_dir, &[]));
    let (leader, follower) = (leader.wait_with_output().unwrap(), follower.wait_with_output().unwrap());
    let text = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    assert!(leader.status.success(), "{}", text(&leader));
    assert!(follower.status.success(), "{}", text(&follower));
    assert!(text(&follower).contains("done: node 1 trained epochs [1] beside node 0"), "{}", text(&follower));
    assert!(run.join("checkpoints").join("last").exists());
    assert!(!follower_dir.exists(), "node 1 writes nothing");

    // Resuming is node 0's to decide.
    let (ok, _, stderr) = dmlp(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--resume",
        "--nodes",
        "2",
        "--node-rank",
        "1",
        "--rendezvous",
        &address,
    ]);
    assert!(!ok && stderr.contains("node 0's to give"), "{stderr}");
}
