//! A small run on synthetic data through the whole stack: loader, model, trainer, run folder.
//! Resuming a run stopped after its first epoch ends with the same metrics and weights as the
//! uninterrupted run.

use std::path::Path;

use candle_core::Device;
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_experiment::{Provenance, RunConfig, RunOptions, train_run};
use dmlp_train::{EpochMetrics, Silent};

fn write_config(dir: &Path, data: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[model]
backbone = {{ type = "resnet", block = "basic", layers = [1, 1, 1, 1], width = 8 }}
num_classes = 8
metadata = "geo_temporal"

[model.fusion]
type = "dynamic_mlp_c"
mlp_d = 16
mlp_h = 8

[data]
root = "{}"
image_size = 16
workers = 2

[train]
epochs = 3
batch_size = 16
lr = 0.05
warmup_epochs = 1
seed = 5
"#,
        data.display()
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Synthetic data of 8 classes (2 groups of 3 look-alikes, 2 distinct), 20-pixel images, dated.
fn eight_classes(train_per_class: usize, val_per_class: usize, seed: u64) -> SynthConfig {
    SynthConfig {
        groups: 2,
        per_group: 3,
        distinct: 2,
        train_per_class,
        val_per_class,
        image_size: 20,
        seed,
        with_dates: true,
        missing_fraction: 0.0,
    }
}

fn provenance() -> Provenance {
    Provenance { git_commit: None, device: "cpu".into(), command: "test".into() }
}

/// `run` recorded the metrics of `reference` (wall-clock fields aside) and ended with its weights.
fn assert_same_run(reference: &Path, run: &Path, what: &str) {
    assert_eq!(
        deterministic_lines(&reference.join("metrics.jsonl")),
        deterministic_lines(&run.join("metrics.jsonl")),
        "{what}: other metrics"
    );
    assert!(final_weights(reference) == final_weights(run), "{what}: other final weights");
}

/// [`assert_same_run`] for runs that evaluated on different numbers of devices: each device
/// scores a share of every validation batch, and a convolution over fewer rows may round its
/// last bit otherwise, so the validation loss agrees within float rounding; every other figure
/// and the weights still bit for bit.
fn assert_same_training(reference: &Path, run: &Path, what: &str) {
    let without_val_loss = |path: &Path| -> (Vec<serde_json::Value>, Vec<f64>) {
        let mut lines = deterministic_lines(&path.join("metrics.jsonl"));
        let losses = lines.iter_mut().map(|l| l.as_object_mut().unwrap().remove("val_loss").unwrap().as_f64().unwrap());
        let losses = losses.collect();
        (lines, losses)
    };
    let ((expected, expected_losses), (got, got_losses)) = (without_val_loss(reference), without_val_loss(run));
    assert_eq!(expected, got, "{what}: other metrics");
    for (a, b) in expected_losses.iter().zip(&got_losses) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{what}: validation loss {b} against {a}");
    }
    assert!(final_weights(reference) == final_weights(run), "{what}: other final weights");
}

/// The model file of a run's last checkpoint.
fn final_weights(run: &Path) -> Vec<u8> {
    let last = std::fs::read_to_string(run.join("checkpoints/last")).unwrap();
    std::fs::read(run.join("checkpoints").join(last.trim()).join("model.safetensors")).unwrap()
}

fn deterministic_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in EpochMetrics::WALL_CLOCK_FIELDS {
                value.as_object_mut().unwrap().remove(field);
            }
            value
        })
        .collect()
}

#[test]
fn a_resumed_run_ends_where_the_uninterrupted_run_ends() {
    resumes_exactly(&[], &[Device::Cpu]);
}

#[test]
fn a_resumed_data_parallel_run_ends_where_the_uninterrupted_run_ends() {
    // Two replicas (threads summing on the host, as `dmlp train --devices cpu,cpu`).
    resumes_exactly(&[], &[Device::Cpu, Device::Cpu]);
}

#[test]
fn a_resumed_adamw_run_ends_where_the_uninterrupted_run_ends() {
    // The supplement's transformer recipe uses AdamW; its state must survive a checkpoint too.
    resumes_exactly(
        &["train.optimizer=adamw".into(), "train.lr=0.002".into(), "train.weight_decay=0.05".into()],
        &[Device::Cpu],
    );
}

fn resumes_exactly(overrides: &[String], devices: &[Device]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = SynthConfig { missing_fraction: 0.05, ..eight_classes(12, 4, 9) };
    generate(&synth, &data).unwrap();
    let config = RunConfig::from_file(&write_config(tmp.path(), &data), overrides).unwrap();
    let options = RunOptions { resume: false, stop_after: None, hub: None, allow_config_change: false, cluster: None };

    let whole = tmp.path().join("whole");
    let summary = train_run(&config, &whole, devices, options.clone(), &provenance(), &mut Silent).unwrap();
    assert_eq!(summary.metrics.len(), 3);
    let losses: Vec<f64> = summary.metrics.iter().map(|m| m.train_loss).collect();
    assert!(losses[2] < losses[0], "the optimiser must learn: {losses:?}");
    for file in
        ["config.toml", "provenance.json", "metrics.jsonl", "metrics.csv", "checkpoints/last", "checkpoints/best"]
    {
        assert!(whole.join(file).exists(), "{file} missing");
    }
    let csv = std::fs::read_to_string(whole.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("epoch,lr,train_loss"));

    let split = tmp.path().join("split");
    let first = RunOptions { stop_after: Some(1), ..options.clone() };
    train_run(&config, &split, devices, first, &provenance(), &mut Silent).unwrap();
    // A second start without --resume refuses to overwrite the run.
    let err = train_run(&config, &split, devices, options.clone(), &provenance(), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let resumed = RunOptions { resume: true, ..options };
    train_run(&config, &split, devices, resumed, &provenance(), &mut Silent).unwrap();

    assert_same_run(&whole, &split, "the resumed run");
}

#[test]
fn resume_without_a_checkpoint_and_bad_overrides_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = SynthConfig::three_classes(2, 1, 16, 1);
    generate(&synth, &data).unwrap();
    let path = write_config(tmp.path(), &data);
    // The config says 8 classes; this data has 3.
    let config = RunConfig::from_file(&path, &[]).unwrap();
    let options = RunOptions { resume: true, stop_after: None, hub: None, allow_config_change: false, cluster: None };
    let err = train_run(&config, &tmp.path().join("run"), &[Device::Cpu], options.clone(), &provenance(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("8 classes") && err.contains('3'), "{err}");
    let config = RunConfig::from_file(&path, &["model.num_classes=3".into()]).unwrap();
    let err = train_run(&config, &tmp.path().join("run"), &[Device::Cpu], options, &provenance(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no checkpoint"), "{err}");
    assert!(RunConfig::from_file(&path, &["train.lr=-1".into()]).is_err());
    for bad in ["train.momentum=nan", "train.weight_decay=inf", "train.mixup_alpha=nan", "train.lr=nan"] {
        let err = RunConfig::from_file(&path, &[bad.into()]).unwrap_err().to_string();
        assert!(err.contains("finite") || err.contains("positive"), "{bad}: {err}");
    }
    assert!(
        RunConfig::from_file(&path, &["train.learning_rate=0.1".into()])
            .unwrap_err()
            .to_string()
            .contains("learning_rate")
    );
}

#[test]
fn a_diverging_loss_stops_the_run_naming_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = SynthConfig { image_size: 16, ..eight_classes(4, 1, 2) };
    generate(&synth, &data).unwrap();
    // Read back every step, and every fourth (the GPU setting): the same step is named.
    let errors: Vec<String> = ["1", "4"]
        .iter()
        .map(|every| {
            let overrides =
                ["train.lr=1e30".into(), "train.warmup_epochs=0".into(), format!("train.sync_every={every}")];
            let config = RunConfig::from_file(&write_config(tmp.path(), &data), &overrides).unwrap();
            let options =
                RunOptions { resume: false, stop_after: None, hub: None, allow_config_change: false, cluster: None };
            let run = tmp.path().join(format!("run-{every}"));
            let err = train_run(&config, &run, &[Device::Cpu], options, &provenance(), &mut Silent).unwrap_err();
            assert!(!run.join("checkpoints").join("last").exists(), "no checkpoint from a diverged run");
            err.to_string()
        })
        .collect();
    assert!(
        errors[0].contains("loss became") && errors[0].contains("epoch") && errors[0].contains("iteration"),
        "{errors:?}"
    );
    assert_eq!(errors[0], errors[1]);
}

#[test]
fn reading_the_loss_back_every_few_steps_changes_nothing_but_when() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&eight_classes(12, 4, 9), &data).unwrap();
    let options = RunOptions { resume: false, stop_after: None, hub: None, allow_config_change: false, cluster: None };
    let run = |name: &str, overrides: &[String]| {
        let config = RunConfig::from_file(&write_config(tmp.path(), &data), overrides).unwrap();
        let dir = tmp.path().join(name);
        train_run(&config, &dir, &[Device::Cpu], options.clone(), &provenance(), &mut Silent).unwrap();
        let last = std::fs::read_to_string(dir.join("checkpoints/last")).unwrap();
        let weights = std::fs::read(dir.join("checkpoints").join(last.trim()).join("model.safetensors")).unwrap();
        (deterministic_lines(&dir.join("metrics.jsonl")), weights)
    };
    let every_step = run("every-step", &[]);
    // 6 steps an epoch: reads after 4, then the epoch's last 2.
    let every_fourth = run("every-fourth", &["train.sync_every=4".into()]);
    assert_eq!(every_step.0, every_fourth.0);
    assert!(every_step.1 == every_fourth.1, "the weights differ");
}

#[test]
fn a_last_training_batch_of_one_image_is_dropped_where_batchnorm_cannot_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = eight_classes(12, 2, 4);
    generate(&synth, &data).unwrap();
    // 96 training images in batches of 5: the last batch holds one image. SK-Res2Net's
    // selective-kernel attention normalises pooled [N, C, 1, 1] features, one value per channel.
    let overrides = [
        "model.backbone={ type = \"sk2res2net\", layers = [1, 1, 1, 1], width = 8 }".into(),
        "train.batch_size=5".into(),
        "train.epochs=1".into(),
        "data.image_size=32".into(),
    ];
    let config = RunConfig::from_file(&write_config(tmp.path(), &data), &overrides).unwrap();
    let run = tmp.path().join("run");
    let summary = train_run(&config, &run, &[Device::Cpu], RunOptions::default(), &provenance(), &mut Silent).unwrap();
    assert_eq!(summary.metrics[0].train_images, 95, "the one-image batch is left out");
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(provenance["data"]["train"]["last_image_dropped"], true);
}

#[test]
fn a_split_mostly_without_the_models_metadata_stops_before_training_unless_accepted() {
    // Dates missing everywhere and a geo_temporal model: every location vector would be zeros.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&SynthConfig { with_dates: false, ..SynthConfig::three_classes(4, 2, 16, 2) }, &data).unwrap();
    let path = write_config(tmp.path(), &data);
    let config = RunConfig::from_file(&path, &["model.num_classes=3".into(), "train.epochs=1".into()]).unwrap();
    let run = tmp.path().join("run");
    let err = train_run(&config, &run, &[Device::Cpu], RunOptions::default(), &provenance(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("12 of 12 records") && err.contains("a location or a date"), "{err}");
    assert!(err.contains("data.allow_missing_metadata"), "{err}");
    assert!(!run.exists(), "nothing written");
    let overrides = ["model.num_classes=3".into(), "train.epochs=1".into(), "data.allow_missing_metadata=true".into()];
    let config = RunConfig::from_file(&path, &overrides).unwrap();
    train_run(&config, &run, &[Device::Cpu], RunOptions::default(), &provenance(), &mut Silent).unwrap();
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(provenance["data"]["train"]["records_missing_metadata"], 12);
}

#[test]
fn resuming_with_a_changed_config_is_an_error_unless_allowed_and_then_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&SynthConfig::three_classes(4, 2, 16, 4), &data).unwrap();
    let path = write_config(tmp.path(), &data);
    let base = ["model.num_classes=3".to_owned(), "train.epochs=2".to_owned()];
    let run = tmp.path().join("run");
    let config = RunConfig::from_file(&path, &base).unwrap();
    let first = RunOptions { stop_after: Some(1), ..RunOptions::default() };
    train_run(&config, &run, &[Device::Cpu], first, &provenance(), &mut Silent).unwrap();

    let changed = RunConfig::from_file(
        &path,
        &[base[0].clone(), base[1].clone(), "train.lr=0.1".into(), "data.workers=1".into()],
    )
    .unwrap();
    let resume = RunOptions { resume: true, ..RunOptions::default() };
    let err =
        train_run(&changed, &run, &[Device::Cpu], resume.clone(), &provenance(), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("train.lr: 0.05 → 0.1") && err.contains("--allow-config-change"), "{err}");
    assert!(!err.contains("data.workers"), "a neutral key is not a change: {err}");
    // The same config resumes; an allowed change resumes and is recorded.
    let allowed = RunOptions { allow_config_change: true, ..resume };
    train_run(&changed, &run, &[Device::Cpu], allowed, &provenance(), &mut Silent).unwrap();
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance-resume.json")).unwrap()).unwrap();
    assert_eq!(provenance["config_changes"][0], "train.lr: 0.05 → 0.1");
}

#[test]
fn a_run_whose_config_names_its_data_relative_to_where_it_trained_resumes() {
    // Before 2026-12-04 a run's config.toml could hold a root relative to the directory training
    // ran in; the same config, resolved to an absolute root now, is no change.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&SynthConfig::three_classes(4, 2, 16, 6), &data).unwrap();
    let path = write_config(tmp.path(), &data);
    let config = RunConfig::from_file(&path, &["model.num_classes=3".into(), "train.epochs=2".into()]).unwrap();
    assert!(config.data.root.is_absolute());
    let run = tmp.path().join("run");
    let first = RunOptions { stop_after: Some(1), ..RunOptions::default() };
    train_run(&config, &run, &[Device::Cpu], first, &provenance(), &mut Silent).unwrap();
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = format!("{up}{}", data.strip_prefix("/").unwrap().display());
    assert!(Path::new(&relative).is_relative() && Path::new(&relative).join("train.json").is_file());
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let old_style = saved.replace(&format!("root = \"{}\"", data.display()), &format!("root = \"{relative}\""));
    assert_ne!(saved, old_style);
    std::fs::write(run.join("config.toml"), old_style).unwrap();
    let resume = RunOptions { resume: true, ..RunOptions::default() };
    train_run(&config, &run, &[Device::Cpu], resume, &provenance(), &mut Silent).unwrap();
    assert_eq!(dmlp_train::RunDir::open(&run).unwrap().read_metrics().unwrap().len(), 2);
}

#[test]
fn a_checkpoint_whose_optimiser_state_lacks_a_momentum_buffer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&SynthConfig::three_classes(4, 2, 16, 5), &data).unwrap();
    let path = write_config(tmp.path(), &data);
    let config = RunConfig::from_file(&path, &["model.num_classes=3".into(), "train.epochs=2".into()]).unwrap();
    let run = tmp.path().join("run");
    let first = RunOptions { stop_after: Some(1), ..RunOptions::default() };
    train_run(&config, &run, &[Device::Cpu], first, &provenance(), &mut Silent).unwrap();
    let last = std::fs::read_to_string(run.join("checkpoints/last")).unwrap();
    let state_path = run.join("checkpoints").join(last.trim()).join("optimizer.safetensors");
    let mut state = candle_core::safetensors::load(&state_path, &Device::Cpu).unwrap();
    assert!(state.remove("fc.weight").is_some());
    candle_core::safetensors::save(&state, &state_path).unwrap();
    let resume = RunOptions { resume: true, ..RunOptions::default() };
    let err = train_run(&config, &run, &[Device::Cpu], resume, &provenance(), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("optimiser state") && err.contains("missing (1): fc.weight"), "{err}");
}

#[test]
fn a_run_that_skips_bad_images_completes_names_them_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&eight_classes(12, 4, 9), &data).unwrap();
    // Damage two training files and one validation file after the split was generated.
    let damaged: Vec<std::path::PathBuf> = ["train", "train", "val"]
        .iter()
        .enumerate()
        .map(|(k, split)| {
            let dir = std::fs::read_dir(data.join(split)).unwrap().next().unwrap().unwrap().path();
            let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            let file = files[k].clone();
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() / 4]).unwrap();
            file
        })
        .collect();
    let config = RunConfig::from_file(&write_config(tmp.path(), &data), &[]).unwrap();
    let options = RunOptions { resume: false, stop_after: None, hub: None, allow_config_change: false, cluster: None };
    // By default a damaged file stops the run, naming it.
    let err =
        train_run(&config, &tmp.path().join("strict"), &[Device::Cpu], options.clone(), &provenance(), &mut Silent)
            .unwrap_err()
            .to_string();
    assert!(damaged.iter().any(|f| err.contains(&f.file_name().unwrap().to_string_lossy().to_string())), "{err}");

    let skip = RunConfig::from_file(&write_config(tmp.path(), &data), &["data.bad_images=skip".into()]).unwrap();
    let whole = tmp.path().join("whole");
    train_run(&skip, &whole, &[Device::Cpu], options.clone(), &provenance(), &mut Silent).unwrap();
    let listed = std::fs::read_to_string(whole.join("bad_images.txt")).unwrap();
    assert_eq!(listed.lines().count(), 3, "{listed}");
    for file in &damaged {
        assert!(listed.contains(&file.display().to_string()), "{} not in {listed}", file.display());
    }
    let metrics = deterministic_lines(&whole.join("metrics.jsonl"));
    for epoch in &metrics {
        assert_eq!(epoch["train_bad_images"], 2, "{epoch}");
        assert_eq!(epoch["val_bad_images"], 1, "{epoch}");
        assert_eq!(epoch["train_images"], 96, "training keeps its batch sizes");
        assert_eq!(epoch["val_images"], 31, "validation leaves the bad image out");
    }

    let split = tmp.path().join("split");
    train_run(
        &skip,
        &split,
        &[Device::Cpu],
        RunOptions { stop_after: Some(1), ..options.clone() },
        &provenance(),
        &mut Silent,
    )
    .unwrap();
    train_run(&skip, &split, &[Device::Cpu], RunOptions { resume: true, ..options }, &provenance(), &mut Silent)
        .unwrap();
    assert_eq!(metrics, deterministic_lines(&split.join("metrics.jsonl")));
    assert_eq!(listed, std::fs::read_to_string(split.join("bad_images.txt")).unwrap());
    assert!(final_weights(&whole) == final_weights(&split), "the resumed run's final weights differ");
}

/// A free loopback address (bound, read and released: the test's node 0 binds it again).
fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Node 0 (`train_run`, one CPU device) and node 1 (`follow_run`, `node1_devices`) of a job, as
/// two threads talking through the rendezvous over TCP (as two processes would).
fn two_nodes(
    config: &RunConfig,
    node1_config: &RunConfig,
    node1_devices: &[Device],
    run: &Path,
    options: &RunOptions,
) -> (Result<(), String>, Result<Vec<usize>, String>) {
    let address = free_address();
    let cluster = |node_rank| dmlp_train::ClusterSpec {
        nodes: 2,
        node_rank,
        address: address.clone(),
        timeout: std::time::Duration::from_secs(60),
    };
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| {
            let options = RunOptions { cluster: Some(cluster(0)), ..options.clone() };
            train_run(config, run, &[Device::Cpu], options, &provenance(), &mut Silent)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let follower = scope.spawn(|| {
            dmlp_experiment::follow_run(node1_config, node1_devices, &cluster(1), &provenance(), &mut Silent)
                .map_err(|e| e.to_string())
        });
        (leader.join().unwrap(), follower.join().unwrap())
    })
}

#[test]
fn two_nodes_train_and_resume_as_one_process_with_two_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = SynthConfig { missing_fraction: 0.05, ..eight_classes(12, 4, 9) };
    generate(&synth, &data).unwrap();
    let config = RunConfig::from_file(&write_config(tmp.path(), &data), &[]).unwrap();
    let options = RunOptions::default();

    let whole = tmp.path().join("whole");
    train_run(&config, &whole, &[Device::Cpu, Device::Cpu], options.clone(), &provenance(), &mut Silent).unwrap();

    // Node 0 stops after epoch 1 (node 1 follows it), then resumes: node 1 starts afresh and
    // takes node 0's weights and momentum from the rendezvous, or its steps would differ.
    let nodes = tmp.path().join("nodes");
    let (leader, follower) =
        two_nodes(&config, &config, &[Device::Cpu], &nodes, &RunOptions { stop_after: Some(1), ..options.clone() });
    leader.unwrap();
    assert_eq!(follower.unwrap(), [1]);
    let (leader, follower) =
        two_nodes(&config, &config, &[Device::Cpu], &nodes, &RunOptions { resume: true, ..options });
    leader.unwrap();
    assert_eq!(follower.unwrap(), [2, 3]);

    assert_same_training(&whole, &nodes, "two nodes (against two devices of one process)");
}

#[test]
fn a_node_with_another_config_or_data_is_refused_naming_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&eight_classes(4, 1, 3), &data).unwrap();
    let other_data = tmp.path().join("other");
    generate(&eight_classes(4, 1, 4), &other_data).unwrap();
    let path = write_config(tmp.path(), &data);
    let config = RunConfig::from_file(&path, &[]).unwrap();
    for (node1, expected) in [
        (RunConfig::from_file(&path, &["train.lr=0.1".into()]).unwrap(), "train.lr: 0.05 → 0.1"),
        // Another root is fine, other images are not.
        (
            RunConfig::from_file(&path, &[format!("data.root={}", other_data.display())]).unwrap(),
            "split.train.records_fnv1a64",
        ),
    ] {
        let run = tmp.path().join("run");
        let (leader, follower) = two_nodes(&config, &node1, &[Device::Cpu], &run, &RunOptions::default());
        for error in [leader.unwrap_err(), follower.unwrap_err()] {
            assert!(error.contains("node 1 differs from node 0") && error.contains(expected), "{error}");
        }
        assert!(!run.join("checkpoints").join("last").exists());
        std::fs::remove_dir_all(&run).ok();
    }
}

#[test]
fn a_node_with_two_devices_beside_one_with_one_trains_as_three_devices_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&eight_classes(12, 4, 9), &data).unwrap();
    let config = RunConfig::from_file(&write_config(tmp.path(), &data), &["train.epochs=2".into()]).unwrap();
    let whole = tmp.path().join("whole");
    let three = [Device::Cpu, Device::Cpu, Device::Cpu];
    train_run(&config, &whole, &three, RunOptions::default(), &provenance(), &mut Silent).unwrap();
    // Ranks 0 | 1, 2: node 1 holds two shards of each batch and decodes their rows and partners.
    let nodes = tmp.path().join("nodes");
    let (leader, follower) = two_nodes(&config, &config, &[Device::Cpu, Device::Cpu], &nodes, &RunOptions::default());
    leader.unwrap();
    assert_eq!(follower.unwrap(), [1, 2]);
    assert_same_training(&whole, &nodes, "1 + 2 devices over two nodes (against 3 in one process)");
}
